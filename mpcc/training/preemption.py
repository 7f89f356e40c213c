"""Save a checkpoint and stop on a preemption warning (SIGUSR1), so that a requeued job resumes there.

launch/slurm/train.sbatch asks SLURM for the warning (`--signal=B:USR1@SECS`), forwards it to the
training processes, and requeues the job once training has returned; the restarted job passes
`--resume_from_checkpoint auto` and continues from that checkpoint. Ranks receive the signal at
slightly different moments, so the decision is reduced over ranks at every step end: all ranks save
and stop at the same step (one rank saving alone would hang the others in a collective).
"""

from __future__ import annotations

import logging
import signal

import torch
from accelerate import PartialState
from accelerate.utils import reduce
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one."""
    state = PartialState()
    if state.num_processes == 1:
        return flag
    return bool(reduce(torch.tensor([float(flag)], device=state.device), reduction="sum").item() > 0)


class PreemptionCallback(TrainerCallback):
    """On `signum` (SIGUSR1), save a checkpoint at the next step end and stop training.

    The handler is installed at train begin and the previous one restored at train end; it only sets a
    flag, the Trainer does the saving. `preempted` tells the caller that training stopped before its
    last step (so the final model should not be written as if the run had finished).
    """

    def __init__(self, signum: int = signal.SIGUSR1):
        self.signum = signum
        self.requested = False
        self.preempted = False
        self._previous = None

    def _on_signal(self, signum, frame) -> None:
        self.requested = True

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous = signal.signal(self.signum, self._on_signal)

    def on_step_end(self, args, state, control, **kwargs):
        if any_rank(self.requested):
            self.preempted = state.global_step < state.max_steps
            logger.warning(
                "preemption warning (%s): saving a checkpoint at step %d of %d and stopping",
                signal.Signals(self.signum).name,
                state.global_step,
                state.max_steps,
            )
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None
