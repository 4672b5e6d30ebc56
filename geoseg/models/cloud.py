"""The cloud and cloud-shadow model of ``--mask model``: the ONNX files PyPI's ``ukis-csmask`` ships.

``ukis-csmask`` (DLR, Apache-2.0) carries U-Nets that segment clouds and cloud shadows in
Sentinel-2 and Landsat reflectance inside its wheel: nothing is downloaded. geoseg reads the
model files and their statistics from the installed package (``pip install geoseg[clouds]``)
and runs them itself, on the tiles the segmentation model gets, in the same pass: one read
serves both (:class:`geoseg.predict.stages.Infer`).

The models were trained at about 30 m on reflectance in [0, 1], on 256 x 256 inputs. A tile
is thus averaged down to about 30 m (3 x 3 pixels of a 10 m raster), cut into 256-pixel
windows that overlap, whose class probabilities are averaged; a pixel is masked where cloud
or shadow wins, and the mask is grown by ``buffer`` pixels of the model's resolution (as
ukis-csmask does, for fuzzy cloud edges), then put back on the tile's pixels.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

from geoseg.data.masks import CLOUD_BANDS
from geoseg.errors import InputError

SIDE = 256  # the models' input side
MODEL_RES = 30.0  # metres: what the models were trained at


def package_dir() -> str:
    """Where ukis-csmask is installed (not imported: its import loads onnxruntime and scipy)."""
    import importlib.util

    spec = importlib.util.find_spec("ukis_csmask")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("--mask model needs the cloud model of ukis-csmask: pip install 'geoseg[clouds]'")
    return list(spec.submodule_search_locations)[0]


def factor_for(res_m: float | None) -> int:
    """Pixels of the raster per pixel of the model's input: about 30 m (1 where unknown)."""
    if not res_m or res_m <= 0:
        return 1
    return max(1, int(round(MODEL_RES / res_m)))


class CloudModel:
    """``masked(images, scale, factor)`` -> bool ``(N, T, T)``: cloud or shadow on each pixel of
    each tile. ``images``: ``(N, 4, T, T)`` blue, green, red, nir."""

    def __init__(self, level: str = "l2a", threads: int | None = None, buffer: int = 4):
        import onnxruntime as ort

        folder = package_dir()
        path = os.path.join(folder, f"model_4b_{level}.onnx")
        with open(os.path.join(folder, f"model_4b_{level}.json")) as f:
            meta = json.load(f)
        stats = meta["data"]["dataset_statistics"]
        order = [CLOUD_BANDS.index(b) for b in stats["band_names"]]
        self.order = order  # the model's band order, as positions of CLOUD_BANDS
        self.mean = np.asarray(stats["img"][0], np.float32)[:, None, None]
        self.std = np.asarray(stats["img"][1], np.float32)[:, None, None]
        self.version = meta["model"]["version"]
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.buffer = buffer

    def masked(self, images: np.ndarray, scale: float = 1.0, factor: int = 1) -> np.ndarray:
        n, _, h, w = images.shape
        if n == 0:
            return np.zeros((0, h, w), bool)
        x = images[:, self.order].astype(np.float32) * np.float32(scale)
        x = _block_mean(x, factor)
        x = (x - self.mean) / self.std
        small = self._classes(x) != 0  # 0 clear, 1 cloud, 2 shadow
        if self.buffer:
            from scipy.ndimage import binary_dilation

            small = np.stack([binary_dilation(m, iterations=self.buffer) for m in small])
        if factor > 1:
            small = small.repeat(factor, axis=1).repeat(factor, axis=2)
        out = np.zeros((n, h, w), bool)
        hh, ww = min(h, small.shape[1]), min(w, small.shape[2])
        out[:, :hh, :ww] = small[:, :hh, :ww]
        if hh < h:
            out[:, hh:, :ww] = small[:, hh - 1 : hh, :ww]
        if ww < w:
            out[:, :, ww:] = out[:, :, ww - 1 : ww]
        return out

    def _classes(self, x: np.ndarray) -> np.ndarray:
        """Class of every pixel of ``(N, 4, h, w)`` normalised inputs: overlapping 256 windows, averaged."""
        n, b, h, w = x.shape
        ph, pw = max(h, SIDE), max(w, SIDE)
        if (ph, pw) != (h, w):
            x = np.pad(x, ((0, 0), (0, 0), (0, ph - h), (0, pw - w)), mode="reflect" if min(h, w) > 1 else "edge")
        ys, xs = _starts(ph), _starts(pw)
        acc = np.zeros((n, 3, ph, pw), np.float32)
        hits = np.zeros((ph, pw), np.float32)
        windows = [(y, x0) for y in ys for x0 in xs]
        for y, x0 in windows:
            hits[y : y + SIDE, x0 : x0 + SIDE] += 1
        batch = np.stack([x[i, :, y : y + SIDE, x0 : x0 + SIDE] for i in range(n) for y, x0 in windows])
        logits = np.concatenate([self.session.run(None, {self.input: np.ascontiguousarray(batch[k : k + 8])})[0]
                                 for k in range(0, len(batch), 8)])
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        k = 0
        for i in range(n):
            for y, x0 in windows:
                acc[i, :, y : y + SIDE, x0 : x0 + SIDE] += p[k]
                k += 1
        return (acc / hits).argmax(axis=1)[:, :h, :w]


def _starts(n: int) -> list[int]:
    """Window starts covering ``n`` pixels with 256 windows overlapping by at least a fifth."""
    if n <= SIDE:
        return [0]
    step = int(SIDE * 0.8)
    k = -(-(n - SIDE) // step)
    return [round(i * (n - SIDE) / k) for i in range(k + 1)]


def _block_mean(x: np.ndarray, f: int) -> np.ndarray:
    """``(N, B, h, w)`` averaged over ``f`` x ``f`` blocks (the last partial block too)."""
    if f <= 1:
        return x
    n, b, h, w = x.shape
    hh, ww = -(-h // f) * f, -(-w // f) * f
    if (hh, ww) != (h, w):
        x = np.pad(x, ((0, 0), (0, 0), (0, hh - h), (0, ww - w)), mode="edge")
    return x.reshape(n, b, hh // f, f, ww // f, f).mean(axis=(3, 5))


@functools.lru_cache(maxsize=2)
def cloud_model(level: str = "l2a") -> CloudModel:
    """One cloud model per process and product level."""
    return CloudModel(level)
