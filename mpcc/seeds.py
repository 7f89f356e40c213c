"""One way to derive a seed from a run's seed and the identity of what it draws for (a target, a request,
a batch), so draws never depend on order or process and two derivations never collide by arithmetic."""

from __future__ import annotations

import numpy as np


def mix_seed(seed: int, *parts: int) -> int:
    """A seed in [0, 2**31) for `parts` under the run's `seed` (NumPy's SeedSequence hashing): fits every
    API that takes a seed (an int32, an OpenAI-compatible server's `seed`)."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0] % 2**31)
