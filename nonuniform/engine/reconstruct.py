"""CTF-weighted backprojection into padded Fourier accumulators and regularized division.

For every image coefficient ``X`` with CTF ``c`` and weight ``w`` (e.g. 1/σ² of its shell) the
transposed trilinear weights ``t`` of its slice position add ``t·w·c·X`` to ``data`` and ``t·w·c²``
to ``weight``. The map is ``data / max(weight + 1/τ², floor)`` (RELION's MAP/Wiener division;
without τ² a small floor, 1e-3 of the shell-average weight, keeps empty voxels finite), brought
back to real space, cropped, divided by the gridding sinc², and multiplied by a soft sphere of
radius N/2 (3 px raised-cosine edge) as ``relion_reconstruct`` does, which drops the noise that
otherwise fills the box corners (~48 % of the cube).

Accumulators are float64 and hold one fold; folds add (``+=``) so half-set and quarter maps
share one backprojection pass (docs/architecture.rst, "One iteration").
"""

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit

from . import fourier
from .backend import CPU
from .masks import soft_sphere
from .project import gridding_correction, hermitian_pair_weight, image_pixels, slice_coords


@njit(fastmath=True, cache=True, nogil=True)
def _insert_kernel(data, weight, coords, ky, kx, vals, ctf_w, w2):
    """Scatter ``vals`` (n, P) and ``w2`` (n, P) with trilinear weights at coords[i] @ (kx, ky, 0)."""
    m = data.shape[0]
    c = m // 2
    mx = data.shape[2]
    for i in range(coords.shape[0]):
        a = coords[i]
        for p in range(ky.shape[0]):
            fx = kx[p]
            fy = ky[p]
            x = a[0, 0] * fx + a[0, 1] * fy
            y = a[1, 0] * fx + a[1, 1] * fy
            z = a[2, 0] * fx + a[2, 1] * fy
            v = vals[i, p] * ctf_w[i, p]
            if x < 0:
                x, y, z = -x, -y, -z
                v = np.conj(v)
            x0 = int(np.floor(x))
            y0 = int(np.floor(y))
            z0 = int(np.floor(z))
            dx = x - x0
            dy = y - y0
            dz = z - z0
            y0 += c
            z0 += c
            if x0 < 0 or x0 + 1 >= mx or y0 < 0 or y0 + 1 >= m or z0 < 0 or z0 + 1 >= m:
                continue
            wt = w2[i, p]
            for iz in range(2):
                fz = dz if iz else 1.0 - dz
                for iy in range(2):
                    fyy = dy if iy else 1.0 - dy
                    for ix in range(2):
                        f = fz * fyy * (dx if ix else 1.0 - dx)
                        data[z0 + iz, y0 + iy, x0 + ix] += f * v
                        weight[z0 + iz, y0 + iy, x0 + ix] += f * wt


def insert_concurrently(jobs, threads=None):
    """Run ``BackProjector.insert`` calls, those of different backprojectors in parallel threads.

    ``jobs`` is a list of ``(backprojector, args, kwargs)``. The insertion kernel releases the GIL,
    so the accumulators of different backprojectors (e.g. the two folds of a half-set) fill
    concurrently; the calls of one backprojector run in order in one thread. ``threads`` defaults
    to numba's thread count.
    """
    groups = {}
    for bp, args, kwargs in jobs:
        groups.setdefault(id(bp), []).append((bp, args, kwargs))
    n = min(len(groups), threads or numba.get_num_threads())
    if any(not bp.device.is_cpu for bp, _, _ in jobs):
        n = 1  # GPU kernels are queued on one stream: nothing to gain from host threads

    def run(group):
        for bp, args, kwargs in group:
            bp.insert(*args, **kwargs)

    if n <= 1:
        for g in groups.values():
            run(g)
        return
    with ThreadPoolExecutor(n) as pool:
        for f in [pool.submit(run, g) for g in groups.values()]:
            f.result()


class BackProjector:
    """Fourier accumulators (data, weight) for one reconstruction (a half-set or a fold).

    Parameters
    ----------
    box : int
        Image/volume size N.
    pad : int
        Oversampling of the accumulators (2, as the projector).
    r_max_px : float, optional
        Insert image coefficients with ``|k| < r_max_px`` (default Nyquist).
    device : backend.Device, optional
        Where the accumulators live (default the host); the arrays passed to :meth:`insert` must
        be on it, and maps are returned on it.
    """

    def __init__(self, box, pad=2, r_max_px=None, device=CPU):
        self.box = box
        self.pad = pad
        self.device = device
        xp = device.xp
        m = pad * box
        self.data = xp.zeros((m, m, m // 2 + 1), dtype=xp.complex128)
        self.weight = xp.zeros((m, m, m // 2 + 1), dtype=xp.float64)
        ky, kx, flat = image_pixels(box, r_max_px)
        self.ky, self.kx, self.flat = (device.asarray(ky, np.float32), device.asarray(kx, np.float32),
                                       device.asarray(flat))
        self._half = device.asarray(hermitian_pair_weight(kx))
        self._shells = None
        self.count = 0

    def insert(self, images_ft, ctf, rotations, weights=None, symmetry=None):
        """Backproject a batch of images.

        Parameters
        ----------
        images_ft : ndarray, shape (n, N, N//2+1), complex
            rfft-layout spectra of the (already centred, i.e. origin-corrected) images.
        ctf : ndarray, shape (n, N, N//2+1), float, or None
            CTF per coefficient (None: no CTF).
        rotations : ndarray, shape (n, 3, 3)
            RELION pose matrices.
        weights : ndarray, shape (n, N, N//2+1) or (n,), optional
            Extra weight per coefficient (1/σ²) or per image (posterior probability).
        symmetry : ndarray, shape (s, 3, 3), optional
            Point-group matrices; each image is inserted at ``A @ R`` for every ``R``.
        """
        xp, dev = self.device.xp, self.device
        n = images_ft.shape[0]
        x = images_ft.reshape(n, -1)[:, self.flat]
        c = xp.ones_like(x.real) if ctf is None else ctf.reshape(n, -1)[:, self.flat].astype(xp.float32)
        w = xp.broadcast_to(self._half, c.shape).astype(xp.float32)
        if weights is not None:
            wts = xp.asarray(weights, dtype=xp.float32)
            w = w * (wts.reshape(n, -1)[:, self.flat] if wts.ndim > 1 else wts[:, None])
        ctf_w = (c * w).astype(xp.float32)
        w2 = (c * c * w).astype(xp.float32)
        x = xp.ascontiguousarray(x, dtype=xp.complex64)
        rots = dev.asnumpy(rotations).astype(np.float64).reshape(-1, 3, 3)
        ops = [np.eye(3)] if symmetry is None else symmetry
        for r in ops:
            coords = dev.asarray(slice_coords(rots @ r, self.pad))
            dev.insert(self.data, self.weight, coords, self.ky, self.kx, x, ctf_w, w2)
        self.count += n

    def add(self, other):
        """Add another accumulator (e.g. the other fold of a half-set, or another MPI rank's)."""
        self.data += other.data
        self.weight += other.weight
        self.count += other.count
        return self

    def hermitian_accumulators(self, copy=True):
        """``data`` and ``weight`` with the x = 0 plane completed by its Hermitian mirror.

        Insertion only visits the x >= 0 half; contributions that a full grid would put on the
        x = 0 plane through the mirrored coefficient are its conjugate flipped in (y, z). With
        ``copy=False`` the accumulators themselves are completed and returned (no further insertion
        may follow): at box 256 that saves two 1.6 GB copies per fold.
        """
        xp = self.device.xp
        data = self.data.copy() if copy else self.data
        weight = self.weight.copy() if copy else self.weight
        m = data.shape[0]
        idx = self.device.asarray((2 * (m // 2) - np.arange(m)) % m)  # -k on a centred axis (-M/2 wraps to itself)
        d0 = data[:, :, 0]
        w0 = weight[:, :, 0]
        data[:, :, 0] = d0 + xp.conj(d0[idx][:, idx])
        weight[:, :, 0] = w0 + w0[idx][:, idx]
        return data, weight

    def shell_index(self):
        """Padded-grid radial shell (in units of the unpadded image's Fourier pixels) of each voxel."""
        if self._shells is None:
            xp = self.device.xp
            m = self.data.shape[0]
            c = xp.arange(m) - m // 2
            kx = xp.arange(m // 2 + 1)
            r = xp.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + kx[None, None, :] ** 2) / self.pad
            self._shells = xp.rint(r).astype(xp.int32)
        return self._shells

    def reconstruct(self, tau2=None, floor_frac=1e-3, data=None, weight=None, edge_px=3.0):
        """Real-space map from the accumulators.

        Parameters
        ----------
        tau2 : ndarray, shape (N//2 + 1,), optional
            Signal power per shell (same units as ``data``/``weight``); adds ``1/τ²`` to the weight
            (RELION's MAP division). Shells with τ² <= 0 are zeroed.
        floor_frac : float
            Minimum denominator as a fraction of the shell-average weight.
        data, weight : ndarray, optional
            Pre-completed accumulators (from :meth:`hermitian_accumulators`), e.g. summed over folds.
        edge_px : float or None
            Multiply the map by a sphere that is 1 out to radius N/2 and falls to 0 over this many
            px (raised cosine), like relion_reconstruct's output; None keeps the whole box.

        Returns
        -------
        ndarray, shape (N, N, N), float32, real space (origin at N//2), on the accumulators' device.
        """
        xp, dev = self.device.xp, self.device
        if data is None:
            data, weight = self.hermitian_accumulators()
        shells = self.shell_index()
        n_sh = self.box // 2 + 1
        inside = shells < n_sh
        sh = xp.where(inside, shells, n_sh)
        wsum = xp.bincount(sh.ravel(), weights=weight.ravel(), minlength=n_sh + 1)
        cnt = xp.bincount(sh.ravel(), minlength=n_sh + 1)
        shell_mean = wsum / xp.maximum(cnt, 1)
        denom = weight.copy()
        if tau2 is not None:
            t = np.zeros(n_sh + 1)
            t[:n_sh] = dev.asnumpy(tau2).astype(np.float64)[:n_sh]
            inv = np.where(t > 0, 1.0 / np.where(t > 0, t, 1.0), np.inf)
            denom = denom + dev.asarray(inv)[sh]
        denom = xp.maximum(denom, floor_frac * shell_mean[sh])
        spec = xp.where(inside & (denom > 0), data / xp.where(denom > 0, denom, 1.0), 0)
        spec = xp.fft.ifftshift(spec, axes=(0, 1))
        m = self.pad * self.box
        big = fourier.irfftn_c(spec, (m, m, m))
        o = m // 2 - self.box // 2
        vol = big[o:o + self.box, o:o + self.box, o:o + self.box]
        vol = vol / dev.asarray(gridding_correction(self.box, self.pad))
        if edge_px is not None:
            vol = vol * dev.asarray(soft_sphere(self.box, self.box / 2, edge_px))
        return vol.astype(xp.float32)
