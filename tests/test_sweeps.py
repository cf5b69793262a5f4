"""Sweeps derived from the code, not lists: every number field of the argument dataclasses (found from their
declared types, so a field added later is swept too), every mixture weight, and models that cannot learn.
Each bad value stops in one sentence naming the field."""
import math
import typing

import pytest

from lmstream.config import DataArguments, ModelArguments, RunArguments, number_fields, parse_mixture
from lmstream.errors import ConfigError

from conftest import TINY_MODEL

BAD = {"int": [math.nan, math.inf, -math.inf, -1, 2.5, "12", True, 2 ** 64, 1e30],
       "float": [math.nan, math.inf, -math.inf, -1.0, "0.5", True, 1e12]}
FIELDS = [(cls, name, kind.__name__) for cls in (DataArguments, ModelArguments, RunArguments)
          for name, kind in number_fields(cls).items()]


def test_the_sweep_finds_the_number_fields():
    """Also after transformers' HfArgumentParser has parsed the classes (it rewrites Field.type in
    place: a check reading Field.type had stopped checking anything)."""
    from lmstream.arguments import parse_args
    parse_args(["--output_dir", "unused"])
    assert [(c, n, k) for c, n, k in FIELDS] == [(cls, name, kind.__name__) for cls in (DataArguments, RunArguments)
                                                 for name, kind in number_fields(cls).items()]
    with pytest.raises(ConfigError, match="dataset_block_size=nan"):
        DataArguments(dataset_block_size=math.nan)
    names = {name for _, name, _ in FIELDS}
    assert {"dataset_block_size", "dataset_holdout_fraction", "dataset_readahead_bytes", "max_train_samples"} <= names
    assert len(FIELDS) >= 14


@pytest.mark.parametrize("cls, name, kind", FIELDS, ids=[name for _, name, _ in FIELDS])
def test_every_number_field_refuses_what_is_not_a_number_of_its_kind(cls, name, kind):
    for bad in BAD[kind]:
        with pytest.raises(ConfigError) as err:
            cls(**{name: bad})
        assert name in str(err.value) and "\n" not in str(err.value), (bad, str(err.value))
    if kind == "int":   # a whole number written as 4.0 (a YAML or JSON file) is that number
        value = getattr(cls(**{name: 4.0}), name)
        assert value == 4 and type(value) is int


@pytest.mark.parametrize("weight", [math.nan, math.inf, 0, -1, True, "1"])
def test_a_mixture_weight_that_is_not_a_positive_finite_number_is_refused(weight):
    spec = [{"name": "a", "weight": 1.0}, {"name": "b", "weight": weight}]
    with pytest.raises(ConfigError, match="dataset_mixture source 1 .*weight must be a positive number"):
        parse_mixture(spec)


MIXTURE_TEXT_KEYS = sorted(__import__("lmstream.config", fromlist=["SOURCE_KEYS"]).SOURCE_KEYS - {"name", "weight"})


@pytest.mark.parametrize("key", MIXTURE_TEXT_KEYS)
def test_every_text_key_of_a_mixture_source_works_or_names_its_source(tmp_path, key):
    """Every key of a mixture source but its name (a path, swept with the paths) and weight (above), found from
    config.SOURCE_KEYS, given "", a blank and a control character: it works or stops in one sentence naming the
    source and its key (the messages of a plain dataset had named flags the user never set)."""
    import logging

    from conftest import SAMPLE
    logging.disable(logging.WARNING)
    try:
        for value in ("", " ", "bad\x01char"):
            mixture = [{"name": SAMPLE, "config": "python-docs", "weight": 1},
                       {"name": SAMPLE, "config": "python-docs", "weight": 1, key: value}]
            given = {"config_name": TINY_MODEL, "dataset_mixture": mixture, "do_train": True, "max_steps": 1,
                     "dataset_block_size": 64, "output_dir": str(tmp_path / f"out{len(value)}")}
            try:
                _first_block(given)
            except ConfigError as err:
                said = str(err)
                assert said.startswith("dataset_mixture source 1 ") and "\n" not in said, (key, value, said)
                assert "dataset_config_name" not in said and "dataset_train_split" not in said   # its keys, not flags
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("overrides, says", [("n_layer=0", "config_overrides .* 0 transformer layers, which cannot learn"),
                                             ("n_embd=64,n_head=3", "config_overrides .* cannot be built"),
                                             ("vocab_size=1000", "tokenizer has 50257 tokens but the model only 1000")])
def test_a_model_that_cannot_learn_or_be_built_stops_before_any_data(overrides, says):
    from lmstream.training.models import load_model_and_tokenizer
    with pytest.raises(ConfigError, match=says) as err:
        load_model_and_tokenizer(ModelArguments(config_name=TINY_MODEL, config_overrides=overrides))
    assert "\n" not in str(err.value)


def test_a_context_shorter_than_the_block_stops_before_any_document_is_read(tmp_path):
    import lmstream
    from conftest import SAMPLE
    run = lmstream.Run(*lmstream.parse_args({
        "config_name": TINY_MODEL, "config_overrides": "n_positions=32", "dataset_name": SAMPLE,
        "dataset_config_name": "python-docs", "dataset_block_size": 64, "do_train": True, "max_steps": 1,
        "output_dir": str(tmp_path / "out")}))
    run.load_model()
    with pytest.raises(ConfigError, match="dataset_block_size=64 is larger than the model's 32 positions"):
        run.load_data()
    run.close()


def _file(tmp):
    (tmp / "taken").write_text("a file")
    return tmp / "taken"


def _inside_a_file(tmp):
    return _file(tmp) / "run"


def _link_loop(tmp):
    (tmp / "loop").symlink_to(tmp / "loop")
    return tmp / "loop" / "run"


def _name_too_long(tmp):
    return tmp / ("x" * 300)


@pytest.mark.parametrize("make, says", [
    (_file, "is a file, not a folder"), (_inside_a_file, "goes through a file as if it were a folder"),
    (_link_loop, "symbolic links back into themselves"), (_name_too_long, "a name too long")],
    ids=["a file", "inside a file", "a link loop", "a name too long"])
def test_an_output_dir_the_file_system_refuses_is_one_sentence_naming_it(tmp_path, make, says):
    import lmstream
    from conftest import SAMPLE
    out = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError, match=says) as err:
        lmstream.Run(*lmstream.parse_args(["--config_name", TINY_MODEL, "--dataset_name", SAMPLE, "--do_train",
                                           "--max_steps", "1", "--output_dir", str(out)]))
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before   # nothing written


def test_the_command_line_says_it_in_one_line_with_exit_2(tmp_path):
    import subprocess
    import sys
    from conftest import SAMPLE
    out = _file(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "lmstream.train", "--config_name", TINY_MODEL, "--dataset_name",
                           SAMPLE, "--do_train", "--max_steps", "1", "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"error: output_dir '{out}' is a file, not a folder: choose "
                                                    "another output_dir (nothing was written).")


def test_checking_a_plan_over_many_files_spends_one_retry_budget_not_one_per_file(tmp_path, caplog):
    """A store gone at resume: the first file's check retries until the budget is spent, the other files are
    not retried again for as long each (over FineWeb's files that was hours of silence)."""
    import logging

    import pyarrow as pa
    import pyarrow.parquet as pq

    import lmstream
    from httpserver import FileServer
    from lmstream.corpus import planfile
    from lmstream.retry import RetryPolicy
    for i in range(3):
        pq.write_table(pa.table({"text": [f"document {i}"] * 4}), tmp_path / f"part-{i}.parquet")
    with FileServer(str(tmp_path)) as url:
        urls = [f"{url}/part-{i}.parquet" for i in range(3)]
        plan = lmstream.plan_dataset(lmstream.DataArguments(dataset_name=",".join(urls)))
    with caplog.at_level(logging.WARNING, logger="lmstream"):
        gone = planfile.changed(plan, RetryPolicy(max_attempts=10_000, backoff=0.05, max_backoff=0.05, budget=1.0))
    assert [u for u, _ in gone] == urls and all("cannot be read any more" in why for _, why in gone)
    retried = {u for r in caplog.records for u in urls if u in r.getMessage()}
    assert retried == {urls[0]}


def _write(path, lines: list[bytes]):
    """`lines` (raw bytes, one document each) as a JSON Lines or text file, compressed by its suffix."""
    import gzip

    import zstandard
    data = b"".join(line + b"\n" for line in lines)
    if path.endswith(".gz"):
        data = gzip.compress(data)
    elif path.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _read(path):
    """(documents, counters) of one epoch of one file, unshuffled."""
    import lmstream
    from lmstream.corpus.documents import DocumentStream
    args = lmstream.DataArguments(dataset_name=path, dataset_shuffle=False, dataset_retry_budget=1.0,
                                  dataset_retry_backoff=0.01)
    stream = DocumentStream(lmstream.plan_dataset(args), args, 0, 0, 1, shuffle=False)
    docs = [d for w in stream.windows(0, 0, (0, 0)) for d in w.docs]
    return docs, stream.stats


def _json(text_bytes: bytes) -> bytes:
    return b'{"text": "' + text_bytes + b'"}'


FORMATS = ["jsonl", "jsonl.gz", "jsonl.zst", "txt"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_undecodable_bytes_and_nul_are_one_rule_in_every_line_format(tmp_path, fmt):
    """Bytes that are not UTF-8 are replaced (U+FFFD) and counted in docs_invalid_utf8; NUL is text like
    any other character: the same rule in every line-based format, compressed or not."""
    wrap = _json if fmt.startswith("jsonl") else (lambda b: b)
    path = _write(str(tmp_path / f"data.{fmt}"), [wrap(b"fine"), wrap(b"broken \xff\xfe here"), wrap(b"a\\u0000b")
                                                 if fmt.startswith("jsonl") else b"a\x00b"])
    docs, stats = _read(path)
    text = "".join(docs)
    assert "\ufffd" in text and "\x00" in text and stats["docs_invalid_utf8"] == 1
    assert len(docs) == (3 if fmt.startswith("jsonl") else 1)   # a text file is one document by default


def test_a_lone_surrogate_in_json_is_replaced_and_counted_not_a_traceback(tmp_path):
    path = _write(str(tmp_path / "data.jsonl"), [_json(b"half a pair \\ud800 here"), _json(b"a pair \\ud83d\\ude00")])
    docs, stats = _read(path)
    assert docs == ["half a pair \ufffd here", "a pair \U0001F600"] and stats["docs_invalid_utf8"] == 1


@pytest.mark.parametrize("fmt", ["jsonl.gz", "jsonl.zst"])
def test_a_compressed_file_cut_short_stops_naming_it(tmp_path, fmt):
    """A cut .gz raised, a cut .zst had ended in silence with the documents it held lost: both stop, naming the
    file (or, with dataset_skip_bad_shards, are skipped with a warning and counted)."""
    path = _write(str(tmp_path / f"data.{fmt}"), [_json(b"document %d" % i * 50) for i in range(2000)])
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=f"Could not read '{path}'.*ended before the end") as err:
        _read(path)
    assert "\n" not in str(err.value)


def test_a_zstandard_file_of_several_frames_reads_every_frame(tmp_path):
    import zstandard
    path = str(tmp_path / "data.jsonl.zst")
    frames = [b"".join(_json(b"frame %d doc %d" % (f, i)) + b"\n" for i in range(30)) for f in range(3)]
    with open(path, "wb") as out:
        out.write(b"".join(zstandard.ZstdCompressor().compress(fr) for fr in frames))
    docs, _ = _read(path)
    assert docs == [f"frame {f} doc {i}" for f in range(3) for i in range(30)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_empty_file_gives_no_document_and_no_error(tmp_path, fmt):
    path = str(tmp_path / f"data.{fmt}")
    _write(path, []) if fmt != "txt" else open(path, "wb").close()
    assert _read(path)[0] == []


def test_over_http_the_same_rules_hold(tmp_path):
    """The line formats read over HTTP by the same code: a lone surrogate is replaced and counted, a cut .zst
    stops naming its URL."""
    from httpserver import FileServer
    _write(str(tmp_path / "ok.jsonl"), [_json(b"half \\udc00 a pair")])
    cut = _write(str(tmp_path / "cut.jsonl.zst"), [_json(b"document %d" % i * 50) for i in range(2000)])
    with open(cut, "rb") as f:
        data = f.read()
    with open(cut, "wb") as f:
        f.write(data[: len(data) // 2])
    with FileServer(str(tmp_path)) as url:
        docs, stats = _read(f"{url}/ok.jsonl")
        assert docs == ["half \ufffd a pair"] and stats["docs_invalid_utf8"] == 1
        with pytest.raises(ConfigError, match=f"{url}/cut.jsonl.zst.*ended before the end"):
            _read(f"{url}/cut.jsonl.zst")


def test_a_folder_whose_links_lead_back_into_it_reads_each_document_once(tmp_path):
    """Links inside a dataset folder: one back to the folder itself (a loop) and a second name for a file. Each
    file is read once, by what it is (the loop had read every document many times over, in silence)."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    _write(str(data / "a.jsonl"), [_json(b"doc a%d" % i) for i in range(3)])
    _write(str(data / "sub" / "b.jsonl"), [_json(b"doc b%d" % i) for i in range(2)])
    (data / "sub" / "loop").symlink_to(data)
    (data / "again.jsonl").symlink_to(data / "a.jsonl")
    (data / ".hidden").mkdir()        # left out, as a glob leaves it out
    _write(str(data / ".hidden" / "c.jsonl"), [_json(b"hidden")])
    _write(str(data / ".mark.jsonl"), [_json(b"hidden too")])
    docs, _ = _read(str(data))
    assert sorted(docs) == ["doc a0", "doc a1", "doc a2", "doc b0", "doc b1"]
    docs, _ = _read(str(data) + "/**/*.jsonl")     # a glob through the same links
    assert sorted(docs) == ["doc a0", "doc a1", "doc a2", "doc b0", "doc b1"]


def _first_block(given: dict):
    """A run of the arguments `given` (a mapping), up to its first block."""
    import lmstream
    run = lmstream.Run(*lmstream.parse_args(given))
    run.load_model()
    run.load_data()
    block = next(iter(run.train_dataset))
    run.close()
    return block


TEXT_FIELDS = [name for cls in (DataArguments, ModelArguments) for name, kind in typing.get_type_hints(cls).items()
               if kind in (str, typing.Optional[str])]


@pytest.mark.parametrize("name", TEXT_FIELDS)
def test_every_text_field_given_blank_or_odd_text_works_or_names_itself(tmp_path, name):
    """Every text field of DataArguments and ModelArguments (found from their types), given "" (unset, where the
    field may be unset), a blank and a control character, up to the first block: it works, or it stops in one
    sentence that names the field."""
    import logging

    from conftest import SAMPLE
    logging.disable(logging.WARNING)
    try:
        for value in ("", " ", "bad\x01char"):
            given = {"config_name": TINY_MODEL, "dataset_name": SAMPLE, "dataset_config_name": "python-docs",
                     "do_train": True, "max_steps": 1, "dataset_block_size": 64,
                     "output_dir": str(tmp_path / f"out{len(value)}"), name: value}
            try:
                _first_block(given)
            except ConfigError as err:
                assert name in str(err) and "\n" not in str(err), (value, str(err))
    finally:
        logging.disable(logging.NOTSET)


# Every path flag (lmstream.paths.PATHS and TrainingArguments' output_dir and resume_from_checkpoint, each with
# its kind), tried with what a path can wrongly be. What right is, by kind: a folder to write into
# ("new-folder") may be missing or empty (it is made, and the run goes on); a file may be any readable
# file; anything else stops in one sentence naming the flag and the path, before anything is written.
def _paths():
    from lmstream.paths import PATHS, TRAINING_PATHS
    return {**PATHS, **{name: (kind, None) for name, kind in TRAINING_PATHS.items()}}


PATH_CASES = ["missing", "a file", "an empty folder", "a link loop", "inside a file", "unreadable"]
WORKS = {("new-folder", "missing"), ("new-folder", "an empty folder"), ("file", "a file")}


def _make(tmp, case):
    (tmp / "taken").write_text("some text\n")
    (tmp / "empty").mkdir()
    (tmp / "loop").symlink_to(tmp / "loop")
    return {"missing": tmp / "nope", "a file": tmp / "taken", "an empty folder": tmp / "empty",
            "a link loop": tmp / "loop", "inside a file": tmp / "taken" / "x",
            "unreadable": tmp / "empty"}[case]


def test_every_text_field_is_declared_a_path_or_not():
    """A text flag added later must be placed in lmstream.paths.PATHS (then it is swept below) or NOT_PATHS."""
    from lmstream.paths import NOT_PATHS, PATHS
    from lmstream.paths import KINDS
    assert set(PATHS) | NOT_PATHS == set(TEXT_FIELDS) and not set(PATHS) & NOT_PATHS
    assert all(kind in KINDS for kind, _ in PATHS.values())


@pytest.mark.parametrize("flag", sorted(_paths()))
def test_every_path_flag_works_right_or_names_itself_in_one_sentence(tmp_path, monkeypatch, flag):
    import logging
    import os

    from conftest import SAMPLE
    kind = _paths()[flag][0]
    logging.disable(logging.WARNING)
    try:
        for case in PATH_CASES:
            tmp = tmp_path / case.replace(" ", "-")
            tmp.mkdir()
            path = str(_make(tmp, case))
            if case == "unreadable":   # what the file system says to a user without the right (root is never told)
                real = os.access
                monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if os.fspath(p) == path
                                    else real(p, mode, *a, **k))
            given = {"config_name": TINY_MODEL, "dataset_name": SAMPLE, "dataset_config_name": "python-docs",
                     "do_train": True, "max_steps": 1, "dataset_block_size": 64, "max_train_samples": 8,
                     "per_device_train_batch_size": 2, "report_to": "none", "output_dir": str(tmp / "out"),
                     "dataset_streaming": flag != "tokenized_dataset_save_dir", flag: path}
            if flag == "model_name_or_path":
                del given["config_name"]
            before = sorted(os.listdir(tmp))
            try:
                _first_block(given)
                assert (kind, case) in WORKS, f"{flag} as {case} was taken"
            except ConfigError as err:
                said = str(err)
                assert (kind, case) not in WORKS, (case, said)
                assert flag in said and path in said and "\n" not in said, (case, said)
                if case != "an empty folder":   # refused before anything was read or written
                    assert sorted(os.listdir(tmp)) == before, (case, said)
            monkeypatch.undo()
    finally:
        logging.disable(logging.NOTSET)


def test_a_dataset_mixture_source_is_a_path_too(tmp_path):
    from lmstream.config import DataArguments
    from conftest import SAMPLE
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for bad, says in ((tmp_path / "nope", "does not exist"), (tmp_path / "loop", "leads through symbolic links back into themselves")):
        spec = [{"name": SAMPLE, "weight": 1}, {"name": str(bad), "weight": 1}]
        with pytest.raises(ConfigError, match=f"dataset_mixture source 1 '{bad}' {says}"):
            DataArguments(dataset_mixture=spec)


@pytest.mark.parametrize("case", ["missing", "an empty folder", "a link loop"])
def test_an_arguments_file_that_cannot_be_read_is_one_sentence(tmp_path, case):
    import shutil

    from lmstream.arguments import parse_args
    path = _make(tmp_path, case)
    named = tmp_path / "args.yaml"
    if case == "a link loop":
        named.symlink_to(named)
    elif case == "an empty folder":
        shutil.move(str(path), str(named))
    with pytest.raises(ConfigError, match=r"Arguments file '.*args\.yaml' (does not exist|is a folder, not a "
                                          r"file|leads through symbolic links back)"):
        parse_args([str(named)])


def test_a_path_flag_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys
    taken = _make(tmp_path, "a file")
    proc = subprocess.run([sys.executable, "-m", "lmstream.cli", "--config_name", TINY_MODEL,
                           "--tokenized_dataset_load_dir", str(taken), "--output_dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: tokenized_dataset_load_dir '{taken}' is a file, not a folder: give the folder `python -m "
        "lmstream.prepare` wrote.")
    assert not (tmp_path / "out").exists()


def _parquet(path, column, **kw):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": column}), path, **kw)
    return str(path)


def test_parquet_follows_the_same_rule_for_bytes_that_are_not_utf8(tmp_path):
    """A writer that does not check can store bytes that are not UTF-8 in a string column (a
    traceback from deep in the reader, before): replaced by U+FFFD and counted, as in the line formats;
    NUL is text; a null is counted as docs_null; a file of no rows gives no document."""
    import pyarrow as pa
    raw = pa.array([b"fine", b"broken \xff\xfe here", b"a\x00b", None, b"half \xed\xa0\x80 pair"], pa.binary())
    docs, stats = _read(_parquet(tmp_path / "u.parquet", raw.view(pa.string())))
    assert docs == ["fine", "broken \ufffd\ufffd here", "a\x00b", "half \ufffd\ufffd\ufffd pair"]
    assert stats["docs_invalid_utf8"] == 2 and stats["docs_null"] == 1
    assert _read(_parquet(tmp_path / "none.parquet", pa.array([], pa.string())))[0] == []


@pytest.mark.parametrize("fmt, content, says", [
    ("parquet", [1, 2], "holds int64, not text"), ("parquet", [["a"], ["b"]], "holds list<element: string>, not text"),
    ("parquet", [b"a", b"b"], "holds binary, not text"),
    ("jsonl", b'{"text": 5}', "field 'text' holds int, not text"), ("jsonl", b'{"text": ["a"]}', "holds list, not text"),
    ("jsonl", b'["a"]', "has no field 'text'")],
    ids=["parquet int", "parquet list", "parquet binary", "jsonl int", "jsonl list", "jsonl not an object"])
def test_a_text_field_of_the_wrong_type_stops_naming_file_and_field(tmp_path, fmt, content, says):
    path = (_parquet(tmp_path / "w.parquet", content) if fmt == "parquet"
            else _write(str(tmp_path / "w.jsonl"), [content, _json(b"fine")]))
    with pytest.raises(ConfigError, match=says) as err:
        _read(path)
    assert path in str(err.value) and "\n" not in str(err.value)


def test_a_parquet_file_cut_short_stops_naming_it_local_and_over_http(tmp_path):
    from httpserver import FileServer
    whole = _parquet(tmp_path / "whole.parquet", [f"document {i} " * 20 for i in range(400)], row_group_size=50)
    with open(whole, "rb") as f:
        data = f.read()
    with open(tmp_path / "cut.parquet", "wb") as f:
        f.write(data[: len(data) // 2])
    with FileServer(str(tmp_path)) as url:
        for path in (str(tmp_path / "cut.parquet"), f"{url}/cut.parquet"):
            with pytest.raises(ConfigError, match="cut.parquet' is not a valid Parquet file") as err:
                _read(path)
            assert "\n" not in str(err.value)


def _rewrite_parquet(path):
    _parquet(path, [f"other {i} " * 25 for i in range(300)], row_group_size=40)


def _touch(path):
    import os
    os.utime(path, (1, 1))


def _truncate(path):
    import os
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)


def _append(path):
    with open(path, "ab") as f:
        f.write(_json(b"appended") + b"\n")


CHANGES = [("parquet", _rewrite_parquet), ("parquet", _touch), ("jsonl", _truncate), ("jsonl", _append),
           ("jsonl.gz", _append), ("txt", _truncate)]


@pytest.mark.parametrize("where", ["local", "http"])
@pytest.mark.parametrize("fmt, change", CHANGES, ids=[f"{f} {c.__name__[1:]}" for f, c in CHANGES])
def test_a_file_that_changes_while_it_is_read_stops_naming_it(tmp_path, fmt, change, where):
    """One rule in every format: a file whose size or version (a local file's modification time, an
    HTTP answer's ETag or Last-Modified) is not what the plan and the first read saw stops the reader,
    naming the file, rather than train on a mix of two versions (a Parquet file rewritten had been read
    through its old footer: a thrift traceback, or other rows in silence)."""
    import lmstream
    from httpserver import FileServer
    from lmstream.corpus.documents import DocumentStream
    path = str(tmp_path / f"data.{fmt}")
    if fmt == "parquet":
        _parquet(path, [f"document {i} " * 20 for i in range(400)], row_group_size=50)
    elif fmt == "txt":
        with open(path, "w") as f:
            f.write("".join(f"paragraph {i} " * 10 + "\n\n" for i in range(5000)))
    else:
        _write(path, [_json(b"document %d " % i * 10) for i in range(5000)])
    with FileServer(str(tmp_path)) as url:
        name = path if where == "local" else f"{url}/data.{fmt}"
        args = lmstream.DataArguments(dataset_name=name, dataset_shuffle_buffer=5, dataset_readahead_bytes=0,
                                      dataset_retry_budget=1.0, dataset_retry_backoff=0.01,
                                      dataset_text_sample_by="paragraph")
        windows = DocumentStream(lmstream.plan_dataset(args), args, 0, 0, 1).windows(0, 0, (0, 0))
        assert next(windows).docs
        change(path)
        with pytest.raises(ConfigError, match="changed while it was being read") as err:
            for _ in windows:
                pass
    said = str(err.value)
    assert name in said and "\n" not in said and "--dataset_accept_changed_data" in said


SAVE_FAULTS = ["a folder where the file goes", "EACCES", "EROFS", "ENOTDIR", "ELOOP", "EMLINK", "EDQUOT"]


@pytest.mark.parametrize("fault", SAVE_FAULTS)
def test_the_file_system_refusing_a_checkpoint_is_one_sentence_naming_the_path(tmp_path, monkeypatch, capsys,
                                                                                fault):
    """At save, every OSError the file system gives is one sentence naming the path, exit 2, and the last
    complete checkpoint stays intact. One is made to happen for real (a folder stands where checkpoint-2's
    tokenizer.json goes: the OS answers EISDIR); the others are the OS's answers given at the same place
    (not writable, read-only, not a folder, a link loop, too many links, over quota), which a test run as
    root could not provoke."""
    import errno
    import importlib
    import os

    import lmstream.training.run
    from conftest import SAMPLE
    train = importlib.import_module("lmstream.train")
    real = lmstream.training.run.load_model_and_tokenizer

    def load(args):
        model, tok = real(args)
        save = tok.save_pretrained

        def refused(folder, *a, **k):
            target = os.path.join(str(folder), "tokenizer.json")
            if "checkpoint-2" in str(folder):
                if fault == "a folder where the file goes":
                    os.makedirs(target, exist_ok=True)
                else:
                    code = getattr(errno, fault)
                    raise OSError(code, os.strerror(code), target)
            return save(folder, *a, **k)
        tok.save_pretrained = refused
        return model, tok
    monkeypatch.setattr(lmstream.training.run, "load_model_and_tokenizer", load)
    out = tmp_path / "run"
    argv = ["--do_train", "--dataset_name", SAMPLE, "--dataset_config_name", "python-docs", "--config_name",
            TINY_MODEL, "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
            "--dataset_block_size", "64", "--save_steps", "1", "--use_cpu", "true", "--disable_tqdm", "true",
            "--report_to", "none"]
    assert train.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    # the native tokenizer library names no file: the sentence names the output folder then
    assert lines[-1].startswith("error: ") and (str(out) if fault[0] == "a" else "checkpoint-2") in lines[-1]
    assert "Traceback" not in "\n".join(lines), lines
    assert (out / "checkpoint-1" / "lmstream_complete.json").exists()       # the last complete one is intact
