"""Synthetic data: protein-like and membrane-protein-like phantoms, and particle-image simulation.

Phantoms are sums of Gaussian pseudo-atoms (one per residue) arranged in helices and coils inside a
compact asymmetric envelope, so they carry detail up to Nyquist. The membrane phantom adds a
smooth detergent belt that changes from particle to particle and a flexible domain that swings
about a hinge: a map whose local resolution varies, the case non-uniform refinement is made for.

Coordinates: atoms are stored in Å as (x, y, z) relative to the box centre, which is voxel index
``N//2`` of the ``(z, y, x)`` arrays. Particle images follow RELION's image model (pinned against
``relion_project``): the projection of the volume in pose ``A`` is shifted so that the particle
content moves by **minus** its origin offset (``rlnOriginX/YAngst``), then multiplied by the CTF.
"""

import dataclasses
import itertools
import logging
import os

import numpy as np

from . import ctf as ctf_mod
from . import filters, fourier, geometry, project

logger = logging.getLogger(__name__)

_RESIDUE_VOLUME_ANG3 = 130.0   # volume per residue (pseudo-atom) in a folded protein
_CA_SPACING_ANG = 3.8          # distance between consecutive residues along a chain
_HELIX_RISE_ANG = 1.5          # alpha helix: rise per residue along its axis
_HELIX_RADIUS_ANG = 2.3        # alpha helix: radius of the C-alpha trace
_HELIX_TWIST_DEG = 100.0       # alpha helix: rotation per residue
_CLASH_ANG = 3.2               # closest allowed approach of non-bonded pseudo-atoms
_TAIL_SIGMAS = 3.5             # atoms are rendered out to this many sigma


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
    rad = int(np.ceil(_TAIL_SIGMAS * sig))
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
            & (d2 <= (_TAIL_SIGMAS * sig) ** 2)
        flat = (iz * n + iy) * n + ix
        out += np.bincount(flat[ok], weights=val[ok], minlength=n ** 3)
    return out.reshape(n, n, n).astype(np.float32)


def _grid_coords_ang(box_px, pixel_size_ang):
    """(x, y, z) coordinates in Å of every voxel, each of shape (N, N, N)."""
    r = (np.arange(box_px) - box_px // 2) * float(pixel_size_ang)
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    return x, y, z


def _centre_of_mass_ang(vol, pixel_size_ang):
    """Density-weighted centre (x, y, z) in Å from the box centre."""
    x, y, z = _grid_coords_ang(vol.shape[0], pixel_size_ang)
    m = vol.astype(np.float64)
    return np.array([(m * x).sum(), (m * y).sum(), (m * z).sum()]) / m.sum()


def _rotation_about_axis(axis, angle_deg):
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
    return (np.asarray(start_ang)[None] + _HELIX_RISE_ANG * t[:, None] * axis[None]
            + _HELIX_RADIUS_ANG * (np.cos(ph)[:, None] * e1 + np.sin(ph)[:, None] * e2))


def coil_atoms(start_ang, direction, n_res, rng, bend_deg=35.0):
    """A random-walk chain (coil/strand) with 3.8 Å steps and limited bending, (n_res, 3) Å."""
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    pts = [np.asarray(start_ang, dtype=np.float64)]
    for _ in range(n_res - 1):
        d = d + np.tan(np.deg2rad(bend_deg)) * _perp_noise(d, rng)
        d /= np.linalg.norm(d)
        pts.append(pts[-1] + _CA_SPACING_ANG * d)
    return np.array(pts)


def _perp_noise(d, rng):
    e1, e2 = _orthonormal_pair(d)
    a, b = rng.standard_normal(2) / np.sqrt(2)
    return a * e1 + b * e2


class _Envelope:
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
    return _Envelope(centres, axes, rots)


def _grow_chains(envelope, n_target, rng, existing=None, helix_frac=0.6, axis_bias=None,
                 max_attempts=None):
    """Fill ``envelope`` with helices and coils of pseudo-atoms, avoiding clashes.

    Returns the new atoms (M, 3) in Å (``existing`` atoms are only used for clash tests).
    """
    atoms = np.zeros((0, 3)) if existing is None else np.asarray(existing, dtype=np.float64)
    n0 = len(atoms)
    max_attempts = max_attempts or 40 * max(1, n_target // 10)
    # Helices no longer than the envelope's smallest diameter (short ones in small domains).
    max_res = int(np.clip(2 * envelope.semi_axes.min() / _HELIX_RISE_ANG, 6, 20))
    for _ in range(max_attempts):
        if len(atoms) - n0 >= n_target:
            break
        start = envelope.sample(rng, 1)[0]
        if rng.uniform() < helix_frac:
            axis = _random_unit(rng) if axis_bias is None else axis_bias(rng)
            n_res = int(rng.integers(min(8, max_res), max_res + 1))
            start = start - 0.5 * n_res * _HELIX_RISE_ANG * axis
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


def _atom_sigma(pixel_size_ang):
    # ~1.5-2 Å atoms; never narrower than 0.6 px, where a sampled Gaussian stops looking like one.
    return max(1.6, 0.6 * pixel_size_ang)


def _max_radius_ang(box_px, pixel_size_ang):
    """Radius (Å) that every phantom fits inside, Gaussian tails included: 0.8 x box/2."""
    return 0.8 * (box_px / 2.0) * pixel_size_ang


def protein_model(box_px, pixel_size_ang, rng, diameter_ang=None):
    """Pseudo-atomic model behind :func:`protein_phantom` (see there), centred on its mass."""
    sigma = _atom_sigma(pixel_size_ang)
    r_max = _max_radius_ang(box_px, pixel_size_ang) - _TAIL_SIGMAS * sigma
    if diameter_ang is None:
        diameter_ang = 2 * 0.85 * r_max
    radius = min(diameter_ang / 2.0, 0.9 * r_max)
    if radius < 3 * _CA_SPACING_ANG:
        raise ValueError(f"box of {box_px} px at {pixel_size_ang} Å/px is too small for a protein "
                         f"phantom (usable radius {radius:.1f} Å)")
    env = _random_envelope(rng, radius)
    n_target = int(0.8 * env.volume_ang3(rng) / _RESIDUE_VOLUME_ANG3)
    xyz = _grow_chains(env, n_target, rng)
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


# ------------------------------------------------------------------------------------------------
# Membrane protein: ordered core, variable detergent belt, flexible domain


REGION_SOLVENT, REGION_CORE, REGION_BELT, REGION_FLEXIBLE = 0, 1, 2, 3


@dataclasses.dataclass
class MembranePhantom:
    """A membrane protein in a detergent micelle, with per-particle heterogeneity.

    The membrane normal is z. Per particle the belt's density is perturbed (a random field
    low-passed to ``belt_resolution_ang``) and the flexible domain swings by an angle about the
    hinge axis through ``hinge_ang``. Calling the phantom, ``phantom(rng)``, draws one particle's
    volume with the stored default variabilities (the renderer protocol of
    :func:`simulate_particles`).

    Attributes
    ----------
    box_px, pixel_size_ang : int, float
    core : ndarray, shape (N, N, N), float32
        Ordered transmembrane helix bundle (rigid, detail to Nyquist).
    belt : ndarray, shape (N, N, N), float32
        Mean detergent belt: a smooth torus around the core's middle, low-passed.
    flexible : ndarray, shape (N, N, N), float32
        Soluble domain on top of the core, at hinge angle 0.
    core_atoms, flexible_atoms : AtomModel
    hinge_ang : ndarray, shape (3,)
        Hinge point (x, y, z) in Å from the box centre.
    hinge_axis : ndarray, shape (3,)
        Unit rotation axis of the flexible domain.
    belt_support : ndarray, shape (N, N, N), bool
        The torus the belt fills before low-pass filtering.
    belt_resolution_ang : float
        Resolution of the belt density (Gaussian low-pass, gain exp(-1/2) there).
    belt_scale : float
        Default relative amplitude of the per-particle belt perturbation.
    flex_sigma_deg : float
        Default standard deviation of the per-particle hinge angle.
    """

    box_px: int
    pixel_size_ang: float
    core: np.ndarray
    belt: np.ndarray
    flexible: np.ndarray
    core_atoms: AtomModel
    flexible_atoms: AtomModel
    hinge_ang: np.ndarray
    hinge_axis: np.ndarray
    belt_support: np.ndarray
    belt_resolution_ang: float
    belt_scale: float = 0.5
    flex_sigma_deg: float = 6.0

    def render_flexible(self, flex_angle_deg):
        """The flexible domain rotated by ``flex_angle_deg`` about the hinge, (N, N, N) float32."""
        if flex_angle_deg == 0:
            return self.flexible
        r = _rotation_about_axis(self.hinge_axis, flex_angle_deg)
        xyz = (self.flexible_atoms.coords_ang - self.hinge_ang) @ r.T + self.hinge_ang
        return render_atoms(self.box_px, self.pixel_size_ang, xyz, self.flexible_atoms.weights,
                            self.flexible_atoms.sigma_ang)

    def render_belt(self, rng, belt_scale):
        """One particle's belt: mean belt times ``max(0, 1 + belt_scale * f)``, f a smooth unit field.

        The field is white noise low-passed to ``belt_resolution_ang`` and normalised to unit
        standard deviation over the belt, so the product stays a low-resolution density.
        """
        if belt_scale == 0:
            return self.belt
        noise = rng.standard_normal((self.box_px,) * 3).astype(np.float32)
        field = filters.gaussian_lowpass(noise, self.pixel_size_ang, self.belt_resolution_ang)
        field = field / field[self.belt_support].std()
        return (self.belt * np.clip(1.0 + belt_scale * field, 0.0, None)).astype(np.float32)

    def render(self, rng, belt_scale=None, flex_angle_deg=0.0):
        """One particle's volume: core + perturbed belt + flexible domain at ``flex_angle_deg``.

        Parameters
        ----------
        rng : numpy.random.Generator
            Draws the belt perturbation.
        belt_scale : float, optional
            Relative amplitude of the belt perturbation (default :attr:`belt_scale`; 0: mean belt).
        flex_angle_deg : float
            Hinge angle of the flexible domain.

        Returns
        -------
        ndarray, shape (N, N, N), float32, real space
        """
        belt_scale = self.belt_scale if belt_scale is None else belt_scale
        return (self.core + self.render_belt(rng, belt_scale)
                + self.render_flexible(flex_angle_deg)).astype(np.float32)

    def __call__(self, rng):
        """A random particle: belt perturbed with :attr:`belt_scale`, hinge angle ~ N(0, flex_sigma)."""
        return self.render(rng, self.belt_scale, rng.normal(0.0, self.flex_sigma_deg))

    def consensus(self):
        """Core + mean belt + flexible domain at angle 0, (N, N, N) float32."""
        return (self.core + self.belt + self.flexible).astype(np.float32)

    def truth(self, n_angles=9):
        """The average map over particles: core + mean belt + flexible domain averaged over angles.

        The hinge-angle average uses Gauss-Hermite quadrature of N(0, flex_sigma_deg) with
        ``n_angles`` nodes. The belt term is the mean belt (the clipping of the perturbation at
        zero density raises the true mean by < 0.1 % for belt_scale <= 0.5).
        """
        x, w = np.polynomial.hermite_e.hermegauss(n_angles)
        w = w / w.sum()
        flex = sum(wi * self.render_flexible(xi * self.flex_sigma_deg).astype(np.float64)
                   for xi, wi in zip(x, w))
        return (self.core + self.belt + flex).astype(np.float32)

    def regions(self):
        """Dominant component per voxel: 0 solvent, 1 core, 2 belt, 3 flexible, (N, N, N) int8.

        A voxel belongs to a component when that component's density there is the largest of the
        three and above 2 % of the phantom's peak; otherwise it is solvent.
        """
        stack = np.stack([self.core, self.belt, self.truth() - self.core - self.belt])
        lab = (np.argmax(stack, axis=0) + 1).astype(np.int8)
        lab[stack.max(axis=0) < 0.02 * stack.max()] = REGION_SOLVENT
        return lab

    def local_bandlimit_ang(self):
        """Expected local resolution (Å) of the average map, NaN in solvent, (N, N, N) float32.

        Core: Nyquist (2 x pixel size). Belt: ``belt_resolution_ang``. Flexible domain: the blur of
        a point at distance d from the hinge axis, swinging with standard deviation
        ``flex_sigma_deg`` (displacement s = d sigma), taken as the resolution where that
        Gaussian blur halves the amplitude, ``pi s sqrt(2 / ln 2)`` (~5.3 s), and at least
        Nyquist.
        """
        nyq = 2.0 * self.pixel_size_ang
        lab = self.regions()
        x, y, z = _grid_coords_ang(self.box_px, self.pixel_size_ang)
        p = np.stack([x - self.hinge_ang[0], y - self.hinge_ang[1], z - self.hinge_ang[2]], -1)
        d_axis = np.linalg.norm(np.cross(p, self.hinge_axis), axis=-1)
        s = d_axis * np.deg2rad(self.flex_sigma_deg)
        flex_res = np.maximum(nyq, np.pi * s * np.sqrt(2.0 / np.log(2.0)))
        out = np.full(lab.shape, np.nan, dtype=np.float32)
        out[lab == REGION_CORE] = nyq
        out[lab == REGION_BELT] = max(nyq, self.belt_resolution_ang)
        out[lab == REGION_FLEXIBLE] = flex_res[lab == REGION_FLEXIBLE]
        return out


def membrane_phantom(box_px, pixel_size_ang, rng, belt_scale=0.5, flex_sigma_deg=6.0,
                     belt_resolution_ang=None):
    """A membrane-protein-like phantom (see :class:`MembranePhantom`).

    Geometry, in units of the usable radius R (0.8 x box/2, minus atom tails): a bundle of seven
    transmembrane helices within 0.3 R of the z axis, spanning z in [-0.5 R, 0.25 R], with loops
    at both ends; a detergent torus around its middle reaching 0.75 R, with 40 % of the core's mean
    protein density; a soluble domain of radius ~0.3 R on top, linked to the hinge at the top of
    the core. Everything is then shifted so that the consensus map's centre of mass is the box
    centre.

    Parameters
    ----------
    box_px : int
        Box size N (at least 48 for a meaningful phantom).
    pixel_size_ang : float
        Voxel size in Å.
    rng : numpy.random.Generator
    belt_scale, flex_sigma_deg : float
        Default per-particle variability (see :class:`MembranePhantom`).
    belt_resolution_ang : float, optional
        Resolution of the belt density; default max(20 Å, 6 px).

    Returns
    -------
    MembranePhantom
    """
    sigma = _atom_sigma(pixel_size_ang)
    big_r = _max_radius_ang(box_px, pixel_size_ang) - _TAIL_SIGMAS * sigma
    if big_r < 25.0:
        raise ValueError(f"box of {box_px} px at {pixel_size_ang} Å/px is too small for the membrane "
                         f"phantom (usable radius {big_r:.1f} Å < 25 Å)")
    if belt_resolution_ang is None:
        belt_resolution_ang = max(20.0, 6.0 * pixel_size_ang)
    z_lo, z_hi = -0.5 * big_r, 0.25 * big_r

    # Transmembrane bundle: one central and six surrounding helices, slightly tilted, up or down.
    core = []
    ring = 0.2 * big_r
    phi0 = rng.uniform(0, 2 * np.pi)
    centres = [np.zeros(2)] + [ring * np.array([np.cos(phi0 + k * np.pi / 3), np.sin(phi0 + k * np.pi / 3)])
                               for k in range(6)]
    ends = []
    for i, cxy in enumerate(centres):
        tilt = np.deg2rad(rng.uniform(0, 15))
        az = rng.uniform(0, 2 * np.pi)
        axis = np.array([np.sin(tilt) * np.cos(az), np.sin(tilt) * np.sin(az), np.cos(tilt)])
        n_res = int((z_hi - z_lo) / (_HELIX_RISE_ANG * axis[2]))
        start = np.array([cxy[0], cxy[1], z_lo]) + rng.uniform(-1, 1, 3) * np.array([1.0, 1.0, 2.0])
        h = helix_atoms(start, axis, n_res, rng.uniform(0, 2 * np.pi))
        if i % 2:
            h = h[::-1]
        core.append(h)
        ends.append((h[0], h[-1]))
    # Loops between consecutive helices (end of one to start of the next), bulging outwards in z.
    for (_, e), (s, _) in itertools.pairwise(ends):
        n_loop = max(2, int(np.linalg.norm(s - e) / _CA_SPACING_ANG))
        t = np.linspace(0, 1, n_loop + 2)[1:-1, None]
        bulge = np.sign(e[2]) * 4.0 * np.sin(np.pi * t)
        core.append(e + t * (s - e) + bulge * np.array([0, 0, 1.0]))
    core_xyz = np.concatenate(core)
    core_w = rng.uniform(0.8, 1.2, len(core_xyz))

    # Flexible soluble domain above the core, linked to the hinge.
    hinge = np.array([0.0, 0.0, z_hi + 3.0])
    dom_r = 0.3 * big_r
    dom_centre = hinge + np.array([0.08 * big_r, 0.0, 0.8 * dom_r + 2.0])
    env = _Envelope([dom_centre], [[dom_r, 0.85 * dom_r, 0.75 * dom_r]],
                    [geometry.random_rotations(1, rng)[0]])
    n_dom = int(0.8 * env.volume_ang3(rng) / _RESIDUE_VOLUME_ANG3)
    # Three linker residues from the hinge to the domain's surface.
    u = (dom_centre - hinge) / np.linalg.norm(dom_centre - hinge)
    reach = np.linalg.norm(dom_centre - hinge) - 0.7 * dom_r
    link = hinge + np.linspace(0, 1, 3)[:, None] * reach * u
    dom_xyz = _grow_chains(env, n_dom, rng, existing=np.concatenate([core_xyz, link]))
    flex_xyz = np.concatenate([link, dom_xyz])
    flex_w = rng.uniform(0.8, 1.2, len(flex_xyz))
    az = rng.uniform(0, 2 * np.pi)
    hinge_axis = np.array([np.cos(az), np.sin(az), 0.0])

    # Detergent torus around the core's middle (membrane slab centre), smooth.
    core_rho = np.linalg.norm(core_xyz[:, :2], axis=1).max() + 2 * sigma
    z_mem = 0.5 * (z_lo + z_hi)
    rho_out = 0.75 * big_r
    a_rho = 0.5 * (rho_out - core_rho)
    a_z = 0.3 * big_r

    def belt_support(shift):
        x, y, z = _grid_coords_ang(box_px, pixel_size_ang)
        rho = np.hypot(x - shift[0], y - shift[1])
        return ((rho - (core_rho + a_rho)) / a_rho) ** 2 + ((z - shift[2] - z_mem) / a_z) ** 2 <= 1.0

    core_vol = AtomModel(core_xyz, core_w, sigma).render(box_px, pixel_size_ang)
    core_mean = float(core_vol[core_vol > 0.05 * core_vol.max()].mean())
    belt_amp = 0.4 * core_mean

    def build(shift):
        cm = AtomModel(core_xyz + shift, core_w, sigma)
        fm = AtomModel(flex_xyz + shift, flex_w, sigma)
        sup = belt_support(shift)
        belt = filters.gaussian_lowpass(sup.astype(np.float32) * belt_amp, pixel_size_ang,
                                        belt_resolution_ang)
        belt = np.clip(belt, 0.0, None).astype(np.float32)
        return cm, fm, belt, sup

    cm, fm, belt, sup = build(np.zeros(3))
    cons = cm.render(box_px, pixel_size_ang) + belt + fm.render(box_px, pixel_size_ang)
    shift = -_centre_of_mass_ang(cons, pixel_size_ang)
    # Atoms that the re-centring pushed beyond the usable radius are dropped (a few at most).
    keep_c = np.linalg.norm(core_xyz + shift, axis=1) <= big_r
    keep_f = np.linalg.norm(flex_xyz + shift, axis=1) <= big_r
    core_xyz, core_w, flex_xyz, flex_w = core_xyz[keep_c], core_w[keep_c], flex_xyz[keep_f], flex_w[keep_f]
    cm, fm, belt, sup = build(shift)
    return MembranePhantom(
        box_px=int(box_px), pixel_size_ang=float(pixel_size_ang),
        core=cm.render(box_px, pixel_size_ang), belt=belt, flexible=fm.render(box_px, pixel_size_ang),
        core_atoms=cm, flexible_atoms=fm, hinge_ang=hinge + shift, hinge_axis=hinge_axis,
        belt_support=sup, belt_resolution_ang=float(belt_resolution_ang),
        belt_scale=float(belt_scale), flex_sigma_deg=float(flex_sigma_deg))


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
