"""Regularizers of a half-map: the uniform FSC (Wiener) filter and the non-uniform CV filter.

Non-uniform (NU) regularization (Punjani, Zhang & Fleet 2020): from two independent *fold* maps
``q1``, ``q2`` of one half-set (each reconstructed from half of its particles) choose, at every voxel,
the low-pass cutoff whose filtered fold best predicts the other fold locally:

    e_j = (B_j * q1 - q2)² + (B_j * q2 - q1)²,     E_j(x) = (w_x ⊛ e_j)(x),     j*(x) = argmin_j E_j(x)

and take the regularized value from the half-map filtered at that cutoff, ``(B_{j*(x)} * m)(x)``.
Since ``q2 = truth + independent noise``, minimizing E_j minimizes the local error of the filtered
*fold* against the truth. That is the paper's rule (``objective="cv"``); it rates each candidate on
a map with half the data of the one it filters, and cuts too low. The default (``risk-wiener``, see
:func:`nu_filter`) subtracts ``½ (B_j (q1 - q2))²`` to rate the filtered map itself, and keeps each
band below the cutoff at its local Wiener gain (:class:`BandGains`) instead of 1.

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
# How the candidates are compared (see :func:`nu_filter`): the paper's plain cross-validation of
# low-pass filters, the risk-corrected objective of the same filters, and the risk-corrected
# objective of low-pass filters whose bands carry local Wiener gains (the default).
OBJECTIVES = ("cv", "risk", "risk-wiener")
DEFAULT_OBJECTIVE = "risk-wiener"
# Local band gains of ``risk-wiener``: the signal power is shrunk by GAIN_SHRINK_Z standard errors.
GAIN_SHRINK_Z = 2.0
# The gain is (SNR / (1 + SNR)) ** power: 1 (Wiener, least squared error) for a refinement's
# reference, 1/2 (the FSC weighting sqrt(2 FSC / (1 + FSC)) of the local FSC, as map.mrc's global
# one) for the maps users look at.
REFERENCE_GAIN_POWER = 1.0
MAP_GAIN_POWER = 0.5
# The gains' window is at least this wide (px): a band's local SNR is estimated from enough samples
# to tell an SNR of ~0.1 from none (the CV's own windows shrink to awf / Nyquist = 6 px).
GAIN_MIN_RADIUS_PX = 12.0
# A band kept at less than this gain does not count toward the reported cutoff (``cutoff_ang``).
GAIN_FLOOR = 0.05


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


class CandidateGains:
    """Gains of the candidate low-pass filters on one frequency grid, ``gains(j)``.

    The Butterworth gain ``1 / sqrt(1 + (f / f_j)^(2n))`` is evaluated as
    ``1 / sqrt(1 + exp(2n (log f - log f_j)))`` from ``log f`` computed once: one exponential per
    candidate instead of the overflow-guarded power of :func:`~.filters.butterworth` (7× faster,
    the same gains to 5e-7; an overflowing exponential gives the right limit, 0).
    """

    def __init__(self, freq, cutoffs, kind="butterworth", order=8):
        self.freq, self.cutoffs, self.kind, self.order = freq, cutoffs, kind, order
        if kind == "butterworth":
            xp = get_array_module(freq)
            self._log_f = xp.log(xp.maximum(freq, np.finfo(np.float32).tiny)).astype(xp.float32)

    def __call__(self, j):
        if self.kind != "butterworth":
            return lowpass_gain(self.freq, self.cutoffs[j], self.kind, self.order)
        xp = get_array_module(self._log_f)
        with np.errstate(over="ignore"):
            e = xp.exp(np.float32(2 * self.order) * (self._log_f - np.float32(np.log(self.cutoffs[j]))))
        return (1 / xp.sqrt(1 + e)).astype(xp.float32)


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
        Cutoff per voxel, as a resolution in Å (a local-resolution proxy): the selected candidate's,
        or with ``risk-wiener`` the highest band up to it whose local gain is at least
        :data:`GAIN_FLOOR` (bands above carry next to nothing there).
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


def check_nu_options(awf, order, n_cutoffs, kind, objective=DEFAULT_OBJECTIVE,
                     names=("awf", "order", "n_cutoffs", "filter type", "objective")):
    """InputError naming the first invalid NU filter parameter; ``names`` are what the caller calls them
    (e.g. the command-line options)."""
    require(awf > 0 and np.isfinite(awf), names[0], awf, "a positive number")
    require(order >= 1, names[1], order, "at least 1")
    require(n_cutoffs >= 2, names[2], n_cutoffs, "at least 2")
    require(kind in FILTER_TYPES, names[3], kind, f"one of {', '.join(FILTER_TYPES)}")
    require(objective in OBJECTIVES, names[4], objective, f"one of {', '.join(OBJECTIVES)}")


def band_samples(band, radius_px):
    """Effective number M of independent samples of a band in a Gaussian window of radius ``radius_px``.

    For white noise of power σ² per map passed through the band (Fourier weights ``band``, rfft
    layout), the window mean of ``p1 p2`` has standard deviation ``σ_p² / sqrt(M)`` with
    ``M = V_w (Σ|b|²)² / (N³ Σ|b|⁴)``, ``V_w = (4π s²)^{3/2}`` the window's effective volume
    (s its standard deviation, half its radius) and the sums over the whole spectrum.
    """
    xp = get_array_module(band)
    box = band.shape[0]
    col = xp.full(band.shape[-1], 2.0)
    col[0] = 1.0
    if box % 2 == 0:
        col[-1] = 1.0  # the Nyquist column is its own mirror
    b2 = band.astype(xp.float64) ** 2
    s2 = float((b2 * col).sum())
    s4 = float((b2 * b2 * col).sum())
    v_w = (4 * np.pi * (radius_px / 2.0) ** 2) ** 1.5
    return v_w * s2 * s2 / (box ** 3 * max(s4, 1e-300))


def local_band_gain(f1, f2, band, radius_px, box, z=GAIN_SHRINK_Z, power=REFERENCE_GAIN_POWER, freq=None):
    """Local gain of one frequency band for the average of two independent maps, on a coarse grid.

    ``f1``, ``f2`` are the maps' spectra (rfft layout) and ``band`` the band's Fourier weights. With
    p1, p2 the band-passed maps and w the Gaussian window of radius ``radius_px``, the local signal
    power is ``S = w ⊛ (p1 p2)`` (the noises are independent) and the local noise power of one map
    ``N = w ⊛ (p1 - p2)² / 2``; the average of the two has noise ``N / 2`` and SNR ``2 S / N``.
    ``S`` is first shrunk by ``z`` of its standard error under pure noise, ``N / sqrt(M)``
    (:func:`band_samples`), so that noise alone gives a gain of exactly 0 nearly everywhere. The
    gain is ``(S / (S + N / 2)) ** power``: power 1 is the Wiener gain, 1/2 the FSC weighting
    ``sqrt(2 FSC / (1 + FSC))`` of the band's local FSC. Both moments are smooth on the window's
    scale and are returned on the coarse grid of :func:`window_grid` (origin at n//2, to be resampled
    with :func:`upsample_linear`). ``freq``: ``|k|`` of the rfft grid, if the caller has it.
    """
    xp = get_array_module(f1)
    shape = (box,) * 3
    freq = fourier.radial_freq_rfft(shape, xp) if freq is None else freq
    p1 = fourier.irfftn_c(f1 * band, shape)
    p2 = fourier.irfftn_c(f2 * band, shape)
    n = window_grid(box, radius_px)
    w = gaussian_window_ft(crop_spectrum(freq, box, n), radius_px)
    scale = (n / box) ** 3  # the cropped grid's amplitude factor, the same for both moments

    def local_mean(v):
        return fourier.irfftn_c(crop_spectrum(fourier.rfftn_c(v), box, n) * w, (n,) * 3) / scale

    noise = xp.maximum(local_mean((p1 - p2) ** 2) / 2, 0)
    s = xp.maximum(local_mean(p1 * p2) - z * noise / np.sqrt(band_samples(band, radius_px)), 0)
    g = s / xp.maximum(s + noise / 2, np.finfo(np.float32).tiny)
    return (g if power == 1 else g ** power).astype(xp.float32)


def candidate_error(y1, y2, q1, q2, objective):
    """Per-voxel error of one candidate filter F from the folds ``q1``, ``q2`` and ``y1 = F q1``, ``y2 = F q2``.

    ``cv``: ``(y1 - q2)² + (y2 - q1)²``. ``risk`` / ``risk-wiener``: that minus ``½ (y1 - y2)²``. With
    ``q_i = t + n_i`` (independent noises of variance σ² per voxel), the expectation of the latter is
    ``2 |(F - 1) t|² + |F|² σ² + 2σ²`` = twice the squared error of ``F (q1 + q2) / 2`` against t, plus
    2σ², the same for every candidate; the plain ``cv`` error has ``2 |F|² σ²`` instead of ``|F|² σ²``,
    the risk of filtering *one fold*.
    """
    err = (y1 - q2) ** 2 + (y2 - q1) ** 2
    if objective != "cv":
        err -= 0.5 * (y1 - y2) ** 2
    return err


def nu_filter(fold1, fold2, half_map=None, pixel_size_ang=1.0, awf=3.0, order=8, n_cutoffs=50,
              kind="butterworth", n_windows=None, mask=None, objective=DEFAULT_OBJECTIVE, gain_group=5,
              gain_power=REFERENCE_GAIN_POWER, gain_z=GAIN_SHRINK_Z):
    """Cross-validated spatially adaptive low-pass filter (NU regularizer) of one half-set.

    ``objective`` chooses how the candidates are compared at each voxel (F_j the candidate filter):

    ``cv``
        The paper's plain cross-validation of low-pass filters, ``e_j = (F_j q1 - q2)² + (F_j q2 - q1)²``,
        ``F_j = B_j``. Its minimum is the best filter for *one fold*, which is noisier than the map
        it is applied to, so it cuts too low.
    ``risk``
        ``e_j - ½ (F_j (q1 - q2))²``, ``F_j = B_j``: up to a constant, its expectation is twice the
        squared error of ``F_j (q1 + q2) / 2`` against the truth, i.e. it rates the candidate on
        the map it filters.
    ``risk-wiener`` (default)
        The same risk, for candidates that keep the bands below the cutoff at their local Wiener
        gain instead of 1: ``F_j = Σ_{b <= j} g_b(x) (B_b - B_{b-1})``, ``g_b`` estimated from the
        two folds' local agreement in band ``b`` (:func:`local_band_gain`, bands grouped by
        ``gain_group`` candidates). A band with signal-to-noise below 1 is kept at reduced gain
        rather than cut, the way an FSC weighting keeps it.

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
    objective : str
        ``risk-wiener`` (default), ``risk`` or ``cv`` (see above).
    gain_group : int
        Candidates per band of the local gains (``risk-wiener``).
    gain_power : float
        Band gains ``(SNR / (1 + SNR)) ** gain_power`` (``risk-wiener``): 1, the Wiener gain, for a
        reference (default); :data:`MAP_GAIN_POWER` (1/2) for a map to look at.
    gain_z : float
        Standard errors the band signal powers are shrunk by (``risk-wiener``, :func:`local_band_gain`).

    Returns
    -------
    NUResult
    """
    xp = get_array_module(fold1)
    if fold1.shape != fold2.shape or fold1.ndim != 3 or len(set(fold1.shape)) != 1:
        raise InputError(f"fold maps must be cubic and of the same shape, got {fold1.shape} and {fold2.shape}")
    check_nu_options(awf, order, n_cutoffs, kind, objective)
    require(gain_group >= 1, "gain_group", gain_group, "at least 1")
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
    gain_of = CandidateGains(freq, cutoffs, kind, order)
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
    wiener = objective == "risk-wiener"
    if wiener:
        gains = BandGains(f1, f2, gain_of, awf, gain_group, gain_power, gain_z)
        c1 = xp.zeros(shape, dtype=xp.float32)
        c2 = xp.zeros(shape, dtype=xp.float32)
        prev1 = prev2 = 0
    for j in range(len(cutoffs)):
        g = gain_of(j)
        y1 = fourier.irfftn_c(f1 * g, shape)
        y2 = fourier.irfftn_c(f2 * g, shape)
        if wiener:  # F_j q = F_{j-1} q + g_j (B_j - B_{j-1}) q
            gain = gains.full(j)
            c1 += gain * (y1 - prev1)
            c2 += gain * (y2 - prev2)
            prev1, prev2 = y1, y2
            y1, y2 = c1, c2
        spec, m = fourier.rfftn_c(candidate_error(y1, y2, q1, q2, objective)), box
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
    chosen = np.unique(xp.asnumpy(choice) if xp is not np else choice)
    effective = choice
    if wiener:
        prev = 0
        effective = xp.zeros(shape, dtype=xp.int16)
        for j in range(int(chosen.max()) + 1):
            y = fourier.irfftn_c(fm * gain_of(j), shape)
            gain = gains.full(j)
            kept = choice >= j
            filtered += xp.where(kept, gain * (y - prev), 0)
            effective = xp.where(kept & (gain >= GAIN_FLOOR), xp.int16(j), effective)
            prev = y
    else:
        for j in chosen:
            y = fourier.irfftn_c(fm * gain_of(j), shape)
            filtered = xp.where(choice == j, y, filtered)
    cutoff_ang = (pixel_size_ang / xp.asarray(cutoffs, dtype=xp.float32))[effective.astype(xp.int64)]
    return NUResult(filtered=filtered.astype(xp.float32), cutoff_ang=cutoff_ang.astype(xp.float32),
                    cutoff_index=choice.astype(xp.int16), cutoffs_inv_px=cutoffs,
                    window_index=window.astype(xp.int16), window_radii_px=radii)


class BandGains:
    """Local Wiener gains of the candidates' bands (``risk-wiener``), computed once per group.

    Band ``b`` of candidate ``j`` is ``B_j - B_{j-1}``; candidates are grouped ``group`` at a time
    and a group's gain is estimated on the union of its bands, in a window of ``awf`` wavelengths of
    the group's middle cutoff but at least :data:`GAIN_MIN_RADIUS_PX` (:func:`local_band_gain`): wider
    bands and windows give steadier estimates. The coarse gains are kept (a small fraction of a volume
    each); :meth:`full` resamples one to the full grid, caching the last.
    """

    def __init__(self, f1, f2, gain_of, awf, group, power, z=GAIN_SHRINK_Z):
        self.f1, self.f2, self.gain_of, self.power, self.z = f1, f2, gain_of, power, z
        self.cutoffs, self.awf, self.group = gain_of.cutoffs, awf, group
        self.box = gain_of.freq.shape[0]
        self.coarse = {}
        self._full = (None, None)

    def _gain(self, k):
        if k not in self.coarse:
            lo, hi = k * self.group, min((k + 1) * self.group, len(self.cutoffs)) - 1
            band = self.gain_of(hi)
            if lo > 0:
                band = band - self.gain_of(lo - 1)
            radius = max(self.awf / self.cutoffs[(lo + hi) // 2], GAIN_MIN_RADIUS_PX)
            self.coarse[k] = local_band_gain(self.f1, self.f2, band, radius, self.box, z=self.z, power=self.power,
                                             freq=self.gain_of.freq)
        return self.coarse[k]

    def full(self, j):
        """Gain of candidate ``j``'s band on the full grid."""
        k = j // self.group
        if self._full[0] != k:
            self._full = (k, upsample_linear(self._gain(k), self.box))
        return self._full[1]


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
