"""File input/output: atomic writes, JSON, MRC maps and stacks.

Every writer is atomic: it writes a temporary file next to the target and renames it over the
target only when writing succeeded (:func:`atomic_write`), so an interrupted run never leaves a
half-written output behind.

Conventions
-----------
- Arrays are ``(z, y, x)`` (maps) or ``(n, y, x)`` (image stacks), float32 once read.
- MRC voxel size is the header ``voxel_size.x`` in Å.

RELION STAR tables (:class:`Table`, :func:`read_star`, :func:`write_star`) live in
:mod:`nonuniform.engine.star`, the particle-level API (:class:`Particles`, :func:`load_particles`,
:func:`read_images`, :func:`save_particles`, :func:`write_particles_star`, :func:`image_name`) in
:mod:`nonuniform.engine.particles`; both are re-exported here.
"""

import contextlib
import json
import logging
import os
import tempfile
import threading
import warnings
from collections import OrderedDict

import mrcfile
import mrcfile.utils
import numpy as np

from .errors import InputError

logger = logging.getLogger(__name__)

_MAX_OPEN_STACKS = 64

# Names served by nonuniform.engine.star and .particles (which import this module, hence the lazy hook).
_LAZY_API = {"STAR_VERSION_LINE": "star", "Table": "star", "read_star": "star", "write_star": "star",
             **dict.fromkeys(("CTF_COLUMNS", "Particles", "image_name", "load_particles", "read_images",
                              "save_particles", "write_particles_star"), "particles")}


def __getattr__(name):
    module = _LAZY_API.get(name)
    if module is not None:
        import importlib

        return getattr(importlib.import_module(f".{module}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# Atomic writes and JSON


def _umask_file_mode():
    """File mode an ordinary ``open(path, 'w')`` creates (0o666 minus the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_FILE_MODE = _umask_file_mode()


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    On an exception the temporary file is removed and ``path`` is left untouched (absent, or
    holding its previous content). The temporary name keeps the target's extension so that
    format-sniffing writers behave.

    Parameters
    ----------
    path : str or os.PathLike
        Final destination. Its directory must exist.
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def _finite_or_none(obj):
    """``obj`` with numpy values as Python ones and every NaN or infinite float replaced by None."""
    if isinstance(obj, (np.ndarray, np.generic)):
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_json(path, obj):
    """Write ``obj`` as indented strict JSON, atomically.

    numpy scalars and arrays are converted, and NaN or infinite numbers are written as ``null`` (strict
    JSON parsers reject the bare ``NaN`` that Python's json module writes by default).
    """
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        json.dump(_finite_or_none(obj), f, indent=2, default=_json_default, allow_nan=False)
        f.write("\n")


# --------------------------------------------------------------------------------------------
# MRC


def _open_mrc(path, what, opener=mrcfile.open, header_only=False):
    """Open an MRC file read-only in permissive mode, without letting mrcfile print warnings.

    mrcfile warns (instead of failing) about damaged or non-standard files. Those warnings are
    logged at debug level when the file opens, or become part of the one :class:`InputError`
    (naming ``what`` and ``path``) when it does not or has no readable data.
    """
    kwargs = {"header_only": True} if header_only else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = opener(path, mode="r", permissive=True, **kwargs)
        except (ValueError, OSError) as exc:
            raise InputError(f"cannot read {what} {path}: {exc}{_warning_notes(caught)}") from None
    if not header_only and mrc.data is None:
        mrc.close()
        raise InputError(f"cannot read the data of {what} {path}{_warning_notes(caught)}")
    for w in caught:
        logger.debug("%s: %s", path, w.message)
    return mrc


def _warning_notes(caught):
    notes = list(dict.fromkeys(str(w.message) for w in caught))
    return f" ({'; '.join(notes)})" if notes else ""


def read_mrc(path):
    """Read an MRC map or image.

    Parameters
    ----------
    path : str
        MRC file.

    Returns
    -------
    data : (z, y, x) or (y, x) float32 array
        The map (a copy, not memory-mapped).
    pixel_size_ang : float
        Header voxel size along x in Å (0.0 when the header does not set it).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"MRC file not found: {path}")
    with _open_mrc(path, "MRC file") as mrc:
        data = np.asarray(mrc.data, dtype=np.float32).copy()
        pixel_size_ang = float(mrc.voxel_size.x)
    return data, pixel_size_ang


def read_volume(path, what="map"):
    """:func:`read_mrc` for a cubic 3-D map with finite values; ``what`` names it in errors."""
    vol, apix = read_mrc(path)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise InputError(f"{what} {path} is not a cubic 3-D map (shape {vol.shape})")
    if not np.isfinite(vol).all():
        raise InputError(f"{what} {path} contains NaN or Inf values")
    return vol, apix


def read_mask(path):
    """:func:`read_volume` for a solvent mask: values in [0, 1] (1e-3 tolerance), not all zero.

    Returns
    -------
    mask : (N, N, N) float32 array, clipped to [0, 1]
    pixel_size_ang : float
        Header voxel size (0.0 when unset).
    """
    m, apix = read_volume(path, "mask")
    if m.min() < -1e-3 or m.max() > 1 + 1e-3 or m.max() <= 0:
        raise InputError(f"mask {path} must have values in [0, 1] and not be empty "
                         f"(range {m.min():.3g}..{m.max():.3g})")
    return np.clip(m, 0, 1).astype(np.float32), apix


def check_output_folder(path, must_be_empty=False, hint=""):
    """Refuse, before any work, an output folder that cannot be created or written.

    The rule of every command: missing parent folders are created (as ``mkdir -p``), so the nearest
    existing ancestor of ``path`` must be a writable folder; ``path`` itself must not be a file, and
    with ``must_be_empty`` not a non-empty folder (``hint`` is appended to that message).
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"output folder {path} is a file")
    if must_be_empty and os.path.isdir(path) and os.listdir(path):
        raise InputError(f"output folder {path} is not empty{hint}")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot create output folder {path}: {parent} is not a writable folder")


def make_output_folder(path):
    """Create ``path`` (and parents) if absent; InputError naming it if that is impossible."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {path}: {exc.strerror}") from exc


_MRC_LABEL = f"{'written by nonuniform':79s} "


def _write_mrc_data(path, data, pixel_size_ang, stack):
    data = np.ascontiguousarray(data, dtype=np.float32)
    with atomic_write(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            if stack:
                mrc.set_image_stack()
            mrc.voxel_size = float(pixel_size_ang)
            mrc.update_header_stats()
            # mrcfile's default label holds the creation time; without it the same data gives the
            # same bytes (a resumed refinement's outputs are bit-identical to an uninterrupted one's).
            mrc.header.label[0] = _MRC_LABEL
    logger.debug("wrote %s %s (%.4f Å/px)", path, data.shape, pixel_size_ang)


def write_mrc(path, array, pixel_size_ang):
    """Write a float32 map (or a single image) to an MRC file, atomically.

    Parameters
    ----------
    path : str
        Destination file.
    array : (z, y, x) or (y, x) array
        Real-space data; stored as float32 (MRC mode 2).
    pixel_size_ang : float
        Voxel size in Å, written to the header.
    """
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ValueError(f"write_mrc expects a 2-D or 3-D array, got shape {array.shape}")
    _write_mrc_data(path, array, pixel_size_ang, stack=False)


def write_stack(path, images, pixel_size_ang):
    """Write an image stack (``.mrcs``, header flagged as a stack), atomically.

    Parameters
    ----------
    path : str
        Destination file.
    images : (n, y, x) array
        Real-space images; stored as float32.
    pixel_size_ang : float
        Pixel size in Å, written to the header.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"write_stack expects an (n, y, x) array, got shape {images.shape}")
    _write_mrc_data(path, images, pixel_size_ang, stack=True)


_stack_cache = OrderedDict()
_stack_lock = threading.Lock()


def open_stack(path):
    """Memory-map an MRC image stack read-only and return it as ``(n, y, x)``.

    A 2-D single image is returned as ``(1, y, x)``. The most recently used stacks stay open
    (at most 64); evicting one closes the file while views already handed out stay valid. A
    file replaced on disk since it was opened (new inode, size or time) is opened again.

    Parameters
    ----------
    path : str
        MRC stack (``.mrcs`` or ``.mrc``).

    Returns
    -------
    (n, y, x) array
        Read-only memory-mapped view in the file's own dtype.
    """
    key = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(key)
    except OSError:
        raise InputError(f"image stack not found: {key}") from None
    signature = (st.st_ino, st.st_size, st.st_mtime_ns)
    with _stack_lock:
        cached = _stack_cache.get(key)
        if cached is not None and cached[0] == signature:
            _stack_cache.move_to_end(key)
            return cached[2]
        mrc = _open_mrc(key, "image stack", opener=mrcfile.mmap)
        data = mrc.data
        view = data[np.newaxis] if data.ndim == 2 else data
        if cached is not None:
            cached[1].close()
        _stack_cache[key] = (signature, mrc, view)
        _stack_cache.move_to_end(key)
        while len(_stack_cache) > _MAX_OPEN_STACKS:
            _, (_, old, _) = _stack_cache.popitem(last=False)
            old.close()
        return view


def release_stack_pages(path):
    """Drop the pages of a memory-mapped stack from this process's resident set.

    Reading particles touches every page of their stacks; without this the resident size grows
    with the number of particles read (the pages stay reclaimable page cache, so the data is
    re-read from memory, not disk, when needed again).
    """
    import mmap

    with _stack_lock:
        cached = _stack_cache.get(os.path.abspath(os.fspath(path)))
    if cached is None:
        return
    base = getattr(cached[1].data, "_mmap", None)
    if base is not None and hasattr(mmap, "MADV_DONTNEED"):
        try:
            base.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # pragma: no cover - advisory only
            pass


def close_stacks():
    """Close every stack kept open by :func:`open_stack`."""
    with _stack_lock:
        while _stack_cache:
            _, (_, mrc, _) = _stack_cache.popitem()
            mrc.close()


def stack_dims(path):
    """Read the dimensions of an MRC image stack from its header alone.

    Parameters
    ----------
    path : str
        MRC stack (a 2-D image counts as a stack of one).

    Returns
    -------
    (n_images, ny, nx) : tuple of int

    Raises
    ------
    InputError
        If the file is missing, its header unreadable, or the file shorter than its header says
        (a truncated stack).
    """
    if not os.path.isfile(path):
        raise InputError(f"image stack not found: {path}")
    with _open_mrc(path, "the header of image stack", header_only=True) as mrc:
        h = mrc.header
        dims = int(h.nz), int(h.ny), int(h.nx)
        try:
            itemsize = mrcfile.utils.data_dtype_from_header(h).itemsize
        except ValueError as exc:
            raise InputError(f"cannot read the header of image stack {path}: {exc}") from None
        need = 1024 + int(h.nsymbt) + dims[0] * dims[1] * dims[2] * itemsize
    size = os.path.getsize(path)
    if min(dims) < 1 or size < need:
        raise InputError(f"image stack {path} is truncated or corrupt: its header says {dims[0]} images of "
                         f"{dims[2]} x {dims[1]} px ({need} bytes), the file has {size} bytes")
    return dims
