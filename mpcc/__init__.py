"""mpcc: reinforcement fine-tuning of VLMs on Masked Prediction via Context and Commonsense."""

import os
from pathlib import Path

__version__ = "0.1.0"


def cache_dir() -> Path:
    """$MPCC_CACHE, else ~/.cache/mpcc: where tiny models and synthetic train sets are built once."""
    return Path(os.environ.get("MPCC_CACHE", Path.home() / ".cache" / "mpcc"))
