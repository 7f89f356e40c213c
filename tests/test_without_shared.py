"""A clone without ../shared: the real-COCO tests skip with the reason, and under CI they fail instead.

Runs pytest on a few tests in a subprocess with MPCC_TINYCOCO pointed at a folder that does not exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL_COCO = [
    "tests/test_render.py::test_lazy_light_columns_do_not_render",
    "tests/test_coco_input.py::test_cli_reports_errors_without_traceback",
]
PLAIN = "tests/test_render.py::test_load_dataset_names_what_is_wrong"


def _pytest(tmp_path: Path, *args: str, require: bool) -> tuple[subprocess.CompletedProcess, str]:
    """Run pytest without tinycoco; returns the run and the reason its tests should give."""
    absent = tmp_path / "absent"
    env = {key: value for key, value in os.environ.items() if key != "MPCC_REQUIRE_TINYCOCO"}
    env["MPCC_TINYCOCO"] = str(absent)
    if require:
        env["MPCC_REQUIRE_TINYCOCO"] = "1"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *args]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc, f"tinycoco fixtures missing: {absent} not found"


def test_without_tinycoco_real_coco_tests_are_marked_and_skip_with_the_reason(tmp_path):
    proc, reason = _pytest(tmp_path, "-m", "real_coco", *REAL_COCO, PLAIN, require=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 skipped, 1 deselected" in proc.stdout  # the plain test is not marked real_coco
    skips = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) == 2 and all(reason in line for line in skips), proc.stdout


def test_under_ci_they_fail_instead_of_skipping(tmp_path):
    proc, reason = _pytest(tmp_path, *REAL_COCO, PLAIN, require=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 passed, 2 errors" in proc.stdout and "skipped" not in proc.stdout
    assert reason in proc.stdout and "MPCC_REQUIRE_TINYCOCO=1 makes real-COCO tests mandatory" in proc.stdout
