"""RELION STAR files: reading and writing data blocks as ``dict[column -> numpy array]``.

Column names drop the leading ``_`` (``rlnImageName``). Integers are int64, other numbers float64,
everything else ``str``. Written files start with RELION 3.1's version line; writes are atomic.
"""

import os
import re
from collections import OrderedDict

import numpy as np

from .errors import InputError
from .io import atomic_write

STAR_VERSION_LINE = "# version 30001"


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
