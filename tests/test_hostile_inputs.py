"""What a careless or hostile user gives mpcc ends in one line naming what is wrong and where: files too
large to read whole (or endless, as /dev/zero), YAML alias bombs."""

from __future__ import annotations

import pytest

from mpcc.cli import main
from mpcc.data.build import BuildConfig, build
from mpcc.data.synthetic import generate_scenes
from mpcc.errors import ConfigError
from mpcc.training.config import load_recipe


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    generate_scenes(root, num_images=6, seed=0)
    return root


@pytest.fixture(scope="module")
def train_build(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("builds") / "train"
    build(scenes / "instances.json", scenes / "images", out, BuildConfig("train"), num_proc=1)
    return out


def _one_line(capsys, prefix: str) -> str:
    """The one line of mpcc's error output (beside progress bars), which starts with `prefix`."""
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("mpcc")]
    assert "Traceback" not in err and line.startswith(prefix), err
    return line


def _big_file(path, mib: float):
    path.write_bytes(b" " * int(mib * (1 << 20)))
    return path


# ------------------------------------------------------------------------------------ size caps


@pytest.mark.parametrize("what", ["annotations", "distractors", "mpcc_eval", "traces"])
def test_a_data_file_over_the_cap_is_one_line_naming_it_and_the_cap(
    what, scenes, train_build, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MPCC_MAX_INPUT_MB", "1")
    big = _big_file(tmp_path / "big.json", 1.5)
    out = str(tmp_path / "out")
    if what == "traces":
        argv = ["annotate", "import", str(big), "--data", str(train_build), "--out", out]
    else:
        ann = big if what == "annotations" else scenes / "instances.json"
        argv = ["prepare", "eval", "--annotations", str(ann), "--images", str(scenes / "images")]
        argv += ["--out", out] + ([] if what == "annotations" else [f"--{what.replace('_', '-')}", str(big)])
    assert main(argv) == 2
    line = _one_line(capsys, f"mpcc {argv[0]}: error:")
    assert f"{big}: 1,572,864 bytes, over the 1 MiB cap" in line and "MPCC_MAX_INPUT_MB" in line
    assert not (tmp_path / "out").exists()


def test_an_endless_traces_file_stops_at_the_cap(train_build, tmp_path, monkeypatch, capsys):
    """/dev/zero: stat says 0 bytes, so only a bounded read stops it (it used to grow to 22 GB)."""
    monkeypatch.setenv("MPCC_MAX_INPUT_MB", "1")
    argv = ["annotate", "import", "/dev/zero", "--data", str(train_build), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    line = _one_line(capsys, "mpcc annotate: error:")
    assert "/dev/zero: not a regular file, over the 1 MiB cap" in line


@pytest.mark.parametrize("source", ["/dev/zero", "big"])
def test_a_config_file_over_its_cap_is_one_line(source, tmp_path, capsys):
    config = str(_big_file(tmp_path / "c.yaml", 16.5)) if source == "big" else source
    assert main(["eval", "--config", config, "--out", str(tmp_path / "out")]) == 2
    line = _one_line(capsys, "mpcc eval: error:")
    what = "17,301,504 bytes" if source == "big" else "not a regular file"
    assert f"{config}: {what}, over the 16 MiB cap on recipes and config files" in line


def test_a_recipe_that_is_not_a_regular_file_is_named_so(capsys):
    assert main(["train", "/dev/zero"]) == 2
    line = _one_line(capsys, "mpcc train: error:")
    assert "/dev/zero: not a regular file" in line and "no such file" not in line


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)


@pytest.mark.parametrize("text", [BOMB, "beta: &b 0.1\nlearning_rate: *b\n"], ids=["bomb", "alias"])
def test_yaml_aliases_are_refused_in_recipes_and_config_files(text, tmp_path, capsys):
    """A few nested aliases expand to 9**9 strings: refused at the first alias, wherever it is."""
    file = tmp_path / "x.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{file}: line 2, column \d+: aliases \(\*name\) are not"):
        load_recipe(str(file))
    assert main(["eval", "--config", str(file), "--out", str(tmp_path / "out")]) == 2
    assert "aliases (*name) are not supported" in _one_line(capsys, "mpcc eval: error:")
