"""What a refinement is configured with (:class:`RefineConfig`) and what it carries from one
iteration to the next (:class:`State`), with the per-iteration checkpoints that make ``--continue``
give the result of an uninterrupted run.

A checkpoint is ``checkpoints/iterNNN.npz`` (arrays, written atomically) plus ``iterNNN.json``
(the history); the newest one is the state to resume from.
"""

import dataclasses
import glob
import json
import os

import numpy as np

from .errors import InputError
from .io import atomic_write, write_json


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
    mask_path: str | None = None
    dynamic_mask_threshold: float = 0.2
    dynamic_mask_near_ang: float = 6.0
    dynamic_mask_far_ang: float = 14.0
    dynamic_mask_start_ang: float = 12.0
    batch: int = 256
    pad: int = 2


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


def checkpoint_path(out_dir, iteration):
    return os.path.join(out_dir, "checkpoints", f"iter{iteration:03d}.npz")


def save_checkpoint(out_dir, st):
    """Write ``st`` as the checkpoint of its iteration (arrays atomically, then the history)."""
    path = checkpoint_path(out_dir, st.iteration)
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, iteration=st.iteration, rotations=st.rotations, shifts_px=st.shifts_px,
                     halves=st.halves, folds=st.folds, references=st.references, sigma2=st.sigma2,
                     resolution_ang=st.resolution_ang, converged_at=st.converged_at,
                     **({} if st.pmax is None else {"pmax": st.pmax, "n_poses": st.n_poses}))
    write_json(path[:-4] + ".json", {"history": st.history})


def load_checkpoint(out_dir, n_particles):
    """The newest checkpoint in ``out_dir`` as a :class:`State`, or None if there is none."""
    files = sorted(glob.glob(os.path.join(out_dir, "checkpoints", "iter*.npz")))
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
                 n_poses=z["n_poses"] if "n_poses" in z.files else None)
