"""The model zoo (:mod:`geoseg.models.zoo`): the tensor shapes of an architecture, kept
once it was built, so that checking a checkpoint needs no torch import."""

import json
import os
import subprocess
import sys

import pytest

from geoseg.models import checkpoint
from geoseg.data.classes import LANDCOVER
from geoseg.errors import CheckpointError
from geoseg.models.zoo import ModelConfig, build_model, known_state_shapes, state_shapes


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOSEG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_shapes_are_kept_once_built_and_read_back(cache):
    cfg = ModelConfig("tinyfcn", in_channels=3, num_classes=6)
    assert known_state_shapes(cfg) is None
    built = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    assert state_shapes(cfg) == built and len(built) == 8
    assert known_state_shapes(cfg) == built
    (kept,) = list((cache / "state-shapes").iterdir())
    assert json.loads(kept.read_text())["config"] == cfg.to_dict()
    # another config is another model: not known
    assert known_state_shapes(ModelConfig("tinyfcn", in_channels=3, num_classes=7)) is None
    # a damaged file is ignored (and replaced by the next build)
    kept.write_text("{not json")
    assert known_state_shapes(cfg) is None
    assert state_shapes(cfg) == built and known_state_shapes(cfg) == built


def test_known_shapes_are_read_without_importing_torch(cache):
    cfg = ModelConfig("tinyfcn", in_channels=4, num_classes=3)
    state_shapes(cfg)
    code = ("import sys; from geoseg.models.zoo import ModelConfig, known_state_shapes; "
            "s = known_state_shapes(ModelConfig('tinyfcn', in_channels=4, num_classes=3)); "
            "print(len(s), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "GEOSEG_CACHE_DIR": str(cache)}).stdout.split()
    assert out == ["8", "False"], out


def test_checkpoint_check_from_kept_shapes(cache, tmp_path):
    """A loaded checkpoint's architecture is known (saving alone does not vouch for it:
    its caller may pair a model with another description); a description naming an
    architecture never built here needs a build (None without one), after which a
    misfit is refused from the kept shapes alone."""
    cfg = ModelConfig("tinyfcn", in_channels=4, num_classes=4)
    ck = tmp_path / "ck"
    other = ModelConfig("tinyfcn", in_channels=4, num_classes=9)  # saved with cfg's description
    checkpoint.save(str(ck), build_model(other), checkpoint.CheckpointMeta(cfg, LANDCOVER, [0.0] * 4, [1.0] * 4))
    assert known_state_shapes(cfg) is None
    with pytest.raises(CheckpointError, match="weights do not fit"):
        checkpoint.load(str(ck))
    assert known_state_shapes(cfg) is None  # a load that failed keeps nothing
    checkpoint.save(str(ck), build_model(cfg), checkpoint.CheckpointMeta(cfg, LANDCOVER, [0.0] * 4, [1.0] * 4))
    checkpoint.load(str(ck))
    assert checkpoint.verify(str(ck), build=False).model == cfg
    doc = json.loads((ck / "geoseg.json").read_text())
    doc["model"]["num_classes"] = 5  # the description now names a model the weights do not fit
    (ck / "geoseg.json").write_text(json.dumps(doc))
    assert checkpoint.verify(str(ck), build=False) is None
    misfit = r"weights do not fit tinyfcn/resnet18, the model its geoseg.json describes: 2 of other shapes"
    with pytest.raises(CheckpointError, match=misfit):
        checkpoint.verify(str(ck))
    with pytest.raises(CheckpointError, match=misfit):
        checkpoint.verify(str(ck), build=False)
