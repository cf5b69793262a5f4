"""The training job with a callback that saves, for every optimizer step, the input_ids each micro-batch fed the
model on this rank: CAPTURE_DIR/rank-R.json, {step: [micro-batch ids, ...]}. Run as lmstream.train is run:

    python tests/capture_train.py FLAGS...            (or under torchrun)
"""
import json
import os
import sys

from transformers import TrainerCallback

from lmstream.arguments import parse_args
from lmstream.training.run import train


class Capture(TrainerCallback):
    def __init__(self, folder):
        self.folder, self.seen, self.state = folder, {}, None

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.state, self.rank = state, args.process_index

        def hook(module, a, kwargs):
            self.seen.setdefault(str(self.state.global_step + 1), []).append(kwargs["input_ids"].tolist())
        model.register_forward_pre_hook(hook, with_kwargs=True)

    def on_step_end(self, args, state, control, **kw):
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, f"rank-{self.rank}.json"), "w") as f:
            json.dump(self.seen, f)


if __name__ == "__main__":
    train(*parse_args(sys.argv[1:]), callbacks=[Capture(os.environ["CAPTURE_DIR"])])
