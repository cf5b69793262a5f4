"""The training job: seed command line, outputs, exact resume, refusals, evaluation, pre-tokenized data."""
import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

import lmstream.train as lt
from lmstream.training.checkpoints import last_complete_checkpoint
from lmstream.config import ConfigError
from lmstream.training.resume import resolve_checkpoint
from conftest import SAMPLE, TINY_MODEL, positions
from conftest import train_recording as _run

SEED_FLAGS = ["--dataset_streaming", "true", "--do_train", "--eval_strategy", "no",
              "--dataset_name", SAMPLE, "--dataset_config_name", "python-docs",
              "--dataset_group_text", "true", "--dataloader_num_workers", "8", "--max_steps", "2500",
              "--model_name_or_path", "openai-community/gpt2", "--output_dir", "/output-checkpoint",
              "--per_device_train_batch_size", "8", "--logging_steps", "50", "--save_steps", "1000"]


def _tiny(out, *extra, steps=8, workers=0):
    return ["--dataset_streaming", "true", "--do_train", "--dataset_name", SAMPLE, "--dataset_config_name", "python-docs",
            "--config_name", TINY_MODEL, "--output_dir", str(out), "--max_steps", str(steps),
            "--per_device_train_batch_size", "2", "--dataset_block_size", "64", "--logging_steps", "1",
            "--save_steps", "4", "--use_cpu", "true", "--dataloader_num_workers", str(workers),
            "--learning_rate", "1e-3", "--disable_tqdm", "true", "--report_to", "none", *extra]


def test_seed_command_line_parses_flag_for_flag(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    m, d, r, t = lt.parse_args(SEED_FLAGS)
    assert d.dataset_streaming and d.dataset_group_text and t.do_train
    assert (t.dataloader_num_workers, t.max_steps, t.per_device_train_batch_size) == (8, 2500, 8)
    assert (t.logging_steps, t.save_steps, t.eval_strategy.value) == (50, 1000, "no")
    assert m.model_name_or_path == "openai-community/gpt2" and d.dataset_config_name == "python-docs"
    assert t.report_to == [] or t.report_to == "none" or t.report_to == ["none"]
    monkeypatch.setenv("WANDB_API_KEY", "x")
    import importlib.util
    has_wandb = importlib.util.find_spec("wandb") is not None
    assert lt.parse_args(SEED_FLAGS)[3].report_to == (["wandb"] if has_wandb else [])   # no wandb: a warning, no crash
    assert lt.parse_args(SEED_FLAGS + ["--report_to", "tensorboard"])[3].report_to == ["tensorboard"]
    monkeypatch.delenv("WANDB_API_KEY")
    # the same keys in YAML
    import yaml
    keys = {SEED_FLAGS[i][2:]: SEED_FLAGS[i + 1] for i in range(len(SEED_FLAGS)) if SEED_FLAGS[i].startswith("--")
            and i + 1 < len(SEED_FLAGS) and not SEED_FLAGS[i + 1].startswith("--")}
    keys["do_train"] = True
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(keys))
    m2, d2, r2, t2 = lt.parse_args([str(tmp_path / "p.yaml")])
    assert (t2.max_steps, d2.dataset_name, t2.do_train) == (2500, SAMPLE, True)
    with pytest.raises(ConfigError, match="Unknown argument.*--dataset_nmae"):
        lt.parse_args(SEED_FLAGS + ["--dataset_nmae", "x"])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**keys, "max_stepz": 3}))
    with pytest.raises(ConfigError, match="max_stepz"):
        lt.parse_args([str(tmp_path / "bad.yaml")])


def _losses(out):
    with open(os.path.join(out, "trainer_state.json")) as f:
        return {h["step"]: h["loss"] for h in json.load(f)["log_history"] if "loss" in h}


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_sees_identical_batches_and_losses(tmp_path, monkeypatch, workers):
    straight, _ = _run(_tiny(tmp_path / "a", workers=workers), monkeypatch)
    first, _ = _run(_tiny(tmp_path / "b", workers=workers), monkeypatch, stop_at=4)
    assert len(first) == 4
    second, _ = _run(_tiny(tmp_path / "b", "--resume_from_checkpoint", "true", workers=workers), monkeypatch)
    assert len(straight) == 8 and len(second) == 4
    for x, y in zip(straight, first + second):
        assert torch.equal(x, y)
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert [a[s] for s in range(5, 9)] == [b[s] for s in range(5, 9)]
    with open(tmp_path / "a" / "checkpoint-8" / "lmstream_data" / "rank-0.json") as f1, \
            open(tmp_path / "b" / "checkpoint-8" / "lmstream_data" / "rank-0.json") as f2:
        s1, s2 = json.load(f1), json.load(f2)
    assert positions(s1) == positions(s2)   # timings differ between runs; positions and counters must not


def test_training_writes_a_loadable_model_metrics_and_state(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _, metrics = _run(_tiny(out, "--do_eval", "--dataset_holdout_fraction", "0.1", "--max_eval_samples", "8", steps=4),
                      monkeypatch)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.n_layer == 2
    for name in ("train_results.json", "eval_results.json", "all_results.json", "trainer_state.json", "tokenizer.json"):
        assert (out / name).exists(), name
    assert metrics["eval_perplexity"] > 1 and metrics["eval_tokens"] > 0
    assert metrics["data_tokens"] == 4 * 2 * 64
    assert (out / "checkpoint-4" / "lmstream_data" / "rank-0.json").exists()
    logs = json.load(open(out / "trainer_state.json"))["log_history"]
    assert any("tokens_per_second" in h and "data_wait_fraction" in h for h in logs)


def test_tensorboard_reporting_writes_event_files(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    _run(_tiny(out, "--report_to", "tensorboard", steps=2), monkeypatch)
    events = [p for p in out.rglob("events.out.tfevents*")]
    assert events and sum(p.stat().st_size for p in events) > 0


def test_refusals(tmp_path, monkeypatch):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("another run")
    with pytest.raises(ConfigError, match="already holds files"):
        lt.train(*lt.parse_args(_tiny(out)))
    assert (out / "notes.txt").read_text() == "another run"
    with pytest.raises(ConfigError, match="max_steps must be set"):
        lt.train(*lt.parse_args(_tiny(tmp_path / "x", steps=-1)))
    with pytest.raises(ConfigError, match="has no checkpoint"):
        lt.train(*lt.parse_args(_tiny(tmp_path / "y", "--resume_from_checkpoint", "true")))
    assert lt.main(_tiny(tmp_path / "z", "--dataset_block_size", "4096")) == 2


def test_checkpoint_without_data_state_warns_and_skips(tmp_path, monkeypatch, caplog):
    import shutil
    # another script's order is one reader per process (lmstream resumes such a checkpoint with those readers)
    straight, _ = _run(_tiny(tmp_path / "a", "--dataset_logical_readers", "0"), monkeypatch)
    _run(_tiny(tmp_path / "b", "--dataset_logical_readers", "0"), monkeypatch, stop_at=4)
    shutil.rmtree(tmp_path / "b" / "checkpoint-4" / "lmstream_data")   # as if saved by another script
    with pytest.raises(ConfigError, match="dataloader_num_workers 0"):   # workers send batch groups: no skip there
        lt.train(*lt.parse_args(_tiny(tmp_path / "b", "--resume_from_checkpoint",
                                      str(tmp_path / "b" / "checkpoint-4"), workers=2)))
    with caplog.at_level("WARNING", logger="lmstream"):
        second, _ = _run(_tiny(tmp_path / "b", "--resume_from_checkpoint", str(tmp_path / "b" / "checkpoint-4")),
                         monkeypatch)
    assert "holds no lmstream data position" in caplog.text
    assert all(torch.equal(x, y) for x, y in zip(straight[4:], second))   # the Trainer's skip re-read them


def test_pretokenized_save_and_load_and_non_streaming(tmp_path, monkeypatch):
    """prepare saves blocks that a run trains from, and a non-streamed run trains on blocks it makes first: neither
    writes outside its own folders (the blocks are staged inside the save dir, or inside output_dir/.lmstream)."""
    import tempfile

    import lmstream.tools.prepare as lp
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    blocks = tmp_path / "blocks"
    assert lp.main(["--dataset_name", SAMPLE, "--dataset_config_name", "python-docs", "--config_name", TINY_MODEL,
                    "--dataset_block_size", "64", "--tokenized_dataset_save_dir", str(blocks)]) == 0
    assert sorted(os.listdir(blocks)) == ["data-00000-of-00001.arrow", "dataset_info.json", "state.json"]
    assert lp.main(["--dataset_name", SAMPLE, "--config_name", TINY_MODEL, "--dataset_block_size", "64",
                    "--tokenized_dataset_save_dir", str(blocks)]) == 2   # not overwritten
    _, m = _run(_tiny(tmp_path / "r1", "--tokenized_dataset_load_dir", str(blocks), steps=3), monkeypatch)
    assert m["train_loss"] > 0
    stale = tmp_path / "r2" / ".lmstream" / ".lmstream-blocks-rank0-left-by-a-killed-run"
    stale.mkdir(parents=True)
    _, m = _run(_tiny(tmp_path / "r2", "--dataset_streaming", "false", "--max_train_samples", "40", steps=3), monkeypatch)
    assert m["train_loss"] > 0
    assert not stale.exists() and [p.name for p in (tmp_path / "r2" / ".lmstream").iterdir()
                                   if p.name.startswith(".lmstream-blocks-rank0-")]   # removed when the process ends
    assert not os.listdir(system_tmp)
    with pytest.raises(ConfigError, match="holds blocks of 64 tokens"):
        lt.train(*lt.parse_args(_tiny(tmp_path / "r3", "--tokenized_dataset_load_dir", str(blocks),
                                      "--dataset_block_size", "32")))


def _train_cmd(out, *extra):
    import sys
    return [sys.executable, "-m", "lmstream.train", *_tiny(out, "--save_steps", "2", *extra, steps=10)]


def test_killed_runs_resume_from_the_last_complete_checkpoint(tmp_path):
    """SIGKILL during training (twice, at different points), and a save cut short: the resumed run
    ends with the same losses as one that was never interrupted."""
    import signal
    import subprocess
    import time
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cmd(tmp_path / "straight"), check=True, capture_output=True, env=env, timeout=300)
    out = tmp_path / "killed"
    for wait_for in ("checkpoint-2", "checkpoint-6"):
        proc = subprocess.Popen(_train_cmd(out, *(["--resume_from_checkpoint", "true"] if out.exists() else [])),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 240
        while not (out / wait_for / "lmstream_complete.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # a save cut short: the newest checkpoint lacks its completion marker and a file is half written
    newest = max((p for p in out.iterdir() if p.name.startswith("checkpoint-")), key=lambda p: int(p.name[11:]))
    (newest / "lmstream_complete.json").unlink(missing_ok=True)
    (newest / "optimizer.pt").write_bytes(b"\0" * 10)
    with pytest.raises(ConfigError, match="is incomplete"):
        resolve_checkpoint(lt.parse_args(_tiny(out, "--resume_from_checkpoint", str(newest)))[3])
    assert last_complete_checkpoint(str(out)) != str(newest)
    done = subprocess.run(_train_cmd(out, "--resume_from_checkpoint", "true"), capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = _losses(tmp_path / "straight"), _losses(out)
    assert [a[s] for s in range(1, 11)] == [b[s] for s in range(1, 11)]
    # the finished run resumed again: the Trainer would take an 11th step of a 10-step run; refused instead
    again = subprocess.run(_train_cmd(out, "--resume_from_checkpoint", "true"), capture_output=True, text=True,
                           env=env, timeout=300)
    assert again.returncode == 2 and "already holds 10 steps, max_steps=10: pass a larger --max_steps" in again.stderr
    assert not (out / "checkpoint-11").exists()


def test_prepare_uses_processes_and_reports_its_rate(tmp_path, capsys):
    """Pre-tokenizing with 2 processes (readers of a share of the row groups each, several per process) keeps every
    token but one partial block per reader, and says how fast it went."""
    import datasets

    import lmstream.tools.prepare as lp
    common = ["--dataset_name", SAMPLE, "--dataset_config_name", "python-docs", "--config_name", TINY_MODEL,
              "--dataset_block_size", "64"]
    assert lp.main([*common, "--dataset_num_proc", "1", "--tokenized_dataset_save_dir", str(tmp_path / "one")]) == 0
    assert lp.main([*common, "--dataset_num_proc", "2", "--tokenized_dataset_save_dir", str(tmp_path / "two")]) == 0
    out = capsys.readouterr().out
    assert "tokens/s with 1 processes" in out and "tokens/s with 2 processes" in out
    one, two = datasets.load_from_disk(str(tmp_path / "one")), datasets.load_from_disk(str(tmp_path / "two"))
    from lmstream.stream.materialize import slots_for
    assert 0 <= len(one) - len(two) <= slots_for(2) - 1 and len(two) > 100


def test_materializing_processes_survive_a_parent_that_used_torch_threads(tmp_path):
    """Processes forked after the parent ran parallel torch ops (as a notebook or the bench has) still finish."""
    code = (f"import torch; torch.ones(4_000_000).mul_(2).sum(); torch.ones(2000, 2000).clone()\n"
            f"from transformers import AutoTokenizer; from lmstream import DataArguments; from lmstream.stream.materialize import materialize\n"
            f"tok = AutoTokenizer.from_pretrained({TINY_MODEL!r})\n"
            f"args = DataArguments(dataset_name={SAMPLE!r}, dataset_config_name='python-docs', dataset_block_size=64)\n"
            "print(len(materialize(args, tok, 0, processes=2)))\n")
    import subprocess
    import sys
    scratch = tmp_path / "tmp"   # materialize's default folder is temporary: gone when the process ends
    scratch.mkdir()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(scratch)})
    assert proc.returncode == 0 and int(proc.stdout.strip().splitlines()[-1]) > 100, proc.stderr[-2000:]
    assert not os.listdir(scratch)
