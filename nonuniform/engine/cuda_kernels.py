"""CUDA kernels (numba.cuda) of the GPU route: projection, backprojection and the E-step reduction.

Each kernel computes what its CPU counterpart computes: :func:`slice_kernel` is
``project._slice_kernel``, :func:`insert_kernel` is ``reconstruct._insert_kernel`` and
:func:`best_shift_kernel` + :func:`merge_top_k` are ``scoring._reduce``, with one thread per output
element instead of one loop per image. Arrays are cupy on a GPU (the launchers launch on cupy's
current stream and never copy to the host) or numpy under numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``), which runs the same Python code thread by thread.

The simulator executes kernels as plain Python on numpy scalars, whose promotion rules are not
numba's (with numpy < 2, float32 scalar * 2 is float64; in numba, float32 - int64 is float64). Every
precision that the CPU kernels fix (float32 coordinates and interpolation, float64 trilinear
weights, float32 likelihood scores) is therefore cast explicitly, so that the simulator and
compiled CUDA both agree with the CPU kernels.

Import this module only when a CUDA device or the simulator is used.
"""

import math

from numba import cuda, float32, float64

from .backend import get_array_module, is_gpu_array

#: Threads per block: enough warps to hide memory latency, small enough for any register budget.
THREADS = 128
_MAX_GRID_Y = 65535  # CUDA's limit on the grid's y size; kernels stride over rows beyond it


def launch_config(n_rows, n_cols, threads=THREADS):
    """Grid and block of a 2-D launch: x over ``n_cols`` (``threads`` per block), y over ``n_rows``.

    Rows past CUDA's 65535 grid limit are covered by the kernels' grid-stride loop over rows;
    threads past ``n_cols`` return at once.

    Returns
    -------
    blocks, threads : tuple of int
    """
    return (max(1, -(-n_cols // threads)), max(1, min(n_rows, _MAX_GRID_Y))), (threads, 1)


def _stream(a):
    """Launch on cupy's current stream for cupy arrays (so work is ordered with cupy's); else default."""
    if not is_gpu_array(a):
        return 0
    import cupy

    ptr = cupy.cuda.get_current_stream().ptr
    return cuda.external_stream(ptr) if ptr else 0


@cuda.jit(device=True)
def _folded_position(coords, i, fx, fy):
    """Grid position ``coords[i] @ (fx, fy, 0)`` (float32), mirrored to the stored half x >= 0.

    Returns
    -------
    x, y, z : float32
    mirrored : bool
        The position is that of -k: its coefficient is the conjugate of the stored one.
    """
    x = coords[i, 0, 0] * fx + coords[i, 0, 1] * fy
    y = coords[i, 1, 0] * fx + coords[i, 1, 1] * fy
    z = coords[i, 2, 0] * fx + coords[i, 2, 1] * fy
    if x < 0:
        return -x, -y, -z, True
    return x, y, z, False


# ----------------------------------------------------------------------------------------------
# Projection: out[i, p] = trilinear sample of the padded spectrum at coords[i] @ (kx, ky, 0).


@cuda.jit
def slice_kernel(spec, coords, ky, kx, out):
    """One thread per (image, pixel); see ``project._slice_kernel`` (all arithmetic float32)."""
    p, i0 = cuda.grid(2)
    if p >= ky.shape[0]:
        return
    m = spec.shape[0]
    c = m // 2
    mx = spec.shape[2]
    fx = kx[p]
    fy = ky[p]
    for i in range(i0, coords.shape[0], cuda.gridsize(2)[1]):
        x, y, z, mirrored = _folded_position(coords, i, fx, fy)
        sign = float32(-1.0) if mirrored else float32(1.0)  # conjugate the sample at -k
        x0 = int(math.floor(x))
        y0 = int(math.floor(y))
        z0 = int(math.floor(z))
        # float32(x - x0) on the CPU: one float32 rounding of the exact difference, as here.
        dx = x - float32(x0)
        dy = y - float32(y0)
        dz = z - float32(z0)
        y0 += c
        z0 += c
        if x0 < 0 or x0 + 1 >= mx or y0 < 0 or y0 + 1 >= m or z0 < 0 or z0 + 1 >= m:
            out[i, p, 0] = 0
            out[i, p, 1] = 0
            continue
        for q in range(2):
            v00 = spec[z0, y0, x0, q] + dx * (spec[z0, y0, x0 + 1, q] - spec[z0, y0, x0, q])
            v01 = spec[z0, y0 + 1, x0, q] + dx * (spec[z0, y0 + 1, x0 + 1, q] - spec[z0, y0 + 1, x0, q])
            v10 = spec[z0 + 1, y0, x0, q] + dx * (spec[z0 + 1, y0, x0 + 1, q] - spec[z0 + 1, y0, x0, q])
            v11 = spec[z0 + 1, y0 + 1, x0, q] + dx * (spec[z0 + 1, y0 + 1, x0 + 1, q]
                                                      - spec[z0 + 1, y0 + 1, x0, q])
            v0 = v00 + dy * (v01 - v00)
            v1 = v10 + dy * (v11 - v10)
            v = v0 + dz * (v1 - v0)
            out[i, p, q] = v if q == 0 else sign * v


def project_slices(spec, coords, ky, kx, out):
    """Launch :func:`slice_kernel` on the arrays' device; returns ``out``.

    Parameters
    ----------
    spec : array, shape (M, M, M//2+1, 2), float32
        (re, im) view of the complex64 padded spectrum (``Projector._spec_ri``).
    coords : array, shape (n, 3, 3), float32
        :func:`.project.slice_coords`.
    ky, kx : array, shape (P,), float32
    out : array, shape (n, P, 2), float32
        (re, im) view of the (n, P) complex64 slices, overwritten.
    """
    if coords.shape[0] and ky.shape[0]:
        blocks, threads = launch_config(coords.shape[0], ky.shape[0])
        slice_kernel[blocks, threads, _stream(out)](spec, coords, ky, kx, out)
    return out


# ----------------------------------------------------------------------------------------------
# Backprojection: scatter with float64 atomics (threads of different pixels hit the same voxels).


@cuda.jit
def insert_kernel(data, weight, coords, ky, kx, vals, ctf_w, w2):
    """One thread per (image, pixel); see ``reconstruct._insert_kernel``.

    Coordinates are float32 and the trilinear weights float64, as on the CPU, so only the order of
    the float64 sums differs.
    """
    p, i0 = cuda.grid(2)
    if p >= ky.shape[0]:
        return
    m = data.shape[0]
    c = m // 2
    mx = data.shape[2]
    fx = kx[p]
    fy = ky[p]
    for i in range(i0, coords.shape[0], cuda.gridsize(2)[1]):
        x, y, z, mirrored = _folded_position(coords, i, fx, fy)
        w = ctf_w[i, p]
        vr = vals[i, p, 0] * w  # complex64 * float32 on the CPU: float32 products
        vi = -(vals[i, p, 1] * w) if mirrored else vals[i, p, 1] * w  # -k gets the conjugate
        x0 = int(math.floor(x))
        y0 = int(math.floor(y))
        z0 = int(math.floor(z))
        dx = float64(x) - x0
        dy = float64(y) - y0
        dz = float64(z) - z0
        y0 += c
        z0 += c
        if x0 < 0 or x0 + 1 >= mx or y0 < 0 or y0 + 1 >= m or z0 < 0 or z0 + 1 >= m:
            continue
        wt = float64(w2[i, p])
        for iz in range(2):
            fz = dz if iz else 1.0 - dz
            for iy in range(2):
                fyy = dy if iy else 1.0 - dy
                for ix in range(2):
                    f = fz * fyy * (dx if ix else 1.0 - dx)
                    cuda.atomic.add(data, (z0 + iz, y0 + iy, x0 + ix, 0), f * vr)
                    cuda.atomic.add(data, (z0 + iz, y0 + iy, x0 + ix, 1), f * vi)
                    cuda.atomic.add(weight, (z0 + iz, y0 + iy, x0 + ix), f * wt)


def insert_slices(data, weight, coords, ky, kx, vals, ctf_w, w2):
    """Launch :func:`insert_kernel`: add the images into ``data`` and ``weight`` in place.

    Parameters
    ----------
    data : array, shape (M, M, M//2+1, 2), float64
        (re, im) view of the complex128 accumulator.
    weight : array, shape (M, M, M//2+1), float64
    coords : array, shape (n, 3, 3), float32
    ky, kx : array, shape (P,), float32
    vals : array, shape (n, P, 2), float32
        (re, im) view of the complex64 image coefficients.
    ctf_w, w2 : array, shape (n, P), float32
        ``c·w`` multiplying ``vals`` and ``c²·w`` added to ``weight`` (see ``BackProjector.insert``).
    """
    if coords.shape[0] and ky.shape[0]:
        blocks, threads = launch_config(coords.shape[0], ky.shape[0])
        insert_kernel[blocks, threads, _stream(data)](data, weight, coords, ky, kx, vals, ctf_w, w2)


# ----------------------------------------------------------------------------------------------
# Scoring: best shift per (image, candidate, pose) in a kernel, then a top-K merge with array ops.


@cuda.jit
def best_shift_kernel(cross, norm, shift_pen, inv_xn, cc, best, arg):
    """One thread per (b, c, m): best shift t and the pose's score, as the first stage of ``scoring._reduce``."""
    m, r0 = cuda.grid(2)
    n_b, n_c, n_t, n_m = cross.shape
    if m >= n_m:
        return
    f = float32(1.0) if cc else float32(2.0)
    for r in range(r0, n_b * n_c, cuda.gridsize(2)[1]):
        b = r // n_c
        c = r - b * n_c
        v_best = f * cross[b, c, 0, m] - shift_pen[b, c, 0]  # float32, as the CPU's best array
        t_best = 0
        for t in range(1, n_t):
            v = f * cross[b, c, t, m] - shift_pen[b, c, t]
            if v > v_best:  # strict: the first t wins ties
                v_best = v
                t_best = t
        if cc:
            # max(norm, 1e-30) as the CPU's (NaN stays NaN); this numba's CUDA target fails to
            # compile the builtin max of two scalars.
            nv = float64(norm[b, c, m])
            best[b, c, m] = v_best * inv_xn[b] / math.sqrt(1e-30 if nv < 1e-30 else nv)
        else:
            best[b, c, m] = v_best - norm[b, c, m]  # float32 difference, as on the CPU
        arg[b, c, m] = t_best


def best_over_shifts(cross, norm, shift_pen, inv_xn, cc):
    """Best shift of every (image, candidate, pose) and its score.

    Parameters
    ----------
    cross : array, shape (B, C, T, M), float32
    norm : array, shape (B, C, M), float32
    shift_pen : array, shape (B, C, T), float32
    inv_xn : array, shape (B,), float64
    cc : bool
        Normalised cross-correlation instead of the likelihood (see ``scoring._reduce``).

    Returns
    -------
    best : array, shape (B, C, M), float64
    arg : array, shape (B, C, M), int32
        Index t of the best shift (the first of equal ones).
    """
    xp = get_array_module(cross)
    n_b, n_c, _, n_m = cross.shape
    best = xp.empty((n_b, n_c, n_m), xp.float64)
    arg = xp.empty((n_b, n_c, n_m), xp.int32)
    if best.size:
        blocks, threads = launch_config(n_b * n_c, n_m)
        best_shift_kernel[blocks, threads, _stream(cross)](cross, norm, shift_pen, inv_xn, bool(cc), best, arg)
    return best, arg


def merge_top_k(top, best, arg, j0):
    """Merge a chunk's poses into the running top-K, as pushing them one by one in ``scoring._reduce``.

    The pushes visit (c, m) in c-major order and let a candidate in only when it beats the current
    K-th strictly, behind any equal entry. The result is the first K of a *stable* descending sort of
    the current top followed by the candidates in that order; numpy's ``kind="stable"`` and cupy's
    argsort (always stable, as its documentation states) both give it.

    Parameters
    ----------
    top : tuple of 4 arrays, shape (B, K)
        Scores (float64, best first) and int64 candidate c, pose index, shift index
        (``scoring._new_top``, on the device of ``best``).
    best, arg : arrays, shape (B, C, M)
        From :func:`best_over_shifts`.
    j0 : int
        Pose index of m = 0 in this chunk.

    Returns
    -------
    tuple of 4 arrays, shape (B, K)
        The new top.
    """
    xp = get_array_module(best)
    top_s, top_a, top_b, top_c = top
    n_b, k = top_s.shape
    _, n_c, n_m = best.shape
    s = best.reshape(n_b, n_c * n_m)
    s = xp.concatenate([top_s, xp.where(xp.isnan(s), -xp.inf, s)], axis=1)  # NaN never enters either

    def cand(current, new):
        return xp.concatenate([current, xp.broadcast_to(new.astype(xp.int64), (n_b, n_c * n_m))], axis=1)

    a = cand(top_a, xp.repeat(xp.arange(n_c), n_m))
    b = cand(top_b, xp.tile(xp.arange(n_m), n_c) + j0)
    c = cand(top_c, arg.reshape(n_b, n_c * n_m))
    order = xp.argsort(-s, axis=1, kind="stable")[:, :k]
    return tuple(xp.take_along_axis(v, order, axis=1) for v in (s, a, b, c))
