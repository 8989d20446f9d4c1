"""CTF values against closed-form checks of the RELION formula (RELION cross-check: test_relion.py)."""

import numpy as np

from nonuniform.engine import ctf


def test_wavelength():
    # Standard relativistic values: 300 kV -> 0.019687 Å, 200 kV -> 0.025079 Å.
    assert abs(ctf.electron_wavelength_ang(300) - 0.019687) < 1e-6
    assert abs(ctf.electron_wavelength_ang(200) - 0.025079) < 1e-6


def test_ctf_origin_and_phase_plate():
    c = ctf.compute_ctf(64, 1.0, 15000, 15000, 0, 300, 2.7, 0.1)
    # At k = 0: -sin(-atan(Q0/sqrt(1-Q0²))) = Q0 (positive: RELION's sign).
    assert abs(c[0, 0, 0] - 0.1) < 1e-6
    c = ctf.compute_ctf(64, 1.0, 15000, 15000, 0, 300, 2.7, 0.0, phase_shift_deg=90)
    assert abs(c[0, 0, 0] - 1.0) < 1e-6


def test_ctf_first_zero_and_astigmatism():
    n, apix, q0, kv = 256, 1.0, 0.0, 300.0
    lam = ctf.electron_wavelength_ang(kv)
    du, dv = 20000.0, 10000.0
    c = ctf.compute_ctf(n, apix, du, dv, 0.0, kv, 0.0, q0)[0]
    # Cs = 0, Q0 = 0: CTF = sin(pi λ Δf k²); first zero at k = 1/sqrt(λ Δf).
    kx = np.arange(n // 2 + 1) / (n * apix)
    expect_x = np.sin(np.pi * lam * du * kx ** 2)  # along x the defocus is U (angle 0)
    assert np.allclose(c[0], expect_x, atol=1e-5)
    ky = np.fft.fftfreq(n, apix)
    expect_y = np.sin(np.pi * lam * dv * ky ** 2)  # along y it is V
    assert np.allclose(c[:, 0], expect_y, atol=1e-5)
    # Rotating the astigmatism by 90° swaps the axes.
    c90 = ctf.compute_ctf(n, apix, du, dv, 90.0, kv, 0.0, q0)[0]
    assert np.allclose(c90[0], np.sin(np.pi * lam * dv * kx ** 2), atol=1e-5)


def test_ctf_bfactor_and_batch():
    c = ctf.compute_ctf(32, 2.0, [10000, 20000], [10000, 20000], 0, 300, 2.7, 0.1, bfactor_ang2=[0, 100])
    assert c.shape == (2, 32, 17) and c.dtype == np.float32
    c0 = ctf.compute_ctf(32, 2.0, 20000, 20000, 0, 300, 2.7, 0.1)[0]
    k2 = (np.fft.fftfreq(32, 2.0)[:, None] ** 2 + np.fft.rfftfreq(32, 2.0)[None] ** 2)
    assert np.allclose(c[1], c0 * np.exp(-100 * k2 / 4), atol=1e-6)
