"""The records of an offline wandb run, read straight from its `run-*.wandb` file, to check what a user
would see after `wandb sync`: a 7-byte W&B header, then LevelDB-log records (32 KiB blocks, each
record a 7-byte header: crc32c, length, kind) carrying protobuf `Record`s."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> Iterator[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a wandb run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk, pos = data[pos + HEADER : pos + HEADER + length], pos + HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            yield record
        elif kind in (FIRST, MIDDLE):
            pending += chunk
        else:  # zeroed space: nothing more in this block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0


def history(path: str | Path) -> list[dict[str, str]]:
    """Each logged step's items, key -> JSON text of the value."""
    return [
        {item.key or "/".join(item.nested_key): item.value_json for item in r.history.item}
        for r in records(path)
        if r.WhichOneof("record_type") == "history"
    ]
