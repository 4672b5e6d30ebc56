"""Augmentation applied identically to an image batch and its mask, on the device.

Geometric ops (flips, 90-degree rotations, arbitrary rotation, translation,
scaling) move image and mask together; pixels that come from outside the chip
become the ignore index in the mask. Radiometric ops (per-band brightness and
contrast) touch the image only. Used for training only, never validation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from geoseg.data.classes import NODATA
from geoseg.errors import InputError


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True
    rot90: bool = True
    rotate_deg: float = 15.0  # max arbitrary rotation, 0 = off
    translate: float = 0.05  # max shift as a fraction of the chip side
    scale: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.1  # per band, multiplicative +/- (on normalised data: additive)
    contrast: float = 0.1
    p_affine: float = 0.5  # probability of the rotation/translation/scaling step
    image_mode: str = "bilinear"  # "nearest" keeps pixel values exact (tests)

    def __post_init__(self) -> None:
        if self.rotate_deg < 0 or not 0 <= self.translate < 0.5:
            raise InputError("augment: rotate_deg must be >= 0 and translate in [0, 0.5)")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise InputError(f"augment: scale must be (low, high) with 0 < low <= high, got {self.scale}")
        if self.brightness < 0 or self.contrast < 0 or not 0 <= self.p_affine <= 1:
            raise InputError("augment: brightness/contrast must be >= 0 and p_affine in [0, 1]")
        if self.image_mode not in ("bilinear", "nearest"):
            raise InputError("augment: image_mode must be bilinear or nearest")

    def to_dict(self) -> dict:
        return asdict(self)


class Augment:
    def __init__(self, config: AugmentConfig | None = None, generator=None):
        self.cfg = config or AugmentConfig()
        self.gen = generator

    def _rand(self, *shape, device):
        import torch

        return torch.rand(*shape, generator=self.gen, device="cpu").to(device)

    def __call__(self, image, mask):
        """``image (N, C, H, W)`` float, ``mask (N, H, W)`` long -> the same, augmented."""
        import torch

        cfg, n, dev = self.cfg, image.shape[0], image.device
        if cfg.flips:
            fh = self._rand(n, device=dev) < 0.5
            fv = self._rand(n, device=dev) < 0.5
            image = torch.where(fh[:, None, None, None], image.flip(-1), image)
            mask = torch.where(fh[:, None, None], mask.flip(-1), mask)
            image = torch.where(fv[:, None, None, None], image.flip(-2), image)
            mask = torch.where(fv[:, None, None], mask.flip(-2), mask)
        if cfg.rot90 and image.shape[-1] == image.shape[-2]:
            k = int(self._rand(1, device="cpu").item() * 4) % 4
            if k:
                image = torch.rot90(image, k, dims=(-2, -1))
                mask = torch.rot90(mask, k, dims=(-2, -1))
        if cfg.p_affine > 0 and (cfg.rotate_deg > 0 or cfg.translate > 0 or cfg.scale != (1.0, 1.0)):
            image, mask = self._affine(image, mask)
        if cfg.brightness > 0 or cfg.contrast > 0:
            c = image.shape[1]
            gain = 1 + cfg.contrast * (2 * self._rand(n, c, 1, 1, device=dev) - 1)
            shift = cfg.brightness * (2 * self._rand(n, c, 1, 1, device=dev) - 1)
            mean = image.mean(dim=(-2, -1), keepdim=True)
            image = (image - mean) * gain + mean + shift
        return image, mask

    def _affine(self, image, mask):
        import torch
        import torch.nn.functional as F

        cfg, n, dev = self.cfg, image.shape[0], image.device
        apply = (self._rand(n, device=dev) < cfg.p_affine).float()
        ang = math.radians(cfg.rotate_deg) * (2 * self._rand(n, device=dev) - 1) * apply
        lo, hi = cfg.scale
        s = 1 + (lo + (hi - lo) * self._rand(n, device=dev) - 1) * apply
        t = cfg.translate * 2 * (2 * self._rand(n, 2, device=dev) - 1) * apply[:, None]
        cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
        theta = torch.stack(
            [torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1
        ).to(image.dtype)
        grid = F.affine_grid(theta, list(image.shape), align_corners=False)
        image = F.grid_sample(image, grid, mode=cfg.image_mode, padding_mode="reflection", align_corners=False)
        m = F.grid_sample(
            (mask.unsqueeze(1).float() + 1), grid.float(), mode="nearest", padding_mode="zeros", align_corners=False
        ).squeeze(1)
        mask = torch.where(m == 0, torch.full_like(m, NODATA), m - 1).long()
        return image, mask
