"""Processors without their video processor, for families whose stock processor wants one.

The stock processors of such families are (image processor, tokenizer, video processor), and their video
processors exist only as torchvision classes: without torchvision, loading one fails with an ImportError,
or AutoProcessor falls back to the bare tokenizer and TRL then trains text-only.
"""

from __future__ import annotations

from transformers.models.auto.video_processing_auto import get_video_processor_config

# What a stock video processor needs from the image processor to match it (the rest are its defaults).
_VIDEO_KEYS = ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std")


class ImageOnly:
    """Leaves the video processor out of a stock processor, and saves as the stock processor.

    ProcessorMixin derives the parts it loads, checks and saves from `__init__`'s parameter names, so a
    signature without `video_processor` is all it takes; image handling is the stock class's.

    Saved folders must load with stock transformers, which wants the stock class name and a video
    processor config. transformers writes `type(self).__name__` into processor_config.json and
    tokenizer_config.json, so each subclass takes its stock class's `__name__` (its `__qualname__`
    stays mpcc's, for pickling); `to_dict` adds the source's video processor config, or one built from
    the image processor's patch, merge and normalisation settings (the video class's defaults do the rest).
    """

    _video_processor_type: str  # the stock video processor class of the family
    video_processor_config: dict | None = None  # as read from the folder this processor was loaded from

    def __init_subclass__(cls, video_processor_type: str, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._video_processor_type = video_processor_type
        cls.__name__ = next(b for b in cls.__bases__ if b is not ImageOnly).__name__

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        # transformers' own reading of the checkpoint's video settings (needs no torchvision)
        processor.video_processor_config = get_video_processor_config(pretrained_model_name_or_path) or None
        return processor

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["video_processor"] = self.video_processor_config or {
            "video_processor_type": self._video_processor_type,
            **{k: out["image_processor"][k] for k in _VIDEO_KEYS if k in out["image_processor"]},
        }
        return out
