"""TRL's SFTTrainer, resuming with every weight restored (mpcc.training.resume)."""

from __future__ import annotations

from trl import SFTTrainer

from mpcc.training.resume import ExactResumeMixin


class MpccSFTTrainer(ExactResumeMixin, SFTTrainer):
    pass
