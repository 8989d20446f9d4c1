"""CUDA kernels of the GPU route against the CPU numba kernels they replace.

On a GPU the kernels run on cupy arrays (numpy if cupy is missing: numba copies them); without one,
under numba's CUDA simulator (the root conftest turns it on when no NVIDIA GPU is present) on numpy
arrays, thread by thread in Python (~2000 threads/s), hence the tiny sizes. Sample positions are
made exact in float32 (:func:`_coords`) so that both sides interpolate at the same points and only
the rounding of the arithmetic itself differs.
"""

import importlib

import numpy as np
import pytest

from nonuniform.engine import geometry, project, reconstruct, scoring
from nonuniform.engine.backend import asnumpy


def _array_module():
    """numpy under the simulator, cupy (else numpy) with a CUDA GPU, None with neither."""
    from numba import config, cuda

    if config.ENABLE_CUDASIM:
        return np
    if not cuda.is_available():
        return None
    try:
        import cupy

        return cupy
    except ImportError:
        return np


xp = _array_module()
ck = importlib.import_module("nonuniform.engine.cuda_kernels") if xp is not None else None
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    xp is None, reason="needs a CUDA GPU or numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1 set before "
                       "numba.cuda is imported)")]

M = 16  # box 8 padded twice


def _pixels():
    """Coefficients of a box-8 image within radius 4 (Nyquist): slice points up to the grid's edge."""
    ky, kx, _ = project.image_pixels(8, 4)
    return ky.astype(np.float32), kx.astype(np.float32)


def _coords(rotations):
    """``slice_coords`` (pad 2) rounded to multiples of 2⁻¹⁰.

    Their products with integer frequencies ≤ 4 and the sums of two such products are then exact in
    float32, so fused multiply-adds (CPU fastmath, CUDA by default) cannot move a sample point.
    """
    return (np.round(project.slice_coords(rotations, 2) * 1024) / 1024).astype(np.float32)


def _cases(coords, ky, kx):
    """Masks (n, P) of the branches taken: x < 0 (conjugated), outside the grid, last cell of an axis."""
    pos = np.einsum("nij,pj->npi", coords[:, :, :2].astype(np.float64), np.stack([kx, ky], -1))
    neg = pos[..., 0] < 0
    pos = np.where(neg[..., None], -pos, pos)
    lo = np.floor(pos).astype(int) + [0, M // 2, M // 2]
    last = np.array([M // 2 - 1, M - 2, M - 2])  # highest lower corner whose cell is inside
    outside = ((lo < 0) | (lo > last)).any(-1)
    return neg, outside, ~outside & (lo == last).any(-1)


def _ri(a):
    """(re, im) float view of a complex array."""
    return a.view(np.float32 if a.dtype == np.complex64 else np.float64).reshape(a.shape + (2,))


def test_launch_config():
    blocks, threads = ck.launch_config(3, 300)
    assert blocks == (3, 3) and threads == (128, 1)
    assert ck.launch_config(10 ** 6, 5)[0] == (1, 65535)  # rows beyond the y limit: grid-stride loop


def test_project_slices_matches_cpu():
    rng = np.random.default_rng(0)
    proj = project.Projector(rng.standard_normal((8, 8, 8)).astype(np.float32), pad=2)
    ky, kx = _pixels()
    coords = _coords(np.concatenate([np.eye(3)[None], geometry.random_rotations(3, rng)]))
    neg, outside, edge = _cases(coords, ky, kx)
    assert neg.any() and outside.any() and edge.any()
    spec_ri = proj.spectrum.view(np.float32).reshape(proj.spectrum.shape + (2,))
    ref = np.empty((len(coords), len(ky), 2), np.float32)
    project._slice_kernel(spec_ri, coords, ky, kx, ref)
    args = [xp.asarray(a) for a in (spec_ri, coords, ky, kx)]
    out = ck.project_slices(*args, xp.full(ref.shape, np.nan, np.float32))
    # A grid of 2 rows for 4 images: each thread also does a second image (grid-stride loop).
    strided = xp.full(ref.shape, np.nan, np.float32)
    ck.slice_kernel[(1, 2), (128, 1)](*args, strided)
    for got in (asnumpy(out), asnumpy(strided)):
        assert np.all(got[outside] == 0)
        # Same sample points; 7 float32 lerps whose rounding (and fused multiply-adds on one side
        # only) differ by a few float32 ulps of the largest spectrum values: 1e-6 of the maximum.
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def _insert(coords, ky, kx, vals, ctf_w, w2, cpu=False):
    """Accumulators (data as (re, im) float64, weight) after inserting the images."""
    data = np.zeros((M, M, M // 2 + 1), np.complex128)
    weight = np.zeros(data.shape)
    if cpu:
        reconstruct._insert_kernel(data, weight, coords, ky, kx, vals, ctf_w, w2)
        return _ri(data), weight
    d, w = xp.asarray(_ri(data)), xp.asarray(weight)
    ck.insert_slices(d, w, *(xp.asarray(a) for a in (coords, ky, kx, _ri(vals), ctf_w, w2)))
    return asnumpy(d), asnumpy(w)


def _image_values(rng, n, n_pix):
    vals = (rng.standard_normal((n, n_pix)) + 1j * rng.standard_normal((n, n_pix))).astype(np.complex64)
    ctf_w = rng.uniform(-1, 1, (n, n_pix)).astype(np.float32)
    return vals, ctf_w, (ctf_w * ctf_w).astype(np.float32)


def test_insert_slices_matches_cpu():
    rng = np.random.default_rng(1)
    ky, kx = _pixels()
    coords = _coords(np.concatenate([np.eye(3)[None], geometry.random_rotations(2, rng)]))
    neg, outside, edge = _cases(coords, ky, kx)
    assert neg.any() and outside.any() and edge.any()
    args = (coords, ky, kx) + _image_values(rng, 3, len(ky))
    # Same float32 products and float64 trilinear weights; only the order of the float64 sums
    # (atomics) differs: a few float64 ulps, far below 1e-12 of the largest voxel.
    for got, ref in zip(_insert(*args), _insert(*args, cpu=True)):
        assert np.count_nonzero(ref) > 100
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_insert_slices_atomics():
    """Threads of different images and pixels adding into the same voxels all count."""
    rng = np.random.default_rng(2)
    ky, kx = _pixels()
    vals, ctf_w, w2 = _image_values(rng, 1, len(ky))
    coords = _coords(geometry.random_rotations(1, rng))
    once = _insert(coords, ky, kx, vals, ctf_w, w2)
    twice = _insert(np.repeat(coords, 2, 0), ky, kx, *(np.repeat(a, 2, 0) for a in (vals, ctf_w, w2)))
    for a, b in zip(once, twice):
        np.testing.assert_allclose(b, 2 * a, rtol=0, atol=1e-12 * np.abs(a).max())
    # Zero coordinates: every pixel of both images lands on the voxel of k = 0 with weight 1.
    vals, ctf_w, w2 = _image_values(rng, 2, len(ky))
    data, weight = _insert(np.zeros((2, 3, 3), np.float32), ky, kx, vals, ctf_w, w2)
    expect = np.sum(vals * ctf_w, dtype=np.complex128)
    np.testing.assert_allclose(data[M // 2, M // 2, 0], [expect.real, expect.imag], rtol=1e-12)
    np.testing.assert_allclose(weight[M // 2, M // 2, 0], np.sum(w2, dtype=np.float64), rtol=1e-12)
    assert np.count_nonzero(weight) == 1 and np.count_nonzero(data) == 2


@pytest.mark.parametrize("metric", ["likelihood", "cc"])
def test_best_shift_and_top_k_match_reduce(metric):
    rng = np.random.default_rng(3)
    n_b, n_c, n_t, n_m, k = 3, 2, 3, 5, 4
    cc = scoring.check_metric(metric)
    inv_xn = rng.uniform(0.5, 2.0, n_b)
    top_cpu = scoring._new_top(n_b, k)
    top_gpu = tuple(xp.array(a) for a in top_cpu)  # a copy: _reduce updates top_cpu in place
    for j0 in (0, n_m):  # two chunks of poses
        # Half-integers: exact in float32, with many equal scores (between shifts, poses and chunks).
        cross = (rng.integers(-3, 4, (n_b, n_c, n_t, n_m)) * 0.5).astype(np.float32)
        norm = (rng.integers(1, 4, (n_b, n_c, n_m)) * 0.5).astype(np.float32)
        pen = (rng.integers(0, 2, (n_b, n_c, n_t)) * 0.5).astype(np.float32)
        if j0 == 0:
            cross[2] = -np.inf  # image 2 has no finite candidate in the first chunk: none may enter
        scoring._reduce(cross, norm, pen, inv_xn, cc, j0, *top_cpu)
        best, arg = ck.best_over_shifts(*(xp.asarray(a) for a in (cross, norm, pen, inv_xn)), cc)
        f = 1 if cc else 2
        np.testing.assert_array_equal(asnumpy(arg), np.argmax(f * cross - pen[..., None], axis=2))
        finite = asnumpy(best)[np.isfinite(asnumpy(best))]
        assert len(np.unique(finite)) < len(finite)  # ties present
        top_gpu = ck.merge_top_k(top_gpu, best, arg, j0)
        # Same float32/float64 operations on both sides: scores agree to rounding, indices exactly.
        np.testing.assert_allclose(asnumpy(top_gpu[0]), top_cpu[0], rtol=1e-6)
        for got, ref in zip(top_gpu[1:], top_cpu[1:]):
            assert got.dtype == np.int64
            np.testing.assert_array_equal(asnumpy(got), ref)
    assert np.isfinite(top_cpu[0]).all()
