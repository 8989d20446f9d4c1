"""One refinement across MPI ranks (``mpiexec -n K nonuniform refine ...``), or in one process.

The ranks share out each half-set's batches of particles (batch k to rank k mod K); each batch draws
from its own random stream (:func:`.estep.batch_rng`), so every particle's result is the same for
any K. Per iteration the ranks' accumulators, noise sums and poses are summed in place
(``Allreduce``, float64); rank 0 then reconstructs, regularizes, computes the FSC and writes the
checkpoint, and broadcasts the new state. The maps differ between rank counts only by the order of
the float64 sums.

mpi4py is imported only when a launcher started several processes. Its wheels carry MPICH's
library and also drive Open MPI's: under Open MPI's ``mpirun`` ``MPI4PY_MPIABI=openmpi`` is set
for it (unless set already), so either launcher works.
"""

import logging
import os
import sys

import numpy as np

from .backend import asnumpy, is_gpu_array
from .errors import InputError

logger = logging.getLogger(__name__)

# Variables through which launchers tell a process how many processes they started.
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE")


def launched_size():
    """Number of processes an MPI launcher started (1 when none did)."""
    for var in _SIZE_VARIABLES:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 1:
            return int(value)
    return 1


def launched_rank():
    """This process's rank as the MPI launcher numbered it (0 when there is no launcher)."""
    for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


class Serial:
    """The communicator of a run in one process: every collective is the identity."""

    rank, size, is_root = 0, 1, True

    def allreduce_sum(self, a):
        return a

    def sum_int(self, value):
        return value

    def bcast(self, obj):
        return obj

    def first(self, value):
        return value

    def barrier(self):
        pass

    def abort(self, code):
        sys.exit(code)


class Mpi:
    """MPI.COMM_WORLD behind the few collectives the refinement needs."""

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_root = self.rank == 0

    def allreduce_sum(self, a):
        """Sum ``a`` over the ranks, in place (float64, int64 and complex128 as float64 pairs)."""
        from mpi4py import MPI

        if is_gpu_array(a):  # no CUDA-aware MPI assumed: through the host
            host = asnumpy(a)
            self.allreduce_sum(host)
            a[...] = _to_device(host, a)
            return a
        buf = a.view(np.float64) if a.dtype == np.complex128 else a
        if not buf.flags.c_contiguous or buf.dtype not in (np.float64, np.int64):
            raise TypeError(f"allreduce_sum needs a contiguous float64/int64/complex128 array, got {a.dtype}")
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return a

    def sum_int(self, value):
        return self.comm.allreduce(int(value))

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def send(self, obj, dest):
        self.comm.send(obj, dest=dest)

    def recv(self, source):
        return self.comm.recv(source=source)

    def first(self, value):
        """The first rank's non-None ``value`` (e.g. an error message), on every rank, or None."""
        return next((v for v in self.comm.allgather(value) if v is not None), None)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code):
        self.comm.Abort(code)


def _to_device(host, like):
    import cupy

    return cupy.asarray(host, dtype=like.dtype)


def world():
    """The communicator of this process: :class:`Mpi` when launched as several MPI processes, else
    :class:`Serial`.

    Raises
    ------
    InputError
        When a launcher started several processes but mpi4py is missing or sees only one of them.
    """
    size = launched_size()
    if size == 1:
        return Serial()
    if "OMPI_COMM_WORLD_SIZE" in os.environ:
        os.environ.setdefault("MPI4PY_MPIABI", "openmpi")
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise InputError(f"started as {size} MPI processes, but mpi4py cannot be imported ({exc}); install the "
                         "mpi extra: pip install 'scipion-em-nonuniform[mpi]'") from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != size:
        raise InputError(f"the launcher started {size} processes but MPI sees {comm.Get_size()}: mpi4py uses "
                         f"another MPI library ({MPI.Get_library_version().splitlines()[0]}) than the launcher; "
                         "use that library's mpiexec, or set MPI4PY_MPIABI")
    return Mpi(comm)
