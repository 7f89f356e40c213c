"""The lock of the versions the suite passed on (requirements.lock): check it, write it, compare with it.

    python tools/lock.py check   the lock pins every dependency of pyproject.toml ([dev] included)
                                 within its range; else one line naming what is missing and `make lock`
    python tools/lock.py write   the running environment, frozen, becomes the lock
    python tools/lock.py diff    the running environment against the lock: what differs

`make setup` runs `check` before it installs anything; `make lock` and `make test-latest` run `write` and
`diff` in a throwaway virtualenv resolved to the newest versions that pyproject.toml allows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
EXTRA = "dev"
HEADER = """\
# The exact versions the test suite passed on, for the README's CPU set-up (Python 3.11, torch CPU build).
# Written by `make lock` (pip freeze of a virtualenv resolved to the newest versions pyproject.toml
# allows); `make setup` installs it. GPU users: see the README (install your torch build, then this
# file without its torch line: `make TORCH=... setup`).
"""


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """{canonical name: version} of the lock's `name==version` lines."""
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version:
            raise SystemExit(f"{path}:{number}: not a `name==version` pin: {line!r}")
        pins[canonicalize_name(name)] = version.strip()
    return pins


def requirements(pyproject: Path = PYPROJECT) -> list[Requirement]:
    """The project's dependencies and those of its dev extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"][EXTRA]]]


def check(lock: Path = LOCK, pyproject: Path = PYPROJECT) -> int:
    """0 when the lock pins every requirement within its range; else 1 and one line on stderr."""
    if not lock.is_file():
        print(f"{lock.name} is missing: run `make lock`", file=sys.stderr)
        return 1
    pins = read_lock(lock)
    wrong = []
    for requirement in requirements(pyproject):
        version = pins.get(canonicalize_name(requirement.name))
        if version is None:
            wrong.append(f"{requirement.name} is not in it")
        elif not requirement.specifier.contains(version, prereleases=True):
            wrong.append(f"{requirement.name}=={version} is outside {requirement.specifier}")
    if wrong:
        print(
            f"{lock.name} is out of date with {pyproject.name} ({'; '.join(wrong)}): run `make lock`, "
            "then `make test`, and commit the lock",
            file=sys.stderr,
        )
        return 1
    return 0


def frozen() -> dict[str, str]:
    """{canonical name: version} of what the running interpreter has installed, the project aside."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    ).stdout
    pins = {}
    for line in out.splitlines():
        name, sep, version = line.partition("==")
        if sep:  # `name @ file://...` lines are local builds: not lockable
            pins[canonicalize_name(name)] = version
    return pins


def write() -> int:
    pins = frozen()
    text = HEADER + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))
    tmp = LOCK.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(LOCK)
    print(f"{LOCK.name}: {len(pins)} packages")
    return 0


def diff() -> int:
    locked, now = read_lock(), frozen()
    rows = [
        (name, locked.get(name, "-"), now.get(name, "-"))
        for name in sorted(locked.keys() | now.keys())
        if locked.get(name) != now.get(name)
    ]
    if not rows:
        print(f"{sys.prefix} holds exactly {LOCK.name} ({len(locked)} packages)")
        return 0
    width = max(len(name) for name, _, _ in rows)
    print(f"{len(rows)} packages differ between {LOCK.name} and {sys.prefix} ('-': absent):")
    print(f"  {'package':<{width}}  {'locked':<14}  installed")
    for name, old, new in rows:
        print(f"  {name:<{width}}  {old:<14}  {new}")
    return 0


if __name__ == "__main__":
    commands = {"check": check, "write": write, "diff": diff}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        raise SystemExit(f"usage: python tools/lock.py {{{'|'.join(commands)}}}")
    sys.exit(commands[sys.argv[1]]())
