"""E-step and M-step of one half-set: align every particle of the half-set against its reference,
then backproject it (CTF- and noise-weighted) into its fold's accumulator, at the best pose or at
each significant pose weighted by its posterior probability; re-estimate the half-set's noise model
from the residuals at the new poses.
"""

import dataclasses

import numpy as np

from . import fourier
from .particles import read_images
from .pipeline import particle_ctfs
from .pose_search import SearchParams, global_search, local_search
from .project import Projector, shift_phase
from .reconstruct import BackProjector, insert_concurrently

# (image, pose) pairs backprojected per call: ~40 MB of centred spectra, CTFs and weights at box 96.
INSERT_CHUNK = 512


@dataclasses.dataclass
class HalfSetStep:
    """Result of :func:`align_and_backproject` for the particles ``idx`` of one half-set."""

    idx: np.ndarray  # (m,) particle indices
    rotations: np.ndarray  # (m, 3, 3) best poses
    shifts_px: np.ndarray  # (m, 2)
    folds: list  # the two fold BackProjectors (the half-map is their sum)
    sigma2: np.ndarray  # (N//2 + 1,) noise power per shell at the new poses
    pmax: np.ndarray  # (m,) largest posterior probability
    n_poses: np.ndarray  # (m,) number of poses backprojected


def shell_power(spectra, box):
    """Mean |F|² per integer shell of rfft2_c spectra (n, N, N//2+1), Hermitian-weighted."""
    shells = fourier.shell_index_rfft((box, box)).ravel()
    h = np.broadcast_to(fourier.rfft_hermitian_weights((box, box)), (box, box // 2 + 1)).ravel()
    p = (np.abs(spectra.reshape(len(spectra), -1)) ** 2 * h).sum(axis=0)
    n_sh = box // 2 + 1
    sel = shells < n_sh
    tot = np.bincount(shells[sel], weights=p[sel], minlength=n_sh)
    cnt = np.bincount(shells[sel], weights=h[sel], minlength=n_sh) * len(spectra)
    return tot / np.maximum(cnt, 1)


def fit_scale(data, pred):
    """Least-squares per-image scale of ``pred`` to ``data`` (spectra), applied to ``pred``."""
    num = np.real(np.sum(data * np.conj(pred), axis=(1, 2)))
    den = np.sum(np.abs(pred) ** 2, axis=(1, 2))
    return pred * (num / np.maximum(den, 1e-30))[:, None, None]


def _backproject_poses(bps, folds, images_ft, ctfs, res, post, weights, sym_ops):
    """Insert every image at each pose with a positive posterior ``post`` (n, K), into its fold.

    Particle-major: the poses of one particle, a few degrees apart, go in one after the other, so
    their slices reuse the accumulator's cache lines (the insertion is memory-bound: twice as fast
    as inserting the batch one pose rank at a time at box 96). Chunks of :data:`INSERT_CHUNK`
    (image, pose) pairs bound the memory; the two folds fill in parallel threads.
    """
    box = images_ft.shape[1]
    rows_all, ranks_all = np.nonzero(post)  # row-major order: each particle's poses together
    for s in range(0, len(rows_all), INSERT_CHUNK):
        r, k = rows_all[s:s + INSERT_CHUNK], ranks_all[s:s + INSERT_CHUNK]
        centred = images_ft[r] * shift_phase(box, -res.candidate_shifts_px[r, k])
        p = post[r, k].astype(np.float32)
        jobs = []
        for f in (0, 1):
            sel = folds[r] == f
            if sel.any():
                rf = r[sel]
                jobs.append((bps[f], (centred[sel], None if ctfs is None else ctfs[rf],
                                      res.candidate_rotations[rf, k[sel]]),
                             {"weights": weights[None] * p[sel, None, None], "symmetry": sym_ops}))
        insert_concurrently(jobs)


def align_and_backproject(particles, idx_all, fold_of, reference, sigma2, cfg, search, rng, sym_ops,
                          prev_rotations=None, prev_shifts_px=None):
    """One half-set's E- and M-step.

    Parameters
    ----------
    particles : Particles
    idx_all : (m,) int
        The half-set's particle indices.
    fold_of : (m,) int
        Fold (0 or 1) of each of them.
    reference : (N, N, N) float32
        The half-set's regularized reference.
    sigma2 : (N//2 + 1,) float
        Noise power per shell; all zero before it was first estimated (cross-correlation metric,
        images whitened by their own spectrum, best pose only).
    cfg : RefineConfig
    search : (is_global, step_deg, r_max_px)
        The iteration's search plan. Local searches start from ``prev_rotations``/``prev_shifts_px``.
    rng : numpy.random.Generator
    sym_ops : (S, 3, 3)
    """
    glob_, step, r_max = search
    box = particles.box_px
    proj = Projector(reference, pad=cfg.pad)
    bps = [BackProjector(box, pad=cfg.pad), BackProjector(box, pad=cfg.pad)]
    m = len(idx_all)
    out_rot, out_shift = np.zeros((m, 3, 3)), np.zeros((m, 2))
    pmax, n_poses = np.ones(m), np.ones(m, np.int64)
    resid, inv_s2 = np.zeros(box // 2 + 1), None
    if sigma2.any():
        inv_s2 = (1.0 / np.maximum(sigma2, 1e-6 * sigma2.max())).astype(np.float32)
    metric = "likelihood" if inv_s2 is not None else "cc"
    # Coarse shifts every 2 px (RELION's offset step at oversampling 1), halved per level.
    params = SearchParams(coarse_step_deg=cfg.initial_step_deg, final_step_deg=step,
                          shift_range_px=cfg.shift_range_px, shift_step_px=2.0, metric=metric,
                          final_top_k=cfg.posterior_poses)
    shell_of_pixel = fourier.shell_index_rfft((box, box))
    for start in range(0, m, cfg.batch):
        b = slice(start, start + cfg.batch)
        idx = idx_all[b]
        images_ft = fourier.rfft2_c(read_images(particles, idx))
        ctfs = particle_ctfs(particles, idx)
        weights_shell = inv_s2 if inv_s2 is not None else (
            1.0 / np.maximum(shell_power(images_ft, box), 1e-12)).astype(np.float32)
        if glob_:
            res = global_search(proj, images_ft, ctfs, weights_shell, r_max, params=params, rng=rng)
        else:
            res = local_search(proj, images_ft, ctfs, weights_shell, r_max, prev_rotations[b],
                               prev_shifts_px[b], step_deg=step, radius_deg=1.5 * step,
                               shift_range_px=2.0, shift_step_px=0.5, final_step_deg=step / 2, params=params)
        out_rot[b], out_shift[b] = res.rotations, res.shifts_px
        # Noise model from the residuals at the new poses, full frequency range; the prediction is
        # scaled to the data first (the first reference's greyscale is arbitrary).
        pred = proj.project(res.rotations) * shift_phase(box, res.shifts_px)
        if ctfs is not None:
            pred = pred * ctfs
        resid += shell_power(images_ft - fit_scale(images_ft, pred), box) * len(idx)
        # Backproject, noise-weighted, into the particle's fold: at the best pose, or (likelihood
        # metric) at each of the top-K candidates weighted by its posterior probability.
        w = weights_shell[np.minimum(shell_of_pixel, len(weights_shell) - 1)]
        post = (res.posterior(cfg.min_posterior) if cfg.marginalize and metric == "likelihood"
                else np.eye(1, res.candidate_scores.shape[1]).repeat(len(idx), 0))
        pmax[b] = post.max(axis=1)
        n_poses[b] = (post > 0).sum(axis=1)
        _backproject_poses(bps, fold_of[b], images_ft, ctfs, res, post, w, sym_ops)
    return HalfSetStep(idx=idx_all, rotations=out_rot, shifts_px=out_shift, folds=bps,
                       sigma2=resid / max(m, 1), pmax=pmax, n_poses=n_poses)
