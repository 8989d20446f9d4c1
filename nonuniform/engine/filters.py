"""Isotropic Fourier filters: Butterworth, low-passes, FSC weighting, B-factor fit and sharpening.

All volumes are cubic ``(N, N, N)`` real-space arrays with their origin at index ``N//2``; the
transforms go through :mod:`nonuniform.engine.fourier`. Spatial frequencies are in cycles/px
(Nyquist = 0.5) inside, and resolutions in Å at the interface (``res_ang``). Fourier shells are
``round(|k| * N)`` (``fourier.shell_index_rfft``), shell ``s`` has resolution ``N * px / s``.
Functions return arrays on the input's device (numpy or cupy) and keep its float dtype.
"""

from __future__ import annotations

import logging

import numpy as np

from . import fourier
from .backend import asnumpy, get_array_module
from .errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "apply_radial_filter",
    "auto_sharpen",
    "butterworth",
    "fsc_weighting",
    "gaussian_lowpass",
    "guinier_bfactor",
    "lowpass_cosine",
    "lowpass_cosine_gain",
    "rect_lowpass",
    "sharpen",
]


def _check_cubic(vol, name="vol"):
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(
            f"{name} must be a cubic (N, N, N) volume, got shape {vol.shape}"
        )


def _real_dtype(vol):
    xp = get_array_module(vol)
    return vol.dtype if vol.dtype in (xp.float32, xp.float64) else xp.float32


def _apply_gain(vol, gain):
    """Multiply the rfft of ``vol`` by ``gain`` (rfft layout, broadcastable) and transform back."""
    ft = fourier.rfftn_c(vol)
    ft *= gain
    return fourier.irfftn_c(ft, vol.shape).astype(_real_dtype(vol), copy=False)


def _check_res(res_ang, pixel_size_ang, name="res_ang"):
    if not res_ang > 0:
        raise InputError(f"{name} must be > 0 Å, got {res_ang}")
    if not pixel_size_ang > 0:
        raise InputError(f"pixel_size_ang must be > 0 Å, got {pixel_size_ang}")


def butterworth(freq, cutoff, order: int = 8):
    """Butterworth low-pass magnitude ``1 / sqrt(1 + (freq / cutoff)**(2 * order))``.

    Parameters
    ----------
    freq : array_like, float
        Spatial frequencies (any unit, e.g. cycles/px from ``fourier.radial_freq_rfft``).
    cutoff : float
        Cutoff frequency, in the unit of ``freq`` (> 0): the gain there is ``1/sqrt(2)``.
    order : int
        Filter order ``n`` (cryoSPARC NU refinement uses 8); the roll-off steepens with ``n``.

    Returns
    -------
    array, float
        Gain in (0, 1], same shape, array module and float dtype as ``freq``; overflow-free for
        any ratio ``freq / cutoff``.
    """
    if not cutoff > 0:
        raise ValueError(f"butterworth cutoff must be > 0, got {cutoff}")
    xp = get_array_module(freq)
    freq = xp.asarray(freq)
    if freq.dtype.kind != "f":
        freq = freq.astype(xp.float64)
    r = xp.abs(freq) / freq.dtype.type(cutoff)
    tiny = np.finfo(r.dtype).tiny
    # q = min(r, 1/r)**order <= 1, so nothing overflows: g = 1/sqrt(1+q^2) below the cutoff
    # and g = q/sqrt(1+q^2) = 1/sqrt(1+r^2n) above it.
    q = xp.minimum(r, 1.0 / xp.maximum(r, tiny)) ** order
    g = 1.0 / xp.sqrt(1.0 + q * q)
    return xp.where(r <= 1.0, g, q * g).astype(freq.dtype, copy=False)


def _freq_inv_px(vol):
    xp = get_array_module(vol)
    return fourier.radial_freq_rfft(vol.shape, xp)


def gaussian_lowpass(vol, pixel_size_ang: float, res_ang: float):
    """Gaussian low-pass, gain ``exp(-f**2 / (2 fc**2))`` with ``fc = 1 / res_ang``.

    Parameters
    ----------
    vol : (N, N, N) float array, real space, origin at N//2
    pixel_size_ang : float
        Pixel size (Å).
    res_ang : float
        Resolution (Å) at which the gain is ``exp(-1/2)`` (about 0.61).

    Returns
    -------
    (N, N, N) array, real space, dtype of ``vol``.
    """
    _check_cubic(vol)
    _check_res(res_ang, pixel_size_ang)
    fc = pixel_size_ang / res_ang
    f = _freq_inv_px(vol)
    xp = get_array_module(vol)
    return _apply_gain(vol, xp.exp(-0.5 * (f / fc) ** 2))


def rect_lowpass(vol, pixel_size_ang: float, res_ang: float):
    """Hard low-pass: keep Fourier coefficients with ``|k| <= 1 / res_ang``, zero the rest.

    Parameters
    ----------
    vol : (N, N, N) float array, real space, origin at N//2
    pixel_size_ang : float
        Pixel size (Å).
    res_ang : float
        Cutoff resolution (Å).

    Returns
    -------
    (N, N, N) array, real space, dtype of ``vol``.
    """
    _check_cubic(vol)
    _check_res(res_ang, pixel_size_ang)
    f = _freq_inv_px(vol)
    return _apply_gain(vol, (f <= pixel_size_ang / res_ang).astype(f.dtype))


def lowpass_cosine_gain(
    freq_inv_px,
    box: int,
    pixel_size_ang: float,
    res_ang: float,
    edge_shells: float = 2.0,
):
    """Gain of :func:`lowpass_cosine` at frequencies ``freq_inv_px`` (cycles/px), same shape.

    ``box`` (px) sets the shell width ``1 / box``; ``res_ang`` is the cutoff (Å).
    """
    xp = get_array_module(freq_inv_px)
    fc = pixel_size_ang / res_ang
    half = 0.5 * edge_shells / box
    if half <= 0:
        return (freq_inv_px <= fc).astype(freq_inv_px.dtype)
    t = xp.clip((freq_inv_px - (fc - half)) / (2.0 * half), 0.0, 1.0)
    return (0.5 + 0.5 * xp.cos(np.pi * t)).astype(freq_inv_px.dtype, copy=False)


def lowpass_cosine(
    vol, pixel_size_ang: float, res_ang: float, edge_shells: float = 2.0
):
    """Low-pass with a raised-cosine edge ``edge_shells`` shells wide, centred on the cutoff.

    The gain is 1 for ``f <= fc - w/2``, ``0.5 + 0.5 cos(pi (f - fc + w/2) / w)`` inside the edge
    and exactly 0 for ``f >= fc + w/2``, with ``fc = pixel_size_ang / res_ang`` and
    ``w = edge_shells / N`` (cycles/px); the gain at the cutoff is 0.5 (RELION post-processing
    uses a 2-shell edge).

    Parameters
    ----------
    vol : (N, N, N) float array, real space, origin at N//2
    pixel_size_ang : float
        Pixel size (Å).
    res_ang : float
        Cutoff resolution (Å).
    edge_shells : float
        Width of the cosine edge, in Fourier shells (0 gives a hard cutoff).

    Returns
    -------
    (N, N, N) array, real space, dtype of ``vol``.
    """
    _check_cubic(vol)
    _check_res(res_ang, pixel_size_ang)
    f = _freq_inv_px(vol)
    return _apply_gain(
        vol, lowpass_cosine_gain(f, vol.shape[0], pixel_size_ang, res_ang, edge_shells)
    )


def fsc_weighting(fsc, zero_after_below: float | None = None):
    """Per-shell weight ``Cref = sqrt(2 FSC / (1 + FSC))`` (Rosenthal & Henderson 2003), in [0, 1].

    Parameters
    ----------
    fsc : (n_shells,) array_like
        Half-map FSC per Fourier shell (shell 0 first).
    zero_after_below : float, optional
        If given, every shell from the first shell ``s >= 1`` with ``FSC < zero_after_below``
        on gets weight 0 (RELION post-processing uses 1e-4), so spurious positive FSC values
        beyond the resolution limit do not come back.

    Returns
    -------
    (n_shells,) float64 numpy array
        ``0`` where ``FSC <= 0``, ``1`` where ``FSC >= 1``.
    """
    f = np.clip(np.asarray(asnumpy(fsc), dtype=np.float64), 0.0, 1.0)
    w = np.sqrt(2.0 * f / (1.0 + f))
    if zero_after_below is not None:
        below = np.flatnonzero(f[1:] < zero_after_below)
        if below.size:
            w[1 + below[0] :] = 0.0
    return w


def apply_radial_filter(vol, filter_per_shell, fill_value: float = 0.0):
    """Multiply the Fourier transform of ``vol`` by a gain that depends only on the shell.

    Parameters
    ----------
    vol : (N, N, N) float array, real space, origin at N//2
    filter_per_shell : (n_shells,) array_like, float
        Gain of shells ``0 .. n_shells - 1`` (shell = ``round(|k| N)``); usually
        ``n_shells = N//2 + 1`` as for an FSC curve.
    fill_value : float
        Gain of the shells ``>= n_shells`` (the corners of the Fourier cube beyond Nyquist
        when ``n_shells = N//2 + 1``).

    Returns
    -------
    (N, N, N) array, real space, dtype of ``vol``.
    """
    _check_cubic(vol)
    gain = _per_shell_gain(
        vol.shape, filter_per_shell, fill_value, get_array_module(vol)
    )
    return _apply_gain(vol, gain.astype(_real_dtype(vol), copy=False))


def _per_shell_gain(shape, values, fill_value, xp):
    """Gain on the rfft grid of ``shape`` from per-shell ``values``; ``fill_value`` beyond them."""
    g = np.asarray(asnumpy(values), dtype=np.float64).ravel()
    shells = fourier.shell_index_rfft(shape, xp)
    n_max = int(asnumpy(shells.max())) + 1
    table = np.full(max(n_max, g.size), fill_value, dtype=np.float64)
    table[: g.size] = g
    return xp.asarray(table)[shells]


def _shell_mean_amplitude(ft, shells, weights, n_shells):
    xp = get_array_module(ft)
    s = shells.ravel()
    w = xp.broadcast_to(weights, ft.shape).ravel().astype(xp.float64)
    keep = s < n_shells
    amp = xp.abs(ft).ravel().astype(xp.float64)
    num = xp.bincount(s[keep], weights=(amp * w)[keep], minlength=n_shells)
    den = xp.bincount(s[keep], weights=w[keep], minlength=n_shells)
    return asnumpy(num), asnumpy(den)


def guinier_bfactor(
    vol, pixel_size_ang: float, highres_ang: float, lowres_ang: float = 10.0
):
    """Sharpening B-factor from a Guinier fit: ``4 * slope`` of ``ln <|F|>_shell`` vs ``s**2``.

    Fits a straight line, unweighted least squares, to ``ln`` of the mean Fourier amplitude of
    each shell against ``s**2 = 1/d**2`` (Å⁻²) over the shells with ``highres_ang <= d <=
    lowres_ang``. A map whose amplitudes fall as ``exp(-B s**2 / 4)`` gives ``-B``: the value to
    pass to :func:`sharpen` (negative for a decaying map, as in RELION post-processing).

    Parameters
    ----------
    vol : (N, N, N) float array, real space, origin at N//2
    pixel_size_ang : float
        Pixel size (Å).
    highres_ang : float
        Highest resolution (Å) of the fit, e.g. the FSC resolution; clipped to Nyquist.
    lowres_ang : float
        Lowest resolution (Å) of the fit (RELION: 10 Å).

    Returns
    -------
    float
        ``4 * slope`` in Å².

    Raises
    ------
    InputError
        If fewer than 3 shells fall in the fitting range.
    """
    _check_cubic(vol)
    _check_res(highres_ang, pixel_size_ang, "highres_ang")
    n = vol.shape[0]
    xp = get_array_module(vol)
    ft = fourier.rfftn_c(vol)
    shells = fourier.shell_index_rfft(vol.shape, xp)
    weights = fourier.rfft_hermitian_weights(vol.shape, xp)
    n_shells = n // 2 + 1
    num, den = _shell_mean_amplitude(ft, shells, weights, n_shells)
    s_idx = np.arange(n_shells)
    with np.errstate(divide="ignore"):
        d_ang = n * pixel_size_ang / s_idx
    use = (
        (s_idx >= 1)
        & (d_ang >= highres_ang)
        & (d_ang <= lowres_ang)
        & (num > 0)
        & (den > 0)
    )
    if use.sum() < 3:
        raise InputError(
            f"Guinier fit needs >= 3 Fourier shells between {lowres_ang} Å and {highres_ang} Å; "
            f"a box of {n} px at {pixel_size_ang} Å/px has {int(use.sum())}"
        )
    s2 = (s_idx[use] / (n * pixel_size_ang)) ** 2
    ln_amp = np.log(num[use] / den[use])
    slope = np.polyfit(s2, ln_amp, 1)[0]
    return float(4.0 * slope)


def sharpen(
    vol,
    pixel_size_ang: float,
    bfactor_ang2: float,
    fsc=None,
    res_ang: float | None = None,
):
    """Sharpen a map: FSC weighting, B-factor ``F <- F exp(-B s**2 / 4)``, cosine low-pass.

    The steps follow RELION post-processing: optional ``Cref`` weighting of each shell by
    :func:`fsc_weighting` (zeroed after the first shell with FSC < 1e-4), the B-factor applied
    up to Nyquist, and an optional low-pass at ``res_ang`` with a 2-shell raised-cosine edge.

    Parameters
    ----------
    vol : (N, N, N) float array, real space, origin at N//2
        Full map (e.g. the average of the two half-maps).
    pixel_size_ang : float
        Pixel size (Å).
    bfactor_ang2 : float
        B-factor (Å²); negative values sharpen (boost high frequencies).
    fsc : (N//2 + 1,) array_like, optional
        Half-map FSC per shell (ideally mask-corrected); None skips the weighting.
    res_ang : float, optional
        Low-pass resolution (Å); None skips the low-pass.

    Returns
    -------
    (N, N, N) array, real space, dtype of ``vol``.
    """
    _check_cubic(vol)
    if not pixel_size_ang > 0:
        raise InputError(f"pixel_size_ang must be > 0 Å, got {pixel_size_ang}")
    xp = get_array_module(vol)
    n = vol.shape[0]
    f = _freq_inv_px(vol).astype(xp.float64)
    s2 = (f / pixel_size_ang) ** 2
    gain = xp.exp(-0.25 * bfactor_ang2 * s2)
    if fsc is not None:
        w = fsc_weighting(fsc, zero_after_below=1e-4)
        gain = gain * _per_shell_gain(vol.shape, w, 0.0, xp)
    if res_ang is not None:
        _check_res(res_ang, pixel_size_ang)
        gain = gain * lowpass_cosine_gain(f, n, pixel_size_ang, res_ang, 2.0)
    return _apply_gain(vol, gain.astype(_real_dtype(vol)))


def auto_sharpen(
    vol, pixel_size_ang: float, fsc, res_ang: float, lowres_ang: float = 10.0
):
    """RELION-style automatic sharpening: fit B on the FSC-weighted map, then :func:`sharpen`.

    Parameters
    ----------
    vol : (N, N, N) float array, real space, origin at N//2
    pixel_size_ang : float
        Pixel size (Å).
    fsc : (N//2 + 1,) array_like
        Half-map FSC per shell (ideally mask-corrected).
    res_ang : float
        FSC resolution (Å): high end of the Guinier fit and low-pass cutoff.
    lowres_ang : float
        Low end (Å) of the Guinier fit.

    Returns
    -------
    sharpened : (N, N, N) array, real space, dtype of ``vol``
    bfactor_ang2 : float
        The fitted (negative for a decaying map) B-factor that was applied.
    """
    weighted = apply_radial_filter(vol, fsc_weighting(fsc, zero_after_below=1e-4))
    b = guinier_bfactor(
        weighted, pixel_size_ang, highres_ang=res_ang, lowres_ang=lowres_ang
    )
    return sharpen(vol, pixel_size_ang, b, fsc=fsc, res_ang=res_ang), b
