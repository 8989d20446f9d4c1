"""Fourier shell correlation, resolution estimates, and the phase-randomization mask correction.

Shells: the rfft coefficients of a cubic ``(N, N, N)`` volume (origin at ``N//2``) are binned
by ``round(|k| N)`` (``fourier.shell_index_rfft``); FSC curves have ``N//2 + 1`` entries, shells
``0 .. N//2``, and shell ``s`` has resolution ``N * pixel_size_ang / s``. Sums run over the full
spectrum (the half spectrum with Hermitian multiplicities), in float64.

    FSC(s) = Re sum F1 F2* / sqrt(sum |F1|^2 sum |F2|^2)

References
----------
Chen, S. et al. (2013) High-resolution noise substitution to measure overfitting and validate
resolution in 3D structure determination by single particle electron cryomicroscopy.
Ultramicroscopy 135, 24-35.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np

from . import fourier
from .backend import asnumpy, get_array_module
from .io import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "FscResult",
    "corrected_fsc",
    "fsc_curve",
    "phase_randomize",
    "read_fsc_csv",
    "resolution_at",
    "shell_resolution_ang",
    "write_fsc_csv",
]


def _check_pair(v1, v2, mask=None):
    if v1.ndim != 3 or len(set(v1.shape)) != 1:
        raise ValueError(f"FSC needs cubic (N, N, N) volumes, got shape {v1.shape}")
    if v2.shape != v1.shape:
        raise ValueError(f"FSC volumes differ in shape: {v1.shape} vs {v2.shape}")
    if mask is not None and mask.shape != v1.shape:
        raise ValueError(
            f"FSC mask shape {mask.shape} differs from the volumes' {v1.shape}"
        )


def fsc_curve(v1, v2, mask=None):
    """Fourier shell correlation between two volumes.

    Parameters
    ----------
    v1, v2 : (N, N, N) float arrays, real space, origin at N//2
        Typically the two independent half-maps.
    mask : (N, N, N) float array, real space, optional
        Multiplied into both volumes before the transform (values in [0, 1]).

    Returns
    -------
    (N//2 + 1,) float64 numpy array
        FSC of shells ``0 .. N//2``; 0 in a shell where either volume has no power.
    """
    _check_pair(v1, v2, mask)
    xp = get_array_module(v1, v2, mask)
    if mask is not None:
        v1 = v1 * mask
        v2 = v2 * mask
    f1 = fourier.rfftn_c(v1)
    f2 = fourier.rfftn_c(v2)
    n = v1.shape[0]
    n_shells = n // 2 + 1
    shells = fourier.shell_index_rfft(v1.shape, xp).ravel()
    w = fourier.rfft_hermitian_weights(v1.shape, xp).astype(xp.float64)

    def shell_sum(values):
        # every shell is summed (corners beyond N//2 too), then cut to 0 .. N//2
        return xp.bincount(shells, weights=(w * values).ravel())[:n_shells]

    cross = shell_sum(f1.real * f2.real + f1.imag * f2.imag)
    p1 = shell_sum(f1.real**2 + f1.imag**2)
    p2 = shell_sum(f2.real**2 + f2.imag**2)
    cross, p1, p2 = (asnumpy(a).astype(np.float64) for a in (cross, p1, p2))
    den = np.sqrt(p1 * p2)
    out = np.zeros(n_shells)
    ok = den > 0
    out[ok] = cross[ok] / den[ok]
    return out


def shell_resolution_ang(box: int, pixel_size_ang: float):
    """Resolution (Å) of shells ``0 .. N//2``: ``box * pixel_size_ang / s`` (``inf`` for s = 0).

    Returns
    -------
    (N//2 + 1,) float64 numpy array.
    """
    s = np.arange(box // 2 + 1, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return box * pixel_size_ang / s


# A crossing counts when the FSC stays below the threshold for this many consecutive shells: one
# noisy shell dipping below and recovering (seen in the last iteration of the uniform demo run:
# 4.84 -> 4.95 -> 5.86 Å from one shell at ~0.17 1/Å) does not end the curve.
MIN_SHELLS_BELOW = 2

CROSSING_RULE = (f"where the FSC falls below the threshold and stays below for at least {MIN_SHELLS_BELOW} "
                 f"shells (a single-shell dip is passed over)")


def resolution_at(
    fsc, box: int, pixel_size_ang: float, threshold: float = 0.143, min_shells_below: int = MIN_SHELLS_BELOW
) -> float:
    """Resolution (Å) where an FSC curve drops below ``threshold`` for good.

    The search starts at shell 1 (shell 0 is the mean). The crossing is the first shell ``i``
    with ``fsc[i .. i + min_shells_below - 1] < threshold`` (fewer shells at the end of the curve
    suffice): a dip of fewer shells that recovers is noise and is passed over. Between ``i - 1``
    (at or above the threshold) and ``i`` the crossing is interpolated linearly in shell number,
    ``s* = i - 1 + (fsc[i-1] - t) / (fsc[i-1] - fsc[i])``, and the result is
    ``box * pixel_size_ang / s*``. ``min_shells_below=1`` gives RELION's first crossing.

    Parameters
    ----------
    fsc : (N//2 + 1,) array_like
        FSC per shell.
    box : int
        Box size ``N`` (px).
    pixel_size_ang : float
        Pixel size (Å).
    threshold : float
        0.143 for half-map FSCs (Rosenthal & Henderson 2003), 0.5 for model-map.
    min_shells_below : int
        Consecutive shells below the threshold that make a crossing (default 2).

    Returns
    -------
    float
        Resolution in Å: ``box * pixel_size_ang`` (shell 1) when the curve is below the
        threshold from shell 1 on, and the resolution of the last shell when it never drops
        below it.
    """
    f = np.asarray(asnumpy(fsc), dtype=np.float64)
    if f.size < 2:
        raise ValueError(f"FSC curve needs >= 2 shells, got {f.size}")
    below = f[1:] < threshold
    # sustained[j]: shells j+1 .. j+min_shells_below (those that exist) are all below
    sustained = below.copy()
    for k in range(1, max(int(min_shells_below), 1)):
        sustained[:-k] &= below[k:]
    first = np.flatnonzero(sustained)
    if first.size == 0:
        s_star = float(f.size - 1)
    elif first[0] == 0:
        s_star = 1.0
    else:
        i = int(first[0]) + 1
        s_star = (i - 1) + (f[i - 1] - threshold) / (f[i - 1] - f[i])
    return float(box * pixel_size_ang / s_star)


def phase_randomize(vol, from_shell: int, rng: np.random.Generator):
    """Replace the Fourier phases of shells ``>= from_shell`` by random phases, keep amplitudes.

    The random phases are those of the transform of real white Gaussian noise, so they are
    uniform, independent between ``k`` and ``-k`` pairs, and Hermitian-consistent: the result is
    real and every Fourier amplitude is kept exactly (up to rounding).

    Parameters
    ----------
    vol : (N, N, N) float array, real space, origin at N//2
    from_shell : int
        First randomized shell (``round(|k| N)``).
    rng : numpy.random.Generator
        Source of the noise.

    Returns
    -------
    (N, N, N) array, real space, dtype of ``vol``.
    """
    xp = get_array_module(vol)
    ft = fourier.rfftn_c(vol)
    noise = xp.asarray(rng.standard_normal(vol.shape).astype(vol.dtype, copy=False))
    ph = fourier.rfftn_c(noise)
    amp = xp.abs(ph)
    ph = xp.where(amp > 0, ph / xp.where(amp > 0, amp, 1), 1)
    sel = fourier.shell_index_rfft(vol.shape, xp) >= from_shell
    ft = xp.where(sel, ft * ph, ft)
    return fourier.irfftn_c(ft, vol.shape).astype(vol.dtype, copy=False)


@dataclasses.dataclass(frozen=True)
class FscResult:
    """FSC curves (shells ``0 .. N//2``) and resolutions (Å) from :func:`corrected_fsc`.

    Attributes
    ----------
    box, pixel_size_ang : int, float
        Box size (px) and pixel size (Å) of the half-maps.
    unmasked, masked, phase_randomized, corrected : (N//2 + 1,) float64 arrays
        FSC without mask, with the mask, of the masked phase-randomized halves, and
        ``(masked - phase_randomized) / (1 - phase_randomized)`` from shell
        ``randomize_from_shell + 2`` on (the masked FSC below it).
    randomize_from_shell : int or None
        First phase-randomized shell; None if the unmasked FSC never drops below the
        randomization threshold (then ``corrected == masked``).
    resolution_unmasked_ang, resolution_masked_ang, resolution_corrected_ang : float
        0.143 resolutions of the curves.
    warnings : tuple of str
        Sanity checks that failed (mask too sharp, unmasked curve better than the corrected).
    """

    box: int
    pixel_size_ang: float
    unmasked: np.ndarray
    masked: np.ndarray
    phase_randomized: np.ndarray
    corrected: np.ndarray
    randomize_from_shell: int | None
    resolution_unmasked_ang: float
    resolution_masked_ang: float
    resolution_corrected_ang: float
    warnings: tuple = ()

    def curves(self) -> dict:
        """The four curves by name, for :func:`write_fsc_csv` and plotting."""
        return {
            "fsc_unmasked": self.unmasked,
            "fsc_masked": self.masked,
            "fsc_phase_randomized": self.phase_randomized,
            "fsc_corrected": self.corrected,
        }

    def resolutions_ang(self) -> dict:
        """The 0.143 resolutions (Å) keyed like :meth:`curves`."""
        return {
            "fsc_unmasked": self.resolution_unmasked_ang,
            "fsc_masked": self.resolution_masked_ang,
            "fsc_corrected": self.resolution_corrected_ang,
        }


def corrected_fsc(
    v1,
    v2,
    mask,
    pixel_size_ang: float,
    rng: np.random.Generator,
    randomize_at_fsc: float = 0.8,
    threshold: float = 0.143,
) -> FscResult:
    """Mask-corrected FSC by high-resolution noise substitution (Chen et al. 2013, as in RELION).

    1. ``unmasked`` and ``masked`` FSC of the half-maps.
    2. ``s_r``: the first shell ``>= 1`` where the unmasked FSC < ``randomize_at_fsc``.
    3. Randomize the phases of both halves (independently) from ``s_r`` on, mask, and compute
       ``phase_randomized``.
    4. ``corrected = (masked - phase_randomized) / (1 - phase_randomized)`` for shells
       ``>= s_r + 2``, ``masked`` below.

    Parameters
    ----------
    v1, v2 : (N, N, N) float arrays, real space, origin at N//2
        Independent half-maps.
    mask : (N, N, N) float array, real space
        Soft solvent mask, values in [0, 1].
    pixel_size_ang : float
        Pixel size (Å).
    rng : numpy.random.Generator
        Source of the random phases.
    randomize_at_fsc : float
        Unmasked FSC below which phases are randomized (RELION ``--randomize_at_fsc``).
    threshold : float
        FSC threshold of the reported resolutions.

    Returns
    -------
    FscResult
    """
    _check_pair(v1, v2, mask)
    n = v1.shape[0]
    unmasked = fsc_curve(v1, v2)
    masked = fsc_curve(v1, v2, mask)
    below = np.flatnonzero(unmasked[1:] < randomize_at_fsc)
    corrected = masked.copy()
    warnings = []
    if below.size:
        s_r = int(below[0]) + 1
        r1 = phase_randomize(v1, s_r, rng)
        r2 = phase_randomize(v2, s_r, rng)
        randomized = fsc_curve(r1, r2, mask)
        start = min(s_r + 2, n // 2 + 1)
        den = 1.0 - randomized[start:]
        safe = np.abs(den) > 1e-6
        corrected[start:] = np.where(
            safe, (masked[start:] - randomized[start:]) / np.where(safe, den, 1.0), 0.0
        )
    else:
        s_r = None
        randomized = masked.copy()
    res = {
        name: resolution_at(c, n, pixel_size_ang, threshold)
        for name, c in (("u", unmasked), ("m", masked), ("c", corrected))
    }
    if s_r is not None:
        shell_at_res = round(n * pixel_size_ang / res["c"])
        if shell_at_res < randomized.size and randomized[shell_at_res] > 0.1:
            warnings.append(
                f"phase-randomized masked FSC is {randomized[shell_at_res]:.2f} > 0.1 at "
                f"{res['c']:.2f} Å: the mask may be too sharp"
            )
    if res["u"] < res["c"]:
        warnings.append(
            f"unmasked FSC ({res['u']:.2f} Å) extends beyond the corrected one "
            f"({res['c']:.2f} Å): check the mask"
        )
    return FscResult(
        box=n,
        pixel_size_ang=float(pixel_size_ang),
        unmasked=unmasked,
        masked=masked,
        phase_randomized=randomized,
        corrected=corrected,
        randomize_from_shell=s_r,
        resolution_unmasked_ang=res["u"],
        resolution_masked_ang=res["m"],
        resolution_corrected_ang=res["c"],
        warnings=tuple(warnings),
    )


def write_fsc_csv(
    path,
    curves: Mapping[str, np.ndarray],
    box: int,
    pixel_size_ang: float,
    metadata: Mapping[str, object] | None = None,
) -> None:
    """Write FSC curves to a CSV file, atomically (temporary file, then ``os.replace``).

    Layout: ``# key=value`` comment lines for ``box``, ``pixel_size_ang`` and ``metadata``
    (e.g. resolutions), then a header ``shell,freq_inv_ang,resolution_ang,<curve names>`` and
    one row per shell ``0 .. N//2``.

    Parameters
    ----------
    path : str or os.PathLike
        Output file.
    curves : mapping of str to (N//2 + 1,) arrays
        Curves by column name (no commas); ``FscResult.curves()`` gives the standard set.
    box : int
        Box size ``N`` (px).
    pixel_size_ang : float
        Pixel size (Å).
    metadata : mapping of str to scalar, optional
        Extra ``key=value`` lines, e.g. ``FscResult.resolutions_ang()``.
    """
    n_shells = box // 2 + 1
    cols = {}
    for name, c in curves.items():
        c = np.asarray(asnumpy(c), dtype=np.float64).ravel()
        if c.size != n_shells or "," in name:
            raise ValueError(
                f"curve {name!r}: need {n_shells} values and no comma in the name"
            )
        cols[name] = c
    shell = np.arange(n_shells)
    lines = [f"# box={box}", f"# pixel_size_ang={pixel_size_ang!r}"]
    lines += [f"# {k}={v}" for k, v in (metadata or {}).items()]
    lines.append(",".join(["shell", "freq_inv_ang", "resolution_ang", *cols]))
    res = shell_resolution_ang(box, pixel_size_ang)
    for s in shell:
        row = [str(s), f"{s / (box * pixel_size_ang):.8g}", f"{res[s]:.6g}"]
        row += [f"{c[s]:.8g}" for c in cols.values()]
        lines.append(",".join(row))
    with atomic_write(path) as tmp, open(tmp, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def read_fsc_csv(path):
    """Read a file from :func:`write_fsc_csv`.

    Returns
    -------
    columns : dict of str to (N//2 + 1,) float64 arrays
        Every column, including ``shell``, ``freq_inv_ang`` and ``resolution_ang``.
    metadata : dict of str to str
        The ``# key=value`` lines (values as text).
    """
    metadata = {}
    with open(path) as fh:
        lines = [ln.strip() for ln in fh if ln.strip()]
    body = []
    for ln in lines:
        if ln.startswith("#"):
            key, _, value = ln[1:].strip().partition("=")
            metadata[key.strip()] = value.strip()
        else:
            body.append(ln.split(","))
    header, rows = body[0], body[1:]
    data = np.array(rows, dtype=np.float64).reshape(len(rows), len(header))
    return {name: data[:, i] for i, name in enumerate(header)}, metadata
