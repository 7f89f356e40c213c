"""TRL's GRPOTrainer with a fix for image prompts and an option for faster generation.

Completion logs render prompts as text: with `log_completions=True`, TRL logs prompts as chat
messages whose content mixes image and text parts; wandb cannot type such a column and the run
crashes at the first log. As text ("user: <image> question"), the same table logs everywhere (wandb,
trackio, the parquet files).

`compile_generation` (with `cache_implementation: static`) lets transformers compile the decode
step, which TRL switches off: GPU decoding of a 3B VLM is bound by per-token Python and kernel
launches, not by the GPU (see docs/PERFORMANCE.md).
"""

from __future__ import annotations

import functools

from trl import GRPOTrainer

from mpcc.families import use_speedup
from mpcc.generation.image_features import ImageFeatureMemo
from mpcc.generation.shared_prefill import generate_sharing_prefill
from mpcc.training.resume import ExactResumeMixin

# TRL's GRPOTrainer internals that mpcc overrides, wraps (mpcc.bench) or reads, as of TRL 1.16; private
# names change between minor releases, so tests/test_trl_surface.py checks each one against the
# installed TRL. Methods: the parameters mpcc's overrides take and pass on.
TRL_METHODS = {
    "_generate_single_turn": (
        "prompt_ids",
        "images",
        "multimodal_fields",
        "num_generations",
        "has_tool_images",
    ),
    "_generate_and_score_completions": ("inputs",),
    "_calculate_rewards": ("inputs", "prompts", "completions", "completion_ids_list"),
    "log": ("logs", "start_time"),
}
TRL_ATTRIBUTES = (
    "_logs",
    "_metrics",
    "_tokenizer",
    "eos_token_ids",
    "generation_config",
    "max_completion_length",
    "multi_objective_aggregation",
    "num_generations",
    "reward_weights",
    "scale_rewards",
    "use_vllm",
    "vllm_importance_sampling_correction",
    "vllm_importance_sampling_mode",
    "vllm_mode",
)
# transformers' PreTrainedModel.enable_input_require_grads: the forward hook it registers, and the attribute
# holding the current hooks' handles (see drop_stale_input_hooks)
GRAD_HOOK, GRAD_HOOK_HANDLES = "make_inputs_require_grads", "_require_grads_hooks"


def conversation_text(messages) -> str:
    """A chat as readable text, images shown as <image>."""
    if not isinstance(messages, list):
        return str(messages)
    lines = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(
                "<image>" if part.get("type") == "image" else str(part.get("text") or "") for part in content
            )
        lines.append(f"{message.get('role', '')}: {content}")
    return "\n".join(lines)


def drop_stale_input_hooks(model) -> int:
    """Remove input-embedding hooks that transformers lost track of; returns how many.

    With gradient checkpointing, TRL switches checkpointing off around generation and on again after
    it; each switch-on registers a fresh `make_inputs_require_grads` hook and forgets the old handle
    (transformers 5.24), so the hooks pile up, a few more every step. Every forward then runs all of
    them, and compiled decoding recompiles at every step (its guards count the hooks).
    """
    model = getattr(model, "module", model)  # DDP / DeepSpeed wrappers
    current = {h.id for h in getattr(model, GRAD_HOOK_HANDLES, None) or []}
    dropped = 0
    for module in model.modules():
        hooks = module._forward_hooks
        stale = [k for k, f in hooks.items() if getattr(f, "__name__", "") == GRAD_HOOK and k not in current]
        for key in stale:
            del hooks[key]
        dropped += len(stale)
    return dropped


class MpccGRPOTrainer(ExactResumeMixin, GRPOTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self.args, "compile_generation", False):  # TRL builds its config with compilation off
            self.generation_config.disable_compile = False
        self.image_memo = None
        kind = self.model.config.model_type
        wanted = getattr(self.args, "reuse_image_features", False)
        if use_speedup(kind, "image_feature_memo", wanted):
            self.image_memo = ImageFeatureMemo()
            for model in (self.model, getattr(self, "ref_model", None)):
                if model is not None:
                    self.image_memo.attach(model)
        wanted = getattr(self.args, "share_prompt_prefill", False)
        self._share_prefill = use_speedup(kind, "shared_prefill", wanted)

    def _generate_and_score_completions(self, inputs):
        """A new batch: the previous one's image features are freed (and counted in the logs)."""
        if self.image_memo is not None:
            counts = self.image_memo.counts
            if counts["images"]:
                mode = "train" if self.model.training else "eval"
                for key in ("images", "encoded", "patches_encoded"):
                    self._metrics[mode][f"image_features/{key}"].append(float(counts[key]))
            self.image_memo.clear()
            counts.clear()
        return super()._generate_and_score_completions(inputs)

    def _generate_single_turn(self, *args, **kwargs):
        drop_stale_input_hooks(self.model)
        if self.use_vllm or not self._share_prefill:
            return super()._generate_single_turn(*args, **kwargs)
        model = self.accelerator.unwrap_model(self.model)  # the object TRL's generation unwraps to
        model.generate = functools.partial(generate_sharing_prefill, model, model.generate)
        try:
            return super()._generate_single_turn(*args, **kwargs)
        finally:
            del model.generate  # the instance attribute: the class's method shows again

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        prompts = self._logs["prompt"]
        texts = [conversation_text(p) for p in prompts]
        prompts.clear()
        prompts.extend(texts)
        super().log(logs, start_time)
