"""What a refinement is configured with (:class:`RefineConfig`) and what it carries from one
iteration to the next (:class:`State`), with the per-iteration checkpoints that make ``--continue``
give the result of an uninterrupted run.

The checkpoint of iteration NNN is, in ``checkpoints/``:

- ``iterNNN_maps.npz``: what the outputs are made of (raw half-maps, solvent mask, NU cutoff maps and
  the FSC curves and resolutions), so that the outputs of a finished or resumed run are written from
  checkpointed state only and never recomputed;
- ``iterNNN_fsc.csv``: that iteration's gold-standard FSC curves (the layout of the final ``fsc.csv``);
- ``iterNNN.json``: the per-iteration history;
- ``iterNNN.npz``: the state (poses, references, noise model...), written last: its presence commits
  the checkpoint, and the newest one is the state to resume from.

Every file is written atomically. Only the newest ``iterNNN_maps.npz`` is kept (one is a few
box-sized maps); the state, history and FSC files of every iteration stay.

For the tests of exact resume, the environment variable ``NONUNIFORM_KILL_AT=POINT:ITERATION``
makes the process kill itself with SIGKILL at a named point (:func:`kill_point`).
"""

import dataclasses
import glob
import json
import logging
import math
import os
import re
import signal

import numpy as np

from . import fsc
from .errors import InputError, require
from .io import atomic_write, write_json

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RefineConfig:
    """Resolved refinement parameters (written to ``config.json``)."""

    mode: str = "nonuniform"
    sym: str = "C1"
    diameter_ang: float | None = None
    initial_lowpass_ang: float = 30.0
    gsfsc_split_ang: float = 20.0
    seed: int = 0
    max_iterations: int = 20
    extra_final_passes: int = 1
    min_global_iterations: int = 3
    max_global_iterations: int = 8
    initial_step_deg: float = 15.0
    min_step_deg: float = 0.9
    shift_range_px: float = 5.0
    marginalize: bool = True
    posterior_poses: int = 64
    min_posterior: float = 0.01
    awf: float = 3.0
    nu_order: int = 8
    nu_cutoffs: int = 50
    nu_filter_type: str = "butterworth"
    nu_objective: str = "risk-wiener"
    mask_path: str | None = None
    dynamic_mask_threshold: float = 0.2
    dynamic_mask_near_ang: float = 6.0
    dynamic_mask_far_ang: float = 14.0
    dynamic_mask_start_ang: float = 12.0
    # NU mode: the references' dynamic mask is made from the half-map low-passed to at least this (Å)
    reference_mask_lowpass_ang: float = 15.0
    batch: int = 256
    pad: int = 2
    gpu: int | None = None  # CUDA device id of the E/M-step (None: the host)
    scratch: str | None = None  # folder on a local disk the image stacks are copied to first

    def validate(self):
        """Check every parameter before anything is read or written: InputError naming the first bad one
        (by its command-line option where it has one). NaN fails every check."""
        from .regularize import check_nu_options
        from .symmetry import symmetry_matrices

        def ang(v):  # a finite positive length
            return math.isfinite(v) and v > 0

        require(self.mode in ("uniform", "nonuniform"), "--mode", self.mode, "'uniform' or 'nonuniform'")
        symmetry_matrices(self.sym)
        require(self.diameter_ang is None or ang(self.diameter_ang), "--diameter-ang", self.diameter_ang,
                "a positive number of Å")
        require(ang(self.initial_lowpass_ang), "--initial-lowpass-ang", self.initial_lowpass_ang,
                "a positive number of Å")
        require(self.gsfsc_split_ang == 0 or ang(self.gsfsc_split_ang), "--gsfsc-split-ang", self.gsfsc_split_ang,
                "0 (halves never joined) or a positive number of Å")
        require(self.seed >= 0, "--seed", self.seed, "a non-negative integer")
        require(self.max_iterations >= 1, "--iterations", self.max_iterations, "at least 1")
        require(self.extra_final_passes >= 0, "--extra-final-passes", self.extra_final_passes, "0 or more")
        require(self.posterior_poses >= 1, "--posterior-poses", self.posterior_poses, "at least 1")
        require(0 <= self.min_posterior < 1, "--min-posterior", self.min_posterior, "in [0, 1)")
        check_nu_options(self.awf, self.nu_order, self.nu_cutoffs, self.nu_filter_type, self.nu_objective,
                         ("--awf", "--nu-order", "--nu-cutoffs", "--nu-filter-type", "--nu-objective"))
        # Parameters without a command-line option (set through the Python API or config files).
        require(0 <= self.min_global_iterations <= self.max_global_iterations, "min_global_iterations",
                self.min_global_iterations, f"in [0, max_global_iterations = {self.max_global_iterations}]")
        for name in ("initial_step_deg", "min_step_deg", "dynamic_mask_start_ang", "dynamic_mask_far_ang",
                     "reference_mask_lowpass_ang"):
            require(ang(getattr(self, name)), name, getattr(self, name), "a positive number")
        require(math.isfinite(self.shift_range_px) and self.shift_range_px >= 0, "shift_range_px",
                self.shift_range_px, "0 or more")
        require(0 < self.dynamic_mask_threshold < 1, "dynamic_mask_threshold", self.dynamic_mask_threshold,
                "in (0, 1)")
        require(0 <= self.dynamic_mask_near_ang < self.dynamic_mask_far_ang, "dynamic_mask_near_ang",
                self.dynamic_mask_near_ang, f"in [0, dynamic_mask_far_ang = {self.dynamic_mask_far_ang})")
        require(self.batch >= 1, "--batch", self.batch, "at least 1")
        require(self.pad >= 1, "pad", self.pad, "at least 1")
        require(self.gpu is None or self.gpu >= 0, "--gpu", self.gpu, "a CUDA device id (0, 1, ...)")


@dataclasses.dataclass
class State:
    """Everything a refinement needs to continue (one checkpoint per finished iteration)."""

    iteration: int
    rotations: np.ndarray  # (n, 3, 3)
    shifts_px: np.ndarray  # (n, 2) image translations (RELION origin = -t)
    halves: np.ndarray  # (n,) 1 or 2
    folds: np.ndarray  # (n,) 0 or 1 within each half
    references: np.ndarray  # (2, N, N, N) regularized references for the next E-step
    sigma2: np.ndarray  # (2, N//2 + 1) noise power per shell, rfft2_c units; 0 = not estimated yet
    resolution_ang: float
    converged_at: int  # iteration at which convergence was declared (0: not yet)
    history: list
    pmax: np.ndarray | None = None  # (n,) largest posterior probability of each particle's poses
    n_poses: np.ndarray | None = None  # (n,) number of poses it was backprojected at
    half_resolution_ang: np.ndarray | None = None  # (2,) each half-set's own resolution (NU mode: from its folds)


@dataclasses.dataclass
class IterationMaps:
    """What one iteration gives the outputs: raw half-maps, solvent mask, FSC, NU cutoff maps."""

    halves: dict  # {1: (N, N, N), 2: (N, N, N)} unregularized half-maps
    mask: np.ndarray  # (N, N, N) solvent mask of the FSC
    fsc: fsc.FscResult
    extras: dict  # name -> (N, N, N) map written as NAME.mrc (NU: cutoff_half1, cutoff_half2)


def kill_point(name, iteration):
    """Kill this process with SIGKILL if ``NONUNIFORM_KILL_AT`` is ``name:iteration``, or
    ``name:iteration:rank`` and this is that MPI rank (tests only)."""
    from .distributed import launched_rank

    if os.environ.get("NONUNIFORM_KILL_AT") in (f"{name}:{iteration}", f"{name}:{iteration}:{launched_rank()}"):
        logger.warning("NONUNIFORM_KILL_AT=%s:%d: killing this process", name, iteration)
        os.kill(os.getpid(), signal.SIGKILL)


def checkpoint_path(out_dir, iteration, suffix=".npz"):
    """``checkpoints/iterNNN<suffix>``, ``suffix`` one of :data:`CHECKPOINT_SUFFIXES`: ``.npz`` (state),
    ``.json`` (history), ``_maps.npz`` (maps of the outputs), ``_fsc.csv`` (FSC curves)."""
    return os.path.join(out_dir, "checkpoints", f"iter{iteration:03d}{suffix}")


def checkpoint_files(out_dir, suffix=".npz"):
    """The checkpoint files of one kind in ``out_dir``, oldest first, as ``(iteration, path)``."""
    pattern = re.compile(r"iter(\d{3,})" + re.escape(suffix) + "$")
    found = []
    for path in glob.glob(os.path.join(out_dir, "checkpoints", "iter*")):
        m = pattern.fullmatch(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


CHECKPOINT_SUFFIXES = (".npz", ".json", "_maps.npz", "_fsc.csv")


def remove_checkpoints(out_dir):
    """Delete every checkpoint file in ``out_dir`` (a run starting afresh over an earlier one)."""
    for suffix in CHECKPOINT_SUFFIXES:
        for _, path in checkpoint_files(out_dir, suffix):
            os.remove(path)


def _fsc_arrays(res):
    """The fields of an :class:`~.fsc.FscResult` as npz entries ``fsc_<field>`` (None stored as -1)."""
    out = {}
    for f in dataclasses.fields(res):
        v = getattr(res, f.name)
        if f.name == "randomize_from_shell" and v is None:
            v = -1
        elif f.name == "warnings":
            v = np.array(v, dtype=str)
        out[f"fsc_{f.name}"] = v
    return out


def _fsc_from_arrays(z):
    kw = {}
    for f in dataclasses.fields(fsc.FscResult):
        v = z[f"fsc_{f.name}"]
        if f.name == "warnings":
            kw[f.name] = tuple(str(w) for w in v)
        elif v.ndim:
            kw[f.name] = v
        elif f.name in ("box", "randomize_from_shell"):
            kw[f.name] = None if int(v) < 0 else int(v)
        else:
            kw[f.name] = float(v)
    return fsc.FscResult(**kw)


def save_checkpoint(out_dir, st, maps):
    """Write ``st`` and the ``maps`` of its iteration as that iteration's checkpoint.

    The maps, FSC curves and history are written first and the state last, each atomically, so a
    kill at any point leaves either a complete checkpoint or none (the previous one stays the newest).
    """
    it = st.iteration
    with atomic_write(checkpoint_path(out_dir, it, "_maps.npz")) as tmp, open(tmp, "wb") as f:
        np.savez(f, half1=maps.halves[1], half2=maps.halves[2], mask=maps.mask, **_fsc_arrays(maps.fsc),
                 **{f"extra_{k}": v for k, v in maps.extras.items()})
    write_iteration_fsc(checkpoint_path(out_dir, it, "_fsc.csv"), maps.fsc)
    write_json(checkpoint_path(out_dir, it, ".json"), {"history": st.history})
    kill_point("checkpoint", it)
    with atomic_write(checkpoint_path(out_dir, it)) as tmp, open(tmp, "wb") as f:
        np.savez(f, iteration=it, rotations=st.rotations, shifts_px=st.shifts_px,
                 halves=st.halves, folds=st.folds, references=st.references, sigma2=st.sigma2,
                 resolution_ang=st.resolution_ang, converged_at=st.converged_at,
                 **({} if st.pmax is None else {"pmax": st.pmax, "n_poses": st.n_poses}),
                 **({} if st.half_resolution_ang is None else {"half_resolution_ang": st.half_resolution_ang}))
    for old, path in checkpoint_files(out_dir, "_maps.npz"):
        if old < it:
            os.remove(path)


def write_iteration_fsc(path, res):
    """The FSC curves of ``res`` (:class:`~.fsc.FscResult`) as CSV, resolutions in the header."""
    fsc.write_fsc_csv(path, res.curves(), res.box, res.pixel_size_ang,
                      metadata={f"resolution_{k}_ang": f"{v:.4f}" for k, v in res.resolutions_ang().items()})


def load_maps(out_dir, iteration):
    """The :class:`IterationMaps` checkpointed with iteration ``iteration``."""
    path = checkpoint_path(out_dir, iteration, "_maps.npz")
    if not os.path.isfile(path):
        raise InputError(f"{path} is missing: the checkpoint of iteration {iteration} has no maps (made by an "
                         f"older version?); continue with --iterations {iteration + 1} to recompute them")
    with np.load(path) as z:
        return IterationMaps(halves={1: z["half1"], 2: z["half2"]}, mask=z["mask"], fsc=_fsc_from_arrays(z),
                             extras={k[len("extra_"):]: z[k] for k in z.files if k.startswith("extra_")})


def load_checkpoint(out_dir, n_particles):
    """The newest checkpoint in ``out_dir`` as a :class:`State`, or None if there is none."""
    files = [path for _, path in checkpoint_files(out_dir)]
    if not files:
        return None
    z = np.load(files[-1])
    with open(files[-1][:-4] + ".json") as f:
        history = json.load(f)["history"]
    if len(z["halves"]) != n_particles:
        raise InputError(f"checkpoint {files[-1]} is for {len(z['halves'])} particles, the STAR file has "
                         f"{n_particles}")
    return State(iteration=int(z["iteration"]), rotations=z["rotations"], shifts_px=z["shifts_px"],
                 halves=z["halves"], folds=z["folds"], references=z["references"], sigma2=z["sigma2"],
                 resolution_ang=float(z["resolution_ang"]), converged_at=int(z["converged_at"]),
                 history=history, pmax=z["pmax"] if "pmax" in z.files else None,
                 n_poses=z["n_poses"] if "n_poses" in z.files else None,
                 half_resolution_ang=z["half_resolution_ang"] if "half_resolution_ang" in z.files else None)
