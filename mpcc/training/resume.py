"""Resume that restores the trained weights, checked tensor by tensor.

transformers' `Trainer._load_from_checkpoint` loads a checkpoint's `model.safetensors` with a plain
`load_state_dict(strict=False)`. For model classes whose checkpoint names differ from their module names
(Qwen2/2.5/3-VL save `visual.*` and `model.layers.*` for `model.visual.*` and `model.language_model.*`),
almost no tensor matches: transformers logs "missing keys" and training goes on from the *base* weights
with the checkpoint's step, optimizer and scheduler (transformers issue #43701, open; its fix PR #44366
was closed unmerged; seen on 5.24 and 5.25). Here the checkpoint is read the way `from_pretrained` reads
it (its key renames applied), and every tensor of the model must be loaded, or the run stops naming the
first one that was not. LoRA checkpoints go through transformers' adapter loading and are then compared,
tensor by tensor, with the adapter file. DeepSpeed restores its engine's own module state (not this path).
"""

from __future__ import annotations

import logging
import os

import torch
from safetensors.torch import load_file

from mpcc.errors import InputError

logger = logging.getLogger(__name__)

# The transformers Trainer method overridden here (tests/test_trl_surface.py checks its parameters).
TRANSFORMERS_METHOD = ("_load_from_checkpoint", ("resume_from_checkpoint", "model"))
WEIGHTS, ADAPTER = "model.safetensors", "adapter_model.safetensors"


class ResumeError(InputError):
    """A checkpoint whose weights do not fill the model being resumed."""


def _first(names) -> str:
    names = sorted(names)
    return f"{names[0]!r}" + (f" and {len(names) - 1} more" if len(names) > 1 else "")


def load_full_weights(model: torch.nn.Module, checkpoint: str) -> int:
    """Every parameter and buffer of `model` from `checkpoint` (a `save_pretrained` folder, sharded or
    not), through `from_pretrained` so the class's checkpoint key renames apply; returns the number of
    tensors loaded. Costs one more copy of the weights in CPU memory while it runs."""
    loaded, info = type(model).from_pretrained(checkpoint, dtype=model.dtype, output_loading_info=True)
    if info["missing_keys"]:
        raise ResumeError(
            f"{checkpoint}: the checkpoint lacks {len(info['missing_keys'])} of the model's tensors, "
            f"first {_first(info['missing_keys'])}; not resuming from a partly random model"
        )
    state = loaded.state_dict()
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ResumeError(
            f"{checkpoint}: its tensors do not match the model being trained (missing "
            f"{_first(result.missing_keys) if result.missing_keys else 'none'}, unexpected "
            f"{_first(result.unexpected_keys) if result.unexpected_keys else 'none'}); a checkpoint of "
            "another model?"
        )
    return len(state)


def check_adapter_loaded(model, checkpoint: str) -> int:
    """Every tensor of the adapter file equals the model's adapter tensor of that name (PEFT's own names
    on both sides); returns how many were compared."""
    from peft import get_peft_model_state_dict

    saved = load_file(os.path.join(checkpoint, ADAPTER))
    current = get_peft_model_state_dict(model)
    if missing := set(current) ^ set(saved):
        raise ResumeError(
            f"{checkpoint}: {ADAPTER} and the model's adapter differ in tensor {_first(missing)}"
        )
    stale = [k for k in saved if not torch.equal(current[k].detach().cpu(), saved[k].to(current[k].dtype))]
    if stale:
        raise ResumeError(f"{checkpoint}: adapter tensor {_first(stale)} was not restored from {ADAPTER}")
    return len(saved)


class ExactResumeMixin:
    """For a Trainer subclass: `resume_from_checkpoint` restores every weight, or the run stops."""

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self.model if model is None else model
        if os.path.isfile(os.path.join(resume_from_checkpoint, ADAPTER)):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            count = check_adapter_loaded(model, resume_from_checkpoint)
        elif self.is_fsdp_enabled:  # FSDP's own sharded state, keyed by module names
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        else:
            count = load_full_weights(model, resume_from_checkpoint)
        logger.info("resumed %d weight tensors from %s", count, resume_from_checkpoint)
