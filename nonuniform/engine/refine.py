"""Gold-standard 3-D refinement driver (uniform or non-uniform regularization).

Per iteration and per half-set h (docs/architecture.rst, "One iteration"):

1. E-step (:mod:`.estep`): pose of every particle of h against h's regularized reference
   (:mod:`.pose_search`): global coarse-to-fine searches first, local searches once the poses settle.
2. M-step (:mod:`.estep`): CTF- and noise-weighted backprojection into two fold accumulators per half-set (the
   half-map is their sum); the per-shell noise model σ² of h is re-estimated from the residuals.
3. Regularize: ``uniform`` (RELION-style τ² = SSNR/w̄ from the FSC) or ``nonuniform`` (the
   cross-validated adaptive filter of :mod:`.regularize`, fit on h's folds only).
4. Masked, phase-randomization-corrected gold-standard FSC of the raw half-maps; the alignment
   frequency limit and angular step follow the resolution; stop when the resolution and poses stop
   improving, then extra final passes.

Half-set independence. In ``nonuniform`` mode the two half-set refinements are kept apart, as in
the NU refinement paper: every decision about half-set h (its alignment frequency limit, angular
step, global/local switch, the threshold and low-pass of the dynamic mask of its reference) comes
from h's own data, its resolution being that of its own two folds (:func:`own_resolution`), and
nothing of the other half reaches it except the frequencies below ``gsfsc_split_ang`` that the
references share (0 disables even that). The joint gold-standard FSC is reported and decides only
when the run stops. ``uniform`` mode shares the resolution and the search plan between the halves
(as RELION).

All state lives in :class:`~.refine_state.State`, checkpointed atomically after every iteration together
with the maps the outputs are made of (:class:`~.refine_state.IterationMaps`), so ``resume`` continues a
killed or finished run and gives the result of an uninterrupted one, bit for bit (per-iteration seeds, and
the outputs are always written from the checkpoint, never recomputed).
"""

import dataclasses
import logging
import math
import os
import time

import numpy as np

from . import filters, fourier, fsc, geometry, masks, symmetry
from .backend import CPU, asnumpy, open_gpu
from .errors import InputError
from .distributed import world
from .estep import align_and_backproject, batches_of
from .fourier import resample_map
from .io import check_output_folder, make_output_folder, read_mask, read_volume, write_json, write_mrc
from .particles import check_images, load_particles, save_particles, stage_stacks
from .pipeline import half_set_labels
from .refine_state import (IterationMaps, RefineConfig, State, kill_point, load_checkpoint,  # noqa: F401
                           load_maps, remove_checkpoints, save_checkpoint, write_iteration_fsc)
from .regularize import MAP_GAIN_POWER, nu_filter

logger = logging.getLogger(__name__)

MIN_PARTICLES_PER_HALF = 50
# What write_outputs writes into the output folder (config.json and checkpoints/ aside).
OUTPUT_FILES = ("half1.mrc", "half2.mrc", "mask.mrc", "map.mrc", "map_sharp.mrc", "map_nu.mrc", "cutoff_half1.mrc",
                "cutoff_half2.mrc", "fsc.csv", "fsc.png", "particles.star", "summary.json")
# Smallest box refine accepts (px): the FSC, the NU filter's candidate cutoffs and the frequency
# limits of the pose search need a handful of shells; simulate has the same floor.
MIN_BOX = 16
# Resolution elements (diameter / initial low-pass) below which the starting map is close to a blob
# and the first global search may not orient the images. Measured (protein phantom, SNR 0.5, 400
# particles): a 77 Å particle from a 30 Å start (2.6 elements) ends at a 117° median pose error,
# from 20 Å (3.8) at 4°; the demo (102 Å from 30 Å, 3.4) and bench_refine (123 Å, 4.1) converge.
MIN_START_ELEMENTS = 3.0
# A --mask must enclose denser than average density of the low-passed reference: the mask-weighted
# mean density over the mean inside the particle's sphere must reach this. Measured on the tiny test
# set (box 32 at 3 Å, starts low-passed to 20-40 Å): masks made from the truth (threshold 0.2 or 0.5,
# 0-6 Å extension) give 4.0-15.2; the same masks moved 24 Å give 0.98-1.8, 36 Å (off the particle) 0.03-0.40.
MIN_MASK_DENSITY_RATIO = 1.0


# ----------------------------------------------------------------------------------------------
# helpers


def step_for_resolution(res_ang, diameter_ang):
    """Angular step (deg) that moves the particle's edge by about the resolution: 360/ceil(πD/d)."""
    return 360.0 / math.ceil(math.pi * diameter_ang / max(res_ang, 1e-3))


def search_radius_px(res_ang, box, apix):
    """Alignment frequency limit (Fourier px): a margin beyond the current resolution shell."""
    shell = box * apix / res_ang
    return float(min(box / 2.0, 1.2 * shell + 3))


def own_resolution(fold1, fold2, mask, apix, rng):
    """Resolution (Å) of one half-set from its own two folds alone.

    The mask-corrected FSC of the folds (each a quarter of the data) is brought to half-set size
    with the Spearman-Brown formula, FSC' = 2 FSC / (1 + FSC) (the FSC of two maps of twice the
    particles each), then read at 0.143 like the gold-standard FSC.
    """
    c = np.clip(fsc.corrected_fsc(fold1, fold2, mask, apix, rng).corrected, -0.99, 1.0)
    return fsc.resolution_at(2 * c / (1 + c), fold1.shape[0], apix)


def join_low_resolution(ref1, ref2, apix, split_ang):
    """Replace both references' frequencies below ``1/split_ang`` by the halves' average."""
    if not split_ang:
        return ref1, ref2
    k = fourier.radial_freq_rfft(ref1.shape) / apix
    low = (k < 1.0 / split_ang).astype(np.float32)
    f1, f2 = fourier.rfftn_c(ref1), fourier.rfftn_c(ref2)
    avg = (f1 + f2) / 2
    out = [fourier.irfftn_c(f * (1 - low) + avg * low, ref1.shape).astype(np.float32) for f in (f1, f2)]
    return out[0], out[1]


def _degrees(value):
    """An angle for the log: ``12.34°``, or ``–`` when there is none (None)."""
    return "–" if value is None else f"{value:.2f}°"


# ----------------------------------------------------------------------------------------------
# driver


class Refinement:
    """A gold-standard refinement writing into ``out_dir``.

    Parameters
    ----------
    particles_star : str
        RELION STAR file (poses are ignored: global search from the reference).
    reference_mrc : str
        Initial model; resampled (with a warning) if its box or pixel size differ.
    out_dir : str
    config : RefineConfig
    resume : bool
        Continue from the last checkpoint in ``out_dir``.
    overwrite : bool
        Allow a non-empty ``out_dir`` without ``resume``.
    """

    def __init__(self, particles_star, reference_mrc, out_dir, config, resume=False, overwrite=False):
        self.cfg = config
        self.out = os.path.abspath(out_dir)
        config.validate()
        self.comm = world()
        self.sym_ops = symmetry.symmetry_matrices(config.sym)
        self._on_root(lambda: self._check_out_dir(resume, overwrite))
        self.device = CPU if config.gpu is None else open_gpu(config.gpu)
        self.particles = load_particles(particles_star, require_ctf=True)
        p = self.particles
        self.box, self.apix = p.box_px, p.pixel_size_ang
        if self.box % 2 or self.box < MIN_BOX:
            raise InputError(f"the images of {particles_star} are {self.box} px: refine needs an even box of at least "
                             f"{MIN_BOX} px (as RELION; re-extract, or crop or pad the images)")
        if config.diameter_ang is None:
            config.diameter_ang = 0.8 * self.box * self.apix
        elements = config.diameter_ang / config.initial_lowpass_ang
        if elements < MIN_START_ELEMENTS and not resume:
            logger.warning("the initial low-pass (%.0f Å) leaves only %.1f resolution elements across the %.0f Å "
                           "particle: the first pose search may not orient the images; a start at %.0f Å or finer "
                           "(--initial-lowpass-ang) is safer", config.initial_lowpass_ang, elements,
                           config.diameter_ang, config.diameter_ang / 4)
        self.sphere = masks.soft_sphere(self.box, min(config.diameter_ang / 2 / self.apix, self.box / 2 - 3), 3.0)
        self.user_mask = self._read_mask(config.mask_path) if config.mask_path else None
        self.ref0 = self._initial_reference(reference_mrc)
        if self.user_mask is not None:
            self._check_mask_covers_reference(config.mask_path, reference_mrc)
        halves = half_set_labels(p, np.random.default_rng(config.seed))
        counts = [int((halves == h).sum()) for h in (1, 2)]
        if min(counts) < MIN_PARTICLES_PER_HALF:
            raise InputError(f"too few particles: half-sets have {counts[0]} and {counts[1]}; need at least "
                             f"{MIN_PARTICLES_PER_HALF} per half-set")
        self.halves = halves
        # Last: one pass over the stacks, after the quick checks (each rank reads its share).
        def stage_and_check():
            if config.scratch:
                stage_stacks(self.particles, config.scratch)
            check_images(self.particles, part=(self.comm.rank, self.comm.size))

        self._on_root(lambda: None, share=stage_and_check)
        if self.comm.is_root:
            self._create_out_dir()
        self.comm.barrier()

    # -- set-up -----------------------------------------------------------------------------

    def _on_root(self, check, share=None):
        """Run ``check`` on rank 0 (and ``share`` on every rank); the first InputError of any rank is
        raised on every rank, so all ranks stop together before anything is written."""
        message = None
        try:
            if self.comm.is_root:
                check()
            if share is not None:
                share()
        except InputError as exc:
            message = str(exc)
        message = self.comm.first(message)
        if message is not None:
            raise InputError(message)

    def _check_out_dir(self, resume, overwrite):
        """Refuse a non-empty folder (unless resuming) or one that cannot be created, before any work."""
        check_output_folder(self.out, must_be_empty=not (resume or overwrite),
                            hint="; use --continue to resume or --overwrite to start again")

    def _create_out_dir(self):
        make_output_folder(self.out)
        make_output_folder(os.path.join(self.out, "checkpoints"))

    def _header_pixel_size(self, path, apix, box, what):
        """The pixel size of a map for this refinement, by one rule for the reference and the mask.

        A header pixel size of 0 means "not set": the map is taken to be at the particles' pixel size
        (warned) if it has the particles' box, else refused (its physical size is unknown). A negative
        or non-finite one is refused.
        """
        if not (math.isfinite(apix) and apix >= 0):
            raise InputError(f"{what} {path} has an invalid pixel size {apix} in its header")
        if apix > 0:
            return apix
        if box != self.box:
            raise InputError(f"{what} {path} has no pixel size in its header (0) and a box of {box} px, the "
                             f"particles' is {self.box} px: set its pixel size (e.g. relion_image_handler --angpix)")
        logger.warning("%s %s has no pixel size in its header (0): taken to be the particles' %.4f Å", what, path,
                       self.apix)
        return self.apix

    def _read_mask(self, path):
        """The static ``--mask``: finite, values in [0, 1], on the particles' grid (box and pixel size)."""
        m, am = read_mask(path)
        am = self._header_pixel_size(path, am, m.shape[0], "mask")
        if m.shape != (self.box,) * 3 or abs(am - self.apix) > 1e-3 * self.apix:
            raise InputError(f"mask {path} is {m.shape[0]} px at {am:.4f} Å/px; the particles are {self.box} px at "
                             f"{self.apix:.4f} Å/px (resample the mask onto their grid)")
        return m

    def _check_mask_covers_reference(self, mask_path, reference_path):
        """Refuse a mask that leaves out most of the (low-passed) reference: it misses the particle."""
        dens = np.clip(self.ref0, 0, None)
        inside = float((dens * self.user_mask).sum() / self.user_mask.sum())
        overall = float((dens * self.sphere).sum() / self.sphere.sum())
        if not inside >= MIN_MASK_DENSITY_RATIO * overall:
            raise InputError(f"mask {mask_path} misses the particle: the reference {reference_path} (low-passed to "
                             f"{self.cfg.initial_lowpass_ang:g} Å) is less dense inside it ({inside:.3g}) than on "
                             f"average over the particle ({overall:.3g}); the mask must be made in the "
                             f"reference's frame")

    def _initial_reference(self, path):
        vol, apix = read_volume(path, "reference")
        apix = self._header_pixel_size(path, apix, vol.shape[0], "reference")
        if vol.shape[0] != self.box or abs(apix - self.apix) > 1e-3 * self.apix:
            logger.warning("reference %s is %d px at %.4f Å/px; particles are %d px at %.4f Å/px: resampling",
                           path, vol.shape[0], apix, self.box, self.apix)
            vol = resample_map(vol, apix, self.box, self.apix)
        if float(vol.std()) == 0:
            raise InputError(f"reference {path} is constant")
        return (filters.lowpass_cosine(vol, self.apix, self.cfg.initial_lowpass_ang) * self.sphere).astype(np.float32)

    def _initial_state(self):
        n = len(self.particles)
        rng = np.random.default_rng([self.cfg.seed, 1])
        folds = np.zeros(n, np.int64)
        for h in (1, 2):
            idx = np.flatnonzero(self.halves == h)
            folds[idx[rng.permutation(len(idx))[: len(idx) // 2]]] = 1
        return State(iteration=0, rotations=np.tile(np.eye(3), (n, 1, 1)), shifts_px=np.zeros((n, 2)),
                     halves=self.halves, folds=folds, references=np.stack([self.ref0, self.ref0]),
                     sigma2=np.zeros((2, self.box // 2 + 1)), resolution_ang=self.cfg.initial_lowpass_ang,
                     converged_at=0, history=[], half_resolution_ang=np.full(2, self.cfg.initial_lowpass_ang))

    # -- one iteration ----------------------------------------------------------------------

    @property
    def _independent(self):
        """NU mode keeps the half-sets' refinements independent: every decision about half-set h
        (search plan, masks) comes from h's own data. Uniform mode shares them, as RELION."""
        return self.cfg.mode == "nonuniform"

    def _own(self, st, h, key):
        """What half-set ``h`` knows of ``key`` after the last iteration: its own value (``<key>_half``)
        in NU mode, else (or in checkpoints without it) the joint one."""
        if key == "resolution_ang":
            own = st.half_resolution_ang
            return float(own[h - 1]) if self._independent and own is not None else st.resolution_ang
        last = st.history[-1]
        return last[key + "_half"][h - 1] if self._independent and key + "_half" in last else last[key]

    def _search_plan(self, st, h):
        """Global or local search, angular step and frequency limit of half-set ``h`` for the coming
        iteration."""
        cfg = self.cfg
        res = self._own(st, h, "resolution_ang")
        step = max(cfg.min_step_deg, step_for_resolution(res, cfg.diameter_ang) / 2)
        r_max = search_radius_px(res, self.box, self.apix)
        # Global searches (as cryoSPARC) until the poses settle: at least a few iterations, then
        # until fewer than 15 % of the particles jump by more than two angular steps; local
        # searches afterwards.
        if st.iteration < cfg.min_global_iterations or not st.history:
            glob_ = True
        else:
            glob_ = (self._own(st, h, "search") == "global" and st.iteration < cfg.max_global_iterations
                     and self._own(st, h, "fraction_large_change") > 0.15)
        return glob_, step, r_max

    def _e_and_m_step(self, st, it, plans):
        """Pose search + backprojection of both halves (``plans[h]``: h's search plan): new poses, fold
        accumulators, noise model."""
        rot, shift = st.rotations.copy(), st.shifts_px.copy()
        pmax, n_poses = np.ones(len(rot)), np.ones(len(rot), np.int64)
        accum, sigma2 = {}, np.zeros_like(st.sigma2)
        comm = self.comm
        for h in (1, 2):
            idx = np.flatnonzero(st.halves == h)
            # Rank r takes the half-set's batches r, r + K, ...: each batch's result depends on the
            # batch alone (its own random stream), so the sum does not depend on K.
            mine = list(range(comm.rank, len(batches_of(idx, self.cfg.batch)), comm.size))
            r = align_and_backproject(self.particles, idx, st.folds[idx], st.references[h - 1], st.sigma2[h - 1],
                                      self.cfg, plans[h], (self.cfg.seed, it, 7, h), self.sym_ops,
                                      prev_rotations=st.rotations[idx], prev_shifts_px=st.shifts_px[idx],
                                      device=self.device, batches=mine).allreduce(comm)
            rot[idx], shift[idx], pmax[idx], n_poses[idx] = r.rotations, r.shifts_px, r.pmax, r.n_poses
            accum[h], sigma2[h - 1] = r.folds, r.sigma2
            kill_point("estep", it)
        return rot, shift, accum, sigma2, pmax, n_poses

    def _masks(self, avg, res_ang, envelope=False):
        """Solvent mask for the FSC and the references: user mask, dynamic mask, or soft sphere.

        The dynamic mask thresholds the map low-passed to the current resolution; with ``envelope``
        (NU mode's references) to at least ``reference_mask_lowpass_ang``, so that it follows the
        particle's envelope and keeps smooth, low-density parts such as a detergent belt, whose
        peaks at high resolution fall below the threshold (the NU filter regularizes them itself).
        """
        cfg = self.cfg
        if self.user_mask is not None:
            return self.user_mask
        if res_ang > cfg.dynamic_mask_start_ang:
            return self.sphere
        lowpass = max(res_ang, 2.5 * self.apix, cfg.reference_mask_lowpass_ang if envelope else 0.0)
        m = masks.auto_mask(avg, self.apix, threshold_frac=cfg.dynamic_mask_threshold,
                            extend_ang=cfg.dynamic_mask_near_ang,
                            soft_ang=cfg.dynamic_mask_far_ang - cfg.dynamic_mask_near_ang,
                            lowpass_ang=lowpass)
        return (m * self.sphere).astype(np.float32)

    def _regularize_half(self, st, it, h, bp, folds, half_map, fsc_curve):
        """Masked reference of half-set ``h`` for iteration ``it + 1``: ``(reference, cutoff map or None,
        own resolution or None, seconds)`` (:meth:`_regularize`). The mask is made from h's own half-map
        (gold-standard: in NU mode nothing of the other half reaches it, apart from the joined low
        frequencies)."""
        t0 = time.time()
        own_mask = self._masks(half_map, self._own(st, h, "resolution_ang"), envelope=self._independent)
        ref, cutoff, res_h = self._regularize(bp, folds, half_map, fsc_curve, own_mask,
                                              np.random.default_rng([self.cfg.seed, it, h]))
        kill_point("regularize", it)
        return ref * own_mask, cutoff, res_h, time.time() - t0

    def _regularize(self, bp, folds, half_map, fsc_curve_half, mask, rng):
        """Reference of one half-set for the next iteration (uniform or NU).

        ``folds`` are the half-set's two Hermitian-completed (data, weight) accumulators and
        ``half_map`` its raw (unregularized) reconstruction; ``bp`` provides the grid geometry. The
        regularization runs where the accumulators are (the GPU with ``--gpu``); maps come back to
        the host.
        Returns the reference and, in NU mode, the cutoff map and the half-set's own resolution
        (:func:`own_resolution` of its folds in its own ``mask``; phase randomization from ``rng``),
        else None and None.
        """
        cfg = self.cfg
        (d1, w1), (d2, w2) = folds
        if cfg.mode == "uniform":
            n_sh = self.box // 2 + 1
            xp = bp.device.xp
            sh = xp.minimum(bp.shell_index(), n_sh).ravel()
            wmean = asnumpy(xp.bincount(sh, weights=(w1 + w2).ravel(), minlength=n_sh + 1)[:n_sh]) / \
                np.maximum(asnumpy(xp.bincount(sh, minlength=n_sh + 1)[:n_sh]), 1)
            f = np.clip(fsc_curve_half, 1e-3, 0.999)
            tau2 = f / (1 - f) / np.maximum(wmean, 1e-30)  # RELION: τ² = SSNR / mean weight
            return asnumpy(bp.reconstruct(tau2=tau2, data=d1 + d2, weight=w1 + w2)), None, None
        q1 = bp.reconstruct(data=d1, weight=w1)
        q2 = bp.reconstruct(data=d2, weight=w2)
        r = nu_filter(q1, q2, half_map=bp.device.asarray(half_map), pixel_size_ang=self.apix, awf=cfg.awf,
                      order=cfg.nu_order, n_cutoffs=cfg.nu_cutoffs, kind=cfg.nu_filter_type,
                      objective=cfg.nu_objective)
        q1, q2 = asnumpy(q1), asnumpy(q2)
        return asnumpy(r.filtered), asnumpy(r.cutoff_ang), own_resolution(q1, q2, mask, self.apix, rng)

    def run(self, resume=False):
        try:
            return self._run(resume)
        except Exception as exc:
            if self.comm.size == 1:
                raise
            # The other ranks would wait in the next collective for ever: end them all.
            logger.critical("rank %d of %d failed (%s: %s); the run ends, and resumes with --continue from its last "
                            "checkpoint", self.comm.rank, self.comm.size, type(exc).__name__, exc, exc_info=True)
            self.comm.abort(1)

    def _run(self, resume):
        cfg, root = self.cfg, self.comm.is_root
        st = load_checkpoint(self.out, len(self.particles)) if resume else None
        if st is None:
            st = self._initial_state()
            if root:
                # An earlier run's files (--overwrite) go first: its checkpoints must never be resumed
                # from by mistake, nor its outputs (e.g. NU maps after a uniform run) be left standing.
                remove_checkpoints(self.out)
                for name in OUTPUT_FILES:
                    if os.path.isfile(os.path.join(self.out, name)):
                        os.remove(os.path.join(self.out, name))
                self._write_config()
        else:
            logger.info("resuming after iteration %d (%.2f Å)", st.iteration, st.resolution_ang)
        if self.comm.size > 1:
            logger.info("%d MPI ranks share each half-set's batches of %d particles", self.comm.size, cfg.batch)
        self.comm.barrier()
        while True:
            done = st.converged_at and st.iteration >= st.converged_at + cfg.extra_final_passes
            if done or st.iteration >= cfg.max_iterations:
                break
            st, maps = self.iterate(st)
            if root:
                save_checkpoint(self.out, st, maps)
        if root:
            kill_point("outputs_start", st.iteration)
            self.write_outputs(st)
        self.comm.barrier()
        return st

    def iterate(self, st):
        """One iteration from state ``st``: the next :class:`State` and the :class:`IterationMaps` it made."""
        cfg = self.cfg
        it = st.iteration + 1
        t0 = time.time()
        plans = {h: self._search_plan(st, h) for h in (1, 2)}
        rot, shift, accum, sigma2, pmax, n_poses = self._e_and_m_step(st, it, plans)
        t_estep = time.time() - t0
        comm = self.comm
        # Rank 0 makes the new state (FSC, masks, checkpoint) and sends it to the others. In NU mode the
        # half-sets' regularizations are independent: with 2 ranks or more, half-set 2's runs on rank 1.
        split = self._independent and comm.size >= 2
        mine = {0: (1,) if split else (1, 2), 1: (2,) if split else ()}.get(comm.rank, ())
        if not mine:
            return comm.bcast(None), None
        halves_raw, folds, regs = {}, {}, {}
        for h in mine:
            folds[h] = [b.hermitian_accumulators(copy=False) for b in accum[h]]
            (d1, w1), (d2, w2) = folds[h]
            halves_raw[h] = asnumpy(accum[h][0].reconstruct(data=d1 + d2, weight=w1 + w2))
            if self._independent:
                regs[h] = self._regularize_half(st, it, h, accum[h][0], folds[h], halves_raw[h], None)
        if not comm.is_root:
            comm.send((halves_raw[2], regs[2]), dest=0)
            return comm.bcast(None), None
        if split:
            halves_raw[2], regs[2] = comm.recv(source=1)
        stats = {"mean_max_posterior": float(pmax.mean()), "poses_per_particle": float(n_poses.mean())}
        avg = (halves_raw[1] + halves_raw[2]) / 2
        mask = self._masks(avg, st.resolution_ang)
        fres = fsc.corrected_fsc(halves_raw[1], halves_raw[2], mask, self.apix, np.random.default_rng([cfg.seed, it]))
        res = fres.resolution_corrected_ang
        if not self._independent:  # uniform: τ² from the joint FSC
            for h in (1, 2):
                regs[h] = self._regularize_half(st, it, h, accum[h][0], folds[h], halves_raw[h], fres.corrected)
        refs, extras, own_res = [], {}, []
        for h in (1, 2):
            ref, cutoff, res_h, _ = regs[h]
            refs.append(ref)
            own_res.append(res if res_h is None else res_h)
            if cutoff is not None:
                extras[f"cutoff_half{h}"] = cutoff
        refs[0], refs[1] = join_low_resolution(refs[0], refs[1], self.apix, cfg.gsfsc_split_ang)
        steps = [plans[h][1] for h in (1, 2)]
        if it > 1:
            d = geometry.angular_distance_deg(rot, st.rotations)
            change, median_change = float(np.mean(d)), float(np.median(d))
            large = d > 2 * np.take(steps, st.halves - 1)  # each particle against its half-set's step
            frac_large = [float(np.mean(large[st.halves == h])) for h in (1, 2)]
            frac_all = float(np.mean(large))
        else:  # no previous poses: no pose change (null in the JSON files, "–" in the log)
            change = median_change = None
            frac_large, frac_all = [1.0, 1.0], 1.0
        searches = ["global" if plans[h][0] else "local" for h in (1, 2)]
        prev_best = min([h["resolution_ang"] for h in st.history], default=np.inf)
        converged_at = st.converged_at
        # Converged (RELION's criteria): local searches, no resolution gain over the best so far,
        # and poses stable (median change below one angular step).
        if (not converged_at and searches == ["local", "local"] and res >= prev_best - 1e-6
                and median_change is not None and median_change <= max(steps)):
            converged_at = it
        dt = time.time() - t0
        # Joint figures (all particles; the coarser half-set's plan), then each half-set's own.
        entry = {"iteration": it, "resolution_ang": res, "resolution_unmasked_ang": fres.resolution_unmasked_ang,
                 "mean_pose_change_deg": change, "median_pose_change_deg": median_change,
                 "fraction_large_change": frac_all,
                 "angular_step_deg": max(steps), "search_r_max_px": max(plans[h][2] for h in (1, 2)),
                 "search": "global" if "global" in searches else "local",
                 "resolution_ang_half": own_res, "fraction_large_change_half": frac_large,
                 "angular_step_deg_half": steps, "search_r_max_px_half": [plans[h][2] for h in (1, 2)],
                 "search_half": searches, **stats, "seconds": dt,
                 # pose search + backprojection, and each half-set's regularization (mask, filter)
                 "estep_seconds": t_estep, "regularize_seconds_half": [regs[h][3] for h in (1, 2)]}
        logger.info("iteration %d: %.2f Å, mean pose change %s (median %s), %s search at %s, %.0f s",
                    it, res, _degrees(change), _degrees(median_change), "/".join(dict.fromkeys(searches)),
                    "/".join(dict.fromkeys(f"{x:.2f}°" for x in steps)), dt)
        maps = IterationMaps(halves=halves_raw, mask=mask, fsc=fres, extras=extras)
        new = State(iteration=it, rotations=rot, shifts_px=shift, halves=st.halves, folds=st.folds,
                    references=np.stack(refs).astype(np.float32), sigma2=sigma2, resolution_ang=res,
                    converged_at=converged_at, history=st.history + [entry], pmax=pmax, n_poses=n_poses,
                    half_resolution_ang=np.array(own_res))
        return self.comm.bcast(new), maps

    # -- outputs ----------------------------------------------------------------------------

    def _write_config(self):
        import sys

        from .. import __version__

        write_json(os.path.join(self.out, "config.json"),
                   {"version": __version__, "argv": sys.argv, "particles": self.particles.star_path,
                    **dataclasses.asdict(self.cfg)})

    def write_outputs(self, st):
        """Write the outputs of the checkpointed iteration ``st.iteration`` (from its checkpoint only)."""
        out, apix = self.out, self.apix
        maps = load_maps(out, st.iteration)
        h1, h2 = maps.halves[1], maps.halves[2]
        fres = maps.fsc
        write_mrc(os.path.join(out, "half1.mrc"), h1, apix)
        write_mrc(os.path.join(out, "half2.mrc"), h2, apix)
        write_mrc(os.path.join(out, "mask.mrc"), maps.mask, apix)
        kill_point("outputs", st.iteration)
        avg = (h1 + h2) / 2
        full = filters.apply_radial_filter(avg, filters.fsc_weighting(fres.corrected, zero_after_below=1e-4))
        write_mrc(os.path.join(out, "map.mrc"), full, apix)
        try:
            sharp, bfac = filters.auto_sharpen(avg, apix, fres.corrected, fres.resolution_corrected_ang)
        except InputError as exc:  # too few shells between 10 Å and the resolution for a Guinier fit
            logger.warning("no automatic B-factor (%s): map_sharp.mrc is the FSC-weighted map", exc)
            sharp, bfac = full, None
        write_mrc(os.path.join(out, "map_sharp.mrc"), sharp, apix)
        for name, vol in maps.extras.items():
            write_mrc(os.path.join(out, f"{name}.mrc"), vol, apix)
        if self.cfg.mode == "nonuniform":
            # No mask: forcing the lowest cutoff outside it (nu_filter's mask) would cut away the parts
            # of a detergent belt it misses and fill the solvent with the lowest cutoff's blur; the
            # cross-validation itself takes solvent to low cutoffs (belt error vs truth 0.066 unmasked,
            # 0.095 masked, FSC-weighted map 0.081, on the Scipion demo's data).
            dev = self.device.asarray
            r = nu_filter(dev(h1), dev(h2), half_map=dev(avg), pixel_size_ang=apix, awf=self.cfg.awf,
                          order=self.cfg.nu_order, n_cutoffs=self.cfg.nu_cutoffs, kind=self.cfg.nu_filter_type,
                          objective=self.cfg.nu_objective, gain_power=MAP_GAIN_POWER)
            write_mrc(os.path.join(out, "map_nu.mrc"), asnumpy(r.filtered), apix)
        write_iteration_fsc(os.path.join(out, "fsc.csv"), fres)
        try:
            from .plots import plot_fsc

            plot_fsc(os.path.join(out, "fsc.png"), fres.curves(), fres.resolutions_ang(), apix, self.box,
                     title=f"Gold-standard FSC of the two half-maps, iteration {st.iteration}")
        except ImportError:  # pragma: no cover - matplotlib is an install requirement
            logger.warning("matplotlib missing: no fsc.png")
        rot, tilt, psi = geometry.matrix_to_euler(st.rotations)
        origin_ang = -st.shifts_px * apix
        save_particles(os.path.join(out, "particles.star"), self.particles, rot_deg=rot, tilt_deg=tilt,
                       psi_deg=psi, shift_x_ang=origin_ang[:, 0], shift_y_ang=origin_ang[:, 1],
                       random_subset=st.halves,
                       extra_columns=None if st.pmax is None else {"rlnMaxValueProbDistribution": st.pmax,
                                                                   "rlnNrOfSignificantSamples": st.n_poses})
        summary = {"resolution_ang": fres.resolution_corrected_ang,
                   "resolution_unmasked_ang": fres.resolution_unmasked_ang,
                   "bfactor_ang2": bfac, "iterations": st.iteration,
                   # the iterations' time, summed over every session of a resumed run
                   "wall_seconds": sum(h["seconds"] for h in st.history),
                   "mode": self.cfg.mode, "n_particles": len(self.particles), "history": st.history}
        write_json(os.path.join(out, "summary.json"), summary)
        logger.info("final resolution %.2f Å after %d iterations -> %s", fres.resolution_corrected_ang,
                    st.iteration, out)
