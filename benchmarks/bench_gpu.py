"""Per-stage throughput of the E/M-step on one device: the host (numpy/numba) or a CUDA GPU (cupy).

    PYTHONPATH=. python benchmarks/bench_gpu.py --device cpu --threads 2 --json benchmarks/results/cpu_2core.json
    PYTHONPATH=. python benchmarks/bench_gpu.py --device gpu --gpu-id 0 --json gpu.json \\
        --compare benchmarks/results/cpu_2core.json
    PYTHONPATH=. python benchmarks/bench_gpu.py --device cpu --boxes 32 --quick     # smoke run, < 1 min
    PYTHONPATH=. python benchmarks/bench_gpu.py --markdown gpu.json     # its rows for benchmarks/RESULTS.md

Stages, measured at every box of ``--boxes`` (default 128 256), best of a few runs after a warm-up
run (numba/cupy compilation, FFT plans), the device synchronized before every clock reading:

* ``sgemm``: the device's square float32 GEMM rate (n = 4096 on a GPU, 2048 on the host), the
  reference for the scoring percentages (measured once);
* ``projection``: central slices per second, ``Projector.project_pixels`` of the full-radius pixel
  set (``project.image_pixels(box)``), 4096 random rotations per call on a GPU (fewer at large
  boxes, so the output stays under 1 GiB), 256 on the host;
* ``scoring``: ``scoring.score_poses`` of B images (1024 on a GPU, 128 on the host) x T = 21 shifts
  (the coarse 2 px grid within 5 px) against J = 1024 templates at r = 16 and 32 Fourier px (at
  most box/2), random coefficients (the cost does not depend on them), in useful GFLOP/s
  (4·B·T·P·J cross + 2·B·P·J norm, as bench_pose_search.py) and in % of the measured sgemm rate;
  first the cross-term GEMM alone at that shape (the issue's "scoring GEMMs >= 50 % of the sgemm
  rate"), so that it is measured even where the whole call fails;
* ``insertion``: images per second of ``BackProjector.insert`` of full-resolution images with CTF
  and per-coefficient weights into the two fold accumulators (``insert_concurrently``, as the
  M-step: two host threads on the CPU, one stream on a GPU); poses come 8 per particle, ~2° apart,
  in the particle-major order of the M-step;
* ``nu_filter``: seconds per ``regularize.nu_filter`` of two box³ fold maps (protein phantom +
  independent noise; ``--nu-cutoffs``, default 50) on the device;
* ``refinement``: ``--particles`` (default 2000) protein-phantom particles simulated with the
  project's simulator (SNR 0.05, 192 Å box: 1.5 Å/px at box 128, 0.75 Å/px at 256), written to a
  temporary folder; a ``Refinement`` with ``RefineConfig(gpu=...)`` from the truth low-passed to
  30 Å, then ``iterate`` once with a global search and once with a local one
  (``min_global_iterations = max_global_iterations = 1``), in particles/s of the whole iteration
  and of its E/M-step alone (``Refinement._e_and_m_step``: pose search + backprojection). On a GPU a
  120-particle refinement runs both iterations first (kernel compilation).

Prints one table per box (stage, figure, unit). ``--json FILE`` saves every figure with the machine
(CPU model and cores, GPU name and memory), date, git commit and numpy/scipy/numba/cupy versions;
the file is rewritten after every stage, so a run that is killed keeps what it measured.
``--compare FILE`` (a ``--json`` file of an earlier run, normally the 2-core CPU baseline) adds a
column of ratios this run / that run per stage (speed-ups: rates divided, seconds inverted) and
checks the issue's targets: E/M-step at box 256 >= 50x and NU regularization at 256³ >= 20x the
2-core CPU, scoring GEMMs >= 50 % of the device's own sgemm rate. ``--quick`` shrinks every size
(the CPU run at ``--boxes 32`` takes well under a minute); ``--budget-s S`` skips (and reports) the
stages that would start after S seconds. Exit status 1 when a stage failed (its error is printed
and saved, and the other stages still run), 2 when the device cannot be used. A simulated CUDA
device (``NUMBA_ENABLE_CUDASIM=1``: numpy arrays, kernels run thread by thread in Python, a few
thousand threads per second) is refused: it is far too slow to benchmark.
"""

import os
import sys


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from blas_threads import from_argv

    from_argv(sys.argv[1:])

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from nonuniform.engine import backend, filters, fourier, geometry, io, phantoms, project, reconstruct  # noqa: E402
from nonuniform.engine import regularize, scoring, simulate  # noqa: E402
from nonuniform.engine.errors import InputError  # noqa: E402

STAGES = ("sgemm", "projection", "scoring", "insertion", "nu_filter", "refinement")
PHYSICAL_BOX_ANG = 192.0  # the simulated particles' box: 1.5 Å/px at box 128
SNR = 0.05
INITIAL_LOWPASS_ANG = 30.0
N_SHIFTS = 21  # scoring.shift_grid(5, 2): the coarse level's shifts
SCORING_RADII = (16.0, 32.0)
# The targets (GPU against the 2-core CPU, or against the card's own sgemm rate).
TARGET_ESTEP_SPEEDUP_256 = 50.0
TARGET_NU_SPEEDUP_256 = 20.0
TARGET_GEMM_PERCENT = 50.0


# ------------------------------------------------------------------------------------------------
# Sizes


def sizes(args, dev):
    """Per-stage problem sizes for this device and mode (``--quick`` shrinks all of them)."""
    gpu = not dev.is_cpu
    s = {"sgemm_n": 4096 if gpu else 2048,
         "projection_rotations": 4096 if gpu else 256,
         "scoring_images": 1024 if gpu else 128,
         "scoring_templates": 1024,
         "insert_images_128": 4096 if gpu else 256,  # per call at box 128, scaled by (128/box)²
         "repeat": 3}
    if args.quick:
        s.update(sgemm_n=1024, projection_rotations=32, scoring_images=32, scoring_templates=128,
                 insert_images_128=32, repeat=2)
    return s


def quick_defaults(args):
    """``--quick``: fewer NU cutoffs and particles unless given explicitly."""
    if args.nu_cutoffs is None:
        args.nu_cutoffs = 10 if args.quick else 50
    if args.particles is None:
        args.particles = 200 if args.quick else 2000


# ------------------------------------------------------------------------------------------------
# Timing


def measure(f, dev, repeat, slow_s=60.0):
    """Best wall time (s) of ``f()`` and the number of timed runs.

    One warm-up run, then ``repeat`` timed runs (fewer once 3 × ``slow_s`` have been spent), the
    device synchronized before every clock reading. On the host, a warm-up run longer than
    ``slow_s`` (a big FFT-bound stage on 2 cores, nothing to compile) is itself the measurement.
    """
    dev.synchronize()
    t = time.perf_counter()
    f()
    dev.synchronize()
    first = time.perf_counter() - t
    if dev.is_cpu and first > slow_s:
        return first, 1
    times, spent = [], 0.0
    for _ in range(max(1, repeat)):
        dev.synchronize()
        t = time.perf_counter()
        f()
        dev.synchronize()
        times.append(time.perf_counter() - t)
        spent += times[-1]
        if spent > 3 * slow_s:
            break
    return min(times), len(times)


def free_device_memory(dev):
    """Return cupy's cached blocks to the driver between stages (bounded GPU memory)."""
    if not dev.is_cpu:
        dev.xp.get_default_memory_pool().free_all_blocks()
        dev.xp.get_default_pinned_memory_pool().free_all_blocks()


# ------------------------------------------------------------------------------------------------
# Machine description


def _run(cmd):
    try:
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(dev, args):
    import numba
    import scipy

    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "commit": _run(["git", "rev-parse", "--short", "HEAD"]) or "unknown",
            "hostname": platform.node(), "python": platform.python_version(),
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "threads": args.threads, "numba_threads": numba.get_num_threads(),
            "numpy": np.__version__, "scipy": scipy.__version__, "numba": numba.__version__,
            "device": "gpu" if not dev.is_cpu else "cpu", "quick": bool(args.quick)}
    if not dev.is_cpu:
        cp = dev.xp
        props = cp.cuda.runtime.getDeviceProperties(dev.gpu_id)
        name = props["name"]
        info.update(gpu_id=dev.gpu_id, gpu_name=name.decode() if isinstance(name, bytes) else str(name),
                    gpu_memory_gib=round(props["totalGlobalMem"] / 2 ** 30, 1), cupy=cp.__version__,
                    cuda_runtime=cp.cuda.runtime.runtimeGetVersion(), cuda_driver=cp.cuda.runtime.driverGetVersion())
    return info


# ------------------------------------------------------------------------------------------------
# Results


class Results:
    """Figures per box and stage, printed as they come, saved to ``--json`` after every stage."""

    def __init__(self, info, params, json_path):
        self.data = {"machine": info, "params": params, "figures": {}, "errors": {}, "skipped": {}}
        self.json_path = json_path
        self.failed = False

    def add(self, box, key, stage, value, unit, higher_better=True, detail="", **shape):
        self.data["figures"].setdefault(str(box), {})[key] = {
            "stage": stage, "value": float(value), "unit": unit, "higher_better": higher_better,
            "detail": detail, "shape": shape}
        print(f"  [box {box}] {stage:38s} {value:12.4g} {unit:14s} {detail}", flush=True)
        self.save()

    def error(self, box, stage, exc):
        self.failed = True
        msg = f"{type(exc).__name__}: {exc}"
        self.data["errors"].setdefault(str(box), {})[stage] = {"error": msg, "traceback": traceback.format_exc()}
        print(f"  [box {box}] {stage}: FAILED ({msg})", flush=True)
        traceback.print_exc()
        self.save()

    def skip(self, box, stage, why):
        self.data["skipped"].setdefault(str(box), {})[stage] = why
        print(f"  [box {box}] {stage}: skipped ({why})", flush=True)
        self.save()

    def save(self):
        if not self.json_path:
            return
        tmp = self.json_path + ".tmp"
        os.makedirs(os.path.dirname(os.path.abspath(self.json_path)), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.json_path)

    def figures(self, box):
        return self.data["figures"].get(str(box), {})


# ------------------------------------------------------------------------------------------------
# Stages


def bench_sgemm(dev, n, repeat):
    xp = dev.xp
    rng = np.random.default_rng(0)
    a = dev.asarray(rng.standard_normal((n, n), dtype=np.float32))
    b = dev.asarray(rng.standard_normal((n, n), dtype=np.float32))
    c = xp.empty((n, n), xp.float32)
    t, runs = measure(lambda: xp.matmul(a, b, out=c), dev, max(repeat, 5))
    return 2 * n ** 3 / t / 1e9, runs


def bench_projection(dev, proj, n_rot, repeat):
    box = proj.box
    ky, kx, _ = project.image_pixels(box)
    n_rot = int(max(16, min(n_rot, 2 ** 30 // (8 * len(ky)))))  # output (n, P) complex64 under 1 GiB
    rots = geometry.random_rotations(n_rot, np.random.default_rng(1))
    t, runs = measure(lambda: proj.project_pixels(rots, ky, kx), dev, repeat)
    return n_rot / t, runs, n_rot, len(ky)


def scoring_inputs(dev, box, r_px, n_img, n_tmpl):
    """Pixel set, images (B, P), CTFs, weights and templates (J, P) on the device: random values (the
    cost of the GEMMs and the reduction does not depend on them), so the stage does not need the
    projection kernels."""
    rng = np.random.default_rng(2)
    pix = scoring.pixel_set(box, r_px)
    p = len(pix.ky)

    def cplx(n):
        return dev.asarray((rng.standard_normal((n, p)) + 1j * rng.standard_normal((n, p))).astype(np.complex64))

    x, tm = cplx(n_img), cplx(n_tmpl)
    c = dev.asarray(rng.uniform(-1, 1, (n_img, p)).astype(np.float32))
    w = dev.asarray(rng.uniform(0.5, 2.0, p).astype(np.float32))
    return pix, x, c, w, tm


def bench_cross_gemm(dev, inputs, shifts, repeat):
    """GFLOP/s of the cross-term GEMM alone, on the interleaved (re, im) float32 views score_poses uses."""
    xp = dev.xp
    pix, x, c, w, tm = inputs
    n_img, p = x.shape
    base = scoring.image_terms(x, c, w, dev)[0]
    a2 = scoring.image_side(base, pix, None, shifts, device=dev).view(xp.float32).reshape(n_img * len(shifts), 2 * p)
    tm2 = tm.view(xp.float32)
    out = xp.empty((n_img * len(shifts), len(tm)), xp.float32)
    t, runs = measure(lambda: xp.matmul(a2, tm2.T, out=out), dev, repeat)
    return 4 * n_img * len(shifts) * p * len(tm) / t / 1e9, runs


def bench_score_poses(dev, inputs, shifts, repeat):
    """Useful GFLOP/s (4·B·T·P·J + 2·B·P·J) of one ``score_poses`` call, all templates in one chunk."""
    pix, x, c, w, tm = inputs
    n_img, p = x.shape
    t, runs = measure(lambda: scoring.score_poses(x, c, w, tm, shifts, pix, top_k=8, chunk=len(tm), device=dev),
                      dev, repeat)
    return (4 * n_img * len(shifts) * p * len(tm) + 2 * n_img * p * len(tm)) / t / 1e9, runs


def clustered_rotations(n, rng, per_particle=8):
    """``n`` poses, ``per_particle`` at a time ~2° apart around random particle poses (M-step order)."""
    k = -(-n // per_particle)
    rots = np.concatenate([r @ geometry.axis_angle_to_matrix(rng.normal(scale=0.03, size=(per_particle, 3)))
                           for r in geometry.random_rotations(k, rng)])
    return rots[:n]


def bench_insertion(dev, box, n_img, repeat):
    """Images/s of two fold BackProjectors filled as the M-step does (``insert_concurrently``)."""
    rng = np.random.default_rng(3)
    shape = (n_img, box, box // 2 + 1)
    ft = dev.asarray((rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64))
    ctf = dev.asarray(rng.uniform(-1, 1, shape).astype(np.float32))
    wts = dev.asarray(rng.uniform(0.5, 2.0, shape).astype(np.float32))
    rots = clustered_rotations(n_img, rng)
    folds = [reconstruct.BackProjector(box, device=dev) for _ in range(2)]
    h = n_img // 2
    jobs = [(folds[0], (ft[:h], ctf[:h], rots[:h]), {"weights": wts[:h]}),
            (folds[1], (ft[h:], ctf[h:], rots[h:]), {"weights": wts[h:]})]
    t, runs = measure(lambda: reconstruct.insert_concurrently(jobs), dev, repeat)
    acc_gib = sum(b.data.nbytes + b.weight.nbytes for b in folds) / 2 ** 30
    del folds, jobs, ft, ctf, wts
    return n_img / t, runs, acc_gib


def fold_maps(truth, rng):
    """Two fold maps: the truth plus independent noise (std 0.6 × the truth's std, as bench_nu.py)."""
    s = 0.6 * float(truth.std())
    return [(truth + rng.normal(0, s, truth.shape)).astype(np.float32) for _ in range(2)]


def bench_nu(dev, truth, n_cutoffs, repeat):
    q1, q2 = (dev.asarray(q) for q in fold_maps(truth, np.random.default_rng(4)))
    result = {}

    def run():
        result["r"] = regularize.nu_filter(q1, q2, n_cutoffs=n_cutoffs)

    t, runs = measure(run, dev, min(repeat, 2))
    distinct = len(np.unique(dev.asnumpy(result["r"].cutoff_index)))
    return t, runs, distinct


def simulate_set(folder, truth, n, apix, seed=5):
    """Simulated particles (STAR + stack) and the 30 Å start map in ``folder``: (star, init.mrc)."""
    rng = np.random.default_rng(seed)
    sim = simulate.simulate_particles(truth, n, apix, rng, snr=SNR)
    paths = simulate.write_simulation(folder, sim, apix, truth)
    init = os.path.join(folder, "init.mrc")
    io.write_mrc(init, filters.lowpass_cosine(truth, apix, INITIAL_LOWPASS_ANG).astype(np.float32), apix)
    return paths["star"], init


def run_refinement(dev, gpu_id, star, init, out):
    """Two iterations (global, then local): per iteration (search, n, whole s, E/M-step s)."""
    from nonuniform.engine.refine import RefineConfig, Refinement

    cfg = RefineConfig(gpu=gpu_id, seed=0, min_global_iterations=1, max_global_iterations=1,
                       initial_lowpass_ang=INITIAL_LOWPASS_ANG)
    ref = Refinement(star, init, out, cfg, overwrite=True)
    estep_s = []
    e_and_m = ref._e_and_m_step

    def timed_e_and_m(*a, **kw):  # the E/M-step inside iterate: pose search + backprojection
        dev.synchronize()
        t = time.perf_counter()
        try:
            return e_and_m(*a, **kw)
        finally:
            dev.synchronize()
            estep_s.append(time.perf_counter() - t)

    ref._e_and_m_step = timed_e_and_m
    st = ref._initial_state()
    rows = []
    for _ in range(2):
        dev.synchronize()
        t = time.perf_counter()
        st, _ = ref.iterate(st)
        dev.synchronize()
        whole = time.perf_counter() - t
        last = st.history[-1]
        rows.append((last["search"], len(ref.particles), whole, estep_s[-1], last["resolution_ang"],
                     last["angular_step_deg"], last["search_r_max_px"], last["poses_per_particle"]))
        free_device_memory(dev)
    del ref
    return rows


# ------------------------------------------------------------------------------------------------
# Driver


def radii_for(box):
    return sorted({min(r, box / 2) for r in SCORING_RADII})


def stage_wanted(args, name):
    return name in args.stages


def over_budget(args, t0):
    return args.budget_s and time.perf_counter() - t0 > args.budget_s


def guarded(args, res, dev, t0, box, name, fn):
    """Run one stage: skipped once the time budget is spent, its error recorded (the other stages
    still run), cupy's cached memory released after it."""
    if over_budget(args, t0):
        res.skip(box, name, "time budget spent")
        return
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - recorded and reported; the exit status says it failed
        res.error(box, name, exc)
    finally:
        free_device_memory(dev)


def run_stages(args, dev, res, sz, t0):
    """The per-box stages, then the refinements (the longest) of every box."""
    raw = {}

    def sgemm():
        raw["sgemm"], runs = bench_sgemm(dev, sz["sgemm_n"], sz["repeat"])
        for box in args.boxes:
            res.add(box, "sgemm", f"sgemm, n = {sz['sgemm_n']}", raw["sgemm"], "GFLOP/s", detail=f"best of {runs}",
                    n=sz["sgemm_n"])

    if stage_wanted(args, "sgemm") or stage_wanted(args, "scoring"):
        guarded(args, res, dev, t0, "all", "sgemm", sgemm)
    truths = {}
    for box in args.boxes:
        apix = PHYSICAL_BOX_ANG / box
        t = time.perf_counter()
        truths[box] = truth = phantoms.protein_phantom(box, apix, np.random.default_rng(box))
        print(f"box {box}: protein phantom at {apix:.3g} Å/px in {time.perf_counter() - t:.1f} s", flush=True)
        if stage_wanted(args, "projection"):
            guarded(args, res, dev, t0, box, "projection", lambda: projection_stage(dev, res, sz, box, truth))
        if stage_wanted(args, "scoring"):
            for r in radii_for(box):
                guarded(args, res, dev, t0, box, f"scoring r{r:g}",
                        lambda: scoring_stage(dev, res, sz, box, r, raw.get("sgemm")))
        if stage_wanted(args, "insertion"):
            guarded(args, res, dev, t0, box, "insertion", lambda: insertion(dev, res, sz, box))
        if stage_wanted(args, "nu_filter"):
            guarded(args, res, dev, t0, box, "nu_filter", lambda: nu_stage(args, dev, res, sz, box, truth))
    if stage_wanted(args, "refinement"):
        bench_refinements(args, dev, res, truths, t0)


def projection_stage(dev, res, sz, box, truth):
    proj = project.Projector(truth, device=dev)
    rate, runs, n_rot, p = bench_projection(dev, proj, sz["projection_rotations"], sz["repeat"])
    res.add(box, "projection", "projection (full-radius slices)", rate, "slices/s",
            detail=f"{n_rot} rotations x {p} px per call, best of {runs}", rotations=n_rot, pixels=p)


def scoring_stage(dev, res, sz, box, r, raw_sgemm):
    """The cross GEMM, then the whole ``score_poses`` (recorded one after the other)."""
    n_img, n_tmpl = sz["scoring_images"], sz["scoring_templates"]
    shifts = scoring.shift_grid(5.0, 2.0)
    assert len(shifts) == N_SHIFTS
    inputs = scoring_inputs(dev, box, r, n_img, n_tmpl)
    p = inputs[1].shape[1]
    shape = dict(images=n_img, shifts=N_SHIFTS, templates=n_tmpl, r_px=r, pixels=p)
    tag = f"B {n_img}, T {N_SHIFTS}, P {p}, J {n_tmpl}"

    def pct(g):
        return f", {100 * g / raw_sgemm:.0f} % of sgemm" if raw_sgemm else ""

    g, runs = bench_cross_gemm(dev, inputs, shifts, sz["repeat"])
    res.add(box, f"scoring_gemm_r{r:g}", f"scoring cross GEMM, r = {r:g} px", g, "GFLOP/s",
            detail=f"{tag}{pct(g)}, best of {runs}", **shape)
    g, runs = bench_score_poses(dev, inputs, shifts, sz["repeat"])
    res.add(box, f"scoring_r{r:g}", f"score_poses, r = {r:g} px", g, "GFLOP/s",
            detail=f"{tag}{pct(g)}, best of {runs}", **shape)


def insertion(dev, res, sz, box):
    n_ins = int(max(16, sz["insert_images_128"] * (128 / box) ** 2)) // 16 * 16
    rate, runs, gib = bench_insertion(dev, box, n_ins, sz["repeat"])
    res.add(box, "insertion", "insertion (CTF, weights, 2 folds)", rate, "images/s",
            detail=f"{n_ins} images per call, accumulators {gib:.2f} GiB, best of {runs}", images=n_ins)


def nu_stage(args, dev, res, sz, box, truth):
    sec, runs, distinct = bench_nu(dev, truth, args.nu_cutoffs, sz["repeat"])
    res.add(box, "nu_filter", f"NU regularization ({args.nu_cutoffs} cutoffs)", sec, "s", higher_better=False,
            detail=f"two {box}³ folds, {distinct} distinct cutoffs chosen, best of {runs}", n_cutoffs=args.nu_cutoffs)


def bench_refinements(args, dev, res, truths, t0):
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_", dir=args.workdir) as tmp:
        if not dev.is_cpu and not args.quick:
            # Kernel compilation (cupy, numba.cuda) of both iterations' code paths, untimed.
            box = args.boxes[0]
            guarded(args, res, dev, t0, box, "refinement warm-up",
                    lambda: refinement(args, dev, None, box, truths[box], 120, os.path.join(tmp, "warm")))
        for box in args.boxes:
            guarded(args, res, dev, t0, box, "refinement",
                    lambda: refinement(args, dev, res, box, truths[box], args.particles, os.path.join(tmp, str(box))))


def refinement(args, dev, res, box, truth, n, folder):
    """Simulate ``n`` particles, run the two timed iterations, record them in ``res`` (None: warm-up)."""
    apix = PHYSICAL_BOX_ANG / box
    t = time.perf_counter()
    star, init = simulate_set(os.path.join(folder, "data"), truth, n, apix)
    print(f"box {box}: simulated {n} particles at {apix:.3g} Å/px in {time.perf_counter() - t:.1f} s", flush=True)
    rows = run_refinement(dev, None if dev.is_cpu else dev.gpu_id, star, init, os.path.join(folder, "run"))
    if res is None:
        print(f"warm-up refinement ({n} particles, box {box}): {time.perf_counter() - t:.1f} s", flush=True)
        return
    for it, (search, n_part, whole, estep, res_ang, step, r_max, poses) in enumerate(rows, 1):
        shape = dict(particles=n_part, search=search, step_deg=step, r_max_px=r_max)
        tag = (f"{search}, {step:.3g}° step, r_max {r_max:.1f} px, {poses:.1f} poses/particle "
               f"backprojected, {res_ang:.1f} Å after")
        res.add(box, f"iter{it}_{search}_estep", f"iteration {it} ({search}): E/M-step", n_part / estep,
                "particles/s", detail=f"{estep:.1f} s; {tag}", **shape)
        res.add(box, f"iter{it}_{search}", f"iteration {it} ({search}): whole", n_part / whole,
                "particles/s", detail=f"{whole:.1f} s incl. NU, FSC, masks", **shape)


# ------------------------------------------------------------------------------------------------
# Reports


def print_tables(res, boxes):
    info = res.data["machine"]
    where = info.get("gpu_name") or f"{info['cpu_model']}, {info['threads']} threads"
    print(f"\n{info['device'].upper()} ({where}), commit {info['commit']}, {info['date']}"
          f"{' (QUICK smoke run: tiny sizes)' if info['quick'] else ''}")
    for box in boxes:
        print(f"\nbox {box}")
        print(f"  {'stage':42s} {'figure':>12s}  {'unit':12s}  detail")
        for f in res.figures(box).values():
            print(f"  {f['stage']:42s} {f['value']:12.4g}  {f['unit']:12s}  {f['detail']}")
        for stage, e in res.data["errors"].get(str(box), {}).items():
            print(f"  {stage:42s} {'FAILED':>12s}  {'':12s}  {e['error']}")
        for stage, why in res.data["skipped"].get(str(box), {}).items():
            print(f"  {stage:42s} {'skipped':>12s}  {'':12s}  {why}")
    for stage, e in res.data["errors"].get("all", {}).items():
        print(f"\n{stage}: FAILED ({e['error']})")


def speedup(mine, theirs):
    """This run's figure over the other's, as a speed-up (rates divided, seconds inverted)."""
    if theirs["value"] <= 0 or mine["value"] <= 0:
        return float("nan")
    r = mine["value"] / theirs["value"]
    return r if mine["higher_better"] else 1.0 / r


def print_comparison(res, other_path, boxes):
    with open(other_path) as f:
        other = json.load(f)
    om = other["machine"]
    label = om.get("gpu_name") or f"{om['cpu_model']}, {om.get('threads')} threads"
    print(f"\nratios against {other_path}: {om['device'].upper()} ({label}), commit {om['commit']}, {om['date']}"
          f"{' (QUICK run)' if om.get('quick') else ''}")
    if bool(om.get("quick")) != bool(res.data["machine"]["quick"]):
        print("  warning: one run is --quick and the other is not: sizes differ")
    ratios = {}
    for box in boxes:
        mine, theirs = res.figures(box), other["figures"].get(str(box), {})
        common = [k for k in mine if k in theirs and k != "sgemm"]
        if not common:
            print(f"\nbox {box}: no figures in common")
            continue
        print(f"\nbox {box}")
        print(f"  {'stage':42s} {'this run':>12s} {'other':>12s}  {'unit':12s} {'speed-up':>9s}")
        for k in ["sgemm"] * ("sgemm" in mine and "sgemm" in theirs) + common:
            m, o = mine[k], theirs[k]
            ratios[(box, k)] = r = speedup(m, o)
            note = "" if m["shape"] == o["shape"] else "  (other sizes: " + ", ".join(
                f"{a}={o['shape'].get(a)}" for a in m["shape"] if m["shape"].get(a) != o["shape"].get(a)) + ")"
            print(f"  {m['stage']:42s} {m['value']:12.4g} {o['value']:12.4g}  {m['unit']:12s} {r:8.1f}x{note}")
    return ratios


def _verdict(value, target):
    return "met" if value >= target else "NOT met"


def print_targets(res, ratios):
    """The issue's targets, where this run has the figures."""
    lines = []
    figs = res.figures(256)
    for k in figs:
        if k.endswith("_estep") and (256, k) in ratios:
            r = ratios[(256, k)]
            lines.append(f"E/M-step at box 256, {figs[k]['stage']}: {r:.1f}x the baseline "
                         f"(target >= {TARGET_ESTEP_SPEEDUP_256:g}x): {_verdict(r, TARGET_ESTEP_SPEEDUP_256)}")
    if (256, "nu_filter") in ratios:
        r = ratios[(256, "nu_filter")]
        lines.append(f"NU regularization at 256³: {r:.1f}x the baseline (target >= {TARGET_NU_SPEEDUP_256:g}x): "
                     f"{_verdict(r, TARGET_NU_SPEEDUP_256)}")
    if res.data["machine"]["device"] == "gpu":
        for box in sorted(res.data["figures"], key=lambda b: int(b) if b.isdigit() else 0):
            f = res.data["figures"][box]
            if "sgemm" not in f:
                continue
            for k, v in f.items():
                if k.startswith("scoring_gemm_") or (k.startswith("scoring_r")):
                    pct = 100 * v["value"] / f["sgemm"]["value"]
                    lines.append(f"box {box}, {v['stage']}: {pct:.0f} % of the card's sgemm rate (target >= "
                                 f"{TARGET_GEMM_PERCENT:g} %): {_verdict(pct, TARGET_GEMM_PERCENT)}")
    if lines:
        print("\ntargets")
        for line in lines:
            print("  " + line)


ROW_COLUMNS = (("sgemm", "sgemm GFLOP/s"), ("projection", "projection slices/s"),
               ("scoring_r16", "score_poses r16 GFLOP/s"), ("scoring_r32", "score_poses r32 GFLOP/s"),
               ("scoring_gemm_r16", "cross GEMM r16 GFLOP/s"), ("scoring_gemm_r32", "cross GEMM r32 GFLOP/s"),
               ("insertion", "insertion images/s"),
               ("nu_filter", "NU filter s"), ("iter1_global_estep", "it. 1 global E/M particles/s"),
               ("iter1_global", "it. 1 global whole particles/s"), ("iter2_local_estep", "it. 2 local E/M particles/s"),
               ("iter2_local", "it. 2 local whole particles/s"))


def markdown_rows(data):
    """RESULTS.md table rows (one per box) of a ``--json`` file: date, commit, machine, figures."""
    m = data["machine"]
    where = (f"{m['gpu_name']} ({m.get('gpu_memory_gib', '?')} GiB), cupy {m.get('cupy')}" if m.get("gpu_name")
             else f"{m['cpu_model']}, {m['threads']} of {m['cpu_count']} cores")
    kind = "smoke (--quick)" if m.get("quick") else "full"
    head = ["date", "commit", "machine", "run", "box"] + [c for _, c in ROW_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for box, figs in sorted(data["figures"].items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0):
        cells = [m["date"][:10], m["commit"], where, kind, box]
        for key, _ in ROW_COLUMNS:
            f = figs.get(key)
            cells.append("–" if f is None else f"{f['value']:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------


def open_device(args):
    """The benchmarked Device; exits (status 2) with the reason when it cannot be used."""
    if args.device == "cpu":
        return backend.CPU
    if backend.cuda_simulated():
        print("bench_gpu: NUMBA_ENABLE_CUDASIM is set, so the GPU route would run on numba's CUDA simulator "
              "(numpy arrays, kernels executed thread by thread in Python), far too slow to benchmark. Unset "
              "NUMBA_ENABLE_CUDASIM and run on a machine with a CUDA GPU and cupy, or use --device cpu.",
              file=sys.stderr)
        sys.exit(2)
    try:
        dev = backend.open_gpu(args.gpu_id)
    except InputError as exc:
        print(f"bench_gpu: {exc}", file=sys.stderr)
        sys.exit(2)
    if dev.simulated:  # open_gpu's own simulator switch (same variable, read at import time elsewhere)
        print("bench_gpu: open_gpu returned a simulated CUDA device (numba's CUDA simulator): refusing to "
              "benchmark it", file=sys.stderr)
        sys.exit(2)
    return dev


def set_threads(n):
    import numba

    fourier.set_workers(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--gpu-id", type=int, default=0)
    ap.add_argument("--boxes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--threads", type=int, default=None,
                    help="host threads for FFTs, numba kernels and BLAS (default: all cores)")
    ap.add_argument("--particles", type=int, default=None, help="particles of the refinement stage (default 2000; "
                                                                "200 with --quick)")
    ap.add_argument("--nu-cutoffs", type=int, default=None, help="NU candidate cutoffs (default 50; 10 with --quick)")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run (default all)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (< 1 min on 2 cores at --boxes 32)")
    ap.add_argument("--json", metavar="FILE", help="save the figures, machine, date, commit and versions here")
    ap.add_argument("--compare", metavar="FILE", help="a --json file of an earlier run: print ratios per stage")
    ap.add_argument("--budget-s", type=float, default=0,
                    help="skip the stages that would start after this many seconds (0: no limit)")
    ap.add_argument("--workdir", default=None, help="folder for the simulated particles (default: the system's temp)")
    ap.add_argument("--markdown", metavar="FILE", help="only print the RESULTS.md rows of a --json file, and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        with open(args.markdown) as f:
            print(markdown_rows(json.load(f)))
        return 0
    quick_defaults(args)
    if any(b % 2 or b < 16 for b in args.boxes):
        ap.error("--boxes must be even and at least 16")
    if args.compare and not os.path.isfile(args.compare):
        print(f"bench_gpu: --compare {args.compare}: no such file; no ratios will be printed", flush=True)
        args.compare = None
    args.boxes = sorted(set(args.boxes))
    if args.threads is None:
        args.threads = os.cpu_count() or 1
    set_threads(args.threads)
    dev = open_device(args)
    sz = sizes(args, dev)
    params = {**sz, "boxes": args.boxes, "particles": args.particles, "nu_cutoffs": args.nu_cutoffs,
              "stages": args.stages, "physical_box_ang": PHYSICAL_BOX_ANG, "snr": SNR}
    res = Results(machine_info(dev, args), params, args.json)
    print(f"bench_gpu on {dev!r}: boxes {args.boxes}, {args.threads} host threads{', QUICK' if args.quick else ''}",
          flush=True)
    t0 = time.perf_counter()
    run_stages(args, dev, res, sz, t0)
    res.data["total_seconds"] = time.perf_counter() - t0
    res.save()
    print_tables(res, args.boxes)
    if args.compare:
        print_targets(res, print_comparison(res, args.compare, args.boxes))
    else:
        print_targets(res, {})
    print(f"\ntotal {res.data['total_seconds']:.1f} s" + (f"; figures saved to {args.json}" if args.json else ""))
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
