"""Band-wise local FSC machinery of :mod:`.locres`: frequency bands, windows and FFT-based local sums;
and :func:`windowed_fsc_resolution`, the slow windowed-FSC reference the fast method is checked against.

Fourier shells are grouped into soft bands (geometric centres, raised-cosine overlaps adding up to 1).
For each band both half-maps are band-passed and the windowed sums of their products are computed by
FFT convolution with a unit-sum Gaussian, on the smallest grid that holds the band's windowed
spectrum without aliasing; the local FSC of the band follows. The method, window sizes and noise
levels are described in :mod:`.locres`.
"""

from __future__ import annotations

import numpy as np

from . import fourier
from .backend import asnumpy, get_array_module
from .errors import InputError

# ----------------------------------------------------------------------------------------------
# bands and windows


def band_centres_shells(box: int, n_bands: int = 24, lowest_shell: float = 3.0):
    """Centres of the frequency bands, in shells (``|k| N``), from ``lowest_shell`` to ``N/2``.

    The steps grow geometrically, ``c_{i+1} = c_i + max(1, (r - 1) c_i)`` (at least one shell),
    with the ratio ``r`` solved so that the last centre is Nyquist, ``N/2``. When the box is too
    small for ``n_bands`` one-shell steps, fewer bands are returned (one per shell).

    Parameters
    ----------
    box : int
        Box size ``N`` (px).
    n_bands : int
        Requested number of bands (>= 2).
    lowest_shell : float
        Centre of the first band, in shells (its resolution ``N / lowest_shell`` px is the
        coarsest value the map can hold).

    Returns
    -------
    (B,) float64 numpy array, increasing, last value ``N / 2``.
    """
    top = box / 2.0
    max_bands = int(np.floor(top - lowest_shell)) + 1
    n = max(2, min(int(n_bands), max_bands))

    def centres(r):
        c = [float(lowest_shell)]
        for _ in range(n - 1):
            c.append(c[-1] + max(1.0, (r - 1.0) * c[-1]))
        return np.array(c)

    lo, hi = 1.0, 2.0
    while centres(hi)[-1] < top:
        hi *= 2.0
    if centres(lo)[-1] >= top:  # one-shell steps already reach Nyquist
        c = centres(lo)
    else:
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if centres(mid)[-1] < top:
                lo = mid
            else:
                hi = mid
        c = centres(hi)
    c[-1] = top
    return c


def band_gains(shells, centres, b: int):
    """Gain of band ``b`` at continuous shell positions ``shells`` (``|k| N``), same shape.

    Adjacent bands overlap with raised-cosine (``cos²``/``sin²``) ramps between their centres, so
    the gains of all bands add up to 1 on ``0.5 <= |k| N <= N/2``: band 0 is flat from shell 0.5
    (the mean, shell 0, is excluded) to ``c_0``, the last band flat from ``c_{B-1}`` to Nyquist, and
    the corners of the Fourier cube beyond Nyquist get 0, as in the FSC.
    """
    xp = get_array_module(shells)
    c = centres
    g = xp.zeros(shells.shape, dtype=xp.float32)
    if b > 0:
        t = xp.clip((shells - c[b - 1]) / (c[b] - c[b - 1]), 0.0, 1.0)
        rise = xp.sin(0.5 * np.pi * t) ** 2
        g = xp.where((shells > c[b - 1]) & (shells <= c[b]), rise, g)
    else:
        g = xp.where((shells >= 0.5) & (shells <= c[0]), 1.0, g)
    if b < len(c) - 1:
        t = xp.clip((shells - c[b]) / (c[b + 1] - c[b]), 0.0, 1.0)
        fall = xp.cos(0.5 * np.pi * t) ** 2
        g = xp.where((shells > c[b]) & (shells < c[b + 1]), fall, g)
    return g.astype(xp.float32)


def window_sigmas_px(box, centres, window_factor, min_window_px):
    """Gaussian σ (px) per band: radius ``2σ = window_factor × N / c_b``, floored and capped."""
    radius = np.clip(window_factor * box / np.asarray(centres), min_window_px, box / 2.0)
    return radius / 2.0


# ----------------------------------------------------------------------------------------------
# band-limited local FSC on cropped grids


# relative level at which a Gaussian window's transform is treated as 0
WINDOW_TAIL = 1e-6


def window_support_shells(box, sigma_px):
    """Radius (shells of the N box) beyond which ``exp(-2 π² σ² q²) < WINDOW_TAIL``."""
    return np.sqrt(np.log(1.0 / WINDOW_TAIL) / (2.0 * np.pi**2)) / sigma_px * box


def even_ceil(x):
    return int(2 * np.ceil(x / 2.0))


def resize_spectrum(f, m):
    """Crop or zero-pad an rfft-layout spectrum of an ``(n, n, n)`` box to an ``(m, m, m)`` box.

    The frequencies both boxes hold are copied (same integer frequency index); the rest is 0.
    Callers make sure the spectrum is negligible from ``min(n, m) / 2`` shells on, so the
    ambiguous Nyquist planes of even sizes do not matter.
    """
    xp = get_array_module(f)
    n = f.shape[0]
    if m == n:
        return f
    k = min(n, m)
    freqs = np.fft.fftfreq(k, 1.0 / k).astype(np.int64)
    src = (freqs % n, freqs % n, np.arange(k // 2 + 1))
    dst = (freqs % m, freqs % m, np.arange(k // 2 + 1))
    if m < n:
        return f[xp.ix_(*(xp.asarray(i) for i in src))]
    out = xp.zeros((m, m, m // 2 + 1), dtype=f.dtype)
    out[xp.ix_(*(xp.asarray(i) for i in dst))] = f
    return out


def band_local_fsc(f1, f2, box, centres, b, sigma_px, m_out):
    """Local FSC of band ``b`` on the ``(m_out,)*3`` grid.

    The band-passed halves are computed on the smallest grid ``M`` that holds, without aliasing
    inside the window's support, the products of two maps band-limited at ``c_{b+1}`` shells
    (``M >= 2 c_{b+1} + window support``): the windowed sums there equal those of the full grid
    up to a common factor, which the FSC ratio cancels.

    Parameters
    ----------
    f1, f2 : (N, N, N//2 + 1) complex arrays
        ``fourier.rfftn_c`` of the half-maps.
    box : int
        ``N``.
    centres : (B,) array
        Band centres (shells).
    b : int
        Band index.
    sigma_px : float
        Gaussian window σ (px of the N box).
    m_out : int
        Output grid size.

    Returns
    -------
    (m_out, m_out, m_out) float32 array, real space, origin at m_out//2
    """
    xp = get_array_module(f1)
    support = window_support_shells(box, sigma_px)
    top = centres[b + 1] if b + 1 < len(centres) else box / 2.0
    m = min(box, even_ceil(2 * top + support + 2))
    grid = (m,) * 3
    freq = fourier.radial_freq_rfft(grid, xp) * np.float32(m / box)  # cycles per N-box px
    g = band_gains(freq * box, centres, b)
    window_ft = xp.exp(np.float32(-2.0 * np.pi**2 * sigma_px**2) * freq * freq)
    b1 = fourier.irfftn_c(resize_spectrum(f1, m) * g, grid)
    b2 = fourier.irfftn_c(resize_spectrum(f2, m) * g, grid)
    del freq, g

    def smooth(x):
        return fourier.irfftn_c(resize_spectrum(fourier.rfftn_c(x) * window_ft, m_out), (m_out,) * 3)

    s11 = smooth(b1 * b1)
    s22 = smooth(b2 * b2)
    s12 = smooth(b1 * b2)
    del b1, b2
    den2 = xp.maximum(s11, 0) * xp.maximum(s22, 0)
    # scale-free floor: where a half has (almost) no power in the band, the FSC is 0
    floor = np.float32(1e-10) * xp.mean(s11) * xp.mean(s22)
    ok = den2 > floor
    fsc = xp.where(ok, s12 / xp.sqrt(xp.where(ok, den2, 1)), 0).astype(xp.float32)
    return fsc


def band_noise_std(box: int, centres, b: int, sigma_px: float) -> float:
    """Standard deviation of the local FSC of band ``b`` between independent white-noise halves.

    For stationary noise halves band-passed by ``g_b``, with autocorrelation ``C(r)`` (the 3-D
    inverse transform of ``g_b²``, a radial function), and the product window ``G`` (unit-sum
    Gaussian of σ ``sigma_px``) whose autocorrelation ``A`` is a unit-sum Gaussian of σ ``√2 σ``:

        var(FSC_b) ≈ var(Σ G h1 h2) / E(Σ G h1²)² = ∫ A(r) C(r)² d³r / C(0)²

    (to first order in the fluctuations of the denominators). ``C(r) = ∫ 4π k² g_b(k)²
    sinc(2 k r) dk`` and the outer integral are evaluated on 1-D radial grids, in the continuum
    (no periodic wrap: accurate for windows well inside the box). Log-spaced bands with windows
    proportional to the wavelength have the same value in every band.

    Parameters
    ----------
    box : int
        ``N``.
    centres : (B,) array
        Band centres (shells).
    b : int
        Band index.
    sigma_px : float
        Window σ (px).

    Returns
    -------
    float
    """
    lo = centres[b - 1] if b > 0 else 0.5
    hi = centres[b + 1] if b + 1 < len(centres) else box / 2.0
    dk = (hi - lo) / 400.0
    shells = lo + dk * (np.arange(400) + 0.5)
    k = shells / box  # cycles/px
    wk = 4.0 * np.pi * k**2 * band_gains(shells, centres, b).astype(np.float64) ** 2 * (dk / box)
    sigma_a = np.sqrt(2.0) * sigma_px
    dr = box / hi / 20.0  # 20 samples per shortest wavelength
    r = dr * (np.arange(int(np.ceil(6.0 * sigma_a / dr))) + 0.5)
    c_r = np.sinc(2.0 * r[:, None] * k[None, :]) @ wk
    a_r = (2.0 * np.pi * sigma_a**2) ** -1.5 * np.exp(-0.5 * (r / sigma_a) ** 2)
    var = float(np.sum(a_r * c_r**2 * 4.0 * np.pi * r**2) * dr / wk.sum() ** 2)
    return float(np.sqrt(var))


def upsample_periodic_linear(a, n):
    """Periodic linear interpolation of an ``(m, m, m)`` grid to ``(n, n, n)``, origins aligned.

    Point ``j`` of the coarse grid sits at ``n//2 + (j - m//2) n / m`` on the fine grid.
    """
    xp = get_array_module(a)
    m = a.shape[0]
    if m == n:
        return a
    u = m // 2 + (np.arange(n) - n // 2) * (m / n)
    i0 = np.floor(u).astype(np.int64)
    w1 = (u - i0).astype(np.float32)
    i0 %= m
    i1 = (i0 + 1) % m
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = n
        w = xp.asarray(w1).reshape(shape)
        a = xp.take(a, xp.asarray(i0), axis=axis) * (1 - w) + xp.take(a, xp.asarray(i1), axis=axis) * w
    return a.astype(xp.float32)


# ----------------------------------------------------------------------------------------------
# reference: windowed FSC at sample points (Blocres-like), for validation and spot checks


def windowed_fsc_resolution(
    half1,
    half2,
    points_px,
    pixel_size_ang: float,
    window_radius_px: float,
    threshold: float = 0.143,
    edge_px: float | None = None,
):
    """Local resolution at a few points from the FSC of soft-sphere-windowed boxes (slow reference).

    At each point, a cube of side ``2 (window_radius_px + edge_px)`` (rounded up to even) is cut out
    of both half-maps (periodically wrapped), multiplied by a sphere of radius
    ``window_radius_px`` with a raised-cosine edge ``edge_px`` wide, and the FSC of the two cubes
    (integer shells of the cube) gives the resolution at ``threshold`` through
    :func:`nonuniform.engine.fsc.resolution_at`. One window for every shell, as Blocres.

    Parameters
    ----------
    half1, half2 : (N, N, N) float arrays, real space
    points_px : (n, 3) int array_like
        Voxel indices ``(z, y, x)``.
    pixel_size_ang : float
        Voxel size (Å).
    window_radius_px : float
        Radius of the flat part of the spherical window (px).
    threshold : float
        FSC threshold.
    edge_px : float, optional
        Width of the cosine edge (px); default ``window_radius_px``.

    Returns
    -------
    (n,) float64 numpy array
        Resolution (Å) at each point.
    """
    from .fsc import fsc_curve, resolution_at
    from .masks import soft_sphere

    h1 = np.asarray(asnumpy(half1), dtype=np.float32)
    h2 = np.asarray(asnumpy(half2), dtype=np.float32)
    if h1.shape != h2.shape:
        raise InputError(f"half2 has shape {h2.shape} but half1 has {h1.shape}")
    edge = window_radius_px if edge_px is None else edge_px
    side = int(2 * np.ceil(window_radius_px + edge))
    win = soft_sphere(side, window_radius_px, edge)
    n = h1.shape[0]
    out = []
    for p in np.atleast_2d(np.asarray(points_px, dtype=np.int64)):
        idx = [(np.arange(side) - side // 2 + int(q)) % n for q in p]
        sub = np.ix_(*idx)
        fsc = fsc_curve(h1[sub] * win, h2[sub] * win)
        out.append(resolution_at(fsc, side, pixel_size_ang, threshold))
    return np.array(out)
