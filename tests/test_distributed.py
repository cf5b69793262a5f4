"""Two processes under torchrun (CPU, gloo): disjoint data per rank, checkpoints, exact resume."""
import json
import os
import shutil
import subprocess
import sys

from conftest import SAMPLE, TINY_MODEL, positions
from lmstream import merge_stats


def _torchrun(out, *extra):
    cmd = _cmd(out) + ["--dataloader_num_workers", "1", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _cmd(out):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lmstream.train", "--dataset_streaming", "true", "--do_train", "--dataset_name", SAMPLE,
           "--dataset_config_name", "python-docs", "--config_name", TINY_MODEL, "--output_dir", str(out),
           "--max_steps", "6", "--per_device_train_batch_size", "2", "--dataset_block_size", "64",
           "--logging_steps", "1", "--save_steps", "3", "--use_cpu", "true", "--ddp_backend", "gloo",
           "--disable_tqdm", "true", "--report_to", "none"]


def _state(ckpt, rank):
    with open(os.path.join(ckpt, "lmstream_data", f"rank-{rank}.json")) as f:
        st = json.load(f)
    return merge_stats(st), st


def _losses(out):
    with open(os.path.join(out, "trainer_state.json")) as f:
        return {h["step"]: h["loss"] for h in json.load(f)["log_history"] if "loss" in h}


def test_two_processes_train_on_disjoint_data_and_resume_exactly(tmp_path):
    out = tmp_path / "ddp"
    _torchrun(out)
    assert (out / "model.safetensors").exists()
    straight = _losses(out)
    stats = [_state(out / "checkpoint-6", r)[0] for r in (0, 1)]
    # each rank read and tokenized only its own part: 6 steps x 2 blocks x 64 tokens, no more
    assert [s["tokens"] for s in stats] == [6 * 2 * 64] * 2
    saved6 = [_state(out / "checkpoint-6", r)[1] for r in (0, 1)]
    # resume from step 3 after losing the later checkpoint
    shutil.rmtree(out / "checkpoint-6")
    _torchrun(out, "--resume_from_checkpoint", str(out / "checkpoint-3"))
    resumed = _losses(out)
    assert [straight[s] for s in (4, 5, 6)] == [resumed[s] for s in (4, 5, 6)]
    for r in (0, 1):
        a, b = saved6[r], _state(out / "checkpoint-6", r)[1]
        assert positions(a) == positions(b)


def test_elastic_resume_from_one_process_to_two(tmp_path):
    """A checkpoint of 1 process x 2 workers with per-process readers (--dataset_logical_readers 0, as lmstream
    before logical readers) continues under torchrun with 2 processes x 1 worker: the new readers take over what
    the old ones had left (accounting: tests/test_elastic.py)."""
    out = tmp_path / "elastic"
    cmd = [sys.executable, "-m", "lmstream.train", "--dataset_logical_readers", "0", "--dataset_streaming", "true",
           "--do_train", "--dataset_name", SAMPLE,
           "--dataset_config_name", "python-docs", "--config_name", TINY_MODEL, "--output_dir", str(out),
           "--max_steps", "3", "--per_device_train_batch_size", "2", "--dataset_block_size", "64", "--save_steps", "3",
           "--logging_steps", "1",
           "--use_cpu", "true", "--disable_tqdm", "true", "--dataloader_num_workers", "2", "--report_to", "none"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    before = sum(st["stats"]["blocks"] for st in _readers(_state(out / "checkpoint-3", 0)[1]))
    proc = _torchrun(out, "--resume_from_checkpoint", "true")
    assert "Elastic resume" in proc.stderr and "logical readers" not in proc.stdout
    after = [_state(out / "checkpoint-6", r) for r in (0, 1)]
    readers = [st for _, st in after for st in _readers(st)]
    assert sorted(st["slot"] for st in readers) == [0, 1] and all(st["gen"] == 1 for st in readers)
    # the counters carry over (split between the new readers) and grow by 3 steps x 2 ranks x 2 blocks
    assert sum(st["stats"]["blocks"] for st in readers) == before + 3 * 2 * 2 == 3 * 2 + 3 * 2 * 2
    assert set(_losses(out)) >= {4, 5, 6}, _losses(out)


def _readers(obj):
    if isinstance(obj, dict):
        if "slot" in obj and "n_slots" in obj:
            yield obj
            return
        for v in obj.values():
            yield from _readers(v)


def _captured(folder, ranks):
    steps = {}
    for r in range(ranks):
        with open(os.path.join(folder, f"rank-{r}.json")) as f:
            for step, micro in json.load(f).items():
                steps.setdefault(int(step), []).extend(tuple(row) for batch in micro for row in batch)
    return {s: sorted(rows) for s, rows in steps.items()}


NO_DROPOUT = ["--config_overrides", "resid_pdrop=0,embd_pdrop=0,attn_pdrop=0"]


def test_logical_readers_train_the_same_steps_after_a_resume_on_another_topology(tmp_path):
    """Straight: 2 processes x 2 workers, batch 2 (the sample's 12 row groups: 8 logical readers by default).
    Resumed at step 3: 1 process x 4 workers, batch 2, accumulation 2 (the same global batch). Every later step
    trains on the same blocks, and the losses are equal within float summation order."""
    out = tmp_path / "straight"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAPTURE_DIR": str(tmp_path / "c2x2")}
    cmd = _cmd(out) + ["--dataloader_num_workers", "2", *NO_DROPOUT]
    cmd[cmd.index("lmstream.train")] = "capture_train"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env,
                          cwd=os.path.dirname(__file__))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 worker(s) serving 8 logical readers" in proc.stdout
    shutil.copytree(out, tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoint-6")
    flags = _cmd(tmp_path / "resumed")[_cmd(out).index("lmstream.train") + 1:]
    at = flags.index("--ddp_backend")
    one = [sys.executable, os.path.join(os.path.dirname(__file__), "capture_train.py"),
           *flags[:at], *flags[at + 2:], *NO_DROPOUT,
           "--dataloader_num_workers", "4", "--gradient_accumulation_steps", "2", "--resume_from_checkpoint", "true"]
    proc = subprocess.run(one, capture_output=True, text=True, timeout=300,
                          env={**env, "CAPTURE_DIR": str(tmp_path / "c1x4")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from checkpoint-3: global block 12 of 8 logical readers" in proc.stdout
    straight, resumed = _captured(tmp_path / "c2x2", 2), _captured(tmp_path / "c1x4", 1)
    assert sorted(resumed) == [4, 5, 6] and all(resumed[s] == straight[s] for s in (4, 5, 6))
    a, b = _losses(out), _losses(tmp_path / "resumed")
    for s in (4, 5, 6):
        assert abs(a[s] - b[s]) <= 1e-6 * abs(a[s]), (s, a[s], b[s])   # measured: at most 9e-8 (float32)
