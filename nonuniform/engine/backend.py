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
