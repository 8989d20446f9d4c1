"""Contrast transfer function, RELION 3.1 formula and sign (positive near k = 0).

``CTF(k) = -sin(gamma(k)) * exp(-B |k|^2 / 4) * scale`` with
``gamma = -pi λ Δf(α) |k|² + (pi/2) Cs λ³ |k|⁴ - φ - atan(Q0 / sqrt(1 - Q0²))``, Δf(α) the astigmatic
defocus along the azimuth α of k (underfocus positive, ``Δf(α) = U cos²(α-θ) + V sin²(α-θ)``),
λ the relativistic electron wavelength, Cs in Å, φ the phase shift. Frequencies are on the rfft grid
of the image: axis -1 is x, axis -2 is y.
"""

import numpy as np

from .fourier import freq_axes_rfft


def electron_wavelength_ang(voltage_kv):
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    v = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return 12.2643247 / np.sqrt(v * (1 + 0.978466e-6 * v))


def compute_ctf(box_px, pixel_size_ang, defocus_u_ang, defocus_v_ang, defocus_angle_deg, voltage_kv,
                cs_mm, amplitude_contrast_frac, phase_shift_deg=0.0, bfactor_ang2=0.0, scale=1.0,
                xp=np):
    """CTFs of a batch of particles on the rfft grid of a ``box_px`` image.

    Parameters
    ----------
    box_px : int
        Image size N.
    pixel_size_ang : float
        Pixel size in Å.
    defocus_u_ang, defocus_v_ang, defocus_angle_deg, voltage_kv, cs_mm, amplitude_contrast_frac,
    phase_shift_deg, bfactor_ang2, scale : float or ndarray, shape (n,)
        RELION CTF parameters per particle (rlnDefocusU/V, rlnDefocusAngle, rlnVoltage,
        rlnSphericalAberration, rlnAmplitudeContrast, rlnPhaseShift, rlnCtfBfactor, rlnCtfScalefactor).
    xp : module
        numpy or cupy: where the result is made.

    Returns
    -------
    ndarray, shape (n, N, N//2 + 1), float32
        CTF values in Fourier space (rfft layout, zero frequency at [0, 0]).
    """
    params = np.broadcast_arrays(*(np.atleast_1d(np.asarray(p, dtype=np.float64)) for p in (
        defocus_u_ang, defocus_v_ang, defocus_angle_deg, voltage_kv, cs_mm, amplitude_contrast_frac,
        phase_shift_deg, bfactor_ang2, scale)))
    du, dv, ang, kv, cs, q0, phase, bfac, sc = (xp.asarray(p)[:, None, None] for p in params)
    ky, kx = freq_axes_rfft((box_px, box_px), xp)
    ky = ky.astype(xp.float64) / pixel_size_ang
    kx = kx.astype(xp.float64) / pixel_size_ang
    lam = xp.asarray(electron_wavelength_ang(params[3]))[:, None, None]
    u2 = kx * kx + ky * ky
    theta = xp.deg2rad(ang)
    c, s = xp.cos(theta), xp.sin(theta)
    # Projection of k on the astigmatism axes: Δf(α) |k|² = U (k·e_u)² + V (k·e_v)².
    ku = kx * c + ky * s
    kv_ = -kx * s + ky * c
    defocus_k2 = du * ku * ku + dv * kv_ * kv_
    gamma = (-np.pi * lam * defocus_k2 + 0.5 * np.pi * (cs * 1e7) * lam ** 3 * u2 * u2
             - xp.deg2rad(phase) - xp.arctan(q0 / xp.sqrt(1 - q0 * q0)))
    ctf = -xp.sin(gamma) * xp.exp(-bfac * u2 / 4.0) * sc
    return ctf.astype(xp.float32)
