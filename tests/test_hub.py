"""The Hub path, against a local server that speaks the Hub's HTTP API (HF_ENDPOINT): the reference command's
dataset resolves once at a pinned commit, workers make no API call, faults are ridden out, a run reads only
the column chunks it needs, and a checkpoint pins the data version."""
import json
import logging
import os
import shutil
import subprocess
import sys
import urllib.parse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import lmstream
from lmstream.corpus import planfile, ranges
from lmstream.config import ConfigError
from lmstream.corpus.documents import DocumentStream, iter_documents
from conftest import TINY_MODEL, make_docs
from hubserver import HubServer

REPO, CONFIG = "HuggingFaceFW/fineweb", "CC-MAIN-2024-10"
FAST = dict(dataset_retry_backoff=0.01, dataset_max_retry_wait=0.05, dataset_read_timeout=2.0)
CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/*/*
- config_name: CC-MAIN-2024-10
  data_files:
  - split: train
    path: data/CC-MAIN-2024-10/*
- config_name: CC-MAIN-2023-50
  data_files:
  - split: train
    path: data/CC-MAIN-2023-50/*
---
# FineWeb (a small stand-in)
"""


def make_fineweb(folder, docs_per_file=60, files=5, rows_per_group=20, seed=0):
    """A FineWeb-shaped repository: data/<dump>/000_0000k.parquet with FineWeb's first columns, and a card."""
    for d, dump in enumerate((CONFIG, "CC-MAIN-2023-50")):
        os.makedirs(os.path.join(folder, "data", dump), exist_ok=True)
        for i in range(files):
            docs = make_docs(docs_per_file, seed=seed + 100 * d + i)
            table = pa.table({"text": docs, "id": [f"<urn:uuid:{dump}-{i}-{j}>" for j in range(len(docs))],
                              "dump": [dump] * len(docs), "url": [f"https://example.org/{i}/{j}" for j in range(len(docs))]})
            pq.write_table(table, os.path.join(folder, "data", dump, f"000_{i:05d}.parquet"), row_group_size=rows_per_group)
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write(CARD)
    return folder


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_fineweb(str(tmp_path_factory.mktemp("fineweb")))


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """Point huggingface_hub at a server (as HF_ENDPOINT does), online, with a fresh cache."""
    from huggingface_hub import constants

    def use(endpoint, token=None):
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.setattr(ranges, "token", lambda: token)
    return use


def _docs(plan, args):
    return list(iter_documents(plan, args))


def _args(**kw):
    return lmstream.DataArguments(**{"dataset_name": REPO, "dataset_config_name": CONFIG, "dataset_shuffle": False,
                                     **FAST, **kw})


def _local_docs(repo):
    return _docs(lmstream.plan_dataset(lmstream.DataArguments(dataset_name=repo, dataset_config_name=CONFIG,
                                                              dataset_shuffle=False)), _args())


def test_the_reference_config_resolves_to_pinned_urls_with_two_api_calls(repo, hub_env):
    server = HubServer({REPO: repo})
    with server as endpoint:
        hub_env(endpoint)
        plan = lmstream.plan_dataset(_args())
        docs = _docs(plan, _args())
    sha = server.snapshots[REPO]["main"]
    assert [s.name for s in plan.shards] == [f"{REPO}@{sha}/data/{CONFIG}/000_{i:05d}.parquet" for i in range(5)]
    assert all(f"/resolve/{sha}/" in s.url and s.size > 0 and len(s.etag) == 64 for s in plan.shards)
    # 5 files listed 3 per page: 2 pages of one folder; the card and the commit come from resolve/, not the API
    assert [(m, urllib.parse.unquote(p)) for m, p in server.api_calls()] == [("GET", f"/api/datasets/{REPO}/tree/{sha}/data/{CONFIG}?recursive=false&expand=false"),
                                  ("GET", f"/api/datasets/{REPO}/tree/{sha}/data/{CONFIG}?recursive=false&expand=false&cursor=3")]
    assert docs == _local_docs(repo)


@pytest.mark.parametrize("workers", [0, 2, 8])
def test_dataloader_workers_make_no_api_calls(repo, hub_env, tokenizer, workers):
    server = HubServer({REPO: repo}, gated=[REPO])
    with server as endpoint:
        hub_env(endpoint, token=server.token)
        args = _args(dataset_block_size=32, dataset_shuffle=True, dataset_shuffle_buffer=16)
        blocks = lmstream.build_pipeline(args, tokenizer, seed=0)
        planned = len(server.api_calls())
        loader = lmstream.build_loader(blocks, batch_size=2, num_workers=workers)
        batches = [b for _, b in zip(range(40), loader)]
        del loader
    assert len(batches) == 40
    assert planned <= 6 and len(server.api_calls()) == planned, server.api_calls()
    cdn = [r for r in server.requests if r[0] == "cdn"]
    assert cdn and all(r[5] is None for r in cdn)                 # the token never reaches the storage host
    assert all(r[5] == f"Bearer {server.token}" for r in server.requests if r[0] != "cdn")


def test_429s_and_5xx_on_api_calls_are_retried_with_logged_waits(repo, hub_env, caplog):
    server = HubServer({REPO: repo}, api_faults=["429", "503", "429", "500"], retry_after=0.2)
    with server as endpoint, caplog.at_level(logging.WARNING, logger="lmstream"):
        hub_env(endpoint)
        plan = lmstream.plan_dataset(_args())
    assert len(plan.shards) == 5 and not server.api_faults
    waits = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert waits and all(endpoint in w for w in waits)
    assert any("Retry-After 0.2 s" in w for w in waits)


def test_a_429_storm_is_never_taken_for_offline_and_retry_after_is_capped(repo, hub_env, caplog):
    server = HubServer({REPO: repo}, api_faults=["429"] * 1000, retry_after=3600)
    with server as endpoint, caplog.at_level(logging.WARNING, logger="lmstream"):
        hub_env(endpoint)
        with pytest.raises(ConfigError) as err:
            lmstream.plan_dataset(_args(dataset_retry_budget=1.0, dataset_max_retry_wait=0.2))
    assert "offline" not in str(err.value) and "rate-limiting" in str(err.value) and REPO in str(err.value)
    assert any("Retry-After 3600 s" in r.getMessage() and "in 0.2 s" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kinds", [("429", "503", "reset"), ("reset",)])
def test_random_faults_on_parquet_reads_lose_and_repeat_nothing(repo, hub_env, kinds):
    server = HubServer({REPO: repo}, cdn_fault_rate=0.3, cdn_fault_kinds=kinds, seed=len(kinds))
    with server as endpoint:
        hub_env(endpoint)
        plan = lmstream.plan_dataset(_args())
        docs = _docs(plan, _args())
    assert docs == _local_docs(repo)
    assert sum(1 for r in server.requests if r[4]) >= 3


@pytest.mark.slow
def test_a_store_outage_longer_than_huggingface_hubs_own_retries_is_ridden_out(repo, hub_env):
    server = HubServer({REPO: repo})
    with server as endpoint:
        hub_env(endpoint)
        args = _args(dataset_retry_backoff=0.5, dataset_max_retry_wait=2.0, dataset_readahead_bytes=0)
        plan = lmstream.plan_dataset(args)
        stream = DocumentStream(plan, args, 0, 0, 1)
        server.outage(26)   # huggingface_hub gives up after about 23 s
        docs = [d for w in stream.windows(0, 0, (0, 0)) for d in w.docs]
    assert docs == _local_docs(repo) and stream.stats["retries"] >= 8


def test_one_epoch_downloads_the_text_column_chunks_and_footers_once(tmp_path, hub_env):
    """FineWeb-sized row groups (1,000 documents): bytes from the store / (text column chunks + footers)."""
    big = make_fineweb(str(tmp_path / "big"), docs_per_file=6000, files=2, rows_per_group=1000)
    server = HubServer({REPO: big})
    with server as endpoint:
        hub_env(endpoint)
        args = _args(dataset_shuffle=True)
        plan = lmstream.plan_dataset(args)
        docs = _docs(plan, args)
    needed = sum(len(plan.raw_footers[i]) for i in plan.footers)
    for i, meta in plan.footers.items():
        needed += sum(meta.row_group(g).column(0).total_compressed_size for g in range(meta.num_row_groups))
    files = sum(s.size for s in plan.shards)
    ratio = server.cdn_bytes / needed
    print(f"\nbytes downloaded {server.cdn_bytes}, text chunks + footers {needed}, files {files}: "
          f"{ratio:.3f}x needed, {server.cdn_bytes / files:.3f}x the files")
    assert len(docs) == 12000 and ratio <= 1.1


def test_gated_and_missing_repositories_say_what_to_do(repo, hub_env):
    server = HubServer({REPO: repo}, gated=[REPO])
    with server as endpoint:
        hub_env(endpoint)
        with pytest.raises(ConfigError, match=r"gated or private.*HF_TOKEN"):
            lmstream.plan_dataset(_args())
        with pytest.raises(ConfigError, match=r"'nobody/nothing' does not exist on the Hub"):
            lmstream.plan_dataset(_args(dataset_name="nobody/nothing"))
        hub_env(endpoint, token=server.token)
        assert len(lmstream.plan_dataset(_args()).shards) == 5
        with pytest.raises(ConfigError, match=r"CC-MAIN-1999-01' is not a config.*CC-MAIN-2024-10"):
            lmstream.plan_dataset(_args(dataset_config_name="CC-MAIN-1999-01"))


def test_a_fingerprint_is_content_it_survives_a_copy_and_changes_with_the_data(repo, tmp_path):
    import shutil
    a = lmstream.plan_dataset(lmstream.DataArguments(dataset_name=repo, dataset_config_name=CONFIG))
    copy = shutil.copytree(repo, tmp_path / "elsewhere")
    b = lmstream.plan_dataset(lmstream.DataArguments(dataset_name=str(copy), dataset_config_name=CONFIG))
    assert planfile.fingerprint(a) == planfile.fingerprint(b) and not planfile.changed(a, FAST_POLICY)
    target = copy / "data" / CONFIG / "000_00002.parquet"
    pq.write_table(pa.table({"text": make_docs(60, seed=99)}), target, row_group_size=20)
    c = lmstream.plan_dataset(lmstream.DataArguments(dataset_name=str(copy), dataset_config_name=CONFIG))
    assert planfile.fingerprint(c) != planfile.fingerprint(b)
    assert [f for f, _ in planfile.changed(b, FAST_POLICY)] == [str(target)]
    saved = planfile.save(b, str(tmp_path / "ck"))
    assert planfile.fingerprint(planfile.load(os.path.dirname(saved))) == planfile.fingerprint(b)


FAST_POLICY = lmstream.DataArguments(**FAST).retry_policy()


# -- the job, end to end, as the reference command runs it -------------------------------------------------
def _job(out, endpoint, *extra, steps=6):
    return [sys.executable, "-m", "lmstream.train", "--dataset_streaming", "true", "--do_train", "--eval_strategy", "no",
            "--dataset_name", REPO, "--dataset_config_name", CONFIG, "--dataset_group_text", "true",
            "--dataloader_num_workers", "2", "--max_steps", str(steps), "--config_name", TINY_MODEL,
            "--output_dir", str(out), "--per_device_train_batch_size", "2", "--logging_steps", "1", "--save_steps", "3",
            "--dataset_block_size", "64", "--use_cpu", "true", "--learning_rate", "1e-3", "--disable_tqdm", "true",
            "--lr_scheduler_type", "constant",   # so that a run stopped at max_steps 3 and resumed to 6 is one run
            "--dataset_retry_backoff", "0.01", "--dataset_max_retry_wait", "0.05", *extra]


def _env(endpoint, tmp_path):
    return {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1"}


def _losses(out):
    with open(os.path.join(out, "trainer_state.json")) as f:
        return [h["loss"] for h in json.load(f)["log_history"] if "loss" in h]


@pytest.mark.slow
def test_the_reference_command_trains_resumes_bitwise_and_pins_the_commit(tmp_path):
    repo = make_fineweb(str(tmp_path / "fineweb"))
    server = HubServer({REPO: repo}, cdn_fault_rate=0.2, cdn_fault_kinds=("429", "503", "reset"), seed=3)
    with server as endpoint:
        env = _env(endpoint, tmp_path)
        run = lambda *a, **k: subprocess.run(_job(*a, **k), env=env, capture_output=True, text=True,  # noqa: E731
                                             timeout=600)
        server.cdn_fault_rate = 0.0
        clean = run(tmp_path / "clean", endpoint)
        assert clean.returncode == 0, clean.stderr[-3000:]
        # the request budget on the terminal; the workers, forked after the plan's footer reads, read every
        # row group from the storage URLs those resolved (lmstream.corpus.signed)
        assert any(line.startswith("lmstream: hub ") for line in clean.stdout.splitlines()), clean.stdout
        with open(tmp_path / "clean" / "all_results.json") as f:
            metrics = json.load(f)
        assert metrics["data_hub_bytes"] > 0 and metrics.get("data_hub_resolves", 0) == 0, metrics
        assert metrics["data_hub_api_calls"] == len(server.api_calls()), metrics
        server.cdn_fault_rate = 0.2
        faulty = run(tmp_path / "faulty", endpoint)
        assert faulty.returncode == 0, faulty.stderr[-3000:]
        assert sum(1 for r in server.requests if r[4]) >= 3
        stopped = run(tmp_path / "resumed", endpoint, steps=3)
        assert stopped.returncode == 0, stopped.stderr[-3000:]
        # the dataset moves on between save and resume: the run continues on the commit it started with
        os.remove(os.path.join(repo, "data", CONFIG, "000_00004.parquet"))
        server.commit(REPO)
        before = len(server.api_calls())
        resumed = run(tmp_path / "resumed", endpoint, "--resume_from_checkpoint", "true")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert len(server.api_calls()) == before   # the checkpoint's plan: nothing listed, no footer read
    assert _losses(tmp_path / "clean") == _losses(tmp_path / "faulty")
    assert _losses(tmp_path / "clean") == _losses(tmp_path / "resumed")
    assert os.path.isfile(tmp_path / "resumed" / "checkpoint-3" / "lmstream_data" / "plan.json.gz")


def test_a_local_file_rewritten_between_save_and_resume_is_refused_or_restarted(tmp_path):
    repo = make_fineweb(str(tmp_path / "data"), files=2)
    base = ["--dataset_name", repo, "--dataset_config_name", CONFIG, "--dataloader_num_workers", "0"]
    cmd = lambda out, *a, steps=6: [x for x in _job(out, "unused", *base, *a, steps=steps)]  # noqa: E731
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd(tmp_path / "out", steps=3), env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    target = os.path.join(repo, "data", CONFIG, "000_00001.parquet")
    pq.write_table(pa.table({"text": make_docs(60, seed=77)}), target, row_group_size=20)
    ck = tmp_path / "out" / "checkpoint-3"
    before = {p: p.read_bytes() for p in ck.rglob("*") if p.is_file()}
    refused = subprocess.run(cmd(tmp_path / "out", "--resume_from_checkpoint", "true"), env=env, capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode == 2 and "000_00001.parquet" in refused.stderr and "changed" in refused.stderr
    assert {p: p.read_bytes() for p in ck.rglob("*") if p.is_file()} == before
    accepted = subprocess.run(cmd(tmp_path / "out", "--resume_from_checkpoint", "true", "--dataset_accept_changed_data",
                                  "true"), env=env, capture_output=True, text=True, timeout=600)
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    assert "starts epoch 0 again on the new data" in accepted.stderr


@pytest.mark.slow
def test_under_torchrun_rank_0_plans_for_every_rank_and_a_resume_lists_nothing(tmp_path):
    repo = make_fineweb(str(tmp_path / "fineweb"))
    server = HubServer({REPO: repo})
    with server as endpoint:
        env = _env(endpoint, tmp_path)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]

        def run(out, *extra, nproc=True):
            cmd = _job(out, endpoint, "--dataloader_num_workers", "1", *extra)
            cmd = torchrun + cmd[2:] + ["--ddp_backend", "gloo"] if nproc else cmd
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr[-3000:]
        run(tmp_path / "one", nproc=False)
        one = len(server.api_calls())
        run(tmp_path / "two")
        two = len(server.api_calls()) - one
        shutil.rmtree(tmp_path / "two" / "checkpoint-6")
        run(tmp_path / "two", "--resume_from_checkpoint", "true")
        resumed = len(server.api_calls()) - one - two
    assert two == one <= 6 and resumed == 0, (one, two, resumed)


def test_a_state_without_a_data_fingerprint_still_loads_and_a_changed_one_is_refused(repo, tokenizer):
    args = lmstream.DataArguments(dataset_name=repo, dataset_config_name=CONFIG, dataset_block_size=32)
    blocks = lmstream.build_pipeline(args, tokenizer)
    it = iter(blocks)
    next(it)
    state = blocks.state_dict()
    old = json.loads(json.dumps(state))
    del old["settings"]["data"]            # as saved before data versions were pinned
    fresh = lmstream.build_pipeline(args, tokenizer)
    fresh.load_state_dict(old)
    assert torch.equal(next(iter(fresh))["input_ids"], next(it)["input_ids"])
    other = json.loads(json.dumps(state))
    other["settings"]["data"] = "0" * 16
    with pytest.raises(ConfigError, match="The data changed since this data position was saved"):
        lmstream.build_pipeline(args, tokenizer).load_state_dict(other)


def test_a_repository_without_configs_is_resolved_by_datasets_and_read_by_pinned_url(tmp_path):
    folder = tmp_path / "plain"
    (folder / "data").mkdir(parents=True)
    for i in range(2):
        pq.write_table(pa.table({"text": make_docs(30, seed=i)}), folder / "data" / f"train-0000{i}-of-00002.parquet",
                       row_group_size=10)
    (folder / "README.md").write_text("# a card without configs\n")
    server = HubServer({"someone/plain": str(folder)})
    code = ("import json, lmstream; p = lmstream.plan_dataset(lmstream.DataArguments(dataset_name='someone/plain'));"
            "print(json.dumps([[s.url, s.size] for s in p.shards]))")
    with server as endpoint:
        r = subprocess.run([sys.executable, "-c", code], env=_env(endpoint, tmp_path), capture_output=True, text=True,
                           timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    shards = json.loads(r.stdout.strip().splitlines()[-1])
    sha = server.snapshots["someone/plain"]["main"]
    assert [u.rsplit("/", 1)[-1] for u, _ in shards] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert all(f"/resolve/{sha}/" in u and n > 0 for u, n in shards)


def test_hub_http_errors_are_classified_by_their_status():
    import httpx
    from huggingface_hub.errors import HfHubHTTPError
    from lmstream.retry import is_transient, retry_after
    req = httpx.Request("GET", "http://127.0.0.1/api/datasets/x")
    for status, transient in ((429, True), (500, True), (503, True), (401, False), (404, False)):
        resp = httpx.Response(status, headers={"Retry-After": "7"}, request=req)
        err = HfHubHTTPError(f"{status}", response=resp)
        assert is_transient(err) is transient, status
        assert retry_after(err) == 7.0


def test_hf_urls_are_pinned_to_a_commit_and_read_by_url(repo, hub_env):
    server = HubServer({REPO: repo})
    with server as endpoint:
        hub_env(endpoint)
        glob = lmstream.plan_dataset(_args(dataset_name=f"hf://datasets/{REPO}/data/{CONFIG}/*.parquet"))
        one = lmstream.plan_dataset(_args(dataset_name=f"hf://datasets/{REPO}@main/data/{CONFIG}/000_00003.parquet"))
        calls = len(server.api_calls())
        docs = _docs(glob, _args())
    sha = server.snapshots[REPO]["main"]
    assert [s.name for s in glob.shards] == [f"{REPO}@{sha}/data/{CONFIG}/000_{i:05d}.parquet" for i in range(5)]
    assert [s.name for s in one.shards] == [f"{REPO}@{sha}/data/{CONFIG}/000_00003.parquet"]
    assert calls == 6 and len(server.api_calls()) == calls   # (1 revision + 2 listing pages) x 2; none to read
    assert docs == _local_docs(repo)


def test_a_saved_plan_names_hub_files_by_commit_and_follows_the_endpoint(repo, hub_env, tmp_path):
    """A checkpoint's Hub files are a repository, a commit and a path, not a host: a resume through another
    endpoint (a mirror or proxy, HF_ENDPOINT) that has the same commit reads there, checked with one request
    per commit and nothing sent to the first host; where that commit is missing (history rewritten), one
    sentence, at once."""
    first = HubServer({REPO: repo})
    with first as endpoint:
        hub_env(endpoint)
        plan = lmstream.plan_dataset(_args())
        planfile.save(plan, str(tmp_path / "saved"))
        want = _docs(plan, _args())
    mirror = HubServer({REPO: repo})     # the same files: the same commit, another host
    with mirror as endpoint:
        hub_env(endpoint)
        moved = planfile.load(str(tmp_path / "saved"))
        assert all(s.url.startswith(endpoint + "/datasets/") for s in moved.shards)
        assert planfile.fingerprint(moved) == planfile.fingerprint(plan)
        assert planfile.changed(moved, _args().retry_policy()) == []
        sha = moved.shards[0].name.split("@")[1][:40]
        assert [(m, f"/resolve/{sha}/" in p) for k, m, p, *_ in mirror.requests] == [("HEAD", True)]
        assert _docs(moved, _args()) == want
    rewritten = make_fineweb(str(tmp_path / "rewritten"), seed=7)   # other content: another commit
    other = HubServer({REPO: rewritten})
    with other as endpoint:
        hub_env(endpoint)
        with pytest.raises(ConfigError, match=r"has no commit [0-9a-f]{12} at .*HF_ENDPOINT") as err:
            planfile.changed(planfile.load(str(tmp_path / "saved")), _args().retry_policy())
        assert "\n" not in str(err.value) and len(other.requests) == 1


def test_retries_say_how_much_of_their_budget_they_spent(caplog):
    from lmstream.retry import RetryPolicy, with_retries
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "ok"
    with caplog.at_level(logging.WARNING, logger="lmstream"):
        assert with_retries(flaky, "https://example.invalid/x", RetryPolicy(backoff=0.01, budget=30)) == "ok"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("retry budget spent" in line and "of its 30 s" in line for line in lines)
    assert "retry 1/29" in lines[0] and "retry 2/29" in lines[1]


def test_bytes_that_are_not_utf8_follow_the_same_rule_on_the_hub(tmp_path, hub_env):
    """The rule of docs/reliability.md over the Hub: bytes that are not UTF-8 in a Parquet string column are
    replaced and counted. (A file cannot change under a commit there: the Hub serves a commit's bytes.)"""
    folder = tmp_path / "damaged"
    (folder / "data").mkdir(parents=True)
    raw = pa.array([b"fine %d " % i * 30 + (b"\xff" if i == 3 else b"") for i in range(400)], pa.binary())
    pq.write_table(pa.table({"text": raw.view(pa.string())}), folder / "data" / "train.parquet", row_group_size=50)
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                      "    path: data/*\n---\n")
    with HubServer({"someone/damaged": str(folder)}) as url:
        hub_env(url)
        args = lmstream.DataArguments(dataset_name="someone/damaged", **FAST)
        stream = DocumentStream(lmstream.plan_dataset(args), args, 0, 0, 1, shuffle=False)
        docs = [d for w in stream.windows(0, 0, (0, 0)) for d in w.docs]
    assert len(docs) == 400 and docs[3].endswith("\ufffd") and stream.stats["docs_invalid_utf8"] == 1


def test_json_lines_on_the_hub_follow_the_line_formats_rules(tmp_path, hub_env):
    """A lone surrogate in a JSON Lines file is replaced and counted, a cut .zst stops naming the file: over the
    Hub as locally and over HTTP."""
    import zstandard
    folder = tmp_path / "lines"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "a.jsonl").write_bytes(b'{"text": "half \\ud800 a pair"}\n{"text": "fine"}\n')
    whole = zstandard.ZstdCompressor().compress(b"".join(b'{"text": "document %d"}\n' % i * 20 for i in range(2000)))
    (folder / "cut" / "data").mkdir(parents=True)
    (folder / "cut" / "data" / "b.jsonl.zst").write_bytes(whole[: len(whole) // 2])
    card = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/*\n---\n"
    (folder / "README.md").write_text(card)
    (folder / "cut" / "README.md").write_text(card)
    with HubServer({"someone/lines": str(folder), "someone/cut": str(folder / "cut")}) as url:
        hub_env(url)
        args = lmstream.DataArguments(dataset_name="someone/lines", **FAST)
        stream = DocumentStream(lmstream.plan_dataset(args), args, 0, 0, 1, shuffle=False)
        docs = [d for w in stream.windows(0, 0, (0, 0)) for d in w.docs]
        assert docs == ["half \ufffd a pair", "fine"] and stream.stats["docs_invalid_utf8"] == 1
        args = lmstream.DataArguments(dataset_name="someone/cut", **FAST)
        with pytest.raises(ConfigError, match="b.jsonl.zst.*ended before the end") as err:
            stream = DocumentStream(lmstream.plan_dataset(args), args, 0, 0, 1, shuffle=False)
            [d for w in stream.windows(0, 0, (0, 0)) for d in w.docs]
        assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def many_groups(tmp_path_factory):
    """4 files of 40 row groups each: FineWeb's files hold many row groups, which is where reuse pays."""
    return make_fineweb(str(tmp_path_factory.mktemp("groups")), docs_per_file=200, files=4, rows_per_group=5)


@pytest.fixture
def fresh_urls():
    """No storage URL or quota known, nothing shared; `fresh_urls(folder)` shares through `folder`."""
    from lmstream.corpus import signed
    signed.forget_all()
    yield signed.share_in
    signed.share_in(None)
    signed.forget_all()


def _epoch(plan, args):
    stream = DocumentStream(plan, args, 0, 0, 1, shuffle=False)
    return [d for w in stream.windows(0, 0, (0, 0)) for d in w.docs], stream.stats


def test_a_files_signed_storage_url_is_reused_for_every_row_group(many_groups, hub_env, fresh_urls):
    """One resolve/ per file, at plan time (the footer); every row group of the epoch is read from the signed
    storage URL it redirected to: resolves per row group read 0.03 (it was 1.0), the same documents."""
    server = HubServer({REPO: many_groups})
    with server as url:
        hub_env(url)
        args = _args(dataset_readahead_bytes=0)
        plan = lmstream.plan_dataset(args)
        planned = server.resolves()
        docs, stats = _epoch(plan, args)
    groups = sum(1 for p in plan.pieces if p.row_group >= 0)
    assert groups == 160 and docs == _local_docs(many_groups)
    assert server.resolves() == planned and stats.get("hub_resolves", 0) == 0
    assert server.resolves() / groups <= 0.05, (server.resolves(), groups)
    assert stats["hub_bytes"] > 0


def test_signed_urls_that_expire_mid_epoch_are_resolved_again_once_and_no_read_fails(many_groups, hub_env, fresh_urls):
    """The storage host refuses every URL it gave out (keys rotated, as when they expire): each file is resolved
    again once, on its next read, and the epoch's documents are the same, with no retry."""
    server = HubServer({REPO: many_groups})
    with server as url:
        hub_env(url)
        args = _args(dataset_readahead_bytes=0, dataset_shuffle=True, dataset_shuffle_buffer=20)
        plan = lmstream.plan_dataset(args)
        stream = DocumentStream(plan, args, 0, 0, 1)
        windows = stream.windows(0, 0, (0, 0))
        docs = list(next(windows).docs)
        server.rotate_keys()
        docs += [d for w in windows for d in w.docs]
    refused = [r for r in server.requests if r[0] == "cdn-refused"]
    assert sorted(docs) == sorted(_local_docs(many_groups)) and stream.stats["retries"] == 0
    assert 1 <= len(refused) <= 4 and stream.stats["hub_resolves"] == len(refused)


def test_resolves_are_paced_by_the_hubs_ratelimit_headers_before_a_429(many_groups, hub_env, monkeypatch, caplog,
                                                                         fresh_urls):
    """A resolvers quota of 12 per 1 s window, told in RateLimit headers, and a reader that must resolve for
    every row group (its storage URLs not kept, as for many processes sharing a quota): 40 reads wait for
    the window as the quota runs low instead of spending it into 429s, and say so once."""
    from lmstream.corpus import signed
    signed.forget_all()
    monkeypatch.setattr(signed, "remember", lambda url, storage: None)
    server = HubServer({REPO: many_groups}, resolver_quota=12, quota_window=1)
    with server as url, caplog.at_level(logging.WARNING, logger="lmstream"):
        hub_env(url)
        # one file of 40 row groups, by its resolve/ URL
        args = lmstream.DataArguments(dataset_name=f"{url}/datasets/{REPO}/resolve/main/data/{CONFIG}/000_00000.parquet",
                                      dataset_shuffle=False, dataset_readahead_bytes=0, **FAST)
        docs, stats = _epoch(lmstream.plan_dataset(args), args)
    assert docs == _local_docs(many_groups)[:200] and stats["hub_resolves"] == 40
    assert [r for r in server.requests if r[0] == "resolve-429"] == []
    paced = [r for r in caplog.records if "Hub resolves paced" in r.getMessage()]
    assert len(paced) == 1 and "of the 12-per-window quota" in paced[0].getMessage()


def test_a_node_cache_makes_the_second_read_of_a_source_free_and_stays_within_its_size(many_groups, hub_env,
                                                                                      tmp_path, fresh_urls):
    """--dataset_cache_dir: the second epoch of a source (a cycled mixture source, an evaluation set, an inspect
    replay) reads 0 bytes and makes 0 requests to the Hub; a rerun downloads no footer and no row group (it still
    asks for the commit and lists the files); a cache smaller than the data keeps at most its size."""
    from lmstream.corpus import signed
    signed.forget_all()
    server = HubServer({REPO: many_groups})
    with server as url:
        hub_env(url)
        args = _args(dataset_readahead_bytes=0, dataset_cache_dir=str(tmp_path / "cache"))
        plan = lmstream.plan_dataset(args)
        first, _ = _epoch(plan, args)
        sent, asked = server.cdn_bytes, len(server.requests)
        signed.forget_all()     # another process: no storage URL known
        second, stats = _epoch(plan, args)
        assert server.cdn_bytes == sent and len(server.requests) == asked
        assert second == first == _local_docs(many_groups) and stats["cache_hits"] == 160
        # a rerun: planned again (the commit asked, the listing read) but no footer or row group downloaded
        again = lmstream.plan_dataset(args)
        assert _epoch(again, args)[0] == first and server.cdn_bytes == sent
        assert not [r for r in server.requests[asked:] if r[0] == "cdn"]
        small = _args(dataset_readahead_bytes=0, dataset_cache_dir=str(tmp_path / "small"), dataset_cache_size=20_000)
        assert _epoch(plan, small)[0] == first
    held = sum(f.stat().st_size for f in (tmp_path / "small").rglob("*") if f.is_file())
    assert 0 < held <= 20_000 and not list((tmp_path / "cache").rglob("*.tmp-*"))


def test_the_processes_of_a_node_share_one_cache_at_once(many_groups, hub_env, tmp_path, fresh_urls):
    """Two processes reading the same epoch into one cache at the same time: both read every document right,
    no half-written entry is left, and a third reads everything from the cache."""
    import multiprocessing
    from lmstream.corpus import signed
    signed.forget_all()
    server = HubServer({REPO: many_groups})
    with server as url:
        hub_env(url)
        args = _args(dataset_readahead_bytes=0, dataset_cache_dir=str(tmp_path / "cache"))
        plan = lmstream.plan_dataset(args)
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2) as pool:
            got = pool.starmap(_epoch, [(plan, args), (plan, args)])
        assert got[0][0] == got[1][0] == _local_docs(many_groups)
        sent = server.cdn_bytes
        third, stats = _epoch(plan, args)
        assert server.cdn_bytes == sent and stats["cache_hits"] == 160 and third == got[0][0]
    assert not list((tmp_path / "cache").rglob("*.tmp-*"))


def test_a_runs_processes_share_their_resolutions_through_its_output_folder(many_groups, hub_env, tmp_path,
                                                                          fresh_urls):
    """Readers stride through a file's row groups (reader k reads groups k, k+R, ...), so at scale every reader
    meets every file: shared through the run's output folder, another process (a rank on another node, a
    worker started later) reads the whole epoch without one resolve/."""
    from lmstream.corpus import signed
    fresh_urls(str(tmp_path / "out" / ".lmstream" / "signed-urls"))
    server = HubServer({REPO: many_groups})
    with server as url:
        hub_env(url)
        args = _args(dataset_readahead_bytes=0)
        plan = lmstream.plan_dataset(args)
        planned = server.resolves()
        with signed._LOCK:
            signed._URLS.clear()      # another process: nothing in its memory
        docs, stats = _epoch(plan, args)
    assert docs == _local_docs(many_groups) and server.resolves() == planned and stats.get("hub_resolves", 0) == 0
    shared = list((tmp_path / "out" / ".lmstream" / "signed-urls").iterdir())
    assert len(shared) == 4 and all(p.stat().st_mode & 0o077 == 0 for p in shared)


def test_readers_meeting_a_file_at_once_resolve_it_once(many_groups, hub_env, tmp_path, fresh_urls):
    """Eight threads (readers in step, as strided readers are) each need every file at the same moment: with the
    run's shared folder, each file is resolved once, not once per reader."""
    import concurrent.futures
    fresh_urls(str(tmp_path / "urls"))
    server = HubServer({REPO: many_groups})
    with server as url:
        hub_env(url)
        files = [f"{url}/datasets/{REPO}/resolve/main/data/{CONFIG}/000_{i:05d}.parquet" for i in range(4)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            tails = list(pool.map(lambda u: ranges.fetch_tail(u, 8)[0], files * 8))
    assert all(t.endswith(b"PAR1") for t in tails) and len(tails) == 32 and server.resolves() == 4


def test_lmstream_plan_figures_match_a_measured_epoch_on_the_test_server(many_groups, hub_env, tmp_path, capsys,
                                                                       fresh_urls):
    """`python -m lmstream.plan`'s figures for one reader against what an epoch did on the test server: the
    resolves of a run whose processes share them (one a file), the text bytes a row group downloads, and the
    tokens a row group holds (from the footers' row counts and the tokens a document holds, measured on one row group)."""
    from lmstream.tools.hubplan import Shape, budget, main, measure_tokens_per_document
    from transformers import AutoTokenizer
    fresh_urls(str(tmp_path / "urls"))
    server = HubServer({REPO: many_groups})
    with server as url:
        hub_env(url)
        args = _args(dataset_readahead_bytes=0)
        plan = lmstream.plan_dataset(args)
        # every row group sampled (the default samples up to 1,000 documents: one FineWeb row group)
        tpd = measure_tokens_per_document(plan, "text", TINY_MODEL, 10.0, docs=800, most=160)
        b = budget(plan, "text", Shape(gpus=1, workers=1), tpd)
        sent = server.cdn_bytes
        docs, stats = _epoch(plan, args)
        read = server.cdn_bytes - sent
        assert main(["--dataset_name", REPO, "--dataset_config_name", CONFIG, "--tokenizer_name", TINY_MODEL,
                     "--gpus", "64"]) == 0
    parquet_resolves = sum(1 for r in server.requests if r[0] == "resolve" and r[2].endswith(".parquet"))
    assert b["row_groups"] == 160 and parquet_resolves == b["row_groups"] / b["groups_per_file"] == 4
    assert abs(read / (b["packed_per_group"] * b["row_groups"]) - 1) < 0.01
    tok = AutoTokenizer.from_pretrained(TINY_MODEL)
    tokens = sum(len(ids) for ids in tok(docs)["input_ids"])
    assert abs(tokens / (b["tokens_per_group"] * b["row_groups"]) - 1) < 0.01, (tokens, b["tokens_per_group"])
    out = capsys.readouterr().out
    assert "resolve/ requests per 5 minutes" in out and "4 files, 160 row groups" in out
