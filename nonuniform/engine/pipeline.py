"""Operations on whole particle sets shared by the CLI and the refinement driver.

Images are streamed from their memory-mapped stacks in batches, so memory depends on the box size,
not on the number of particles.
"""

import logging

import numpy as np

from . import fourier, geometry, symmetry
from .ctf import compute_ctf
from .errors import InputError
from .particles import read_images
from .project import RELION_ORIGIN_SIGN, shift_phase
from .reconstruct import BackProjector, insert_concurrently

logger = logging.getLogger(__name__)


def particle_rotations(particles, indices=None):
    """RELION pose matrices of (a subset of) the particles, shape (k, 3, 3)."""
    sel = slice(None) if indices is None else indices
    return geometry.euler_to_matrix(particles.rot_deg[sel], particles.tilt_deg[sel], particles.psi_deg[sel])


def image_shifts_px(particles, indices=None):
    """Translation (x, y) in px from the centred projection to the particle image, shape (k, 2).

    RELION's origin offsets (``rlnOriginXAngst/YAngst``) with RELION's sign (pinned by
    ``tests/test_relion.py``): the particle image is the projection translated by
    ``RELION_ORIGIN_SIGN * origin``.
    """
    sel = slice(None) if indices is None else indices
    s = np.stack([particles.shift_x_ang[sel], particles.shift_y_ang[sel]], axis=-1)
    return RELION_ORIGIN_SIGN * s / particles.pixel_size_ang


def particle_ctfs(particles, indices, box=None, xp=np):
    """CTFs (k, N, N//2+1) of the selected particles (ones when the STAR file has no CTF)."""
    box = particles.box_px if box is None else box
    if not particles.has_ctf:
        return None
    i = indices
    return compute_ctf(box, particles.pixel_size_ang, particles.defocus_u_ang[i], particles.defocus_v_ang[i],
                       particles.defocus_angle_deg[i], particles.voltage_kv[i], particles.cs_mm[i],
                       particles.amplitude_contrast_frac[i], particles.phase_shift_deg[i],
                       particles.bfactor_ang2[i], particles.ctf_scale[i], xp=xp)


def centred_image_spectra(particles, indices):
    """rfft spectra of the selected images with their origin offsets undone, (k, N, N//2+1)."""
    images = read_images(particles, indices)
    ft = fourier.rfft2_c(images)
    return ft * shift_phase(particles.box_px, -image_shifts_px(particles, indices))


def half_set_labels(particles, rng):
    """Half-set label (1 or 2) per particle: ``rlnRandomSubset`` when present, else a seeded split.

    Raises InputError when the STAR file's labels are not all 1 or 2.
    """
    subset = np.asarray(particles.random_subset)
    if subset.size and np.all(subset == 0):
        labels = np.ones(len(particles), np.int64)
        labels[rng.permutation(len(particles))[: len(particles) // 2]] = 2
        return labels
    bad = ~np.isin(subset, (1, 2))
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"{particles.star_path}: rlnRandomSubset of particle #{i + 1} is {subset[i]}; "
                         "expected 1 or 2 for every particle")
    return subset.astype(np.int64)


def reconstruct_particles(particles, sym="C1", halves=False, pad=2, batch=256, seed=0, progress=None):
    """Direct reconstruction at the poses of a STAR file (like ``relion_reconstruct --ctf``).

    Parameters
    ----------
    particles : Particles
    sym : str
        Point group (RELION name).
    halves : bool
        Also return the two half-set maps (split by ``rlnRandomSubset`` or at random with ``seed``).
    pad : int
        Fourier oversampling.
    batch : int
        Images per batch.
    progress : callable, optional
        Called with the number of particles done after each batch.

    Returns
    -------
    dict
        ``{"map": (N, N, N) float32}`` and, with ``halves``, ``"half1"``, ``"half2"``.
    """
    ops = symmetry.symmetry_matrices(sym)
    n = len(particles)
    # Two accumulators even without halves (alternate particles), filled in parallel threads.
    labels = half_set_labels(particles, np.random.default_rng(seed)) if halves else np.arange(n) % 2 + 1
    bps = {h: BackProjector(particles.box_px, pad=pad) for h in np.unique(labels)}
    for start in range(0, n, batch):
        idx = np.arange(start, min(n, start + batch))
        ft = centred_image_spectra(particles, idx)
        ctf = particle_ctfs(particles, idx)
        rots = particle_rotations(particles, idx)
        jobs = []
        for h, bp in bps.items():
            sel = labels[idx] == h
            if sel.any():
                jobs.append((bp, (ft[sel], None if ctf is None else ctf[sel], rots[sel]), {"symmetry": ops}))
        insert_concurrently(jobs)
        if progress is not None:
            progress(len(idx))
    out = {}
    if halves:
        for h, bp in bps.items():
            out[f"half{h}"] = bp.reconstruct()
    total = None
    for bp in bps.values():
        d, w = bp.hermitian_accumulators()
        total = (d, w) if total is None else (total[0] + d, total[1] + w)
    out["map"] = next(iter(bps.values())).reconstruct(data=total[0], weight=total[1])
    return out
