"""The pages a person opens, in a real browser (headless Chromium): the data preview (`mpcc inspect`)
and the eval report. Every image loads, the console stays quiet, and the layout holds at a phone's
width and a desktop's (nothing wider than the window). Screenshots are kept under $MPCC_ARTIFACTS
(default: the test's temporary folder).

Chromium is Debian's package (`apt-get install chromium`; .ci/run installs it when missing). Without
it these tests skip, unless MPCC_REQUIRE_BROWSER=1 (set by .ci/run) turns that into a failure."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

WIDTHS = (360, 1400)
# Added to a copy of the page: what a person would see, as attributes the DOM dump shows.
PROBE = """<script>window.addEventListener("load", () => {
  const root = document.documentElement, images = [...document.images];
  root.dataset.images = images.length;
  root.dataset.broken = images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src).join(" ");
  root.dataset.overflow = root.scrollWidth > window.innerWidth;
});</script>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    found = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    if found is None:
        reason = "headless Chromium not installed (apt-get install chromium)"
        if os.environ.get("MPCC_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def _browse(chromium: str, page: Path, width: int, *extra: str) -> subprocess.CompletedProcess:
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
        "--virtual-time-budget=10000", f"--window-size={width},900", *extra, page.as_uri(),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def check_page(chromium: str, page: Path, name: str, artifacts: Path) -> None:
    probed = page.with_name(f".probe-{page.name}")
    probed.write_text(
        page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8"
    )
    try:
        for width in WIDTHS:
            run = _browse(chromium, probed, width, "--dump-dom")
            attributes = dict(re.findall(r'data-(images|broken|overflow)="([^"]*)"', run.stdout))
            assert attributes.get("images", "0") != "0", f"{name}: no images at width {width}"
            assert attributes["broken"] == "", f"{name}: images that did not load: {attributes['broken']}"
            assert attributes["overflow"] == "false", f"{name}: wider than a {width}-pixel window"
            console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
            assert not console, f"{name}: console messages at width {width}: {console}"
            shot = artifacts / f"{name}-{width}.png"
            _browse(chromium, page, width, f"--screenshot={shot}")
            assert shot.is_file() and shot.stat().st_size > 1000
    finally:
        probed.unlink()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    where = Path(os.environ.get("MPCC_ARTIFACTS", tmp_path)) / "browser"
    where.mkdir(parents=True, exist_ok=True)
    return where


def test_preview_page_in_a_browser(chromium, tiny_builds, tmp_path, artifacts):
    from mpcc.data.preview import write_preview

    page = write_preview(tiny_builds["eval"], tmp_path / "preview", num=12, seed=0)
    check_page(chromium, Path(page), "preview", artifacts)


def test_eval_report_in_a_browser(chromium, tiny_builds, tmp_path, artifacts):
    from mpcc.cli import main

    out = tmp_path / "eval"
    options = [
        "--limit",
        "3",
        "--max-new-tokens",
        "6",
        "--formats",
        "mc4,open",
        "--diagnostics",
        "blind,evidence",
    ]
    assert (
        main(
            [
                "eval",
                "--model",
                "tiny:qwen2_5_vl",
                "--data",
                str(tiny_builds["eval"]),
                "--out",
                str(out),
                *options,
            ]
        )
        == 0
    )
    html = (out / "report.html").read_text()
    assert "<table>" in html and 'src="accuracy.png"' in html and 'src="grounding.png"' in html
    check_page(chromium, out / "report.html", "eval-report", artifacts)
