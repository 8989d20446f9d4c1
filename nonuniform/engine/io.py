"""File input/output: atomic writes, JSON, MRC maps and stacks, RELION STAR tables.

Every writer is atomic: it writes a temporary file next to the target and renames it over the
target only when writing succeeded (:func:`atomic_write`), so an interrupted run never leaves a
half-written output behind.

Conventions
-----------
- Arrays are ``(z, y, x)`` (maps) or ``(n, y, x)`` (image stacks), float32 once read.
- MRC voxel size is the header ``voxel_size.x`` in Å.
- STAR tables are ``dict[column -> numpy array]``; column names drop the leading ``_``
  (``rlnImageName``). Integers are int64, other numbers float64, everything else ``str``.

The particle-level API (:class:`Particles`, :func:`load_particles`, :func:`read_images`,
:func:`save_particles`, :func:`write_particles_star`, :func:`image_name`) lives in
:mod:`nonuniform.engine.particles` and is re-exported here.
"""

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict

import mrcfile
import numpy as np

from .errors import InputError

logger = logging.getLogger(__name__)

STAR_VERSION_LINE = "# version 30001"
_MAX_OPEN_STACKS = 64

# Names served by nonuniform.engine.particles (which imports this module, hence the lazy hook).
_PARTICLE_API = ("CTF_COLUMNS", "Particles", "image_name", "load_particles", "read_images",
                 "save_particles", "write_particles_star")


def __getattr__(name):
    if name in _PARTICLE_API:
        from . import particles

        return getattr(particles, name)
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


def write_json(path, obj):
    """Write ``obj`` as indented JSON, atomically (numpy scalars and arrays are converted)."""
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
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


def _write_mrc_data(path, data, pixel_size_ang, stack):
    data = np.ascontiguousarray(data, dtype=np.float32)
    with atomic_write(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            if stack:
                mrc.set_image_stack()
            mrc.voxel_size = float(pixel_size_ang)
            mrc.update_header_stats()
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


# --------------------------------------------------------------------------------------------
# STAR


class Table(dict):
    """A STAR data block: ``column name (no leading '_') -> numpy array``.

    ``loop`` is False for a key-value block (every column then holds one value).
    """

    def __init__(self, *args, loop=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.loop = loop

    @property
    def n_rows(self):
        """Number of rows (0 for a block without columns)."""
        return len(next(iter(self.values()))) if self else 0


_TOKEN_RE = re.compile(r"""'[^']*'|"[^"]*"|\S+""")


def _tokens(line):
    if "'" not in line and '"' not in line:
        return line.split()
    return [t[1:-1] if t[0] in "'\"" and len(t) > 1 else t for t in _TOKEN_RE.findall(line)]


def _column_array(values):
    """Convert a list of strings to int64, else float64, else a str array."""
    arr = np.array(values, dtype=str)
    if arr.size == 0:
        return np.zeros(0, dtype=np.float64)
    for dtype in (np.int64, np.float64):
        try:
            return arr.astype(dtype)
        except ValueError:
            continue
    return arr


class _Block:
    def __init__(self, name):
        self.name = name
        self.labels = []
        self.rows = []
        self.pairs = {}
        self.state = "start"  # start -> labels -> rows (loop) | pairs

    def table(self, path):
        if self.labels and self.pairs:
            raise InputError(f"STAR block data_{self.name} in {path} mixes a loop_ with "
                             f"key-value pairs; this reader expects one or the other")
        if not self.labels:
            return Table({k: _column_array([v]) for k, v in self.pairs.items()}, loop=False)
        columns = list(zip(*self.rows)) if self.rows else [()] * len(self.labels)
        return Table({lab: _column_array(list(col)) for lab, col in zip(self.labels, columns)})


def read_star(path):
    """Read every data block of a STAR file (RELION 3.0 or 3.1 style).

    Parameters
    ----------
    path : str
        STAR file.

    Returns
    -------
    dict[str, Table]
        Block name (``data_optics`` -> ``"optics"``, bare ``data_`` -> ``""``) to its table,
        in file order.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"STAR file not found: {path}")
    blocks = OrderedDict()
    block = None

    def finish():
        if block is not None:
            blocks[block.name] = block.table(path)

    with open(path) as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("data_"):
                finish()
                name = line[5:].split()[0] if line[5:].strip() else ""
                if name in blocks:
                    raise InputError(f"STAR file {path} has two blocks named data_{name}")
                block = _Block(name)
                continue
            if block is None:
                raise InputError(f"STAR file {path}, line {lineno}: content before any "
                                 f"data_ block")
            if line.startswith("loop_"):
                if block.labels:
                    raise InputError(f"STAR block data_{block.name} in {path} has more than one "
                                     f"loop_ (line {lineno}); this reader expects one per block")
                block.state = "labels"
                continue
            if line.startswith("_"):
                if block.state == "labels":
                    block.labels.append(line.split()[0][1:])
                    continue
                parts = _tokens(line)
                if len(parts) < 2:
                    raise InputError(f"STAR file {path}, line {lineno}: label {parts[0]} "
                                     f"has no value")
                block.pairs[parts[0][1:]] = parts[1]
                block.state = "pairs"
                continue
            if block.state not in ("labels", "rows"):
                raise InputError(f"STAR file {path}, line {lineno}: value outside a loop_: "
                                 f"{line!r}")
            block.state = "rows"
            toks = _tokens(line)
            if len(toks) != len(block.labels):
                raise InputError(f"STAR file {path}, line {lineno}: {len(toks)} values for "
                                 f"{len(block.labels)} columns in data_{block.name}")
            block.rows.append(toks)
    finish()
    return blocks


def _format_column(arr):
    """Format one column as a list of strings (RELION widths; floats keep 6 decimals)."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "iub":
        return [f"{v:12d}" for v in arr.astype(np.int64).tolist()]
    if arr.dtype.kind == "f":
        a = arr.astype(np.float64)
        nonzero = np.abs(a[np.isfinite(a) & (a != 0)])
        # %.6f keeps 1e-6 absolute precision; tiny or huge magnitudes switch to exponent form.
        fixed = nonzero.size == 0 or (nonzero.min() >= 1e-3 and nonzero.max() < 1e9)
        fmt = "%12.6f" if fixed else "%14.6e"
        return [fmt % v for v in a.tolist()]
    out = []
    for v in arr.astype(str).tolist():
        out.append(f'"{v}"' if (v == "" or any(c.isspace() for c in v)) else v)
    return out


def write_star(path, blocks):
    """Write STAR data blocks, atomically, formatted like RELION 3.1.

    Parameters
    ----------
    path : str
        Destination file.
    blocks : dict[str, dict[str, array-like]]
        Block name (without ``data_``) to table. A :class:`Table` with ``loop=False`` is
        written as key-value pairs; anything else as a ``loop_``. All columns of a loop must
        have the same length.
    """
    lines = []
    for name, table in blocks.items():
        lines += ["", STAR_VERSION_LINE, "", f"data_{name}", ""]
        cols = {k: np.atleast_1d(np.asarray(v)) for k, v in table.items()}
        lengths = {k: len(v) for k, v in cols.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"columns of data_{name} have different lengths: {lengths}")
        if getattr(table, "loop", True) is False:
            width = max((len(k) for k in cols), default=0) + 2
            for k, v in cols.items():
                lines.append(f"_{k:<{width}}{_format_column(v)[0]}")
            lines.append("")
            continue
        lines.append("loop_ ")
        lines += [f"_{k} #{i} " for i, k in enumerate(cols, start=1)]
        formatted = [_format_column(v) for v in cols.values()]
        lines += [" ".join(row) + " " for row in zip(*formatted)]
        lines.append("")
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
