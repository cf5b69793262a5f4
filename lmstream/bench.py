"""`python -m lmstream.bench`: the benchmarks (the door; the work is in lmstream/tools/bench.py and
its bench_* neighbours)."""
import sys

from .tools.bench import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
