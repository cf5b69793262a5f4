"""Weighted mixtures: proportions follow the weights, resume is exact, exhaustion stops or cycles."""
import json

import pytest
import torch

import lmstream
import lmstream.train as lt
from lmstream.config import ConfigError
from conftest import TINY_MODEL, make_docs, write_parquet


@pytest.fixture
def sources(tmp_path):
    write_parquet(tmp_path / "web", [f"web {d}" for d in make_docs(300, seed=1)], shards=3)
    write_parquet(tmp_path / "code", [f"code {d}" for d in make_docs(200, seed=2)], shards=2)
    return str(tmp_path / "web"), str(tmp_path / "code")


def _mix(web, code, w=(0.7, 0.3), code_exhausted="cycle", **kw):
    spec = [{"name": web, "weight": w[0]}, {"name": code, "weight": w[1], "on_exhausted": code_exhausted}]
    kw.setdefault("dataset_block_size", 16)
    return lmstream.DataArguments(dataset_mixture=json.dumps(spec), dataset_shuffle_buffer=20, **kw)


def test_realised_proportions_follow_the_weights(sources, tokenizer):
    web, code = sources
    ds = lmstream.build_pipeline(_mix(web, code), tokenizer, seed=3)
    it = iter(ds)
    for _ in range(3000):
        next(it)
    stats = ds.stats
    share = stats[f"tokens/{web}"] / (stats[f"tokens/{web}"] + stats[f"tokens/{code}"])
    assert abs(share - 0.7) < 0.03
    assert stats["blocks"] == 3000


@pytest.mark.parametrize("workers", [0, 2])
def test_mixture_resume_is_bitwise_exact(sources, tokenizer, workers):
    web, code = sources
    def loader():
        return lmstream.build_loader(lmstream.build_pipeline(_mix(web, code), tokenizer, seed=5), 4, workers)
    full = iter(loader())
    ref = [next(full) for _ in range(60)]
    run = loader()
    it = iter(run)
    [next(it) for _ in range(17)]
    state = json.loads(json.dumps(run.state_dict()))
    del it
    fresh = loader()
    fresh.load_state_dict(state)
    it = iter(fresh)
    got = [next(it) for _ in range(43)]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(ref[17:], got))
    other = lmstream.build_loader(lmstream.build_pipeline(_mix(web, code, w=(0.5, 0.5)), tokenizer, seed=5), 4, workers)
    with pytest.raises(ConfigError, match="other dataset_mixture weights"):
        other.load_state_dict(state)
        next(iter(other))


def test_a_source_that_stops_ends_the_mixture_and_one_that_cycles_does_not(sources, tokenizer, caplog):
    web, code = sources
    with caplog.at_level("WARNING", logger="lmstream"):
        n = sum(1 for _ in lmstream.build_pipeline(_mix(web, code, code_exhausted="stop"), tokenizer))
    assert n > 0 and "is exhausted" in caplog.text
    cycling = iter(lmstream.build_pipeline(_mix(web, code), tokenizer))
    assert sum(1 for _ in zip(range(n + 500), cycling)) == n + 500


def test_bad_mixtures_are_refused():
    for spec, msg in (("[{\"name\": \"a\"}]", "needs a 'name' and a 'weight'"), ("not json", "not valid JSON"),
                      ('[{"name": "a", "weight": -1}]', "weight must be a positive number"),
                      ('[{"name": "a", "weight": 1, "colour": "red"}]', "unknown key")):
        with pytest.raises(ConfigError, match=msg):
            lmstream.DataArguments(dataset_mixture=spec)


def test_training_on_a_mixture_logs_source_shares(sources, tmp_path):
    import yaml
    web, code = sources
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        "do_train": True, "dataset_mixture": [{"name": web, "weight": 0.7}, {"name": code, "weight": 0.3}],
        "config_name": TINY_MODEL, "output_dir": str(tmp_path / "out"), "max_steps": 6, "logging_steps": 2,
        "per_device_train_batch_size": 2, "dataset_block_size": 32, "save_steps": 3, "use_cpu": True,
        "report_to": "none", "disable_tqdm": True}))
    lt.train(*lt.parse_args([str(tmp_path / "run.yaml")]))
    hist = json.load(open(tmp_path / "out" / "trainer_state.json"))["log_history"]
    logged = [h for h in hist if f"mix/{web}" in h]
    assert logged and all(abs(h[f"mix/{web}"] + h[f"mix/{code}"] - 1) < 1e-3 for h in logged)
    assert all("data_epoch" in h for h in logged)
    state = json.load(open(tmp_path / "out" / "checkpoint-6" / "lmstream_data" / "rank-0.json"))
    assert "mixture_n" in json.dumps(state)


def test_a_mixture_resumes_from_a_copy_of_its_files_under_another_path(sources, tokenizer, tmp_path):
    """The same bytes under other paths (another node's mount) resume exactly; other bytes under the same names
    are refused."""
    import shutil
    web, code = sources
    run = lmstream.build_pipeline(_mix(web, code), tokenizer, seed=5)
    it = iter(run)
    [next(it) for _ in range(25)]
    state = json.loads(json.dumps(run.state_dict()))
    ref = [next(it)["input_ids"] for _ in range(20)]
    moved = tmp_path / "elsewhere"
    web2, code2 = shutil.copytree(web, moved / "web"), shutil.copytree(code, moved / "code")
    fresh = lmstream.build_pipeline(_mix(str(web2), str(code2)), tokenizer, seed=5)
    fresh.load_state_dict(state)
    it = iter(fresh)
    assert all(torch.equal(a, next(it)["input_ids"]) for a in ref)
    write_parquet(moved / "code", [f"other {d}" for d in make_docs(200, seed=9)], shards=2)   # same names, new bytes
    changed = lmstream.build_pipeline(_mix(str(web2), str(code2)), tokenizer, seed=5)
    with pytest.raises(ConfigError, match="another dataset_mixture|data changed"):
        changed.load_state_dict(state)
