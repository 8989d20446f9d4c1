"""Rotations: RELION ZYZ Euler angles <-> matrices, quaternions, random rotations and SO(3) grids.

Convention (RELION 3.1, ``Euler_angles2matrix``): ``A(rot, tilt, psi) = Rz(psi) @ Ry(tilt) @ Rz(rot)``
with ``Rz(a) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]`` and ``Ry(b) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]``,
acting on (x, y, z) column vectors. Angles are in degrees at every interface.
"""

import numpy as np


def euler_to_matrix(rot_deg, tilt_deg, psi_deg):
    """RELION rotation matrices from ZYZ Euler angles.

    Parameters
    ----------
    rot_deg, tilt_deg, psi_deg : float or ndarray, shape (n,)
        Euler angles in degrees.

    Returns
    -------
    ndarray, shape (..., 3, 3), float64
        Matrices acting on (x, y, z) column vectors.
    """
    a, b, g = (np.deg2rad(np.asarray(v, dtype=np.float64)) for v in (rot_deg, tilt_deg, psi_deg))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty(np.broadcast(a, b, g).shape + (3, 3))
    m[..., 0, 0] = cg * cc - sg * sa
    m[..., 0, 1] = cg * cs + sg * ca
    m[..., 0, 2] = -cg * sb
    m[..., 1, 0] = -sg * cc - cg * sa
    m[..., 1, 1] = -sg * cs + cg * ca
    m[..., 1, 2] = sg * sb
    m[..., 2, 0] = sc
    m[..., 2, 1] = ss
    m[..., 2, 2] = cb
    return m


def matrix_to_euler(mats):
    """Inverse of :func:`euler_to_matrix`, with tilt in [0, 180] degrees.

    Parameters
    ----------
    mats : ndarray, shape (..., 3, 3)

    Returns
    -------
    rot_deg, tilt_deg, psi_deg : ndarray, shape (...)
        At tilt 0 or 180 (gimbal lock) rot is set to 0 and the whole in-plane angle goes to psi.
    """
    m = np.asarray(mats, dtype=np.float64)
    sb = np.hypot(m[..., 0, 2], m[..., 1, 2])
    tilt = np.arctan2(sb, m[..., 2, 2])
    regular = sb > 1e-6
    rot = np.where(regular, np.arctan2(m[..., 2, 1], m[..., 2, 0]), 0.0)
    psi_reg = np.arctan2(m[..., 1, 2], -m[..., 0, 2])
    # Gimbal lock: A = Rz(psi + rot) (tilt 0) or Rz(psi - rot) Ry(180) (tilt 180); rot := 0.
    psi_lock = np.where(m[..., 2, 2] > 0, np.arctan2(-m[..., 1, 0], m[..., 0, 0]),
                        np.arctan2(m[..., 1, 0], -m[..., 0, 0]))
    psi = np.where(regular, psi_reg, psi_lock)
    return np.rad2deg(rot), np.rad2deg(tilt), np.rad2deg(psi)


def quaternion_to_matrix(q):
    """Rotation matrices from unit quaternions ``(w, x, y, z)``, shape (..., 4) -> (..., 3, 3)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    m = np.empty(q.shape[:-1] + (3, 3))
    m[..., 0, 0] = 1 - 2 * (y * y + z * z)
    m[..., 0, 1] = 2 * (x * y - z * w)
    m[..., 0, 2] = 2 * (x * z + y * w)
    m[..., 1, 0] = 2 * (x * y + z * w)
    m[..., 1, 1] = 1 - 2 * (x * x + z * z)
    m[..., 1, 2] = 2 * (y * z - x * w)
    m[..., 2, 0] = 2 * (x * z - y * w)
    m[..., 2, 1] = 2 * (y * z + x * w)
    m[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return m


def matrix_to_quaternion(mats):
    """Unit quaternions ``(w, x, y, z)`` with w >= 0 from rotation matrices (..., 3, 3)."""
    m = np.asarray(mats, dtype=np.float64)
    # Shepperd's method, vectorized: pick the largest of the four squared components.
    tr = np.trace(m, axis1=-2, axis2=-1)
    cand = np.stack([1 + tr, 1 + 2 * m[..., 0, 0] - tr, 1 + 2 * m[..., 1, 1] - tr,
                     1 + 2 * m[..., 2, 2] - tr], axis=-1)
    k = np.argmax(cand, axis=-1)
    s = np.sqrt(np.maximum(np.take_along_axis(cand, k[..., None], -1)[..., 0], 1e-300))
    q = np.empty(m.shape[:-2] + (4,))
    a, b, c = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    d, e, f = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]
    rows = [np.stack([s * s, a, b, c], -1), np.stack([a, s * s, d, e], -1),
            np.stack([b, d, s * s, f], -1), np.stack([c, e, f, s * s], -1)]
    for i in range(4):
        sel = k == i
        q[sel] = rows[i][sel] / (2 * s[sel, None])
    q *= np.where(q[..., :1] < 0, -1.0, 1.0)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def random_rotations(n, rng):
    """``n`` rotations drawn uniformly from SO(3) (normalized Gaussian quaternions), (n, 3, 3)."""
    return quaternion_to_matrix(rng.standard_normal((n, 4)))


def angular_distance_deg(a, b):
    """Geodesic angle in degrees between rotation matrices ``a`` and ``b`` (broadcast, (..., 3, 3))."""
    tr = np.einsum("...ij,...ij->...", np.asarray(a), np.asarray(b))
    return np.rad2deg(np.arccos(np.clip((tr - 1) / 2, -1.0, 1.0)))


def nearest_rotation(m):
    """The rotation matrix closest to ``m`` (3, 3) in the Frobenius norm (SVD, determinant +1)."""
    u, _, vt = np.linalg.svd(np.asarray(m, np.float64))
    return u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt


def frame_alignment(true_rotations, rotations, inlier_deg=15.0):
    """Pose errors against the truth once the refinement's map frame is turned onto the truth's.

    A refinement fixes its map only up to a rotation: the starting reference pins the frame
    loosely (a 30 Å map of a nearly round particle lets it turn about its axis by a few degrees)
    and the poses turn with the map, ``rotations ≈ true_rotations @ G``. ``G`` is the rotation
    nearest to the sum of ``true_i.T @ rotations_i`` (chordal mean), refit on the particles within
    ``inlier_deg`` of the first fit so that misassigned poses do not pull it.

    Parameters
    ----------
    true_rotations, rotations : ndarray, shape (n, 3, 3)
        True and refined particle rotations (the same convention, e.g. :func:`euler_to_matrix`).
    inlier_deg : float

    Returns
    -------
    errors_deg : ndarray, shape (n,)
        Geodesic angle between ``true_rotations @ G`` and ``rotations``.
    g : ndarray, shape (3, 3)
    angle_deg : float
        The rotation angle of ``G``.
    """
    t = np.asarray(true_rotations, np.float64)
    r = np.asarray(rotations, np.float64)
    d = np.einsum("nji,njk->nik", t, r)
    g = nearest_rotation(d.sum(axis=0))
    inliers = angular_distance_deg(t @ g, r) < inlier_deg
    if inliers.any():
        g = nearest_rotation(d[inliers].sum(axis=0))
    return angular_distance_deg(t @ g, r), g, float(angular_distance_deg(g, np.eye(3)))


def sphere_directions(step_deg):
    """Quasi-uniform unit directions with mean spacing ``step_deg`` (Fibonacci spiral).

    Returns
    -------
    ndarray, shape (m, 3)
        Unit vectors; ``m = round(4 pi / step²)`` (step in radians), the HEALPix-like density.
    """
    step = np.deg2rad(step_deg)
    m = max(2, int(round(4 * np.pi / step ** 2)))
    i = np.arange(m) + 0.5
    z = 1 - 2 * i / m
    phi = np.pi * (1 + 5 ** 0.5) * i
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


def so3_grid(step_deg):
    """A quasi-uniform SO(3) grid: directions at ``step_deg`` times in-plane angles at ``step_deg``.

    Returns
    -------
    ndarray, shape (m, 3, 3)
        RELION matrices whose projection direction (third row) runs over :func:`sphere_directions`
        and whose psi runs over ``[0, 360)``.
    """
    d = sphere_directions(step_deg)
    rot = np.rad2deg(np.arctan2(d[:, 1], d[:, 0]))
    tilt = np.rad2deg(np.arccos(np.clip(d[:, 2], -1, 1)))
    n_psi = max(1, int(round(360.0 / step_deg)))
    psi = np.arange(n_psi) * (360.0 / n_psi)
    r, p = np.meshgrid(np.arange(len(d)), psi, indexing="ij")
    return euler_to_matrix(rot[r.ravel()], tilt[r.ravel()], p.ravel())


def neighbours(grid, centre, radius_deg):
    """Indices of the rotations of ``grid`` (m, 3, 3) within ``radius_deg`` of ``centre`` (3, 3)."""
    return np.nonzero(angular_distance_deg(grid, centre[None]) <= radius_deg)[0]


def local_grid(centre, step_deg, radius_deg):
    """Rotations on a local cubic grid of rotation vectors around ``centre``.

    Parameters
    ----------
    centre : ndarray, shape (3, 3)
    step_deg, radius_deg : float
        Spacing and extent of the grid (a cube of axis-angle perturbations clipped to a ball).

    Returns
    -------
    ndarray, shape (m, 3, 3)
        ``centre @ exp(w)`` for perturbations ``w``; the first entry is ``centre`` itself.
    """
    k = int(np.floor(radius_deg / step_deg))
    ax = np.arange(-k, k + 1) * np.deg2rad(step_deg)
    w = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    w = w[np.linalg.norm(w, axis=1) <= np.deg2rad(radius_deg) + 1e-12]
    w = w[np.argsort(np.linalg.norm(w, axis=1), kind="stable")]
    return centre[None] @ axis_angle_to_matrix(w)


def axis_angle_to_matrix(w):
    """Rotation matrices from rotation vectors (axis × angle in radians), (..., 3) -> (..., 3, 3)."""
    w = np.asarray(w, dtype=np.float64)
    th = np.linalg.norm(w, axis=-1)
    half = th / 2
    s = np.where(th > 1e-12, np.sin(half) / np.where(th > 1e-12, th, 1.0), 0.5)
    q = np.concatenate([np.cos(half)[..., None], w * s[..., None]], axis=-1)
    return quaternion_to_matrix(q)
