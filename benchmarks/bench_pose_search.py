"""Throughput of the E-step pose search (run: PYTHONPATH=. python benchmarks/bench_pose_search.py).

Prints
1. this machine's raw sgemm / cgemm rates (square 2048 products);
2. the scoring GEMMs at the shapes the search uses: the cross term as one real GEMM on interleaved
   float32 views (4·B·T·P·J flops) versus the same product as a complex GEMM (8·B·T·P·J flops, half
   of them wasted on the imaginary part), and the whole chunked ``score_poses`` call;
3. images/s of a coarse-to-fine ``global_search`` at box 128 and the share of its time spent in
   GEMMs, in building image-side arrays, in projecting templates and in the reductions.
"""

import argparse
import time
from collections import defaultdict

import numpy as np

from nonuniform.engine import ctf, fourier, geometry, pose_search, project, scoring


def best_time(f, repeat=3):
    f()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts)


def raw_rates(n=2048):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, n, n), dtype=np.float32)
    ac = (a + 1j * b).astype(np.complex64)
    s = 2 * n ** 3 / best_time(lambda: a @ b) / 1e9
    c = 8 * n ** 3 / best_time(lambda: ac @ ac) / 1e9
    print(f"raw sgemm {n}^3: {s:7.1f} GFLOP/s   raw cgemm {n}^3: {c:7.1f} GFLOP/s (real flops)")
    return s, c


def scoring_gemms(raw_s, n_img=128, chunk=1024):
    rng = np.random.default_rng(1)
    box = 128
    vol = rng.standard_normal((box,) * 3).astype(np.float32)
    proj = project.Projector(vol)
    print(f"\nscoring GEMMs, B = {n_img} images, J = {chunk} templates per chunk "
          "(useful flops: cross 4·B·T·P·J + norm 2·B·P·J)")
    print("   r_px     P   T | real-view sgemm   complex cgemm | score_poses total | % of raw sgemm")
    for r, t_n in ((9.5, 21), (16, 21), (16, 49), (32, 9)):
        _scoring_row(proj, rng, raw_s, n_img, chunk, r, t_n)


def _scoring_row(proj, rng, raw_s, n_img, chunk, r, t_n):
    pix = scoring.pixel_set(proj.box, r)
    p = len(pix.ky)
    tm = proj.project_pixels(geometry.random_rotations(chunk, rng), pix.ky, pix.kx)
    x = (rng.standard_normal((n_img, p)) + 1j * rng.standard_normal((n_img, p))).astype(np.complex64)
    c = rng.uniform(-1, 1, (n_img, p)).astype(np.float32)
    w = np.ones(p, np.float32)
    shifts = rng.uniform(-3, 3, (t_n, 2))
    base = scoring.image_terms(x, c, w)[0]
    a = scoring.image_side(base, pix, None, shifts).reshape(n_img * t_n, p)
    a2, tm2 = a.view(np.float32), tm.view(np.float32)
    tmc = np.ascontiguousarray(tm.conj().T)
    flops = 4 * n_img * t_n * p * chunk
    t_real = best_time(lambda: np.matmul(a2, tm2.T))
    t_cplx = best_time(lambda: np.matmul(a, tmc))
    t_all = best_time(lambda: scoring.score_poses(x, c, w, tm, shifts, pix, top_k=8, chunk=chunk))
    g_real, g_cplx = flops / t_real / 1e9, flops / t_cplx / 1e9
    g_all = (flops + 2 * n_img * p * chunk) / t_all / 1e9
    print(f"{r:7.1f} {p:5d} {t_n:3d} | {g_real:9.1f} GF/s   {g_cplx:9.1f} GF/s  | {g_all:9.1f} GF/s    |"
          f" {100 * g_real / raw_s:5.0f} % / {100 * g_all / raw_s:3.0f} %")


class Profile:
    """Wall time per stage of the pose search, by wrapping its building blocks (benchmark only)."""

    def __init__(self):
        self.t = defaultdict(float)

    def wrap(self, owner, name, label):
        f = getattr(owner, name)

        def timed(*args, **kw):
            t = time.perf_counter()
            try:
                return f(*args, **kw)
            finally:
                self.t[label] += time.perf_counter() - t

        setattr(owner, name, timed)


class _TimedNumpy:
    """numpy with a timed ``matmul``, swapped into the scoring module's namespace (benchmark only)."""

    def __init__(self, prof):
        self._prof = prof

    def __getattr__(self, name):
        return getattr(np, name)

    def matmul(self, *args, **kw):
        t = time.perf_counter()
        try:
            return np.matmul(*args, **kw)
        finally:
            self._prof.t["GEMM (cross + norm)"] += time.perf_counter() - t


def phantom(n, rng, n_blobs=40):
    z, y, x = (np.mgrid[:n, :n, :n] - n // 2).astype(np.float32)
    vol = np.zeros((n, n, n), np.float32)
    for _ in range(n_blobs):
        c = rng.uniform(-n / 5, n / 5, 3)
        s = rng.uniform(2, 5)
        vol += rng.uniform(0.5, 1.5) * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s))
    return vol


def fourier_crop(vol, n):
    """The same map on an n³ grid (same physical box): its spectrum cropped to n³."""
    big = vol.shape[0]
    f = np.fft.fftshift(fourier.rfftn_c(vol), axes=(0, 1))
    o = big // 2 - n // 2
    f = np.fft.ifftshift(f[o:o + n, o:o + n, : n // 2 + 1], axes=(0, 1))
    return fourier.irfftn_c(f, (n, n, n)).astype(np.float32)


def global_search_bench(n_img, r_max_px, final_step_deg, top_k=8, refine_top_k=4, local_radius_steps=1.5,
                        local_batch=128, crop_box=0):
    box, apix = 128, 1.5
    rng = np.random.default_rng(2)
    vol = phantom(box, rng)
    proj = project.Projector(vol)
    rots = geometry.random_rotations(n_img, rng)
    shifts = rng.uniform(-4, 4, (n_img, 2))
    ctfs = ctf.compute_ctf(box, apix, rng.uniform(8000, 25000, n_img), rng.uniform(8000, 25000, n_img),
                           rng.uniform(0, 180, n_img), 300, 2.7, 0.1)
    clean = fourier.irfft2_c(project.shift_images_ft(proj.project(rots) * ctfs, shifts), box)
    noise = 3.0 * clean.std()  # SNR 0.1 in variance: a typical particle
    ft = fourier.rfft2_c((clean + noise * rng.standard_normal(clean.shape)).astype(np.float32))
    inv_sigma2 = np.full(box, 1.0 / (box * box * noise ** 2))
    params = pose_search.SearchParams(coarse_step_deg=15, final_step_deg=final_step_deg, shift_range_px=5,
                                      shift_step_px=2, top_k=top_k, refine_top_k=refine_top_k,
                                      local_radius_steps=local_radius_steps, local_batch=local_batch)
    if crop_box:
        proj = project.Projector(fourier_crop(vol, crop_box))
    # Warm-up (numba compilation) on a few images.
    pose_search.global_search(proj, ft[:4], ctfs[:4], inv_sigma2, r_max_px, params)

    prof = Profile()
    real_np = scoring.np
    prof.wrap(proj, "project_pixels", "template projection")
    prof.wrap(pose_search, "gather", "gather pixels")
    for name, label in (("image_side", "image-side arrays (A)"), ("image_terms", "image-side arrays (A)"),
                        ("_reduce", "reduction (max/top-K)"),
                        ("_abs2", "norm terms |T|^2"), ("_weighted_norms", "norm terms |T|^2")):
        prof.wrap(scoring, name, label)
    scoring.np = _TimedNumpy(prof)
    try:
        t, cpu = time.perf_counter(), time.process_time()
        res = pose_search.global_search(proj, ft, ctfs, inv_sigma2, r_max_px, params)
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    finally:
        scoring.np = real_np
    err = geometry.angular_distance_deg(res.rotations, rots)
    print(f"\nglobal search, box {box} (reference box {proj.box}), {n_img} images, SNR 0.1, r_max {r_max_px} px, 15° -> {final_step_deg}° "
          f"(4392 coarse rotations x 21 shifts, then {len(geometry.local_grid(np.eye(3), 1, local_radius_steps))}"
          f" x 9 per candidate, top-K {top_k} -> {refine_top_k})")
    print(f"  {n_img / wall:.1f} images/s ({1e3 * wall / n_img:.2f} ms/image, {wall:.1f} s wall, "
          f"{cpu / wall:.2f} cores busy on average); "
          f"median error {np.median(err):.2f}°, {100 * np.mean(err < 2 * final_step_deg):.0f} % within "
          f"{2 * final_step_deg}°, median shift error {np.median(np.abs(res.shifts_px - shifts)):.2f} px")
    other = wall - sum(prof.t.values())
    for k, v in sorted(prof.t.items(), key=lambda kv: -kv[1]) + [("other (python, reshapes, top-K bookkeeping)", other)]:
        print(f"  {k:45s} {v:7.2f} s  {100 * v / wall:5.1f} %")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--r-max-px", type=float, default=32.0)
    ap.add_argument("--final-step-deg", type=float, default=1.875)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--refine-top-k", type=int, default=4)
    ap.add_argument("--local-radius-steps", type=float, default=1.5)
    ap.add_argument("--local-batch", type=int, default=128, help="images per batch in the refinement levels")
    ap.add_argument("--crop-box", type=int, default=0,
                    help="build the projector from the reference Fourier-cropped to this box (0: no crop)")
    ap.add_argument("--search-only", action="store_true", help="skip the GEMM rate measurements")
    args = ap.parse_args()
    if not args.search_only:
        raw_s, _ = raw_rates()
        scoring_gemms(raw_s)
    global_search_bench(args.images, args.r_max_px, args.final_step_deg, args.top_k, args.refine_top_k,
                        args.local_radius_steps, args.local_batch, args.crop_box)
    if not args.search_only:
        raw_rates()  # again: other processes on a shared machine disturb single measurements


if __name__ == "__main__":
    main()
