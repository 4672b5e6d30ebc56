"""The model core of inference (:mod:`geoseg.models.predictor`), without Ray: the fast path's
classes, and ``compile`` (one shape per model, eager where compiling fails)."""

import threading
import time

import numpy as np
import torch

from geoseg.models.zoo import ModelConfig, build_model
from geoseg.models.predictor import TorchPredictor

MEAN, STD = [3000.0] * 4, [2000.0] * 4


def _model(seed: int, classes: int = 5):
    torch.manual_seed(seed)
    model = build_model(ModelConfig("tinyfcn", in_channels=4, num_classes=classes))
    with torch.no_grad():  # make the random net's classes vary across a tile
        for p in model.parameters():
            p.mul_(3.0)
    return model


def _tiles(n: int, h: int = 40, w: int = 56, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 9000, size=(n, 4, h, w), dtype=np.uint16)


def test_predictor_argmax_of_logits_equals_the_softmax_path():
    """The fast path (tiles in their dtype, argmax of the logits) gives the softmax path's classes."""
    tiles = _tiles(5)
    pred = TorchPredictor(_model(1), MEAN, STD, batch_size=2)  # sub-batches of 2: 2 + 2 + 1
    classes = pred.predict(tiles)
    assert classes.dtype == np.uint8 and classes.shape == (5, 40, 56)
    np.testing.assert_array_equal(classes, pred.predict_proba(tiles).argmax(1))
    assert len(np.unique(classes)) > 1
    # the same with float input: only the dtype in which tiles travel differs
    np.testing.assert_array_equal(pred.predict(tiles.astype(np.float32)), classes)


def test_compiled_predictor_compiles_one_shape_for_batches_of_any_length():
    """Batches of 5, 3 and 4 tiles in sub-batches of 4: the short ones are padded, so the
    model is compiled for one input shape, and its classes are the eager model's."""
    shapes = []

    def backend(gm, inputs):  # a torch.compile backend that records what it compiles, and runs it as is
        shapes.extend(tuple(t.shape) for t in inputs if getattr(t, "ndim", 0) == 4 and t.shape[-1] == 56)
        return gm.forward

    model = _model(3)
    eager = TorchPredictor(model, MEAN, STD, batch_size=4)
    compiled = TorchPredictor(model, MEAN, STD, batch_size=4, compile=backend)
    for n, seed in ((5, 4), (3, 5), (4, 6)):
        tiles = _tiles(n, seed=seed)
        np.testing.assert_array_equal(compiled.predict(tiles), eager.predict(tiles))
    assert shapes == [(4, 4, 40, 56)], shapes
    assert compiled.compiled


def test_compiled_step_on_a_gpu_is_the_largest_batch_so_far():
    """On a GPU a call is one forward of the whole batch; compiled, every call takes the largest
    batch's shape (a shorter batch, the end of a read range, is padded), not one shape per length."""
    pred = TorchPredictor(_model(1), MEAN, STD, compile=lambda gm, inputs: gm.forward)
    pred.cuda = True  # the step policy alone (nothing runs on a device here)
    assert [pred._step(n, 576) for n in (8, 3, 8, 12, 5)] == [8, 8, 8, 12, 12]
    pred.compiled = False
    assert [pred._step(n, 576) for n in (8, 3)] == [8, 3]


def test_compile_that_fails_falls_back_to_eager_with_one_line(capsys):
    """No working compiler on the node (the backend raises): the job goes on eagerly, and says so once."""

    def broken(gm, inputs):
        raise RuntimeError("Cannot find a working triton installation")

    model = _model(4)
    tiles = _tiles(3, seed=7)
    pred = TorchPredictor(model, MEAN, STD, compile=broken)
    expected = TorchPredictor(model, MEAN, STD).predict(tiles)
    np.testing.assert_array_equal(pred.predict(tiles), expected)
    np.testing.assert_array_equal(pred.predict(tiles), expected)  # and stays eager: no second attempt
    assert not pred.compiled
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "torch.compile" in ln]
    assert len(lines) == 1 and "Cannot find a working triton installation" in lines[0], lines
    assert "runs eagerly" in lines[0]


def test_compile_that_fails_in_calls_running_at_once_falls_back_in_each(capsys):
    """A CPU model actor runs several calls at once: each falls back to eager, one line in all."""
    from concurrent.futures import ThreadPoolExecutor

    compiling = []

    def broken(gm, inputs):
        compiling.append(threading.get_ident())
        time.sleep(0.3)  # the other calls reach the compiled model meanwhile
        raise RuntimeError("No working C++ compiler found")

    model = _model(5)
    tiles = [_tiles(2, seed=s) for s in (8, 9, 10)]
    pred = TorchPredictor(model, MEAN, STD, compile=broken)
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(pred.predict, tiles))
    eager = TorchPredictor(model, MEAN, STD)
    for g, t in zip(got, tiles):
        np.testing.assert_array_equal(g, eager.predict(t))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "torch.compile failed" in ln]
    assert len(lines) == 1, lines
    assert len(compiling) > 1  # more than one call had tried to compile


def test_a_model_error_under_compile_is_not_swallowed():
    """A tile with the wrong number of bands fails as it does eagerly: compile is not blamed for it."""
    pred = TorchPredictor(_model(1), MEAN, STD, compile=lambda gm, inputs: gm.forward)
    bad = np.zeros((1, 3, 40, 56), np.uint16)
    try:
        pred.predict(bad)
    except Exception as exc:  # noqa: BLE001 - the model's own error, whatever torch wraps it in
        assert "torch.compile failed" not in str(exc)
    else:
        raise AssertionError("a 3-band tile for a 4-band model was accepted")
    assert pred.compiled
