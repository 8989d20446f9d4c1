"""``--threads N`` of a benchmark also limits the BLAS threads (sgemm, scoring GEMMs).

OpenBLAS/MKL read their variables when numpy is first imported, so a benchmark calls
:func:`from_argv` before importing numpy; this module imports nothing else.
"""

import os


def from_argv(argv):
    """Set OPENBLAS/OMP/MKL_NUM_THREADS (unless set) from ``--threads N`` or ``--threads=N`` in ``argv``."""
    for i, a in enumerate(argv):
        n = a.split("=", 1)[1] if a.startswith("--threads=") else (argv[i + 1] if a == "--threads"
                                                                   and i + 1 < len(argv) else None)
        if n and n.isdigit():
            for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(var, n)
