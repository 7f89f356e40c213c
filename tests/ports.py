"""A free TCP port for a test's server or rendezvous: tests run in parallel workers (pytest -n), so no
test may rely on a fixed port such as torchrun's and Accelerate's default 29500."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
