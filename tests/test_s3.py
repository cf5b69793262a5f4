"""s3:// shards through fsspec against an S3-compatible server (moto) that the test runs on 127.0.0.1."""
import io
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import lmstream
from lmstream.corpus.documents import DocumentStream, iter_documents
from conftest import make_docs

moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")


@pytest.fixture
def s3(monkeypatch):
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    import boto3
    import fsspec
    fsspec.filesystem("s3").clear_instance_cache()
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="corpus")
    yield client
    server.stop()


def test_s3_glob_streams_the_same_documents_and_blocks(s3, tmp_path, tokenizer):
    docs = make_docs(90, seed=8)
    for s in range(3):
        buf = io.BytesIO()
        pq.write_table(pa.table({"text": docs[s * 30:(s + 1) * 30]}), buf, row_group_size=7)
        s3.put_object(Bucket="corpus", Key=f"fineweb/part-{s}.parquet", Body=buf.getvalue())
        (tmp_path / f"part-{s}.parquet").write_bytes(buf.getvalue())
    args = lmstream.DataArguments(dataset_name="s3://corpus/fineweb/*.parquet", dataset_shuffle=False)
    plan = lmstream.plan_dataset(args)
    assert [os.path.basename(s.url) for s in plan.shards] == ["part-0.parquet", "part-1.parquet", "part-2.parquet"]
    got = list(iter_documents(plan, args))
    assert got == docs
    remote = lmstream.DataArguments(dataset_name="s3://corpus/fineweb/*.parquet", dataset_block_size=16, dataset_cycle=False)
    local = lmstream.DataArguments(dataset_name=str(tmp_path / "*.parquet"), dataset_block_size=16, dataset_cycle=False)
    a = [b["input_ids"] for b in lmstream.build_pipeline(remote, tokenizer)]
    b = [b["input_ids"] for b in lmstream.build_pipeline(local, tokenizer)]
    assert len(a) == len(b) > 10 and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("faults", [["reset", None, "reset", "reset"], ["slowdown"] * 6 + ["internal"] * 3,
                                    ["reset", "slowdown", "reset", "internal", None, "reset", "slowdown"]])
def test_s3_faults_lose_and_repeat_nothing(s3, monkeypatch, faults):
    """Connection resets mid-body, S3 SlowDown (503) and InternalError (500) bursts between the reader and
    the S3 server: the same documents in the same order as without faults. (Bursts longer than botocore's
    own retries reach lmstream's as OSError EBUSY/EREMOTEIO from s3fs: retried, not taken for bad files.)"""
    from s3proxy import FaultyProxy
    docs = make_docs(60, seed=9)
    for s in range(2):
        buf = io.BytesIO()
        pq.write_table(pa.table({"text": docs[s * 30:(s + 1) * 30]}), buf, row_group_size=6)
        s3.put_object(Bucket="corpus", Key=f"web/part-{s}.parquet", Body=buf.getvalue())
    import fsspec
    proxy = FaultyProxy(os.environ["AWS_ENDPOINT_URL"], faults=faults)
    with proxy as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        fsspec.filesystem("s3").clear_instance_cache()
        args = lmstream.DataArguments(dataset_name="s3://corpus/web/*.parquet", dataset_shuffle=False,
                                      dataset_retry_backoff=0.01, dataset_readahead_bytes=0)
        plan = lmstream.plan_dataset(args)
        stream = DocumentStream(plan, args, 0, 0, 1)
        got = [d for w in stream.windows(0, 0, (0, 0)) for d in w.docs]
    assert got == docs
    assert proxy.faults == [f for f in faults if f]   # every scheduled fault hit a read
