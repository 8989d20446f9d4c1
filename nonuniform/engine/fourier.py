"""The engine's only FFT caller: centred transforms, frequency grids and shells.

Real-space arrays have their origin at index ``N//2`` along every axis (even and odd ``N``); Fourier
arrays use the standard (uncentred) FFT layout, with the half axis last for real transforms.
scipy.fft with ``workers`` on the host, cupyx.scipy.fft on a GPU (chosen by the data).
"""

import os

import numpy as np
import scipy.fft as sfft

from .backend import get_array_module

_WORKERS = max(1, int(os.environ.get("NONUNIFORM_FFT_WORKERS", os.cpu_count() or 1)))


def set_workers(n):
    """Set the number of threads scipy.fft uses (``--threads`` of the CLI)."""
    global _WORKERS
    _WORKERS = max(1, int(n))


def _fft_module(x):
    xp = get_array_module(x)
    if xp is np:
        return sfft, {"workers": _WORKERS}
    import cupyx.scipy.fft as cfft

    return cfft, {}


def fftn_c(x):
    """Full complex FFT of a real-space array with origin at ``N//2``, zero frequency at ``N//2`` too."""
    mod, kw = _fft_module(x)
    return mod.fftshift(mod.fftn(mod.ifftshift(x), **kw))


def ifftn_c(f):
    """Inverse of :func:`fftn_c` (complex result)."""
    mod, kw = _fft_module(f)
    return mod.fftshift(mod.ifftn(mod.ifftshift(f), **kw))


def rfftn_c(x, axes=None):
    """Real FFT of a real-space array whose origin is at index ``N//2``.

    Parameters
    ----------
    x : ndarray, real space
        Real array; the transform runs over ``axes`` (default: all).
    axes : tuple of int, optional

    Returns
    -------
    ndarray, complex
        Half spectrum (last transformed axis has ``N//2 + 1`` entries), zero frequency at index 0.
    """
    mod, kw = _fft_module(x)
    axes = tuple(range(x.ndim)) if axes is None else tuple(axes)
    return mod.rfftn(mod.ifftshift(x, axes=axes), axes=axes, **kw)


def irfftn_c(f, shape, axes=None):
    """Inverse of :func:`rfftn_c`; ``shape`` is the real-space shape of the transformed axes."""
    mod, kw = _fft_module(f)
    axes = tuple(range(len(shape))) if axes is None else tuple(axes)
    if len(axes) != len(shape):
        axes = tuple(range(f.ndim - len(shape), f.ndim))
    x = mod.irfftn(f, s=tuple(shape), axes=axes, **kw)
    return mod.fftshift(x, axes=axes)


def rfft2_c(images):
    """Centred 2-D real FFT over the last two axes of an image stack ``(..., N, N)``."""
    return rfftn_c(images, axes=(-2, -1))


def irfft2_c(images_ft, box):
    """Inverse of :func:`rfft2_c`; ``box`` is the real-space image size ``N``."""
    return irfftn_c(images_ft, (box, box), axes=(-2, -1))


def freq_axes_rfft(shape, xp=np):
    """Frequencies (cycles/px) along each axis of the rfft layout, broadcastable to the spectrum shape."""
    nd = len(shape)
    out = []
    for i, n in enumerate(shape):
        f = xp.fft.rfftfreq(n) if i == nd - 1 else xp.fft.fftfreq(n)
        sl = [None] * nd
        sl[i] = slice(None)
        out.append(f[tuple(sl)].astype(xp.float32))
    return out


def radial_freq_rfft(shape, xp=np):
    """|k| in cycles/px on the rfft grid of a real array of ``shape`` (square/cubic boxes assumed)."""
    k2 = 0
    for f in freq_axes_rfft(shape, xp):
        k2 = k2 + f * f
    return xp.sqrt(k2)


def shell_index_rfft(shape, xp=np):
    """Integer Fourier shell (round(|k|·N)) of every rfft coefficient; ``N = shape[0]``."""
    return xp.rint(radial_freq_rfft(shape, xp) * shape[0]).astype(xp.int32)


def rfft_hermitian_weights(shape, xp=np):
    """Multiplicity of each rfft coefficient in the full spectrum (1 or 2), for Parseval sums."""
    n = shape[-1]
    w = xp.full(n // 2 + 1, 2.0, dtype=xp.float32)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    return w


def resample_map(vol, apix_in, box_out, apix_out):
    """Fourier-resample ``vol`` (N³ at ``apix_in``) onto a ``box_out``³ grid at ``apix_out`` Å/px."""
    n = vol.shape[0]
    # Rescale by Fourier cropping/padding to the target sampling, then crop/pad in real space.
    m = int(round(n * apix_in / apix_out))
    ft = fftn_c(vol)
    out = np.zeros((m, m, m), np.complex128)
    c_in, c_out = n // 2, m // 2
    h = min(n, m) // 2
    sl_in = slice(c_in - h, c_in - h + min(n, m))
    sl_out = slice(c_out - h, c_out - h + min(n, m))
    out[sl_out, sl_out, sl_out] = ft[sl_in, sl_in, sl_in]
    # Same real-space values: the inverse FFT divides by m³ where the forward multiplied by n³.
    res = np.real(ifftn_c(out)) * (m / n) ** 3
    res = res.astype(np.float32)
    final = np.zeros((box_out,) * 3, np.float32)
    h = min(m, box_out)
    a, b = m // 2 - h // 2, box_out // 2 - h // 2
    final[b:b + h, b:b + h, b:b + h] = res[a:a + h, a:a + h, a:a + h]
    return final
