"""Benchmark: ``nonuniform reconstruct`` against ``relion_reconstruct --ctf`` on the same STAR files.

Simulates (with this project's engine) N particles of a protein-like phantom at known poses, with
astigmatic CTFs and origin offsets, once noiseless and once with white noise at a given SNR; then
times our CLI (subprocess, ``--threads 1`` and ``2``) and RELION (``relion_reconstruct``, which is
single-threaded; optionally also ``mpirun -np K relion_reconstruct_mpi``) on the same STAR file and
prints wall time, particles/s, the ratio ours/RELION and the FSC of each map against the truth.

    python benchmarks/bench_reconstruct.py                   # 5000 particles, box 128, SNR 0.05
    python benchmarks/bench_reconstruct.py --n 1000 --box 64 --relion-mpi 2

Conventions: SNR = variance of the noiseless (CTF-modulated) images over the whole box / variance
of the noise. FSC against the truth is computed on mean-removed maps (relion_reconstruct does not
reproduce the zero frequency) and resolutions come from ``fsc.resolution_at`` (shell 0 ignored).
relion_reconstruct multiplies its output by a soft sphere (1 out to N/2, raised-cosine edge of about
3 px, measured), which removes the noise in the box corners; the "masked" columns apply that same
sphere (``masks.soft_sphere(N, N/2, 3)``) to every map, to compare the reconstructions themselves.
Before timing, each program reconstructs a 50-particle STAR once, so numba's JIT cache and the
OS file cache are warm for both; the timed runs include process start-up and imports, and with
``--repeat K`` the fastest of K runs is reported.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from nonuniform.engine import ctf, fourier, fsc, geometry, io, masks, particles, project  # noqa: E402


def phantom(box, rng, n_blobs=400):
    """Protein-like map: Gaussian blobs (sigma 1-1.6 px) filling an ellipsoid, origin at N//2."""
    z, y, x = (np.mgrid[:box, :box, :box] - box // 2).astype(np.float32)
    vol = np.zeros((box, box, box), np.float32)
    axes = np.array([0.30, 0.24, 0.20]) * box
    centres = []
    while len(centres) < n_blobs:
        c = rng.uniform(-1, 1, 3)
        if (c * c).sum() <= 1:
            centres.append(c * axes)
    for (cx, cy, cz), s in zip(centres, rng.uniform(1.0, 1.6, n_blobs)):
        r = int(np.ceil(4 * s))
        ix, iy, iz = (int(round(v)) + box // 2 for v in (cx, cy, cz))
        sl = (slice(iz - r, iz + r + 1), slice(iy - r, iy + r + 1), slice(ix - r, ix + r + 1))
        d2 = (x[sl] - cx) ** 2 + (y[sl] - cy) ** 2 + (z[sl] - cz) ** 2
        vol[sl] += rng.uniform(0.5, 1.0) * np.exp(-d2 / (2 * s * s))
    return vol


def simulate(folder, n, box, apix, snr, rng, batch=500):
    """Write truth.mrc and the noiseless and noisy particle sets (same poses), return their STARs."""
    vol = phantom(box, rng)
    io.write_mrc(os.path.join(folder, "truth.mrc"), vol, apix)
    rots = geometry.random_rotations(n, rng)
    rot, tilt, psi = geometry.matrix_to_euler(rots)
    origin_px = rng.uniform(-5, 5, (n, 2))
    du = rng.uniform(8000, 25000, n)
    dv = du - rng.uniform(0, 1500, n)
    ang = rng.uniform(-180, 180, n)
    proj = project.Projector(vol)
    clean = np.empty((n, box, box), np.float32)
    for s in range(0, n, batch):
        i = slice(s, min(n, s + batch))
        c = ctf.compute_ctf(box, apix, du[i], dv[i], ang[i], 300, 2.7, 0.1)
        ft = project.shift_images_ft(proj.project(rots[i]), project.RELION_ORIGIN_SIGN * origin_px[i])
        clean[i] = fourier.irfft2_c(c * ft, box)
    signal_var = float(clean.var(axis=(1, 2)).mean())
    noise_std = np.sqrt(signal_var / snr)
    stars = {}
    for name, sigma in (("noiseless", 0.0), ("noisy", noise_std)):
        imgs = clean if sigma == 0 else clean + rng.normal(0, sigma, clean.shape).astype(np.float32)
        io.write_stack(os.path.join(folder, f"{name}.mrcs"), imgs, apix)
        del imgs
        stars[name] = os.path.join(folder, f"{name}.star")
        for path, m in ((stars[name], n), (os.path.join(folder, f"{name}_warmup.star"), min(n, 50))):
            particles.write_particles_star(
                path, [particles.image_name(k, f"{name}.mrcs") for k in range(m)], apix, box, 300, 2.7,
                0.1, du[:m], dv[:m], ang[:m], rot_deg=rot[:m], tilt_deg=tilt[:m], psi_deg=psi[:m],
                shift_x_ang=origin_px[:m, 0] * apix, shift_y_ang=origin_px[:m, 1] * apix)
    return vol, stars, signal_var, noise_std


def thread_env(threads):
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
              "NONUNIFORM_FFT_WORKERS"):
        env[k] = str(threads)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    if os.geteuid() == 0:  # Open MPI refuses root without these
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def commands(args):
    """(label, threads, argv builder) of every program timed."""
    progs = [(f"nonuniform --threads {t}", t,
              (lambda t: lambda star, out: [sys.executable, "-m", "nonuniform.engine", "--threads", str(t),
                                            "reconstruct", "--particles", star, "--out", out])(t))
             for t in args.threads]
    if not args.skip_relion:
        progs.append(("relion_reconstruct", 1,
                      lambda star, out: ["relion_reconstruct", "--i", star, "--o", out, "--ctf"]))
        if args.relion_mpi > 1:
            k = args.relion_mpi
            progs.append((f"relion_reconstruct_mpi -np {k}", k,
                          lambda star, out: ["mpirun", "-np", str(k), "relion_reconstruct_mpi", "--i", star,
                                             "--o", out, "--ctf"]))
    return progs


def timed(argv, threads, cwd):
    t0 = time.perf_counter()
    res = subprocess.run(argv, cwd=cwd, env=thread_env(threads), capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if res.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return dt


def fsc_vs_truth(path, truth, apix, mask=None):
    """FSC of a map (mean removed, times ``mask`` if given) against the truth, and its summary."""
    m, _ = io.read_mrc(path)
    m = m - m.mean()
    if mask is not None:
        m = m * mask
    curve = fsc.fsc_curve(m, truth - truth.mean())
    box = truth.shape[0]
    band = curve[1:int(0.8 * box / 2) + 1]
    return dict(curve=curve, band_min=band.min(), r05=fsc.resolution_at(curve, box, apix, 0.5),
                r0143=fsc.resolution_at(curve, box, apix, 0.143))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=5000, help="number of particles (default 5000)")
    p.add_argument("--box", type=int, default=128, help="box size in px (default 128; even)")
    p.add_argument("--snr", type=float, default=0.05, help="SNR of the noisy set (default 0.05)")
    p.add_argument("--apix", type=float, default=1.2, help="pixel size in Å (default 1.2)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="our --threads values (1 2)")
    p.add_argument("--relion-mpi", type=int, default=0,
                   help="also time mpirun -np K relion_reconstruct_mpi (default: off)")
    p.add_argument("--skip-relion", action="store_true", help="time only our reconstruction")
    p.add_argument("--workdir", help="folder for the data (default: a temporary folder, deleted)")
    p.add_argument("--repeat", type=int, default=1, help="time each program K times, report the fastest")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.box % 2:
        p.error("--box must be even (RELION mishandles odd boxes)")
    if not args.skip_relion and shutil.which("relion_reconstruct") is None:
        p.error("relion_reconstruct not on PATH (apt-get install relion) or use --skip-relion")
    if args.relion_mpi > 1 and (shutil.which("mpirun") is None or shutil.which("relion_reconstruct_mpi") is None):
        p.error("--relion-mpi needs mpirun and relion_reconstruct_mpi on PATH")

    work = args.workdir or tempfile.mkdtemp(prefix="bench_reconstruct_")
    os.makedirs(work, exist_ok=True)
    try:
        t0 = time.perf_counter()
        truth, stars, signal_var, noise_std = simulate(work, args.n, args.box, args.apix, args.snr,
                                                       np.random.default_rng(args.seed))
        print(f"simulated {args.n} particles, box {args.box}, {args.apix} Å/px, CTF 8000-25000 Å, origins "
              f"±5 px, noisy set SNR {args.snr} (signal var {signal_var:.4g}, noise std {noise_std:.4g}) "
              f"in {time.perf_counter() - t0:.0f} s; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.2f}; workdir {work}")
        sphere = masks.soft_sphere(args.box, args.box / 2, 3.0)
        nyq08 = 2 * args.apix / 0.8
        rows, results = [], {}
        for data in ("noiseless", "noisy"):
            for label, threads, build in commands(args):
                timed(build(os.path.basename(stars[data].replace(".star", "_warmup.star")), "warmup.mrc"),
                      threads, work)
                out = f"{data}_{label.split()[0]}_{threads}.mrc"
                dt = min(timed(build(os.path.basename(stars[data]), out), threads, work)
                         for _ in range(max(1, args.repeat)))
                path = os.path.join(work, out)
                results[(data, label)] = dict(t=dt, raw=fsc_vs_truth(path, truth, args.apix),
                                              masked=fsc_vs_truth(path, truth, args.apix, sphere))
                rows.append((data, label, threads, dt))
                print(f"  {data:9s} {label:34s} {dt:7.1f} s", flush=True)

        relion = "relion_reconstruct"
        print()
        print(f"{'data':9s} | {'program':34s} | {'wall s':>7s} | {'ptcl/s':>7s} | {'ours/RELION':>11s} | "
              f"{'FSC-0.5 Å':>9s} | {'FSC-0.143 Å':>11s} | {'min FSC 0.8 Nyq':>15s} | "
              f"{'masked: FSC-0.5 Å':>17s} | {'FSC-0.143 Å':>11s}")
        for data, label, threads, dt in rows:
            r = results[(data, label)]
            ref = results.get((data, relion))
            ratio = f"{dt / ref['t']:11.2f}" if ref and label.startswith("nonuniform") else f"{'':11s}"
            raw, msk = r["raw"], r["masked"]
            print(f"{data:9s} | {label:34s} | {dt:7.1f} | {args.n / dt:7.0f} | {ratio} | {raw['r05']:9.2f} | "
                  f"{raw['r0143']:11.2f} | {raw['band_min']:15.4f} | {msk['r05']:17.2f} | {msk['r0143']:11.2f}")
        print(f"(Nyquist {2 * args.apix:.2f} Å; 0.8 Nyquist = {nyq08:.2f} Å; relion_reconstruct is single-threaded)")
        print()
        ours = f"nonuniform --threads {max(args.threads)}"
        band_min = results[("noiseless", ours)]["raw"]["band_min"]
        print(f"check noiseless: ours FSC vs truth >= 0.9 up to 0.8 Nyquist: {band_min:.4f} -> "
              f"{'PASS' if band_min >= 0.9 else 'FAIL'}")
        if not args.skip_relion:
            for kind in ("raw", "masked"):
                a, b = results[("noisy", ours)][kind]["r05"], results[("noisy", relion)][kind]["r05"]
                print(f"check noisy ({kind} maps): ours FSC-0.5 resolution {a:.3f} Å vs RELION {b:.3f} Å "
                      f"(ours/RELION {a / b:.3f}, must be <= 1.02) -> {'PASS' if a <= 1.02 * b else 'FAIL'}")
            for t in args.threads:
                for data in ("noiseless", "noisy"):
                    r = results[(data, f"nonuniform --threads {t}")]["t"] / results[(data, relion)]["t"]
                    print(f"check speed ({data}, --threads {t} vs single-threaded relion_reconstruct): "
                          f"ratio {r:.2f} -> {'PASS' if r <= 1 else 'FAIL'}")
            np.set_printoptions(precision=3, linewidth=160)
            print(f"\nFSC vs truth, noisy set, raw maps, shells 0..N/2 (ours --threads {max(args.threads)}, "
                  "then relion_reconstruct):")
            print(results[("noisy", ours)]["raw"]["curve"])
            print(results[("noisy", relion)]["raw"]["curve"])
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
