"""Micro-benchmark of the backprojection kernel: ns per inserted image pixel, by accumulator precision.

    python benchmarks/bench_insert.py [--box 96] [--pad 2] [--poses 64] [--particles 8]

Inserts ``particles`` x ``poses`` full-resolution slices (each particle's poses a few degrees apart,
in the particle-major order the refinement uses) into double- and single-precision accumulators
and prints the best of 5 runs. Single threaded (one accumulator per thread in the refinement).
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nonuniform.engine import geometry
from nonuniform.engine.project import image_pixels, slice_coords
from nonuniform.engine.reconstruct import _insert_kernel


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--box", type=int, default=96)
    ap.add_argument("--pad", type=int, default=2)
    ap.add_argument("--poses", type=int, default=64)
    ap.add_argument("--particles", type=int, default=8)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    ky, kx, _ = image_pixels(a.box, None)
    ky, kx = ky.astype(np.float32), kx.astype(np.float32)
    n, p = a.poses * a.particles, len(ky)
    # Poses ~2° apart around each particle's pose, particle by particle.
    rots = np.concatenate([r @ geometry.axis_angle_to_matrix(rng.normal(scale=0.03, size=(a.poses, 3)))
                           for r in geometry.random_rotations(a.particles, rng)])
    coords = slice_coords(rots, a.pad)
    vals = (rng.normal(size=(n, p)) + 1j * rng.normal(size=(n, p))).astype(np.complex64)
    ctf_w, w2 = rng.random((n, p)).astype(np.float32), rng.random((n, p)).astype(np.float32)
    m = a.pad * a.box
    print(f"box {a.box}, pad {a.pad}: {n} slices of {p} pixels into a {m}x{m}x{m // 2 + 1} accumulator")
    for cdt, rdt in ((np.complex128, np.float64), (np.complex64, np.float32)):
        data, weight = np.zeros((m, m, m // 2 + 1), cdt), np.zeros((m, m, m // 2 + 1), rdt)
        _insert_kernel(data, weight, coords[:1], ky, kx, vals[:1], ctf_w[:1], w2[:1])  # compile
        best = np.inf
        for _ in range(5):
            t = time.perf_counter()
            _insert_kernel(data, weight, coords, ky, kx, vals, ctf_w, w2)
            best = min(best, time.perf_counter() - t)
        print(f"{np.dtype(cdt).name:>10s} accumulators: {best * 1e9 / (n * p):6.1f} ns per pixel "
              f"({(data.nbytes + weight.nbytes) / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
