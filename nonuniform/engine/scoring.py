"""E-step scoring kernels: likelihood (or cc) scores of images against central slices as batched GEMMs.

Image model (RELION, see :mod:`.project`): the Fourier coefficients of particle ``i`` are
``X_i(k) = c_i(k) · S_t(k) · T_j(k) + noise``, with ``T_j`` the central slice of the reference in pose
``j``, ``c_i`` the CTF and ``S_t(k) = exp(-2πi k·t / N)`` the phase ramp that translates the image
content by ``t = (x, y)`` px (:func:`.project.shift_phase`). The noise is Gaussian, independent between
Fourier coefficients, with variance ``σ²(shell) = E|N(k)|²`` in the units of :func:`.fourier.rfft2_c`
(white real-space noise of std ``s`` has ``σ² = N² s²``). The score of (image, pose, shift) is the
log-likelihood up to a per-image constant,

    score = -½ Σ_{full spectrum} |X - c T S|² / σ²  +  ½ Σ_{full spectrum} |X|² / σ²
          = 2 Re Σ_k h_k (X c S̄ / σ²)(k) T̄(k)  -  Σ_k h_k (c² / σ²)(k) |T(k)|²,

where the last sums run over the stored rfft coefficients with ``0 < |k| <= r_max`` and ``h_k`` = ½ on
the self-conjugate columns (kx = 0 and kx = N/2), 1 elsewhere (DC carries no pose information and is
left out). CTF, noise weights and shifts sit on the image side, so the cross term of a batch of
images × shifts against a block of templates is one real GEMM on the interleaved (re, im) float32
views of complex64 arrays (Re(a b̄) = a_re b_re + a_im b_im: half the flops of a complex GEMM) and the
norm term one real GEMM ``(c² h/σ²) @ |T|²ᵀ``. Scores are reduced on the fly (best shift per pose,
then a running top-K of poses per image), so memory is bounded by the template chunk.
``metric="cc"`` gives instead the σ-weighted normalised cross-correlation
``Re Σ h X c S̄ T̄/σ² / sqrt(Σ h |X|²/σ² · Σ h c²|T|²/σ²)`` (insensitive to the reference's greyscale).

Shifts returned are image translations ``t`` (content moved by +t from the centred projection):
RELION's origin offset is ``-t`` (``pipeline.image_shifts_px`` converts STAR origins to such ``t``).
"""

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from .backend import CPU, device_of, get_array_module
from .project import image_pixels

_METRICS = ("likelihood", "cc")


# ----------------------------------------------------------------------------------------------
# Pixel sets and image-side arrays


@dataclass(frozen=True)
class Pixels:
    """The rfft coefficients ``0 < |k| <= r_max_px`` of a ``box`` image: frequencies, shells, Hermitian weights."""

    box: int
    ky: np.ndarray
    kx: np.ndarray
    flat: np.ndarray
    shell: np.ndarray
    half: np.ndarray


def pixel_set(box, r_max_px):
    """:class:`Pixels` of a ``box`` image within ``r_max_px`` Fourier pixels (DC excluded)."""
    ky, kx, flat = image_pixels(box, min(float(r_max_px), box / 2))
    keep = (ky != 0) | (kx != 0)
    ky, kx, flat = ky[keep], kx[keep], flat[keep]
    shell = np.rint(np.sqrt(ky.astype(np.float64) ** 2 + kx.astype(np.float64) ** 2)).astype(np.int64)
    self_conj = (kx == 0) | (2 * kx == box)
    return Pixels(box, ky, kx, flat, shell, np.where(self_conj, 0.5, 1.0).astype(np.float32))


def pixel_weights(pixels, inv_sigma2_per_shell):
    """Per-coefficient weights ``h_k / σ²(shell)``: (P,) for a (S,) noise model, (n, P) for (n, S), float32."""
    inv = np.asarray(inv_sigma2_per_shell, dtype=np.float32)
    if inv.shape[-1] <= pixels.shell.max():
        raise ValueError(f"noise model has {inv.shape[-1]} shells; shell {pixels.shell.max()} is needed")
    return np.ascontiguousarray(inv[..., pixels.shell] * pixels.half)


def gather(spectra, pixels, device=CPU):
    """Coefficients of rfft-layout arrays ``(n, N, N//2+1)`` at ``pixels``: (n, P), same dtype and device."""
    xp = get_array_module(spectra)
    return xp.ascontiguousarray(spectra.reshape(spectra.shape[0], -1)[:, device.const(pixels.flat)])


def shift_grid(range_px, step_px):
    """Translations (x, y) px on a square grid of ``step_px`` within a disc of ``range_px``; (0, 0) first."""
    k = int(np.floor(range_px / step_px + 1e-9))
    ax = np.arange(-k, k + 1) * float(step_px)
    g = np.stack(np.meshgrid(ax, ax, indexing="xy"), -1).reshape(-1, 2)
    g = g[np.hypot(g[:, 0], g[:, 1]) <= range_px + 1e-9]
    return g[np.argsort(np.hypot(g[:, 0], g[:, 1]), kind="stable")]


def image_terms(images_px, ctf_px, weight_px, device=CPU):
    """Image-side factors of a batch: ``base = X c w`` (B, P) complex64, ``w2 = c² w`` (B, P) float32,
    ``xnorm = Σ w |X|²`` (B,) float64 (``w`` from :func:`pixel_weights`; ``ctf_px`` None = no CTF)."""
    xp = get_array_module(images_px)
    x = xp.asarray(images_px, dtype=xp.complex64)
    w = xp.broadcast_to(xp.asarray(weight_px, dtype=xp.float32), x.shape)
    cw = w if ctf_px is None else xp.asarray(ctf_px, dtype=xp.float32) * w
    w2 = cw if ctf_px is None else cw * xp.asarray(ctf_px, dtype=xp.float32)
    if device.is_cpu:
        xnorm = np.einsum("bp,bp->b", w, (x.real ** 2 + x.imag ** 2), dtype=np.float64)
    else:
        xnorm = xp.sum(w * (x.real ** 2 + x.imag ** 2), axis=1, dtype=xp.float64)
    return xp.ascontiguousarray(x * cw), xp.ascontiguousarray(w2, dtype=xp.float32), xnorm


def phase_ramps(pixels, shifts_px, xp=np):
    """``exp(+2πi (kx sx + ky sy)/N)`` at ``pixels`` for shifts (n, 2) = (x, y) px: (n, P) complex64.

    Equals ``project.shift_phase(N, -shifts_px, ky, kx)`` (the factor that undoes a translation by
    ``shifts_px``), computed separably: exponentials of the few distinct kx and ky (on the host),
    then a product (on ``xp``'s device).
    """
    s = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    ux, ix = np.unique(pixels.kx, return_inverse=True)
    uy, iy = np.unique(pixels.ky, return_inverse=True)
    ex = np.exp((2j * np.pi / pixels.box) * np.outer(s[:, 0], ux)).astype(np.complex64)
    ey = np.exp((2j * np.pi / pixels.box) * np.outer(s[:, 1], uy)).astype(np.complex64)
    if xp is not np:
        ex, ey, ix, iy = (xp.asarray(a) for a in (ex, ey, ix, iy))
    return xp.ascontiguousarray(ex[:, ix] * ey[:, iy])


def image_side(base, pixels, centres_px, offsets_px, repeat=1, device=CPU):
    """Rows ``A[g, t] = base_{g // repeat} · exp(+2πi k·(centre_g + offset_t)/N)``: (G, T, P) complex64.

    ``base`` (B, P); ``centres_px`` (G, 2) with ``G = B · repeat`` (``repeat`` candidate shifts per
    image), or None (zero, G = B); ``offsets_px`` (T, 2). The product with a template's conjugate,
    summed over k, is the cross term for the image translation ``centre + offset``.
    """
    xp = get_array_module(base)
    n_rows = base.shape[0] * repeat
    ph_c = (xp.ones((1, base.shape[1]), xp.complex64) if centres_px is None
            else phase_ramps(pixels, centres_px, xp))
    if len(ph_c) not in (1, n_rows):
        raise ValueError(f"centres_px has {len(ph_c)} rows; expected {n_rows}")
    if not device.is_cpu:  # GPU route: two broadcast products (memory-bound either way)
        rows = xp.repeat(base, repeat, axis=0) * ph_c
        return rows[:, None, :] * phase_ramps(pixels, offsets_px, xp)[None]
    out = np.empty((n_rows, len(offsets_px), base.shape[1]), np.complex64)
    _image_side_kernel(np.ascontiguousarray(base, dtype=np.complex64), ph_c, phase_ramps(pixels, offsets_px),
                       repeat, out)
    return out


@njit(parallel=True, cache=True)
def _image_side_kernel(base, ph_c, ph_t, repeat, out):
    n_pix = base.shape[1]
    n_c = ph_c.shape[0]
    for g in prange(out.shape[0]):
        gi = np.int64(g)
        row = base[gi // repeat]
        pc = ph_c[gi % n_c]
        tmp = np.empty(n_pix, np.complex64)
        for p in range(n_pix):
            tmp[p] = row[p] * pc[p]
        for t in range(out.shape[1]):
            for p in range(n_pix):
                out[g, t, p] = tmp[p] * ph_t[t, p]


@njit(parallel=True, cache=True)
def _abs2_kernel(t, out):
    for j in prange(t.shape[0]):
        for p in range(t.shape[1]):
            v = t[j, p]
            out[j, p] = v.real * v.real + v.imag * v.imag


def _abs2(t, device=CPU):
    """|t|² of a (J, P) complex64 array, float32."""
    if not device.is_cpu:
        return (t.real * t.real + t.imag * t.imag).astype(t.real.dtype)
    out = np.empty(t.shape, np.float32)
    _abs2_kernel(t, out)
    return out


@njit(parallel=True, cache=True)
def _weighted_norms(t, w2, out):
    """out[b, q] = Σ_p w2[b, p] |t[b, q, p]|² (float64 sums) for per-image templates t (B, Q, P)."""
    for b in prange(t.shape[0]):
        for q in range(t.shape[1]):
            s = 0.0
            for p in range(t.shape[2]):
                v = t[b, q, p]
                s += w2[b, p] * (v.real * v.real + v.imag * v.imag)
            out[b, q] = s


# ----------------------------------------------------------------------------------------------
# Reductions (numba): best shift per pose, then a running top-K of poses per image.


@njit(cache=True, inline="always")
def _push(top_s, top_a, top_b, top_c, i, s, a, b, c):
    k = top_s.shape[1] - 1
    while k > 0 and top_s[i, k - 1] < s:
        top_s[i, k] = top_s[i, k - 1]
        top_a[i, k] = top_a[i, k - 1]
        top_b[i, k] = top_b[i, k - 1]
        top_c[i, k] = top_c[i, k - 1]
        k -= 1
    top_s[i, k] = s
    top_a[i, k] = a
    top_b[i, k] = b
    top_c[i, k] = c


@njit(parallel=True, cache=True)
def _reduce(cross, norm, shift_pen, inv_xn, cc, j0, top_s, top_a, top_b, top_c):
    """cross (B, C, T, M): cross terms; norm (B, C, M): norm terms (+ prior penalties); shift_pen (B, C, T).

    Candidate (c, m) of image b scores ``max_t 2 cross - pen_t - norm`` (likelihood) or
    ``max_t cross / sqrt(norm) * inv_xn`` (cc); it enters the top-K as (score, c, j0 + m, t).
    """
    n_img, n_c, n_t, n_m = cross.shape
    kth = top_s.shape[1] - 1
    f = np.float32(1.0 if cc else 2.0)
    for b in prange(n_img):
        best = np.empty(n_m, np.float32)
        arg = np.empty(n_m, np.int32)
        for c in range(n_c):
            pen = shift_pen[b, c, 0]
            for m in range(n_m):
                best[m] = f * cross[b, c, 0, m] - pen
                arg[m] = 0
            for t in range(1, n_t):
                pen = shift_pen[b, c, t]
                row = cross[b, c, t]
                for m in range(n_m):
                    v = f * row[m] - pen
                    better = v > best[m]
                    best[m] = v if better else best[m]
                    arg[m] = t if better else arg[m]
            for m in range(n_m):
                if cc:
                    s = best[m] * inv_xn[b] / np.sqrt(max(norm[b, c, m], 1e-30))
                else:
                    s = best[m] - norm[b, c, m]
                if s > top_s[b, kth]:
                    _push(top_s, top_a, top_b, top_c, b, s, c, j0 + m, arg[m])


def _new_top(n, k, xp=np):
    """Empty running top-K of ``n`` images: scores (-inf), candidate, template and shift indices."""
    return (xp.full((n, k), -np.inf), xp.zeros((n, k), xp.int64), xp.zeros((n, k), xp.int64),
            xp.zeros((n, k), xp.int64))


def check_metric(metric):
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    return metric == "cc"


# ----------------------------------------------------------------------------------------------
# Shared templates: every image against the same template set (global grid).


def score_block(images_px, ctf_px, weight_px, templates, shifts_px, pixels, centres_px=None):
    """Full score array of images × shifts × templates (no reduction; for tests and small problems).

    Returns
    -------
    ndarray, shape (B, T, J), float32
        Log-likelihood scores (up to a per-image constant) of image b translated by
        ``centres_px[b] + shifts_px[t]`` against template j.
    """
    base, w2, _ = image_terms(images_px, ctf_px, weight_px)
    xp = get_array_module(base)
    a = image_side(base, pixels, centres_px, shifts_px)
    tm = xp.ascontiguousarray(xp.asarray(templates), dtype=xp.complex64)
    cross = a.view(xp.float32) @ tm.view(xp.float32).T
    return 2 * cross - (w2 @ _abs2(tm).T)[:, None, :]


def score_poses(images_px, ctf_px, weight_px, templates, shifts_px, pixels, top_k=1, chunk=1024,
                metric="likelihood", centres_px=None, device=None):
    """Top-K (template, shift) per image against a shared template set, chunked over templates.

    Parameters
    ----------
    images_px : ndarray, shape (B, P), complex64
        Image coefficients at ``pixels`` (Fourier space, :func:`gather` of rfft2_c spectra).
    ctf_px : ndarray, shape (B, P), float32, or None
    weight_px : ndarray, shape (P,) or (B, P), float32
        ``h/σ²`` per coefficient (:func:`pixel_weights`).
    templates : ndarray, shape (J, P), complex64, or TemplateBank
        Central slices at ``pixels`` (a :class:`TemplateBank` projects them chunk by chunk).
    shifts_px : ndarray, shape (T, 2)
        Image translations (x, y) px to try (added to ``centres_px`` (B, 2) when given).
    pixels : Pixels
    top_k : int
    chunk : int
        Templates per GEMM block (memory ~ B·T·chunk·4 bytes).
    metric : {"likelihood", "cc"}
    device : backend.Device, optional
        Where the arrays live and the reduction runs (default: the template bank's, else the host).

    Returns
    -------
    scores : ndarray, shape (B, K), float64, best first
    template_index, shift_index : ndarray, shape (B, K), int64
        On the host.
    """
    cc = check_metric(metric)
    bank = templates if isinstance(templates, TemplateBank) else None
    device = device or (bank.projector.device if bank is not None else device_of(images_px))
    xp = device.xp
    base, w2, xnorm = image_terms(images_px, ctf_px, weight_px, device)
    a = image_side(base, pixels, centres_px, shifts_px, device=device)
    n_img, n_shift = a.shape[:2]
    a2 = a.view(xp.float32).reshape(n_img * n_shift, -1)
    inv_xn = 1.0 / xp.sqrt(xp.maximum(xnorm, 1e-30))
    n_tmpl = len(templates)
    top = device.new_top(n_img, top_k)
    no_pen = xp.zeros((n_img, 1, n_shift), xp.float32)
    buf = xp.empty(n_img * n_shift * min(chunk, n_tmpl), xp.float32)
    for j0 in range(0, n_tmpl, chunk):
        j1 = min(n_tmpl, j0 + chunk)
        if bank is None:
            tm = xp.ascontiguousarray(xp.asarray(templates[j0:j1]), dtype=xp.complex64)
            tm_abs2 = _abs2(tm, device)
        else:
            tm, tm_abs2 = bank.chunk(j0, j1)
        cross = buf[: n_img * n_shift * (j1 - j0)].reshape(n_img * n_shift, j1 - j0)
        xp.matmul(a2, tm.view(xp.float32).T, out=cross)
        norm = xp.ascontiguousarray(xp.matmul(w2, tm_abs2.T)[:, None, :])
        top = device.reduce(cross.reshape(n_img, 1, n_shift, j1 - j0), norm, no_pen, inv_xn, cc, j0, top)
    return device.asnumpy(top[0]), device.asnumpy(top[2]), device.asnumpy(top[3])


class TemplateBank:
    """Central slices of a projector at a fixed list of rotations, for :func:`score_poses`.

    The slices and their ``|T|²`` are computed once and kept when they take at most ``cache_bytes``
    (12 bytes per coefficient), else projected again for every chunk that asks for them.

    Parameters
    ----------
    projector : project.Projector
    rotations : ndarray, shape (J, 3, 3)
    pixels : Pixels
    cache_bytes : int
    """

    def __init__(self, projector, rotations, pixels, cache_bytes=512 * 2 ** 20):
        self.projector, self.rotations, self.pixels = projector, rotations, pixels
        self._cached = None
        if len(rotations) * len(pixels.ky) * 12 <= cache_bytes:
            self._cached = self._project(0, len(rotations))

    def __len__(self):
        return len(self.rotations)

    def _project(self, j0, j1):
        tm = self.projector.project_pixels(self.rotations[j0:j1], self.pixels.ky, self.pixels.kx)
        return tm, _abs2(tm, self.projector.device)

    def chunk(self, j0, j1):
        """Slices (j1 - j0, P) complex64 and their |T|² (float32) of rotations j0 .. j1 - 1."""
        if self._cached is None:
            return self._project(j0, j1)
        return self._cached[0][j0:j1], self._cached[1][j0:j1]


# ----------------------------------------------------------------------------------------------
# Per-image candidates: each image against local grids around its own K poses.


def score_candidates(projector, images_px, ctf_px, weight_px, pixels, rotations, shifts_px, rot_offsets,
                     shift_offsets_px, top_k=1, metric="likelihood", rot_penalty=None, shift_penalty=None):
    """Top-K poses per image among local grids around per-image candidate poses.

    Candidate c of image b is expanded to the rotations ``rotations[b, c] @ rot_offsets[m]`` and the
    translations ``shifts_px[b, c] + shift_offsets_px[t]``.

    Parameters
    ----------
    projector : project.Projector
    images_px, ctf_px, weight_px : see :func:`score_poses`
    pixels : Pixels
    rotations : ndarray, shape (B, C, 3, 3)
    shifts_px : ndarray, shape (B, C, 2)
    rot_offsets : ndarray, shape (M, 3, 3)
        Right-multiplied perturbations (e.g. ``geometry.local_grid(np.eye(3), step, radius)``).
    shift_offsets_px : ndarray, shape (T, 2)
    rot_penalty : ndarray, shape (B, C, M), optional
        Subtracted from the likelihood score (a negative log prior), e.g. ``d²/(2σ²)``.
    shift_penalty : ndarray, shape (B, C, T), optional

    Returns
    -------
    scores : ndarray, shape (B, K), float64
    rotations : ndarray, shape (B, K, 3, 3)
    shifts_px : ndarray, shape (B, K, 2)
    """
    cc = check_metric(metric)
    if cc and (rot_penalty is not None or shift_penalty is not None):
        raise ValueError("priors (penalties) need metric='likelihood'")
    device = projector.device
    xp = device.xp
    n_img, n_c = rotations.shape[:2]
    n_m, n_t, n_pix = len(rot_offsets), len(shift_offsets_px), len(pixels.ky)
    rots = rotations[:, :, None] @ rot_offsets[None, None]
    tm = projector.project_pixels(rots.reshape(-1, 3, 3), pixels.ky, pixels.kx).reshape(n_img, n_c * n_m, n_pix)
    base, w2, xnorm = image_terms(images_px, ctf_px, weight_px, device)
    if device.is_cpu:
        norm = np.empty((n_img, n_c * n_m), np.float32)
        _weighted_norms(tm, w2, norm)
    else:
        norm = xp.einsum("bp,bqp->bq", w2, _abs2(tm, device))
    norm = norm.reshape(n_img, n_c, n_m)
    if rot_penalty is not None:
        norm = norm + xp.asarray(rot_penalty)
    a = image_side(base, pixels, shifts_px.reshape(-1, 2), shift_offsets_px, repeat=n_c, device=device)
    cross = xp.matmul(a.view(xp.float32).reshape(n_img * n_c, n_t, 2 * n_pix),
                      tm.view(xp.float32).reshape(n_img * n_c, n_m, 2 * n_pix).transpose(0, 2, 1))
    pen = (xp.zeros((n_img, n_c, n_t), xp.float32) if shift_penalty is None
           else xp.ascontiguousarray(xp.asarray(shift_penalty), dtype=xp.float32))
    top = device.reduce(cross.reshape(n_img, n_c, n_t, n_m), xp.ascontiguousarray(norm, dtype=xp.float32), pen,
                        1.0 / xp.sqrt(xp.maximum(xnorm, 1e-30)), cc, 0, device.new_top(n_img, top_k))
    s, c, m, t = (device.asnumpy(a) for a in top)
    bi = np.arange(n_img)[:, None]
    found = np.isfinite(s)
    c, m, t = np.where(found, c, 0), np.where(found, m, 0), np.where(found, t, 0)
    return s, rots[bi, c, m], shifts_px[bi, c] + shift_offsets_px[t]
