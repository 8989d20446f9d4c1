"""Fourier-slice projector and backprojector invariants."""

import numpy as np
import pytest

from nonuniform.engine import fourier, geometry, project, reconstruct


def blob_volume(n, centres, sigma=1.5):
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    v = np.zeros((n, n, n), np.float32)
    for cx, cy, cz in centres:
        v += np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma ** 2))
    return v


@pytest.mark.parametrize("n", [32, 33])
def test_identity_projection_is_z_sum(n):
    rng = np.random.default_rng(0)
    vol = blob_volume(n, rng.uniform(-n / 5, n / 5, (6, 3)), sigma=2.0)
    img = fourier.irfft2_c(project.Projector(vol).project(np.eye(3)[None]), n)[0]
    ref = vol.sum(axis=0)
    # Identity samples the padded spectrum on grid points (no interpolation), so the only deviation
    # is the sinc² pre-correction, which boosts density at radius r by 1/sinc²(r/2N): ~6 % at the
    # blobs' radius (r ≈ 7 px of 64), so the relative error stays below 8 %.
    assert np.corrcoef(img.ravel(), ref.ravel())[0, 1] > 0.999
    assert np.linalg.norm(img - ref) / np.linalg.norm(ref) < 0.08


@pytest.mark.parametrize("n", [32, 33])
def test_centre_of_rotation_and_pose_convention(n):
    """A blob at r0 (x, y, z) projects to (A @ r0)[:2] in the image, around centre N//2."""
    rng = np.random.default_rng(1)
    r0 = np.array([5.0, -3.0, 2.0])
    vol = blob_volume(n, [r0], sigma=1.2)
    centre = blob_volume(n, [(0, 0, 0)], sigma=1.2)
    rots = geometry.random_rotations(5, rng)
    imgs = fourier.irfft2_c(project.Projector(vol).project(rots), n)
    imc = fourier.irfft2_c(project.Projector(centre).project(rots), n)
    yy, xx = np.mgrid[:n, :n] - n // 2
    def peak(im):
        # Centroid within 3 px of the maximum: trilinear interpolation at pad 2 leaves faint (~1 %)
        # aliased copies elsewhere in the image that would bias a global centroid.
        iy, ix = np.unravel_index(np.argmax(im), im.shape)
        w = np.where((yy + n // 2 - iy) ** 2 + (xx + n // 2 - ix) ** 2 <= 9, np.clip(im, 0, None), 0)
        return np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()

    for a, im, ic in zip(rots, imgs, imc):
        # Sub-pixel agreement (0.1 px); A.T @ r0 (the other convention) would be off by pixels.
        assert np.allclose(peak(im), (a @ r0)[:2], atol=0.1)
        assert np.allclose(peak(ic), 0, atol=0.02)


def test_shift_moves_content_positive():
    n = 32
    img = np.zeros((1, n, n), np.float32)
    img[0, n // 2, n // 2] = 1
    out = fourier.irfft2_c(project.shift_images_ft(fourier.rfft2_c(img), np.array([[3.0, -2.0]])), n)[0]
    assert np.unravel_index(np.argmax(out), out.shape) == (n // 2 - 2, n // 2 + 3)


@pytest.mark.parametrize("n", [16, 17])
def test_projection_backprojection_adjoint(n):
    """<P S, U> = <S, Pᵀ U> with the full-spectrum (Hermitian-weighted) real inner products."""
    rng = np.random.default_rng(2)
    vol = rng.standard_normal((n, n, n)).astype(np.float32)
    proj = project.Projector(vol, pad=2)
    rots = geometry.random_rotations(7, rng)
    ky, kx, flat = project.image_pixels(n)
    ps = proj.project_pixels(rots, ky, kx).astype(np.complex128)
    u = fourier.rfft2_c(rng.standard_normal((7, n, n))).reshape(7, -1)[:, flat]
    h_img = np.where(kx == 0, 1.0, 2.0)
    lhs = np.real(np.sum(h_img * ps * np.conj(u)))

    bp = reconstruct.BackProjector(n, pad=2)
    full_u = np.zeros((7, n * (n // 2 + 1)), np.complex64)
    full_u[:, flat] = u
    bp.insert(full_u.reshape(7, n, n // 2 + 1), None, rots)
    data, _ = bp.hermitian_accumulators()
    spec = proj.spectrum.astype(np.complex128)
    h_vol = np.where(np.arange(spec.shape[2]) == 0, 1.0, 2.0)[None, None, :]
    rhs = np.real(np.sum(h_vol * spec * np.conj(data)))
    # Both sides are sums of ~1e4 float32 products of O(1e2) values: relative round-off ~1e-5.
    assert abs(lhs - rhs) <= 1e-4 * abs(lhs)
