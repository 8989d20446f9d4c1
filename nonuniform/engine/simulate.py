"""Particle-image simulation with ground truth, following RELION's image model.

The projection of the volume in pose ``A`` (pinned against ``relion_project``) is shifted so that
the particle content moves by **minus** its origin offset (``rlnOriginX/YAngst``), multiplied by
the CTF, and white Gaussian noise is added for the requested SNR. :func:`write_simulation` writes
the images, the truth and a RELION 3.1 STAR file with the true poses.
"""

import dataclasses
import logging
import os

import numpy as np

from . import ctf as ctf_mod
from . import fourier, geometry, project

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Particle images


@dataclasses.dataclass
class SimulatedParticles:
    """Simulated particle images with their ground truth (RELION conventions).

    Attributes
    ----------
    images : ndarray, shape (n, N, N), float32, real space
    rot_deg, tilt_deg, psi_deg : ndarray, shape (n,)
        RELION Euler angles of the true poses.
    shift_x_ang, shift_y_ang : ndarray, shape (n,)
        True origin offsets (``rlnOriginXAngst/YAngst``): the particle sits at minus these.
    defocus_u_ang, defocus_v_ang, defocus_angle_deg : ndarray, shape (n,)
    voltage_kv, cs_mm, amplitude_contrast_frac, bfactor_ang2, pixel_size_ang : float
    snr : float
        Requested SNR (``inf``: no noise).
    noise_sigma : float
        Standard deviation of the added white Gaussian noise (per pixel).
    signal_radius_px : float
        Radius of the centred disc over which the signal variance was measured.
    conformer : ndarray, shape (n,), int, or None
        Index of the rendered volume each particle was projected from (renderer input only).
    """

    images: np.ndarray
    rot_deg: np.ndarray
    tilt_deg: np.ndarray
    psi_deg: np.ndarray
    shift_x_ang: np.ndarray
    shift_y_ang: np.ndarray
    defocus_u_ang: np.ndarray
    defocus_v_ang: np.ndarray
    defocus_angle_deg: np.ndarray
    voltage_kv: float
    cs_mm: float
    amplitude_contrast_frac: float
    bfactor_ang2: float
    pixel_size_ang: float
    snr: float
    noise_sigma: float
    signal_radius_px: float
    conformer: np.ndarray = None

    def __len__(self):
        return len(self.images)


def _support_radius_px(vol, frac=0.01):
    """Radius (px) from the centre beyond which ``vol`` stays below ``frac`` of its peak."""
    n = vol.shape[0]
    c = np.arange(n) - n // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    big = vol > frac * vol.max()
    return float(r[big].max()) if big.any() else n / 2.0


def simulate_particles(volume_or_renderer, n, pixel_size_ang, rng, snr=0.05,
                       defocus_range_ang=(10000.0, 25000.0), astig_ang=500.0, max_shift_ang=None,
                       voltage_kv=300.0, cs_mm=2.7, amplitude_contrast_frac=0.1, bfactor_ang2=0.0,
                       n_conformers=32, chunk=256, return_clean=False):
    """Simulate cryo-EM particle images of a volume (or of a heterogeneous phantom).

    Image model (RELION's, checked against ``relion_project``): for pose ``A`` (uniform on SO(3)),
    origin ``o`` (px) and CTF ``C``, ``image = irfft2_c(C * shift(project(A), -o)) + noise``;
    i.e. the particle content sits at ``-o`` and the STAR origin ``o`` re-centres it.

    Noise is white Gaussian with one standard deviation for the whole data set, chosen so that
    ``SNR = mean_i var(signal_i over the particle disc) / sigma²``, where the particle disc is the
    centred circle of radius equal to the volume's support radius (density > 1 % of its peak)
    plus the largest shift. (The CTF spreads some signal outside the disc; that part is not
    counted.)

    Parameters
    ----------
    volume_or_renderer : ndarray (N, N, N) or callable
        A real-space volume, or a renderer ``f(rng) -> (N, N, N) volume`` (e.g. a
        :class:`MembranePhantom`): ``n_conformers`` volumes are drawn from it and each particle is
        projected from one of them chosen at random.
    n : int
        Number of particles.
    pixel_size_ang : float
        Pixel size in Å.
    rng : numpy.random.Generator
    snr : float
        Signal-to-noise ratio as defined above; ``numpy.inf`` adds no noise.
    defocus_range_ang : (float, float)
        Mean defocus drawn uniformly from this range (Å, underfocus positive).
    astig_ang : float
        ``defocus_u - defocus_v`` drawn uniformly from ``[0, astig_ang]``; astigmatism angle uniform
        in [0, 180) degrees.
    max_shift_ang : float, optional
        Origins uniform in ``[-max, max]`` along x and y; default 3 px.
    voltage_kv, cs_mm, amplitude_contrast_frac, bfactor_ang2 : float
        Optics (one optics group) and CTF envelope B-factor.
    n_conformers : int
        Number of volumes drawn from a renderer.
    chunk : int
        Particles projected at a time (bounds memory beside the output stack).
    return_clean : bool
        Also return the noise-free images, as ``(sim, clean)``.

    Returns
    -------
    SimulatedParticles, or (SimulatedParticles, ndarray (n, N, N) float32)
    """
    if callable(volume_or_renderer) and not isinstance(volume_or_renderer, np.ndarray):
        volumes = [np.asarray(volume_or_renderer(rng), dtype=np.float32) for _ in range(n_conformers)]
        conformer = rng.integers(0, len(volumes), n)
    else:
        volumes = [np.asarray(volume_or_renderer, dtype=np.float32)]
        conformer = None
    box = volumes[0].shape[0]
    if any(v.shape != (box,) * 3 for v in volumes):
        raise ValueError("simulate_particles needs cubic volumes of one size")
    if max_shift_ang is None:
        max_shift_ang = 3.0 * pixel_size_ang

    rots = geometry.random_rotations(n, rng)
    rot, tilt, psi = geometry.matrix_to_euler(rots)
    rots = geometry.euler_to_matrix(rot, tilt, psi)     # exactly the poses the STAR file will hold
    shifts_ang = rng.uniform(-max_shift_ang, max_shift_ang, (n, 2))
    mean_df = rng.uniform(defocus_range_ang[0], defocus_range_ang[1], n)
    astig = rng.uniform(0.0, astig_ang, n)
    du, dv = mean_df + astig / 2, mean_df - astig / 2
    dang = rng.uniform(0.0, 180.0, n)

    images = np.empty((n, box, box), dtype=np.float32)
    which = np.zeros(n, dtype=np.int64) if conformer is None else conformer
    for k, vol in enumerate(volumes):
        idx_k = np.nonzero(which == k)[0]
        if len(idx_k) == 0:
            continue
        proj = project.Projector(vol, pad=2)
        for s in range(0, len(idx_k), chunk):
            idx = idx_k[s:s + chunk]
            ft = proj.project(rots[idx])
            c = ctf_mod.compute_ctf(box, pixel_size_ang, du[idx], dv[idx], dang[idx], voltage_kv,
                                    cs_mm, amplitude_contrast_frac, 0.0, bfactor_ang2)
            ft = project.shift_images_ft(ft, project.RELION_ORIGIN_SIGN * shifts_ang[idx]
                                         / pixel_size_ang) * c
            images[idx] = fourier.irfft2_c(ft, box)

    radius = min(box / 2.0, max(_support_radius_px(v) for v in volumes)
                 + max_shift_ang / pixel_size_ang * np.sqrt(2))
    yy, xx = np.mgrid[:box, :box] - box // 2
    disc = xx ** 2 + yy ** 2 <= radius ** 2
    signal_var = sum(float(images[s:s + chunk][:, disc].astype(np.float64).var(axis=1).sum())
                     for s in range(0, n, chunk)) / n
    clean = images.copy() if return_clean else None
    if np.isinf(snr):
        sigma = 0.0
    else:
        if snr <= 0:
            raise ValueError(f"snr must be positive, got {snr}")
        sigma = float(np.sqrt(signal_var / snr))
        for s in range(0, n, chunk):
            images[s:s + chunk] += (sigma * rng.standard_normal(images[s:s + chunk].shape)).astype(np.float32)
    logger.info("simulated %d particles (box %d, %.3f Å/px, SNR %.3g, noise sigma %.4g)",
                n, box, pixel_size_ang, snr, sigma)
    sim = SimulatedParticles(
        images=images, rot_deg=rot, tilt_deg=tilt, psi_deg=psi,
        shift_x_ang=shifts_ang[:, 0], shift_y_ang=shifts_ang[:, 1],
        defocus_u_ang=du, defocus_v_ang=dv, defocus_angle_deg=dang, voltage_kv=float(voltage_kv),
        cs_mm=float(cs_mm), amplitude_contrast_frac=float(amplitude_contrast_frac),
        bfactor_ang2=float(bfactor_ang2), pixel_size_ang=float(pixel_size_ang), snr=float(snr),
        noise_sigma=sigma, signal_radius_px=float(radius), conformer=conformer)
    return (sim, clean) if return_clean else sim


def write_simulation(out_dir, sim, pixel_size_ang, truth_volume):
    """Write a simulated data set as RELION 3.1 files.

    Writes ``particles.mrcs`` (one stack), ``particles.star`` (optics + particles tables with the
    true poses, origins in Å, CTF parameters and ``rlnRandomSubset`` alternating 1, 2, 1, 2 ...;
    the particles are in random pose order already, so alternation is an unbiased split), and
    ``truth.mrc``. Every file is written atomically.

    Parameters
    ----------
    out_dir : str
        Destination folder (created if missing).
    sim : SimulatedParticles
    pixel_size_ang : float
        Pixel size in Å (MRC headers and the optics table).
    truth_volume : ndarray, shape (N, N, N)
        Ground-truth map.

    Returns
    -------
    dict
        Paths of the written files: ``stack``, ``star``, ``truth``.
    """
    from . import io

    os.makedirs(out_dir, exist_ok=True)
    n, box = sim.images.shape[0], sim.images.shape[-1]
    stack = os.path.join(out_dir, "particles.mrcs")
    star = os.path.join(out_dir, "particles.star")
    truth = os.path.join(out_dir, "truth.mrc")
    io.write_stack(stack, sim.images, pixel_size_ang)
    extra = {}
    if sim.bfactor_ang2:
        extra["rlnCtfBfactor"] = np.full(n, sim.bfactor_ang2)
    io.write_particles_star(
        star, [io.image_name(i, "particles.mrcs") for i in range(n)], pixel_size_ang, box,
        sim.voltage_kv, sim.cs_mm, sim.amplitude_contrast_frac, sim.defocus_u_ang, sim.defocus_v_ang,
        sim.defocus_angle_deg, rot_deg=sim.rot_deg, tilt_deg=sim.tilt_deg, psi_deg=sim.psi_deg,
        shift_x_ang=sim.shift_x_ang, shift_y_ang=sim.shift_y_ang,
        random_subset=1 + np.arange(n) % 2, extra_columns=extra)
    io.write_mrc(truth, truth_volume, pixel_size_ang)
    return {"stack": stack, "star": star, "truth": truth}
