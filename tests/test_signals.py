"""SIGTERM (preemption) and SIGINT (Ctrl-C): a complete checkpoint at the next step boundary, every rank agreeing,
then a resume that continues bitwise: the losses equal those of a run that was never stopped."""
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import SAMPLE, TINY_MODEL

STEPS = 30


def _flags(out, workers, *extra):
    return ["--dataset_streaming", "true", "--do_train", "--dataset_name", SAMPLE, "--dataset_config_name", "python-docs",
            "--config_name", TINY_MODEL, "--output_dir", str(out), "--max_steps", str(STEPS),
            "--per_device_train_batch_size", "2", "--dataset_block_size", "64", "--logging_steps", "1",
            "--save_steps", "1000", "--use_cpu", "true", "--dataloader_num_workers", str(workers),
            "--disable_tqdm", "true", "--report_to", "none", *extra]


def _losses(out):
    with open(os.path.join(out, "trainer_state.json")) as f:
        return {h["step"]: h["loss"] for h in json.load(f)["log_history"] if "loss" in h}


def _signal_at(cmd, signum, after_line, env, cwd=None, target=None):
    """Run cmd; send `signum` (to the process, or to target(proc)'s pids) once a stdout line starts with after_line."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    lines, sent = [], False
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if not sent and line.split()[:2] == after_line.split():
            for pid in (target(proc) if target else [proc.pid]):
                os.kill(pid, signum)
            sent = True
    return proc.wait(timeout=600), lines, proc.stderr.read()


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("workers, signum", [(0, signal.SIGTERM), (2, signal.SIGTERM), (2, signal.SIGINT)])
def test_a_signal_saves_a_checkpoint_and_the_resume_continues_bitwise(tmp_path, workers, signum):
    train = [sys.executable, "-m", "lmstream.train"]
    straight = subprocess.run(train + _flags(tmp_path / "straight", workers), capture_output=True, text=True, env=ENV,
                              timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    out = tmp_path / "stopped"
    rc, lines, err = _signal_at(train + _flags(out, workers), signum, f"step 4/{STEPS}", ENV)
    name = signal.Signals(signum).name
    assert rc == 128 + signum, err[-3000:]
    stop = [line for line in lines if line.startswith(f"lmstream: stopped by {name} at step ")]
    assert stop and "Traceback" not in err, (lines[-5:], err[-2000:])
    step = int(stop[0].split(" at step ")[1].split(":")[0])
    assert 4 <= step < STEPS and (out / f"checkpoint-{step}" / "lmstream_complete.json").exists()
    assert not (out / "model.safetensors").exists()      # not a finished run
    resumed = subprocess.run(train + _flags(out, workers, "--resume_from_checkpoint", "true"), capture_output=True,
                             text=True, env=ENV, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _losses(tmp_path / "straight"), _losses(out)
    assert [a[s] for s in range(1, STEPS + 1)] == [b[s] for s in range(1, STEPS + 1)]


@pytest.mark.slow
@pytest.mark.parametrize("to", ["ranks", "launcher"])
def test_under_torchrun_every_rank_stops_at_the_same_step(tmp_path, to):
    """SIGTERM to every rank (Slurm signals each task) or to torchrun alone (a pod's PID 1), which passes it on."""
    def cmd(out, *extra):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                "lmstream.train", *_flags(out, 1, "--ddp_backend", "gloo", *extra)]

    def ranks(proc):   # the training processes (as Slurm signals every task)
        import psutil
        return [c.pid for c in psutil.Process(proc.pid).children(recursive=True)
                if "lmstream.train" in " ".join(c.cmdline()) and "torch.distributed.run" not in " ".join(c.cmdline())
                and "multiprocessing" not in " ".join(c.cmdline())]
    straight = subprocess.run(cmd(tmp_path / "straight"), capture_output=True, text=True, env=ENV, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    out = tmp_path / "stopped"
    rc, lines, err = _signal_at(cmd(out), signal.SIGTERM, f"step 4/{STEPS}", ENV,
                                target=ranks if to == "ranks" else None)
    assert rc != 0 and any("lmstream: stopped by SIGTERM at step" in line for line in lines), (rc, lines[-5:], err[-2000:])
    done = sorted(p.name for p in out.glob("checkpoint-*") if (p / "lmstream_complete.json").exists())
    assert len(done) == 1 and all((out / done[0] / "lmstream_data" / f"rank-{r}.json").exists() for r in (0, 1)), (
        lines[-5:], err[-3000:])
    resumed = subprocess.run(cmd(out, "--resume_from_checkpoint", "true"), capture_output=True, text=True, env=ENV,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _losses(tmp_path / "straight"), _losses(out)
    assert [a[s] for s in range(1, STEPS + 1)] == [b[s] for s in range(1, STEPS + 1)]


def test_the_console_entry_forwards_sigterm_to_the_notebook_job(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lmstream.cli", "--output_dir", str(out), "--max_steps", "40", "--logging_steps", "1",
           "--save_steps", "1000", "--eval_steps", "1000"]
    rc, lines, err = _signal_at(cmd, signal.SIGTERM, "step 3/40", {**ENV, "HOME": str(tmp_path)}, cwd=tmp_path)
    assert rc == 128 + signal.SIGTERM, err[-3000:]
    assert any(line.startswith("lmstream: stopped by SIGTERM at step ") for line in lines), lines[-5:]
    assert len([p for p in out.glob("checkpoint-*") if (p / "lmstream_complete.json").exists()]) == 1


def test_a_process_with_a_live_loader_iterator_exits(tmp_path):
    """Workers ignore SIGTERM, so the interpreter's exit (terminate daemonic children, then join) must not wait for
    them: a script that ends while its loader still has workers exits at once."""
    code = (
        "import sys; from transformers import AutoTokenizer; from lmstream import DataArguments\n"
        "from lmstream import build_loader, build_pipeline\n"
        f"tok = AutoTokenizer.from_pretrained({TINY_MODEL!r})\n"
        f"args = DataArguments(dataset_name={SAMPLE!r}, dataset_block_size=32)\n"
        "loader = build_loader(build_pipeline(args, tok, rank=0, world_size=1), 2, num_workers=2)\n"
        "it = iter(loader); next(it); keep = [it, loader]; keep.append(keep)   # alive until the interpreter exits\n"
        "print('one batch', flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0 and "one batch" in proc.stdout, proc.stderr[-2000:]


def test_workers_die_with_a_parent_killed_outright(tmp_path):
    """A process killed with SIGKILL runs no exit handler: its DataLoader workers go with it (Linux), instead of
    staying behind, each waiting to flush a message no one reads."""
    pytest.importorskip("ctypes")
    if sys.platform != "linux":
        pytest.skip("the parent-death signal is Linux's")
    code = ("import sys, time, os, lmstream\n"
            "from transformers import AutoTokenizer\n"
            "tok = AutoTokenizer.from_pretrained(sys.argv[2])\n"
            "args = lmstream.DataArguments(dataset_name=sys.argv[1], dataset_config_name='python-docs', "
            "dataset_block_size=64)\n"
            "it = iter(lmstream.build_loader(lmstream.build_pipeline(args, tok), batch_size=2, num_workers=2))\n"
            "next(it)\n"
            "import multiprocessing\n"
            "print(' '.join(str(c.pid) for c in multiprocessing.active_children()), flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, SAMPLE, TINY_MODEL], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(os.path.exists(f"/proc/{p}") for p in pids)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    import time
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a killed child waits for its reaper: it is gone all the same)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
