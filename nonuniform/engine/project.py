"""Fourier-slice projection (RELION model): padded 3-D spectrum, trilinear slices, gridding correction.

Image model (pinned against ``relion_project`` in ``tests/test_relion.py``): the Fourier transform of
the projection of the volume seen in pose ``A`` (RELION matrix) at 2-D frequency ``k = (kx, ky)`` is
the volume's 3-D transform at ``A.T @ (kx, ky, 0)``; the particle image is that projection, shifted
by the particle's origin offset and multiplied by its CTF (:mod:`.ctf`).

The 3-D spectrum is oversampled by zero padding (``pad`` = 2 by default) and the volume is divided by
the separable sinc² of the trilinear kernel beforehand, so slices are accurate up to Nyquist.
"""

import numpy as np
from numba import njit, prange

from . import fourier
from .backend import CPU, asnumpy, get_array_module

# ----------------------------------------------------------------------------------------------
# Pixel lists: the rfft-layout image coefficients within a radius, as (ky, kx) integer frequencies.


def image_pixels(box, r_max_px=None):
    """The rfft-layout coefficients of a ``box`` image with ``|k| <= r_max_px``.

    Parameters
    ----------
    box : int
        Image size N.
    r_max_px : float, optional
        Radius in Fourier pixels (default ``N / 2``: up to Nyquist, inclusive, as RELION).

    Returns
    -------
    ky, kx : ndarray, shape (P,), int32
        Signed frequency indices (``kx >= 0``).
    flat : ndarray, shape (P,), int64
        Positions of those coefficients in a flattened ``(N, N//2 + 1)`` rfft array.
    """
    r_max = box / 2 if r_max_px is None else r_max_px
    ky = np.fft.fftfreq(box, 1.0 / box).astype(np.int32)
    kx = np.arange(box // 2 + 1, dtype=np.int32)
    yy, xx = np.meshgrid(ky, kx, indexing="ij")
    sel = (yy * yy + xx * xx) <= r_max * r_max
    # Positive-x coefficients stand for a pair (k, -k); for kx = 0, both ky and -ky are stored.
    flat = np.nonzero(sel.ravel())[0]
    return yy.ravel()[flat], xx.ravel()[flat], flat


def hermitian_pair_weight(kx):
    """Weight 1 for coefficients whose mirror is not stored (kx > 0), 0.5 for the kx = 0 column."""
    return np.where(kx == 0, 0.5, 1.0).astype(np.float32)


def gridding_correction(box, pad):
    """Radial sinc² of the trilinear kernel on a ``box``³ grid padded ``pad`` times, (N, N, N).

    Trilinear interpolation in a spectrum sampled at ``1/(pad N)`` multiplies real space by
    about ``sinc²(|r|/(pad N))`` (exactly the separable product of the three axes' sinc²; RELION
    uses the radial form, which we follow so projections match ``relion_project`` to ~1e-5).
    """
    c = np.arange(box) - box // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2) / float(pad * box)
    return (np.sinc(r) ** 2).astype(np.float32)


def padded_spectrum(volume, pad):
    """Centred-axes half spectrum of ``volume`` zero-padded to ``pad·N``: shape (M, M, M//2+1).

    Axes 0 (z) and 1 (y) are fftshifted so that frequency ``k`` sits at index ``k + M//2``;
    axis 2 (x) holds ``k = 0 .. M//2``. On the device of ``volume`` (numpy or cupy).
    """
    xp = get_array_module(volume)
    n = volume.shape[0]
    m = int(pad * n)
    big = xp.zeros((m, m, m), dtype=xp.float32)
    o = m // 2 - n // 2
    big[o:o + n, o:o + n, o:o + n] = volume
    f = fourier.rfftn_c(big)
    return xp.ascontiguousarray(xp.fft.fftshift(f, axes=(0, 1))).astype(xp.complex64)


@njit(parallel=True, fastmath=True, cache=True)
def _slice_kernel(spec, coords, ky, kx, out):
    """out[i, p] = trilinear sample of spec at coords[i] @ (kx, ky, 0), Hermitian-folded.

    ``spec`` is the float32 (re, im) view of the complex64 spectrum, shape (M, M, M//2+1, 2), and
    ``out`` that of the (n, P) complex64 output: everything stays in float32 (complex arithmetic
    would promote to complex128 and run ~1.5x slower).
    """
    m = spec.shape[0]
    c = m // 2
    mx = spec.shape[2]
    n_img = coords.shape[0]
    n_pix = ky.shape[0]
    one = np.float32(1.0)
    for i in prange(n_img):
        a = coords[i]
        for p in range(n_pix):
            fx = kx[p]
            fy = ky[p]
            x = a[0, 0] * fx + a[0, 1] * fy
            y = a[1, 0] * fx + a[1, 1] * fy
            z = a[2, 0] * fx + a[2, 1] * fy
            sign = one
            if x < 0:
                x, y, z = -x, -y, -z
                sign = -one
            x0 = int(np.floor(x))
            y0 = int(np.floor(y))
            z0 = int(np.floor(z))
            dx = np.float32(x - x0)
            dy = np.float32(y - y0)
            dz = np.float32(z - z0)
            y0 += c
            z0 += c
            if x0 < 0 or x0 + 1 >= mx or y0 < 0 or y0 + 1 >= m or z0 < 0 or z0 + 1 >= m:
                out[i, p, 0] = 0
                out[i, p, 1] = 0
                continue
            for q in range(2):
                v000 = spec[z0, y0, x0, q]
                v001 = spec[z0, y0, x0 + 1, q]
                v010 = spec[z0, y0 + 1, x0, q]
                v011 = spec[z0, y0 + 1, x0 + 1, q]
                v100 = spec[z0 + 1, y0, x0, q]
                v101 = spec[z0 + 1, y0, x0 + 1, q]
                v110 = spec[z0 + 1, y0 + 1, x0, q]
                v111 = spec[z0 + 1, y0 + 1, x0 + 1, q]
                v00 = v000 + dx * (v001 - v000)
                v01 = v010 + dx * (v011 - v010)
                v10 = v100 + dx * (v101 - v100)
                v11 = v110 + dx * (v111 - v110)
                v0 = v00 + dy * (v01 - v00)
                v1 = v10 + dy * (v11 - v10)
                v = v0 + dz * (v1 - v0)
                out[i, p, q] = v if q == 0 else sign * v  # conjugate: flip the imaginary part


def slice_coords(rotations, pad):
    """Per-image maps from 2-D frequency (kx, ky) to padded 3-D grid coordinates: ``pad · A.T``."""
    rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    return np.ascontiguousarray(pad * np.transpose(rot, (0, 2, 1))).astype(np.float32)


class Projector:
    """Projects a volume along RELION poses in Fourier space.

    Parameters
    ----------
    volume : ndarray, shape (N, N, N), real space
        Map with its origin at index ``N//2``.
    pad : int
        Oversampling factor of the 3-D spectrum (RELION's ``--pad``, default 2).
    device : backend.Device, optional
        Where the spectrum lives and slices are computed (default the host); projections are
        returned on it.
    """

    def __init__(self, volume, pad=2, device=CPU):
        volume = asnumpy(volume).astype(np.float32, copy=False)
        if volume.ndim != 3 or len(set(volume.shape)) != 1:
            raise ValueError(f"Projector needs a cubic volume, got shape {volume.shape}")
        self.box = volume.shape[0]
        self.pad = pad
        self.device = device
        pre = volume / gridding_correction(self.box, pad)
        self.spectrum = padded_spectrum(device.asarray(pre), pad)

    def project_pixels(self, rotations, ky, kx):
        """Slice values at the listed image frequencies.

        Parameters
        ----------
        rotations : ndarray, shape (n, 3, 3)
            RELION pose matrices.
        ky, kx : ndarray, shape (P,), int
            Signed frequency indices of the image coefficients (see :func:`image_pixels`).

        Returns
        -------
        ndarray, shape (n, P), complex64
        """
        dev = self.device
        coords = dev.asarray(slice_coords(rotations, self.pad))
        return dev.slices(self.spectrum, coords, dev.const(ky, np.float32), dev.const(kx, np.float32))

    def project(self, rotations, r_max_px=None):
        """Fourier transforms of the projections, rfft layout ``(n, N, N//2 + 1)`` complex64.

        Coefficients beyond ``r_max_px`` (default Nyquist) are zero. On the projector's device.
        """
        ky, kx, flat = image_pixels(self.box, r_max_px)
        vals = self.project_pixels(rotations, ky, kx)
        xp = self.device.xp
        out = xp.zeros((vals.shape[0], self.box * (self.box // 2 + 1)), dtype=xp.complex64)
        out[:, self.device.asarray(flat)] = vals
        return out.reshape(vals.shape[0], self.box, self.box // 2 + 1)


def shift_phase(box, shifts_px, ky=None, kx=None, xp=np):
    """Phase factors that translate images by ``shifts_px`` = (x, y) pixels (content moves to +x, +y).

    Parameters
    ----------
    box : int
    shifts_px : ndarray, shape (n, 2)
        Translations (x, y) in pixels.
    ky, kx : ndarray, shape (P,), optional
        Frequencies to evaluate; default the whole rfft grid, giving (n, N, N//2+1).

    xp : module
        numpy, or cupy for the whole-grid factors on a GPU.

    Returns
    -------
    ndarray, complex64
        ``exp(-2 pi i (kx sx + ky sy) / N)``.
    """
    s = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    if ky is None:
        # Separable: exp(-2πi(kx sx + ky sy)) = exp(-2πi kx sx) · exp(-2πi ky sy): 2N exponentials
        # per image instead of N (N/2 + 1).
        fy, fx = fourier.freq_axes_rfft((box, box))
        ex = xp.asarray(np.exp(-2j * np.pi * np.outer(s[:, 0], fx.ravel())).astype(np.complex64))
        ey = xp.asarray(np.exp(-2j * np.pi * np.outer(s[:, 1], fy.ravel())).astype(np.complex64))
        return ey[:, :, None] * ex[:, None, :]
    ph = (np.outer(s[:, 0], kx) + np.outer(s[:, 1], ky)) / box
    return np.exp(-2j * np.pi * ph).astype(np.complex64)


def shift_images_ft(images_ft, shifts_px):
    """Translate images given as rfft-layout spectra ``(n, N, N//2+1)`` by ``shifts_px`` (n, 2) = (x, y)."""
    box = images_ft.shape[-2]
    return images_ft * shift_phase(box, shifts_px)

#: Sign relating RELION origin offsets to the image content: the particle image is the centred
#: projection translated by ``RELION_ORIGIN_SIGN * (rlnOriginXAngst, rlnOriginYAngst) / pixel size``.
#: Measured with ``relion_project``: an origin of +3 px in x moves the content 3 px towards -x.
RELION_ORIGIN_SIGN = -1.0
