"""The benchmark runs end to end in its reduced form (no timing assertions: CI machines are noisy)."""
import json
import subprocess
import sys


def test_bench_quick_completes_and_reports(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lmstream.tools.bench", "all", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "all.json") as f:
        r = json.load(f)
    assert r["pipeline"]["lmstream_kept"] > 0.99 > r["pipeline"]["reference_kept"]
    assert r["resume"]["lmstream_late_s"] > 0 and r["train"]["steps"] == 6
    assert (tmp_path / "all.png").exists() and (tmp_path / "all-resume.png").exists()
    assert "QUICK RUN (bundled sample" in proc.stdout and "not comparable" in proc.stdout
    assert "lmstream / HF tokenizer bound (texts in memory)" in proc.stdout and ">= 5" in proc.stdout
    assert "lmstream in one process / fastest tokenizer alone" in proc.stdout and "prepare, all cores" in proc.stdout
    assert r["pipeline"]["lmstream_fastokens_tok_s"] > 0 and r["prepare"]["processes"] >= 1
    assert "provenance's cost" in proc.stdout and -1 < r["pipeline"]["provenance_cost"] < 1
    assert "lmstream-train --help, seconds" in proc.stdout and r["help_seconds"] > 0


def test_gpu_check_dry_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "lmstream.tools.gpucheck", "--cpu-dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["pipeline"]["tokens_per_second"] > 0 and r["synthetic"]["tokens_per_second"] > 0
    assert 0 <= r["pipeline"]["data_wait_fraction"] < 1 and r["pipeline_over_synthetic"] > 0


def test_gpu_job_script_dry_runs_on_the_cpu(tmp_path):
    """bench/gpu_job.sh with tiny sizes: straight, exact resume and resume with fewer workers (logical readers: the
    same blocks, so the same losses), and its summary."""
    import os
    import subprocess
    root = os.path.join(os.path.dirname(__file__), "..")
    env = {**os.environ, "SMALL": "1", "STEPS": "20", "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs"),
           "OMP_NUM_THREADS": "1", "DATA": os.path.join(root, "lmstream", "assets", "sample", "data", "python-docs")}
    proc = subprocess.run(["bash", os.path.join(root, "bench", "gpu_job.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    assert "exact: |loss - straight| max over steps 20-20: 0.00e+00" in proc.stdout
    assert "fewer: |loss - straight| max over steps 20-20: 0.00e+00" in proc.stdout
    assert "1 worker(s) serving 8 logical readers" in (tmp_path / "out" / "fewer.log").read_text()


def test_the_logical_readers_benchmark_runs_its_variants_side_by_side(tmp_path):
    from conftest import SAMPLE, TINY_MODEL
    from lmstream.tools import bench_logical
    report = bench_logical.main([SAMPLE, "--config", "python-docs", "--tokenizer", TINY_MODEL, "--readers", "2",
                                 "--workers", "0", "--blocks", "40", "--block_size", "64", "--rounds", "1",
                                 "--json", str(tmp_path / "r.json")])
    rows = {(r["logical_readers"], r["workers"]): r for r in report["results"]}
    assert sorted(rows) == [(0, 0), (2, 0)] and rows[(0, 0)]["tokens_per_s_vs_per_process"] == 1.0
    assert all(r["tokens_per_s"] > 0 and r["first_batch_s"] > 0 and r["resume_first_batch_s"] > 0 for r in rows.values())
    assert json.loads((tmp_path / "r.json").read_text())["results"] == report["results"]
