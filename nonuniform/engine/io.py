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
from collections import OrderedDict

import mrcfile
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
    try:
        with mrcfile.open(path, mode="r", permissive=True) as mrc:
            if mrc.data is None:
                raise InputError(f"cannot read the data of MRC file {path}")
            data = np.asarray(mrc.data, dtype=np.float32).copy()
            pixel_size_ang = float(mrc.voxel_size.x)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read MRC file {path}: {exc}") from exc
    return data, pixel_size_ang


def read_volume(path, what="map"):
    """:func:`read_mrc` for a cubic 3-D map with finite values; ``what`` names it in errors."""
    vol, apix = read_mrc(path)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise InputError(f"{what} {path} is not a cubic 3-D map (shape {vol.shape})")
    if not np.isfinite(vol).all():
        raise InputError(f"{what} {path} contains NaN or Inf values")
    return vol, apix


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
        try:
            mrc = mrcfile.mmap(key, mode="r", permissive=True)
        except (ValueError, OSError) as exc:
            raise InputError(f"cannot open image stack {key}: {exc}") from exc
        data = mrc.data
        if data is None:
            mrc.close()
            raise InputError(f"cannot read the data of image stack {key} (corrupt header?)")
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
    """
    if not os.path.isfile(path):
        raise InputError(f"image stack not found: {path}")
    try:
        with mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
            h = mrc.header
            return int(h.nz), int(h.ny), int(h.nx)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read the header of image stack {path}: {exc}") from exc
