"""Conversion between Scipion objects and the files of the ``nonuniform`` engine.

This is the only module that knows both sides: protocols and viewers call it, the engine never
imports Scipion. The engine reads and writes RELION 3.1 STAR files, so a ``SetOfParticles``
goes out as a STAR file (one optics group, CTF per particle, stacks referenced in place) and the
refined ``particles.star`` comes back onto a copy of the input set, matched by particle id
(``rlnImageId`` = Scipion ``objId``), never by row order.

Geometry (docs: README *Conventions*): a Scipion ``Transform`` of an ``ALIGN_PROJ`` set is
``M = [[Aᵀ, Aᵀs], [0, 1]]`` where ``A = A(rot, tilt, psi)`` is RELION's rotation matrix and
``s = (rlnOriginX, rlnOriginY, 0)`` the RELION origin in pixels; so ``A = M[:3, :3]ᵀ`` and
``s = A · M[:3, 3]``.
"""

import json
import os

import numpy as np
from pwem.constants import ALIGN_PROJ
from pwem.objects import FSC, Float, Integer, Transform

from .engine import geometry, star, symmetry
from .engine.errors import InputError
from .engine.particles_write import image_name, write_particles_star
from .engine.refine import MIN_PARTICLES_PER_HALF, MIN_START_ELEMENTS
from .engine.refine_state import checkpoint_files

# File extensions the engine reads in place (mrcfile); anything else is converted once.
MRC_EXTENSIONS = (".mrc", ".mrcs", ".st", ".map")

# Engine FSC columns (fsc.csv) and the labels Scipion shows for them.
FSC_LABELS = {
    "fsc_unmasked": "Unmasked",
    "fsc_masked": "Masked",
    "fsc_phase_randomized": "Phase randomized (masked)",
    "fsc_corrected": "Corrected (phase-randomization)",
}

# Per-particle statistics copied back from the engine's particles.star as Scipion attributes.
POSTERIOR_COLUMNS = {"rlnMaxValueProbDistribution": Float, "rlnNrOfSignificantSamples": Integer}


# ----------------------------------------------------------------------------------------------
# geometry


def matricesFromGeometry(rot_deg, tilt_deg, psi_deg, origin_x_px, origin_y_px):
    """Scipion ``ALIGN_PROJ`` 4×4 matrices of RELION poses (angles in degrees, origins in px), vectorized.

    Every argument is a scalar or an (n,) array; returns (..., 4, 4).
    """
    a = geometry.euler_to_matrix(rot_deg, tilt_deg, psi_deg)
    s = np.stack(np.broadcast_arrays(np.asarray(origin_x_px, float), np.asarray(origin_y_px, float),
                                     np.zeros(a.shape[:-2])), axis=-1)
    m = np.zeros(a.shape[:-2] + (4, 4))
    m[..., :3, :3] = np.swapaxes(a, -1, -2)
    m[..., :3, 3] = np.einsum("...ji,...j->...i", a, s)
    m[..., 3, 3] = 1.0
    return m


def matrixFromGeometry(rot_deg, tilt_deg, psi_deg, origin_x_px, origin_y_px):
    """Scipion ``ALIGN_PROJ`` 4×4 matrix of one RELION pose (angles in degrees, origin in px)."""
    return matricesFromGeometry(rot_deg, tilt_deg, psi_deg, origin_x_px, origin_y_px)


def geometryFromMatrices(matrices):
    """Inverse of :func:`matricesFromGeometry`: ``rot, tilt, psi`` (degrees) and the origin (px), each (...).

    The out-of-plane component of the translation (not representable in a projection) is dropped.
    """
    m = np.asarray(matrices, dtype=np.float64)
    a = np.swapaxes(m[..., :3, :3], -1, -2)
    rot, tilt, psi = geometry.matrix_to_euler(a)
    s = np.einsum("...ij,...j->...i", a, m[..., :3, 3])
    return rot, tilt, psi, s[..., 0], s[..., 1]


def geometryFromMatrix(matrix):
    """:func:`geometryFromMatrices` of one matrix, as five floats."""
    return tuple(float(v) for v in geometryFromMatrices(matrix))


# ----------------------------------------------------------------------------------------------
# particles -> engine


def _plainFileName(filename):
    """File name without Scipion's ``:mrcs``-style format suffix, as an absolute path."""
    base, sep, suffix = filename.rpartition(":")
    if sep and suffix and "/" not in suffix and len(suffix) <= 5:
        filename = base
    return os.path.abspath(filename)


def _isMrc(filename):
    return filename.lower().endswith(MRC_EXTENSIONS)


class _StackWriter:
    """Images that the engine cannot read in place, gathered into one MRC stack in ``extra``."""

    def __init__(self, path, box, pixel_size):
        self.path, self.box, self.pixel_size = path, box, pixel_size
        self.images = []

    def add(self, location):
        from pwem.emlib.image import ImageHandler

        img = ImageHandler().read(location).getData().astype(np.float32)
        self.images.append(img.reshape(self.box, self.box))
        return len(self.images) - 1

    def write(self):
        if self.images:
            from .engine.io import write_stack

            write_stack(self.path, np.stack(self.images), self.pixel_size)


def writeSetOfParticles(partSet, starFile, extraDir):
    """Write the enabled particles of ``partSet`` as a RELION 3.1 STAR file for the engine.

    MRC stacks are referenced in place (absolute paths); images in other formats are converted
    once into ``extraDir/converted_particles.mrcs``. CTF (defocus U/V in Å, angle and phase
    shift in degrees) is written per particle, voltage / Cs / amplitude contrast / pixel size as
    one optics group; ``rlnImageId`` carries the Scipion id. An ``ALIGN_PROJ`` input writes its
    poses, and ``_rlnRandomSubset`` attributes (1/2) keep an existing gold-standard split.

    Returns
    -------
    int
        Number of particles written.
    """
    acq = partSet.getAcquisition()
    apix = float(partSet.getSamplingRate())
    box = int(partSet.getXDim())
    hasProj = partSet.hasAlignmentProj()
    converted = _StackWriter(os.path.join(os.path.abspath(extraDir), "converted_particles.mrcs"), box, apix)
    names, ids, ctf, poses, subsets = [], [], [], [], []
    for p in partSet.iterItems(orderBy="id"):
        if not p.isEnabled():
            continue
        index, fn = p.getLocation()
        fn = _plainFileName(fn)
        if _isMrc(fn) and index:
            names.append(image_name(index - 1, fn))
        else:  # another format, or one image per file: converted once into the run's extra folder
            names.append((converted.add(p.getLocation()), converted.path))
        ids.append(p.getObjId())
        c = p.getCTF()
        phase = c.getPhaseShift() if hasattr(c, "getPhaseShift") else None
        ctf.append((c.getDefocusU(), c.getDefocusV(), c.getDefocusAngle(), phase or 0.0))
        if hasProj:
            poses.append(p.getTransform().getMatrix())
        subset = getattr(p, "_rlnRandomSubset", None)
        subsets.append(int(subset.get()) if subset is not None and subset.get() is not None else 0)
    converted.write()
    names = [n if isinstance(n, str) else image_name(*n) for n in names]
    ctf = np.array(ctf, dtype=np.float64).reshape(-1, 4)
    kw = {}
    if hasProj:
        rot, tilt, psi, ox, oy = geometryFromMatrices(np.array(poses, dtype=np.float64).reshape(-1, 4, 4))
        kw = dict(rot_deg=rot, tilt_deg=tilt, psi_deg=psi, shift_x_ang=ox * apix, shift_y_ang=oy * apix)
    subsets = np.array(subsets, dtype=np.int64)
    if len(subsets) and np.isin(subsets, (1, 2)).all():
        kw["random_subset"] = subsets
    write_particles_star(starFile, names, apix, box, acq.getVoltage(), acq.getSphericalAberration(),
                         acq.getAmplitudeContrast(), ctf[:, 0], ctf[:, 1], ctf[:, 2],
                         phase_shift_deg=ctf[:, 3] if np.any(ctf[:, 3]) else None,
                         extra_columns={"rlnImageId": np.array(ids, dtype=np.int64)}, **kw)
    return len(names)


def engineMapFile(filename, extraDir, name):
    """Absolute path of ``filename`` readable by the engine (MRC as is; other formats converted)."""
    fn = _plainFileName(filename)
    if _isMrc(fn):
        return fn
    from pwem.emlib.image import ImageHandler

    out = os.path.join(os.path.abspath(extraDir), name + ".mrc")
    ImageHandler().convert(fn, out)
    return out


# ----------------------------------------------------------------------------------------------
# engine -> Scipion


class ParticlesStarRows:
    """Rows of an engine ``particles.star`` by Scipion id (``rlnImageId``).

    Raises InputError when the file has no ``rlnImageId`` column (not written from Scipion).
    """

    def __init__(self, starFile):
        blocks = star.read_star(starFile)
        table = blocks.get("particles")
        if table is None or "rlnImageId" not in table:
            raise InputError(f"{starFile}: no data_particles block with rlnImageId")
        self.pixelSize = float(blocks["optics"]["rlnImagePixelSize"][0])
        self.table = table
        self.rowOf = {int(i): r for r, i in enumerate(table["rlnImageId"])}
        self._matrices = None

    def __len__(self):
        return len(self.rowOf)

    def __contains__(self, objId):
        return objId in self.rowOf

    def value(self, objId, column):
        return self.table[column][self.rowOf[objId]]

    def matrices(self):
        """Scipion ``ALIGN_PROJ`` matrices of every row, (n, 4, 4), computed once."""
        if self._matrices is None:
            t = self.table
            self._matrices = matricesFromGeometry(
                np.asarray(t["rlnAngleRot"], float), np.asarray(t["rlnAngleTilt"], float),
                np.asarray(t["rlnAnglePsi"], float), np.asarray(t["rlnOriginXAngst"], float) / self.pixelSize,
                np.asarray(t["rlnOriginYAngst"], float) / self.pixelSize)
        return self._matrices

    def updateParticle(self, particle):
        """Give ``particle`` its refined pose (``ALIGN_PROJ``), half-set and posterior statistics."""
        objId = particle.getObjId()
        row = self.rowOf[objId]
        particle.setTransform(Transform(self.matrices()[row]))
        if "rlnRandomSubset" in self.table:
            particle._rlnRandomSubset = Integer(int(self.table["rlnRandomSubset"][row]))
        for column, kind in POSTERIOR_COLUMNS.items():
            if column in self.table:
                value = self.table[column][row]
                setattr(particle, "_" + column, kind(int(value) if kind is Integer else float(value)))


def copyRefinedParticles(inputSet, outputSet, starFile):
    """Fill ``outputSet`` with the input particles that the engine refined, with their new poses.

    Items are matched by id, so disabled items, subsets and any row order survive; every other
    attribute of the input items (CTF, coordinates, micrograph ids...) is kept.
    """
    rows = ParticlesStarRows(starFile)
    outputSet.copyInfo(inputSet)
    outputSet.setAlignmentProj()

    def update(item, row=None):
        if item.getObjId() in rows:
            rows.updateParticle(item)
        else:
            item._appendItem = False

    outputSet.copyItems(inputSet, updateItemCallback=update, doClone=False)
    return outputSet


def readFscCurves(csvFile):
    """The engine's ``fsc.csv`` as a list of labelled Scipion ``FSC`` objects (x in 1/Å)."""
    cols, _ = readFscTable(csvFile)
    out = []
    for key, label in FSC_LABELS.items():
        if key in cols:
            f = FSC(objLabel=label)
            f.setData(cols["freq_inv_ang"].tolist(), cols[key].tolist())
            out.append(f)
    return out


def finishedIterations(runDir):
    """Iterations of an engine run folder with a committed checkpoint (what ``--continue`` resumes)."""
    return [it for it, _ in checkpoint_files(runDir, ".npz")]


def lastIteration(runDir):
    """``(iteration, resolution Å)`` of the newest iteration the engine logged in ``runDir``, or None."""
    files = checkpoint_files(runDir, ".json")
    if not files:
        return None
    try:
        with open(files[-1][1]) as f:
            last = json.load(f)["history"][-1]
    except (OSError, ValueError, KeyError, IndexError):  # being replaced
        return None
    return last["iteration"], last["resolution_ang"]


# ----------------------------------------------------------------------------------------------
# checks the protocols share with the engine


def symmetryError(name):
    """None if ``name`` is a symmetry group the engine knows (RELION names), else the message."""
    try:
        symmetry.symmetry_matrices(name)
    except (InputError, ValueError) as exc:
        return str(exc)
    return None


def minParticlesPerHalf():
    """Fewest particles per half-set the engine accepts."""
    return MIN_PARTICLES_PER_HALF


def coarseStartWarning(diameterA, lowpassA):
    """The engine's warning for a start with too few resolution elements, or None."""
    elements = diameterA / lowpassA
    if elements >= MIN_START_ELEMENTS:
        return None
    return (f"The initial low-pass ({lowpassA:.0f} Å) leaves only {elements:.1f} resolution elements across "
            f"the {diameterA:.0f} Å particle: the first pose search may not orient the images. "
            f"A start at {diameterA / 4:.0f} Å or finer is safer.")


def mpiProblem():
    """Why the engine cannot run under MPI here (a clause), or None when mpi4py imports."""
    try:
        import mpi4py  # noqa: F401 - only the package: MPI itself starts in the engine's processes
    except ImportError:
        return "mpi4py is not installed (install the MPI extra: pip install 'scipion-em-nonuniform[mpi]')"
    return None


def gpuProblem(gpuId=0):
    """Why the engine cannot run on GPU ``gpuId`` here (a sentence), or None when it can."""
    from .engine.backend import gpu_problem

    return gpu_problem(gpuId)


# ----------------------------------------------------------------------------------------------
# results for the viewers and the comparison of refinements


class Poses:
    """Poses of a particle set: ``ids`` (n,), ``rotations`` (n, 3, 3) RELION matrices, in-plane
    ``shifts_ang`` (n, 2) (RELION origin x, y in Å), and the Euler ``rot_deg``, ``tilt_deg`` (n,)."""

    def __init__(self, ids, rot_deg, tilt_deg, psi_deg, shifts_ang):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.rot_deg = np.asarray(rot_deg, dtype=np.float64)
        self.tilt_deg = np.asarray(tilt_deg, dtype=np.float64)
        self.rotations = geometry.euler_to_matrix(self.rot_deg, self.tilt_deg, psi_deg).reshape(-1, 3, 3)
        self.shifts_ang = np.asarray(shifts_ang, dtype=np.float64).reshape(-1, 2)

    def __len__(self):
        return len(self.ids)


def posesFromStar(starFile):
    """:class:`Poses` of a RELION 3.1 particles STAR file (ids from ``rlnImageId``, else 1..n).

    Raises InputError when the file has no angles (particles without poses).
    """
    blocks = star.read_star(starFile)
    table = blocks.get("particles")
    if table is None or "rlnAngleRot" not in table:
        raise InputError(f"{starFile}: no particle poses (rlnAngleRot ...)")
    n = len(table["rlnAngleRot"])
    ids = table["rlnImageId"] if "rlnImageId" in table else np.arange(1, n + 1)
    shifts = [table[c] if c in table else np.zeros(n) for c in ("rlnOriginXAngst", "rlnOriginYAngst")]
    return Poses(ids, table["rlnAngleRot"], table["rlnAngleTilt"], table["rlnAnglePsi"], np.stack(shifts, axis=1))


def posesFromSet(partSet):
    """:class:`Poses` of the enabled items of an ``ALIGN_PROJ`` SetOfParticles, ids = ``objId``."""
    apix = float(partSet.getSamplingRate())
    ids, matrices = [], []
    for p in partSet.iterItems(orderBy="id"):
        if p.isEnabled():
            ids.append(p.getObjId())
            matrices.append(p.getTransform().getMatrix())
    rot, tilt, psi, ox, oy = geometryFromMatrices(np.array(matrices, dtype=np.float64).reshape(-1, 4, 4))
    return Poses(ids, rot, tilt, psi, np.stack([ox, oy], axis=1) * apix)


def poseChanges(first, second, symmetryGroup="C1"):
    """Change of pose of each particle present in both :class:`Poses` (matched by id).

    With a point group, poses ``A`` and ``A R`` (``R`` a symmetry operator of the map) give the
    same image, so the change is the smallest angle between ``A1`` and any ``A2 R``.

    Returns
    -------
    ids : (m,) int array
    angle_deg : (m,) array
        Angle of the rotation between the two orientations (0 to 180°).
    shift_ang : (m, 2) array
        ``second`` minus ``first`` in-plane shift, in Å.
    """
    ids, i1, i2 = np.intersect1d(first.ids, second.ids, return_indices=True)
    a1, a2 = first.rotations[i1], second.rotations[i2]
    angle = np.full(len(ids), np.inf)
    for r in symmetry.symmetry_matrices(symmetryGroup):
        angle = np.minimum(angle, geometry.angular_distance_deg(a1, a2 @ r))
    return ids, angle, second.shifts_ang[i2] - first.shifts_ang[i1]


def readMap(filename):
    """``(map, pixel size in Å)`` of an MRC file (a Scipion ``:mrc`` suffix is allowed)."""
    from .engine.io import read_mrc

    return read_mrc(_plainFileName(filename))


def readFscTable(csvFile):
    """Columns (dict of arrays: ``freq_inv_ang``, ``fsc_corrected``...) and ``# key=value``
    metadata (resolutions in Å as text) of an FSC file written by the engine."""
    from .engine.fsc import read_fsc_csv

    return read_fsc_csv(csvFile)


def engineFscSeed(seed, iteration):
    """Seed of the random phases of the gold-standard FSC of refinement ``iteration`` (the engine
    seeds them with ``[seed, iteration]``; :func:`writeCorrectedFsc` with it reproduces that FSC)."""
    return [int(seed), int(iteration)]


def writeCorrectedFsc(map1File, map2File, maskFile, pixelSizeA, csvFile, threshold=0.143, seed=0):
    """Masked, phase-randomization-corrected FSC of two maps, written as the engine's FSC CSV.

    The engine's ``corrected_fsc`` (the one a refinement reports) with the phase randomization
    seeded by ``seed`` (an int or a sequence of ints, as ``numpy.random.default_rng`` takes).

    Returns
    -------
    resolutions : dict
        Resolution in Å at ``threshold`` of ``fsc_unmasked``, ``fsc_masked``, ``fsc_corrected``.
    warnings : tuple of str
        The engine's sanity checks that failed (mask too sharp...).
    """
    from .engine.fsc import corrected_fsc
    from .engine.io import read_mask, read_volume
    from .engine.refine_state import write_iteration_fsc

    v1, _ = read_volume(_plainFileName(map1File))
    v2, _ = read_volume(_plainFileName(map2File))
    mask, _ = read_mask(_plainFileName(maskFile))
    res = corrected_fsc(v1, v2, mask, pixelSizeA, np.random.default_rng(seed), threshold=threshold)
    write_iteration_fsc(csvFile, res)
    return res.resolutions_ang(), res.warnings
