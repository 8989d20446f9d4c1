"""Particle metadata and images from RELION STAR files (3.0 and 3.1) and MRC stacks.

Conventions
-----------
- Poses are RELION's: ZYZ Euler angles in degrees and origins in Å (``rlnOriginXAngst/YAngst``);
  RELION 3.0 ``rlnOriginX/Y`` (px) are converted on reading. Files are always written in the
  RELION 3.1 layout (``data_optics`` + ``data_particles``).
- ``rlnImageName`` is ``NNNNNN@stack.mrcs`` with a 1-based index; :class:`Particles` stores
  0-based indices and absolute stack paths.
- Every value is validated on loading; a bad input raises
  :class:`~nonuniform.engine.errors.InputError` naming the file, column or particle.
"""

import dataclasses
import logging
import os
import re

import numpy as np

from .errors import InputError
from .io import open_stack, release_stack_pages, stack_dims
from .star import Table, read_star
from .particles_write import image_name, save_particles, write_particles_star  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

# Columns that must be present (in data_particles or data_optics) for CTF correction.
CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
               "rlnSphericalAberration", "rlnAmplitudeContrast")

# Relative tolerance under which two pixel sizes count as equal (STAR files store ~6 digits).
_PIXEL_SIZE_RTOL = 1e-4


@dataclasses.dataclass(eq=False)
class Particles:
    """Particle images and metadata read from a RELION STAR file.

    Every array is per particle, shape ``(n,)``, even when the value comes from an optics
    group. CTF arrays hold NaN when the STAR file lacks the column (``has_ctf`` is then False).

    Attributes
    ----------
    star_path : str
        Absolute path of the STAR file read.
    image_refs : list of (int, str)
        0-based image index and absolute path of the stack holding each particle.
    pixel_size_ang, box_px : float, int
        Pixel size in Å and image side in pixels, common to all particles.
    rot_deg, tilt_deg, psi_deg : (n,) float64
        RELION ZYZ Euler angles in degrees.
    shift_x_ang, shift_y_ang : (n,) float64
        RELION origin offsets in Å (``rlnOriginXAngst/YAngst``).
    defocus_u_ang, defocus_v_ang, defocus_angle_deg, voltage_kv, cs_mm,
    amplitude_contrast_frac, phase_shift_deg, bfactor_ang2, ctf_scale : (n,) float64
        CTF parameters (RELION conventions; defaults 0, 0, 1 for the last three).
    random_subset : (n,) int64
        Half-set label 1 or 2 (``rlnRandomSubset``), 0 when absent.
    optics_group : (n,) int64
        Optics-group number of each particle.
    has_ctf : bool
        True when all of :data:`CTF_COLUMNS` were present.
    optics_table, particles_table : Table
        The raw ``data_optics`` (empty for RELION 3.0 files) and particles blocks, kept to
        round-trip columns this engine does not use.
    """

    star_path: str
    image_refs: list
    pixel_size_ang: float
    box_px: int
    rot_deg: np.ndarray
    tilt_deg: np.ndarray
    psi_deg: np.ndarray
    shift_x_ang: np.ndarray
    shift_y_ang: np.ndarray
    defocus_u_ang: np.ndarray
    defocus_v_ang: np.ndarray
    defocus_angle_deg: np.ndarray
    voltage_kv: np.ndarray
    cs_mm: np.ndarray
    amplitude_contrast_frac: np.ndarray
    phase_shift_deg: np.ndarray
    bfactor_ang2: np.ndarray
    ctf_scale: np.ndarray
    random_subset: np.ndarray
    optics_group: np.ndarray
    has_ctf: bool
    optics_table: Table
    particles_table: Table
    # Local copies the images are read from (stage_stacks), by original stack path; the STAR files
    # written keep naming the originals.
    local_copies: dict = dataclasses.field(default_factory=dict)

    def __len__(self):
        return len(self.image_refs)


def stage_stacks(particles, folder):
    """Copy the particles' image stacks into ``folder`` (e.g. a node's local disk), then read from there.

    Copies are written under a temporary name and renamed, so several processes (MPI ranks of one
    node) may stage into one folder; a copy already there with the original's size and a modification
    time not older than the original's is reused (a resumed run copies nothing). Raises InputError
    when ``folder`` cannot be created or has not enough free space.
    """
    import hashlib
    import shutil

    sources = sorted({path for _, path in particles.image_refs})
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--scratch {folder}: cannot create it ({exc.strerror})") from None
    todo = []
    for src in sources:
        name = f"{hashlib.sha1(src.encode()).hexdigest()[:10]}_{os.path.basename(src)}"
        dst = os.path.join(folder, name)
        st = os.stat(src)
        if not (os.path.exists(dst) and os.path.getsize(dst) == st.st_size and os.path.getmtime(dst) >= st.st_mtime):
            todo.append((src, dst, st.st_size))
        particles.local_copies[src] = dst
    need = sum(size for _, _, size in todo)
    free = shutil.disk_usage(folder).free
    if need > free:
        particles.local_copies.clear()
        raise InputError(f"--scratch {folder}: the stacks need {need / 2 ** 30:.1f} GiB, only {free / 2 ** 30:.1f} GiB "
                         "are free")
    for src, dst, _ in todo:
        part = f"{dst}.part{os.getpid()}"
        shutil.copyfile(src, part)
        os.replace(part, dst)
    logger.info("stacks staged in %s: %d copied (%.2f GiB), %d already there", folder, len(todo), need / 2 ** 30,
                len(sources) - len(todo))


def _select_particles_block(blocks, star_path):
    if "particles" in blocks:
        name = "particles"
    else:
        loops = [k for k, t in blocks.items() if k != "optics" and t.loop]
        with_names = [k for k in loops if "rlnImageName" in blocks[k]]
        if not loops:
            found = ", ".join(f"data_{k}" for k in blocks) or "none"
            raise InputError(f"no particles block in {star_path}: expected data_particles "
                             f"(RELION 3.1) or a data_ loop (RELION 3.0); found blocks: {found}")
        name = (with_names or loops)[0]
    table = blocks[name]
    if "rlnImageName" not in table:
        raise InputError(f"missing rlnImageName column in data_{name} of {star_path}: "
                         f"particles need image references (NNNNNN@stack.mrcs)")
    if table.n_rows == 0:
        raise InputError(f"no particles in data_{name} of {star_path}")
    return name, table


def _optics_rows(table, optics, star_path):
    """Optics-group number of each particle and the matching data_optics row (or None)."""
    n = table.n_rows
    groups = np.asarray(table["rlnOpticsGroup"]) if "rlnOpticsGroup" in table else None
    if not optics:
        return (np.ones(n, np.int64) if groups is None else groups.astype(np.int64)), None
    m = optics.n_rows
    numbers = np.asarray(optics.get("rlnOpticsGroup", np.arange(1, m + 1))).astype(np.int64)
    if groups is None:
        if m != 1:
            raise InputError(f"data_particles of {star_path} has no rlnOpticsGroup column but "
                             f"data_optics defines {m} optics groups")
        groups = np.full(n, numbers[0])
    groups = groups.astype(np.int64)
    row_of = {int(g): r for r, g in enumerate(numbers)}
    rows = np.array([row_of.get(int(g), -1) for g in groups])
    if (rows < 0).any():
        first = int(np.argmax(rows < 0))
        raise InputError(f"particle #{first + 1} of {star_path} is in optics group "
                         f"{groups[first]}, which data_optics does not define")
    return groups, rows


def _pixel_size(column, groups, star_path):
    ps = column("rlnImagePixelSize")
    if ps is None:
        ps = column("rlnPixelSize")
    if ps is None:
        det, mag = column("rlnDetectorPixelSize"), column("rlnMagnification")
        if det is not None and mag is not None:
            ps = np.asarray(det, float) * 1e4 / np.asarray(mag, float)  # um * 1e4 / mag = Å
    if ps is None:
        raise InputError(f"missing pixel size in {star_path}: neither rlnImagePixelSize "
                         f"(data_optics) nor rlnPixelSize nor rlnDetectorPixelSize with "
                         f"rlnMagnification")
    ps = np.asarray(ps, dtype=np.float64)
    if not (np.isfinite(ps).all() and (ps > 0).all()):
        raise InputError(f"invalid pixel size in {star_path}: values must be positive")
    if ps.max() - ps.min() > _PIXEL_SIZE_RTOL * ps.min():
        advice = ("; refine particles with different pixel sizes separately or rescale them to "
                  "a common pixel size first")
        by_group = {int(g): np.unique(ps[groups == g]) for g in np.unique(groups)}
        if all(len(v) == 1 for v in by_group.values()):
            listed = ", ".join(f"group {g}: {v[0]:g} Å" for g, v in by_group.items())
            raise InputError(f"pixel size differs between optics groups in {star_path} "
                             f"({listed}){advice}")
        raise InputError(f"pixel size differs between particles in {star_path} "
                         f"({ps.min():g} to {ps.max():g} Å){advice}")
    return float(ps[0])


def _parse_image_names(names, star_path):
    """0-based indices and stack names (as written) from ``NNNNNN@stack`` strings."""
    index0 = np.empty(len(names), np.int64)
    files = []
    for i, name in enumerate(names):
        idx, sep, fname = name.partition("@")
        if not sep:  # a whole single-image file
            idx, fname = "1", name
        try:
            index0[i] = int(idx) - 1
        except ValueError:
            raise InputError(f"particle #{i + 1} of {star_path}: bad rlnImageName {name!r} "
                             f"(expected NNNNNN@stack.mrcs)") from None
        if index0[i] < 0:
            raise InputError(f"particle #{i + 1} of {star_path}: image index {idx} in "
                             f"{name!r} must be 1 or more (RELION indices are 1-based)")
        files.append(re.sub(r":mrcs?$", "", fname))
    return index0, files


def _resolve_stack(fname, star_dir):
    """Absolute path of a stack: relative to the STAR file's folder, the working directory, or
    a parent of the STAR folder (RELION writes paths relative to its project folder)."""
    if os.path.isabs(fname):
        return fname if os.path.isfile(fname) else None
    bases = [star_dir, os.getcwd()]
    folder = star_dir
    while os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
        bases.append(folder)
    for base in dict.fromkeys(bases):  # in order, without repeats
        p = os.path.normpath(os.path.join(base, fname))
        if os.path.isfile(p):
            return p
    return None


def _check_stacks(index0, files, names, image_size, star_path):
    """Resolve every stack, check it exists, holds the indices used, and has one square box."""
    star_dir = os.path.dirname(star_path)
    unique, first, codes = np.unique(np.array(files, dtype=str), return_index=True,
                                     return_inverse=True)
    max_index = np.full(len(unique), -1, np.int64)
    np.maximum.at(max_index, codes, index0)
    abs_paths, box, box_file = [], None, None
    for u, fname in enumerate(unique.tolist()):
        path = _resolve_stack(fname, star_dir)
        if path is None:
            raise InputError(f"image stack not found: {fname} (first referenced by particle "
                             f"#{first[u] + 1}, {names[first[u]]}, in {star_path}; looked "
                             f"relative to {star_dir}, its parent folders and {os.getcwd()})")
        n_img, ny, nx = stack_dims(path)
        if nx != ny:
            raise InputError(f"non-square images ({nx} x {ny} px) in {path}")
        if box is None:
            box, box_file = nx, path
        elif nx != box:
            raise InputError(f"box size differs between stacks: {box_file} has {box} px "
                             f"images, {path} has {nx} px")
        if max_index[u] >= n_img:
            bad = int(np.flatnonzero((codes == u) & (index0 >= n_img))[0])
            raise InputError(f"image index {index0[bad] + 1} out of range for {path}, which "
                             f"holds {n_img} images (particle #{bad + 1}, {names[bad]}, in "
                             f"{star_path})")
        abs_paths.append(path)
    if image_size is not None and (np.asarray(image_size) != box).any():
        bad = int(np.argmax(np.asarray(image_size) != box))
        raise InputError(f"rlnImageSize {image_size[bad]} of particle #{bad + 1} in {star_path} "
                         f"differs from the {box} px images in {abs_paths[codes[bad]]}")
    refs = [(int(i), abs_paths[c]) for i, c in zip(index0.tolist(), codes.tolist())]
    return refs, int(box)


def load_particles(star_path, require_ctf=True):
    """Read and validate a RELION 3.0 or 3.1 particles STAR file.

    Parameters
    ----------
    star_path : str
        STAR file with ``data_particles`` (+ ``data_optics``) or a single RELION 3.0 loop.
    require_ctf : bool
        Refuse files without the CTF columns (:data:`CTF_COLUMNS`).

    Returns
    -------
    Particles

    Raises
    ------
    InputError
        With a message naming the missing file, column, stack or particle.
    """
    star_path = os.path.abspath(os.fspath(star_path))
    if not os.path.isfile(star_path):
        raise InputError(f"particles STAR file not found: {star_path}")
    blocks = read_star(star_path)
    name, table = _select_particles_block(blocks, star_path)
    optics = blocks.get("optics", Table()) if name == "particles" else Table()
    n = table.n_rows
    groups, rows = _optics_rows(table, optics, star_path)

    def column(label, dtype=np.float64):
        if label in table:
            values = table[label]
        elif rows is not None and label in optics:
            values = optics[label][rows]
        else:
            return None
        try:
            return np.asarray(values).astype(dtype)
        except ValueError:
            raise InputError(f"column {label} of {star_path} is not numeric") from None

    def numeric(label, default):
        values = column(label)
        if values is None:
            return np.full(n, default, np.float64)
        if not np.isfinite(values).all():
            raise InputError(f"column {label} of {star_path} has a NaN or Inf value "
                             f"(particle #{int(np.argmax(~np.isfinite(values))) + 1})")
        return values

    pixel_size_ang = _pixel_size(column, groups, star_path)
    names = np.asarray(table["rlnImageName"]).astype(str).tolist()
    index0, files = _parse_image_names(names, star_path)
    missing = [c for c in CTF_COLUMNS if column(c) is None]
    if missing and require_ctf:
        where = f"data_{name}" + (" or data_optics" if optics else "")
        raise InputError(f"missing CTF columns in {star_path} ({where}): {', '.join(missing)}")
    image_size = column("rlnImageSize", np.int64)
    image_refs, box_px = _check_stacks(index0, files, names, image_size, star_path)

    def origin(axis):
        ang = column(f"rlnOrigin{axis}Angst")
        if ang is not None:
            return numeric(f"rlnOrigin{axis}Angst", 0.0)
        return numeric(f"rlnOrigin{axis}", 0.0) * pixel_size_ang  # RELION 3.0: pixels

    ctf = {c: (numeric(c, np.nan) if c not in missing else np.full(n, np.nan))
           for c in CTF_COLUMNS}
    subset = column("rlnRandomSubset", np.int64)
    logger.debug("%s: %d particles, %d px box, %.4f Å/px, %d stacks", star_path, n, box_px,
                 pixel_size_ang, len({p for _, p in image_refs}))
    return Particles(
        star_path=star_path, image_refs=image_refs, pixel_size_ang=pixel_size_ang,
        box_px=box_px, rot_deg=numeric("rlnAngleRot", 0.0),
        tilt_deg=numeric("rlnAngleTilt", 0.0), psi_deg=numeric("rlnAnglePsi", 0.0),
        shift_x_ang=origin("X"), shift_y_ang=origin("Y"),
        defocus_u_ang=ctf["rlnDefocusU"], defocus_v_ang=ctf["rlnDefocusV"],
        defocus_angle_deg=ctf["rlnDefocusAngle"], voltage_kv=ctf["rlnVoltage"],
        cs_mm=ctf["rlnSphericalAberration"], amplitude_contrast_frac=ctf["rlnAmplitudeContrast"],
        phase_shift_deg=numeric("rlnPhaseShift", 0.0), bfactor_ang2=numeric("rlnCtfBfactor", 0.0),
        ctf_scale=numeric("rlnCtfScalefactor", 1.0),
        random_subset=np.zeros(n, np.int64) if subset is None else subset,
        optics_group=groups, has_ctf=not missing, optics_table=optics, particles_table=table)


def check_images(particles, batch=1024, part=(0, 1)):
    """Read every particle image once: InputError naming the first that holds NaN or Inf.

    For commands that write before they read all images (``refine``), so that bad images are refused
    before anything is written. Costs one pass over the stacks; ``part = (r, K)`` reads only the
    batches r, r + K, ... (MPI rank r of K).
    """
    starts = range(0, len(particles), batch)
    for start in list(starts)[part[0]::part[1]]:
        read_images(particles, np.arange(start, min(start + batch, len(particles))))


def read_images(particles, indices, out=None):
    """Read particle images from their memory-mapped stacks.

    Parameters
    ----------
    particles : Particles
    indices : (k,) int array-like
        Particle numbers (0-based rows of the STAR file).
    out : (k, N, N) float32 array, optional
        Where to put them (e.g. a pinned host buffer for a GPU upload).

    Returns
    -------
    (k, N, N) float32 array
        Real-space images, origin at ``N // 2``, as stored (no CTF or shift correction).

    Raises
    ------
    InputError
        If an image holds NaN or Inf (the message names the stack and image index).
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    n = len(particles)
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise IndexError(f"particle indices must be in [0, {n}), got "
                         f"{indices.min()}..{indices.max()}")
    box = particles.box_px
    if out is None:
        out = np.empty((indices.size, box, box), dtype=np.float32)
    elif out.shape != (indices.size, box, box) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {(indices.size, box, box)}, got {out.dtype} {out.shape}")
    by_file = {}
    for k, i in enumerate(indices.tolist()):
        index0, path = particles.image_refs[i]
        by_file.setdefault(path, []).append((index0, k))
    for path, pairs in by_file.items():
        pairs.sort()
        stack = open_stack(particles.local_copies.get(path, path))
        locs = np.fromiter((p[0] for p in pairs), np.int64, len(pairs))
        dest = np.fromiter((p[1] for p in pairs), np.int64, len(pairs))
        out[dest] = stack[locs]
        release_stack_pages(particles.local_copies.get(path, path))
    finite = np.isfinite(out).all(axis=(1, 2))
    if not finite.all():
        k = int(np.argmin(finite))
        index0, path = particles.image_refs[indices[k]]
        raise InputError(f"particle image {image_name(index0, path)} (particle "
                         f"#{indices[k] + 1} of {particles.star_path}) contains NaN or Inf values")
    return out
