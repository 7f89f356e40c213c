"""The TRL and transformers internals mpcc relies on, checked by name against the installed versions.

Tested range: trl>=1.16.0,<1.17 (transformers 5.x). TRL's private methods change between minor releases
(`_generate_single_turn` took 3 parameters in TRL 1.0-1.10 and takes 5 in 1.16); a changed one breaks
mpcc deep inside a run, or quietly. Here it fails by name. The names live in mpcc.training.grpo, beside
the code that uses them; the output keys and `sampling/*` metrics prior sampling reads from TRL's rollout
are exercised by tests/test_prior_vllm.py.
"""

from __future__ import annotations

import inspect
from importlib.metadata import requires

import pytest
import torch
import transformers
import trl
from trl import GRPOTrainer

from mpcc.train import build_trainer
from mpcc.training.config import load_recipe
from mpcc.training.grpo import GRAD_HOOK, GRAD_HOOK_HANDLES, TRL_ATTRIBUTES, TRL_METHODS
from mpcc.training.resume import TRANSFORMERS_METHOD

TESTED = next(r for r in requires("mpcc") if r.startswith("trl"))  # the pin in pyproject.toml


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """A tiny prior-sampling trainer, as the training tests build it."""
    out = tmp_path_factory.mktemp("surface")
    return build_trainer(*load_recipe("tiny/grpo_prior", ["--output_dir", str(out), "--save_strategy", "no"]))


@pytest.mark.parametrize("name", [*TRL_METHODS, *TRL_ATTRIBUTES, GRAD_HOOK_HANDLES])
def test_internal_names_mpcc_uses(name, trainer):
    installed = f"trl {trl.__version__}, transformers {transformers.__version__}"
    changed = f"mpcc is tested with {TESTED}; installed: {installed}"
    if name in TRL_METHODS:
        parameters = tuple(inspect.signature(getattr(GRPOTrainer, name)).parameters)[1:]
        assert parameters == TRL_METHODS[name], (
            f"GRPOTrainer.{name} takes {parameters}, mpcc passes {TRL_METHODS[name]}: {changed}"
        )
    elif name in TRL_ATTRIBUTES:
        assert hasattr(trainer, name), f"GRPOTrainer no longer sets `{name}`: {changed}"
    else:  # what drop_stale_input_hooks prunes: transformers' input-grad hooks and their handles
        model = trainer.model
        model.enable_input_require_grads()
        try:
            handles = {h.id for h in getattr(model, name, [])}
            hooks = [f for m in model.modules() for k, f in m._forward_hooks.items() if k in handles]
            assert hooks and all(f.__name__ == GRAD_HOOK for f in hooks), (
                f"PreTrainedModel.enable_input_require_grads no longer keeps `{GRAD_HOOK}` hooks in "
                f"`{name}`: {changed}"
            )
        finally:
            model.disable_input_require_grads()


def test_the_trainer_method_resume_overrides(trainer, tmp_path):
    """transformers' `Trainer._load_from_checkpoint`, which mpcc.training.resume overrides: its parameters,
    and the upstream bug that needs the override (transformers #43701): on its own it leaves the Qwen-VL
    weights it cannot name as they were. When this stops failing to load, the override can go."""
    name, parameters = TRANSFORMERS_METHOD
    method = getattr(transformers.Trainer, name)
    assert tuple(inspect.signature(method).parameters)[1:] == parameters, (
        f"Trainer.{name} takes {tuple(inspect.signature(method).parameters)[1:]}: mpcc is tested with "
        f"transformers {transformers.__version__}"
    )
    model = trainer.model
    model.save_pretrained(tmp_path)
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    try:
        method(trainer, str(tmp_path))  # the upstream method alone
        restored = [n for n, p in model.named_parameters() if torch.equal(p, saved[n])]
        assert len(restored) < len(saved) // 2, "transformers now restores Qwen-VL checkpoints by itself"
        trainer._load_from_checkpoint(str(tmp_path))  # mpcc's
        assert all(torch.equal(p, saved[n]) for n, p in model.named_parameters())
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(saved[n])
