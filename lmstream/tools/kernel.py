"""The notebook's kernel is this very interpreter, and its caches stay in the run's folder: a
`python3` kernel spec naming sys.executable first on JUPYTER_PATH, the kernel's IPython profile and
matplotlib's font cache under FOLDER/.lmstream (unless set). Used by `lmstream-train` and by
lmstream.tools.render.

    kernel_in("runs/job")     # then papermill.execute_notebook(..., kernel_name="python3")
"""
from __future__ import annotations

import json
import os
import sys


def kernel_in(folder: str) -> None:
    """The kernel's IPython profile and matplotlib's font cache go into FOLDER/.lmstream, not $HOME
    (unless set), and the `python3` kernel is this interpreter."""
    own = os.path.join(os.path.abspath(folder), ".lmstream")
    os.makedirs(own, exist_ok=True)
    os.environ.setdefault("IPYTHONDIR", os.path.join(own, "ipython"))
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(own, "matplotlib"))
    _own_kernel(own)


def _own_kernel(own: str) -> None:
    """A `python3` kernel spec naming sys.executable, first on JUPYTER_PATH, so that a kernel spec
    the machine has elsewhere (in HOME, in another environment) is never the one that runs."""
    folder = os.path.join(own, "jupyter")
    spec = os.path.join(folder, "kernels", "python3")
    os.makedirs(spec, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    with open(os.path.join(spec, "kernel.json"), "w") as f:
        json.dump({"argv": argv, "display_name": "Python 3 (ipykernel)", "language": "python"}, f)
    os.environ["JUPYTER_PATH"] = os.pathsep.join([folder,
                                                  *filter(None, [os.environ.get("JUPYTER_PATH")])])
