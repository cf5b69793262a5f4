"""Shared fixtures: the bundled GPT-2 tokenizer and small synthetic datasets built per test."""
import collections
import gzip
import json
import os
import random

# Tests never reach the network: the hub libraries must answer from local files or fail at once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import TrainerCallback

ASSETS = os.path.join(os.path.dirname(__file__), "..", "lmstream", "assets")
TINY_MODEL = os.path.abspath(os.path.join(ASSETS, "tiny-gpt2"))
SAMPLE = os.path.abspath(os.path.join(ASSETS, "sample"))
WORDS = ("stream token block shard window epoch resume carry python the of and to in is a "
         "parquet row group worker rank model train data é ü 東京 🤗").split()


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(TINY_MODEL)


def make_docs(n: int, seed: int = 0, empty_every: int = 0) -> list[str]:
    """Documents `doc-00012 ...` of varied length (1 to ~400 words); every `empty_every`-th is blank."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        if empty_every and i % empty_every == empty_every - 1:
            docs.append(" \n\t" if i % 2 else "")
            continue
        k = rng.choice([1, 3, 10, 40, 120, 400])
        docs.append(f"doc-{i:05d} " + " ".join(rng.choice(WORDS) for _ in range(k)))
    return docs


def write_parquet(folder, docs, shards: int = 5, rows_per_group: int = 7, extra_column: bool = True):
    """Split `docs` into `shards` Parquet files with small row groups; return the file paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    per = -(-len(docs) // shards)
    for s in range(shards):
        part = docs[s * per:(s + 1) * per]
        cols = {"text": part}
        if extra_column:
            cols["id"] = [f"id-{s}-{i}" for i in range(len(part))]
        path = os.path.join(str(folder), f"part-{s:03d}.parquet")
        pq.write_table(pa.table(cols), path, row_group_size=rows_per_group)
        paths.append(path)
    return paths


def write_jsonl(path, docs, field="text", compress=None):
    data = "".join(json.dumps({field: d, "n": i}) + "\n" for i, d in enumerate(docs)).encode()
    if compress == "gz":
        data = gzip.compress(data)
    elif compress == "zst":
        import zstandard
        data = zstandard.ZstdCompressor().compress(data)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.fixture
def parquet_dir(tmp_path):
    docs = make_docs(300, seed=1, empty_every=25)
    write_parquet(tmp_path / "pq", docs)
    return str(tmp_path / "pq"), docs


def no_timings(obj):
    """A state or metrics tree without its `*_seconds` entries (timings differ between runs)."""
    if isinstance(obj, dict):
        return {k: no_timings(v) for k, v in obj.items() if not k.endswith("_seconds")}
    return [no_timings(v) for v in obj] if isinstance(obj, list) else obj


# torchdata's counts of the messages its loader received: a run resumed inside a worker's batch group gets the
# rest of that group in a message of its own, so these differ from the uninterrupted run's while every position
# is the same
MESSAGE_COUNTS = ("_snapshot_step", "_sampler_iter_yielded")


def positions(obj):
    """A loader state without timings and without torchdata's message counts: what must equal between runs."""
    if isinstance(obj, dict):
        return {k: positions(v) for k, v in obj.items() if not k.endswith("_seconds") and k not in MESSAGE_COUNTS}
    return [positions(v) for v in obj] if isinstance(obj, list) else obj


# -- a corpus whose every token names its document: for "each document once" accounting (elastic, epochs) ----
BLOCK = 32


def word_tokens(tokenizer, n):
    """n GPT-2 words that encode as one token each, also when repeated: token -> document id."""
    words = []
    for tok, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        w = tok[1:]
        if tok.startswith("Ġ") and w.isascii() and w.isalpha() and w.islower() and len(w) > 3:
            if tokenizer.encode(f" {w} {w}") == [i, i]:
                words.append((w, i))
        if len(words) == n:
            return words
    raise AssertionError("not enough single-token words")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tokenizer):
    """60 documents, each one distinct word repeated 40 to 120 times (>= a block, so that no document
    can vanish whole into a dropped final block), in 3 Parquet shards of 4-row groups."""
    rng = random.Random(7)
    words = word_tokens(tokenizer, 60)
    docs, lengths, owner = [], {}, {}
    for d, (w, tok) in enumerate(words):
        k = rng.randint(40, 120)
        docs.append(" " + " ".join([w] * k))   # leading space: every word is the same token
        lengths[d], owner[tok] = k, d
    folder = tmp_path_factory.mktemp("elastic") / "pq"
    write_parquet(folder, docs, shards=3, rows_per_group=4)
    return str(folder), lengths, owner


def account(batches, lengths, owner):
    counts = collections.Counter()
    for b in batches:
        for t in b.flatten().tolist():
            if t in owner:
                counts[owner[t]] += 1
    return counts


def check_once(counts, lengths, readers):
    """Each document once. Only the final partial block of each of `readers` readers that ended the
    epoch is dropped: shorter than a block, shorter than any document, so it cuts at most one tail."""
    twice = {d: c for d, c in counts.items() if c > lengths[d]}
    missing = [d for d in lengths if counts[d] == 0]
    assert not twice, f"documents trained on twice: {twice}"
    assert not missing, f"documents skipped: {missing}"
    short = {d: lengths[d] - counts[d] for d in lengths if counts[d] < lengths[d]}
    assert len(short) <= readers and all(v < BLOCK for v in short.values()), short


def corpus_job_argv(folder, out, steps, workers, *extra):
    """The training job's flags for the accounting corpus (tiny model, CPU)."""
    return ["--dataset_streaming", "true", "--do_train", "--dataset_name", folder, "--config_name", TINY_MODEL,
            "--output_dir", str(out), "--max_steps", str(steps), "--per_device_train_batch_size", "2",
            "--dataset_block_size", str(BLOCK), "--dataset_shuffle_buffer", "5", "--dataset_cycle", "false",
            "--logging_steps", "1", "--save_steps", "4", "--use_cpu", "true", "--seed", "3",
            "--dataloader_num_workers", str(workers), "--disable_tqdm", "true", "--report_to", "none", *extra]


# -- a training run that records the batches the Trainer consumed ---------------------------------------------
class _StopAt(TrainerCallback):
    """Stops a run after `stop_at` steps (an interruption)."""

    def __init__(self, stop_at=None):
        self.stop_at = stop_at

    def on_step_end(self, args, state, control, **kw):
        if self.stop_at and state.global_step >= self.stop_at:
            control.should_training_stop = True


def train_recording(argv, monkeypatch, stop_at=None):
    """(the input_ids of every batch trained on, the metrics) of `python -m lmstream.train ARGV` run in process."""
    import lmstream.train as lt
    from lmstream.arguments import parse_args
    from lmstream.training.trainer import StreamingTrainer
    batches = []
    orig_step = StreamingTrainer.training_step

    def step(self, model, inputs, *a, **k):
        batches.append(inputs["input_ids"].detach().cpu().clone())
        return orig_step(self, model, inputs, *a, **k)
    monkeypatch.setattr(StreamingTrainer, "training_step", step)
    metrics = lt.train(*parse_args(argv), callbacks=[_StopAt(stop_at)])
    monkeypatch.undo()
    return batches, metrics


def train_fed(argv, monkeypatch):
    """{step: [(input_ids, position_ids or None, loss) of each micro-batch]} the model was fed by
    `python -m lmstream.train ARGV` run in process."""
    import lmstream.train as lt
    from lmstream.training.trainer import StreamingTrainer
    seen, orig = {}, StreamingTrainer.compute_loss

    def compute_loss(self, model, inputs, *a, **k):
        loss = orig(self, model, inputs, *a, **k)
        value = (loss[0] if isinstance(loss, tuple) else loss).item()
        pos = inputs.get("position_ids")
        seen.setdefault(self.state.global_step + 1, []).append(
            (inputs["input_ids"].detach().cpu().clone(), None if pos is None else pos.detach().cpu().clone(), value))
        return loss
    monkeypatch.setattr(StreamingTrainer, "compute_loss", compute_loss)
    lt.train(*lt.parse_args(argv))
    monkeypatch.undo()
    return seen
