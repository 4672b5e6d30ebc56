"""The command line: one clear line for user errors, no traceback, non-zero exit."""

import subprocess
import sys

import pytest


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "geoseg", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["predict", "{tmp}/missing.tif", "--out", "{tmp}/o", "--model", "index"], 1, "missing.tif: not found"),
        (["predict", "{scene}", "--out", "{tmp}/o", "--model", "magic"], 1, "unknown model 'magic'"),
        (["predict", "{scene}", "--out", "{tmp}/o", "--model", "index", "--tile-size", "0"], 2, "--tile-size must be positive"),
        (["predict", "{scene}", "--out", "{tmp}/o", "--model", "index", "--bands", "red=x"], 1, "--bands"),
        (["predict", "{scene}", "--out", "{tmp}/o", "--model", "index", "--bands", "red=9"], 1, "has 4 bands"),
        (["predict", "{tmp}/bad.json", "--out", "{tmp}/o", "--model", "index"], 1, "bad.json: not valid JSON"),
        (["predict", "{tmp}/notraster.tif", "--out", "{tmp}/o", "--model", "index"], 1, "notraster.tif: cannot open as a raster"),
        (["sample", "{tmp}/s", "--size", "10"], 1, "--size must be at least 64"),
        (["sample", "{tmp}/s", "--seed", "-1"], 2, "--seed must be >= 0"),
        (["predict", "{scene}", "--out", "{tmp}/o", "--model", "index", "--workers", "3,1"], 2, "MIN <= MAX"),
        (["predict", "{scene}", "--out", "{tmp}/o", "--model", "index", "--bands", "1,2,3"], 1,
         "3 bands given, but the model reads 4"),
        (["evaluate", "{labels}", "{tmp}/small.tif"], 1, "are not on the same grid"),
    ],
)
def test_user_errors_are_one_line(args, code, needle, sample_dir, tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "notraster.tif").write_text("hello")
    import rasterio
    from affine import Affine

    with rasterio.open(
        tmp_path / "small.tif", "w", driver="GTiff", height=8, width=8, count=1, dtype="uint8",
        crs="EPSG:4326", transform=Affine(1, 0, 0, 0, -1, 0),
    ) as dst:
        dst.write(__import__("numpy").zeros((1, 8, 8), "uint8"))
    args = [a.format(tmp=tmp_path, scene=sample_dir / "scene.tif", labels=sample_dir / "labels.tif") for a in args]
    res = run(*args)
    assert res.returncode == code, res.stderr
    assert needle in res.stderr
    assert "Traceback" not in res.stderr
    if code == 1:
        assert res.stderr.strip().count("\n") == 0, res.stderr  # exactly one line


def test_sample_and_evaluate_cli(tmp_path):
    res = run("sample", str(tmp_path / "s"), "--size", "128", "--seed", "4")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "s" / "scene.tif").exists() and (tmp_path / "s" / "labels.tif").exists()
    res = run("evaluate", str(tmp_path / "s" / "labels.tif"), str(tmp_path / "s" / "labels.tif"))
    assert res.returncode == 0, res.stderr
    assert "pixel accuracy 1.000" in res.stdout


@pytest.mark.parametrize("args, needle", [
    (["evaluate", "{labels}", "{tmp}/outside.tif"], "outside.tif: class value(s) [9] outside the 4 classes"),
    (["train", "--image", "{scene}", "--label", "{tmp}/missing.tif", "--out", "{tmp}/r"], "missing.tif: not found"),
    (["mosaic", "{tmp}/nojob", "--grid", "EPSG:6933:10"], "nojob"),
    (["vectorize", "{tmp}/missing.tif"], "missing.tif: not found"),
    (["export", "{tmp}/norun", "--format", "onnx"], "norun: not found"),
    (["quantize", "{tmp}/norun"], "norun: not found"),
    (["view", "{tmp}/missing"], "missing: not found"),
    (["quicklook", "{tmp}/missing.tif"], "missing.tif: not found"),
])
def test_every_command_says_a_user_error_in_one_line(args, needle, ray_local, sample_dir, tmp_path, capsys):
    """The other commands' error paths, in this process (the command line's own code, on the tests'
    Ray): exit 1, one line on stderr, no traceback; evaluate's label value outside the classes is
    found inside a Ray Data task."""
    import rasterio

    from geoseg.cli import main

    with rasterio.open(sample_dir / "labels.tif") as src:  # a label value no class has
        prof, labels, tags = src.profile, src.read(1), src.tags()
    labels[10:20, 10:20] = 9
    prof.update(driver="GTiff")
    with rasterio.open(tmp_path / "outside.tif", "w", **prof) as dst:
        dst.write(labels, 1)
        dst.update_tags(**tags)
    args = [a.format(tmp=tmp_path, scene=sample_dir / "scene.tif", labels=sample_dir / "labels.tif") for a in args]
    code = main(args)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and err and err[-1].startswith("geoseg: error: ") and needle in err[-1], err
    assert not any("Traceback" in line for line in err) and len(err) == 1, err
