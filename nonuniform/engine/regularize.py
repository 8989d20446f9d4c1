"""Regularizers of a half-map: the uniform FSC (Wiener) filter and the non-uniform CV filter.

Non-uniform (NU) regularization (Punjani, Zhang & Fleet 2020): from two independent *fold* maps
``q1``, ``q2`` of one half-set (each reconstructed from half of its particles) choose, at every voxel,
the low-pass cutoff whose filtered fold best predicts the other fold locally:

    e_j = (B_j * q1 - q2)² + (B_j * q2 - q1)²,     E_j(x) = (w_x ⊛ e_j)(x),     j*(x) = argmin_j E_j(x)

and take the regularized value from the half-map filtered at that cutoff, ``(B_{j*(x)} * m)(x)``.
Since ``q2 = truth + independent noise``, minimizing E_j minimizes the local error of the filtered
fold against the truth.

The window ``w_x`` is a property of the *voxel*, the same for every candidate compared there: its
radius ρ(x) must be at least ``AWF × θ(x)``, θ(x) the wavelength the voxel selects. There is one
window per candidate, of radius ``AWF / f_j`` (:func:`window_radii`); all candidates are compared
under every window, and each voxel keeps the choice of the *smallest* window that is wide enough
for the cutoff it chose there, so ρ(x) ≥ AWF·θ(x) holds at every voxel. (Giving each candidate
its own window in the comparison biases it toward low cutoffs.) The windowed losses are evaluated
on Fourier-cropped grids, as coarse as each window allows, and each window's choices are
interpolated trilinearly back to the full grid; the tests compare this with a straightforward
full-grid implementation.

Everything streams over the candidates: memory is a few volumes, never one per candidate. Only the
half-set's own folds enter its regularizer, so half-maps stay independent.
"""

import dataclasses
import logging

import numpy as np

from . import fourier
from .backend import get_array_module
from .errors import InputError, require
from .filters import butterworth

logger = logging.getLogger(__name__)

FILTER_TYPES = ("butterworth", "gaussian", "rect")


def candidate_cutoffs(box, n_cutoffs=50, min_shell=1.0):
    """``n_cutoffs`` cutoff frequencies (cycles/px) equispaced from ``min_shell/N`` up to Nyquist."""
    return np.linspace(min_shell / box, 0.5, n_cutoffs)


def lowpass_gain(freq, cutoff, kind="butterworth", order=8):
    """Gain of a candidate low-pass at ``freq`` (cycles/px); ``kind`` in :data:`FILTER_TYPES`."""
    xp = get_array_module(freq)
    if kind == "butterworth":
        return butterworth(freq, cutoff, order)
    if kind == "gaussian":
        # Gaussian whose gain is 1/sqrt(2) at the cutoff, as the Butterworth's.
        return xp.exp(-np.log(2) / 2 * (freq / cutoff) ** 2).astype(freq.dtype)
    if kind == "rect":
        return (freq <= cutoff).astype(freq.dtype)
    raise InputError(f"unknown filter type {kind!r}; choose one of {', '.join(FILTER_TYPES)}")


def gaussian_window_ft(freq, radius_px):
    """Transform of a unit-sum Gaussian window whose 'radius' (2σ) is ``radius_px``."""
    xp = get_array_module(freq)
    sigma = radius_px / 2.0
    return xp.exp(-2 * np.pi ** 2 * sigma ** 2 * freq * freq).astype(freq.dtype)


def window_radii(awf, cutoffs, n_windows=None):
    """Discrete window radii (px), ascending.

    By default one window per candidate, of radius ``awf`` × its wavelength (``awf / cutoffs[j]``);
    with ``n_windows``, that many radii geometric from ``awf / cutoffs[-1]`` to ``awf / cutoffs[0]``
    (fewer windows, faster, but a voxel's window then exceeds ``awf`` × its wavelength by up to the
    ratio of neighbouring radii, and the error grows with that ratio).
    The largest radius is exactly ``awf / cutoffs[0]``, not capped at the box: every candidate has a
    window wide enough for it (a window wider than the box is close to a plain average over it).
    """
    cutoffs = np.asarray(cutoffs, dtype=np.float64)
    lo = awf / cutoffs[-1]
    hi = awf / cutoffs[0]
    if n_windows is None:
        return (awf / cutoffs)[::-1].copy()
    if n_windows < 2:
        raise InputError(f"n_windows must be at least 2, got {n_windows}")
    radii = np.geomspace(lo, hi, n_windows)
    radii[0], radii[-1] = lo, hi  # exact end points: the largest window admits the lowest cutoff
    return radii


def min_candidate(radii, awf, cutoffs):
    """Per window, the index of the lowest candidate it may select: the first ``j`` with
    ``radius >= awf / cutoffs[j]`` (window at least ``awf`` wavelengths of the cutoff)."""
    need = awf / np.asarray(cutoffs, dtype=np.float64)  # decreasing with j
    return np.array([int(np.argmax(r >= need * (1 - 1e-9))) for r in radii], dtype=np.int64)


def window_grid(box, radius_px, tol=1e-3):
    """Smallest even grid (<= box) whose Nyquist holds a Gaussian window's transform down to ``tol``."""
    sigma = radius_px / 2.0
    k_cut = np.sqrt(np.log(1 / tol) / (2 * np.pi ** 2)) / sigma  # cycles/px where the FT is tol
    n = int(np.ceil(2 * k_cut * box / 2.0)) * 2
    return int(min(box, max(8, n)))


def crop_spectrum(f, box, n):
    """Keep the |k| < n/2 part of an rfft-layout (box, box, box//2+1) spectrum: shape (n, n, n//2+1).

    The inverse transform on the n³ grid samples the low-passed map every box/n voxels (its
    amplitude scaled by n³/box³, the same for every candidate compared on that grid).
    """
    if n >= box:
        return f
    xp = get_array_module(f)
    h = n // 2
    idx = xp.concatenate([xp.arange(h), xp.arange(box - h, box)])
    return f[xp.ix_(idx, idx, xp.arange(h + 1))]


def upsample_linear(a, box):
    """Periodic trilinear resampling of an n³ map (origin at n//2) onto box³ (origin at box//2).

    Sample ``i`` of the n³ grid sits at full-grid voxel ``box//2 + (i - n//2) * box/n`` (the
    Fourier-cropped grid of :func:`crop_spectrum`); the map wraps around as the FFT grid does.
    """
    n = a.shape[0]
    xp = get_array_module(a)
    a = a.astype(xp.float32)
    if n == box:
        return a
    u = (xp.arange(box, dtype=xp.float64) - box // 2) * (n / box) + n // 2
    i0 = xp.floor(u).astype(xp.int64)
    w = (u - i0).astype(xp.float32)
    i1 = (i0 + 1) % n
    i0 = i0 % n
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = box
        wa = w.reshape(shape)
        a = xp.take(a, i0, axis=axis) * (1 - wa) + xp.take(a, i1, axis=axis) * wa
    return a


@dataclasses.dataclass
class NUResult:
    """Output of :func:`nu_filter`.

    Attributes
    ----------
    filtered : (N, N, N) float32
        Regularized map, real space.
    cutoff_ang : (N, N, N) float32
        Selected cutoff per voxel, as a resolution in Å (a local-resolution proxy).
    cutoff_index : (N, N, N) int16
        Index of the selected candidate.
    cutoffs_inv_px : (J,) float64
        Candidate cutoffs (cycles/px).
    window_index : (N, N, N) int16
        Index of the window (in ``window_radii_px``) whose comparison chose the voxel's cutoff.
    window_radii_px : (K,) float64
        Window radii (px); ``window_radii_px[window_index] >= awf / cutoffs_inv_px[cutoff_index]``
        at every voxel.
    """

    filtered: np.ndarray
    cutoff_ang: np.ndarray
    cutoff_index: np.ndarray
    cutoffs_inv_px: np.ndarray
    window_index: np.ndarray
    window_radii_px: np.ndarray


def check_nu_options(awf, order, n_cutoffs, kind, names=("awf", "order", "n_cutoffs", "filter type")):
    """InputError naming the first invalid NU filter parameter; ``names`` are what the caller calls them
    (e.g. the command-line options)."""
    require(awf > 0 and np.isfinite(awf), names[0], awf, "a positive number")
    require(order >= 1, names[1], order, "at least 1")
    require(n_cutoffs >= 2, names[2], n_cutoffs, "at least 2")
    require(kind in FILTER_TYPES, names[3], kind, f"one of {', '.join(FILTER_TYPES)}")


def nu_filter(fold1, fold2, half_map=None, pixel_size_ang=1.0, awf=3.0, order=8, n_cutoffs=50,
              kind="butterworth", n_windows=None, mask=None):
    """Cross-validated spatially adaptive low-pass filter (NU regularizer) of one half-set.

    Parameters
    ----------
    fold1, fold2 : ndarray, shape (N, N, N), real space
        Independent reconstructions of the two folds of the half-set (quarter maps).
    half_map : ndarray, shape (N, N, N), optional
        Map to filter (default ``(fold1 + fold2) / 2``), e.g. the whole half-set's reconstruction.
    pixel_size_ang : float
        Voxel size in Å (only for the cutoff map in Å).
    awf : float
        Adaptive window factor: window radius = ``awf`` × the voxel's wavelength (default 3).
    order : int
        Butterworth order (default 8).
    n_cutoffs : int
        Number of candidate cutoffs, equispaced in frequency up to Nyquist (default 50).
    kind : str
        Candidate filter type: ``butterworth`` (default), ``gaussian`` or ``rect``.
    n_windows : int, optional
        Number of discrete window sizes (default: one per candidate, see :func:`window_radii`).
    mask : ndarray, optional
        Voxels outside ``mask > 0`` get the lowest cutoff (solvent).

    Returns
    -------
    NUResult
    """
    xp = get_array_module(fold1)
    if fold1.shape != fold2.shape or fold1.ndim != 3 or len(set(fold1.shape)) != 1:
        raise InputError(f"fold maps must be cubic and of the same shape, got {fold1.shape} and {fold2.shape}")
    check_nu_options(awf, order, n_cutoffs, kind)
    shape = fold1.shape
    box = shape[0]
    half_map = (fold1 + fold2) / 2 if half_map is None else half_map
    freq = fourier.radial_freq_rfft(shape, xp)
    f1 = fourier.rfftn_c(xp.asarray(fold1, dtype=xp.float32))
    f2 = fourier.rfftn_c(xp.asarray(fold2, dtype=xp.float32))
    fm = fourier.rfftn_c(xp.asarray(half_map, dtype=xp.float32))
    q1 = xp.asarray(fold1, dtype=xp.float32)
    q2 = xp.asarray(fold2, dtype=xp.float32)
    cutoffs = candidate_cutoffs(box, n_cutoffs)
    radii = window_radii(awf, cutoffs, n_windows)
    j_min = min_candidate(radii, awf, cutoffs)
    # The windowed losses are smooth on the window's scale: evaluate each on the coarsest grid that
    # holds its window's pass band (a Fourier crop samples the full-grid loss exactly, up to the
    # window's transform beyond the crop, < ``window_grid``'s tol).
    grids = [window_grid(box, r) for r in radii]
    # Windows sharing a grid are transformed together; each grid's spectrum is cropped from the
    # next larger one (the kept frequencies nest).
    sizes = sorted(set(grids), reverse=True)
    members = {n: [k for k, g in enumerate(grids) if g == n] for n in sizes}
    windows = {n: xp.stack([gaussian_window_ft(crop_spectrum(freq, box, n), radii[k]) for k in members[n]])
               for n in sizes}
    best = {n: xp.full((len(members[n]),) + (n,) * 3, xp.inf, dtype=xp.float32) for n in sizes}
    arg = {n: xp.zeros((len(members[n]),) + (n,) * 3, dtype=xp.int16) for n in sizes}
    for j, fc in enumerate(cutoffs):
        g = lowpass_gain(freq, fc, kind, order)
        y1 = fourier.irfftn_c(f1 * g, shape)
        y2 = fourier.irfftn_c(f2 * g, shape)
        err = (y1 - q2) ** 2 + (y2 - q1) ** 2
        spec, m = fourier.rfftn_c(err), box
        for n in sizes:
            spec, m = crop_spectrum(spec, m, n), n
            loss = fourier.irfftn_c(spec[None] * windows[n], (n,) * 3, axes=(1, 2, 3))
            better = loss < best[n]
            best[n] = xp.where(better, loss, best[n])
            arg[n] = xp.where(better, xp.int16(j), arg[n])
    arg = [arg[grids[k]][members[grids[k]].index(k)] for k in range(len(radii))]
    # Per voxel, the smallest window whose own choice it is wide enough for (radius >= awf / f_j).
    # Each window's choices are interpolated trilinearly between the samples of its grid (the
    # choice varies smoothly on the window's scale) and rounded to the nearest candidate.
    # The largest window admits every candidate (j_min = 0), so every voxel gets one there at last.
    choice = xp.zeros(shape, dtype=xp.int16)
    window = xp.full(shape, len(radii) - 1, dtype=xp.int16)
    open_ = xp.ones(shape, dtype=bool)
    for k in range(len(radii)):
        idx = xp.clip(xp.rint(upsample_linear(arg[k], box)), 0, len(cutoffs) - 1).astype(xp.int16)
        ok = open_ & (idx >= j_min[k])
        choice = xp.where(ok, idx, choice)
        window = xp.where(ok, xp.int16(k), window)
        open_ = open_ & ~ok
    if mask is not None:
        # Solvent takes the lowest cutoff, under the largest window (the one that admits it).
        inside = xp.asarray(mask) > 0
        choice = xp.where(inside, choice, 0).astype(xp.int16)
        window = xp.where(inside, window, len(radii) - 1).astype(xp.int16)
    filtered = xp.zeros(shape, dtype=xp.float32)
    for j in np.unique(xp.asnumpy(choice) if xp is not np else choice):
        y = fourier.irfftn_c(fm * lowpass_gain(freq, cutoffs[j], kind, order), shape)
        filtered = xp.where(choice == j, y, filtered)
    cutoff_ang = (pixel_size_ang / xp.asarray(cutoffs, dtype=xp.float32))[choice.astype(xp.int64)]
    return NUResult(filtered=filtered.astype(xp.float32), cutoff_ang=cutoff_ang.astype(xp.float32),
                    cutoff_index=choice.astype(xp.int16), cutoffs_inv_px=cutoffs,
                    window_index=window.astype(xp.int16), window_radii_px=radii)


def uniform_fsc_filter(fold1, fold2, half_map=None):
    """Shift-invariant Wiener filter of the half-map from the FSC of its two folds (baseline).

    The folds' FSC gives their SSNR per shell, ``f/(1-f)``; the half-map holds twice the data,
    so its SSNR is twice that and its Wiener gain ``S/(1+S)``.
    """
    from .fsc import fsc_curve

    half_map = (fold1 + fold2) / 2 if half_map is None else half_map
    f = np.clip(fsc_curve(fold1, fold2), 0.0, 0.999)
    ssnr = 2 * f / (1 - f)
    gain = ssnr / (1 + ssnr)
    ft = fourier.rfftn_c(half_map)
    shells = np.minimum(fourier.shell_index_rfft(half_map.shape), len(gain) - 1)
    gain_full = np.where(fourier.shell_index_rfft(half_map.shape) < len(gain), gain[shells], 0.0)
    return fourier.irfftn_c(ft * gain_full, half_map.shape).astype(np.float32)
