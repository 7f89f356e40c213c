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

from trl import GRPOTrainer


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


class MpccGRPOTrainer(GRPOTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self.args, "compile_generation", False):  # TRL builds its config with compilation off
            self.generation_config.disable_compile = False

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        prompts = self._logs["prompt"]
        texts = [conversation_text(p) for p in prompts]
        prompts.clear()
        prompts.extend(texts)
        super().log(logs, start_time)
