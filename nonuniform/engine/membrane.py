"""Membrane-protein-like phantom: ordered core, per-particle detergent belt, flexible domain.

A map whose local resolution varies, the case non-uniform refinement is made for: the core (a
transmembrane helix bundle built like :func:`.phantoms.protein_phantom`) carries detail to Nyquist,
the detergent belt around it changes from particle to particle (a random field low-passed to
``belt_resolution_ang``), and a soluble domain swings about a hinge. The phantom records each
region and its true local band limit, for validating local filters and local resolution.

Coordinates as in :mod:`.phantoms`: (x, y, z) Å relative to the box centre, voxel ``N//2``;
the membrane normal is z.
"""

import dataclasses
import itertools
import logging

import numpy as np

from . import filters, geometry
from .phantoms import (CA_SPACING_ANG, HELIX_RISE_ANG, RESIDUE_VOLUME_ANG3, TAIL_SIGMAS, AtomModel, Envelope,
                       atom_sigma_ang, centre_of_mass_ang, grid_coords_ang, grow_chains, helix_atoms,
                       max_radius_ang, render_atoms, rotation_about_axis)

logger = logging.getLogger(__name__)


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
    :func:`.simulate.simulate_particles`).

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
        r = rotation_about_axis(self.hinge_axis, flex_angle_deg)
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
        x, y, z = grid_coords_ang(self.box_px, self.pixel_size_ang)
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
    sigma = atom_sigma_ang(pixel_size_ang)
    big_r = max_radius_ang(box_px, pixel_size_ang) - TAIL_SIGMAS * sigma
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
        n_res = int((z_hi - z_lo) / (HELIX_RISE_ANG * axis[2]))
        start = np.array([cxy[0], cxy[1], z_lo]) + rng.uniform(-1, 1, 3) * np.array([1.0, 1.0, 2.0])
        h = helix_atoms(start, axis, n_res, rng.uniform(0, 2 * np.pi))
        if i % 2:
            h = h[::-1]
        core.append(h)
        ends.append((h[0], h[-1]))
    # Loops between consecutive helices (end of one to start of the next), bulging outwards in z.
    for (_, e), (s, _) in itertools.pairwise(ends):
        n_loop = max(2, int(np.linalg.norm(s - e) / CA_SPACING_ANG))
        t = np.linspace(0, 1, n_loop + 2)[1:-1, None]
        bulge = np.sign(e[2]) * 4.0 * np.sin(np.pi * t)
        core.append(e + t * (s - e) + bulge * np.array([0, 0, 1.0]))
    core_xyz = np.concatenate(core)
    core_w = rng.uniform(0.8, 1.2, len(core_xyz))

    # Flexible soluble domain above the core, linked to the hinge.
    hinge = np.array([0.0, 0.0, z_hi + 3.0])
    dom_r = 0.3 * big_r
    dom_centre = hinge + np.array([0.08 * big_r, 0.0, 0.8 * dom_r + 2.0])
    env = Envelope([dom_centre], [[dom_r, 0.85 * dom_r, 0.75 * dom_r]],
                    [geometry.random_rotations(1, rng)[0]])
    n_dom = int(0.8 * env.volume_ang3(rng) / RESIDUE_VOLUME_ANG3)
    # Three linker residues from the hinge to the domain's surface.
    u = (dom_centre - hinge) / np.linalg.norm(dom_centre - hinge)
    reach = np.linalg.norm(dom_centre - hinge) - 0.7 * dom_r
    link = hinge + np.linspace(0, 1, 3)[:, None] * reach * u
    dom_xyz = grow_chains(env, n_dom, rng, existing=np.concatenate([core_xyz, link]))
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
        x, y, z = grid_coords_ang(box_px, pixel_size_ang)
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
    shift = -centre_of_mass_ang(cons, pixel_size_ang)
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
