"""The packaged recipes and Accelerate configs, found by name so they work from any directory.

The YAML files ship inside the package (a checkout also shows them as the top-level `recipes/`, a
symlink to this directory). Only the standard library and PyYAML are imported: mpcc.launch runs this on
every node before Accelerate starts.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from mpcc.errors import ConfigError
from mpcc.inputs import read_yaml

HERE = Path(__file__).parent
ACCELERATE = HERE / "accelerate"
LABELS = {"recipe": "recipe", "accelerate": "Accelerate config"}


def names(kind: str = "recipe") -> list[str]:
    """Packaged names: recipes as `grpo_prior`, `tiny/grpo_prior`; Accelerate configs as `zero2_offload`."""
    if kind == "accelerate":
        return sorted(p.stem for p in ACCELERATE.glob("*.yaml"))
    files = (p.relative_to(HERE) for p in HERE.rglob("*.yaml"))
    return sorted(p.with_suffix("").as_posix() for p in files if p.parts[0] != ACCELERATE.name)


def resolve(name_or_path: str | Path, kind: str = "recipe") -> Path:
    """An existing file as given (not a folder; /dev/zero too, to be refused as not a regular file), else
    the packaged file of that name (`.yaml` optional; Accelerate configs also as `accelerate/NAME`).
    ValueError listing the packaged names when neither exists."""
    path = Path(name_or_path)
    if path.exists() and not path.is_dir():
        return path
    name = PurePosixPath(path.as_posix())
    name = name.with_suffix("") if name.suffix == ".yaml" else name
    if kind == "accelerate" and name.parts[:1] == (ACCELERATE.name,):
        name = name.relative_to(ACCELERATE.name)
    if name.as_posix() in names(kind):
        return (ACCELERATE if kind == "accelerate" else HERE) / f"{name}.yaml"
    raise ConfigError(
        f"{name_or_path}: no such file, and no packaged {LABELS[kind]} of that name "
        f"(packaged: {', '.join(names(kind))})"
    )


def read(recipe: str | Path) -> tuple[Path, dict]:
    """The recipe's file and its YAML mapping: the one reader for training (mpcc.training.config) and the
    launchers (mpcc.launch), which stay free of heavy imports."""
    path = resolve(recipe)
    try:
        config = read_yaml(path)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read recipe: {e}") from e
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping of option: value")
    return path, config
