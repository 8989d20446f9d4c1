"""Tests for nonuniform.engine.masks: ranges, centre, radii, dilation, soft edges, auto mask."""

import numpy as np
import pytest

from nonuniform.engine import masks
from nonuniform.engine.errors import InputError


def _radius_grid(n):
    c = np.arange(n) - n // 2
    return np.sqrt(
        c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2
    )


@pytest.mark.parametrize("n", [16, 17])
def test_soft_sphere_centre_range_and_symmetry(n):
    m = masks.soft_sphere(n, radius_px=4.0, edge_px=3.0)
    assert m.shape == (n, n, n) and m.dtype == np.float32
    assert m.min() >= 0.0 and m.max() <= 1.0
    assert m[n // 2, n // 2, n // 2] == 1.0
    # symmetric about N//2: mirror the part that has a partner on both sides
    k = n // 2
    core = m[k - (n - 1) // 2 : k + (n - 1) // 2 + 1, k, k]
    np.testing.assert_array_equal(core, core[::-1])
    # centre of mass at N//2 on every axis (the sphere, radius + edge = 7 px, fits in the box)
    idx = np.arange(n)
    for axis in range(3):
        profile = m.sum(axis=tuple(a for a in range(3) if a != axis))
        assert abs((profile * idx).sum() / profile.sum() - k) < 1e-5  # float32 sums


@pytest.mark.parametrize("n", [24, 25])
def test_soft_sphere_radius_and_edge_width(n):
    radius, edge = 5.0, 4.0
    m = masks.soft_sphere(n, radius, edge, dtype=np.float64)
    r = _radius_grid(n)
    assert np.all(m[r <= radius] == 1.0)
    assert np.all(m[r >= radius + edge] == 0.0)
    inside_edge = (r > radius) & (r < radius + edge)
    assert np.all((m[inside_edge] > 0) & (m[inside_edge] < 1))
    # value at mid-edge follows the raised cosine exactly (float64 arithmetic, 1e-12)
    np.testing.assert_allclose(
        m[inside_edge],
        0.5 + 0.5 * np.cos(np.pi * (r[inside_edge] - radius) / edge),
        atol=1e-12,
    )
    # hard sphere: voxel count = lattice points in the ball, volume within a few surface layers
    hard = masks.soft_sphere(n, radius, 0.0)
    assert set(np.unique(hard)) == {0.0, 1.0}
    assert hard.sum() == np.count_nonzero(r <= radius)
    # lattice-point count of a ball of radius 5 differs from 4/3 pi r^3 = 523.6 by well under
    # the surface area 4 pi r^2 = 314; 10% is a loose bound that still pins the radius to ~3%
    assert abs(hard.sum() - 4 / 3 * np.pi * radius**3) < 0.1 * 4 / 3 * np.pi * radius**3


def test_threshold_and_dilate_monotone():
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((20, 20, 20)).astype(np.float32)
    binary = masks.threshold_mask(vol, 2.0)
    assert binary.dtype == bool and 0 < binary.sum() < binary.size
    np.testing.assert_array_equal(binary, vol >= 2.0)
    prev = binary
    for d in [0.0, 1.0, 1.5, 2.5, 4.0]:
        grown = masks.dilate(binary, d)
        assert np.all(grown[prev]), "dilation must be monotone in the distance"
        assert np.all(grown[binary])
        prev = grown
    assert masks.dilate(binary, 0.0).sum() == binary.sum()


def test_dilate_single_voxel_gives_ball():
    n = 21
    m = np.zeros((n, n, n), bool)
    m[n // 2, n // 2, n // 2] = True
    grown = masks.dilate(m, 3.0)
    np.testing.assert_array_equal(grown, _radius_grid(n) <= 3.0)


def test_soft_edge_profile_and_range():
    n = 25
    m = np.zeros((n, n, n), np.float32)
    m[n // 2, n // 2, n // 2] = 1.0
    width = 5.0
    soft = masks.soft_edge(m, width)
    r = _radius_grid(n)
    assert soft.dtype == np.float32 and soft.min() >= 0 and soft.max() <= 1
    expected = np.where(
        r < width, 0.5 + 0.5 * np.cos(np.pi * np.minimum(r, width) / width), 0.0
    )
    # float32 output of a float64 expression: 1e-6 covers the rounding
    np.testing.assert_allclose(soft, expected, atol=1e-6)
    assert np.all(soft[r >= width] == 0)


def test_empty_masks_stay_empty():
    z = np.zeros((8, 8, 8), bool)
    assert not masks.dilate(z, 3).any()
    assert masks.soft_edge(z, 3).max() == 0


@pytest.mark.parametrize("n", [32, 33])
def test_auto_mask_covers_object_and_has_soft_edge(n):
    px = 2.0
    r = _radius_grid(n)
    # Gaussian blob, sigma 3 px, at N//2
    vol = np.exp(-0.5 * (r / 3.0) ** 2).astype(np.float32)
    m = masks.auto_mask(vol, px, threshold_frac=0.2, extend_ang=4.0, soft_ang=6.0)
    assert m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1
    # vol >= 0.2 max  <=>  r <= R = 3 sqrt(2 ln 5) = 5.37 px, a lattice ball. Dilated by d = 2 px
    # it contains every voxel with r <= R + d - sqrt(3) = 5.63 (nearest-lattice-point bound,
    # sqrt(3)/2 twice) and none beyond R + d = 7.37; the 3 px soft edge ends at 10.37 px.
    assert np.all(m[r <= 5.63] == 1)
    assert np.all(m[r >= 10.37] == 0)
    soft = (m > 0) & (m < 1)
    assert soft.any() and np.all((r[soft] > 5.63) & (r[soft] < 10.37))
    assert np.all(m[r > 7.37] < 1)
    assert m[n // 2, n // 2, n // 2] == 1
    # absolute threshold selects the same level
    m_abs = masks.auto_mask(
        vol, px, threshold=0.2 * float(vol.max()), extend_ang=4, soft_ang=6
    )
    np.testing.assert_array_equal(m, m_abs)
    # a low-pass first keeps the mask centred and in range
    m_lp = masks.auto_mask(vol, px, extend_ang=4, soft_ang=6, lowpass_ang=15.0)
    assert m_lp.min() >= 0 and m_lp.max() <= 1 and m_lp[n // 2, n // 2, n // 2] == 1


def test_auto_mask_rejects_empty_selection():
    vol = -np.ones((8, 8, 8), np.float32)
    with pytest.raises(InputError, match="selects no voxel"):
        masks.auto_mask(vol, 1.0)
    with pytest.raises(InputError, match="selects no voxel"):
        masks.auto_mask(np.zeros((8, 8, 8)), 1.0, threshold=1.0)
    with pytest.raises(InputError, match="soft_ang"):
        masks.auto_mask(np.ones((8, 8, 8)), 1.0, soft_ang=-1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_cropped_distance_matches_full_transform(seed):
    from scipy import ndimage

    # a few set voxels, some near the box faces, so the cropped transform meets the borders
    rng = np.random.default_rng(seed)
    m = np.zeros((23, 23, 23), bool)
    m[tuple(rng.integers(0, 23, size=(3, 4)))] = True
    m[0, 11, 11] = True
    full = ndimage.distance_transform_edt(~m)
    np.testing.assert_array_equal(masks.dilate(m, 2.5), full <= 2.5)
    expected = np.where(
        full < 4.0, 0.5 + 0.5 * np.cos(np.pi * np.minimum(full, 4.0) / 4.0), 0
    )
    # float32 output of a float64 expression: 1e-6 covers the rounding
    np.testing.assert_allclose(masks.soft_edge(m, 4.0), expected, atol=1e-6)
