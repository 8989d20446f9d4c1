"""Shared fixtures: a small simulated particle set written as RELION STAR + MRC stack."""

import numpy as np
import pytest

from nonuniform.engine import ctf, fourier, geometry, io, particles, phantoms, project, simulate


def blob_phantom(n, rng, n_blobs=40, sigma_px=1.2, radius_frac=0.3):
    """Asymmetric sum of Gaussian blobs, origin at N//2 (fine detail up to ~Nyquist/2)."""
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    v = np.zeros((n, n, n), np.float32)
    for c in rng.uniform(-radius_frac * n, radius_frac * n, (n_blobs, 3)):
        v += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * sigma_px ** 2))
    return v


def simulate_star(folder, vol, n, apix, rng, noise_std=0.0, max_origin_px=3.0, subsets=True):
    """Write particles.mrcs + particles.star of ``vol`` seen at random poses (RELION image model)."""
    box = vol.shape[0]
    rots = geometry.random_rotations(n, rng)
    rot, tilt, psi = geometry.matrix_to_euler(rots)
    origin = rng.uniform(-max_origin_px, max_origin_px, (n, 2))
    du = rng.uniform(8000, 20000, n)
    dv = du - rng.uniform(0, 800, n)
    ang = rng.uniform(0, 180, n)
    c = ctf.compute_ctf(box, apix, du, dv, ang, 300, 2.7, 0.1)
    ft = project.Projector(vol).project(rots)
    ft = ft * c * project.shift_phase(box, project.RELION_ORIGIN_SIGN * origin)
    imgs = fourier.irfft2_c(ft, box).astype(np.float32)
    if noise_std:
        imgs += rng.normal(0, noise_std, imgs.shape).astype(np.float32)
    io.write_stack(str(folder / "particles.mrcs"), imgs, apix)
    names = [particles.image_name(i, "particles.mrcs") for i in range(n)]
    particles.write_particles_star(
        str(folder / "particles.star"), names, apix, box, 300, 2.7, 0.1, du, dv, ang,
        rot_deg=rot, tilt_deg=tilt, psi_deg=psi, shift_x_ang=origin[:, 0] * apix,
        shift_y_ang=origin[:, 1] * apix,
        random_subset=(np.arange(n) % 2 + 1) if subsets else None)
    return folder / "particles.star"


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """Box 48, 2 Å/px, 1500 noiseless particles with CTF, origins and half-set labels."""
    folder = tmp_path_factory.mktemp("small_dataset")
    rng = np.random.default_rng(42)
    vol = blob_phantom(48, rng)
    io.write_mrc(str(folder / "truth.mrc"), vol, 2.0)
    star = simulate_star(folder, vol, 1500, 2.0, rng)
    return {"folder": folder, "star": star, "truth": vol, "apix": 2.0}


def write_tiny_simulation(folder, n_particles, seed):
    """Protein phantom, box 32 at 3 Å/px, ``n_particles`` at SNR 0.5 written into ``folder``
    (particles.star/.mrcs, truth.mrc): a refinement iteration takes about a second."""
    rng = np.random.default_rng(seed)
    vol = phantoms.protein_phantom(32, 3.0, rng)
    sim = simulate.simulate_particles(vol, n_particles, 3.0, rng, snr=0.5)
    simulate.write_simulation(str(folder), sim, 3.0, vol)
    return folder
