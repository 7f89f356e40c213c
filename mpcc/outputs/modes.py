"""Finished outputs get the modes the user's umask gives new files: some writers (safetensors, anything
using tempfile) create files readable by their owner only."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def _umask() -> int:
    with contextlib.suppress(OSError, StopIteration, ValueError), open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def set_modes(root: Path) -> None:
    """The modes the user's umask gives new files and directories, for everything under `root`."""
    mask = _umask()
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                executable = os.stat(path).st_mode & 0o111
                os.chmod(path, (0o777 if executable else 0o666) & ~mask)
