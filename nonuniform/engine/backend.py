"""Array-module dispatch: numpy on the host, cupy on a GPU, chosen by the data (no global switch)."""

import numpy as np


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a cupy array, else ``numpy``.

    Parameters
    ----------
    *arrays : array-like
        Arrays (or scalars) an operation is about to combine.
    """
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy

            return cupy
    return np


def asnumpy(a):
    """Return ``a`` as a host numpy array (copying from the GPU when needed)."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def is_gpu_array(a):
    """True when ``a`` lives on a GPU (cupy)."""
    return type(a).__module__.startswith("cupy")


# ----------------------------------------------------------------------------------------------
# Devices: where the E- and M-step run. The array module follows the device (numpy on the host,
# cupy on a GPU); the custom kernels are numba CPU kernels on the host and numba.cuda kernels on a
# GPU (run by numba's CUDA simulator, on numpy arrays, where there is no GPU: tests only).

# Share of the free GPU memory the E-step batches may take (accumulators, the projector's spectrum
# and the NU filter are allocated before the batches are sized).
GPU_BATCH_MEMORY_FRACTION = 0.25
# Host batch budget (bytes): what pose_search.SearchParams.max_batch_bytes has always been.
CPU_BATCH_BYTES = 256 * 2 ** 20


def cuda_simulated():
    """True when numba's CUDA simulator stands in for a GPU (``NUMBA_ENABLE_CUDASIM=1``)."""
    import os

    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


class Device:
    """The host (``kind="cpu"``) or one CUDA GPU (``kind="cuda"``): array module and kernels.

    Use :data:`CPU` or :func:`open_gpu`. Arrays handed to the kernels must live on the device
    (:meth:`asarray`); results come back on it. On the GPU route the kernels are those of
    :mod:`.cuda_kernels`; with ``simulated`` they run under numba's CUDA simulator on numpy arrays,
    which is slow (a few thousand threads per second) and meant for tests on tiny problems.
    """

    def __init__(self, kind="cpu", gpu_id=None, simulated=False):
        self.kind, self.gpu_id, self.simulated = kind, gpu_id, simulated
        if kind == "cuda" and not simulated:
            import cupy

            self.xp = cupy
        else:
            self.xp = np
        self._consts = {}

    def __repr__(self):
        if self.kind == "cpu":
            return "Device(cpu)"
        return f"Device(cuda:{self.gpu_id}{', simulated' if self.simulated else ''})"

    @property
    def is_cpu(self):
        return self.kind == "cpu"

    def asarray(self, a, dtype=None):
        """``a`` on this device (no copy when it is already there with that dtype)."""
        return self.xp.asarray(a, dtype=dtype)

    @staticmethod
    def asnumpy(a):
        return asnumpy(a)

    def const(self, a, dtype=None):
        """Device copy of a host array that recurs (pixel lists, index maps), kept while ``a`` lives.

        On the host, ``a`` itself (cast to ``dtype``). The last 64 arrays are kept, matched by identity.
        """
        if self.kind == "cpu":
            return a if dtype is None else np.asarray(a, dtype)
        key = (id(a), dtype)
        hit = self._consts.get(key)
        if hit is None or hit[0] is not a:
            if len(self._consts) >= 64:
                self._consts.pop(next(iter(self._consts)))
            hit = self._consts[key] = (a, self.xp.asarray(a, dtype=dtype))
        return hit[1]

    def batch_bytes(self):
        """Memory budget of one E-step batch (bytes): a share of the GPU's free memory, or the host's."""
        if self.kind == "cpu" or self.simulated:
            return CPU_BATCH_BYTES
        free, _ = self.xp.cuda.runtime.memGetInfo()
        return int(max(CPU_BATCH_BYTES // 4, GPU_BATCH_MEMORY_FRACTION * free))

    def synchronize(self):
        if self.kind == "cuda" and not self.simulated:
            self.xp.cuda.get_current_stream().synchronize()

    # -- kernels ------------------------------------------------------------------------------

    def slices(self, spectrum, coords, ky, kx):
        """Central-slice samples (n, P) complex64 of the padded spectrum (see ``project._slice_kernel``)."""
        xp = self.xp
        spec_ri = spectrum.view(xp.float32).reshape(spectrum.shape + (2,))
        out = xp.empty((coords.shape[0], ky.shape[0]), dtype=xp.complex64)
        out_ri = out.view(xp.float32).reshape(out.shape + (2,))
        if self.kind == "cpu":
            from .project import _slice_kernel

            _slice_kernel(spec_ri, coords, ky, kx, out_ri)
        else:
            from .cuda_kernels import project_slices

            project_slices(spec_ri, coords, ky, kx, out_ri)
        return out

    def insert(self, data, weight, coords, ky, kx, vals, ctf_w, w2):
        """Trilinear scatter of (n, P) complex64 ``vals`` into the complex128 ``data`` (see
        ``reconstruct._insert_kernel``); GPU threads add atomically."""
        if self.kind == "cpu":
            from .reconstruct import _insert_kernel

            _insert_kernel(data, weight, coords, ky, kx, vals, ctf_w, w2)
            return
        from .cuda_kernels import insert_slices

        xp = self.xp
        insert_slices(data.view(xp.float64).reshape(data.shape + (2,)), weight, coords, ky, kx,
                      vals.view(xp.float32).reshape(vals.shape + (2,)), ctf_w, w2)

    def new_top(self, n, k):
        """Empty running top-K (scores, candidate, template, shift) of ``n`` images, on this device."""
        from .scoring import _new_top

        return _new_top(n, k, self.xp)

    def reduce(self, cross, norm, shift_pen, inv_xn, cc, j0, top):
        """Best shift per (image, candidate, template), pushed into the running ``top`` (returned).

        See ``scoring._reduce``: one fused numba kernel on the host; on a GPU one thread per
        (image, candidate, template) for the best shift, then a sort-based merge of the top-K.
        """
        if self.kind == "cpu":
            from .scoring import _reduce

            _reduce(cross, norm, shift_pen, inv_xn, cc, j0, *top)
            return top
        from .cuda_kernels import best_over_shifts, merge_top_k

        best, arg = best_over_shifts(cross, norm, shift_pen, inv_xn, cc)
        return merge_top_k(top, best, arg, j0)


CPU = Device("cpu")


def device_of(a):
    """The :class:`Device` an array lives on: the current GPU for a cupy array, else the host."""
    if is_gpu_array(a):
        return Device("cuda", a.device.id)
    return CPU


def gpu_problem(gpu_id=0):
    """Why CUDA device ``gpu_id`` cannot run the engine here (one sentence), or None when it can."""
    try:
        import cupy
    except ImportError:
        return "cupy is not installed (install the GPU extra: pip install 'scipion-em-nonuniform[gpu]')"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # cupy without a driver raises CUDARuntimeError
        return f"cupy finds no usable CUDA driver or device ({exc})"
    if count == 0:
        return "cupy sees no CUDA device"
    if not 0 <= int(gpu_id) < count:
        return f"there is no CUDA device {gpu_id} (this machine has {count}: ids 0 to {count - 1})"
    return None


def open_gpu(gpu_id):
    """The :class:`Device` for GPU ``gpu_id``, made current for cupy and numba.

    Under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``: tests) a simulated device on numpy
    arrays, whatever the machine has.

    Raises
    ------
    InputError
        Naming what is missing (:func:`gpu_problem`): exit status 2 in the CLI.
    """
    from .errors import InputError

    gpu_id = int(gpu_id)
    if cuda_simulated():
        return Device("cuda", gpu_id, simulated=True)
    problem = gpu_problem(gpu_id)
    if problem:
        raise InputError(f"--gpu {gpu_id}: {problem}; run without --gpu to use the CPU")
    import cupy
    from numba import cuda

    cupy.cuda.Device(gpu_id).use()
    cuda.select_device(gpu_id)
    return Device("cuda", gpu_id)
