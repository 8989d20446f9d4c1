"""Scaling of ``nonuniform refine`` on the host: per-stage throughput, time and peak memory against the
number of particles and the box, MPI speed-up, and RELION 3.1 side by side.

    PYTHONPATH=. python benchmarks/bench_scale.py --threads 2 --workdir /scratch/scale --json scale.json
    PYTHONPATH=. python benchmarks/bench_scale.py --quick                  # smoke run of every part, < 2 min
    PYTHONPATH=. python benchmarks/bench_scale.py --parts count --counts 10000 100000 --workdir /scratch/scale
    PYTHONPATH=. python benchmarks/bench_scale.py --markdown scale.json    # its rows for benchmarks/RESULTS.md

Data: protein-phantom particles simulated with the project's own ``nonuniform simulate`` (SNR 0.05,
seed ``--seed``, physical box 192 Å: 1.5 Å/px at box 128; ``--apix`` fixes the pixel size instead),
once per (count, box) into ``WORKDIR/data/`` and reused by later runs with the same ``--workdir``
(``--cleanup`` deletes them at the end). Next to each stack: ``init.mrc`` (the truth low-passed to
30 Å, the start of every refinement) and ``input.star`` (the STAR file without its true poses and
origins, which both programs refine from). Every refinement gets a fresh folder under
``WORKDIR/runs/`` (refine refuses a non-empty one) with its log; those of the stages, count, box
and our RELION-comparison runs are removed once measured unless ``--keep-runs``. Before a simulation the free disk
(the stack is N·box²·4 bytes: 6.5 GB for 100k particles at box 128) and memory (the simulator holds
the stack) are checked; a point that does not fit is skipped with the reason.

Parts (``--parts``, default all):

* ``stages``: ``--particles`` (default 2000) particles at ``--box`` (default 128) in this process: a
  ``Refinement`` (defaults, except one global iteration then local ones) runs ``iterate`` twice,
  iteration 1 with a global and iteration 2 with a local search. Each stage is timed by wrapping the
  functions ``iterate`` reaches, patched where they are looked up: ``estep.global_search`` and
  ``estep.local_search`` (pose search), ``estep._backproject_poses`` (insertion, all poses with their
  posterior weights), ``Refinement._e_and_m_step`` (the E/M-step: the remainder is image reading,
  FFTs, CTFs and the noise model), ``Refinement._regularize`` (regularization of both half-sets:
  reconstruction of the two folds, NU filter, the half-set's own FSC) and ``refine.nu_filter`` inside
  it; "rest" is the half-map reconstructions, masks and gold-standard FSC. Seconds, share of the
  iteration and particles/s per stage.
* ``count``: one ``nonuniform refine --iterations 1`` child process per count of ``--counts``
  (default 1k 2k 5k 10k 20k 50k 100k) at ``--box``. Iteration seconds from the run's
  ``summary.json`` (``history[0]["seconds"]``, i.e. without start-up and outputs), the child's wall
  time, and its peak resident memory (``/usr/bin/time -v``'s "Maximum resident set size", or the
  child's own rusage from ``os.wait4`` when GNU time is absent), relative to the smallest count:
  the issue's target is RSS at 100k within 10 % of RSS at 10k. ``--rss-search coarse`` makes these
  runs cheaper with refine options the command line has (``--initial-lowpass-ang 60``: a 20° search
  up to fewer Fourier pixels, and ``--nu-cutoffs 10``); the images are still all read, searched and
  inserted, and nothing that grows with the count changes, but the seconds are then not those of a
  default iteration (the table says which). Default ``full``.
* ``box``: the same at every box of ``--boxes`` (default 64 96 128 192 256) with ``--particles``
  particles (full search). With the default fixed physical box the first iteration's search radius
  in Fourier pixels is the same at every box (30 Å start); what grows is the FFTs, the insertion,
  the reconstructions and the NU filter.
* ``mpi``: ``MPIEXEC -n K python -m nonuniform.engine --threads 1 refine --iterations N --batch B``
  for K in ``--ranks`` (default 1 2), N = ``--mpi-iterations`` (default 2), B = ``--batch``
  (default 64: 2000 particles give 16 batches per half-set, 8 per rank at K = 2), with
  ``OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS=1`` per rank. MPIEXEC is ``--mpiexec``, default the
  ``mpiexec`` next to this Python (the mpich wheel's, matching mpi4py) or on PATH. Per-iteration
  seconds (summary.json; rank 0's clock), speed-up against the first K (target >= 1.6x at K = 2 on 2
  cores), and whether every run's ``particles.star`` poses equal the first run's (yes/no, else the
  largest differences).
* ``relion``: ``relion_refine_mpi`` (skipped with a message when it or Open MPI's ``mpirun`` is
  absent) on the same ``input.star`` and ``init.mrc`` as ours. RELION refuses
  ``--split_random_halves`` without MPI, so the single-process ``relion_refine --j 2`` is not an
  option: it runs ``mpirun --oversubscribe -np 3 relion_refine_mpi --j 1`` (a leader that hands out
  work and two workers, one per half-set: two busy processes on two cores, like our ``--threads 2``;
  the leader busy-waits, so it is reniced to ``--relion-leader-nice``, default 10, fairer to RELION),
  inside the data folder (RELION resolves image names against its working directory), with
  ``--auto_refine --split_random_halves --ctf --firstiter_cc --particle_diameter D --ini_high 30
  --healpix_order 2 --offset_range 5 --offset_step 2 --sym C1 --low_resol_join_halves 40 --norm
  --scale --pool 30 --dont_combine_weights_via_disc --oversampling 1 --pad 2 --flatten_solvent
  --zero_mask --random_seed 1`` (D = 0.8 x box x pixel size, also given to ours; ``--firstiter_cc``
  because our first iteration scores by cross-correlation too). Auto-refine has no iteration limit:
  the run is stopped once ``run_itNNN_optimiser.star`` of iteration N = ``--relion-iterations``
  (default 2) exists, each iteration timed from the modification times of those files (iteration 0,
  RELION's start-up pass over the images, from the launch), or by ``--relion-timeout`` (then the
  finished iterations count). Ours: ``nonuniform --threads T refine --iterations N`` on the same
  input. Seconds per iteration of each, and RELION's over ours.

Prints a table per part. ``--json FILE`` keeps every figure with the machine (CPU model, cores, RAM,
load average at start and end), date and ``git rev-parse --short HEAD``, rewritten after every point
so a killed run keeps what it measured; ``--markdown FILE.json`` prints its rows for
``benchmarks/RESULTS.md`` (no figure typed by hand). ``--quick`` shrinks everything (box 32, 200
particles, counts 200 400, boxes 32 48, one iteration, RELION one iteration within 100 s): a smoke
run, not a measurement. Exit status 1 when a point failed (its error and log tail are printed, the
other points still run), 2 on bad options.

Run it on an idle machine: the load average is recorded, and a warning printed when it is above 0.5.
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
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from bench_gpu import _run, cpu_model, set_threads  # noqa: E402
from nonuniform.engine import filters, geometry, io  # noqa: E402

PARTS = ("stages", "count", "box", "mpi", "relion")
PHYSICAL_BOX_ANG = 192.0  # default: the same particle at every box (1.5 Å/px at box 128)
SNR = 0.05
INITIAL_LOWPASS_ANG = 30.0
POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                "rlnOriginX", "rlnOriginY")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
# --rss-search coarse: refine options that cheapen the iteration without changing what grows with the count.
COARSE_SEARCH_ARGS = ("--initial-lowpass-ang", "60", "--nu-cutoffs", "10")
TARGET_RSS_RATIO = 1.10  # RSS at 100k within 10 % of RSS at 10k
TARGET_MPI_SPEEDUP_2 = 1.6  # K = 2 ranks on 2 cores
DATASET_MARKER = "bench_scale_data.json"


class Skip(Exception):
    """A point that cannot run here (not enough disk or memory, a program missing): reported, not failed."""


class ChildFailed(Exception):
    """A child process ended with a non-zero status; the message holds its log's tail."""


# ------------------------------------------------------------------------------------------------
# Machine description


def meminfo_bytes(key):
    """A /proc/meminfo figure (``MemTotal``, ``MemAvailable``) in bytes, or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(args):
    import numba

    total = meminfo_bytes("MemTotal")
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "commit": _run(["git", "rev-parse", "--short", "HEAD"]) or "unknown",
            "hostname": platform.node(), "python": platform.python_version(),
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "ram_gib": None if total is None else round(total / 2 ** 30, 1),
            "threads": args.threads, "numpy": np.__version__, "numba": numba.__version__,
            "load_average_start": load_average(), "quick": bool(args.quick)}


# ------------------------------------------------------------------------------------------------
# Results


class Results:
    """Every figure, saved to ``--json`` after each point so that a killed run keeps what it measured."""

    def __init__(self, info, params, json_path):
        self.data = {"machine": info, "params": params, "stages": {}, "count": [], "box": [], "mpi": [],
                     "relion": {}, "errors": {}, "skipped": {}}
        self.json_path = json_path
        self.failed = False

    def error(self, where, exc):
        self.failed = True
        msg = str(exc) if isinstance(exc, ChildFailed) else f"{type(exc).__name__}: {exc}"
        self.data["errors"][where] = msg
        print(f"  {where}: FAILED\n    " + msg.replace("\n", "\n    "), flush=True)
        if not isinstance(exc, ChildFailed):
            traceback.print_exc()
        self.save()

    def skip(self, where, why):
        self.data["skipped"][where] = why
        print(f"  {where}: skipped ({why})", flush=True)
        self.save()

    def save(self):
        if not self.json_path:
            return
        tmp = self.json_path + ".tmp"
        os.makedirs(os.path.dirname(os.path.abspath(self.json_path)), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.json_path)


def guarded(res, where, fn):
    """Run one point: a Skip is reported, an error recorded (the other points still run)."""
    try:
        return fn()
    except Skip as exc:
        res.skip(where, str(exc))
    except Exception as exc:  # noqa: BLE001 - recorded and reported; the exit status says it failed
        res.error(where, exc)
    return None


# ------------------------------------------------------------------------------------------------
# Data sets


def pixel_size(args, box):
    return args.apix if args.apix else PHYSICAL_BOX_ANG / box


def diameter_ang(box, apix):
    """The particle diameter given to both programs: refine's default, 0.8 x the box."""
    return round(0.8 * box * apix, 1)


def _gb(nbytes):
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


def child_env(threads=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if threads is not None:
        for var in THREAD_VARIABLES:
            env[var] = str(threads)
    return env


def engine_cmd(threads, *args):
    return [sys.executable, "-m", "nonuniform.engine", "--threads", str(threads)] + [str(a) for a in args]


def dataset(args, n, box):
    """The simulated set of ``n`` particles at ``box`` in the work folder (simulated now unless a complete
    one is there): a dict with its paths and parameters. Skip when disk or memory is short."""
    apix = pixel_size(args, box)
    name = f"n{n}_box{box}_apix{apix:.4g}_snr{SNR:g}_seed{args.seed}"
    folder = os.path.join(args.workdir, "data", name)
    marker = os.path.join(folder, DATASET_MARKER)
    if os.path.isfile(marker):
        with open(marker) as f:
            return json.load(f)
    if os.path.isdir(folder):  # an interrupted simulation: start it again
        shutil.rmtree(folder)
    stack_bytes = n * box * box * 4
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    need_disk = 1.05 * stack_bytes + n * 400 + 256e6  # stack, STAR files, maps, a margin
    free = shutil.disk_usage(os.path.dirname(folder)).free
    if free < need_disk:
        raise Skip(f"simulating {n} particles at box {box} needs about {_gb(need_disk)} of disk, "
                   f"{_gb(free)} free under {args.workdir}")
    avail = meminfo_bytes("MemAvailable")
    need_mem = 1.3 * stack_bytes + 1e9  # the simulator holds the whole stack
    if avail is not None and avail < need_mem:
        raise Skip(f"simulating {n} particles at box {box} needs about {_gb(need_mem)} of memory, "
                   f"{_gb(avail)} available")
    t = time.perf_counter()
    cmd = engine_cmd(args.threads, "simulate", "--out", folder, "--n-particles", n, "--box", box,
                     "--pixel-size", f"{apix:.6g}", "--snr", SNR, "--seed", args.seed, "--phantom", "protein")
    log = folder + ".simulate.log"
    rc, _, _, _ = run_child(cmd, log, child_env(args.threads))
    if rc:
        raise ChildFailed(f"simulate failed (rc {rc}): {' '.join(map(shlex.quote, cmd))}\n{tail(log)}")
    os.remove(log)
    truth, apix_read = io.read_mrc(os.path.join(folder, "truth.mrc"))
    init = os.path.join(folder, "init.mrc")
    io.write_mrc(init, filters.lowpass_cosine(truth, apix_read, INITIAL_LOWPASS_ANG).astype(np.float32), apix_read)
    blocks = io.read_star(os.path.join(folder, "particles.star"))
    for col in POSE_COLUMNS:
        blocks["particles"].pop(col, None)
    io.write_star(os.path.join(folder, "input.star"), blocks)
    meta = {"n": n, "box": box, "apix": apix, "snr": SNR, "seed": args.seed, "folder": folder,
            "input_star": os.path.join(folder, "input.star"), "init": init,
            "diameter_ang": diameter_ang(box, apix), "stack_bytes": stack_bytes,
            "simulate_seconds": round(time.perf_counter() - t, 1)}
    io.write_json(marker, meta)
    print(f"  simulated {n} particles at box {box} ({apix:.4g} Å/px, {_gb(stack_bytes)}) in "
          f"{meta['simulate_seconds']:.0f} s -> {folder}", flush=True)
    return meta


def fresh_run_dir(args, tag):
    """A new, empty folder for one run and its log (refine refuses a non-empty output folder)."""
    parent = os.path.join(args.workdir, "runs")
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=tag + "_", dir=parent)


# ------------------------------------------------------------------------------------------------
# Child processes


GNU_TIME = "/usr/bin/time"


def _gnu_time_usable():
    if not os.access(GNU_TIME, os.X_OK):
        return False
    try:
        p = subprocess.run([GNU_TIME, "-v", "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return "Maximum resident set size" in p.stderr


_USE_GNU_TIME = None


def run_child(cmd, log_path, env, cwd=None, timeout=None, stop_when=None, on_poll=None):
    """Run ``cmd`` (output to ``log_path``) in its own process group: (rc, wall s, peak RSS MB, RSS source).

    The peak resident set size is that of the child process: GNU time's "Maximum resident set size"
    when ``/usr/bin/time -v`` works here, else the child's own rusage (``os.wait4``). ``stop_when()``
    (polled about every second) or ``timeout`` seconds end the process group (SIGTERM, then SIGKILL):
    rc is then -SIGTERM / -SIGKILL. ``on_poll(pid)`` is called at every poll.
    """
    global _USE_GNU_TIME
    if _USE_GNU_TIME is None:
        _USE_GNU_TIME = _gnu_time_usable()
    time_file = None
    full = list(cmd)
    if _USE_GNU_TIME:
        fd, time_file = tempfile.mkstemp(prefix="bench_scale_time_", suffix=".txt")
        os.close(fd)
        full = [GNU_TIME, "-v", "-o", time_file] + full
    t0 = time.perf_counter()
    with open(log_path, "a") as log:
        log.write("# " + " ".join(shlex.quote(c) for c in cmd) + f"\n# cwd: {cwd or os.getcwd()}\n")
        log.flush()
        proc = subprocess.Popen(full, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        status, usage, stopped = None, None, False
        next_poll = 0.0
        while True:
            pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                status, usage = st, ru
                break
            now = time.perf_counter()
            if not stopped and ((timeout and now - t0 > timeout) or (stop_when is not None and now >= next_poll
                                                                     and stop_when())):
                _end_group(proc.pid)
                stopped = True
            if on_poll is not None and now >= next_poll:
                on_poll(proc.pid)
            if now >= next_poll:
                next_poll = now + 1.0
            time.sleep(0.1)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    rss_mb, source = usage.ru_maxrss / 1024.0, "os.wait4"
    if time_file is not None:
        with open(time_file) as f:
            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", f.read())
        os.remove(time_file)
        if m:
            rss_mb, source = int(m.group(1)) / 1024.0, "/usr/bin/time -v"
    rc = proc.returncode
    if _USE_GNU_TIME and rc > 128 and stopped:  # GNU time reports a signalled child as 128 + signal
        rc = -(rc - 128)
    return rc, wall, rss_mb, source


def _signal_group(pgid, sig):
    """Send ``sig`` to the process group ``pgid`` (one this script started): False when it is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _end_group(pgid):
    """SIGTERM to the group, SIGKILL 3 s later if any of it is left (RELION's ranks outlive a SIGTERM)."""
    if not _signal_group(pgid, signal.SIGTERM):
        return
    for _ in range(30):
        time.sleep(0.1)
        if not _signal_group(pgid, 0):
            return
    _signal_group(pgid, signal.SIGKILL)


def tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError:
        return f"(no log at {path})"


def refine_child(args, ds, tag, iterations, threads, extra=(), launcher=(), env=None):
    """One ``nonuniform refine`` child on the data set ``ds``: its summary.json, wall s, peak RSS MB and run folder."""
    run = fresh_run_dir(args, tag)
    out = os.path.join(run, "out")
    log = os.path.join(run, "refine.log")
    cmd = list(launcher) + engine_cmd(threads, "refine", "--particles", ds["input_star"], "--ref", ds["init"],
                                      "--out", out, "--iterations", iterations, "--diameter-ang",
                                      f"{ds['diameter_ang']:g}", "--initial-lowpass-ang", f"{INITIAL_LOWPASS_ANG:g}",
                                      "--seed", args.seed, *extra)
    # Later options win with argparse: a coarse search's --initial-lowpass-ang overrides the one above.
    rc, wall, rss, source = run_child(cmd, log, env or child_env(threads))
    if rc:
        raise ChildFailed(f"refine failed (rc {rc}): {' '.join(map(shlex.quote, cmd))}\nlog {log}:\n{tail(log)}")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return {"summary": summary, "wall_s": wall, "rss_mb": rss, "rss_source": source, "run": run, "out": out,
            "command": cmd}


# ------------------------------------------------------------------------------------------------
# Part 1: per-stage throughput inside Refinement.iterate


class StageClock:
    """Seconds spent in wrapped functions, per stage name, since the last reset (nesting allowed)."""

    def __init__(self):
        self.seconds = {}

    def reset(self):
        self.seconds = {}

    def wrap(self, name, fn):
        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
        return timed


def part_stages(args, res):
    from nonuniform.engine import estep, refine
    from nonuniform.engine.refine import RefineConfig, Refinement

    ds = dataset(args, args.particles, args.box)
    n = ds["n"]
    set_threads(args.threads)
    cfg = RefineConfig(seed=args.seed, min_global_iterations=1, max_global_iterations=1,
                       initial_lowpass_ang=INITIAL_LOWPASS_ANG, diameter_ang=ds["diameter_ang"])
    run = fresh_run_dir(args, "stages")
    ref = Refinement(ds["input_star"], ds["init"], os.path.join(run, "out"), cfg)
    clock = StageClock()
    patched = [(estep, "global_search"), (estep, "local_search"), (estep, "_backproject_poses"),
               (refine, "nu_filter")]
    names = {"global_search": "search", "local_search": "search", "_backproject_poses": "insertion",
             "nu_filter": "nu_filter"}
    saved = [(mod, attr, getattr(mod, attr)) for mod, attr in patched]
    try:
        for mod, attr, fn in saved:
            setattr(mod, attr, clock.wrap(names[attr], fn))
        ref._e_and_m_step = clock.wrap("em", ref._e_and_m_step)
        ref._regularize = clock.wrap("regularize", ref._regularize)
        st = ref._initial_state()
        out = {"n": n, "box": ds["box"], "apix": ds["apix"], "threads": args.threads, "iterations": []}
        for _ in range(2):
            clock.reset()
            t = time.perf_counter()
            st, _ = ref.iterate(st)
            whole = time.perf_counter() - t
            s = clock.seconds
            last = st.history[-1]
            em, search, ins = s.get("em", 0.0), s.get("search", 0.0), s.get("insertion", 0.0)
            reg = s.get("regularize", 0.0)
            stages = [("pose search", search), ("insertion (backprojection)", ins),
                      ("rest of E/M-step (reading, FFTs, CTFs, noise)", em - search - ins),
                      ("regularization (2 half-sets)", reg), ("  of which NU filter", s.get("nu_filter", 0.0)),
                      ("rest (half-maps, masks, FSC)", whole - em - reg), ("whole iteration", whole)]
            out["iterations"].append({
                "iteration": last["iteration"], "search": last["search"], "step_deg": last["angular_step_deg"],
                "r_max_px": last["search_r_max_px"], "poses_per_particle": last["poses_per_particle"],
                "resolution_ang": last["resolution_ang"],
                "stages": [{"stage": name, "seconds": sec} for name, sec in stages]})
            res.data["stages"] = out
            res.save()
            print(f"  iteration {last['iteration']} ({last['search']}): {whole:.1f} s", flush=True)
    finally:
        for mod, attr, fn in saved:
            setattr(mod, attr, fn)
        shutil.rmtree(run, ignore_errors=True)


def print_stages(data):
    if not data:
        return
    print(f"\nper-stage throughput: {data['n']} particles, box {data['box']} ({data['apix']:.4g} Å/px), "
          f"{data['threads']} threads, in one process")
    for it in data["iterations"]:
        whole = it["stages"][-1]["seconds"]
        print(f"\n  iteration {it['iteration']} ({it['search']} search, {it['step_deg']:.3g}° step, r_max "
              f"{it['r_max_px']:.1f} px, {it['poses_per_particle']:.1f} poses/particle inserted, "
              f"{it['resolution_ang']:.1f} Å after)")
        print(f"  {'stage':48s} {'s':>9s} {'% of it.':>9s} {'particles/s':>12s}")
        for row in it["stages"]:
            sec = row["seconds"]
            rate = data["n"] / sec if sec > 0 else float("nan")
            print(f"  {row['stage']:48s} {sec:9.2f} {100 * sec / whole:8.1f}% {rate:12.1f}")


# ------------------------------------------------------------------------------------------------
# Part 2: whole iteration against the particle count and the box


def sweep_point(args, res, key, n, box, extra, search):
    ds = dataset(args, n, box)
    r = refine_child(args, ds, f"{key}_n{n}_box{box}", 1, args.threads, extra=extra)
    h = r["summary"]["history"][0]
    row = {"n": n, "box": box, "apix": ds["apix"], "seconds": h["seconds"], "wall_s": r["wall_s"],
           "rss_mb": r["rss_mb"], "rss_source": r["rss_source"], "search": search,
           "search_kind": h["search"], "step_deg": h["angular_step_deg"], "r_max_px": h["search_r_max_px"],
           "threads": args.threads}
    res.data[key].append(row)
    res.save()
    print(f"  {n} particles, box {box}: iteration {h['seconds']:.1f} s ({n / h['seconds']:.1f} particles/s), child "
          f"wall {r['wall_s']:.1f} s, peak RSS {r['rss_mb']:.0f} MB", flush=True)
    if not args.keep_runs:
        shutil.rmtree(r["run"], ignore_errors=True)


def part_count(args, res):
    extra = COARSE_SEARCH_ARGS if args.rss_search == "coarse" else ()
    for n in args.counts:
        guarded(res, f"count {n} (box {args.box})", lambda: sweep_point(args, res, "count", n, args.box, extra,
                                                                          args.rss_search))


def part_box(args, res):
    for box in args.boxes:
        guarded(res, f"box {box} ({args.particles} particles)",
                lambda: sweep_point(args, res, "box", args.particles, box, (), "full"))


def print_sweep(rows, key):
    if not rows:
        return
    what = "particle count" if key == "count" else "box"
    base = rows[0]
    searches = sorted({r["search"] for r in rows})
    print(f"\nwhole iteration 1 against the {what} (one `refine --iterations 1` child per point, "
          f"{base['threads']} threads, {'/'.join(searches)} search; RSS source: {base['rss_source']})")
    print(f"  {'particles':>9s} {'box':>5s} {'Å/px':>6s} {'iteration s':>11s} {'particles/s':>11s} "
          f"{'child wall s':>12s} {'peak RSS MB':>11s} {'RSS / first':>11s}")
    for r in rows:
        print(f"  {r['n']:9d} {r['box']:5d} {r['apix']:6.3g} {r['seconds']:11.1f} {r['n'] / r['seconds']:11.1f} "
              f"{r['wall_s']:12.1f} {r['rss_mb']:11.0f} {r['rss_mb'] / base['rss_mb']:10.3f}x")
    if key == "count":
        by_n = {r["n"]: r for r in rows}
        if 10000 in by_n and 100000 in by_n:
            ratio = by_n[100000]["rss_mb"] / by_n[10000]["rss_mb"]
            verdict = "met" if ratio <= TARGET_RSS_RATIO else "NOT met"
            print(f"  target: peak RSS at 100k / at 10k = {ratio:.3f} (<= {TARGET_RSS_RATIO:.2f}): {verdict}")
        else:
            print("  target (peak RSS at 100k within 10 % of 10k): needs both counts in --counts")


# ------------------------------------------------------------------------------------------------
# Part 3: MPI speed-up


def find_mpiexec(args):
    if args.mpiexec:
        path = shutil.which(args.mpiexec)
        if not path:
            raise Skip(f"--mpiexec {args.mpiexec}: not found")
        return path
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(local, os.X_OK):
        return local
    path = shutil.which("mpiexec")
    if not path:
        raise Skip("no mpiexec next to this Python nor on PATH (install the mpi extra: pip install "
                   "'scipion-em-nonuniform[mpi]', or give --mpiexec)")
    return path


def read_poses(star):
    """(rotation matrices (n, 3, 3), origins (n, 2) Å, raw pose columns) of a refine ``particles.star``."""
    t = io.read_star(star)["particles"]
    rot = geometry.euler_to_matrix(np.asarray(t["rlnAngleRot"], float), np.asarray(t["rlnAngleTilt"], float),
                                   np.asarray(t["rlnAnglePsi"], float))
    origin = np.stack([np.asarray(t["rlnOriginXAngst"], float), np.asarray(t["rlnOriginYAngst"], float)], 1)
    cols = {c: np.asarray(t[c]) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                                          "rlnOriginYAngst")}
    return rot, origin, cols


def compare_poses(star_a, star_b):
    ra, oa, ca = read_poses(star_a)
    rb, ob, cb = read_poses(star_b)
    if len(ra) != len(rb):
        return {"identical": False, "note": f"{len(ra)} against {len(rb)} particles"}
    same = np.ones(len(ra), bool)
    for c in ca:
        same &= ca[c] == cb[c]
    return {"identical": bool(same.all()), "particles_differing": int((~same).sum()),
            "max_rotation_deg": float(geometry.angular_distance_deg(ra, rb).max()),
            "max_origin_ang": float(np.abs(oa - ob).max())}


def part_mpi(args, res):
    mpiexec = find_mpiexec(args)
    if max(args.ranks) > 1:
        try:
            import mpi4py  # noqa: F401
        except ImportError:
            raise Skip(f"mpi4py is not importable by {sys.executable} (install the mpi extra)") from None
    ds = dataset(args, args.particles, args.box)
    per_half = ds["n"] // 2
    n_batches = -(-per_half // args.batch)
    env = child_env(1)
    first = None
    for k in args.ranks:
        def point(k=k):
            nonlocal first
            if n_batches < 2 * k:
                print(f"  note: {n_batches} batches of {args.batch} per half-set leave fewer than 2 per rank at K = {k}"
                      " (--batch smaller)", flush=True)
            r = refine_child(args, ds, f"mpi_k{k}", args.mpi_iterations, 1, extra=("--batch", args.batch),
                             launcher=(mpiexec, "-n", str(k)), env=env)
            hist = r["summary"]["history"]
            row = {"ranks": k, "n": ds["n"], "box": ds["box"], "batch": args.batch, "iterations":
                   [{"iteration": h["iteration"], "search": h["search"], "seconds": h["seconds"]} for h in hist],
                   "seconds": sum(h["seconds"] for h in hist), "wall_s": r["wall_s"], "mpiexec": mpiexec,
                   "batches_per_half": n_batches}
            star = os.path.join(r["out"], "particles.star")
            if first is None:
                first = (k, star)
                row["poses_vs"] = None
            else:
                row["poses_vs"] = {"ranks": first[0], **compare_poses(first[1], star)}
            res.data["mpi"].append(row)
            res.save()
            print(f"  K = {k}: {row['seconds']:.1f} s over {len(hist)} iteration(s), child wall {r['wall_s']:.1f} s",
                  flush=True)
        guarded(res, f"mpi K = {k}", point)


def print_mpi(rows):
    if not rows:
        return
    base = rows[0]
    print(f"\nMPI speed-up: {base['n']} particles, box {base['box']}, --batch {base['batch']} "
          f"({base['batches_per_half']} batches per half-set), --threads 1 and 1 BLAS/numba thread per rank "
          f"({base['mpiexec']})")
    n_it = max(len(r["iterations"]) for r in rows)
    head = "".join(f" {'it. ' + str(i + 1) + ' s':>9s}" for i in range(n_it))
    print(f"  {'K':>3s}{head} {'total s':>9s} {'speed-up':>9s} {'child wall s':>12s}  poses identical to first K")
    for r in rows:
        its = "".join(f" {it['seconds']:9.1f}" for it in r["iterations"]) + " " * 10 * (n_it - len(r["iterations"]))
        sp = base["seconds"] / r["seconds"]
        pv = r["poses_vs"]
        if pv is None:
            same = "(reference)"
        elif pv.get("identical"):
            same = f"yes (vs K = {pv['ranks']})"
        else:
            same = (f"no (vs K = {pv['ranks']}: {pv.get('particles_differing', '?')} particles differ, max "
                    f"{pv.get('max_rotation_deg', float('nan')):.3g}°, {pv.get('max_origin_ang', float('nan')):.3g} Å)"
                    if "max_rotation_deg" in pv else f"no ({pv.get('note')})")
        print(f"  {r['ranks']:3d}{its} {r['seconds']:9.1f} {sp:8.2f}x {r['wall_s']:12.1f}  {same}")
    for i, r in enumerate(rows):
        if r["ranks"] == 2 and base["ranks"] == 1:
            sp = base["seconds"] / r["seconds"]
            print(f"  target: K = 2 speed-up {sp:.2f}x (>= {TARGET_MPI_SPEEDUP_2:g}x on 2 cores): "
                  f"{'met' if sp >= TARGET_MPI_SPEEDUP_2 else 'NOT met'}")


# ------------------------------------------------------------------------------------------------
# Part 4: RELION side by side


def relion_args(ds, out_prefix, seed=1):
    return ["--i", "input.star", "--ref", "init.mrc", "--o", out_prefix,
            "--auto_refine", "--split_random_halves", "--ctf", "--firstiter_cc",
            "--particle_diameter", f"{ds['diameter_ang']:g}", "--ini_high", f"{INITIAL_LOWPASS_ANG:g}",
            "--healpix_order", "2", "--offset_range", "5", "--offset_step", "2", "--sym", "C1",
            "--low_resol_join_halves", "40", "--norm", "--scale", "--pool", "30",
            "--dont_combine_weights_via_disc", "--oversampling", "1", "--pad", "2", "--flatten_solvent",
            "--zero_mask", "--random_seed", str(seed)]


def _children(pid):
    """Process ids whose parent is ``pid`` (from /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and fields[1] == str(pid):
            kids.append(int(entry))
    return kids


def _descendants(pid):
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


class LeaderRenice:
    """Renice RELION's MPI rank 0 (the leader, which busy-waits) once it has started: only processes
    of the run's own process tree are looked at."""

    def __init__(self, nice):
        self.nice, self.done, self.pid = nice, not nice, None

    def __call__(self, root_pid):
        if self.done:
            return
        for pid in _descendants(root_pid):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read().split(b"\0")
                with open(f"/proc/{pid}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if b"OMPI_COMM_WORLD_RANK=0" in env and comm.startswith("relion_refine"):
                try:
                    os.setpriority(os.PRIO_PROCESS, pid, self.nice)
                    self.pid, self.done = pid, True
                except OSError:
                    pass
                return


def part_relion(args, res):
    relion = shutil.which("relion_refine_mpi")
    mpirun = shutil.which("mpirun")
    if not relion:
        raise Skip("relion_refine_mpi is not on PATH")
    if not mpirun:
        raise Skip("mpirun (Open MPI) is not on PATH")
    ds = dataset(args, args.particles, args.box)
    n_it = args.relion_iterations
    run = fresh_run_dir(args, "relion")
    prefix = os.path.join(run, "run")
    cmd = [mpirun, "--oversubscribe", "-np", str(args.relion_ranks), relion] + relion_args(ds, prefix) + \
        ["--j", str(args.relion_j)]
    env = child_env(args.relion_j)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    target = f"{prefix}_it{n_it:03d}_optimiser.star"

    def finished():
        return os.path.isfile(target) and time.time() - os.path.getmtime(target) > 1.0

    renice = LeaderRenice(args.relion_leader_nice)
    launch = time.time()
    print(f"  RELION: {' '.join(shlex.quote(c) for c in cmd)}  (cwd {ds['folder']})", flush=True)
    rc, wall, _, _ = run_child(cmd, os.path.join(run, "relion.log"), env, cwd=ds["folder"],
                               timeout=args.relion_timeout or None, stop_when=finished, on_poll=renice)
    ends = {}
    for i in range(n_it + 1):
        p = f"{prefix}_it{i:03d}_optimiser.star"
        if os.path.isfile(p):
            ends[i] = os.path.getmtime(p)
    if 0 not in ends:
        raise ChildFailed(f"RELION wrote no iteration (rc {rc}, {wall:.0f} s): {' '.join(map(shlex.quote, cmd))}\n"
                          f"log {run}/relion.log:\n{tail(os.path.join(run, 'relion.log'))}")
    done = max(i for i in range(n_it + 1) if all(j in ends for j in range(i + 1)))
    relion_its = [ends[i] - ends[i - 1] for i in range(1, done + 1)]
    out = {"n": ds["n"], "box": ds["box"], "apix": ds["apix"], "iterations_asked": n_it,
           "relion": {"command": cmd, "cwd": ds["folder"], "startup_s": ends[0] - launch, "iterations_s": relion_its,
                      "wall_s": wall, "stopped_by": "timeout" if done < n_it else "iteration reached",
                      "leader_reniced": renice.pid is not None, "leader_nice": args.relion_leader_nice,
                      "ranks": args.relion_ranks, "j": args.relion_j}}
    res.data["relion"] = out
    res.save()
    print(f"  RELION: start-up {ends[0] - launch:.1f} s, iterations " + ", ".join(f"{s:.1f}" for s in relion_its)
          + f" s{' (timeout: ' + str(done) + ' of ' + str(n_it) + ' finished)' if done < n_it else ''}", flush=True)
    if done == 0:
        raise ChildFailed(f"RELION finished no iteration within --relion-timeout {args.relion_timeout} s")
    r = refine_child(args, ds, "ours_vs_relion", done, args.threads)
    hist = r["summary"]["history"]
    out["ours"] = {"command": r["command"], "threads": args.threads, "iterations_s": [h["seconds"] for h in hist],
                   "searches": [h["search"] for h in hist], "wall_s": r["wall_s"],
                   "startup_and_outputs_s": r["wall_s"] - sum(h["seconds"] for h in hist)}
    res.save()
    print(f"  ours: iterations " + ", ".join(f"{h['seconds']:.1f}" for h in hist) + " s", flush=True)
    if not args.keep_runs:
        shutil.rmtree(r["run"], ignore_errors=True)


def print_relion(data):
    if not data or "ours" not in data:
        return
    rl, ours = data["relion"], data["ours"]
    print(f"\nRELION side by side: {data['n']} particles, box {data['box']} ({data['apix']:.4g} Å/px); RELION: "
          f"mpirun -np {rl['ranks']} relion_refine_mpi --j {rl['j']} (leader "
          f"{'reniced to ' + str(rl['leader_nice']) if rl['leader_reniced'] else 'not reniced'}); ours: one process, "
          f"--threads {ours['threads']}")
    print(f"  {'':28s} {'RELION s':>9s} {'ours s':>9s} {'RELION / ours':>13s}")
    print(f"  {'start-up (RELION: it. 0)':28s} {rl['startup_s']:9.1f} {ours['startup_and_outputs_s']:9.1f} "
          f"{'':>13s}   (ours: start-up + outputs)")
    for i, (a, b) in enumerate(zip(rl["iterations_s"], ours["iterations_s"]), 1):
        label = f"iteration {i} (ours: {ours['searches'][i - 1]})"
        print(f"  {label:28s} {a:9.1f} {b:9.1f} {a / b:12.2f}x")
    a, b = sum(rl["iterations_s"]), sum(ours["iterations_s"])
    print(f"  {'iterations together':28s} {a:9.1f} {b:9.1f} {a / b:12.2f}x")


# ------------------------------------------------------------------------------------------------
# RESULTS.md rows


ROW_HEAD = ("date", "commit", "machine", "run", "part", "point", "s", "particles/s", "peak RSS MB", "ratio", "note")


def _f(x, fmt="{:.3g}"):
    return "–" if x is None else fmt.format(x)


def markdown_rows(data):
    """RESULTS.md table rows of a ``--json`` file: one per measured figure (date, commit, machine first)."""
    m = data["machine"]
    machine = f"{m['cpu_model']}, {m['threads']} of {m['cpu_count']} cores, {m.get('ram_gib')} GiB"
    kind = "smoke (--quick)" if m.get("quick") else "full"
    lines = ["| " + " | ".join(ROW_HEAD) + " |", "|" + "---|" * len(ROW_HEAD)]

    def row(part, point, s=None, rate=None, rss=None, ratio="–", note=""):
        cells = [m["date"][:10], m["commit"], machine, kind, part, point, _f(s), _f(rate), _f(rss, "{:.0f}"),
                 ratio, note]
        lines.append("| " + " | ".join(cells) + " |")

    st = data.get("stages") or {}
    for it in st.get("iterations", []):
        whole = it["stages"][-1]["seconds"]
        for r in it["stages"]:
            row("stages", f"{st['n']} × {st['box']} px, it. {it['iteration']} {it['search']}: {r['stage'].strip()}",
                r["seconds"], st["n"] / r["seconds"] if r["seconds"] > 0 else None,
                ratio=f"{100 * r['seconds'] / whole:.0f} % of it.")
    for key in ("count", "box"):
        rows = data.get(key) or []
        for r in rows:
            row(key, f"{r['n']} × {r['box']} px", r["seconds"], r["n"] / r["seconds"], r["rss_mb"],
                f"{r['rss_mb'] / rows[0]['rss_mb']:.3f} RSS / first", f"{r['search']} search, child wall {r['wall_s']:.0f} s")
    mpi = data.get("mpi") or []
    for r in mpi:
        pv = r.get("poses_vs")
        note = "" if pv is None else ("poses identical" if pv.get("identical") else "poses DIFFER")
        row("mpi", f"K = {r['ranks']}, {r['n']} × {r['box']} px, {len(r['iterations'])} it.", r["seconds"],
            r["n"] * len(r["iterations"]) / r["seconds"], None, f"{mpi[0]['seconds'] / r['seconds']:.2f}× speed-up",
            note)
    rl = data.get("relion") or {}
    if "ours" in rl:
        for i, (a, b) in enumerate(zip(rl["relion"]["iterations_s"], rl["ours"]["iterations_s"]), 1):
            row("relion", f"{rl['n']} × {rl['box']} px, it. {i}: RELION", a, rl["n"] / a)
            row("relion", f"{rl['n']} × {rl['box']} px, it. {i}: ours", b, rl["n"] / b, None, f"{a / b:.2f}× RELION/ours")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default all)")
    ap.add_argument("--threads", type=int, default=None, help="threads of our runs (default: all usable cores); "
                                                              "the MPI part uses 1 per rank")
    ap.add_argument("--workdir", help="simulations (reused) and runs (default: a new temporary folder)")
    ap.add_argument("--cleanup", action="store_true", help="delete the simulations and runs at the end")
    ap.add_argument("--keep-runs", action="store_true", help="keep every refine output folder (default: removed "
                                                             "once measured, except the MPI and RELION runs)")
    ap.add_argument("--box", type=int, help="box of the stages, count, MPI and RELION parts (default 128; 32 "
                                            "with --quick)")
    ap.add_argument("--particles", type=int, help="particles of the stages, box, MPI and RELION parts (default "
                                                  "2000; 200 with --quick)")
    ap.add_argument("--counts", type=int, nargs="+", help="particle counts of the count part (default 1000 2000 "
                                                          "5000 10000 20000 50000 100000; 200 400 with --quick)")
    ap.add_argument("--boxes", type=int, nargs="+", help="boxes of the box part (default 64 96 128 192 256; 32 48 "
                                                         "with --quick)")
    ap.add_argument("--apix", type=float, help="pixel size (Å) at every box (default: 192 Å / box, the same "
                                               "particle at every box)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the simulations and of our refinements")
    ap.add_argument("--rss-search", choices=("full", "coarse"), default="full",
                    help="count part: the default iteration, or a cheaper one through refine's own options "
                         f"({' '.join(COARSE_SEARCH_ARGS)})")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="MPI rank counts (default 1 2)")
    ap.add_argument("--mpi-iterations", type=int, help="iterations of the MPI runs (default 2; 1 with --quick)")
    ap.add_argument("--batch", type=int, help="refine --batch of the MPI runs (default 64; 32 with --quick)")
    ap.add_argument("--mpiexec", help="MPI launcher of our runs (default: the mpiexec next to this Python, "
                                      "else on PATH)")
    ap.add_argument("--relion-iterations", type=int, help="RELION iterations timed (default 2; 1 with --quick)")
    ap.add_argument("--relion-timeout", type=float, help="stop RELION after this many seconds and count its "
                                                         "finished iterations (default none; 100 with --quick)")
    ap.add_argument("--relion-ranks", type=int, default=3, help="mpirun -np of RELION (default 3: leader + 2 workers)")
    ap.add_argument("--relion-j", type=int, default=1, help="RELION --j threads per worker (default 1)")
    ap.add_argument("--relion-leader-nice", type=int, default=10,
                    help="niceness given to RELION's leader rank, which busy-waits (0: leave it)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every part (< 2 min on 2 cores)")
    ap.add_argument("--json", metavar="FILE", help="save every figure with the machine, date and commit here")
    ap.add_argument("--markdown", metavar="FILE", help="only print the RESULTS.md rows of a --json file, and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        return ap, args
    q = args.quick
    defaults = {"box": 32 if q else 128, "particles": 200 if q else 2000,
                "counts": [200, 400] if q else [1000, 2000, 5000, 10000, 20000, 50000, 100000],
                "boxes": [32, 48] if q else [64, 96, 128, 192, 256], "mpi_iterations": 1 if q else 2,
                "batch": 32 if q else 64, "relion_iterations": 1 if q else 2, "relion_timeout": 100 if q else 0}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    from nonuniform.engine.refine import MIN_BOX, MIN_PARTICLES_PER_HALF

    def bad(msg):
        ap.error(msg)

    if args.threads < 1:
        bad("--threads must be at least 1")
    for b in [args.box] + args.boxes:
        if b % 2 or b < MIN_BOX:
            bad(f"box {b}: boxes must be even and at least {MIN_BOX} px")
    for n in [args.particles] + args.counts:
        if n < 2 * MIN_PARTICLES_PER_HALF:
            bad(f"{n} particles: refine needs at least {2 * MIN_PARTICLES_PER_HALF} (50 per half-set)")
    if any(k < 1 for k in args.ranks):
        bad("--ranks must be at least 1")
    if args.mpi_iterations < 1 or args.relion_iterations < 1:
        bad("--mpi-iterations and --relion-iterations must be at least 1")
    if args.batch < 1:
        bad("--batch must be at least 1")
    if args.apix is not None and not args.apix > 0:
        bad("--apix must be a positive number of Å")
    if args.relion_ranks < 2:
        bad("--relion-ranks must be at least 2 (RELION's leader and workers)")
    args.counts = sorted(set(args.counts))
    args.boxes = sorted(set(args.boxes))
    args.ranks = sorted(set(args.ranks))
    return ap, args


def main(argv=None):
    ap, args = parse_args(argv)
    if args.markdown:
        try:
            with open(args.markdown) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            print(f"bench_scale: cannot read --markdown {args.markdown}: {exc}", file=sys.stderr)
            return 2
        print(markdown_rows(data))
        return 0
    made_workdir = args.workdir is None
    if made_workdir:
        args.workdir = tempfile.mkdtemp(prefix="bench_scale_")
    args.workdir = os.path.abspath(args.workdir)
    try:
        os.makedirs(args.workdir, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=args.workdir)
        probe.close()
    except OSError as exc:
        print(f"bench_scale: --workdir {args.workdir} is not a writable folder ({exc})", file=sys.stderr)
        return 2
    params = {k: getattr(args, k) for k in ("parts", "box", "particles", "counts", "boxes", "apix", "seed",
                                            "rss_search", "ranks", "mpi_iterations", "batch", "relion_iterations",
                                            "relion_timeout", "relion_ranks", "relion_j", "relion_leader_nice",
                                            "workdir")}
    params.update(snr=SNR, physical_box_ang=None if args.apix else PHYSICAL_BOX_ANG,
                  initial_lowpass_ang=INITIAL_LOWPASS_ANG)
    res = Results(machine_info(args), params, args.json)
    m = res.data["machine"]
    print(f"bench_scale: {m['cpu_model']}, {m['cpus_usable']} usable cores, {m['ram_gib']} GiB, {args.threads} threads;"
          f" parts {' '.join(args.parts)}; workdir {args.workdir}{'; QUICK smoke run' if args.quick else ''}",
          flush=True)
    load = m["load_average_start"]
    if load and load[0] > 0.5:
        print(f"  warning: load average {load[0]:.2f} at start: other jobs share the machine, the times are not "
              "idle-machine figures", flush=True)
    if "count" in args.parts:
        missing = [n for n in args.counts if not os.path.isfile(os.path.join(
            args.workdir, "data", f"n{n}_box{args.box}_apix{pixel_size(args, args.box):.4g}_snr{SNR:g}_seed{args.seed}",
            DATASET_MARKER))]
        if missing:
            need = sum(n * args.box ** 2 * 4 for n in missing)
            print(f"  count part: {len(missing)} simulation(s) to make, about {_gb(need)} of stacks "
                  f"({_gb(shutil.disk_usage(args.workdir).free)} free)", flush=True)
    t0 = time.perf_counter()
    runners = {"stages": part_stages, "count": part_count, "box": part_box, "mpi": part_mpi, "relion": part_relion}
    for part in PARTS:
        if part in args.parts:
            t = time.perf_counter()
            print(f"\n[{part}]", flush=True)
            guarded(res, part, lambda: runners[part](args, res))
            res.data.setdefault("part_seconds", {})[part] = round(time.perf_counter() - t, 1)
    res.data["total_seconds"] = round(time.perf_counter() - t0, 1)
    res.data["machine"]["load_average_end"] = load_average()
    res.save()
    print(f"\n== bench_scale: {m['cpu_model']}, {args.threads} threads, commit {m['commit']}, {m['date']}"
          f"{' (QUICK smoke run: tiny sizes, not a measurement)' if args.quick else ''}")
    print_stages(res.data["stages"])
    print_sweep(res.data["count"], "count")
    print_sweep(res.data["box"], "box")
    print_mpi(res.data["mpi"])
    print_relion(res.data["relion"])
    for where, why in res.data["skipped"].items():
        print(f"\nskipped: {where}: {why}")
    for where, msg in res.data["errors"].items():
        print(f"\nFAILED: {where}: {msg.splitlines()[0]}")
    print("\nseconds per part: " + ", ".join(f"{k} {v:.0f}" for k, v in res.data["part_seconds"].items())
          + f"; total {res.data['total_seconds']:.0f} s" + (f"; figures saved to {args.json}" if args.json else ""))
    if args.cleanup:
        for sub in ("data", "runs"):
            shutil.rmtree(os.path.join(args.workdir, sub), ignore_errors=True)
        if made_workdir:
            shutil.rmtree(args.workdir, ignore_errors=True)
        print(f"removed the simulations and runs under {args.workdir}")
    else:
        print(f"simulations and runs kept under {args.workdir} (reuse with --workdir, delete with --cleanup)")
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
