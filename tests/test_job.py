"""The job as people run it: what the terminal shows (live), --help, reruns, the notebook run twice in Jupyter,
errors, files written only where they belong, and the job from an installed wheel."""
import os
import subprocess
import sys

import papermill as pm
import pytest

from conftest import SAMPLE
from test_docs import terminal_lines_drifted

NOTEBOOKS = os.path.join(os.path.dirname(__file__), "..", "notebooks")
SHORT = ["--max_steps", "6", "--logging_steps", "2", "--eval_steps", "3", "--save_steps", "3"]


def _env(home):
    os.makedirs(home, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("IPYTHONDIR", "MPLCONFIGDIR", "JUPYTER_CONFIG_DIR")}
    return {**env, "HOME": str(home), "OMP_NUM_THREADS": "1"}


def _live(cmd, env, cwd):
    """Run `cmd`, reading stdout line by line: (lines, whether a progress line arrived while it still ran, rc, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    lines, live = [], False
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("step ") and proc.poll() is None:
            live = True
    err = proc.stderr.read()
    return lines, live, proc.wait(timeout=600), err


def test_the_console_entry_shows_progress_live_refuses_a_rerun_and_resumes(tmp_path):
    home, cmd = tmp_path / "home", [sys.executable, "-m", "lmstream.cli", "--output_dir", "out", *SHORT]
    lines, live, rc, err = _live(cmd, _env(home), tmp_path)
    assert rc == 0, err[-3000:]
    assert err == ""                                    # a clean default run prints no warning
    text = "\n".join(lines)
    assert live                                         # progress reached the terminal while training
    for want in ("lmstream: model GPT2LMHeadModel", "lmstream: data  ", "python-docs", ", tokenized by ",
                 "lmstream: run   1 process(es) x 2",
                 "lmstream: plan  6 steps", "step 2/6 [", "| loss ", "| lr ", "ETA ", "eval  step 3", "lmstream: done  6 steps",
                 "tokens seen", "checkpoint-3, checkpoint-6", "lmstream: report saved: out/report.ipynb"):
        assert want in text, want
    assert "{'loss'" not in text and text.count("lmstream: done") == 1   # no raw dicts, one summary
    assert terminal_lines_drifted(lines, "out") == []   # README.md's "What the terminal shows"
    assert not any(home.iterdir())                      # nothing written into HOME
    report = (tmp_path / "out" / "report.ipynb").read_bytes()
    again = subprocess.run(cmd, capture_output=True, text=True, env=_env(home), cwd=tmp_path, timeout=600)
    assert again.returncode == 2 and again.stderr.startswith("error: output_dir 'out' already holds files")
    assert (tmp_path / "out" / "report.ipynb").read_bytes() == report
    assert sorted(p.name for p in (tmp_path / "out").glob("report*")) == ["report.ipynb"]
    more = [sys.executable, "-m", "lmstream.cli", "--output_dir", "out", *SHORT[:-2], "--save_steps", "9",
            "--resume_from_checkpoint", "true", "--max_steps", "8"]
    lines, _, rc, err = _live(more, _env(home), tmp_path)
    assert rc == 0, err[-3000:]
    assert any(line.startswith("lmstream: resumed from checkpoint-6: global block ") for line in lines), lines
    assert "missing keys" not in err and (tmp_path / "out" / "report.ipynb").read_bytes() == report


def test_errors_are_one_sentence_first_exit_2_and_write_nothing(tmp_path):
    env = _env(tmp_path / "home")
    missing = subprocess.run([sys.executable, "-m", "lmstream.cli", "--output_dir", "a", "--dataset_name", "/no/such/data"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert missing.returncode == 2 and missing.stderr.startswith("error: dataset_name '/no/such/data' does not exist")
    assert not (tmp_path / "a").exists()
    bad = subprocess.run([sys.executable, "-m", "lmstream.cli", "--output_dir", "b", "--max_steps", "ten"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert bad.returncode == 2 and bad.stderr.splitlines()[-1].startswith("error:") and "ten" in bad.stderr
    assert len(bad.stderr.splitlines()) <= 3 and not (tmp_path / "b").exists()
    # an error only the job itself can find (the block is larger than the model's 256 positions)
    late = subprocess.run([sys.executable, "-m", "lmstream.cli", "--output_dir", "c", "--dataset_block_size", "4096",
                           *SHORT], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert late.returncode == 2 and late.stderr.startswith("error: dataset_block_size=4096 is larger"), late.stderr[-2000:]


def test_help_is_fast_lists_the_reference_flags_first_and_imports_no_torch():
    code = ("import sys, time; t = time.perf_counter(); import lmstream.cli; lmstream.cli.main(['--help']); "
            "print('took', time.perf_counter() - t, 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.strip().endswith("False False")
    flags = [line.split()[0] for line in out.splitlines() if line.startswith("  --")]
    assert flags[:6] == ["--dataset_streaming", "--do_train", "--eval_strategy", "--dataset_name",
                         "--dataset_config_name", "--dataset_group_text"]
    assert {"--dataset_shuffle_buffer", "--dataset_retry_budget", "--config_overrides", "--max_train_samples"} <= set(flags)
    assert "--help-all" in out and "usage: lmstream-train" in out
    module = subprocess.run([sys.executable, "-m", "lmstream.train", "--help"], capture_output=True, text=True, timeout=120)
    assert module.returncode == 0 and "usage: python -m lmstream.train" in module.stdout
    full = subprocess.run([sys.executable, "-m", "lmstream.cli", "--help-all"], capture_output=True, text=True, timeout=120)
    assert full.returncode == 0 and "--learning_rate" in full.stdout and "usage: lmstream-train" in full.stdout


def test_the_training_notebook_run_all_twice_in_jupyter(tmp_path):
    """No output_dir (as in Jupyter): a demo run in runs/notebook-demo, replaced each time; both succeed."""
    for n in (1, 2):
        pm.execute_notebook(os.path.join(NOTEBOOKS, "03_training.ipynb"), str(tmp_path / f"run{n}.ipynb"),
                            parameters={"max_steps": 4, "eval_steps": 2, "save_steps": 2, "logging_steps": 2,
                                        "sample_max_new_tokens": 4}, kernel_name="python3", progress_bar=False,
                            cwd=str(tmp_path))
    demo = tmp_path / "runs" / "notebook-demo"
    assert (demo / ".lmstream-demo").exists() and (demo / "model.safetensors").exists()
    assert sorted(p.name for p in demo.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    (demo / ".lmstream-demo").unlink()                 # a folder lmstream did not make is never removed
    with pytest.raises(pm.PapermillExecutionError, match="holds another run: set output_dir"):
        pm.execute_notebook(os.path.join(NOTEBOOKS, "03_training.ipynb"), str(tmp_path / "run3.ipynb"),
                            parameters={"max_steps": 2}, kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    assert (demo / "model.safetensors").exists()


def _site_dirs() -> list[str]:
    """The running environment's site-packages folders (a venv's own, not its base interpreter's)."""
    return [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)]


def _isolated_venv(path) -> tuple[str, str]:
    """A venv that sees this test run's packages and nothing of the base interpreter: no --system-site-packages
    (that would expose the *base* interpreter's site-packages, which a fresh machine leaves empty), and a .pth
    naming the running environment's site-packages instead. Plain path lines: the checkout's editable finder
    (a .pth of its own there) is not run, so `lmstream` comes from whatever the venv installs itself.
    Returns (the venv's python, its own site-packages)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=600)
    py = os.path.join(str(path), "bin", "python")
    own = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(own, "lmstream-tests-runtime.pth"), "w") as f:
        f.write("".join(d + "\n" for d in _site_dirs()))
    return py, own


def test_an_isolated_venv_sees_the_test_run_packages_and_not_the_base_interpreter(tmp_path):
    py, _ = _isolated_venv(tmp_path / "venv")
    probe = "import sys, papermill, transformers; print(sys.base_prefix); print('\\n'.join(sys.path))"
    out = subprocess.run([py, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split("\n")
    base, path = out[0], out[1:]
    base_sites = [p for p in path if p.startswith(base) and os.path.basename(p) == "site-packages"]
    if sys.prefix != sys.base_prefix:    # this run is a venv: its base interpreter's packages stay out
        assert not base_sites, base_sites


@pytest.mark.slow
def test_the_job_runs_from_an_installed_wheel(tmp_path):
    """`pip install .` (a wheel, not an editable install) ships the notebooks and assets the job needs; the venv
    it goes into sees this run's packages, never the base interpreter's (tests/test_job.py::_isolated_venv)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), root], check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("lmstream-*.whl"))
    venv = tmp_path / "venv"
    py, target = _isolated_venv(venv)
    subprocess.run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=600)   # pip of this run, installing into the venv
    entry = venv / "bin" / "lmstream-train"
    assert entry.read_text().startswith(f"#!{py}")
    where = subprocess.run([py, "-c", "import lmstream.cli as c; print(c.__file__, c.NOTEBOOK)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout.split()
    assert all(w.startswith(target) for w in where) and os.path.isfile(where[1])   # the wheel, not the checkout
    env = {k: v for k, v in _env(tmp_path / "home").items() if k != "PYTHONPATH"}
    run = subprocess.run([str(entry), "--output_dir", "out", *SHORT], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "lmstream: done  6 steps" in run.stdout and (tmp_path / "out" / "report.ipynb").exists()
    assert str(SAMPLE).split("lmstream/")[-1] in run.stdout   # the bundled sample, from the installed package
    kernel = tmp_path / "out" / ".lmstream" / "jupyter" / "kernels" / "python3" / "kernel.json"
    assert kernel.exists() and f'"{py}"' in kernel.read_text()   # the notebook ran in the wheel's interpreter


def test_papermill_itself_streams_the_same_lines(tmp_path):
    (tmp_path / "run").mkdir()
    cmd = [sys.executable, "-m", "papermill", os.path.join(NOTEBOOKS, "03_training.ipynb"), "run/report.ipynb",
           "--stdout-file", "/dev/stdout", "--no-progress-bar", "-p", "output_dir", "run", "-p", "max_steps", "4",
           "-p", "logging_steps", "2", "-p", "eval_steps", "2", "-p", "save_steps", "2"]
    lines, live, rc, err = _live(cmd, _env(tmp_path / "home"), tmp_path)
    assert rc == 0, err[-3000:]
    assert live and "lmstream: done  4 steps" in "\n".join(lines) and "step 4/4 [" in "\n".join(lines)
