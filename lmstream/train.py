"""The training job: the reference script's command line, streaming data, exact resume.

    python -m lmstream.train --dataset_streaming true --do_train --dataset_name HuggingFaceFW/fineweb \\
        --dataset_config_name CC-MAIN-2024-10 --model_name_or_path openai-community/gpt2 --max_steps 2500 ...
    python -m lmstream.train params.yaml          # the same keys in a YAML or JSON file
    torchrun --nproc_per_node 8 -m lmstream.train ...
"""
from __future__ import annotations

import sys

# fast: before torch is imported
if __name__ == "__main__" and ("-h" in sys.argv[1:2] or "--help" in sys.argv[1:]):
    from lmstream.helptext import help_text
    print(help_text("python -m lmstream.train"), end="")
    sys.exit(0)

import logging

from .arguments import parse_args
from .errors import ConfigError
from .training.run import Run, train
from .training.signals import Stopped

__all__ = ["Run", "Stopped", "main", "train"]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO)
    try:
        train(*parse_args(argv))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Stopped as err:
        print(f"lmstream: {err}", flush=True)
        return 128 + err.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
