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
    """What :func:`align_and_backproject` makes of some batches of one half-set's particles ``idx``.

    A sum: per-particle entries are zero for the particles of batches not processed, and the steps
    of disjoint sets of batches add (``+``, or :meth:`allreduce` across MPI ranks) to the step of
    their union, whatever the split (up to the order of the float64 sums).
    """

    idx: np.ndarray  # (m,) particle indices of the half-set
    rotations: np.ndarray  # (m, 3, 3) best poses
    shifts_px: np.ndarray  # (m, 2)
    folds: list  # the two fold BackProjectors (the half-map is their sum)
    noise_sum: np.ndarray  # (N//2 + 1,) residual power per shell, summed over the particles
    count: int  # particles processed
    pmax: np.ndarray  # (m,) largest posterior probability
    n_poses: np.ndarray  # (m,) number of poses backprojected

    @property
    def sigma2(self):
        """Noise power per shell at the new poses (mean over the processed particles)."""
        return self.noise_sum / max(self.count, 1)

    def _arrays(self):
        return (self.rotations, self.shifts_px, self.noise_sum, self.pmax, self.n_poses)

    def __add__(self, other):
        if not np.array_equal(self.idx, other.idx):
            raise ValueError("steps of different half-sets do not add")
        (r, t, ns, pm, npo), (r2, t2, ns2, pm2, npo2) = self._arrays(), other._arrays()
        folds = []
        for a, b in zip(self.folds, other.folds):
            f = BackProjector(a.box, pad=a.pad, device=a.device)
            folds.append(f.add(a).add(b))
        return HalfSetStep(idx=self.idx, rotations=r + r2, shifts_px=t + t2, folds=folds, noise_sum=ns + ns2,
                           count=self.count + other.count, pmax=pm + pm2, n_poses=npo + npo2)

    def allreduce(self, comm):
        """Sum this step over the ranks of ``comm`` (:mod:`.distributed`), in place."""
        for a in self._arrays():
            comm.allreduce_sum(a)
        for f in self.folds:
            comm.allreduce_sum(f.data)
            comm.allreduce_sum(f.weight)
            f.count = int(comm.sum_int(f.count))
        self.count = int(comm.sum_int(self.count))
        return self


def batches_of(idx_all, size):
    """The half-set's particles in consecutive batches of ``size``: the units of work (and of the
    random streams) that ranks share out, so results do not depend on the number of ranks."""
    return [np.arange(s, min(len(idx_all), s + size)) for s in range(0, len(idx_all), size)]


def batch_rng(seed_key, idx_all, rows):
    """Random generator of one batch: from the iteration's key and the batch's first particle."""
    return np.random.default_rng([*seed_key, int(idx_all[rows[0]])])


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


def align_and_backproject(particles, idx_all, fold_of, reference, sigma2, cfg, search, seed_key, sym_ops,
                          prev_rotations=None, prev_shifts_px=None, device=CPU, batches=None):
    """One half-set's E- and M-step, over all its batches or the given ones.

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
    seed_key : tuple of int
        Key of the iteration's random streams, e.g. (seed, iteration, half-set): each batch draws
        from ``batch_rng(seed_key, ...)``.
    sym_ops : (S, 3, 3)
    device : backend.Device
        Where the search and the backprojection run; the fold accumulators stay there.
    batches : list of int, optional
        Which of ``batches_of(idx_all, cfg.batch)`` to process (default all); see :class:`HalfSetStep`.
    """
    glob_, step, r_max = search
    box = particles.box_px
    xp = device.xp
    proj = Projector(reference, pad=cfg.pad, device=device)
    bps = [BackProjector(box, pad=cfg.pad, device=device), BackProjector(box, pad=cfg.pad, device=device)]
    m = len(idx_all)
    out_rot, out_shift = np.zeros((m, 3, 3)), np.zeros((m, 2))
    pmax, n_poses = np.zeros(m), np.zeros(m, np.int64)
    blocks = batches_of(idx_all, cfg.batch)
    blocks = blocks if batches is None else [blocks[i] for i in batches]
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
    count = 0
    for b, images in ImageBatches(particles, [idx_all[rows] for rows in blocks], device):
        b = blocks[b]
        idx = idx_all[b]
        count += len(idx)
        rng = batch_rng(seed_key, idx_all, b)
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
    return HalfSetStep(idx=idx_all, rotations=out_rot, shifts_px=out_shift, folds=bps, noise_sum=resid,
                       count=count, pmax=pmax, n_poses=n_poses)
