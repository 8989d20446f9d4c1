"""Phantoms and particle simulation: determinism, positivity, centring, heterogeneity, SNR, image model."""

import shutil
import subprocess

import mrcfile
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from nonuniform.engine import filters, geometry, io, phantoms, simulate
from nonuniform.engine import membrane as membrane_mod

BOX, APIX = 64, 2.0


def centre_of_mass_px(vol):
    """Density-weighted centre (x, y, z) in px relative to voxel N//2."""
    return phantoms.centre_of_mass_ang(vol, 1.0)


def radius_grid(n):
    c = np.arange(n) - n // 2
    return np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)


@pytest.fixture(scope="module")
def protein():
    return phantoms.protein_phantom(BOX, APIX, np.random.default_rng(0))


@pytest.fixture(scope="module")
def membrane():
    return membrane_mod.membrane_phantom(BOX, APIX, np.random.default_rng(1))


def test_protein_phantom_deterministic_positive_centred(protein):
    again = phantoms.protein_phantom(BOX, APIX, np.random.default_rng(0))
    other = phantoms.protein_phantom(BOX, APIX, np.random.default_rng(1))
    assert protein.dtype == np.float32 and protein.shape == (BOX,) * 3
    assert np.array_equal(protein, again)
    assert not np.allclose(protein, other)
    assert protein.min() >= 0 and protein.max() == pytest.approx(1.0)
    # The atoms' weighted centroid is exactly 0 and each Gaussian is rendered symmetrically
    # (out to 3.5 sigma around its true centre), so the sampled centre of mass is off only by
    # sampling/truncation effects (measured ~1e-4 px); 0.05 px leaves a wide margin.
    assert np.allclose(centre_of_mass_px(protein), 0, atol=0.05)
    # Fits inside 0.8 x box/2: atoms are kept 3.5 sigma inside that radius and rendered no further.
    assert protein[radius_grid(BOX) > 0.8 * BOX / 2].max() == 0


def _high_low_power_ratio(vol):
    """Mean power at 0.38-0.42 cycles/px (5 Å at 2 Å/px) over mean power at 0.04-0.06 cycles/px."""
    ft = np.abs(np.fft.rfftn(vol)) ** 2
    n = vol.shape[0]
    k = np.sqrt(np.fft.fftfreq(n)[:, None, None] ** 2 + np.fft.fftfreq(n)[None, :, None] ** 2
                + np.fft.rfftfreq(n)[None, None, :] ** 2)
    return ft[(k > 0.38) & (k < 0.42)].mean() / ft[(k > 0.04) & (k < 0.06)].mean()


def test_protein_phantom_has_fine_detail(protein):
    # Measured ratios: 1.0e-3 to 1.5e-3 for seeds 0-2 (pseudo-atoms add up incoherently at high
    # frequency); the same maps low-passed to 8 Å give 0.8e-4 to 1.2e-4. 3e-4 separates the two
    # by a factor >= 2.5 on either side.
    assert _high_low_power_ratio(protein) > 3e-4
    assert _high_low_power_ratio(filters.gaussian_lowpass(protein, APIX, 8.0)) < 3e-4


def test_membrane_phantom_components(membrane):
    again = membrane_mod.membrane_phantom(BOX, APIX, np.random.default_rng(1))
    assert np.array_equal(membrane.consensus(), again.consensus())
    for part in (membrane.core, membrane.belt, membrane.flexible):
        assert part.dtype == np.float32 and part.shape == (BOX,) * 3 and part.min() >= 0
    truth = membrane.truth()
    assert truth.min() >= 0
    # The consensus map is shifted so that its centre of mass is the box centre (the same
    # sampling argument as for the protein phantom: 0.05 px). The truth averages the flexible
    # domain over +-angles, which moves its centre of mass only to second order in the angle:
    # measured 0.03 px; 0.2 px tolerance.
    assert np.allclose(centre_of_mass_px(membrane.consensus()), 0, atol=0.05)
    assert np.allclose(centre_of_mass_px(truth), 0, atol=0.2)
    # Inside 0.8 x box/2: atoms stay 3.5 sigma inside it and the belt torus reaches 0.75 of the
    # usable radius, so only the belt's low-pass tails could cross (measured maximum outside: 0 for
    # boxes 32-128 and 3 seeds); 1 % of the peak bounds those tails.
    assert truth[radius_grid(BOX) > 0.8 * BOX / 2].max() < 0.01 * truth.max()


def test_membrane_render_varies_belt_and_flexible_only(membrane):
    a = membrane.render(np.random.default_rng(3), belt_scale=0.5, flex_angle_deg=0.0)
    b = membrane.render(np.random.default_rng(4), belt_scale=0.5, flex_angle_deg=0.0)
    belt_a = a - membrane.core - membrane.flexible
    belt_b = b - membrane.core - membrane.flexible
    # Belts of two particles differ by a sizeable fraction (perturbation std 0.5 of the mean).
    assert np.linalg.norm(belt_a - belt_b) > 0.2 * np.linalg.norm(membrane.belt)
    # ... and are zero wherever the mean belt is (up to float32 rounding of the sums).
    assert np.abs(belt_a[membrane.belt == 0]).max() < 1e-6
    # The same rng gives the same particle.
    assert np.array_equal(a, membrane.render(np.random.default_rng(3), 0.5, 0.0))
    # belt_scale 0: the mean belt exactly.
    assert np.array_equal(membrane.render(np.random.default_rng(3), 0.0, 0.0), membrane.consensus())
    # The flexible domain swings: it changes, keeps its mass (rigid motion; 1 % covers
    # resampling of the atoms on the grid), and the core does not move.
    f10 = membrane.render_flexible(10.0)
    assert np.linalg.norm(f10 - membrane.flexible) > 0.3 * np.linalg.norm(membrane.flexible)
    assert f10.sum() == pytest.approx(membrane.flexible.sum(), rel=0.01)
    c = membrane.render(np.random.default_rng(3), 0.0, 10.0)
    assert np.allclose(c - f10, membrane.core + membrane.belt, atol=1e-6)


def test_membrane_local_bandlimit(membrane):
    lab = membrane.regions()
    res = membrane.local_bandlimit_ang()
    nyq = 2 * APIX
    for region in (membrane_mod.REGION_CORE, membrane_mod.REGION_BELT, membrane_mod.REGION_FLEXIBLE):
        assert (lab == region).sum() > 100
    assert np.all(np.isnan(res[lab == membrane_mod.REGION_SOLVENT]))
    assert np.all(res[lab == membrane_mod.REGION_CORE] == nyq)
    assert np.all(res[lab == membrane_mod.REGION_BELT] == membrane.belt_resolution_ang)
    flex = res[lab == membrane_mod.REGION_FLEXIBLE]
    # Intermediate: at least Nyquist, coarser on average than the core, finer than the belt.
    assert flex.min() >= nyq and nyq < np.median(flex) < membrane.belt_resolution_ang


def test_simulate_snr_and_metadata(protein):
    n, snr = 200, 0.1
    sim, clean = simulate.simulate_particles(protein, n, APIX, np.random.default_rng(2), snr=snr,
                                             return_clean=True, chunk=64)
    assert sim.images.shape == (n, BOX, BOX) and sim.images.dtype == np.float32
    for a in (sim.rot_deg, sim.tilt_deg, sim.psi_deg, sim.shift_x_ang, sim.defocus_u_ang):
        assert a.shape == (n,)
    assert np.all((sim.tilt_deg >= 0) & (sim.tilt_deg <= 180))
    assert np.all(np.abs(sim.shift_x_ang) <= 3 * APIX) and np.all(np.abs(sim.shift_y_ang) <= 3 * APIX)
    assert np.all(sim.defocus_u_ang >= sim.defocus_v_ang)
    assert np.all(sim.defocus_u_ang - sim.defocus_v_ang <= 500)
    # SNR = mean over images of var(signal over the particle disc) / noise variance.
    noise = sim.images.astype(np.float64) - clean
    yy, xx = np.mgrid[:BOX, :BOX] - BOX // 2
    disc = xx ** 2 + yy ** 2 <= sim.signal_radius_px ** 2
    measured = clean[:, disc].astype(np.float64).var(axis=1).mean() / noise.var()
    # The noise variance is estimated from n N² = 8e5 samples: relative std sqrt(2/8e5) = 0.16 %;
    # 2 % is > 10 sigma. The signal term is computed with the same definition as the simulator.
    assert measured == pytest.approx(snr, rel=0.02)
    assert noise.std() == pytest.approx(sim.noise_sigma, rel=0.02)
    # The disc covers the particle (support radius + shifts) and is smaller than the box here.
    assert 10 < sim.signal_radius_px < BOX / 2
    # Same seed, same data.
    again = simulate.simulate_particles(protein, n, APIX, np.random.default_rng(2), snr=snr, chunk=64)
    assert np.array_equal(again.images, sim.images)


def _realspace_projection(vol, a, origin_px):
    """Independent reference: sum_z vol(A^T r), then content moved to -origin (RELION, measured)."""
    n = vol.shape[0]
    c = n // 2
    r = np.arange(n) - c
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    q = a.T @ np.stack([x.ravel(), y.ravel(), z.ravel()])
    img = map_coordinates(vol, [q[2] + c, q[1] + c, q[0] + c], order=3, mode="constant")
    img = img.reshape(n, n, n).sum(axis=0)
    ky, kx = np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :]
    ph = np.exp(-2j * np.pi * (kx * -origin_px[0] + ky * -origin_px[1]))
    return np.real(np.fft.ifft2(np.fft.fft2(img) * ph))


def test_simulate_image_model_matches_real_space_reference(protein):
    # CTF made ~1 everywhere (no defocus, no Cs, amplitude contrast -> 1) to isolate pose and
    # origin conventions.
    sim = simulate.simulate_particles(protein, 4, APIX, np.random.default_rng(5), snr=np.inf,
                                      defocus_range_ang=(0, 0), astig_ang=0, cs_mm=0,
                                      amplitude_contrast_frac=1 - 1e-12, max_shift_ang=4 * APIX)
    rots = geometry.euler_to_matrix(sim.rot_deg, sim.tilt_deg, sim.psi_deg)
    for i in range(4):
        origin = np.array([sim.shift_x_ang[i], sim.shift_y_ang[i]]) / APIX
        ref = _realspace_projection(protein.astype(np.float64), rots[i], origin)
        wrong = _realspace_projection(protein.astype(np.float64), rots[i], -origin)
        cc = np.corrcoef(sim.images[i].ravel(), ref.ravel())[0, 1]
        cc_wrong = np.corrcoef(sim.images[i].ravel(), wrong.ravel())[0, 1]
        # Fourier slice (trilinear, pad 2, gridding-corrected) vs cubic real-space interpolation:
        # measured cc >= 0.9998 (the interpolators differ slightly near Nyquist), so 0.999. The
        # opposite origin sign gives 0.44-0.89 for these origins (0.9-4.6 px), far below.
        assert cc > 0.999
        assert cc_wrong < cc - 0.05


def test_simulate_from_renderer(membrane):
    sim = simulate.simulate_particles(membrane, 40, APIX, np.random.default_rng(6), snr=0.05,
                                      n_conformers=4)
    assert sim.conformer.shape == (40,) and set(np.unique(sim.conformer)) <= {0, 1, 2, 3}
    assert np.isfinite(sim.images).all()


def test_write_simulation_round_trip(tmp_path, protein):
    sim = simulate.simulate_particles(protein, 10, APIX, np.random.default_rng(7), snr=1.0,
                                      bfactor_ang2=20.0)
    paths = simulate.write_simulation(str(tmp_path), sim, APIX, protein)
    p = io.load_particles(paths["star"])
    assert len(p) == 10 and p.box_px == BOX and p.pixel_size_ang == pytest.approx(APIX)
    assert np.allclose(p.rot_deg, sim.rot_deg, atol=1e-5)
    assert np.allclose(p.tilt_deg, sim.tilt_deg, atol=1e-5)
    assert np.allclose(p.psi_deg, sim.psi_deg, atol=1e-5)
    assert np.allclose(p.shift_x_ang, sim.shift_x_ang, atol=1e-5)
    assert np.allclose(p.defocus_u_ang, sim.defocus_u_ang, atol=1e-3)
    assert np.allclose(p.bfactor_ang2, 20.0)
    assert list(p.random_subset) == [1, 2] * 5
    assert np.array_equal(io.read_images(p, np.arange(10)), sim.images)
    with mrcfile.open(paths["truth"]) as m:
        assert np.array_equal(m.data, protein)


@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_project") is None, reason="relion_project not on PATH")
def test_simulation_matches_relion_project(tmp_path, protein):
    """Noise-free simulated particles == relion_project of the same STAR (poses, origins, CTF)."""
    sim = simulate.simulate_particles(protein, 8, APIX, np.random.default_rng(8), snr=np.inf,
                                      max_shift_ang=5 * APIX, astig_ang=2000)
    paths = simulate.write_simulation(str(tmp_path), sim, APIX, protein)
    subprocess.run(["relion_project", "--i", paths["truth"], "--o", str(tmp_path / "relion"),
                    "--ang", paths["star"], "--angpix", str(APIX), "--ctf"],
                   check=True, capture_output=True, cwd=tmp_path)
    with mrcfile.open(tmp_path / "relion.mrcs") as m:
        rel = np.array(m.data, dtype=np.float64)
    for i in range(len(sim)):
        cc = np.corrcoef(rel[i].ravel(), sim.images[i].ravel())[0, 1]
        scale = (rel[i] * sim.images[i]).sum() / (sim.images[i].astype(np.float64) ** 2).sum()
        # Same Fourier-slice model as RELION: measured cc >= 0.99999 and scale 0.9999-1.0000 for
        # these 8 particles (differences only in the outermost Fourier shell). 0.999 still fails
        # a wrong origin sign (cc 0.1-0.9) or a wrong CTF angle/phase convention; 1 % on the scale
        # catches any box- or pixel-size normalisation factor.
        assert cc > 0.999
        assert scale == pytest.approx(1.0, abs=0.01)
