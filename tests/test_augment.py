import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.train.augment import Augment, AugmentConfig
from geoseg.data.classes import NODATA


def _asymmetric(n, size, seed):
    rng = np.random.default_rng(seed)
    # mask: blocky, asymmetric in x and y; image channel 0 carries the mask value, channel 1 its row
    mask = rng.integers(0, 5, size=(n, size // 4, size // 4)).repeat(4, 1).repeat(4, 2)
    mask[:, :3, :] = 4  # a band along the top only
    rows = np.broadcast_to(np.arange(size)[None, :, None], (n, size, size))
    image = np.stack([mask, rows], axis=1).astype(np.float32)
    return torch.from_numpy(image), torch.from_numpy(mask.astype(np.int64))


@given(seed=st.integers(0, 10_000), size=st.sampled_from([16, 32]))
@settings(max_examples=40, deadline=None)
def test_geometry_moves_image_and_mask_together(seed, size):
    image, mask = _asymmetric(3, size, seed)
    cfg = AugmentConfig(rotate_deg=40, translate=0.2, scale=(0.7, 1.3), brightness=0, contrast=0,
                        p_affine=1.0, image_mode="nearest")
    aug = Augment(cfg, generator=torch.Generator().manual_seed(seed))
    img2, mask2 = aug(image, mask)
    assert img2.shape == image.shape and mask2.shape == mask.shape
    valid = mask2 != NODATA
    # wherever the mask is defined, the image pixel is the one the mask came from
    assert torch.equal(img2[:, 0][valid], mask2[valid].float())
    assert set(torch.unique(mask2).tolist()) <= {0, 1, 2, 3, 4, NODATA}


@given(seed=st.integers(0, 10_000))
@settings(max_examples=30, deadline=None)
def test_flips_and_rot90_are_exact_with_bilinear_images(seed):
    image, mask = _asymmetric(4, 32, seed)
    cfg = AugmentConfig(rotate_deg=0, translate=0, scale=(1.0, 1.0), brightness=0, contrast=0)
    img2, mask2 = Augment(cfg, generator=torch.Generator().manual_seed(seed))(image, mask)
    assert (mask2 != NODATA).all()
    assert torch.equal(img2[:, 0], mask2.float())
    # the row channel moved with the pixels: each output is a flip/rotation of the input
    for i in range(4):
        variants = [torch.rot90(image[i, 1], k, (0, 1)) for k in range(4)]
        variants += [v.flip(-1) for v in variants]
        assert any(torch.equal(img2[i, 1], v) for v in variants)


def test_radiometric_changes_image_only():
    image, mask = _asymmetric(2, 16, 0)
    cfg = AugmentConfig(flips=False, rot90=False, p_affine=0, brightness=0.5, contrast=0.5)
    img2, mask2 = Augment(cfg, generator=torch.Generator().manual_seed(1))(image, mask)
    assert torch.equal(mask2, mask)
    assert not torch.equal(img2, image)
