"""Console entry point: the reference command line runs the training notebook through papermill.

    lmstream-train --dataset_streaming true --do_train --dataset_name HuggingFaceFW/fineweb ... --output_dir OUT

The flags are checked by the same parser as `python -m lmstream.train`, passed to
notebooks/03_training.ipynb as parameters (flags the notebook does not declare go in `extra_args`),
and the executed notebook is saved in output_dir as the run's report (report.ipynb, or report-2.ipynb,
... so an earlier report is never overwritten).
"""
from __future__ import annotations

import dataclasses
import enum
import os
import sys

from .config import ConfigError
from .train import parse_args

# parameters whose notebook default stays unless given: W&B-if-key rule, no progress bars in the report
_NOTEBOOK_RULES = {"report_to", "disable_tqdm"}
NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks", "03_training.ipynb")


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def notebook_parameters_from_flags(argv: list[str], declared: set[str]) -> dict:
    """Notebook parameters equivalent to `python -m lmstream.train ARGV` (its defaults included)."""
    parsed = parse_args(argv)
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
        from .train import file_to_argv
        argv = file_to_argv(argv[0])
    named = {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}
    fields = {f.name: obj for obj in parsed for f in dataclasses.fields(obj)}
    unknown = named - set(fields)
    if unknown:
        raise ConfigError(f"Unknown argument(s) {', '.join(sorted(unknown))}.")
    # the command line's defaults, not the notebook's (which suit a tutorial run on a CPU)
    params = {k: _plain(getattr(fields[k], k)) for k in declared if k in fields and k not in _NOTEBOOK_RULES}
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


def main(argv: list[str] | None = None) -> int:
    import papermill as pm
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    notebook = os.environ.get("LMSTREAM_NOTEBOOK", NOTEBOOK)
    try:
        declared = set(pm.inspect_notebook(notebook))
        params = notebook_parameters_from_flags(argv, declared)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    output_dir = params.get("output_dir") or "runs/default"
    params["output_dir"] = output_dir
    os.makedirs(output_dir, exist_ok=True)
    report = report_path(output_dir)
    print(f"lmstream: running {notebook} -> {report}")
    try:
        pm.execute_notebook(notebook, report, parameters=params, kernel_name="python3", progress_bar=False,
                            log_output=True, cwd=os.getcwd())
    except pm.PapermillExecutionError as err:
        print(f"error: the training notebook failed ({err.ename}: {err.evalue}); see {report}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
