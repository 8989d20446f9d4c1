"""Synthetic protein-like phantoms: Gaussian pseudo-atoms in helices and coils.

Phantoms are sums of Gaussian pseudo-atoms (one per residue) arranged in helices and coils inside a
compact asymmetric envelope, so they carry detail up to Nyquist. The membrane-protein phantom
(:mod:`.membrane`) and the particle-image simulator (:mod:`.simulate`) build on them.

Coordinates: atoms are stored in Å as (x, y, z) relative to the box centre, which is voxel index
``N//2`` of the ``(z, y, x)`` arrays.
"""

import dataclasses
import logging

import numpy as np

from . import geometry

logger = logging.getLogger(__name__)

RESIDUE_VOLUME_ANG3 = 130.0   # volume per residue (pseudo-atom) in a folded protein
CA_SPACING_ANG = 3.8          # distance between consecutive residues along a chain
HELIX_RISE_ANG = 1.5          # alpha helix: rise per residue along its axis
_HELIX_RADIUS_ANG = 2.3        # alpha helix: radius of the C-alpha trace
_HELIX_TWIST_DEG = 100.0       # alpha helix: rotation per residue
_CLASH_ANG = 3.2               # closest allowed approach of non-bonded pseudo-atoms
TAIL_SIGMAS = 3.5             # atoms are rendered out to this many sigma


# ------------------------------------------------------------------------------------------------
# Rendering


def render_atoms(box_px, pixel_size_ang, coords_ang, weights, sigma_ang):
    """Sum of isotropic Gaussians sampled on the voxel grid.

    Parameters
    ----------
    box_px : int
        Box size N.
    pixel_size_ang : float
        Voxel size in Å.
    coords_ang : ndarray, shape (M, 3)
        Atom centres (x, y, z) in Å from the box centre (voxel ``N//2``).
    weights : ndarray, shape (M,)
        Peak height of each Gaussian.
    sigma_ang : float
        Standard deviation of the Gaussians in Å.

    Returns
    -------
    ndarray, shape (N, N, N), float32, real space (z, y, x)
        Atoms closer than ``3.5 sigma`` to the box edge are cut off there.
    """
    n = int(box_px)
    c = n // 2
    sig = sigma_ang / pixel_size_ang
    rad = int(np.ceil(TAIL_SIGMAS * sig))
    off = np.arange(-rad, rad + 1)
    oz, oy, ox = (a.ravel() for a in np.meshgrid(off, off, off, indexing="ij"))
    out = np.zeros(n ** 3, dtype=np.float64)
    pos = np.asarray(coords_ang, dtype=np.float64).reshape(-1, 3) / pixel_size_ang + c
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    step = max(1, 2_000_000 // off.size ** 3)   # bounds the (atoms x patch) temporaries
    for s in range(0, len(pos), step):
        p, ws = pos[s:s + step], w[s:s + step]
        base = np.rint(p).astype(np.int64)
        ix = base[:, 0, None] + ox[None]
        iy = base[:, 1, None] + oy[None]
        iz = base[:, 2, None] + oz[None]
        d2 = (ix - p[:, 0, None]) ** 2 + (iy - p[:, 1, None]) ** 2 + (iz - p[:, 2, None]) ** 2
        val = ws[:, None] * np.exp(-0.5 * d2 / sig ** 2)
        ok = (ix >= 0) & (ix < n) & (iy >= 0) & (iy < n) & (iz >= 0) & (iz < n) \
            & (d2 <= (TAIL_SIGMAS * sig) ** 2)
        flat = (iz * n + iy) * n + ix
        out += np.bincount(flat[ok], weights=val[ok], minlength=n ** 3)
    return out.reshape(n, n, n).astype(np.float32)


def grid_coords_ang(box_px, pixel_size_ang):
    """(x, y, z) coordinates in Å of every voxel, each of shape (N, N, N)."""
    r = (np.arange(box_px) - box_px // 2) * float(pixel_size_ang)
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    return x, y, z


def centre_of_mass_ang(vol, pixel_size_ang):
    """Density-weighted centre (x, y, z) in Å from the box centre."""
    x, y, z = grid_coords_ang(vol.shape[0], pixel_size_ang)
    m = vol.astype(np.float64)
    return np.array([(m * x).sum(), (m * y).sum(), (m * z).sum()]) / m.sum()


def rotation_about_axis(axis, angle_deg):
    """Right-handed rotation matrix (3, 3) by ``angle_deg`` about the unit vector ``axis``."""
    a = np.asarray(axis, dtype=np.float64)
    return geometry.axis_angle_to_matrix(a / np.linalg.norm(a) * np.deg2rad(angle_deg))


# ------------------------------------------------------------------------------------------------
# Pseudo-atomic models


def _random_unit(rng, n=None):
    v = rng.standard_normal((3,) if n is None else (n, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _orthonormal_pair(u):
    """Two unit vectors perpendicular to ``u`` and to each other."""
    t = np.array([1.0, 0.0, 0.0]) if abs(u[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(u, t)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(u, e1)


def helix_atoms(start_ang, axis, n_res, phase_rad=0.0):
    """C-alpha-like trace of an alpha helix, shape (n_res, 3) in Å, starting at ``start_ang``."""
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    e1, e2 = _orthonormal_pair(axis)
    t = np.arange(n_res)
    ph = phase_rad + np.deg2rad(_HELIX_TWIST_DEG) * t
    return (np.asarray(start_ang)[None] + HELIX_RISE_ANG * t[:, None] * axis[None]
            + _HELIX_RADIUS_ANG * (np.cos(ph)[:, None] * e1 + np.sin(ph)[:, None] * e2))


def coil_atoms(start_ang, direction, n_res, rng, bend_deg=35.0):
    """A random-walk chain (coil/strand) with 3.8 Å steps and limited bending, (n_res, 3) Å."""
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    pts = [np.asarray(start_ang, dtype=np.float64)]
    for _ in range(n_res - 1):
        d = d + np.tan(np.deg2rad(bend_deg)) * _perp_noise(d, rng)
        d /= np.linalg.norm(d)
        pts.append(pts[-1] + CA_SPACING_ANG * d)
    return np.array(pts)


def _perp_noise(d, rng):
    e1, e2 = _orthonormal_pair(d)
    a, b = rng.standard_normal(2) / np.sqrt(2)
    return a * e1 + b * e2


class Envelope:
    """Union of ellipsoids (a protein's domains), for inside tests of points in Å."""

    def __init__(self, centres, semi_axes, rotations):
        self.centres = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
        self.semi_axes = np.asarray(semi_axes, dtype=np.float64).reshape(-1, 3)
        self.rotations = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)

    def inside(self, pts):
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
        res = np.zeros(len(pts), dtype=bool)
        for c, s, r in zip(self.centres, self.semi_axes, self.rotations):
            local = (pts - c) @ r      # coordinates along the ellipsoid's axes (rows of r.T)
            res |= ((local / s) ** 2).sum(axis=1) <= 1.0
        return res

    def sample(self, rng, n):
        """``n`` points drawn uniformly from the envelope (rejection from its bounding box)."""
        lo = (self.centres - self.semi_axes.max(axis=1, keepdims=True)).min(axis=0)
        hi = (self.centres + self.semi_axes.max(axis=1, keepdims=True)).max(axis=0)
        out = []
        while sum(len(o) for o in out) < n:
            p = rng.uniform(lo, hi, (4 * n, 3))
            out.append(p[self.inside(p)])
        return np.concatenate(out)[:n]

    def volume_ang3(self, rng, n_mc=20000):
        lo = (self.centres - self.semi_axes.max(axis=1, keepdims=True)).min(axis=0)
        hi = (self.centres + self.semi_axes.max(axis=1, keepdims=True)).max(axis=0)
        p = rng.uniform(lo, hi, (n_mc, 3))
        return float(np.prod(hi - lo) * self.inside(p).mean())


def _random_envelope(rng, radius_ang, n_domains=3):
    """An asymmetric union of ``n_domains`` ellipsoids inside a sphere of ``radius_ang``."""
    centres, axes, rots = [], [], []
    for _ in range(n_domains):
        s = np.sort(rng.uniform(0.4, 0.65, 3))[::-1] * radius_ang
        c = _random_unit(rng) * rng.uniform(0.1, 0.9) * (radius_ang - s[0])
        centres.append(c)
        axes.append(s)
        rots.append(geometry.random_rotations(1, rng)[0])
    return Envelope(centres, axes, rots)


def grow_chains(envelope, n_target, rng, existing=None, helix_frac=0.6, axis_bias=None,
                 max_attempts=None):
    """Fill ``envelope`` with helices and coils of pseudo-atoms, avoiding clashes.

    Returns the new atoms (M, 3) in Å (``existing`` atoms are only used for clash tests).
    """
    atoms = np.zeros((0, 3)) if existing is None else np.asarray(existing, dtype=np.float64)
    n0 = len(atoms)
    max_attempts = max_attempts or 40 * max(1, n_target // 10)
    # Helices no longer than the envelope's smallest diameter (short ones in small domains).
    max_res = int(np.clip(2 * envelope.semi_axes.min() / HELIX_RISE_ANG, 6, 20))
    for _ in range(max_attempts):
        if len(atoms) - n0 >= n_target:
            break
        start = envelope.sample(rng, 1)[0]
        if rng.uniform() < helix_frac:
            axis = _random_unit(rng) if axis_bias is None else axis_bias(rng)
            n_res = int(rng.integers(min(8, max_res), max_res + 1))
            start = start - 0.5 * n_res * HELIX_RISE_ANG * axis
            chain = helix_atoms(start, axis, n_res, rng.uniform(0, 2 * np.pi))
        else:
            chain = coil_atoms(start, _random_unit(rng), int(rng.integers(5, 13)), rng)
        keep = envelope.inside(chain)
        if len(atoms):
            d2 = ((chain[:, None, :] - atoms[None, :, :]) ** 2).sum(-1)
            keep &= d2.min(axis=1) >= _CLASH_ANG ** 2
        if keep.mean() < 0.7:
            continue
        atoms = np.concatenate([atoms, chain[keep]])
    return atoms[n0:]


@dataclasses.dataclass
class AtomModel:
    """Pseudo-atoms of a phantom: positions (M, 3) Å (x, y, z) from the centre, peak heights (M,)."""

    coords_ang: np.ndarray
    weights: np.ndarray
    sigma_ang: float

    def render(self, box_px, pixel_size_ang):
        """Density map (N, N, N) float32, real space (z, y, x)."""
        return render_atoms(box_px, pixel_size_ang, self.coords_ang, self.weights, self.sigma_ang)


def atom_sigma_ang(pixel_size_ang):
    # ~1.5-2 Å atoms; never narrower than 0.6 px, where a sampled Gaussian stops looking like one.
    return max(1.6, 0.6 * pixel_size_ang)


def max_radius_ang(box_px, pixel_size_ang):
    """Radius (Å) that every phantom fits inside, Gaussian tails included: 0.8 x box/2."""
    return 0.8 * (box_px / 2.0) * pixel_size_ang


def protein_model(box_px, pixel_size_ang, rng, diameter_ang=None):
    """Pseudo-atomic model behind :func:`protein_phantom` (see there), centred on its mass."""
    sigma = atom_sigma_ang(pixel_size_ang)
    r_max = max_radius_ang(box_px, pixel_size_ang) - TAIL_SIGMAS * sigma
    if diameter_ang is None:
        diameter_ang = 2 * 0.85 * r_max
    radius = min(diameter_ang / 2.0, 0.9 * r_max)
    if radius < 3 * CA_SPACING_ANG:
        raise ValueError(f"box of {box_px} px at {pixel_size_ang} Å/px is too small for a protein "
                         f"phantom (usable radius {radius:.1f} Å)")
    env = _random_envelope(rng, radius)
    n_target = int(0.8 * env.volume_ang3(rng) / RESIDUE_VOLUME_ANG3)
    xyz = grow_chains(env, n_target, rng)
    w = rng.uniform(0.8, 1.2, len(xyz))
    return _centred_model(xyz, w, sigma, r_max)


def _centred_model(xyz, w, sigma, r_max):
    """Shift atoms so that their weighted centre is the origin; drop any outside ``r_max``."""
    for _ in range(3):
        xyz = xyz - (w[:, None] * xyz).sum(0) / w.sum()
        inside = np.linalg.norm(xyz, axis=1) <= r_max
        if inside.all():
            break
        xyz, w = xyz[inside], w[inside]
    xyz = xyz - (w[:, None] * xyz).sum(0) / w.sum()
    return AtomModel(xyz, w, sigma)


def protein_phantom(box_px, pixel_size_ang, rng, diameter_ang=None):
    """A protein-like density with detail to Nyquist.

    A few hundred Gaussian pseudo-atoms (one per residue, sigma ~1.6 Å) arranged as alpha helices
    and coils inside an asymmetric union of three ellipsoidal domains, without clashes.

    Parameters
    ----------
    box_px : int
        Box size N.
    pixel_size_ang : float
        Voxel size in Å.
    rng : numpy.random.Generator
        Source of randomness (same seed, same phantom).
    diameter_ang : float, optional
        Diameter of the envelope sphere; default (and cap) fits inside 0.8 x box/2.

    Returns
    -------
    ndarray, shape (N, N, N), float32, real space (z, y, x)
        Non-negative density, peak value 1, centre of mass at voxel ``N//2`` (to sampling accuracy),
        zero beyond radius 0.8 N/2.
    """
    vol = protein_model(box_px, pixel_size_ang, rng, diameter_ang).render(box_px, pixel_size_ang)
    return (vol / vol.max()).astype(np.float32)
