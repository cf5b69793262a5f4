"""dataset_mixture_schedule: a mixture's weights over training, keyed to the optimizer step on every rank and
worker (lmstream.mixspec, lmstream.stream.mixture)."""
import json
import logging
import shutil

import numpy as np
import pytest

import lmstream
from lmstream.config import ConfigError
from lmstream.mixspec import parse_mixture, parse_schedule, weights_at
from conftest import TINY_MODEL, make_docs, train_fed, write_parquet


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("schedule")
    write_parquet(root / "web", [f"web {d}" for d in make_docs(300, seed=1)], shards=3)
    write_parquet(root / "code", [f"code {d}" for d in make_docs(200, seed=2)], shards=2)
    return str(root / "web"), str(root / "code")


def _args(web, code, schedule, **kw):
    spec = [{"name": web, "weight": 0.5}, {"name": code, "weight": 0.5}]
    return lmstream.DataArguments(dataset_mixture=json.dumps(spec), dataset_mixture_schedule=json.dumps(schedule),
                                  dataset_block_size=16, dataset_shuffle_buffer=20, **kw)


def test_a_schedule_is_linear_between_its_points_and_checked(sources):
    web, code = sources
    mix = parse_mixture(json.dumps([{"name": web, "weight": 1}, {"name": code, "weight": 1}]))
    sched = parse_schedule([{"step": 0, "weights": {web: 9, code: 1}}, {"step": 100, "weights": [0.5, 0.5]},
                            {"step": 101, "weights": [0, 1]}], mix)
    assert weights_at(sched, 0) == [0.9, 0.1] and weights_at(sched, 50) == pytest.approx([0.7, 0.3])
    assert weights_at(sched, 100) == [0.5, 0.5] and weights_at(sched, 101) == weights_at(sched, 10**9) == [0, 1]
    bad = {"[]": "non-empty list", '[{"step": 0}]': "exactly 'step' and 'weights'",
           '[{"step": 5, "weights": [1, 1]}, {"step": 5, "weights": [1, 1]}]': "steps must increase",
           '[{"step": 0, "weights": [1]}]': "a weight for each of the 2 sources",
           '[{"step": 0, "weights": {"books": 1}}]': r"names \['books'\], not sources",
           '[{"step": 0, "weights": [0, 0]}]': "not all 0", '[{"step": -1, "weights": [1, 1]}]': "integer >= 0",
           "{": "not valid JSON"}
    for spec, why in bad.items():
        with pytest.raises(ConfigError, match=why):
            lmstream.DataArguments(dataset_mixture=json.dumps([{"name": web, "weight": 1}, {"name": code, "weight": 1}]),
                                   dataset_mixture_schedule=spec)
    with pytest.raises(ConfigError, match="dataset_mixture_schedule needs dataset_mixture"):
        lmstream.DataArguments(dataset_name=web, dataset_mixture_schedule="[]")


def _source_of_batches(loader, n):
    """The mixture source of each block of the next n batches: [[source, ...], ...]."""
    it, out = iter(loader), []
    for _ in range(n):
        next(it)
        out.append([int(np.asarray(p.rows if hasattr(p, "rows") else p)[0][0]) for p in loader.provenance])
    return out, it


JUMP = [{"step": 0, "weights": [1, 0]}, {"step": 20, "weights": [1, 0]}, {"step": 21, "weights": [0, 1]}]


@pytest.mark.parametrize("workers,accumulation", [(0, 1), (2, 3), (3, 2)])
def test_every_block_takes_the_weights_of_the_step_it_feeds(sources, tokenizer, workers, accumulation):
    """All from one source up to step 20, all from the other from step 21 on: exact, whatever the workers and the
    gradient accumulation (the loader hands out its workers' batches in turn); and a resume in the middle of the
    schedule (with one worker less, elastic) goes on at the step it stood at."""
    web, code = sources
    ds = lmstream.build_pipeline(_args(web, code, JUMP), tokenizer, seed=1)
    ds.set_batches(3, accumulation)
    loader = lmstream.build_loader(ds, 3, workers)
    got, it = _source_of_batches(loader, 30 * accumulation)
    for r, blocks in enumerate(got):
        assert set(blocks) == {0 if r // accumulation <= 20 else 1}, (r, blocks)
    # a checkpoint at step 15 (inside the first part), resumed with one worker less (elastic: the readers change)
    first = lmstream.build_pipeline(_args(web, code, JUMP), tokenizer, seed=1)
    first.set_batches(3, accumulation)
    loader = lmstream.build_loader(first, 3, workers)
    _source_of_batches(loader, 15 * accumulation)
    state = json.loads(json.dumps(loader.state_dict()))
    resumed = lmstream.build_pipeline(_args(web, code, JUMP), tokenizer, seed=1)
    resumed.set_batches(3, accumulation)
    if workers:
        resumed.resume_elastic([state], workers - 1)
        again = lmstream.build_loader(resumed, 3, workers - 1)
    else:
        again = lmstream.build_loader(resumed, 3, 0)
        again.load_state_dict(state)
    later, _ = _source_of_batches(again, 15 * accumulation)
    for r, blocks in enumerate(later, start=15 * accumulation):
        assert set(blocks) == {0 if r // accumulation <= 20 else 1}, (r, blocks)


def test_realised_shares_follow_the_schedule_within_3_percent(sources, tokenizer):
    """4,000 blocks (500 steps of 8): a constant part, a jump and a linear part; each window of 125 steps holds
    the share the schedule gives on average, within 3 percentage points."""
    web, code = sources
    schedule = [{"step": 0, "weights": [0.9, 0.1]}, {"step": 199, "weights": [0.9, 0.1]},
                {"step": 200, "weights": [0.2, 0.8]}, {"step": 500, "weights": [0.7, 0.3]}]
    ds = lmstream.build_pipeline(_args(web, code, schedule), tokenizer, seed=2)
    ds.set_batches(4, 2)
    got, _ = _source_of_batches(lmstream.build_loader(ds, 4, 0), 1000)
    sched = parse_schedule(schedule, parse_mixture(_args(web, code, schedule).dataset_mixture))
    worst = 0.0
    for lo in range(0, 500, 125):
        blocks = [b for r in range(2 * lo, 2 * (lo + 125)) for b in got[r]]
        realised = blocks.count(1) / len(blocks)
        expected = np.mean([weights_at(sched, s)[1] for s in range(lo, lo + 125)])
        worst = max(worst, abs(realised - expected))
    assert worst < 0.03, worst


def test_a_change_at_resume_needs_the_flag(sources, tokenizer, caplog):
    web, code = sources
    ds = lmstream.build_pipeline(_args(web, code, JUMP), tokenizer, seed=1)
    loader = lmstream.build_loader(ds, 3, 0)
    _source_of_batches(loader, 5)
    state = json.loads(json.dumps(loader.state_dict()))
    other = [{"step": 0, "weights": [0, 1]}]
    refused = lmstream.build_loader(lmstream.build_pipeline(_args(web, code, other), tokenizer, seed=1), 3, 0)
    with pytest.raises(ConfigError, match="another dataset_mixture_schedule: .*--dataset_accept_mixture_change"):
        refused.load_state_dict(state)
        next(iter(refused))
    accepted = lmstream.build_loader(lmstream.build_pipeline(
        _args(web, code, other, dataset_accept_mixture_change=True), tokenizer, seed=1), 3, 0)
    with caplog.at_level(logging.WARNING, logger="lmstream"):
        accepted.load_state_dict(state)
        got, _ = _source_of_batches(accepted, 5)
    assert "the weights change at this resume" in caplog.text
    assert {b for blocks in got for b in blocks} == {1}


def _job(web, code, out, schedule, *extra, steps=8):
    spec = json.dumps([{"name": web, "weight": 0.5}, {"name": code, "weight": 0.5}])
    return ["--dataset_streaming", "true", "--do_train", "--dataset_mixture", spec, "--dataset_mixture_schedule",
            json.dumps(schedule), "--config_name", TINY_MODEL, "--output_dir", str(out), "--max_steps", str(steps),
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--dataset_block_size", "32",
            "--dataset_shuffle_buffer", "5", "--logging_steps", "1", "--save_steps", "4", "--use_cpu", "true",
            "--seed", "3", "--dataloader_num_workers", "2", "--disable_tqdm", "true", "--report_to", "none", *extra]


def _sources_of_step(out, step):
    report = lmstream.inspect_step(str(out), step)
    return {s["source"] for mb in report["micro_batches"] for b in mb["blocks"] for s in b["segments"]}, report


@pytest.mark.slow
def test_the_job_follows_the_schedule_resumes_in_it_and_changes_it_only_when_told(sources, tmp_path, monkeypatch):
    """2 workers, gradient accumulation 2: steps 1-4 from the first source, 5-8 from the second (inspect names
    them); resumed from step 4, the same batches and losses; a new schedule at that resume is refused in one
    sentence, then accepted with the flag, recorded in the lineage and replayed by inspect."""
    from lmstream.training import lineage
    web, code = sources
    jump = [{"step": 0, "weights": [1, 0]}, {"step": 3, "weights": [1, 0]}, {"step": 4, "weights": [0, 1]}]
    straight = train_fed(_job(web, code, tmp_path / "a", jump), monkeypatch)
    for step in range(1, 9):
        names, report = _sources_of_step(tmp_path / "a", step)
        assert names == {web if step <= 4 else code}, (step, names)
        assert [b["input_ids"] for mb in report["micro_batches"] for b in mb["blocks"]] == \
            [row for ids, _, _ in straight[step] for row in ids.tolist()]
    resumed = train_fed(_job(web, code, tmp_path / "b", jump, "--resume_from_checkpoint",
                        str(tmp_path / "a" / "checkpoint-4")), monkeypatch)
    for step in range(5, 9):
        assert [(ids.tolist(), loss) for ids, _, loss in straight[step]] == \
            [(ids.tolist(), loss) for ids, _, loss in resumed[step]], step
    flat = [{"step": 0, "weights": [1, 0]}]
    shutil.copytree(tmp_path / "a", tmp_path / "c")      # the run, resumed in its own folder from step 4
    shutil.rmtree(tmp_path / "c" / "checkpoint-8")
    with pytest.raises(ConfigError, match="another dataset_mixture_schedule: resume with the same ones, or pass "
                                          "--dataset_accept_mixture_change true"):
        train_fed(_job(web, code, tmp_path / "c", flat, "--resume_from_checkpoint", str(tmp_path / "c" / "checkpoint-4")),
             monkeypatch)
    changed = train_fed(_job(web, code, tmp_path / "c", flat, "--resume_from_checkpoint",
                        str(tmp_path / "c" / "checkpoint-4"), "--dataset_accept_mixture_change", "true"), monkeypatch)
    segments = lineage.read(str(tmp_path / "c" / lineage.RUN_LINEAGE))
    assert [s["from_step"] for s in segments] == [0, 4]
    assert [json.loads(s["data_args"]["dataset_mixture_schedule"]) for s in segments] == [jump, flat]
    for step in (5, 8):
        names, report = _sources_of_step(tmp_path / "c", step)
        assert names == {web}
        assert [b["input_ids"] for mb in report["micro_batches"] for b in mb["blocks"]] == \
            [row for ids, _, _ in changed[step] for row in ids.tolist()]
