"""The notebooks, executed headless by papermill on tiny parameters, and the console entry point."""
import json
import os
import subprocess
import sys

import nbformat
import papermill as pm
import pytest
from transformers import AutoModelForCausalLM

from conftest import SAMPLE, TINY_MODEL

NOTEBOOKS = os.path.join(os.path.dirname(__file__), "..", "notebooks")
RENDERED = os.path.join(os.path.dirname(__file__), "..", "docs", "notebooks")
TINY_TRAIN = {"max_steps": 6, "dataset_block_size": 64, "per_device_train_batch_size": 2,
              "per_device_eval_batch_size": 2, "eval_steps": 3, "save_steps": 3, "logging_steps": 1,
              "dataloader_num_workers": 0, "max_eval_samples": 8, "sample_max_new_tokens": 8}


def _run(name, out, **params):
    return pm.execute_notebook(os.path.join(NOTEBOOKS, name), str(out), parameters=params,
                               kernel_name="python3", progress_bar=False, cwd=str(os.path.dirname(out)))


def _run_all_twice(name, folder, **params):
    """The notebook as a learner runs it: "Run all", then "Run all" again in the same kernel (the parameters cell and
    the injected one run again too). Returns the executed notebook; its second half is the second run."""
    from papermill.parameterize import parameterize_notebook
    from papermill.iorw import load_notebook_node
    nb = parameterize_notebook(load_notebook_node(os.path.join(NOTEBOOKS, name)), params)
    for c in nb.cells:
        c.metadata["tags"] = []   # nothing left for papermill to inject into
    nb.cells = nb.cells + [nbformat.from_dict(dict(c)) for c in nb.cells]
    for i, c in enumerate(nb.cells):
        c["id"] = f"cell-{i}"
    path = os.path.join(str(folder), "twice-" + name)
    nbformat.write(nb, path)
    return pm.execute_notebook(path, path, kernel_name="python3", progress_bar=False, cwd=str(folder))


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            parts.append(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def _halves(nb) -> tuple[str, str]:
    n = len(nb.cells) // 2
    return _text(nbformat.from_dict({**nb, "cells": nb.cells[:n]})), _text(nbformat.from_dict({**nb, "cells": nb.cells[n:]}))


ALL = ["01_streaming.ipynb", "02_grouping.ipynb", "03_training.ipynb", "04_resume.ipynb"]


@pytest.mark.parametrize("name", ALL)
def test_committed_without_outputs_with_python3_kernel_and_parameters_cell(name):
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert not any("!pip" in c.source or "notebook_login" in c.source for c in code)
    lines = [[ln for ln in c.source.splitlines() if ln.strip() and not ln.startswith(("import ", "from "))] for c in code]
    assert all(len(c) <= 8 for c in lines[1:])   # short cells: the logic lives in the module
    params = pm.inspect_notebook(os.path.join(NOTEBOOKS, name))
    assert params and all(p["help"] for p in params.values())   # every parameter documented


def test_streaming_notebook_run_all_twice(tmp_path):
    nb = _run_all_twice("01_streaming.ipynb", tmp_path, stream_demo_mb=4, link_mb_per_s=0, length_documents=40)
    for text in _halves(nb):
        assert "IterableDataset" in text and "world_size 2: rank 0 reads 2 of the 4 shards" in text
        assert "world_size 3: rank 0 reads 4 of the 4 shards" in text   # 4 shards over 3 ranks: every rank reads all
        assert "download, then read (datasets)" in text and "stream (lmstream, to its first block)" in text
        assert "4 shards, 12 pieces" in text and "'token': 384" in text   # 3 blocks of 128 into the first document
        assert "equals block 4 of the first stream: True" in text
        # the shuffled epoch stopped and resumed: datasets' buffer and lmstream's windows side by side
        assert "datasets, .shuffle(buffer_size)" in text and "lmstream, shuffle windows" in text
    assert (tmp_path / "runs" / "streaming-demo" / "document_lengths.png").stat().st_size > 5000


def test_grouping_notebook_run_all_twice(tmp_path):
    nb = _run_all_twice("02_grouping.ipynb", tmp_path, num_documents=40)
    for text in _halves(nb):
        assert "def group_texts" in text and "⟨EOS⟩" in text and "<|endoftext|>" in text
        kept = {line.split()[0]: float(line.split()[-1].rstrip("%")) for line in text.splitlines()
                if line.startswith(("reference:", "lmstream:"))}
        assert kept["lmstream:"] > 99 and kept["reference:"] < 50   # long documents: truncation loses most tokens
        assert "padding (% of positions)" in text
        assert "the blocks made by hand: True | carried over: [37  0]" in text   # the toy, then the packer
        assert "documents of about 3 KB" in text and "attention work per token" in text
    assert (tmp_path / "runs" / "grouping-demo" / "kept_tokens.png").exists()


def test_resume_notebook_run_all_twice(tmp_path):
    nb = _run_all_twice("04_resume.ipynb", tmp_path, max_steps=8, stop_after=4, cost_size_mb=4, cost_block_size=128,
                        cost_batch_size=2, cost_points="5,20", elastic_stop_after=5, inspect_at=7)
    for text in _halves(nb):
        assert "step 7: the replayed blocks equal the stream's batch: True" in text
        assert "replayed from" in text and "checkpoint-4" in text and "document tokens" in text
        assert "batch 5 after the resume equals batch 5 of the uninterrupted stream: True" in text
        assert "steps 5-8: identical losses: True" in text
        assert "every token of every document once, trained or dropped at the end: True" in text
        assert "on 1 worker instead of 2, the next batch is the same: True" in text
        assert "Trainer skip, reference pipeline (s)" in text and "reference skip / position" in text
        assert "ms per batch already trained on" in text and "re-reads nothing already trained on" in text
    assert (tmp_path / "runs" / "resume-demo" / "resume_losses.png").stat().st_size > 5000


def test_training_notebook_run_all_twice(tmp_path):
    nb = _run_all_twice("03_training.ipynb", tmp_path, **{**TINY_TRAIN, "dataloader_num_workers": 2})
    for text in _halves(nb):
        assert "labels == input_ids: True" in text and "Trainer subclass StreamingTrainer" in text
        assert "lmstream: done" in text and "lmstream: plan" in text   # trainer.train() in the cell, the run's lines
        assert "lmstream_data/rank-0.json" in text and "next token in it" in text and "perplexity" in text
    demo = tmp_path / "runs" / "notebook-demo"
    assert (demo / "training_curves.png").stat().st_size > 10000 and (demo / "checkpoint-6").is_dir()


def test_training_notebook_is_the_job(tmp_path):
    out = tmp_path / "run"
    nb = _run("03_training.ipynb", tmp_path / "report.ipynb", output_dir=str(out), **TINY_TRAIN)
    with open(out / "all_results.json") as f:
        metrics = json.load(f)
    assert metrics["eval_perplexity"] > 1 and metrics["train_loss"] > 0
    assert (out / "training_curves.png").stat().st_size > 10000
    assert AutoModelForCausalLM.from_pretrained(out).config.n_layer == 2
    assert nb.metadata["papermill"]["parameters"]["max_steps"] == 6   # parameters recorded in the report
    assert "perplexity" in _text(nb)


def test_bad_parameters_fail_with_the_modules_message(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="Unknown notebook parameter.*max_stepz"):
        _run("03_training.ipynb", tmp_path / "r1.ipynb", output_dir=str(tmp_path / "a"), max_stepz=3)
    with pytest.raises(pm.PapermillExecutionError, match="torch_dtype='float8'"):
        _run("03_training.ipynb", tmp_path / "r2.ipynb", output_dir=str(tmp_path / "b"), torch_dtype="float8")
    with pytest.raises(pm.PapermillExecutionError, match="Unknown argument.*--bogus_flag"):
        _run("03_training.ipynb", tmp_path / "r3.ipynb", output_dir=str(tmp_path / "c"), extra_args={"bogus_flag": 1})


def test_console_entry_point_takes_the_seed_flags(tmp_path):
    out = tmp_path / "output-checkpoint"
    flags = ["--dataset_streaming", "true", "--do_train", "--eval_strategy", "no", "--dataset_name", SAMPLE,
             "--dataset_config_name", "python-docs", "--dataset_group_text", "true", "--dataloader_num_workers", "2",
             "--max_steps", "4", "--config_name", TINY_MODEL, "--output_dir", str(out),
             "--per_device_train_batch_size", "2", "--logging_steps", "2", "--save_steps", "2",
             "--dataset_block_size", "64", "--use_cpu", "true"]
    proc = subprocess.run([sys.executable, "-m", "lmstream.cli", *flags], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = nbformat.read(out / "report.ipynb", as_version=4)
    assert report.metadata["papermill"]["parameters"]["dataloader_num_workers"] == 2
    assert (out / "checkpoint-4" / "lmstream_data" / "rank-0.json").exists()
    assert AutoModelForCausalLM.from_pretrained(out) is not None
    bad = subprocess.run([sys.executable, "-m", "lmstream.cli", *flags, "--max_stepz", "3"], capture_output=True, text=True)
    assert bad.returncode == 2 and "max_stepz" in bad.stderr


def test_training_notebook_launches_processes_and_each_writes_its_position(tmp_path):
    """num_processes 2: the notebook shows rank 0's model and data, and fit() launches 2 processes (notebook_launcher,
    CPU here) that train together; each rank saves its data position."""
    out = tmp_path / "run"
    nb = _run("03_training.ipynb", tmp_path / "report.ipynb", output_dir=str(out), num_processes=2, use_cpu=True,
              **TINY_TRAIN)
    text = _text(nb)
    assert "rank 0 of 2" in text and "lmstream: run   2 process(es)" in text
    assert {p.name for p in (out / "checkpoint-6" / "lmstream_data").iterdir()} >= {"rank-0.json", "rank-1.json"}
    assert json.loads((out / "all_results.json").read_text())["eval_perplexity"] > 1


def test_rendered_copies_hold_the_notebooks_cells():
    """docs/notebooks/ holds every notebook executed on its defaults, with its outputs (what GitHub shows a
    reader); a notebook changed without rendering it again fails here: `python -m lmstream.tools.render
    docs/notebooks`."""
    from lmstream.tools.render import stale
    assert stale(NOTEBOOKS, RENDERED) == []
    for name in ALL:
        nb = nbformat.read(os.path.join(RENDERED, name), as_version=4)
        outputs = [o for c in nb.cells for o in c.get("outputs", [])]
        assert outputs and all(o.get("output_type") != "error" for o in outputs)
        assert any("image/png" in o.get("data", {}) for o in outputs)   # its figures are on the page


def _checkout(root: str) -> list[str]:
    """The checkout's top level, less what building the wheel makes there (tests/test_job.py may build it at the
    same time, in another test process)."""
    return sorted(n for n in os.listdir(root) if n not in ("build", "dist") and not n.endswith(".egg-info"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_every_notebook_renders_on_its_defaults(tmp_path, name):
    """What a learner gets from "Run all" on a fresh checkout, through the command that makes docs/notebooks/: the
    defaults (bundled sample, tiny model, the local copies 01 and 04 build) run offline to the end, in a scratch
    folder (the checkout gets nothing), and the copy holds the notebook's cells, its outputs and its figures."""
    from lmstream.tools.render import render, stale
    before = _checkout(os.path.dirname(NOTEBOOKS))
    copy = render(name, str(tmp_path))
    nb = nbformat.read(copy, as_version=4)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert all(o.get("output_type") != "error" for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert "papermill" not in nb.metadata and name not in " ".join(stale(NOTEBOOKS, str(tmp_path)))
    assert _checkout(os.path.dirname(NOTEBOOKS)) == before
