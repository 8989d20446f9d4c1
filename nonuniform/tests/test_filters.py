"""Tests for nonuniform.engine.filters: Butterworth, low-passes, FSC weighting, B-factors."""

import warnings

import numpy as np
import pytest

from nonuniform.engine import filters, fourier
from nonuniform.engine.errors import InputError


def _noise(n, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n, n, n)).astype(dtype)


# ---------------------------------------------------------------- Butterworth


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-15), (np.float32, 1e-7)])
@pytest.mark.parametrize("order", [1, 2, 8, 20])
def test_butterworth_gain_at_cutoff(order, dtype, tol):
    # tolerance: a few ulp of the dtype (one sqrt and one division)
    g = filters.butterworth(np.array([0.0, 0.125], dtype=dtype), 0.125, order)
    assert g.dtype == dtype
    assert g[0] == 1.0
    assert abs(g[1] - 1 / np.sqrt(2)) < tol


def test_butterworth_formula_monotone_and_order():
    f = np.linspace(0.0, 0.5, 201)
    fc = 0.2
    for n in (2, 8):
        g = filters.butterworth(f, fc, n)
        # float64 closed form; ratio <= 2.5 so the direct formula does not overflow
        np.testing.assert_allclose(g, 1 / np.sqrt(1 + (f / fc) ** (2 * n)), rtol=1e-13)
        assert np.all(np.diff(g) <= 0)  # non-increasing (flat at 1 to rounding near 0)
    g2, g8 = filters.butterworth(f, fc, 2), filters.butterworth(f, fc, 8)
    assert np.all(g8[f < fc] >= g2[f < fc])  # higher order: flatter pass band
    assert np.all(g8[f > fc] <= g2[f > fc])  # ... and faster roll-off
    # order 8: at 2*fc the gain is 1/sqrt(1 + 2^16) ~ 0.0039
    assert filters.butterworth(np.array([2 * fc]), fc, 8)[0] == pytest.approx(
        2.0**-8, rel=1e-4
    )


def test_butterworth_no_overflow_far_above_cutoff():
    f = np.array([0.0, 1e-30, 1.0, 1e10, 1e30], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = filters.butterworth(f, 1e-3, 8)
    assert np.all(np.isfinite(g)) and g[0] == 1 and g[1] == 1 and g[-1] == 0
    with pytest.raises(ValueError):
        filters.butterworth(f, 0.0)


# ---------------------------------------------------------------- low-passes


def _spectrum(vol):
    return np.abs(fourier.rfftn_c(vol.astype(np.float64)))


@pytest.mark.parametrize("n", [32, 33])
def test_lowpass_cosine_kills_above_and_keeps_below(n):
    px, res = 1.5, 6.0
    vol = _noise(n, 1)
    out = filters.lowpass_cosine(vol, px, res, edge_shells=2)
    assert out.dtype == np.float32 and out.shape == vol.shape
    f = fourier.radial_freq_rfft(vol.shape).astype(np.float64)
    fc, half = px / res, 1.0 / n
    a_in, a_out = _spectrum(vol), _spectrum(out)
    # float32 round trip: relative error ~1e-7 per coefficient times log(N) growth; 1e-5 of the
    # largest amplitude is a safe bound for "zero" and for "unchanged"
    scale = a_in.max()
    assert a_out[f >= fc + half].max() < 1e-5 * scale
    np.testing.assert_allclose(
        a_out[f <= fc - half], a_in[f <= fc - half], atol=1e-5 * scale
    )
    edge = (f > fc - half) & (f < fc + half)
    ratio = a_out[edge] / a_in[edge]
    assert np.all((ratio > 0) & (ratio < 1 + 1e-4))


def test_lowpass_cosine_gain_is_half_at_cutoff():
    g = filters.lowpass_cosine_gain(
        np.array([0.1, 0.2, 0.3]), 50, 1.0, 5.0, edge_shells=4
    )
    # fc = 0.2 cycles/px; edge 4 shells = 0.08 cycles/px: 0.1 is below it, 0.3 above
    np.testing.assert_allclose(g, [1.0, 0.5, 0.0], atol=1e-15)


def test_rect_and_gaussian_lowpass():
    n, px, res = 32, 1.0, 4.0
    vol = _noise(n, 2)
    f = fourier.radial_freq_rfft(vol.shape).astype(np.float64)
    a_in = _spectrum(vol)
    scale = a_in.max()
    a_rect = _spectrum(filters.rect_lowpass(vol, px, res))
    assert a_rect[f > 0.25].max() < 1e-5 * scale  # same float32 bound as above
    np.testing.assert_allclose(a_rect[f <= 0.25], a_in[f <= 0.25], atol=1e-5 * scale)
    a_gauss = _spectrum(filters.gaussian_lowpass(vol, px, res))
    expected = a_in * np.exp(-0.5 * (f / 0.25) ** 2)
    np.testing.assert_allclose(a_gauss, expected, atol=1e-5 * scale)
    with pytest.raises(InputError):
        filters.rect_lowpass(vol, px, 0.0)


# ---------------------------------------------------------------- FSC weighting, radial filter


def test_fsc_weighting_values_and_clipping():
    fsc = np.array([1.0, 0.9, 0.143, 0.0, -0.2, 1.2])
    w = filters.fsc_weighting(fsc)
    expected = np.sqrt(2 * np.clip(fsc, 0, 1) / (1 + np.clip(fsc, 0, 1)))
    np.testing.assert_allclose(w, expected, rtol=1e-15)
    assert w[2] == pytest.approx(0.5, abs=1e-3)  # Cref = 0.5 at FSC = 0.143
    assert w.min() >= 0 and w.max() <= 1
    w0 = filters.fsc_weighting([1.0, 0.5, 5e-5, 0.3, 0.2], zero_after_below=1e-4)
    assert w0[1] > 0 and np.all(w0[2:] == 0)


@pytest.mark.parametrize("n", [16, 17])
def test_apply_radial_filter(n):
    vol = _noise(n, 3, np.float64)
    ident = filters.apply_radial_filter(vol, np.ones(n // 2 + 1), fill_value=1.0)
    np.testing.assert_allclose(ident, vol, atol=1e-12)  # float64 FFT round trip
    keep = np.zeros(n // 2 + 1)
    keep[:4] = 1
    out = filters.apply_radial_filter(vol, keep)
    shells = fourier.shell_index_rfft(vol.shape)
    a = _spectrum(out)
    assert a[shells >= 4].max() < 1e-10 * a.max()
    np.testing.assert_allclose(a[shells < 4], _spectrum(vol)[shells < 4], rtol=1e-10)


# ---------------------------------------------------------------- B-factor and sharpening


def _map_with_bfactor(n, px, b_ang2, seed):
    """White Gaussian noise whose amplitudes fall as exp(-B s^2 / 4)."""
    vol = _noise(n, seed, np.float64)
    s2 = (fourier.radial_freq_rfft(vol.shape).astype(np.float64) / px) ** 2
    return fourier.irfftn_c(
        fourier.rfftn_c(vol) * np.exp(-0.25 * b_ang2 * s2), vol.shape
    )


@pytest.mark.parametrize("b_ang2", [50.0, 120.0])
def test_guinier_bfactor_recovers_b(b_ang2):
    n, px = 64, 1.0
    vol = _map_with_bfactor(n, px, b_ang2, seed=4).astype(np.float32)
    b = filters.guinier_bfactor(vol, px, highres_ang=3.0, lowres_ang=10.0)
    # Fit over shells 7..21 (s^2 from 0.01 to 0.11 / Å^2). ln of a shell-mean Rayleigh amplitude
    # fluctuates by ~0.52/sqrt(n_coeff/2) <= 0.03 (>= 600 coefficients per shell), so the slope
    # error is ~0.03/0.1 = 0.3 /Å^2 at worst, i.e. ~1 Å^2 in B; 3 Å^2 leaves a 3x margin.
    assert b == pytest.approx(-b_ang2, abs=3.0)


def test_guinier_needs_shells():
    with pytest.raises(InputError, match="Guinier fit needs"):
        filters.guinier_bfactor(_noise(8), 5.0, highres_ang=10.0, lowres_ang=10.0)


def test_sharpen_inverts_bfactor_and_lowpasses():
    n, px, b_ang2 = 48, 1.2, 60.0
    vol = _noise(n, 5, np.float64)
    blurred = _map_with_bfactor(n, px, b_ang2, seed=5)
    restored = filters.sharpen(blurred, px, -b_ang2)
    # float64: the B-factor round trip is exact to rounding (amplification <= exp(60*0.52/4))
    np.testing.assert_allclose(restored, vol, atol=1e-9)
    out = filters.sharpen(blurred, px, -b_ang2, res_ang=4.0)
    f = fourier.radial_freq_rfft(vol.shape).astype(np.float64)
    a = _spectrum(out)
    assert a[f >= px / 4.0 + 1.0 / n].max() < 1e-10 * a.max()


def test_sharpen_with_fsc_zeroes_after_first_low_shell():
    n = 32
    vol = _noise(n, 6, np.float64)
    fsc = np.ones(n // 2 + 1)
    fsc[10] = 0.0
    fsc[11:] = 0.5  # spurious values after the first zero crossing must not come back
    out = filters.sharpen(vol, 1.0, 0.0, fsc=fsc)
    shells = fourier.shell_index_rfft(vol.shape)
    a, a0 = _spectrum(out), _spectrum(vol)
    assert a[shells >= 10].max() < 1e-10 * a0.max()
    np.testing.assert_allclose(a[shells < 10], a0[shells < 10], rtol=1e-9)


def test_auto_sharpen_flattens_spectrum():
    n, px, b_ang2 = 64, 1.0, 80.0
    blurred = _map_with_bfactor(n, px, b_ang2, seed=7).astype(np.float32)
    fsc = np.ones(n // 2 + 1)
    out, b = filters.auto_sharpen(blurred, px, fsc, res_ang=3.0)
    assert out.dtype == np.float32
    # same fit and tolerance as test_guinier_bfactor_recovers_b
    assert b == pytest.approx(-b_ang2, abs=3.0)
