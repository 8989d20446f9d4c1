"""Writing particle STAR files (RELION 3.1 layout: ``data_optics`` + ``data_particles``).

:func:`save_particles` rewrites loaded :class:`~.particles.Particles` with new poses, half-set
labels and extra columns, keeping every original column; :func:`write_particles_star` writes a
fresh single-optics-group file (simulations, tests). Both write atomically.
"""

import os
from collections import OrderedDict

import numpy as np

from .star import Table, write_star


def image_name(index0, path):
    """RELION ``rlnImageName`` for the 0-based image ``index0`` of ``path`` (``000001@path``)."""
    return f"{int(index0) + 1:06d}@{path}"


def _optics_from_particles(particles):
    """Build a data_optics table (and per-particle group numbers) for a RELION 3.0 input."""
    n = len(particles)
    if particles.has_ctf:
        keys = np.stack([particles.voltage_kv, particles.cs_mm,
                         particles.amplitude_contrast_frac], axis=1)
        unique, groups = np.unique(keys, axis=0, return_inverse=True)
    else:
        unique, groups = np.zeros((1, 0)), np.zeros(n, np.int64)
    groups = groups.reshape(-1) + 1
    m = len(unique)
    optics = Table(rlnOpticsGroupName=np.array([f"opticsGroup{g}" for g in range(1, m + 1)]),
                   rlnOpticsGroup=np.arange(1, m + 1))
    if particles.has_ctf:
        optics.update(rlnVoltage=unique[:, 0], rlnSphericalAberration=unique[:, 1],
                      rlnAmplitudeContrast=unique[:, 2])
    optics.update(rlnImagePixelSize=np.full(m, particles.pixel_size_ang),
                  rlnImageSize=np.full(m, particles.box_px),
                  rlnImageDimensionality=np.full(m, 2))
    return optics, groups


# Columns that RELION 3.1 keeps in data_optics (dropped from a 3.0 particles table on output).
_OPTICS_ONLY = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnMagnification",
                "rlnDetectorPixelSize", "rlnPixelSize", "rlnImagePixelSize", "rlnImageSize")


def _relative_or_absolute(path, out_dir):
    rel = os.path.relpath(path, out_dir)
    return path if rel.startswith(os.pardir) else rel


def save_particles(path, particles, rot_deg=None, tilt_deg=None, psi_deg=None, shift_x_ang=None,
                   shift_y_ang=None, random_subset=None, extra_columns=None):
    """Write particles to a RELION 3.1 STAR file (data_optics + data_particles), atomically.

    All original columns are kept; poses (and, when given, half-set labels and extra columns)
    are replaced. Image names point at the stacks relative to the output file's folder when the
    stacks live under it, else by absolute path.

    Parameters
    ----------
    path : str
        Destination STAR file.
    particles : Particles
    rot_deg, tilt_deg, psi_deg : (n,) arrays, optional
        New RELION Euler angles in degrees (default: the particles' current ones).
    shift_x_ang, shift_y_ang : (n,) arrays, optional
        New origins in Å (written as ``rlnOriginXAngst/YAngst``).
    random_subset : (n,) int array, optional
        Half-set labels 1/2 (``rlnRandomSubset``).
    extra_columns : dict[str, (n,) array], optional
        More particle columns (e.g. ``{"rlnMaxValueProbDistribution": ...}``).
    """
    n = len(particles)
    table = Table((k, np.array(v)) for k, v in particles.particles_table.items())
    if particles.optics_table:
        optics = Table((k, np.array(v)) for k, v in particles.optics_table.items())
        groups = particles.optics_group
    else:
        optics, groups = _optics_from_particles(particles)
        for k in _OPTICS_ONLY + ("rlnOriginX", "rlnOriginY"):
            table.pop(k, None)
    for k in ("rlnOriginX", "rlnOriginY"):
        table.pop(k, None)
    out_dir = os.path.dirname(os.path.abspath(os.fspath(path)))
    table["rlnImageName"] = np.array([image_name(i, _relative_or_absolute(p, out_dir))
                                      for i, p in particles.image_refs])
    columns = {"rlnOpticsGroup": groups,
               "rlnAngleRot": particles.rot_deg if rot_deg is None else rot_deg,
               "rlnAngleTilt": particles.tilt_deg if tilt_deg is None else tilt_deg,
               "rlnAnglePsi": particles.psi_deg if psi_deg is None else psi_deg,
               "rlnOriginXAngst": particles.shift_x_ang if shift_x_ang is None else shift_x_ang,
               "rlnOriginYAngst": particles.shift_y_ang if shift_y_ang is None else shift_y_ang}
    if random_subset is not None:
        columns["rlnRandomSubset"] = np.asarray(random_subset, dtype=np.int64)
    columns.update(extra_columns or {})
    for k, v in columns.items():
        v = np.asarray(v)
        if v.shape != (n,):
            raise ValueError(f"column {k} must have shape ({n},), got {v.shape}")
        table[k] = v
    write_star(path, OrderedDict(optics=optics, particles=table))


def write_particles_star(path, image_names, pixel_size_ang, box_px, voltage_kv, cs_mm,
                         amplitude_contrast_frac, defocus_u_ang, defocus_v_ang, defocus_angle_deg,
                         rot_deg=None, tilt_deg=None, psi_deg=None, shift_x_ang=None,
                         shift_y_ang=None, phase_shift_deg=None, random_subset=None,
                         extra_columns=None):
    """Write a RELION 3.1 particles STAR file with a single optics group, atomically.

    Parameters
    ----------
    path : str
        Destination STAR file.
    image_names : sequence of str, length n
        ``rlnImageName`` values, e.g. ``image_name(i, "particles.mrcs")``; relative paths are
        resolved from the STAR file's folder by :func:`load_particles`.
    pixel_size_ang, box_px : float, int
        Pixel size (Å) and image side (px).
    voltage_kv, cs_mm, amplitude_contrast_frac : float
        Optics-group CTF parameters.
    defocus_u_ang, defocus_v_ang, defocus_angle_deg : (n,) arrays
        Per-particle defocus (Å, underfocus positive) and astigmatism angle (degrees).
    rot_deg, tilt_deg, psi_deg, shift_x_ang, shift_y_ang : (n,) arrays, optional
        Poses (RELION Euler angles in degrees, origins in Å); zero by default.
    phase_shift_deg : (n,) array, optional
        Phase-plate phase shift in degrees (column omitted when None).
    random_subset : (n,) int array, optional
        Half-set labels 1/2 (column omitted when None).
    extra_columns : dict[str, (n,) array], optional
        More particle columns.
    """
    n = len(image_names)
    optics = Table(rlnOpticsGroupName=np.array(["opticsGroup1"]), rlnOpticsGroup=np.array([1]),
                   rlnVoltage=np.array([float(voltage_kv)]),
                   rlnSphericalAberration=np.array([float(cs_mm)]),
                   rlnAmplitudeContrast=np.array([float(amplitude_contrast_frac)]),
                   rlnImagePixelSize=np.array([float(pixel_size_ang)]),
                   rlnImageSize=np.array([int(box_px)]), rlnImageDimensionality=np.array([2]))
    zeros = np.zeros(n)
    columns = {"rlnImageName": np.asarray(image_names, dtype=str),
               "rlnOpticsGroup": np.ones(n, np.int64),
               "rlnDefocusU": defocus_u_ang, "rlnDefocusV": defocus_v_ang,
               "rlnDefocusAngle": defocus_angle_deg,
               "rlnAngleRot": zeros if rot_deg is None else rot_deg,
               "rlnAngleTilt": zeros if tilt_deg is None else tilt_deg,
               "rlnAnglePsi": zeros if psi_deg is None else psi_deg,
               "rlnOriginXAngst": zeros if shift_x_ang is None else shift_x_ang,
               "rlnOriginYAngst": zeros if shift_y_ang is None else shift_y_ang}
    if phase_shift_deg is not None:
        columns["rlnPhaseShift"] = phase_shift_deg
    if random_subset is not None:
        columns["rlnRandomSubset"] = np.asarray(random_subset, dtype=np.int64)
    columns.update(extra_columns or {})
    table = Table()
    for k, v in columns.items():
        v = np.broadcast_to(np.asarray(v), (n,)) if np.ndim(v) == 0 else np.asarray(v)
        if v.shape != (n,):
            raise ValueError(f"column {k} must have shape ({n},), got {v.shape}")
        table[k] = v
    write_star(path, OrderedDict(optics=optics, particles=table))
