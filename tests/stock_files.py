"""Checks that a folder mpcc wrote (tiny model, training output, checkpoint, export) loads without mpcc.

Stock transformers picks every class a folder names from its JSON files: `processor_class`,
`image_processor_type`, `video_processor_type`, `tokenizer_class`, `architectures`. A name only mpcc
defines gives stock users a bare tokenizer, so each must resolve in a process that never imports mpcc.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Resolves each name on stock transformers in a fresh interpreter and proves mpcc was never imported.
_RESOLVE = """
import json, sys, transformers
out = {n: getattr(getattr(transformers, n, None), "__module__", None) for n in json.loads(sys.argv[1])}
out["mpcc imported"] = any(m == "mpcc" or m.startswith("mpcc.") for m in sys.modules)
print(json.dumps(out))
"""


def named_classes(folder: Path) -> set[str]:
    """Every class name the folder's configs name."""
    processor = json.loads((folder / "processor_config.json").read_text())
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    names = {
        processor["processor_class"],
        processor["image_processor"]["image_processor_type"],
        tokenizer["processor_class"],
        tokenizer["tokenizer_class"],
    }
    if "video_processor" in processor:  # families whose stock processor has one (Qwen-VL)
        names.add(processor["video_processor"]["video_processor_type"])
    if (folder / "config.json").is_file():
        names |= set(json.loads((folder / "config.json").read_text())["architectures"])
    return names


def assert_stock_folders(*folders: Path) -> None:
    """Every class named in `folders` is a stock transformers class, resolved without importing mpcc."""
    names = set().union(*(named_classes(f) for f in folders))
    for folder in folders:
        for file in folder.glob("*.json"):
            text = file.read_text()
            assert "ImageOnly" not in text and "auto_map" not in text, file  # no mpcc class, no remote code
    command = [sys.executable, "-c", _RESOLVE, json.dumps(sorted(names))]
    run = subprocess.run(command, capture_output=True, text=True, check=True)
    resolved = json.loads(run.stdout.splitlines()[-1])
    assert resolved.pop("mpcc imported") is False
    assert all(str(module).startswith("transformers.") for module in resolved.values()), resolved
