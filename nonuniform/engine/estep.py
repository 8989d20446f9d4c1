"""E-step and M-step of one half-set: align every particle of the half-set against its reference,
then backproject it (CTF- and noise-weighted) into its fold's accumulator, at the best pose or at
each significant pose weighted by its posterior probability; re-estimate the half-set's noise model
from the residuals at the new poses.
"""

import dataclasses

import numpy as np

from . import fourier
from .backend import CPU, asnumpy, get_array_module
from .pipeline import particle_ctfs
from .pose_search import SearchParams, global_search, local_search
from .project import Projector, shift_phase
from .reconstruct import BackProjector, insert_concurrently
from .streaming import ImageBatches

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
    """Mean |F|² per integer shell of rfft2_c spectra (n, N, N//2+1), Hermitian-weighted (host numpy)."""
    xp = get_array_module(spectra)
    shells = fourier.shell_index_rfft((box, box)).ravel()
    h = np.broadcast_to(fourier.rfft_hermitian_weights((box, box)), (box, box // 2 + 1)).ravel()
    p = asnumpy((xp.abs(spectra.reshape(len(spectra), -1)) ** 2 * xp.asarray(h)).sum(axis=0))
    n_sh = box // 2 + 1
    sel = shells < n_sh
    tot = np.bincount(shells[sel], weights=p[sel], minlength=n_sh)
    cnt = np.bincount(shells[sel], weights=h[sel], minlength=n_sh) * len(spectra)
    return tot / np.maximum(cnt, 1)


def fit_scale(data, pred):
    """Least-squares per-image scale of ``pred`` to ``data`` (spectra), applied to ``pred``."""
    xp = get_array_module(data, pred)
    num = xp.real(xp.sum(data * xp.conj(pred), axis=(1, 2)))
    den = xp.sum(xp.abs(pred) ** 2, axis=(1, 2))
    return pred * (num / xp.maximum(den, 1e-30))[:, None, None]


def _backproject_poses(bps, folds, images_ft, ctfs, res, post, weights, sym_ops):
    """Insert every image at each pose with a positive posterior ``post`` (n, K), into its fold.

    Particle-major: the poses of one particle, a few degrees apart, go in one after the other, so
    their slices reuse the accumulator's cache lines (the insertion is memory-bound: twice as fast
    as inserting the batch one pose rank at a time at box 96). Chunks of :data:`INSERT_CHUNK`
    (image, pose) pairs bound the memory; the two folds fill in parallel threads.
    """
    box = images_ft.shape[1]
    dev = bps[0].device
    rows_all, ranks_all = np.nonzero(post)  # row-major order: each particle's poses together
    chunk = INSERT_CHUNK if dev.is_cpu else 8 * INSERT_CHUNK  # a GPU wants more threads per launch
    for s in range(0, len(rows_all), chunk):
        r, k = rows_all[s:s + chunk], ranks_all[s:s + chunk]
        centred = images_ft[dev.asarray(r)] * shift_phase(box, -res.candidate_shifts_px[r, k], xp=dev.xp)
        p = dev.asarray(post[r, k].astype(np.float32))
        jobs = []
        for f in (0, 1):
            sel = folds[r] == f
            if sel.any():
                rf, sel_d = dev.asarray(r[sel]), dev.asarray(sel)
                jobs.append((bps[f], (centred[sel_d], None if ctfs is None else ctfs[rf],
                                      res.candidate_rotations[r[sel], k[sel]]),
                             {"weights": weights[None] * p[sel_d, None, None], "symmetry": sym_ops}))
        insert_concurrently(jobs)


def align_and_backproject(particles, idx_all, fold_of, reference, sigma2, cfg, search, rng, sym_ops,
                          prev_rotations=None, prev_shifts_px=None, device=CPU):
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
    device : backend.Device
        Where the search and the backprojection run; the fold accumulators stay there.
    """
    glob_, step, r_max = search
    box = particles.box_px
    xp = device.xp
    proj = Projector(reference, pad=cfg.pad, device=device)
    bps = [BackProjector(box, pad=cfg.pad, device=device), BackProjector(box, pad=cfg.pad, device=device)]
    m = len(idx_all)
    out_rot, out_shift = np.zeros((m, 3, 3)), np.zeros((m, 2))
    pmax, n_poses = np.ones(m), np.ones(m, np.int64)
    resid, inv_s2 = np.zeros(box // 2 + 1), None
    if sigma2.any():
        inv_s2 = (1.0 / np.maximum(sigma2, 1e-6 * sigma2.max())).astype(np.float32)
    metric = "likelihood" if inv_s2 is not None else "cc"
    # Coarse shifts every 2 px (RELION's offset step at oversampling 1), halved per level.
    gpu = {} if device.is_cpu else {"image_batch": 1024, "local_batch": 512}
    params = SearchParams(coarse_step_deg=cfg.initial_step_deg, final_step_deg=step,
                          shift_range_px=cfg.shift_range_px, shift_step_px=2.0, metric=metric,
                          final_top_k=cfg.posterior_poses, max_batch_bytes=device.batch_bytes(), **gpu)
    shell_of_pixel = device.asarray(fourier.shell_index_rfft((box, box)))
    for b, images in ImageBatches(particles, idx_all, cfg.batch, device):
        idx = idx_all[b]
        images_ft = fourier.rfft2_c(images)
        ctfs = particle_ctfs(particles, idx, xp=xp)
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
        pred = proj.project(res.rotations) * shift_phase(box, res.shifts_px, xp=xp)
        if ctfs is not None:
            pred = pred * ctfs
        resid += shell_power(images_ft - fit_scale(images_ft, pred), box) * len(idx)
        # Backproject, noise-weighted, into the particle's fold: at the best pose, or (likelihood
        # metric) at each of the top-K candidates weighted by its posterior probability.
        w = device.asarray(weights_shell)[xp.minimum(shell_of_pixel, len(weights_shell) - 1)]
        post = (res.posterior(cfg.min_posterior) if cfg.marginalize and metric == "likelihood"
                else np.eye(1, res.candidate_scores.shape[1]).repeat(len(idx), 0))
        pmax[b] = post.max(axis=1)
        n_poses[b] = (post > 0).sum(axis=1)
        _backproject_poses(bps, fold_of[b], images_ft, ctfs, res, post, w, sym_ops)
    return HalfSetStep(idx=idx_all, rotations=out_rot, shifts_px=out_shift, folds=bps,
                       sigma2=resid / max(m, 1), pmax=pmax, n_poses=n_poses)
