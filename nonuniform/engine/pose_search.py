"""E-step pose search: coarse-to-fine global searches and local searches built on :mod:`.scoring`.

:func:`global_search` scores every image against a shared SO(3) grid (one GEMM per template chunk,
:func:`.scoring.score_poses`), keeps the top-K poses per image and refines them by halving the
angular and shift steps around each (:func:`.scoring.score_candidates`), raising the frequency limit
with the sampling. :func:`local_search` starts from each image's current pose, optionally with
Gaussian priors on the change of pose and shift. The image model and the score are described in
:mod:`.scoring`.

Shifts returned are image translations ``t`` (content moved by +t from the centred projection):
RELION's origin offset is ``-t`` (``pipeline.image_shifts_px`` converts STAR origins to such ``t``).
"""

import logging
from dataclasses import dataclass

import numpy as np

from . import geometry
from .backend import asnumpy
from .scoring import (TemplateBank, check_metric, gather, pixel_set, pixel_weights, score_candidates, score_poses,
                      shift_grid)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchParams:
    """Coarse-to-fine schedule of :func:`global_search` (and the refinement levels of :func:`local_search`).

    Level 0 scores every image against a shared SO(3) grid of step ``coarse_step_deg``; each further
    level halves the angular step, searches a local grid of radius ``local_radius_steps`` steps around
    each of the ``refine_top_k`` best poses of the previous level, and halves the shift step (down to
    ``final_shift_step_px``) on a 3 × 3 grid around each candidate's shift. The frequency limit of a
    level is ``min(r_max_px, edge_shift_px / step_rad)``: a step then moves the slice's edge by
    ``edge_shift_px`` Fourier pixels. The last level returns its ``final_top_k`` best poses (the
    candidates of :meth:`PoseResult.posterior`; keeping more of the already scored poses is free).
    """

    coarse_step_deg: float = 15.0
    final_step_deg: float = 1.875
    top_k: int = 8
    refine_top_k: int = 4
    final_top_k: int = 8
    local_radius_steps: float = 1.5
    edge_shift_px: float = 2.5
    shift_range_px: float = 5.0
    shift_step_px: float = 1.0
    final_shift_step_px: float = 0.25
    metric: str = "likelihood"
    template_chunk: int = 1024
    image_batch: int = 128
    local_batch: int = 128
    max_batch_bytes: int = 256 * 2 ** 20


@dataclass
class PoseResult:
    """Best poses and the top-K candidates per image.

    Attributes
    ----------
    rotations : ndarray, shape (n, 3, 3)
        Best RELION pose matrices.
    shifts_px : ndarray, shape (n, 2)
        Best image translations (x, y) in px (content moved by +t; RELION origin = -t).
    scores : ndarray, shape (n,)
        Best scores (log-likelihood up to a per-image constant, or cc).
    candidate_rotations, candidate_shifts_px, candidate_scores : ndarray, shapes (n, K, 3, 3), (n, K, 2), (n, K)
        The K best poses of the last level, best first.
    r_max_px : float
        Frequency limit of the last level.
    """

    rotations: np.ndarray
    shifts_px: np.ndarray
    scores: np.ndarray
    candidate_rotations: np.ndarray
    candidate_shifts_px: np.ndarray
    candidate_scores: np.ndarray
    r_max_px: float

    def posterior(self, min_weight=1e-3):
        """Posterior probability of each of the K candidates, shape (n, K), rows summing to 1.

        ``softmax`` of the candidate log-likelihoods (meaningful with ``metric="likelihood"`` and a
        calibrated noise model); candidates that repeat an earlier one's pose and shift (local grids
        of neighbouring parents overlap) and those below ``min_weight`` get 0, and the rest are
        renormalised. The best candidate always keeps a positive weight.
        """
        s = np.asarray(self.candidate_scores, np.float64)
        k = s.shape[1]
        keep = np.isfinite(s)
        for j in range(1, k):
            for i in range(j):
                same = ((np.abs(self.candidate_rotations[:, j] - self.candidate_rotations[:, i]).max(axis=(1, 2))
                         < 1e-9) & (np.abs(self.candidate_shifts_px[:, j] - self.candidate_shifts_px[:, i]).max(axis=1)
                                    < 1e-9))
                keep[:, j] &= ~(same & keep[:, i])
        z = np.where(keep, s - s[:, :1], -np.inf)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        p[p < min_weight] = 0.0
        p[:, 0] = np.maximum(p[:, 0], 1e-12)
        return p / p.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# Searches


def level_radius_px(params, r_max_px, step_deg):
    """Frequency limit of a level of step ``step_deg``: ``min(r_max_px, edge_shift_px / step_rad)``."""
    return float(min(r_max_px, params.edge_shift_px / np.deg2rad(step_deg)))


class _Data:
    """Image spectra, CTFs and noise model of one search call, gathered per level and batch."""

    def __init__(self, images_ft, ctfs, inv_sigma2_per_shell, projector, r_max_px):
        box = images_ft.shape[-2] if images_ft.ndim == 3 else -1
        if box < 0 or images_ft.shape[1:] != (box, box // 2 + 1):
            raise ValueError(f"images_ft must be rfft spectra (n, N, N//2 + 1), got shape {images_ft.shape}")
        if r_max_px > min(box, projector.box) / 2:
            raise ValueError(f"r_max_px {r_max_px} exceeds Nyquist of the images ({box}) or of the "
                             f"reference ({projector.box})")
        if ctfs is not None and ctfs.shape != images_ft.shape:
            raise ValueError(f"ctfs shape {ctfs.shape} differs from images_ft shape {images_ft.shape}")
        self.images_ft, self.ctfs, self.inv_sigma2 = images_ft, ctfs, asnumpy(inv_sigma2_per_shell)
        self.n, self.box = len(images_ft), box
        self.device = projector.device

    def batch(self, pixels, idx):
        """Image coefficients, CTFs and weights at ``pixels`` of the images ``idx``, on the projector's device."""
        dev = self.device
        rows = dev.asarray(idx)
        x = gather(dev.asarray(self.images_ft[rows]), pixels, dev).astype(dev.xp.complex64, copy=False)
        c = (None if self.ctfs is None
             else gather(dev.asarray(self.ctfs[rows]), pixels, dev).astype(dev.xp.float32, copy=False))
        w = pixel_weights(pixels, self.inv_sigma2)
        return x, c, dev.asarray(w[idx] if w.ndim == 2 else w)


def _batches(n, size):
    size = max(1, int(size))
    return [np.arange(i, min(n, i + size)) for i in range(0, n, size)]


def _refine(projector, data, params, r_max_px, cand_rot, cand_shift, step_deg, shift_step_px, final_step_deg,
            prior=None):
    """Halve the angular step until ``final_step_deg``, keeping ``refine_top_k`` candidates per image."""
    scores = None
    while step_deg > final_step_deg * (1 + 1e-6):
        step_deg /= 2
        shift_step_px = max(params.final_shift_step_px, shift_step_px / 2)
        r = level_radius_px(params, r_max_px, step_deg)
        offsets = geometry.local_grid(np.eye(3), step_deg, params.local_radius_steps * step_deg)
        shifts = shift_grid(shift_step_px * 2 ** 0.5, shift_step_px)
        last = step_deg <= final_step_deg * (1 + 1e-6)
        cand_rot, cand_shift, scores = _local_level(projector, data, params, r, cand_rot, cand_shift, offsets,
                                                    shifts, params.final_top_k if last else params.refine_top_k,
                                                    prior)
        logger.debug("level %.3g deg, r_max %.1f px, shift step %.3g px: %d x %d poses per image",
                     step_deg, r, shift_step_px, len(offsets), len(shifts))
    return cand_rot, cand_shift, scores, step_deg


def _local_level(projector, data, params, r_max_px, cand_rot, cand_shift, offsets, shifts, top_k, prior):
    pixels = pixel_set(data.box, r_max_px)
    n, n_c = cand_rot.shape[:2]
    per_image = n_c * len(pixels.ky) * 8 * (1.5 * len(offsets) + len(shifts))
    out_r = np.empty((n, top_k, 3, 3))
    out_s = np.empty((n, top_k, 2))
    out_v = np.empty((n, top_k))
    for idx in _batches(n, min(params.local_batch, params.max_batch_bytes // per_image)):
        rp = sp = None
        if prior is not None:
            rp, sp = prior(idx, cand_rot[idx], cand_shift[idx], offsets, shifts)
        out_v[idx], out_r[idx], out_s[idx] = score_candidates(
            projector, *data.batch(pixels, idx), pixels, cand_rot[idx], cand_shift[idx], offsets, shifts,
            top_k=top_k, metric=params.metric, rot_penalty=rp, shift_penalty=sp)
    return out_r, out_s, out_v


class _GaussianPrior:
    """Penalties ``d²/(2σ²)`` for the angular distance to the start pose and the shift offset from the start shift."""

    def __init__(self, rot0, shift0, sigma_rot_deg, sigma_shift_px):
        self.rot0, self.shift0, self.sigma_rot, self.sigma_shift = rot0, shift0, sigma_rot_deg, sigma_shift_px

    def __call__(self, idx, cand_rot, cand_shift, offsets, shifts):
        rp = sp = None
        if self.sigma_rot is not None:
            d = geometry.angular_distance_deg(cand_rot[:, :, None] @ offsets[None, None], self.rot0[idx, None, None])
            rp = (d ** 2 / (2 * self.sigma_rot ** 2)).astype(np.float32)
        if self.sigma_shift is not None:
            dt = cand_shift[:, :, None] + shifts[None, None] - self.shift0[idx, None, None]
            sp = ((dt ** 2).sum(-1) / (2 * self.sigma_shift ** 2)).astype(np.float32)
        return rp, sp


def _result(cand_rot, cand_shift, scores, r_max_px):
    return PoseResult(cand_rot[:, 0].copy(), cand_shift[:, 0].copy(), scores[:, 0].copy(), cand_rot, cand_shift,
                      scores, r_max_px)


def global_search(projector, images_ft, ctfs, inv_sigma2_per_shell, r_max_px, params=SearchParams(), rng=None,
                  rotations=None, centres_px=None, cache_bytes=512 * 2 ** 20):
    """Coarse-to-fine search of every image's pose over all of SO(3) and a disc of shifts.

    Parameters
    ----------
    projector : project.Projector
        Reference (already filtered/masked as the caller wants). It may be built from a
        Fourier-cropped copy of the reference (same physical box, box >= 2 r_max_px): slices are
        indexed by integer frequency, which cropping does not change, and a small padded spectrum
        makes the projection (the cost of the refinement levels) cache-friendlier.
    images_ft : ndarray, shape (n, N, N//2+1), complex
        rfft2_c spectra of the particle images (origin offsets not removed).
    ctfs : ndarray, shape (n, N, N//2+1), float32, or None
    inv_sigma2_per_shell : ndarray, shape (S,) or (n, S)
        1/σ² per integer Fourier shell (σ² in rfft2_c units); S > r_max_px.
    r_max_px : float
        Highest frequency used, Fourier pixels.
    params : SearchParams
    rng : numpy.random.Generator, optional
        When given, the coarse grid is turned by a random rotation (no grid-locked poses across iterations).
    rotations : ndarray, shape (J, 3, 3), optional
        Coarse grid (default ``geometry.so3_grid(params.coarse_step_deg)``).
    centres_px : ndarray, shape (n, 2), optional
        Centre of each image's shift disc (default 0).
    cache_bytes : int
        The coarse template bank is projected once and kept when smaller than this.

    Returns
    -------
    PoseResult
    """
    check_metric(params.metric)
    data = _Data(images_ft, ctfs, inv_sigma2_per_shell, projector, r_max_px)
    if rotations is None:
        rotations = geometry.so3_grid(params.coarse_step_deg)
    if rng is not None:
        rotations = geometry.random_rotations(1, rng)[0] @ rotations
    centres = np.zeros((data.n, 2)) if centres_px is None else np.asarray(centres_px, np.float64)
    r0 = level_radius_px(params, r_max_px, params.coarse_step_deg)
    pixels = pixel_set(data.box, r0)
    shifts = shift_grid(params.shift_range_px, params.shift_step_px)
    source = TemplateBank(projector, rotations, pixels, cache_bytes)
    chunk = min(params.template_chunk, len(rotations))
    per_image = len(shifts) * (8 * len(pixels.ky) + 4 * chunk)
    k0 = params.top_k
    cand_rot = np.empty((data.n, k0, 3, 3))
    cand_shift = np.empty((data.n, k0, 2))
    scores = np.empty((data.n, k0))
    for idx in _batches(data.n, min(params.image_batch, params.max_batch_bytes // per_image)):
        s, j, t = score_poses(*data.batch(pixels, idx), source, shifts, pixels, top_k=k0, chunk=chunk,
                              metric=params.metric, centres_px=centres[idx])
        scores[idx], cand_rot[idx], cand_shift[idx] = s, rotations[j], centres[idx, None] + shifts[t]
    logger.debug("coarse level %.3g deg, r_max %.1f px: %d rotations x %d shifts", params.coarse_step_deg, r0,
                 len(rotations), len(shifts))
    out = _refine(projector, data, params, r_max_px, cand_rot, cand_shift, params.coarse_step_deg,
                  params.shift_step_px, params.final_step_deg)
    if out[2] is not None:
        cand_rot, cand_shift, scores, step = out
        r0 = level_radius_px(params, r_max_px, step)
    return _result(cand_rot, cand_shift, scores, r0)


def local_search(projector, images_ft, ctfs, inv_sigma2_per_shell, r_max_px, rotations, shifts_px, step_deg,
                 radius_deg, shift_range_px, shift_step_px, final_step_deg=None, params=SearchParams(),
                 sigma_rot_deg=None, sigma_shift_px=None):
    """Search a neighbourhood of each image's current pose (later iterations of a refinement).

    Level 1 scores the rotations ``R_i @ exp(w)`` with ``w`` on a cubic grid of ``step_deg`` within
    ``radius_deg`` (:func:`geometry.local_grid`) and the shifts ``t_i + d`` on a ``shift_step_px`` grid
    within ``shift_range_px``; further levels halve the step down to ``final_step_deg`` (default: none)
    around the ``params.refine_top_k`` best poses, as in :func:`global_search`.

    Parameters
    ----------
    projector, images_ft, ctfs, inv_sigma2_per_shell, r_max_px, params : see :func:`global_search`
    rotations : ndarray, shape (n, 3, 3)
        Current poses.
    shifts_px : ndarray, shape (n, 2)
        Current image translations (x, y) px (content moved by +t; RELION origin = -t).
    step_deg, radius_deg, shift_range_px, shift_step_px : float
    final_step_deg : float, optional
    sigma_rot_deg, sigma_shift_px : float, optional
        Gaussian priors centred on the current pose and shift (RELION: 2 × step for rotations);
        likelihood metric only.

    Returns
    -------
    PoseResult
    """
    data = _Data(images_ft, ctfs, inv_sigma2_per_shell, projector, r_max_px)
    rot0 = np.asarray(rotations, np.float64).reshape(data.n, 3, 3)
    shift0 = np.asarray(shifts_px, np.float64).reshape(data.n, 2)
    prior = None
    if sigma_rot_deg is not None or sigma_shift_px is not None:
        if params.metric != "likelihood":
            raise ValueError("priors (sigma_rot_deg, sigma_shift_px) need metric='likelihood'")
        prior = _GaussianPrior(rot0, shift0, sigma_rot_deg, sigma_shift_px)
    offsets = geometry.local_grid(np.eye(3), step_deg, radius_deg)
    shifts = shift_grid(shift_range_px, shift_step_px)
    final = step_deg if final_step_deg is None else final_step_deg
    r = level_radius_px(params, r_max_px, step_deg)
    last = final >= step_deg * (1 - 1e-6)
    cand_rot, cand_shift, scores = _local_level(projector, data, params, r, rot0[:, None], shift0[:, None],
                                                offsets, shifts, params.final_top_k if last else params.refine_top_k,
                                                prior)
    out = _refine(projector, data, params, r_max_px, cand_rot, cand_shift, step_deg, shift_step_px, final, prior)
    if out[2] is not None:
        cand_rot, cand_shift, scores, step = out
        r = level_radius_px(params, r_max_px, step)
    return _result(cand_rot, cand_shift, scores, r)
