"""Tests for nonuniform.engine.fsc: FSC invariants, resolution, phase randomization, Chen 2013."""

import os

import numpy as np
import pytest

from nonuniform.engine import fourier, fsc, masks


def _noise(n, seed, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n, n, n)).astype(dtype)


def _blobs(n, seed, n_blobs=12, sigma_px=1.5, spread_px=6.0):
    """Sum of Gaussian blobs near the box centre N//2."""
    rng = np.random.default_rng(seed)
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.zeros((n, n, n))
    for p in rng.normal(0.0, spread_px, size=(n_blobs, 3)):
        vol += np.exp(
            -((z - p[0]) ** 2 + (y - p[1]) ** 2 + (x - p[2]) ** 2) / (2 * sigma_px**2)
        )
    return vol.astype(np.float32)


def _full_spectrum_counts(n):
    """Number of coefficients of the full (N, N, N) spectrum in each shell 0..N//2."""
    shells = fourier.shell_index_rfft((n, n, n))
    w = np.broadcast_to(fourier.rfft_hermitian_weights((n, n, n)), shells.shape)
    return np.bincount(shells.ravel(), weights=w.ravel())[: n // 2 + 1]


@pytest.mark.parametrize("n", [16, 17])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fsc_identity_negation_and_scale(n, dtype):
    v = _noise(n, 0, dtype)
    m = masks.soft_sphere(n, n / 4, 2.0)
    for mask in (None, m):
        curve = fsc.fsc_curve(v, v, mask)
        assert curve.shape == (n // 2 + 1,) and curve.dtype == np.float64
        # identical float64 sums in numerator and denominator: equal to 1 within rounding
        np.testing.assert_allclose(curve, 1.0, atol=1e-12)
        np.testing.assert_allclose(fsc.fsc_curve(v, -v, mask), -1.0, atol=1e-12)
    # scaling one map changes the FFT only by rounding (float32: ~1e-7 relative per term)
    w = _noise(n, 1, dtype)
    np.testing.assert_allclose(
        fsc.fsc_curve(v, 3.0 * w), fsc.fsc_curve(v, w), atol=1e-5
    )


def test_fsc_of_independent_noise_is_small():
    n = 32
    curve = fsc.fsc_curve(_noise(n, 2), _noise(n, 3))
    counts = _full_spectrum_counts(n)
    # For independent white noise each shell's FSC is a correlation of `counts` real products,
    # std ~ 1/sqrt(counts). 4 sigma keeps the chance that any of the 16 shells fails < 1e-3
    # (the seed is fixed anyway); the brief's 3 sigma would be a ~4% event over 16 shells.
    bound = 4.0 / np.sqrt(counts[1:])
    assert np.all(np.abs(curve[1:]) < bound)
    # ... and the curve is not identically zero (the test has power): some shell beyond 1 sigma
    assert np.any(np.abs(curve[1:]) > 1.0 / np.sqrt(counts[1:]))


def test_shell_resolution():
    res = fsc.shell_resolution_ang(40, 1.25)
    assert res.shape == (21,) and np.isinf(res[0])
    np.testing.assert_allclose(res[1:], 50.0 / np.arange(1, 21))
    assert res[-1] == pytest.approx(2.5)  # Nyquist = 2 px


def test_resolution_interpolation():
    box, px = 40, 1.25
    curve = np.array([1.0, 0.95, 0.9, 0.2, 0.1, 0.05, 0.02, 0.0, 0.0, 0.0, 0.0])
    # first drop below 0.143 is between shells 3 (0.2) and 4 (0.1): s* = 3 + 0.057/0.1 = 3.57
    assert fsc.resolution_at(curve, box, px) == pytest.approx(50.0 / 3.57, rel=1e-12)
    # at 0.5: between shells 2 (0.9) and 3 (0.2): s* = 2 + 0.4/0.7
    assert fsc.resolution_at(curve, box, px, 0.5) == pytest.approx(
        50.0 / (2 + 0.4 / 0.7)
    )
    # never below: the last shell; below already at shell 1: shell 1 (box size in Å)
    assert fsc.resolution_at(np.ones(11), box, px) == pytest.approx(5.0)
    assert fsc.resolution_at([1.0, 0.1, 0.05, 0.0], box, px) == pytest.approx(50.0)
    # shell 0 is ignored even if it is below the threshold
    assert fsc.resolution_at([0.0, 0.9, 0.0], box, px) == pytest.approx(
        50.0 / (1 + 0.757 / 0.9)
    )


def test_resolution_passes_over_a_single_noisy_shell():
    box, px = 40, 1.25
    # One shell (4) dips below 0.143 and the curve recovers: the crossing is the sustained one
    # between shells 5 (0.3) and 6 (0.02): s* = 5 + 0.157/0.28.
    curve = np.array([1.0, 0.95, 0.9, 0.2, 0.1, 0.3, 0.02, 0.0, 0.0, 0.0, 0.0])
    assert fsc.resolution_at(curve, box, px) == pytest.approx(50.0 / (5 + 0.157 / 0.28), rel=1e-12)
    # RELION's first crossing on request: between shells 3 and 4.
    assert fsc.resolution_at(curve, box, px, min_shells_below=1) == pytest.approx(50.0 / 3.57, rel=1e-12)
    # A dip at shell 1 is passed over too; two shells below are a crossing.
    assert fsc.resolution_at([1.0, 0.1, 0.5, 0.0], box, px) == pytest.approx(50.0 / (2 + 0.357 / 0.5))
    two = np.array([1.0, 0.9, 0.1, 0.1, 0.5, 0.0])
    assert fsc.resolution_at(two, box, px) == pytest.approx(50.0 / (1 + 0.757 / 0.8))
    # A single shell below at the very end is a crossing (no shell left to recover in).
    assert fsc.resolution_at([1.0, 0.9, 0.8, 0.1], box, px) == pytest.approx(50.0 / (2 + 0.657 / 0.7))


@pytest.mark.parametrize("n", [24, 25])
def test_phase_randomize_keeps_amplitudes(n):
    v = _blobs(n, 4) + 0.1 * _noise(n, 5)
    from_shell = 5
    out = fsc.phase_randomize(v, from_shell, np.random.default_rng(6))
    assert out.dtype == v.dtype and out.shape == v.shape
    f_in = fourier.rfftn_c(v.astype(np.float64))
    f_out = fourier.rfftn_c(out.astype(np.float64))
    shells = fourier.shell_index_rfft(v.shape)
    # float32 volumes: coefficients agree to ~1e-6 of the largest amplitude after a round trip
    tol = 1e-5 * np.abs(f_in).max()
    np.testing.assert_allclose(np.abs(f_out), np.abs(f_in), atol=tol)
    lo = shells < from_shell
    np.testing.assert_allclose(f_out[lo], f_in[lo], atol=tol)
    hi = (shells >= from_shell) & (np.abs(f_in) > 1e-3 * np.abs(f_in).max())
    cos_dphi = np.cos(np.angle(f_out[hi]) - np.angle(f_in[hi]))
    # random phases: <cos> ~ 0 with std 0.7/sqrt(#coefficients) (thousands here): 0.1 is >5 sigma
    assert abs(cos_dphi.mean()) < 0.1
    curve = fsc.fsc_curve(v, out)
    np.testing.assert_allclose(curve[:from_shell], 1.0, atol=1e-5)
    # deterministic with the seed
    again = fsc.phase_randomize(v, from_shell, np.random.default_rng(6))
    np.testing.assert_array_equal(again, out)


def _half_maps(n=48, noise=1.2):
    signal = _blobs(n, 7, n_blobs=20, sigma_px=1.2, spread_px=5.0)
    signal /= signal.std()
    return signal + noise * _noise(n, 8), signal + noise * _noise(n, 9)


def test_corrected_fsc_with_sharp_mask():
    n, px = 48, 1.5
    h1, h2 = _half_maps(n)
    sharp = masks.soft_sphere(n, 9.0, 0.0)  # hard-edged sphere: strong mask correlation
    res = fsc.corrected_fsc(h1, h2, sharp, px, np.random.default_rng(10))
    assert res.box == n and res.pixel_size_ang == px
    for c in (res.unmasked, res.masked, res.phase_randomized, res.corrected):
        assert c.shape == (n // 2 + 1,)
    s_r = res.randomize_from_shell
    assert s_r is not None and s_r >= 1
    assert np.all(res.unmasked[1:s_r] >= 0.8) and res.unmasked[s_r] < 0.8
    np.testing.assert_array_equal(res.corrected[: s_r + 2], res.masked[: s_r + 2])
    t, r = res.masked[s_r + 2 :], res.phase_randomized[s_r + 2 :]
    np.testing.assert_allclose(res.corrected[s_r + 2 :], (t - r) / (1 - r), rtol=1e-12)
    # where the mask correlation is >= 0 the correction can only lower the FSC (t <= 1)
    pos = r >= 0
    assert np.all(res.corrected[s_r + 2 :][pos] <= t[pos] + 1e-12)
    # a hard mask makes the randomized halves correlate at high resolution
    assert res.phase_randomized[s_r + 4 :].mean() > 0.05
    assert res.resolution_corrected_ang >= res.resolution_masked_ang
    names = set(res.curves())
    assert names == {
        "fsc_unmasked",
        "fsc_masked",
        "fsc_phase_randomized",
        "fsc_corrected",
    }
    assert set(res.resolutions_ang()) <= names


def test_corrected_fsc_soft_mask_is_close_to_masked_and_seeded():
    n, px = 48, 1.5
    h1, h2 = _half_maps(n)
    soft = masks.soft_sphere(n, 12.0, 8.0)
    a = fsc.corrected_fsc(h1, h2, soft, px, np.random.default_rng(11))
    b = fsc.corrected_fsc(h1, h2, soft, px, np.random.default_rng(11))
    np.testing.assert_array_equal(a.corrected, b.corrected)
    # a wide soft mask adds little correlation: two shells past s_r the randomized FSC is
    # noise, std ~1/sqrt(n_shell) <= 0.025 (>= 1800 coefficients per shell), so 0.1 is a
    # 4-sigma bound; the 0.143 resolution then moves by less than a shell
    assert np.abs(a.phase_randomized[a.randomize_from_shell + 2 :]).max() < 0.1
    shell_c = n * px / a.resolution_corrected_ang
    shell_m = n * px / a.resolution_masked_ang
    assert abs(shell_c - shell_m) < 1.0


def test_corrected_fsc_without_randomization_when_fsc_stays_high():
    n = 24
    v = _noise(n, 12)
    res = fsc.corrected_fsc(
        v, v, masks.soft_sphere(n, 8, 3), 1.0, np.random.default_rng(0)
    )
    assert res.randomize_from_shell is None
    np.testing.assert_array_equal(res.corrected, res.masked)


def test_fsc_shape_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        fsc.fsc_curve(np.zeros((8, 8, 8)), np.zeros((9, 9, 9)))
    with pytest.raises(ValueError, match="cubic"):
        fsc.fsc_curve(np.zeros((8, 8, 9)), np.zeros((8, 8, 9)))


def test_write_and_read_fsc_csv(tmp_path):
    n, px = 48, 1.5
    h1, h2 = _half_maps(n)
    res = fsc.corrected_fsc(
        h1, h2, masks.soft_sphere(n, 12, 6), px, np.random.default_rng(1)
    )
    path = tmp_path / "fsc.csv"
    fsc.write_fsc_csv(path, res.curves(), n, px, metadata=res.resolutions_ang())
    assert os.listdir(tmp_path) == ["fsc.csv"]  # no temporary file left behind
    cols, meta = fsc.read_fsc_csv(path)
    assert meta["box"] == "48" and float(meta["pixel_size_ang"]) == px
    assert float(meta["fsc_corrected"]) == pytest.approx(res.resolution_corrected_ang)
    np.testing.assert_array_equal(cols["shell"], np.arange(n // 2 + 1))
    # written with 8 significant digits
    np.testing.assert_allclose(
        cols["fsc_corrected"], res.corrected, rtol=1e-7, atol=1e-8
    )
    np.testing.assert_allclose(
        cols["freq_inv_ang"], np.arange(n // 2 + 1) / (n * px), rtol=1e-7
    )
    # overwrite atomically; a bad curve raises before anything is written
    with pytest.raises(ValueError, match="need 25 values"):
        fsc.write_fsc_csv(path, {"x": np.zeros(3)}, n, px)
    assert fsc.read_fsc_csv(path)[0]["fsc_masked"].size == n // 2 + 1
