"""Rotation conventions: RELION ZYZ Euler angles, quaternions, grids."""

import numpy as np
import pytest

from nonuniform.engine import geometry

RNG = np.random.default_rng(1234)


def test_euler_identity_and_axes():
    assert np.allclose(geometry.euler_to_matrix(0, 0, 0), np.eye(3))
    # rot = 90 alone is Rz(90) with RELION's sign: (1, 0, 0) -> (0, -1, 0).
    a = geometry.euler_to_matrix(90, 0, 0)
    assert np.allclose(a @ [1, 0, 0], [0, -1, 0], atol=1e-12)
    # tilt moves the projection direction: third row of A is the viewing direction in the map frame.
    a = geometry.euler_to_matrix(30, 50, 0)
    t, r = np.deg2rad(50), np.deg2rad(30)
    assert np.allclose(a[2], [np.sin(t) * np.cos(r), np.sin(t) * np.sin(r), np.cos(t)])


def test_euler_round_trip():
    rot = RNG.uniform(-180, 180, 500)
    tilt = RNG.uniform(0.5, 179.5, 500)
    psi = RNG.uniform(-180, 180, 500)
    m = geometry.euler_to_matrix(rot, tilt, psi)
    assert np.allclose(m @ np.transpose(m, (0, 2, 1)), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(m), 1.0)
    r2, t2, p2 = geometry.matrix_to_euler(m)
    # Angles agree modulo 360 to float64 round-off amplified by atan2 (1e-8 deg is far below any use).
    for a, b in ((rot, r2), (tilt, t2), (psi, p2)):
        assert np.allclose(np.angle(np.exp(1j * np.deg2rad(a - b))), 0, atol=1e-8)


@pytest.mark.parametrize("tilt", [0.0, 180.0])
def test_euler_gimbal_lock(tilt):
    m = geometry.euler_to_matrix(40.0, tilt, 25.0)
    r, t, p = geometry.matrix_to_euler(m)
    assert np.allclose(geometry.euler_to_matrix(r, t, p), m, atol=1e-12)


def test_quaternion_round_trip_and_uniformity():
    m = geometry.random_rotations(20000, np.random.default_rng(7))
    q = geometry.matrix_to_quaternion(m)
    assert np.allclose(geometry.quaternion_to_matrix(q), m, atol=1e-12)
    # Uniform rotations: viewing directions uniform on the sphere, so mean cos(tilt) = 0 and
    # mean cos²(tilt) = 1/3; standard errors are 1/sqrt(3n) ≈ 0.004 and ~0.002, tolerance 5 sigma.
    z = m[:, 2, 2]
    assert abs(z.mean()) < 0.02
    assert abs((z * z).mean() - 1 / 3) < 0.01


def test_so3_grid_covers_rotations():
    step = 15.0
    grid = geometry.so3_grid(step)
    probe = geometry.random_rotations(200, np.random.default_rng(3))
    d = geometry.angular_distance_deg(grid[None], probe[:, None]).min(axis=1)
    # Covering radius of a quasi-uniform grid at step s is ~s·sqrt(3)/2 ≈ 13°; allow 1.1 steps.
    assert d.max() < 1.1 * step
    nb = geometry.neighbours(grid, grid[0], 1.5 * step)
    assert 0 in nb and 5 < len(nb) < len(grid) // 4


def test_local_grid():
    c = geometry.euler_to_matrix(10, 60, -30)
    g = geometry.local_grid(c, 2.0, 4.0)
    assert np.allclose(g[0], c)
    d = geometry.angular_distance_deg(g, c[None])
    assert d.max() <= 4.0 + 1e-9 and len(g) == 33  # lattice points of radius <= 2 in Z³


def test_frame_alignment_removes_a_turned_map_frame():
    # Refined poses = true poses turned by a common 3° rotation about z (the map frame), with
    # 1° of independent jitter each and 10 % misassigned at random.
    rng = np.random.default_rng(7)
    n = 2000
    true = geometry.random_rotations(n, rng)
    g = geometry.euler_to_matrix(3.0, 0.0, 0.0)
    jitter = geometry.axis_angle_to_matrix(rng.normal(scale=np.deg2rad(1.0) / np.sqrt(3), size=(n, 3)))
    est = true @ g @ jitter
    wrong = rng.random(n) < 0.1
    est[wrong] = geometry.random_rotations(int(wrong.sum()), rng)
    raw = geometry.angular_distance_deg(true, est)
    err, g_fit, angle = geometry.frame_alignment(true, est)
    # 1800 inliers with 1° jitter pin the mean to ~1°/sqrt(1800) = 0.02°: 0.1° is 4 sigma.
    assert geometry.angular_distance_deg(g_fit, g) < 0.1
    assert abs(angle - 3.0) < 0.1
    # Without the frame turn the inliers' error is the jitter's (median of a 1° Maxwell-like spread
    # ~0.9°), not ~3°; the misassigned ones stay misassigned.
    assert np.median(raw[~wrong]) > 2.5
    assert np.median(err[~wrong]) < 1.2
    assert np.median(err[wrong]) > 30
    # An already aligned frame is left alone.
    err0, g0, angle0 = geometry.frame_alignment(true, true @ jitter)
    assert angle0 < 0.1 and geometry.angular_distance_deg(g0, np.eye(3)) < 0.1


def test_nearest_rotation_is_a_rotation():
    m = np.random.default_rng(3).normal(size=(3, 3))
    r = geometry.nearest_rotation(m)
    assert np.allclose(r @ r.T, np.eye(3), atol=1e-12) and np.isclose(np.linalg.det(r), 1.0)
    rot = geometry.euler_to_matrix(10.0, 20.0, 30.0)
    assert np.allclose(geometry.nearest_rotation(2.5 * rot), rot)
