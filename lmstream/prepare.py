"""`python -m lmstream.prepare` and `lmstream-prepare`: tokenize and pack a dataset once, save the
blocks (the door; the work is in lmstream/tools/prepare.py)."""
import sys

from .tools.prepare import main, prepare

__all__ = ["main", "prepare"]

if __name__ == "__main__":
    sys.exit(main())
