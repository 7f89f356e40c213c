"""TRL's GRPOTrainer with one fix for image prompts: completion logs render prompts as text.

With `log_completions=True`, TRL logs prompts as chat messages whose content mixes image and text
parts; wandb cannot type such a column and the run crashes at the first log. As text
("user: <image> question"), the same table logs everywhere (wandb, trackio, the parquet files).
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
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        prompts = self._logs["prompt"]
        texts = [conversation_text(p) for p in prompts]
        prompts.clear()
        prompts.extend(texts)
        super().log(logs, start_time)
