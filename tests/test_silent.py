"""Nothing silently wrong: inputs that used to give a wrong result with exit status 0 now work or stop with one
sentence naming the culprit, and nothing already written is changed."""
import json
import os
import shutil
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lmstream
import lmstream.train as lt
from lmstream.arguments import mapping_to_argv
from lmstream.config import ConfigError
from lmstream.retry import Unreadable
from conftest import SAMPLE, TINY_MODEL, make_docs, write_jsonl, write_parquet


def _tiny(out, *extra, steps=4):
    return ["--dataset_streaming", "true", "--do_train", "--dataset_name", SAMPLE, "--dataset_config_name", "python-docs",
            "--config_name", TINY_MODEL, "--output_dir", str(out), "--max_steps", str(steps),
            "--per_device_train_batch_size", "2", "--dataset_block_size", "64", "--logging_steps", "1",
            "--save_steps", "2", "--use_cpu", "true", "--dataloader_num_workers", "0", "--disable_tqdm", "true",
            "--report_to", "none", *extra]


def _reader(obj):
    """The first reader state (the dict with data settings) inside a saved loader state."""
    if isinstance(obj, dict) and "settings" in obj:
        return obj
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else []
    return next((r for r in map(_reader, values) if r is not None), None)


def _tree(folder):
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and ".lmstream" not in p.parts}


def test_a_tokenizer_with_swapped_entries_is_refused_on_resume(tmp_path, tokenizer):
    from transformers import AutoTokenizer
    spec = json.loads(open(os.path.join(TINY_MODEL, "tokenizer.json"), encoding="utf-8").read())
    vocab = spec["model"]["vocab"]
    for a, b in (("the", "of"), ("Ġthe", "Ġof")):          # same size, same EOS, four ids swapped
        vocab[a], vocab[b] = vocab[b], vocab[a]
    other = tmp_path / "tok"
    shutil.copytree(TINY_MODEL, other)
    (other / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    swapped = AutoTokenizer.from_pretrained(str(other))
    assert len(swapped) == len(tokenizer) and swapped.eos_token_id == tokenizer.eos_token_id
    args = lmstream.DataArguments(dataset_name=SAMPLE, dataset_config_name="python-docs", dataset_block_size=32)
    blocks = lmstream.build_pipeline(args, tokenizer)
    next(iter(blocks))
    with pytest.raises(ConfigError, match="saved with another tokenizer"):
        lmstream.build_pipeline(args, swapped).load_state_dict(blocks.state_dict())
    same = AutoTokenizer.from_pretrained(str(shutil.copytree(TINY_MODEL, tmp_path / "copy")))
    lmstream.build_pipeline(args, same).load_state_dict(blocks.state_dict())   # a copy elsewhere is the same


def test_a_second_run_into_the_same_folder_is_refused_and_a_dead_runs_lock_taken_over(tmp_path, caplog):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "lmstream.train", *_tiny(out, "--save_steps", "1000", steps=60)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    lock = out / ".lmstream" / "run.lock"
    deadline = time.time() + 120
    while not lock.exists() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-m", "lmstream.train", *_tiny(out, "--seed", "7")], capture_output=True,
                            text=True, env=env, timeout=300)
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert second.returncode == 2
    assert second.stderr.startswith(f"error: output_dir '{out}' is in use by another run (pid {first.pid}")
    assert not lock.exists()                            # released at the end
    ghost = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    other = tmp_path / "other"
    (other / ".lmstream").mkdir(parents=True)
    (other / ".lmstream" / "run.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": int(ghost.stdout),
                                                              "started": "earlier"}))
    lt.train(*lt.parse_args(_tiny(other, steps=2)))
    assert any("taking over the lock of a run that is gone" in r.getMessage() for r in caplog.records)


def test_a_plain_folder_has_no_test_split_and_no_other_train_split(tmp_path):
    write_parquet(tmp_path / "pq", make_docs(60, seed=3), shards=2)
    with pytest.raises(ConfigError, match=r"has no split 'test'.*--dataset_holdout_fraction"):
        lmstream.plan_dataset(lmstream.DataArguments(dataset_name=str(tmp_path / "pq")), "test")
    with pytest.raises(ConfigError, match="has no split 'validation'"):
        lmstream.plan_dataset(lmstream.DataArguments(dataset_name=str(tmp_path / "pq"), dataset_train_split="validation"))
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="has no split 'test'"):
        lt.train(*lt.parse_args(_tiny(out, "--do_eval", "--dataset_name", str(tmp_path / "pq"),
                                      "--dataset_config_name", "", steps=2)))


def test_a_non_text_column_is_refused_and_null_rows_are_counted(tmp_path, tokenizer):
    pq.write_table(pa.table({"text": list(range(20))}), tmp_path / "ints.parquet")
    with pytest.raises(ConfigError, match=r"Column 'text' of shard '.*ints.parquet' holds int64, not text"):
        lmstream.plan_dataset(lmstream.DataArguments(dataset_name=str(tmp_path / "ints.parquet")))
    write_jsonl(str(tmp_path / "d.jsonl"), ["fine", {"a": 1}])
    args = lmstream.DataArguments(dataset_name=str(tmp_path / "d.jsonl"), dataset_block_size=4)
    with pytest.raises(ConfigError, match=r"Line 2 of '.*d.jsonl': field 'text' holds dict, not text"):
        list(lmstream.build_pipeline(args, tokenizer))
    docs = make_docs(30, seed=2)
    pq.write_table(pa.table({"text": [None if i % 3 == 0 else d for i, d in enumerate(docs)]}), tmp_path / "n.parquet")
    args = lmstream.DataArguments(dataset_name=str(tmp_path / "n.parquet"), dataset_block_size=16, dataset_cycle=False)
    blocks = lmstream.build_pipeline(args, tokenizer)
    list(blocks)
    assert blocks.stats["docs_null"] == 10 and blocks.stats["rows_read"] == 30 and blocks.stats["docs"] in (19, 20)


@pytest.mark.parametrize("damage, message", [
    (lambda st: st.update(doc=10 ** 6), "corrupt: document 1000000 of window"),
    (lambda st: st.update(start=[999, 0], next=[999, 5]), r"corrupt: window start \(piece 999, row 0\) lies outside"),
    (lambda st: st.update(token=-5), r"rank-0.json' is corrupt \(token=-5, not a count\)"),
    (lambda st: st.update(token=10 ** 7), "corrupt: token 10000000 of a document"),
    ("empty", r"rank-0.json' is unreadable \(JSONDecodeError"),
    ("truncated", r"rank-0.json' is unreadable \(JSONDecodeError"),
])
def test_a_damaged_data_position_is_refused_naming_the_file(tmp_path, damage, message):
    """With one reader per process (a resumed reader reads at once; a logical reader checks its position when its
    next block comes, and the checkpoint's block counts at once: tests/test_logical.py)."""
    out = tmp_path / "run"
    lt.train(*lt.parse_args(_tiny(out, "--dataset_logical_readers", "0", steps=4)))
    path = out / "checkpoint-2" / "lmstream_data" / "rank-0.json"
    raw = path.read_text()
    if damage == "empty":
        path.write_text("")
    elif damage == "truncated":
        path.write_text(raw[: len(raw) // 2])
    else:
        state = json.loads(raw)
        damage(_reader(state))
        path.write_text(json.dumps(state))
    before = _tree(out)
    with pytest.raises(ConfigError, match=message):
        lt.train(*lt.parse_args(_tiny(out, "--resume_from_checkpoint", str(out / "checkpoint-2"), steps=4)))
    assert _tree(out) == before                       # nothing written, nothing overwritten


def test_an_error_in_a_dataloader_worker_reads_as_its_own_sentence(tmp_path, tokenizer):
    paths = write_parquet(tmp_path / "pq", make_docs(80, seed=4), shards=1, rows_per_group=20)
    meta = pq.read_metadata(paths[0])
    col = meta.row_group(2).column(0)
    data = bytearray(open(paths[0], "rb").read())
    start = col.dictionary_page_offset or col.data_page_offset
    data[start:start + col.total_compressed_size] = os.urandom(col.total_compressed_size)   # row group 2 unreadable
    open(paths[0], "wb").write(bytes(data))
    args = lmstream.DataArguments(dataset_name=paths[0], dataset_block_size=16, dataset_shuffle=False)
    loader = lmstream.build_loader(lmstream.build_pipeline(args, tokenizer), 2, num_workers=2)
    with pytest.raises(Unreadable) as err:
        for _ in loader:
            pass
    text = str(err.value)
    assert text.startswith("Could not read row group 2 of") and "Caught" not in text and "Traceback" not in text
    assert text.endswith("(in DataLoader worker process 0)") and "\n" not in text


def test_yaml_no_stays_no_for_flags_and_from_papermill(tmp_path):
    cfg = tmp_path / "args.yaml"
    cfg.write_text(f"dataset_name: {SAMPLE}\ndataset_config_name: python-docs\ndo_train: true\neval_strategy: no\n"
                   f"output_dir: {tmp_path / 'o'}\nmax_steps: 2\n")
    *_, training = lt.parse_args([str(cfg)])
    assert training.eval_strategy.value == "no" and training.do_train is True
    # papermill's -f reads YAML 1.1: the notebook receives False for eval_strategy
    assert mapping_to_argv({"eval_strategy": False, "do_train": True}) == ["--eval_strategy", "no", "--do_train", "true"]
    with pytest.raises(ConfigError, match="is not valid YAML"):
        cfg.write_text("dataset_name: [unclosed\n")
        lt.parse_args([str(cfg)])


@pytest.mark.parametrize("flags, message", [
    (["--learning_rate", "nan"], "learning_rate=nan must be a finite number"),
    (["--learning_rate=-1e-3"], "learning_rate=-0.001 must be a finite number, 0 or more"),
    (["--logging_steps", "0"], "requires non-zero --logging_steps"),
    (["--dataloader_num_workers=-1"], "dataloader_num_workers=-1 must be 0 or more"),
    (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps=0 must be at least 1"),
    (["--max_steps", "ten"], "invalid int value: 'ten'"),
    (["--dataset_retry_budget", "inf"], "dataset_retry_budget=inf must be a finite number, 0 or more"),
    (["--config_overrides", "n_layer=two"], "config_overrides 'n_layer=two' cannot be applied"),
    (["--config_overrides", "n_embd=65,n_head=2"], "config_overrides 'n_embd=65,n_head=2' gives a model that cannot be built"),
])
def test_flags_a_typo_makes_nonsense_of_stop_with_one_sentence(tmp_path, flags, message):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        lt.train(*lt.parse_args(_tiny(out, *flags, steps=2)))
    assert not out.exists() or not any(p for p in out.rglob("*") if p.is_file() and ".lmstream" not in p.parts)


def test_max_train_samples_beyond_the_data_is_said_once(tmp_path, tokenizer, caplog):
    write_parquet(tmp_path / "pq", make_docs(20, seed=8), shards=1)
    args = lmstream.DataArguments(dataset_name=str(tmp_path / "pq"), dataset_block_size=16)
    blocks = lmstream.build_pipeline(args, tokenizer, max_samples=10 ** 6)
    n = sum(1 for _ in blocks) + sum(1 for _ in blocks)   # two epochs
    short = [r for r in caplog.records if "epochs are shorter than asked" in r.getMessage()]
    assert n > 0 and len(short) == 1 and "max_train_samples=1000000" in short[0].getMessage()


def test_a_full_disk_during_the_final_save_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    """ENOSPC while the final tokenizer is written (simulated: half a tokenizer.json, then the error)."""
    import errno
    import lmstream.training.models
    real = lmstream.training.models.load_model_and_tokenizer

    def load(args):
        model, tok = real(args)
        save = tok.save_pretrained

        def full_disk(folder, *a, **k):
            if "final-" not in str(folder):
                return save(folder, *a, **k)
            with open(os.path.join(folder, "tokenizer.json"), "w") as f:
                f.write('{"version": "1.0", "trunc')
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(folder, "tokenizer.json"))
        tok.save_pretrained = full_disk
        return model, tok
    import lmstream.training.run
    monkeypatch.setattr(lmstream.training.run, "load_model_and_tokenizer", load)
    out = tmp_path / "run"
    assert lt.main(_tiny(out, steps=2)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No space left on the device while writing '") and "tokenizer.json" in err
    top = sorted(p.name for p in out.iterdir())
    assert "tokenizer.json" not in top and "model.safetensors" not in top    # complete or absent
    assert (out / "checkpoint-2" / "lmstream_complete.json").exists()        # the last checkpoint is intact
    assert not list((out / ".lmstream").glob("final-*"))                     # no scratch left behind
