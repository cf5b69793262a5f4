"""`python -m lmstream.inspect` and `lmstream-inspect`: what the model saw at step N, replayed from
the run's lineage and its nearest checkpoint (the door; the work is in
lmstream/tools/inspect.py)."""
import sys

from .tools.inspect import find_document, inspect_step, main

__all__ = ["find_document", "inspect_step", "main"]

if __name__ == "__main__":
    sys.exit(main())
