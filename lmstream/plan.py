"""`python -m lmstream.plan`: the Hub's numbers before a run (requests per 5 minutes against the
Hub's quotas, bytes per second per node) from a dataset's real plan and a run's shape (the door; the
work is in lmstream/tools/hubplan.py)."""
import sys

from .tools.hubplan import budget, main, report

__all__ = ["budget", "main", "report"]

if __name__ == "__main__":
    sys.exit(main())
