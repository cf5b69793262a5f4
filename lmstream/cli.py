"""Console entry point: the reference command line runs the training notebook through papermill.

    lmstream-train --dataset_streaming true --do_train --dataset_name HuggingFaceFW/fineweb ... --output_dir OUT

The flags are checked by the same parser as `python -m lmstream.train` (and the output folder and
the checkpoint to resume from, before anything is written), passed to notebooks/03_training.ipynb
(installed with the package) as parameters (flags the notebook does not declare go in `extra_args`),
and the executed notebook is saved in output_dir as the run's report (report.ipynb, or
report-2.ipynb, ... so an earlier report is never overwritten). The notebook's output (banner,
progress lines, summary) streams to this terminal as it runs. `--help` is fast: it imports neither
torch nor transformers.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import os
import re
import sys

from .errors import ConfigError
from .helptext import help_text
from .tools.kernel import kernel_in

# parameters whose notebook default stays unless given: W&B-if-key rule, no progress bars in the
# report
_NOTEBOOK_RULES = {"report_to", "disable_tqdm"}
# the repository's notebooks/, installed inside the package (lmstream/notebooks links to it in a
# checkout)
NOTEBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notebooks",
                        "03_training.ipynb")
# naming none of these runs the embedded default: the notebook's own defaults (bundled sample, tiny
# model, CPU)
_DATA_OR_MODEL = {"dataset_name", "dataset_mixture", "model_name_or_path", "config_name",
                  "tokenized_dataset_load_dir"}
# errors whose message is a sentence for the user (exit status 2); others are bugs or faults (1)
USER_ERRORS = {"ConfigError", "Unreadable"}


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def notebook_parameters_from_flags(argv: list[str], declared: set[str], parsed=None) -> dict:
    """Notebook parameters equivalent to `python -m lmstream.train ARGV` (its defaults included)."""
    from .arguments import given, parse_args
    parsed = parsed or parse_args(argv)
    named = given(argv)
    fields = {f.name: obj for obj in parsed for f in dataclasses.fields(obj)}
    unknown = named - set(fields)
    if unknown:
        raise ConfigError(f"Unknown argument(s) {', '.join(sorted(unknown))}.")
    if named & _DATA_OR_MODEL:
        # the command line's defaults, not the notebook's (which suit a tutorial run on a CPU)
        params = {k: _plain(getattr(fields[k], k)) for k in declared if k in fields
                  and k not in _NOTEBOOK_RULES}
    else:   # the embedded default: what is not named keeps the notebook's default
        params = {}
    params.update({k: _plain(getattr(fields[k], k)) for k in named & declared})
    extra = {k: _plain(getattr(fields[k], k)) for k in named - declared}
    if extra:
        params["extra_args"] = extra
    if "report_to" in named and params.get("report_to") in ([], ["none"]):
        params["report_to"] = "none"
    return params


def report_path(output_dir: str) -> str:
    """output_dir/report.ipynb, or the first report-N.ipynb that does not exist yet."""
    path, n = os.path.join(output_dir, "report.ipynb"), 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(output_dir, f"report-{n}.ipynb")
    return path


def preflight(argv: list[str], declared: set[str]) -> dict:
    """Parse and check everything that can be checked before the job starts, so that a refused start
    writes
    nothing: the flags, the output folder (another run's is refused), the checkpoint to resume from,
    that the dataset resolves (its files are listed, not read) and that local model and tokenizer
    folders exist."""
    from .corpus.sources import resolve_shards
    from .arguments import parse_args
    from .training.resume import check_output_dir, resolve_checkpoint
    parsed = parse_args(argv)
    model_args, data_args, run_args, training_args = parsed
    params = notebook_parameters_from_flags(argv, declared, parsed)
    # the embedded default (the notebook's) trains
    training_args.do_train = bool(params.get("do_train", True))
    if training_args.do_train:
        check_output_dir(training_args, run_args, resolve_checkpoint(training_args))
    for name in ("model_name_or_path", "config_name", "tokenizer_name"):
        path = getattr(model_args, name)
        if path and (path.startswith((".", "/", "~"))
                     or os.sep in path.strip("/").split("/", 2)[-1]) \
                and not os.path.exists(os.path.expanduser(path)):
            raise ConfigError(f"{name} '{path}' does not exist: check the path "
                              f"(or give a Hub model id).")
    if (data_args.dataset_name and not data_args.dataset_mixture
            and not data_args.tokenized_dataset_load_dir):
        resolve_shards(data_args.dataset_name, data_args.dataset_config_name,
                       data_args.dataset_train_split, data_args.retry_policy())
    return params


def _forward_signals_to_kernel() -> list:
    """SIGTERM/SIGINT to this process go to the notebook's kernel (in a session of its own), which
    saves a checkpoint at the next step boundary and stops; returns the list of the signals
    forwarded so far."""
    import signal
    got: list = []

    def forward(signum, frame):
        got.append(signum)
        try:
            import psutil
            for child in psutil.Process().children(recursive=True):
                if any("ipykernel" in part for part in child.cmdline()):
                    child.send_signal(signum)
        except Exception:  # noqa: BLE001 - no psutil, or the kernel is gone: nothing to forward to
            pass
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, forward)
    return got


JOB_LINE = re.compile(r"lmstream: |step +\d+/\d+ |eval  step ")   # what the terminal shows of a run


class JobLines:
    """The job's terminal: the lines the run prints for it (plan, progress, evaluations, summary),
    passed on as they arrive; the notebook's own outputs (tables, decoded batches, state dumps) stay
    in the report."""

    def __init__(self, out):
        self.out, self.pending = out, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if JOB_LINE.match(line):
                self.out.write(line + "\n")
        self.out.flush()
        return len(text)

    def flush(self) -> None:
        self.out.flush()


def full_help(prog: str) -> str:
    from transformers import HfArgumentParser
    from .arguments import ARG_CLASSES
    return HfArgumentParser(ARG_CLASSES, prog=prog).format_help()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(help_text("lmstream-train"), end="")
        return 0
    if "--help-all" in argv:
        print(full_help("lmstream-train"), end="")
        return 0
    import papermill as pm
    notebook = os.environ.get("LMSTREAM_NOTEBOOK", NOTEBOOK)
    if not os.path.isfile(notebook):
        print(f"error: the training notebook '{notebook}' is missing: reinstall lmstream.",
              file=sys.stderr)
        return 2
    try:
        params = preflight(argv, set(pm.inspect_notebook(notebook)))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    output_dir = params.get("output_dir") or "runs/default"
    params["output_dir"] = output_dir
    os.makedirs(output_dir, exist_ok=True)
    kernel_in(output_dir)
    report = report_path(output_dir)
    print(f"lmstream: running the training notebook; its report: {report}", flush=True)
    forwarded = _forward_signals_to_kernel()
    # the kernel's sockets closing at shutdown can make tornado log "Uncaught exception in ZMQStream
    # callback" (a race in the client, harmless); it would land before lmstream's one sentence on a
    # failed run
    logging.getLogger("tornado").setLevel(logging.CRITICAL)
    try:
        pm.execute_notebook(notebook, report, parameters=params, kernel_name="python3",
                            progress_bar=False,
                            stdout_file=JobLines(sys.stdout), stderr_file=sys.stderr,
                            cwd=os.getcwd(),
                            # no kernel notices (TCP, shutdown interrupts)
                            extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
    except pm.PapermillExecutionError as err:
        if err.ename == "Stopped" and forwarded:
            print(f"lmstream: {err.evalue}; report: {report}", flush=True)
            return 128 + forwarded[-1]
        if err.ename in USER_ERRORS:
            print(f"error: {err.evalue}", file=sys.stderr)
            return 2
        print(f"error: the training notebook failed ({err.ename}: {err.evalue}); the "
              f"traceback is in {report}",
              file=sys.stderr)
        return 1
    print(f"lmstream: report saved: {report}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
