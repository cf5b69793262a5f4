"""The notebooks, executed on their defaults, with their outputs: the copies a reader sees on GitHub
(docs/notebooks/), since notebooks/ is committed without outputs.

    python -m lmstream.tools.render docs/notebooks        # every notebook, about 2 minutes on 2 cores
    python -m lmstream.tools.render docs/notebooks 02     # the notebooks whose names start with 02
    stale("notebooks", "docs/notebooks")                  # [] when every copy has its notebook's cells

Each notebook runs in a scratch folder (its demo runs land there, not in the checkout) on a kernel of
this interpreter; the copy drops papermill's per-cell timings, so two renders of the same notebook
differ only where the run's own numbers do.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")


def cells(path: str) -> list[tuple[str, str]]:
    """(cell type, source) of every cell of a notebook."""
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    return [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]


def stale(notebooks: str, rendered: str) -> list[str]:
    """The notebooks whose rendered copy is missing or holds other cells (one line each)."""
    out = []
    for name in sorted(n for n in os.listdir(notebooks) if n.endswith(".ipynb")):
        copy = os.path.join(rendered, name)
        if not os.path.exists(copy):
            out.append(f"{name}: no rendered copy in {rendered}")
        elif cells(copy) != cells(os.path.join(notebooks, name)):
            out.append(f"{name}: its rendered copy holds other cells (render it again)")
    return out


def render(name: str, out_dir: str, notebooks: str = NOTEBOOKS) -> str:
    """Execute one notebook on its defaults into `out_dir`; the copy's path."""
    import papermill as pm
    from .kernel import kernel_in
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.abspath(os.path.join(out_dir, name))
    saved = dict(os.environ)
    try:
        with tempfile.TemporaryDirectory(prefix="lmstream-render-") as scratch:
            kernel_in(scratch)
            pm.execute_notebook(os.path.join(notebooks, name), target, kernel_name="python3",
                                cwd=scratch, progress_bar=False)
    finally:   # the kernel's folders were the scratch folder's: nothing points there afterwards
        os.environ.clear()
        os.environ.update(saved)
    _tidy(target)
    return target


def _tidy(path: str) -> None:
    """Keep the outputs; drop papermill's timings, and this machine's folder from the paths the
    outputs print (lmstream/assets/sample, not /home/.../lmstream/assets/sample)."""
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    nb["metadata"].pop("papermill", None)
    for c in nb["cells"]:
        c["metadata"].pop("papermill", None)
        c["metadata"].pop("execution", None)
    text = json.dumps(nb, indent=1, ensure_ascii=False)
    text = text.replace(os.path.dirname(os.path.dirname(NOTEBOOKS)) + os.sep, "")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", help="folder for the executed copies (docs/notebooks)")
    ap.add_argument("only", nargs="*", help="name prefixes (01 02 ...); default: every notebook")
    a = ap.parse_args(argv)
    names = sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb")
                   and (not a.only or n.startswith(tuple(a.only))))
    for name in names:
        print(f"rendering {name} ...", flush=True)
        print(f"  {render(name, a.out_dir)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
