"""A table of mistakes and damaged inputs, each through the job's command line (`python -m lmstream.train`'s main):
exit status 2, the first line of stderr is one sentence naming the culprit, and an existing run's files are
byte for byte what they were (nothing lost, nothing overwritten). More by theme: test_silent.py, test_job.py."""
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lmstream.train as lt
from conftest import SAMPLE, TINY_MODEL, make_docs, write_jsonl, write_parquet

DATA = ("--dataset_name", SAMPLE, "--dataset_config_name", "python-docs")


def _flags(out, *extra, data=DATA):
    return ["--do_train", *data, "--config_name", TINY_MODEL, "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "2", "--dataset_block_size", "64", "--save_steps", "2", "--use_cpu", "true",
            "--report_to", "none", "--disable_tqdm", "true", *extra]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished run (with checkpoint-2) and data files of every kind of damage."""
    root = tmp_path_factory.mktemp("world")
    assert lt.main(_flags(root / "run")) == 0
    write_parquet(root / "plain", make_docs(40, seed=1), shards=2)
    pq.write_table(pa.table({"text": list(range(10))}), root / "ints.parquet")
    (root / "zero.parquet").write_bytes(b"")
    (root / "garbage.parquet").write_bytes(b"not parquet at all" * 10)
    write_jsonl(str(root / "nofield.jsonl"), ["a", "b"], field="content")
    (root / "badjson.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    write_parquet(root / "blank", ["", " ", "\n"], shards=1)
    shutil.copytree(SAMPLE, root / "badcard")
    (root / "badcard" / "README.md").write_text("---\nconfigs: [unclosed\n---\n")
    (root / "args.yaml").write_text("dataset_name: [unclosed\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "nomodel").mkdir()
    (root / "nomodel" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    (root / "empty_out").mkdir()
    for name, damage in (("ck_truncated_rank", "rank"), ("ck_bad_state", "state"), ("ck_no_marker", "marker"),
                         ("ck_no_rank_files", "norank")):
        ck = root / name / "checkpoint-2"
        shutil.copytree(root / "run" / "checkpoint-2", ck)
        if damage == "rank":
            p = ck / "lmstream_data" / "rank-0.json"
            p.write_text(p.read_text()[:40])
        elif damage == "state":
            (ck / "trainer_state.json").write_text("{ not json")
        elif damage == "marker":
            (ck / "lmstream_complete.json").unlink()
            shutil.copytree(root / "run" / "checkpoint-2", root / name / "checkpoint-1")   # a complete sibling
        else:
            for p in (ck / "lmstream_data").glob("rank-*.json"):
                p.unlink()
    return root


def _case(w, name):
    """argv for case `name` (see CASES), with w = the world folder."""
    run, new = w / "run", w / "new" / name
    ck = lambda n: str(w / n / "checkpoint-2")  # noqa: E731
    table = {
        # flags: types, ranges, finiteness
        "max_steps_word": _flags(new, "--max_steps", "ten"),
        "lr_nan": _flags(new, "--learning_rate", "nan"),
        "lr_negative": _flags(new, "--learning_rate=-1"),
        "batch_zero": _flags(new, "--per_device_train_batch_size", "0"),
        "eval_batch_zero": _flags(new, "--per_device_eval_batch_size", "0"),
        "accumulation_zero": _flags(new, "--gradient_accumulation_steps", "0"),
        "logging_zero": _flags(new, "--logging_steps", "0"),
        "workers_negative": _flags(new, "--dataloader_num_workers=-1"),
        "seed_negative": _flags(new, "--seed=-1"),
        "epochs_nan": _flags(new, "--num_train_epochs", "nan", "--max_train_samples", "8"),
        "weight_decay_negative": _flags(new, "--weight_decay=-0.1"),
        "eval_strategy_word": _flags(new, "--eval_strategy", "sometimes"),
        "scheduler_word": _flags(new, "--lr_scheduler_type", "zigzag"),
        "unknown_flag": _flags(new, "--max_stepz", "3"),
        "block_one": _flags(new, "--dataset_block_size", "1"),
        "block_too_large": _flags(new, "--dataset_block_size", "4096"),
        "seq_length_one": _flags(new, "--dataset_group_text", "false", "--dataset_max_seq_length", "1"),
        "shuffle_buffer_zero": _flags(new, "--dataset_shuffle_buffer", "0"),
        "holdout_one": _flags(new, "--dataset_holdout_fraction", "1.0"),
        "sample_by_word": _flags(new, "--dataset_text_sample_by", "word"),
        "retries_zero": _flags(new, "--dataset_max_retries", "0"),
        "budget_negative": _flags(new, "--dataset_retry_budget=-1"),
        "timeout_infinite": _flags(new, "--dataset_read_timeout", "inf"),
        "retry_wait_nan": _flags(new, "--dataset_max_retry_wait", "nan"),
        "tokenize_batch_zero": _flags(new, "--dataset_tokenize_batch_size", "0"),
        "train_samples_zero": _flags(new, "--max_train_samples", "0"),
        "eval_samples_zero": _flags(new, "--max_eval_samples", "0"),
        "no_max_steps": _flags(new, "--max_steps", "-1"),
        "streamed_save_dir": _flags(new, "--tokenized_dataset_save_dir", str(w / "blocks")),
        "save_dir_not_empty": _flags(new, "--dataset_streaming", "false", "--tokenized_dataset_save_dir", str(w / "run")),
        "load_dir_missing": _flags(new, "--tokenized_dataset_load_dir", str(w / "no-blocks")),
        "mixture_not_json": _flags(new, "--dataset_mixture", "[{not json"),
        "mixture_weight_negative": _flags(new, "--dataset_mixture", json.dumps([{"name": SAMPLE, "config": "python-docs",
                                                                                  "weight": -1}])),
        "mixture_materialized": _flags(new, "--dataset_streaming", "false", "--dataset_mixture",
                                       json.dumps([{"name": SAMPLE, "config": "python-docs", "weight": 1}])),
        # the model
        "dtype_word": _flags(new, "--torch_dtype", "float8"),
        "overrides_word": _flags(new, "--config_overrides", "n_layer=two"),
        "overrides_inconsistent": _flags(new, "--config_overrides", "n_embd=65,n_head=2"),
        "overrides_with_pretrained": _flags(new, "--model_name_or_path", str(w / "nomodel"), "--config_overrides",
                                            "n_layer=1"),
        "pretrained_without_weights": [a for a in _flags(new, "--model_name_or_path", str(w / "nomodel"))
                                       if a not in ("--config_name", TINY_MODEL)],
        "config_missing": [a if a != TINY_MODEL else str(w / "no-config") for a in _flags(new)],
        "tokenizer_missing": _flags(new, "--tokenizer_name", str(w / "no-tokenizer")),
        # the data
        "data_missing": _flags(new, data=("--dataset_name", str(w / "no-data"))),
        "glob_matches_nothing": _flags(new, data=("--dataset_name", str(w / "plain" / "*.jsonl"))),
        "config_unknown": _flags(new, data=("--dataset_name", SAMPLE, "--dataset_config_name", "bogus")),
        "split_unknown": _flags(new, "--dataset_train_split", "validation"),
        "plain_no_test_split": _flags(new, "--do_eval", data=("--dataset_name", str(w / "plain"))),
        "plain_other_train_split": _flags(new, "--dataset_train_split", "dev", data=("--dataset_name", str(w / "plain"))),
        "column_missing": _flags(new, "--dataset_text_field", "nope"),
        "column_not_text": _flags(new, data=("--dataset_name", str(w / "ints.parquet"))),
        "parquet_empty_file": _flags(new, data=("--dataset_name", str(w / "zero.parquet"))),
        "parquet_garbage": _flags(new, data=("--dataset_name", str(w / "garbage.parquet"))),
        "jsonl_field_missing": _flags(new, data=("--dataset_name", str(w / "nofield.jsonl"))),
        "jsonl_broken_line": _flags(new, data=("--dataset_name", str(w / "badjson.jsonl"))),
        "only_blank_documents": _flags(new, data=("--dataset_name", str(w / "blank"))),
        "card_yaml_broken": _flags(new, data=("--dataset_name", str(w / "badcard"), "--dataset_config_name", "python-docs")),
        "unknown_format": _flags(new, data=("--dataset_name", "http://127.0.0.1:9/data.bin")),
        # files of arguments
        "args_file_missing": [str(w / "no-args.yaml")],
        "args_file_broken": [str(w / "args.yaml")],
        "args_file_not_mapping": [str(w / "list.yaml")],
        # the output folder and checkpoints of an existing run (whose bytes must not change)
        "output_holds_a_run": _flags(run),
        "resume_missing_folder": _flags(run, "--resume_from_checkpoint", str(w / "no-checkpoint")),
        "resume_true_without_checkpoints": _flags(w / "empty_out", "--resume_from_checkpoint", "true"),
        "resume_other_block_size": _flags(run, "--resume_from_checkpoint", ck("run"), "--dataset_block_size", "32",
                                          "--max_steps", "4"),
        "resume_other_dataset": _flags(run, "--resume_from_checkpoint", ck("run"), "--max_steps", "4",
                                       data=("--dataset_name", str(w / "plain"))),
        "resume_other_seed": _flags(run, "--resume_from_checkpoint", ck("run"), "--seed", "7", "--max_steps", "4"),
        "resume_truncated_position": _flags(w / "ck_truncated_rank", "--resume_from_checkpoint", ck("ck_truncated_rank"),
                                            "--max_steps", "4"),
        "resume_damaged_trainer_state": _flags(w / "ck_bad_state", "--resume_from_checkpoint", ck("ck_bad_state")),
        "resume_incomplete_checkpoint": _flags(w / "ck_no_marker", "--resume_from_checkpoint", ck("ck_no_marker")),
        "resume_finished": _flags(run, "--resume_from_checkpoint", ck("run")),   # max_steps reached already
        "resume_without_rank_files": _flags(w / "ck_no_rank_files", "--resume_from_checkpoint", ck("ck_no_rank_files"),
                                            "--max_steps", "4"),
    }
    return table[name]


# case -> what the first line of stderr must say (a regular expression)
CASES = {
    "max_steps_word": r"invalid int value: 'ten'", "lr_nan": r"learning_rate=nan", "lr_negative": r"learning_rate=-1",
    "batch_zero": r"per_device_train_batch_size=0", "eval_batch_zero": r"per_device_eval_batch_size=0",
    "accumulation_zero": r"gradient_accumulation_steps=0", "logging_zero": r"logging_steps",
    "workers_negative": r"dataloader_num_workers=-1", "seed_negative": r"seed=-1", "epochs_nan": r"num_train_epochs=nan",
    "weight_decay_negative": r"weight_decay=-0.1", "eval_strategy_word": r"eval_strategy.*'sometimes'",
    "scheduler_word": r"lr_scheduler_type.*'zigzag'", "unknown_flag": r"Unknown argument.*--max_stepz",
    "block_one": r"dataset_block_size=1 is too small", "block_too_large": r"dataset_block_size=4096 is larger",
    "seq_length_one": r"dataset_max_seq_length=1", "shuffle_buffer_zero": r"dataset_shuffle_buffer=0",
    "holdout_one": r"dataset_holdout_fraction=1.0", "sample_by_word": r"dataset_text_sample_by='word'",
    "retries_zero": r"dataset_max_retries=0", "budget_negative": r"dataset_retry_budget=-1",
    "timeout_infinite": r"dataset_read_timeout=inf", "retry_wait_nan": r"dataset_max_retry_wait=nan",
    "tokenize_batch_zero": r"dataset_tokenize_batch_size=0", "train_samples_zero": r"max_train_samples=0",
    "eval_samples_zero": r"max_eval_samples=0", "no_max_steps": r"max_steps must be set",
    "streamed_save_dir": r"tokenized_dataset_save_dir .*--dataset_streaming false",
    "save_dir_not_empty": r"tokenized_dataset_save_dir '.*run' is not empty",
    "load_dir_missing": r"tokenized_dataset_load_dir '.*no-blocks' does not exist",
    "mixture_not_json": r"dataset_mixture", "mixture_weight_negative": r"weight",
    "mixture_materialized": r"dataset_mixture needs dataset_streaming true",
    "dtype_word": r"torch_dtype='float8'", "overrides_word": r"config_overrides 'n_layer=two' cannot be applied",
    "overrides_inconsistent": r"config_overrides 'n_embd=65,n_head=2' gives a model that cannot be built",
    "overrides_with_pretrained": r"config_overrides only applies when training from scratch",
    "pretrained_without_weights": r"model_name_or_path '.*nomodel' holds no weights",
    "config_missing": r"config_name '.*no-config' (does not exist|has no (tokenizer|model config))", "tokenizer_missing": r"tokenizer_name '.*no-tokenizer'",
    "data_missing": r"dataset_name '.*no-data' does not exist", "glob_matches_nothing": r"No file matches",
    "config_unknown": r"dataset_config_name 'bogus' is not a config", "split_unknown": r"has no split 'validation'",
    "plain_no_test_split": r"has no split 'test'", "plain_other_train_split": r"has no split 'dev'",
    "column_missing": r"has no column 'nope'", "column_not_text": r"Column 'text' of shard '.*ints.parquet' holds int64",
    "parquet_empty_file": r"zero.parquet' is not a valid Parquet file", "parquet_garbage": r"garbage.parquet' is not a valid Parquet",
    "jsonl_field_missing": r"nofield.jsonl' has no field 'text'", "jsonl_broken_line": r"Line 2 of '.*badjson.jsonl' is not valid JSON",
    "only_blank_documents": r"no complete block", "card_yaml_broken": r"dataset card's YAML header is invalid",
    "unknown_format": r"Cannot tell the format of 'http://127.0.0.1:9/data.bin'",
    "args_file_missing": r"Arguments file '.*no-args.yaml' does not exist", "args_file_broken": r"args.yaml' is not valid YAML",
    "args_file_not_mapping": r"list.yaml' must hold a mapping", "output_holds_a_run": r"output_dir '.*run' already holds files",
    "resume_missing_folder": r"resume_from_checkpoint '.*no-checkpoint' does not exist",
    "resume_true_without_checkpoints": r"has no checkpoint-\* folder",
    "resume_other_block_size": r"other data settings.*block_size", "resume_other_dataset": r"other data settings",
    "resume_other_seed": r"other data settings.*seed", "resume_truncated_position": r"rank-0.json' is unreadable",
    "resume_damaged_trainer_state": r"trainer_state.json' is unreadable",
    "resume_incomplete_checkpoint": r"Checkpoint '.*checkpoint-2' is incomplete",
    "resume_without_rank_files": r"has data positions of ranks \[\]",
    "resume_finished": r"already holds 2 steps, max_steps=2: pass a larger --max_steps",
}


def _bytes(folder):
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and ".lmstream" not in p.parts}


def test_the_table_has_sixty_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_mistake_stops_with_one_sentence_and_changes_nothing(world, name, capsys):
    import re
    before = _bytes(world)
    rc = lt.main(_case(world, name))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, (name, err[-5:])
    assert err and err[0].startswith("error: ") and re.search(CASES[name], err[0]), (name, err[:3])
    after = _bytes(world)
    assert {k: v for k, v in after.items() if k in before} == before   # nothing lost or overwritten
    assert not (world / "new" / name / "checkpoint-2").exists()        # nothing trained
