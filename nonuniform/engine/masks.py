"""Real-space masks: soft spheres, thresholding, dilation, raised-cosine edges, auto masks.

Volumes are ``(N, N, N)`` real-space arrays with their origin (the sphere centre) at index
``N//2`` for even and odd ``N``. Binary masks are boolean arrays; soft masks are float32 arrays
with values in [0, 1]. Distances use ``scipy.ndimage.distance_transform_edt`` (exact Euclidean
distance, in px), so these functions run on the host: cupy inputs are copied to numpy.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from . import filters
from .backend import asnumpy
from .errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["auto_mask", "dilate", "soft_edge", "soft_sphere", "threshold_mask"]


def _raised_cosine(d, width_px):
    """``0.5 + 0.5 cos(pi d / w)`` for ``0 <= d < w``, 1 for ``d <= 0``, 0 for ``d >= w``."""
    t = np.clip(d / width_px, 0.0, 1.0)
    return 0.5 + 0.5 * np.cos(np.pi * t)


def soft_sphere(box: int, radius_px: float, edge_px: float = 0.0, dtype=np.float32):
    """Sphere of radius ``radius_px`` centred at ``N//2`` with a raised-cosine edge.

    Parameters
    ----------
    box : int
        Box size ``N`` (px).
    radius_px : float
        Radius (px) out to which the mask is 1.
    edge_px : float
        Width (px) of the cosine fall-off outside the radius: the value at distance ``r`` from
        the centre is ``0.5 + 0.5 cos(pi (r - radius_px) / edge_px)`` for
        ``radius_px < r < radius_px + edge_px`` and 0 beyond. 0 gives a hard sphere.
    dtype : numpy dtype
        Output float dtype.

    Returns
    -------
    (N, N, N) array, real space, values in [0, 1].
    """
    if box < 1 or radius_px < 0 or edge_px < 0:
        raise InputError(
            f"soft_sphere needs box >= 1, radius_px >= 0, edge_px >= 0; "
            f"got box={box}, radius_px={radius_px}, edge_px={edge_px}"
        )
    c = np.arange(box, dtype=np.float64) - box // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    if edge_px == 0:
        return (r <= radius_px).astype(dtype)
    return _raised_cosine(r - radius_px, edge_px).astype(dtype)


def threshold_mask(vol, threshold: float):
    """Binary mask ``vol >= threshold``.

    Parameters
    ----------
    vol : (N, N, N) float array, real space
    threshold : float
        Density level (same units as ``vol``).

    Returns
    -------
    (N, N, N) bool numpy array.
    """
    return np.asarray(asnumpy(vol)) >= threshold


def _outside_distance_px(mask, max_px: float):
    """Euclidean distance (px) to the nearest set voxel of a non-empty ``mask``, near the mask.

    Returns ``(crop, dist)``: ``crop`` is a tuple of slices, the bounding box of the mask grown
    by more than ``max_px`` (clipped to the array), and ``dist`` the exact distances inside it.
    Every voxel outside ``crop`` is farther than ``max_px``. Working on the crop is much cheaper
    than on the whole box for compact objects, and exact since every set voxel lies inside it.
    """
    pad = int(np.ceil(max_px)) + 1
    crop = []
    for axis in range(mask.ndim):
        idx = np.flatnonzero(
            mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis))
        )
        crop.append(
            slice(max(0, idx[0] - pad), min(mask.shape[axis], idx[-1] + pad + 1))
        )
    crop = tuple(crop)
    return crop, ndimage.distance_transform_edt(~mask[crop])


def _soft_from_distance(mask, inner_px: float, width_px: float, dtype):
    """1 within ``inner_px`` of the mask, raised cosine over the next ``width_px``, then 0."""
    crop, dist = _outside_distance_px(mask, inner_px + width_px)
    out = np.zeros(mask.shape, dtype=dtype)
    if width_px > 0:
        out[crop] = _raised_cosine(dist - inner_px, width_px)
    else:
        out[crop] = dist <= inner_px
    return out


def dilate(mask, distance_px: float):
    """Grow a binary mask: set every voxel within ``distance_px`` (Euclidean) of a set voxel.

    Parameters
    ----------
    mask : (N, N, N) array, real space
        Voxels with value > 0.5 (or True) are set.
    distance_px : float
        Dilation distance (px), >= 0.

    Returns
    -------
    (N, N, N) bool numpy array; an empty mask stays empty.
    """
    if distance_px < 0:
        raise InputError(f"dilation distance_px must be >= 0, got {distance_px}")
    m = np.asarray(asnumpy(mask)) > 0.5
    if not m.any() or distance_px == 0:
        return m
    return _soft_from_distance(m, distance_px, 0.0, bool)


def soft_edge(mask, width_px: float, dtype=np.float32):
    """Add a raised-cosine edge outside a binary mask.

    Voxels of the mask are 1; a voxel at Euclidean distance ``d`` (px) from the nearest mask
    voxel gets ``0.5 + 0.5 cos(pi d / width_px)`` if ``d < width_px``, else 0.

    Parameters
    ----------
    mask : (N, N, N) array, real space
        Voxels with value > 0.5 (or True) are set.
    width_px : float
        Width (px) of the edge, >= 0 (0 returns the binary mask as floats).
    dtype : numpy dtype
        Output float dtype.

    Returns
    -------
    (N, N, N) array, real space, values in [0, 1]; an empty mask gives zeros.
    """
    if width_px < 0:
        raise InputError(f"soft edge width_px must be >= 0, got {width_px}")
    m = np.asarray(asnumpy(mask)) > 0.5
    if not m.any() or width_px == 0:
        return m.astype(dtype)
    return _soft_from_distance(m, 0.0, width_px, dtype)


def auto_mask(
    vol,
    pixel_size_ang: float,
    threshold: float | None = None,
    threshold_frac: float = 0.2,
    extend_ang: float = 6.0,
    soft_ang: float = 8.0,
    lowpass_ang: float | None = None,
):
    """Solvent mask from a map, like cryoSPARC's dynamic mask: threshold, extend, soften.

    1. Optionally low-pass ``vol`` at ``lowpass_ang`` (raised-cosine edge, 2 shells).
    2. Binarize at ``threshold`` (absolute density) or, if it is None, at
       ``threshold_frac * max(vol)``.
    3. Extend by ``extend_ang``: the mask is 1 within that (Euclidean) distance ``d`` of the
       binarized density.
    4. Add a raised-cosine edge ``soft_ang`` wide, ``0.5 + 0.5 cos(pi (d - extend) / soft)``:
       the mask reaches 0 at ``extend_ang + soft_ang`` from the density (cryoSPARC's dynamic
       mask "near" 6 Å and "far" 14 Å are ``extend_ang=6, soft_ang=8``).

    Parameters
    ----------
    vol : (N, N, N) float array, real space, origin at N//2
    pixel_size_ang : float
        Pixel size (Å).
    threshold : float, optional
        Absolute density threshold; overrides ``threshold_frac``.
    threshold_frac : float
        Threshold as a fraction of the map maximum (used when ``threshold`` is None).
    extend_ang, soft_ang : float
        Extension and soft-edge width (Å), >= 0.
    lowpass_ang : float, optional
        Low-pass resolution (Å) applied before thresholding.

    Returns
    -------
    (N, N, N) float32 numpy array, real space, values in [0, 1].

    Raises
    ------
    InputError
        If the threshold selects no voxel (e.g. a map without positive density).
    """
    if not pixel_size_ang > 0:
        raise InputError(f"pixel_size_ang must be > 0 Å, got {pixel_size_ang}")
    if extend_ang < 0 or soft_ang < 0:
        raise InputError(
            f"mask extend_ang and soft_ang must be >= 0, got {extend_ang}, {soft_ang}"
        )
    v = np.asarray(asnumpy(vol))
    if lowpass_ang is not None:
        v = filters.lowpass_cosine(v, pixel_size_ang, lowpass_ang)
    level = (
        float(threshold) if threshold is not None else threshold_frac * float(v.max())
    )
    binary = threshold_mask(v, level)
    if not binary.any() or (threshold is None and not v.max() > 0):
        raise InputError(
            f"auto mask: threshold {level:g} selects no voxel of the map "
            f"(map max {float(v.max()):g}); give a lower threshold or a mask file"
        )
    # One distance transform: the distance to the extended mask is d - extend (exact for the
    # continuous Euclidean dilation, within a voxel on the lattice).
    mask = _soft_from_distance(
        binary, extend_ang / pixel_size_ang, soft_ang / pixel_size_ang, np.float32
    )
    logger.debug(
        "auto mask: threshold %.4g, extend %.1f Å, soft %.1f Å, %.1f%% of the box",
        level,
        extend_ang,
        soft_ang,
        100.0 * float(mask.mean()),
    )
    return mask
