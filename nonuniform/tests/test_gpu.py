"""GPU (cupy) path of the array-module code: same results as numpy. Skipped without cupy and a GPU."""

import numpy as np
import pytest

from nonuniform.engine import fsc, regularize

from .conftest import blob_phantom


def _cupy():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return cupy
    except Exception:  # ImportError, or CUDA runtime errors when no driver/GPU is present
        return None


cp = _cupy()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(cp is None, reason="needs cupy and a CUDA GPU")]


def test_nu_filter_gpu_matches_cpu():
    rng = np.random.default_rng(0)
    truth = blob_phantom(48, rng)
    q1, q2 = (truth + rng.normal(0, 0.3, truth.shape).astype(np.float32) for _ in range(2))
    cpu = regularize.nu_filter(q1, q2, n_cutoffs=20)
    gpu = regularize.nu_filter(cp.asarray(q1), cp.asarray(q2), n_cutoffs=20)
    # float32 FFTs differ by ~1e-6 relative between cuFFT and pocketfft; a few voxels whose two best
    # candidates tie within that may pick the neighbouring cutoff.
    assert np.mean(cp.asnumpy(gpu.cutoff_index) == cpu.cutoff_index) > 0.99
    assert np.allclose(cp.asnumpy(gpu.filtered), cpu.filtered, atol=1e-3 * float(np.abs(cpu.filtered).max()))


def test_fsc_gpu_matches_cpu():
    rng = np.random.default_rng(1)
    a, b = (blob_phantom(32, rng) + rng.normal(0, 0.1, (32, 32, 32)).astype(np.float32) for _ in range(2))
    # Same sums in float32 on both devices: agreement to 1e-4.
    assert np.allclose(cp.asnumpy(cp.asarray(fsc.fsc_curve(cp.asarray(a), cp.asarray(b)))), fsc.fsc_curve(a, b),
                       atol=1e-4)
