"""The training notebook as a job: its parameters become the training arguments, validated here.

    # in 03_training.ipynb, right after the parameters cell
    job = job_from_parameters(globals())
    # then its steps, one cell each (lmstream.training.run)
    run = start_run(job)

papermill only *warns* about parameters the notebook does not declare; `job_from_parameters` rejects
them, and the module's argument parser checks every value, so a typo fails with one sentence.
"""
from __future__ import annotations

import ast
import dataclasses
import os
import types
from dataclasses import dataclass, field

from ..config import DataArguments
from ..errors import ConfigError
from .models import SAMPLE_CONFIG, SAMPLE_DATASET, TINY_MODEL

# names IPython puts in a notebook's namespace, besides those starting with "_"
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}
INJECTED_MARK = "# Parameters"   # the first line of the cell papermill injects
# parameters of the notebook that are not training arguments
NOTEBOOK_ONLY = {"num_processes", "extra_args", "sample_prompt", "sample_max_new_tokens"}


@dataclass
class Job:
    """A training run described by the notebook's parameters, parsed once."""
    params: dict                                  # every declared parameter and its value
    # the equivalent command line of `python -m lmstream.train`
    argv: list[str] = field(default_factory=list)
    num_processes: int = 1
    # (model, data, run, training) arguments parsed from argv
    args: tuple = ()
    given: set = field(default_factory=set)       # the arguments argv sets explicitly

    @property
    def output_dir(self) -> str:
        return self.params["output_dir"]


def injected_names(namespace: dict) -> list[str]:
    """The names papermill injected: those its "# Parameters" cell assigns (the latest one in the
    kernel's input history), so that a kernel's own variables ("Run all" a second time) are not
    taken for parameters. Outside IPython: every plain value of the namespace."""
    history = namespace.get("In")
    if not isinstance(history, list):
        return [k for k, v in namespace.items() if not k.startswith("_") and k not in _IPYTHON_NAMES
                and not callable(v) and not isinstance(v, types.ModuleType)]
    cell = next((src for src in reversed(history) if src.lstrip().startswith(INJECTED_MARK)), "")
    tree = ast.parse(cell)
    return [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
            if isinstance(t, ast.Name)]


def notebook_parameters(namespace: dict, demo: str = None) -> dict:
    """The parameters a notebook declared (annotated names of its `parameters` cell) with their
    values.

    Names papermill injected that the notebook does not declare are rejected; an unset dataset or
    model (None) becomes the embedded default: the bundled sample dataset and a tiny GPT-2 config;
    an unset output_dir, the notebook's demo folder `demo` (runs/notebook-demo), replaced each time.
    """
    declared = list(namespace.get("__annotations__", {}))
    unknown = sorted(set(injected_names(namespace)) - set(declared))
    if unknown:
        raise ConfigError(f"Unknown notebook parameter(s) {', '.join(unknown)}: the parameters are "
                          f"{', '.join(declared)}.")
    params = {k: namespace[k] for k in declared}
    if "output_dir" in params and params["output_dir"] is None:
        params["output_dir"] = demo_output_dir(demo or DEMO_DIR)
    unset = {k for k, v in params.items() if v is None}
    if "dataset_name" in unset and not params.get("dataset_mixture"):
        params["dataset_name"], params["dataset_config_name"] = SAMPLE_DATASET, SAMPLE_CONFIG
    if "config_name" in unset and params.get("model_name_or_path") is None:
        params["config_name"] = TINY_MODEL
    if "tokenizer_name" in unset and "config_name" not in params:
        params["tokenizer_name"] = TINY_MODEL
    return params


DEMO_DIR = os.path.join("runs", "notebook-demo")
DEMO_MARKER = ".lmstream-demo"


def demo_output_dir(folder: str = DEMO_DIR) -> str:
    """The output folder of a notebook run without output_dir ("Run all" in Jupyter): the notebook's
    own demo run, replaced each time. Only a folder this function made (it holds a marker) is ever
    removed."""
    import shutil
    if os.path.isdir(folder):
        if not os.path.exists(os.path.join(folder, DEMO_MARKER)):
            raise ConfigError(f"output_dir is not set and '{folder}' holds "
                              f"another run: set output_dir.")
        shutil.rmtree(folder)
    os.makedirs(folder)
    open(os.path.join(folder, DEMO_MARKER), "w").close()
    print(f"output_dir not set: this is a demo run in {folder}, replaced the next time (set "
          f"output_dir to keep a run).")
    return folder


def data_arguments(params: dict) -> DataArguments:
    """DataArguments from the parameters that are its fields."""
    names = {f.name for f in dataclasses.fields(DataArguments)}
    return DataArguments(**{k: v for k, v in params.items() if k in names})


def job_from_parameters(namespace: dict) -> Job:
    """Validate the training notebook's parameters and turn them into the job's command line."""
    params = notebook_parameters(namespace)
    extra = params.get("extra_args") or {}
    if not isinstance(extra, dict):
        raise ConfigError(f"extra_args must be a mapping of argument names to values, not "
                          f"{type(extra).__name__}.")
    clash = sorted(set(extra) & set(params))
    if clash:
        raise ConfigError(f"extra_args repeats notebook parameter(s) "
                          f"{', '.join(clash)}: set them directly.")
    n = params.get("num_processes", 1)
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"num_processes={n!r} must be a positive integer.")
    from ..arguments import given, mapping_to_argv, parse_args
    argv = mapping_to_argv({**params, **extra}, skip=NOTEBOOK_ONLY)
    # parsed now, once: unknown extra_args and bad values fail before anything runs
    return Job(params, argv, n, parse_args(argv), given(argv))


def start_run(job: Job):
    """The job's Run (lmstream.training.run): the training notebook's cells call its steps one by
    one. With num_processes > 1, its `fit()` launches one process per GPU with accelerate's
    notebook_launcher, each running the same steps."""
    from .run import Run
    if job.params.get("disable_tqdm"):   # keep the report free of inner progress bars too
        import datasets
        import transformers
        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    return Run(*job.args, launch=job.num_processes, argv=job.argv)


def run_job(job: Job) -> dict:
    """Every step of the job's Run in order (the training notebook runs them cell by cell); the
    metrics."""
    return start_run(job).all_steps()


def as_calls(job: Job, width: int = 100) -> str:
    """The arguments this job sets, as the calls a learner would write: `ModelArguments(...)`,
    `DataArguments(...)`, `RunArguments(...)`, `TrainingArguments(...)`, one per group that sets any."""
    import textwrap
    calls = []
    for obj in job.args:
        items = [f"{f.name}={getattr(getattr(obj, f.name), 'value', getattr(obj, f.name))!r}"
                 for f in dataclasses.fields(obj) if f.name in job.given]
        if items:
            name = type(obj).__name__
            calls.append(textwrap.fill(", ".join(items), width, initial_indent=name + "(",
                                       subsequent_indent=" " * (len(name) + 1),
                                       break_long_words=False, break_on_hyphens=False) + ")")
    return "\n".join(calls)


def generate_sample(model_dir: str, prompt: str, max_new_tokens: int = 40, seed: int = 0) -> str:
    """A short continuation of `prompt` by the trained model (sampled with a fixed seed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(seed)
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=True, top_k=50,
                             pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0], skip_special_tokens=False)
