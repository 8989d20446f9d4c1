"""The `nonuniform` refinement engine: numpy/scipy (+ optional cupy, mpi4py), no Scipion imports.

The public API is re-exported here by name and imported on first use (PEP 562), so that
``import nonuniform.engine`` stays light::

    from nonuniform.engine import RefineConfig, Refinement, nu_filter, reconstruct_particles

Modules (one concept each): ``backend``, ``fourier``, ``geometry``, ``symmetry``, ``ctf``,
``project`` (central slices), ``reconstruct`` (backprojection), ``scoring`` (E-step GEMM scoring),
``pose_search`` (global and local searches), ``estep`` (E- and M-step of one half-set),
``refine_state`` (configuration, state, checkpoints), ``refine`` (the refinement driver),
``regularize`` (non-uniform and uniform filters), ``fsc``, ``filters``, ``masks``, ``locres``
(+ ``localfsc``), ``io``, ``star``, ``particles`` (+ ``particles_write``), ``pipeline``,
``phantoms``, ``membrane``, ``simulate``, ``plots``, ``demo``, ``cli`` (+ ``cli_maps``).
"""

import importlib

_API = {
    # refinement
    "RefineConfig": "refine_state", "Refinement": "refine",
    "SearchParams": "pose_search", "PoseResult": "pose_search", "global_search": "pose_search",
    "local_search": "pose_search", "score_poses": "scoring",
    # projection, reconstruction, regularization, validation
    "Projector": "project", "BackProjector": "reconstruct", "insert_concurrently": "reconstruct",
    "reconstruct_particles": "pipeline", "nu_filter": "regularize", "uniform_fsc_filter": "regularize",
    "fsc_curve": "fsc", "corrected_fsc": "fsc", "resolution_at": "fsc", "local_resolution": "locres",
    "lowpass_cosine": "filters", "butterworth": "filters", "auto_sharpen": "filters", "soft_sphere": "masks",
    # conventions
    "compute_ctf": "ctf", "euler_to_matrix": "geometry", "matrix_to_euler": "geometry", "so3_grid": "geometry",
    "symmetry_matrices": "symmetry", "rfftn_c": "fourier", "irfftn_c": "fourier", "rfft2_c": "fourier",
    # data
    "load_particles": "particles", "read_images": "particles", "save_particles": "particles",
    "read_mrc": "io", "write_mrc": "io", "read_star": "star", "write_star": "star", "atomic_write": "io",
    "protein_phantom": "phantoms", "membrane_phantom": "membrane", "simulate_particles": "simulate",
    "write_simulation": "simulate", "run_demo": "demo", "InputError": "errors",
}

__all__ = sorted(_API)


def __getattr__(name):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
