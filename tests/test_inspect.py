"""Provenance of every block, `lmstream.tools.inspect` (the data of step N, replayed) and --dataset_skip_steps."""
import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

import lmstream
from conftest import TINY_MODEL, make_docs, write_parquet

HERE = os.path.dirname(os.path.abspath(__file__))


def _doc_tokens(tokenizer, path, group, row, cache={}):
    key = (path, group)
    if key not in cache:
        cache[key] = pq.ParquetFile(path).read_row_group(group).column("text").to_pylist()
    return tokenizer(cache[key][row])["input_ids"] + [tokenizer.eos_token_id]


def _check_provenance(sample, tokenizer, plan):
    """The block's segments, read back from the Parquet files and tokenized, are the block's tokens."""
    ids, at = sample["input_ids"].tolist(), 0
    for _, shard, group, row, a, b in sample["provenance"].tolist():
        doc = _doc_tokens(tokenizer, plan.shards[shard].url, group, row)
        assert ids[at:at + b - a] == doc[a:b]
        at += b - a
    assert at == len(ids)


def test_every_block_names_the_document_tokens_it_holds(tmp_path, tokenizer):
    """Across shuffle windows, carry-over, two readers and an elastic resume (2 readers -> 3, mid-window)."""
    write_parquet(tmp_path / "pq", make_docs(60, seed=2), shards=3, rows_per_group=6)
    args = lmstream.DataArguments(dataset_name=str(tmp_path / "pq"), dataset_block_size=32, dataset_shuffle_buffer=7)
    streams = [lmstream.build_pipeline(args, tokenizer, seed=1, rank=r, world_size=2) for r in (0, 1)]
    iters = [iter(s) for s in streams]
    for _ in range(25):
        for s, it in zip(streams, iters):
            _check_provenance(next(it), tokenizer, s.plan)
    saved = [{"dataset_state": s.state_dict()} for s in streams]   # as a 0-worker loader state holds it
    for r in range(3):
        s = lmstream.build_pipeline(args, tokenizer, seed=1, rank=r, world_size=3)
        s.resume_elastic(saved, 0)
        for sample, _ in zip(s, range(20)):
            _check_provenance(sample, tokenizer, s.plan)


def _argv(data, out, steps, workers, *extra):
    return ["--dataset_streaming", "true", "--do_train", "--dataset_name", str(data), "--config_name", TINY_MODEL,
            "--output_dir", str(out), "--max_steps", str(steps), "--per_device_train_batch_size", "2",
            "--dataset_block_size", "32", "--dataset_shuffle_buffer", "5", "--logging_steps", "1", "--save_steps", "4",
            "--use_cpu", "true", "--seed", "3", "--dataloader_num_workers", str(workers), "--disable_tqdm", "true",
            "--report_to", "none", *extra]


def _train(argv, capture, procs=1):
    """Run the training job (under torchrun with procs > 1) recording each step's input_ids per rank."""
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
              if procs > 1 else [sys.executable])
    extra = ["--ddp_backend", "gloo"] if procs > 1 else []
    env = {**os.environ, "CAPTURE_DIR": str(capture), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(launch + [os.path.join(HERE, "capture_train.py"), *argv, *extra], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = {}
    for r in range(procs):
        with open(os.path.join(capture, f"rank-{r}.json")) as f:
            seen[r] = {int(k): v for k, v in json.load(f).items()}
    return seen, proc


def _inspected(out, step):
    report = lmstream.inspect_step(str(out), step)
    per = {}
    for mb in report["micro_batches"]:
        per.setdefault(mb["rank"], []).append([b["input_ids"] for b in mb["blocks"]])
    return per, report


def _corpus(tmp_path, name="pq", seed=5):
    write_parquet(tmp_path / name, make_docs(150, seed=seed), shards=4, rows_per_group=8)
    return tmp_path / name


@pytest.mark.slow
@pytest.mark.parametrize("readers", ["0", "default"])
def test_inspect_gives_the_tensors_each_rank_trained_on(tmp_path, readers):
    """torchrun, 2 processes x 2 workers: every step's blocks as replayed are the tensors the model was fed; then
    after a resume on 2 x 1 from checkpoint 4 the steps after it replay too. With one reader per process and worker
    ("0") that resume is elastic and replays with the new topology; with logical readers every step is replayed in
    one process from the checkpoint alone, then dealt to the ranks."""
    data, out = _corpus(tmp_path), tmp_path / "out"
    extra = ["--dataset_logical_readers", "0"] if readers == "0" else []
    seen, proc = _train(_argv(data, out, 10, 2, *extra), tmp_path / "cap", procs=2)
    assert ("logical readers" in proc.stdout) == (readers == "default")
    for step in (1, 4, 5, 7, 10):
        per, report = _inspected(out, step)
        assert per == {r: seen[r][step] for r in (0, 1)}, step
        assert report["topology"]["workers"] == 2
    for name in ("checkpoint-8",):
        shutil.rmtree(out / name)
    seen2, proc = _train(_argv(data, out, 10, 1, "--resume_from_checkpoint", str(out / "checkpoint-4")),
                         tmp_path / "cap2", procs=2)
    assert ("Elastic resume" in proc.stderr) == (readers == "0")
    for step in (5, 6, 9, 10):
        per, report = _inspected(out, step)
        assert per == {r: seen2[r][step] for r in (0, 1)}, step
        assert report["topology"]["workers"] == 1 and report["topology"]["from_step"] == 4
    per, report = _inspected(out, 3)   # before the resume: the first topology, from the start
    assert per == {r: seen[r][3] for r in (0, 1)} and report["topology"]["workers"] == 2
    seg = report["micro_batches"][0]["blocks"][0]["segments"][0]
    assert seg["id"].startswith("id-") and seg["file"].endswith(".parquet")


@pytest.mark.slow
def test_inspect_names_each_blocks_mixture_source(tmp_path):
    web, code = _corpus(tmp_path, "web", 1), _corpus(tmp_path, "code", 2)
    spec = json.dumps([{"name": str(web), "weight": 0.6}, {"name": str(code), "weight": 0.4}])
    out = tmp_path / "out"
    argv = _argv(web, out, 6, 2, "--dataset_mixture", spec)
    argv[argv.index("--dataset_name"):argv.index("--dataset_name") + 2] = []
    seen, _ = _train(argv, tmp_path / "cap", procs=2)
    sources = set()
    for step in (2, 5, 6):
        per, report = _inspected(out, step)
        assert per == {r: seen[r][step] for r in (0, 1)}, step
        sources |= {s["source"] for mb in report["micro_batches"] for b in mb["blocks"] for s in b["segments"]}
    assert sources == {str(web), str(code)}


def test_skip_steps_drop_exactly_those_batches_and_are_recorded(tmp_path):
    """Resumed at 4 with --dataset_skip_steps 6-7: steps 5 as before, then step s trains on what step s+2 did;
    the checkpoints and metrics hold what was skipped, inspect replays the shifted run, and a later resume with
    the same flag skips nothing more."""
    data, out = _corpus(tmp_path), tmp_path / "out"
    straight, _ = _train(_argv(data, out, 12, 2), tmp_path / "cap")
    for name in ("checkpoint-8", "checkpoint-12"):
        shutil.rmtree(out / name)
    skip = ["--resume_from_checkpoint", str(out / "checkpoint-4"), "--dataset_skip_steps", "6-7"]
    resumed, proc = _train(_argv(data, out, 10, 2, *skip), tmp_path / "cap2")
    assert "skipped the data of steps 6-7 (4 blocks" in proc.stderr
    assert resumed[0][5] == straight[0][5]
    assert [resumed[0][s] for s in range(6, 11)] == [straight[0][s + 2] for s in range(6, 11)]
    with open(out / "trainer_state.json") as f:
        logged = [h for h in json.load(f)["log_history"] if "skipped_blocks" in h]
    assert logged and logged[-1]["skipped_blocks"] == 4 and logged[-1]["skipped_tokens"] == 4 * 32
    assert logged[-1]["skipped_documents"] >= 1
    with open(out / "checkpoint-8" / "lmstream_data" / "lineage.json") as f:
        segs = json.load(f)["segments"]
    assert [s["from_step"] for s in segs] == [0, 4] and segs[1]["skipped"][0]["steps"] == [6, 7]
    for step in (5, 6, 9):
        per, _ = _inspected(out, step)
        assert per[0] == resumed[0][step], step
    again, proc = _train(_argv(data, out, 12, 2, "--resume_from_checkpoint", str(out / "checkpoint-8"),
                               "--dataset_skip_steps", "6-7"), tmp_path / "cap3")
    assert "skipped the data" not in proc.stderr
    assert [again[0][s] for s in (9, 10)] == [resumed[0][s] for s in (9, 10)]   # no second skip
    with open(out / "checkpoint-12" / "lmstream_data" / "lineage.json") as f:
        segs = json.load(f)["segments"]
    assert [s["from_step"] for s in segs] == [0, 4, 8] and segs[1]["skipped"][0]["blocks"] == 4


def test_skip_steps_before_the_checkpoint_are_refused(tmp_path):
    data, out = _corpus(tmp_path), tmp_path / "out"
    _train(_argv(data, out, 4, 0), tmp_path / "cap")
    cmd = [sys.executable, "-m", "lmstream.train", *_argv(data, out, 6, 0, "--resume_from_checkpoint",
                                                            str(out / "checkpoint-4"), "--dataset_skip_steps", "3-5")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "dataset_skip_steps 3-5" in proc.stderr and "checkpoint before step 3" in proc.stderr


def test_the_inspect_command(tmp_path):
    data, out = _corpus(tmp_path), tmp_path / "out"
    seen, _ = _train(_argv(data, out, 5, 2), tmp_path / "cap")
    run = lambda *a: subprocess.run([sys.executable, "-m", "lmstream.tools.inspect", str(out), *a], capture_output=True,
                                    text=True, timeout=300)
    proc = run("--step", "5", "--text")
    assert proc.returncode == 0, proc.stderr
    assert "step 5 of" in proc.stdout and "checkpoint-4" in proc.stdout and "row group" in proc.stdout
    assert "id=id-" in proc.stdout
    report = json.loads(run("--step", "2", "--json").stdout)
    assert [[b["input_ids"] for b in mb["blocks"]] for mb in report["micro_batches"]] == seen[0][2]
    doc = report["micro_batches"][0]["blocks"][0]["segments"][0]["id"]
    found = json.loads(run("--document", doc, "--steps", "1-5", "--json").stdout)
    assert found and any(f["step"] == 2 for f in found) and all(f["id"] == doc for f in found)
    entry = shutil.which("lmstream-inspect")   # the console entry an install gives
    assert entry, "lmstream-inspect is not on PATH: pip install -e . (or pip install .) first"
    proc = subprocess.run([entry, str(out), "--step", "3", "--rank", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "rank 0, micro-batch 0" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "lmstream.tools.inspect", str(tmp_path), "--step", "1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "holds no lmstream_lineage.json" in bad.stderr


def test_skip_documents_drops_them_from_then_on_and_keeps_the_list(tmp_path):
    """A document of step 6 listed on resume at 4: no later step holds it, the blocks before it are unchanged, the
    count is in the logs, and a later resume without the flag still leaves it out."""
    data, out = _corpus(tmp_path), tmp_path / "out"
    straight, _ = _train(_argv(data, out, 8, 2), tmp_path / "cap")
    firsts = {}   # each document's first step on rank 0
    for step in range(1, 9):
        for b in _inspected(out, step)[1]["micro_batches"][0]["blocks"]:
            for seg in b["segments"]:
                firsts.setdefault(seg["id"], step)
    doc, first = next((d, s) for d, s in firsts.items() if s >= 6)   # first trained after the checkpoint at 4
    assert {f["step"] for f in lmstream.find_document(str(out), doc, 1, 8) if f["rank"] == 0} >= {first}
    listed = tmp_path / "bad.txt"
    listed.write_text(f"{doc}\nnot-an-id-here\n")
    for name in ("checkpoint-8",):
        shutil.rmtree(out / name)
    resume = ["--resume_from_checkpoint", str(out / "checkpoint-4"), "--dataset_skip_documents", str(listed)]
    resumed, _ = _train(_argv(data, out, 8, 2, *resume), tmp_path / "cap2")
    assert lmstream.find_document(str(out), doc, 5, 8) == []
    assert [resumed[0][s] for s in range(5, first)] == [straight[0][s] for s in range(5, first)]
    assert resumed[0][first] != straight[0][first]
    for step in (5, 8):
        assert _inspected(out, step)[0][0] == resumed[0][step]
    with open(out / "trainer_state.json") as f:
        logged = [h for h in json.load(f)["log_history"] if "docs_listed_skipped" in h]
    assert logged and logged[-1]["docs_listed_skipped"] >= 1 and logged[-1]["tokens_listed_skipped"] > 0
    _train(_argv(data, out, 12, 2, "--resume_from_checkpoint", str(out / "checkpoint-8")), tmp_path / "cap3")
    assert lmstream.find_document(str(out), doc, 9, 12) == []
    with open(out / "checkpoint-12" / "lmstream_data" / "lineage.json") as f:
        assert json.load(f)["segments"][-1]["skip_documents"] == sorted([doc, "not-an-id-here"])


@pytest.mark.parametrize("extra", [["--gradient_accumulation_steps", "2"], ["--max_train_samples", "12"],
                                   ["--dataloader_num_workers", "0"]],
                         ids=["grad-accumulation", "sized-epochs", "in-process"])
def test_inspect_follows_accumulation_and_epoch_ends(tmp_path, extra):
    """Micro-batches of a step with gradient accumulation; sized epochs (max_train_samples 12: 6 batches of 2 an
    epoch) whose ends fall inside the replayed range."""
    data, out = _corpus(tmp_path), tmp_path / "out"
    seen, _ = _train(_argv(data, out, 9, 2, *extra), tmp_path / "cap")
    for step in (1, 4, 5, 7, 9):
        assert _inspected(out, step)[0][0] == seen[0][step], step
