"""torchrun workers for the failure tests of tests/test_ddp.py (test-only; torchrun runs this file).

    ddp_workers.py MODE [--config CONFIG]

MODE:

* ``hang``: print ``ready rank=R pgid=G parent_pgid=P`` and block forever (the launcher must end it);
* ``stubborn``: the same, ignoring SIGTERM (only SIGKILL ends it);
* ``nan``: ``mlc_utils.train.distributed.main`` with rank 1's model returning NaN logits from its third training
  batch (epoch 1, batch 2) on;
* ``disagree``: ``mlc_utils.train.distributed.main`` with rank 1 reporting another final-weights digest;
* ``threads``: ``mlc_utils.train.distributed.main`` unchanged; after it left the process group each
  rank prints ``threads rank=R left=[...]``, the names of its threads still running (gloo's workers
  ``pt_gloo_runloop`` and ``gloo_tcp_loop`` must be gone: alive, they run into interpreter shutdown).

The faults are test doubles around the real code (the model factory, the digest); the training,
the checks and the teardown under test are the production ones.
"""
from __future__ import annotations

import itertools
import os
import signal
import sys
import threading

NAN_FROM_BATCH = 2


def rank() -> int:
    return int(os.environ["RANK"])


def hang(argv: list[str]) -> int:
    line = f"ready rank={rank()} pgid={os.getpgrp()} parent_pgid={os.getpgid(os.getppid())}\n"
    os.write(1, line.encode())  # one write: the two workers share torchrun's stdout (print writes "\n" apart)
    threading.Event().wait()
    return 1


def stubborn(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return hang(argv)


def nan(argv: list[str]) -> int:
    """Rank 1's image model returns NaN logits from training batch ``NAN_FROM_BATCH`` on."""
    from mlc_utils import models
    create = models.create_image_model

    def create_poisoned(*args, **kwargs):
        model = create(*args, **kwargs)
        forward, calls = model.forward, itertools.count()

        def poisoned(*a, **k):
            logits = forward(*a, **k)
            return logits * float("nan") if model.training and next(calls) >= NAN_FROM_BATCH else logits
        if rank() == 1:
            model.forward = poisoned
        return model
    models.create_image_model = create_poisoned
    return train_main(argv)


def disagree(argv: list[str]) -> int:
    """Rank 1 reports a digest of other weights (as if DDP had let the ranks drift apart)."""
    from mlc_utils.train import distributed as train
    digest = train.state_digest
    train.state_digest = lambda model: ("drifted-" if rank() == 1 else "") + digest(model)
    return train_main(argv)


def threads(argv: list[str]) -> int:
    """The production run; then the names of this process's threads still running (from /proc)."""
    code = train_main(argv)
    names = []
    for task in sorted(os.listdir("/proc/self/task")):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                names.append(comm.read().strip())
        except OSError:
            continue  # ended meanwhile
    os.write(1, f"threads rank={rank()} left={names}\n".encode())  # one write (see hang)
    return code


def train_main(argv: list[str]) -> int:
    from mlc_utils.train.distributed import main
    return main(argv)


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    modes = {"hang": hang, "stubborn": stubborn, "nan": nan, "disagree": disagree, "threads": threads}
    raise SystemExit(modes[mode](rest))
