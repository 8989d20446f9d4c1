"""Benchmark: ``nonuniform refine`` against RELION 3.1 ``relion_refine`` auto-refine, side by side.

    python benchmarks/bench_refine.py simulate --out D            # 5000 particles, box 96, 1.6 Å/px, SNR 0.05
    python benchmarks/bench_refine.py relion --data D --out R     # mpirun -n 3 relion_refine_mpi --j 1
    python benchmarks/bench_refine.py ours --data D --out O [--mode uniform]
    python benchmarks/bench_refine.py report --data D --relion R --ours O [--ours-nu O2] [--plot F.png]
        [--relion-iteration N] [--relion-wall S] [--mask M.mrc]   # N: an unfinished RELION run's iteration
    python benchmarks/bench_refine.py trajectory --data D --relion R [--restart N@EPOCH]

``simulate`` writes, with this project's CLI, the protein-phantom data set (``D/particles.star``
holds the TRUE poses and ``rlnRandomSubset``; ``D/truth.mrc``), then

* ``D/init.mrc``: the truth low-passed to 30 Å (``filters.lowpass_cosine``), the start of both programs;
* ``D/input.star``: ``particles.star`` without the pose columns (rlnAngleRot/Tilt/Psi,
  rlnOriginX/YAngst), keeping CTFs and ``rlnRandomSubset``. Both programs refine from it, so
  neither can start from the true poses or offsets (RELION centres its offset search on the
  input origins);
* ``D/bench.json``: the simulation parameters and the particle diameter given to both programs
  (0.8 x box x pixel size: the phantom fits inside that sphere).

``relion`` runs gold-standard auto-refine. RELION refuses ``--split_random_halves`` without MPI
("Cannot split data into random halves without using MPI!"), so it runs ``mpirun -n 3
relion_refine_mpi`` (a leader that only hands out work plus two workers, one per half-set) with
``--j 1``: two busy processes on two cores, like our ``--threads 2``. ``--oversubscribe`` lets
OpenMPI start three ranks on two cores (it then yields the CPU while waiting) and
``--allow-run-as-root`` is added when running as root. RELION resolves image names against its
working directory, so it runs inside ``D``. ``--random_seed 1`` (the GUI seeds from the clock; 0
would make RELION skip randomising the particle order). RELION keeps the input ``rlnRandomSubset``
half-sets with ``--split_random_halves`` (checked: run_data.star has the input labels). The
simulated images are not normalised to background std 1 (RELION warns, and runs); ``--norm
--scale`` absorb the scale. Its stdout/stderr go to ``R/relion.log``; wall and
CPU seconds (user + sys of all its processes) to ``R/bench_relion.json``.

RELION's auto-refine on this set takes hours on 2 cores (about 100 minutes for its first 9
iterations, then more than 3 hours for its 10th, a global search at 3.75°). A run that was stopped
resumes from its last finished iteration N with ``relion_refine_mpi --continue
R/run_itNNN_optimiser.star --o R/run --j 1 --pool 3 --dont_combine_weights_via_disc`` (same
``mpirun`` prefix, inside ``D``; add ``--auto_local_healpix_order 3 --sigma_ang 7.5`` to go on
with local searches, as the recorded run did from iteration 10, and ``--solvent_mask M
--solvent_correct_fsc`` for a masked run), logging to ``R/continue*.log``; ``trajectory
--restart``/``--ended`` then time it without the gap, and ``report --relion-iteration`` evaluates
an unfinished run. With three ranks on two cores the leader rank busy-waits and takes CPU from
the workers: ``renice 10`` it (fairer to RELION). ``report --mask M`` also compares every map and
the truth with one mask applied (unmasked, the noise outside the particle dominates FSC-0.5).
``bench_refine_late.py`` re-runs the last iterations of one of our runs with other search settings.

``ours`` runs ``python -m nonuniform.engine --threads 2 refine`` on the same ``input.star`` and
``init.mrc``; log in ``O/bench_ours.log``, times in ``O/bench_ours.json``.

``report`` prints, per run: wall and CPU seconds, the ratio ours/RELION (target <= 0.5), the
resolution each program reports (RELION: ``_rlnCurrentResolution`` of ``run_model.star`` and the
"Final resolution" line of its log; ours: ``summary.json``), the FSC of each final map against
``truth.mrc`` at 0.5 and 0.143 (mean-removed maps, ``fsc.resolution_at``), the angular error
of the final poses against the true ones (median, mean, fraction > 10 deg; RELION's particles
are matched to the truth by image name, as it reorders them) and, for the "within 10 %"
criterion, the reconstruction of the same particles at their TRUE poses
(``pipeline.reconstruct_particles``) and the ratio of each refined map's FSC-vs-truth resolution
at 0.5 to it (0.5 against a noise-free reference corresponds to 0.143 between half-maps).
"""

import argparse
import glob
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from nonuniform.engine import filters, fsc, geometry, io, particles, pipeline

POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                "rlnOriginX", "rlnOriginY")
INIT_LOWPASS_ANG = 30.0


def _engine_cmd(*args, threads=None):
    cmd = [sys.executable, "-m", "nonuniform.engine"]
    if threads:
        cmd += ["--threads", str(threads)]
    return cmd + [str(a) for a in args]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _timed(cmd, log_path, cwd=None, env=None, echo=False):
    """Run ``cmd``, output to ``log_path`` (and stdout with ``echo``); return (rc, wall s, CPU s).

    CPU seconds are user + sys of the finished child process tree (``RUSAGE_CHILDREN`` delta),
    useful when other jobs share the machine and distort the wall clock.
    """
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("# " + " ".join(shlex.quote(c) for c in cmd) + "\n# cwd: " + (cwd or os.getcwd()) + "\n")
        log.flush()
        if echo:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1)
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            rc = proc.wait()
        else:
            rc = subprocess.call(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return rc, wall, cpu


def _read_json(path):
    with open(path) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------
# simulate


def cmd_simulate(a):
    rc = subprocess.call(_engine_cmd("simulate", "--out", a.out, "--n-particles", a.n, "--box", a.box,
                                     "--pixel-size", a.pixel_size, "--snr", a.snr, "--seed", a.seed,
                                     "--phantom", "protein"), env=_env())
    if rc:
        sys.exit(f"simulate failed (rc {rc})")
    truth, apix = io.read_mrc(os.path.join(a.out, "truth.mrc"))
    io.write_mrc(os.path.join(a.out, "init.mrc"),
                 filters.lowpass_cosine(truth, apix, INIT_LOWPASS_ANG).astype(np.float32), apix)
    blocks = io.read_star(os.path.join(a.out, "particles.star"))
    for col in POSE_COLUMNS:
        blocks["particles"].pop(col, None)
    io.write_star(os.path.join(a.out, "input.star"), blocks)
    meta = {"n_particles": a.n, "box_px": a.box, "pixel_size_ang": a.pixel_size, "snr": a.snr, "seed": a.seed,
            "phantom": "protein", "init_lowpass_ang": INIT_LOWPASS_ANG,
            "particle_diameter_ang": round(0.8 * a.box * a.pixel_size, 1)}
    io.write_json(os.path.join(a.out, "bench.json"), meta)
    print(f"wrote {a.out}/particles.star (true poses), input.star (no poses), init.mrc "
          f"(truth low-passed to {INIT_LOWPASS_ANG:g} Å), bench.json")


# ------------------------------------------------------------------------------------------------
# relion


def relion_command(a, meta, out_prefix):
    mpi = ["mpirun"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        mpi.append("--allow-run-as-root")
    mpi += ["--oversubscribe", "-n", str(a.mpi), "relion_refine_mpi"]
    diameter = a.diameter or meta["particle_diameter_ang"]
    args = ["--o", out_prefix, "--i", "input.star", "--ref", "init.mrc",
            "--auto_refine", "--split_random_halves", "--ctf", "--firstiter_cc", "--ini_high", "30",
            "--particle_diameter", f"{diameter:g}", "--flatten_solvent", "--zero_mask",
            "--oversampling", "1", "--healpix_order", "2", "--auto_local_healpix_order", "4",
            "--offset_range", "5", "--offset_step", "2", "--sym", "C1", "--norm", "--scale",
            "--pad", "2", "--low_resol_join_halves", "40", "--dont_combine_weights_via_disc",
            "--pool", "3", "--j", str(a.j), "--random_seed", str(a.seed)]
    return mpi + args + a.extra


def cmd_relion(a):
    data = os.path.abspath(a.data)
    meta = _read_json(os.path.join(data, "bench.json"))
    out = os.path.abspath(a.out)
    if os.path.isdir(out) and os.listdir(out):
        sys.exit(f"{out} is not empty")
    os.makedirs(out, exist_ok=True)
    cmd = relion_command(a, meta, os.path.join(out, "run"))
    print("running (cwd " + data + "): " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    rc, wall, cpu = _timed(cmd, os.path.join(out, "relion.log"), cwd=data)
    res = {"command": cmd, "cwd": data, "rc": rc, "wall_seconds": wall, "cpu_seconds": cpu}
    io.write_json(os.path.join(out, "bench_relion.json"), res)
    print(f"relion_refine rc {rc}, wall {wall:.1f} s, CPU {cpu:.1f} s; log {out}/relion.log")
    if rc:
        sys.exit(rc)


# ------------------------------------------------------------------------------------------------
# ours


def cmd_ours(a):
    data = os.path.abspath(a.data)
    out = os.path.abspath(a.out)
    meta = _read_json(os.path.join(data, "bench.json"))
    diameter = a.diameter or meta["particle_diameter_ang"]
    args = ["refine", "--particles", os.path.join(data, "input.star"), "--ref", os.path.join(data, "init.mrc"),
            "--out", out, "--mode", a.mode, "--diameter-ang", f"{diameter:g}",
            "--initial-lowpass-ang", f"{INIT_LOWPASS_ANG:g}", "--seed", str(a.seed)]
    if a.iterations is not None:
        args += ["--iterations", str(a.iterations)]
    cmd = _engine_cmd(*(args + a.extra), threads=a.threads)
    print("running: " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    # refine refuses a non-empty output folder, so the log goes next to it and is moved in afterwards.
    log = out.rstrip(os.sep) + ".bench_ours.log"
    rc, wall, cpu = _timed(cmd, log, env=_env(), echo=True)
    res = {"command": cmd, "rc": rc, "wall_seconds": wall, "cpu_seconds": cpu}
    if os.path.isdir(out):
        shutil.move(log, os.path.join(out, "bench_ours.log"))
        io.write_json(os.path.join(out, "bench_ours.json"), res)
    print(f"nonuniform refine rc {rc}, wall {wall:.1f} s, CPU {cpu:.1f} s")
    if rc:
        sys.exit(rc)


# ------------------------------------------------------------------------------------------------
# report


def _relion_resolution(rdir):
    """(_rlnCurrentResolution of run_model.star, 'Final resolution' from the log or None)."""
    cur = None
    model = os.path.join(rdir, "run_model.star")
    if os.path.exists(model):
        g = io.read_star(model).get("model_general")
        if g is not None and "rlnCurrentResolution" in g:
            cur = float(np.asarray(g["rlnCurrentResolution"])[0])
    final = None
    # relion.log is the first run's; a run resumed with --continue logs to continue*.log.
    for log in [os.path.join(rdir, "relion.log")] + sorted(glob.glob(os.path.join(rdir, "continue*.log"))):
        if not os.path.exists(log):
            continue
        with open(log, errors="replace") as f:
            for line in f:
                if "Final resolution" in line:
                    try:
                        final = float(line.split(":")[-1].split()[0])
                    except (ValueError, IndexError):
                        pass
    return cur, final


def _load_in(star, cwd):
    """load_particles with ``cwd`` as working directory (RELION's image names are relative to it)."""
    star = os.path.abspath(star)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return particles.load_particles(star)
    finally:
        os.chdir(old)


def _matched_rotations(truth, refined):
    """(true, refined) rotation matrices of the refined particles, matched to the truth by image name."""
    where = {ref: i for i, ref in enumerate(truth.image_refs)}
    try:
        idx = np.array([where[ref] for ref in refined.image_refs])
    except KeyError as exc:
        raise SystemExit(f"{refined.star_path}: image {exc} is not in {truth.star_path}") from None
    return pipeline.particle_rotations(truth, idx), pipeline.particle_rotations(refined)


def _angular_errors(truth, refined):
    """Geodesic error (deg) per refined particle against its true pose, matched by image."""
    return geometry.angular_distance_deg(*_matched_rotations(truth, refined))


def _fsc_truth(path_or_vol, truth_vol, apix, curves=None, label=None):
    """FSC-0.5 and 0.143 resolutions (Å) of a map (path or array) against the truth, both mean-removed."""
    v = io.read_mrc(path_or_vol)[0] if isinstance(path_or_vol, str) else path_or_vol
    c = fsc.fsc_curve(v - v.mean(), truth_vol - truth_vol.mean())
    if curves is not None:
        curves[label] = c
    box = truth_vol.shape[0]
    return fsc.resolution_at(c, box, apix, 0.5), fsc.resolution_at(c, box, apix, 0.143)


def _run_row(name, map_path, star_path, star_cwd, reported, times, truth, truth_vol, apix, curves=None):
    row = {"name": name, "wall": times.get("wall_seconds"), "cpu": times.get("cpu_seconds"),
           "reported": reported, "map": map_path}
    row["fsc05"], row["fsc0143"] = (_fsc_truth(map_path, truth_vol, apix, curves, name) if os.path.exists(map_path)
                                    else (None,) * 2)
    if os.path.exists(star_path):
        true_rot, rot = _matched_rotations(truth, _load_in(star_path, star_cwd))
        ang = geometry.angular_distance_deg(true_rot, rot)
        # The same once the map frame (free up to a rotation) is turned onto the truth's.
        aligned, _, frame_deg = geometry.frame_alignment(true_rot, rot)
        row.update(ang_median=float(np.median(ang)), ang_mean=float(ang.mean()),
                   ang_gt10=float(np.mean(ang > 10)), n=len(ang), frame_deg=frame_deg,
                   ang_median_aligned=float(np.median(aligned)), ang_gt10_aligned=float(np.mean(aligned > 10)))
    return row


def cmd_report(a):
    if a.mask and not os.path.exists(a.mask):
        sys.exit(f"--mask {a.mask}: no such file")
    data = os.path.abspath(a.data)
    truth = particles.load_particles(os.path.join(data, "particles.star"))
    truth_vol, apix = io.read_mrc(os.path.join(data, "truth.mrc"))
    box = truth_vol.shape[0]
    rows, curves = [], {}
    if a.relion:
        r = os.path.abspath(a.relion)
        times = _read_json(os.path.join(r, "bench_relion.json")) if os.path.exists(
            os.path.join(r, "bench_relion.json")) else {}
        if a.relion_wall is not None:
            times = {"wall_seconds": a.relion_wall}
        if a.relion_iteration is None:
            cur, final = _relion_resolution(r)
            rep = f"{cur:.2f} (model)" if cur is not None else "-"
            if final is not None:
                rep += f" / {final:.2f} (final, log)"
            name, map_path, star = "RELION auto-refine", os.path.join(r, "run_class001.mrc"), "run_data.star"
        else:
            # An unfinished run: the average of that iteration's half-maps, its poses.
            it = f"run_it{a.relion_iteration:03d}"
            map_path = os.path.join(tempfile.mkdtemp(), "relion_average.mrc")
            io.write_mrc(map_path, _relion_average(r, a.relion_iteration), apix)
            g = io.read_star(os.path.join(r, f"{it}_half1_model.star"))["model_general"]
            cur, final = float(np.asarray(g["rlnCurrentResolution"])[0]), None
            rep = f"{cur:.2f} (it {a.relion_iteration})"
            name, star = f"RELION it {a.relion_iteration}", f"{it}_data.star"
        rows.append(_run_row(name, map_path, os.path.join(r, star), data, rep, times, truth, truth_vol, apix,
                             curves))
        rows[-1]["reported_ang"] = final if final is not None else cur
    for label, o in (("ours", a.ours), ("ours NU", a.ours_nu)):
        if not o:
            continue
        o = os.path.abspath(o)
        summ = _read_json(os.path.join(o, "summary.json")) if os.path.exists(os.path.join(o, "summary.json")) else {}
        times = _read_json(os.path.join(o, "bench_ours.json")) if os.path.exists(
            os.path.join(o, "bench_ours.json")) else {"wall_seconds": summ.get("wall_seconds")}
        cfg = os.path.join(o, "config.json")
        mode = _read_json(cfg).get("mode") if os.path.exists(cfg) else None
        name = f"{label} ({mode})" if mode else label
        res = summ.get("resolution_ang")
        rows.append(_run_row(name, os.path.join(o, "map.mrc"), os.path.join(o, "particles.star"), o,
                             f"{res:.2f}" if res is not None else "-", times, truth, truth_vol, apix, curves))
        rows[-1]["reported_ang"] = res

    rec = pipeline.reconstruct_particles(truth, halves=True)
    c = fsc.fsc_curve(rec["map"] - rec["map"].mean(), truth_vol - truth_vol.mean())
    true05, true0143 = fsc.resolution_at(c, box, apix, 0.5), fsc.resolution_at(c, box, apix, 0.143)
    ch = fsc.fsc_curve(rec["half1"], rec["half2"])
    true_gs = fsc.resolution_at(ch, box, apix, 0.143)
    curves["true poses (reconstruct)"] = c

    def f(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)

    relion_wall = rows[0]["wall"] if rows and rows[0]["name"].startswith("RELION") else None
    print(f"data: {data} ({len(truth)} particles, box {box}, {apix:g} Å/px)")
    hdr = (f"{'run':24s} {'wall s':>8s} {'CPU s':>8s} {'/RELION':>7s} {'reported Å':>30s} {'vs truth 0.5':>12s} "
           f"{'0.143':>6s} {'ang med':>7s} {'mean':>6s} {'>10°':>6s} {'0.5/true':>10s}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        ratio = r["wall"] / relion_wall if (relion_wall and r["wall"] is not None) else None
        within = r["fsc05"] / true05 if r["fsc05"] is not None else None
        print(f"{r['name']:24s} {f(r['wall'], '{:.0f}'):>8s} {f(r['cpu'], '{:.0f}'):>8s} {f(ratio):>7s} "
              f"{r['reported']:>30s} {f(r['fsc05']):>12s} {f(r['fsc0143']):>6s} {f(r.get('ang_median')):>7s} "
              f"{f(r.get('ang_mean')):>6s} {f(None if 'ang_gt10' not in r else 100 * r['ang_gt10'], '{:.1f}%'):>6s} "
              f"{f(within, '{:.3f}'):>10s}")
    print(f"{'true poses (reconstruct)':24s} {'':>8s} {'':>8s} {'':>7s} {f'{true_gs:.2f} (half-map FSC 0.143)':>30s} "
          f"{true05:>12.2f} {true0143:>6.2f}")
    print("\nvs truth: FSC of the final (full) map against truth.mrc, both mean-removed, at 0.5 (the threshold "
          "for a map against a noise-free reference that corresponds to 0.143 between half-maps) and 0.143; "
          "0.5/true: that 0.5 resolution over the true-pose reconstruction's (<= 1.10 = within 10 %); "
          "/RELION: wall ratio (target <= 0.5).")
    print("\nangular error once each run's map frame is turned onto the truth's (a refinement fixes its map only "
          "up to a rotation):")
    for r in rows:
        if "frame_deg" in r:
            print(f"{r['name']:24s} frame turned by {r['frame_deg']:.2f}°: median {r['ang_median_aligned']:.2f}°, "
                  f"> 10° {100 * r['ang_gt10_aligned']:.1f} %")
    if a.mask:
        # Maps are compared unmasked above; a solvent mask applied alike to every map and to the truth
        # removes the noise outside the particle (what a masked FSC sees).
        m, _ = io.read_mrc(a.mask)
        print(f"\nwith the mask {a.mask} applied to each map and to the truth:")
        print(f"{'run':24s} {'vs truth 0.5':>12s} {'0.143':>6s}")
        masked = [(r["name"], io.read_mrc(r["map"])[0]) for r in rows if r["map"] and os.path.exists(r["map"])]
        for name, v in masked + [("true poses (reconstruct)", rec["map"])]:
            r05, r0143 = _fsc_truth(v * m, truth_vol * m, apix)
            print(f"{name:24s} {r05:12.2f} {r0143:6.2f}")
            for r in rows:
                if r["name"] == name:
                    r["masked_fsc05"], r["masked_fsc0143"] = r05, r0143
    if a.plot:
        from nonuniform.engine.plots import plot_fsc

        # Shell 0 (DC) of mean-removed maps is 0/0: left out of the plot.
        shown = {k: np.concatenate([[np.nan], v[1:]]) for k, v in curves.items()}
        plot_fsc(a.plot, shown, {k: fsc.resolution_at(v, box, apix, 0.5) for k, v in curves.items()}, apix, box,
                 threshold=0.5)
        print(f"FSC against the truth: {a.plot}")
    if a.json:
        io.write_json(a.json, {"rows": rows, "true_poses": {"fsc05_ang": true05, "fsc0143_ang": true0143,
                                                            "halfmap_fsc0143_ang": true_gs}})


def _iteration_epochs(specs):
    """{iteration: epoch seconds} from ``N@EPOCH`` strings."""
    out = {}
    for spec in specs or ():
        it, _, epoch = spec.partition("@")
        out[int(it)] = float(epoch)
    return out


def _relion_average(rdir, i):
    """Average of RELION's two half-maps of iteration ``i``."""
    h1, _ = io.read_mrc(os.path.join(rdir, f"run_it{i:03d}_half1_class001.mrc"))
    h2, _ = io.read_mrc(os.path.join(rdir, f"run_it{i:03d}_half2_class001.mrc"))
    return 0.5 * (h1 + h2)


def cmd_trajectory(a):
    """Per RELION iteration: elapsed wall time, RELION's resolution, the map and poses against the truth.

    Elapsed time is read from the mtimes of ``run_itNNN_optimiser.star`` (RELION writes them at the
    end of each iteration), counted from iteration 0's. ``--restart N@EPOCH`` says that the run was
    killed during iteration N and resumed with ``relion_refine --continue run_it(N-1)_optimiser.star``
    at EPOCH (seconds): iteration N is then timed from EPOCH instead of from iteration N-1's end, so
    the time between the kill and the restart is not counted. RELION rewrites the iteration it
    continues from, so that iteration's original end time is given with ``--ended N-1@EPOCH``.
    ``--pauses FILE`` lists ``stop EPOCH`` / ``cont EPOCH`` lines (the run was suspended with
    SIGSTOP/SIGCONT while other timed jobs used the machine): those intervals are not counted.
    """
    data = os.path.abspath(a.data)
    r = os.path.abspath(a.relion)
    truth = particles.load_particles(os.path.join(data, "particles.star"))
    truth_vol, apix = io.read_mrc(os.path.join(data, "truth.mrc"))
    restarts, ended = _iteration_epochs(a.restart), _iteration_epochs(a.ended)
    its = sorted(int(m.group(1)) for m in (re.match(r"run_it(\d{3})_optimiser\.star$", n) for n in os.listdir(r)) if m)
    if not its:
        sys.exit(f"{r}: no run_itNNN_optimiser.star")
    pauses, stop = [], None
    if a.pauses:
        with open(a.pauses) as f:
            for line in f:
                what, _, epoch = line.strip().partition(" ")
                if what == "stop":
                    stop = float(epoch)
                elif what == "cont" and stop is not None:
                    pauses.append((stop, float(epoch)))
                    stop = None

    def paused(t0, t1):
        return sum(max(0.0, min(t1, b) - max(t0, a)) for a, b in pauses)

    mtime = {i: ended.get(i) or os.path.getmtime(os.path.join(r, f"run_it{i:03d}_optimiser.star")) for i in its}
    rows, elapsed = [], 0.0
    print(f"{'iter':>4s} {'elapsed min':>11s} {'iter min':>8s} {'RELION Å':>8s} {'vs truth 0.5':>12s} {'0.143':>6s} "
          f"{'ang med':>7s} {'>10°':>6s}")
    for k, i in enumerate(its):
        if k == 0:
            dt = 0.0
        else:
            t0 = restarts.get(i, mtime[its[k - 1]])
            dt = mtime[i] - t0 - paused(t0, mtime[i])
        elapsed += dt
        row = {"iteration": i, "seconds": dt, "elapsed_seconds": elapsed}
        g = io.read_star(os.path.join(r, f"run_it{i:03d}_half1_model.star")).get("model_general")
        if g is not None and "rlnCurrentResolution" in g:
            row["relion_resolution_ang"] = float(np.asarray(g["rlnCurrentResolution"])[0])
        row["fsc05_ang"], row["fsc0143_ang"] = _fsc_truth(_relion_average(r, i), truth_vol, apix)
        if i > 0:
            ang = _angular_errors(truth, _load_in(os.path.join(r, f"run_it{i:03d}_data.star"), data))
            row.update(ang_median=float(np.median(ang)), ang_gt10=float(np.mean(ang > 10)))
        rows.append(row)
        print(f"{i:4d} {elapsed / 60:11.1f} {dt / 60:8.1f} {row.get('relion_resolution_ang', float('nan')):8.2f} "
              f"{row['fsc05_ang']:12.2f} {row['fsc0143_ang']:6.2f} {row.get('ang_median', float('nan')):7.2f} "
              f"{100 * row.get('ang_gt10', float('nan')):5.1f}%", flush=True)
    final = os.path.join(r, "run_class001.mrc")
    if os.path.exists(final):
        # The last iteration of a converged auto-refine joins the halves and writes run_class001.mrc,
        # run_data.star and run_model.star without an iteration number.
        t0 = mtime[its[-1]]
        t1 = os.path.getmtime(os.path.join(r, "run_model.star"))
        dt = t1 - t0 - paused(t0, t1)
        elapsed += dt
        vol, _ = io.read_mrc(final)
        row = {"iteration": "final", "seconds": dt, "elapsed_seconds": elapsed}
        row["fsc05_ang"], row["fsc0143_ang"] = _fsc_truth(vol, truth_vol, apix)
        ang = _angular_errors(truth, _load_in(os.path.join(r, "run_data.star"), data))
        row.update(ang_median=float(np.median(ang)), ang_gt10=float(np.mean(ang > 10)))
        rows.append(row)
        print(f"{'final':>5s}{elapsed / 60:11.1f} {dt / 60:8.1f} {'':8s} {row['fsc05_ang']:12.2f} "
              f"{row['fsc0143_ang']:6.2f} {row['ang_median']:7.2f} {100 * row['ang_gt10']:5.1f}%", flush=True)
    print("\nvs truth: FSC of the average of RELION's two half-maps of that iteration against truth.mrc; "
          "ang: geodesic error of that iteration's poses (max-probability) against the true ones; final: run_class001.mrc and run_data.star of the last (joined) iteration.")
    if a.json:
        io.write_json(a.json, {"relion": r, "restarts": restarts, "ended": ended, "iterations": rows})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="simulate the protein-phantom data set, init.mrc and input.star")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--box", type=int, default=96)
    p.add_argument("--pixel-size", type=float, default=1.6)
    p.add_argument("--snr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("relion", help="run RELION 3.1 gold-standard auto-refine (MPI)")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mpi", type=int, default=3, help="MPI ranks: leader + workers (default 3)")
    p.add_argument("--j", type=int, default=1, help="threads per worker (default 1)")
    p.add_argument("--diameter", type=float, help="particle diameter in Å (default from bench.json)")
    p.add_argument("--seed", type=int, default=1,
                   help="RELION --random_seed (default 1; 0 makes RELION skip randomising the particle order, "
                        "-1 seeds from the clock as the GUI does)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="more relion_refine options after --")
    p.set_defaults(func=cmd_relion)

    p = sub.add_parser("ours", help="run nonuniform refine on the same input")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=("uniform", "nonuniform"), default="uniform")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iterations", type=int, help="maximum number of iterations (refine --iterations)")
    p.add_argument("--diameter", type=float, help="particle diameter in Å (default from bench.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("extra", nargs=argparse.REMAINDER, help="more refine options after --")
    p.set_defaults(func=cmd_ours)

    p = sub.add_parser("report", help="side-by-side table")
    p.add_argument("--data", required=True)
    p.add_argument("--relion")
    p.add_argument("--ours")
    p.add_argument("--ours-nu")
    p.add_argument("--relion-iteration", type=int,
                   help="report this iteration of an unfinished RELION run (average of its half-maps)")
    p.add_argument("--relion-wall", type=float, help="RELION's wall seconds (e.g. from trajectory)")
    p.add_argument("--mask", help="also compare every map and the truth with this mask applied (e.g. RELION's solvent mask)")
    p.add_argument("--plot", help="also plot each map's FSC against the truth to this PNG")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("trajectory", help="RELION's progress per iteration: time, resolution, vs truth")
    p.add_argument("--data", required=True)
    p.add_argument("--relion", required=True)
    p.add_argument("--restart", action="append", metavar="N@EPOCH",
                   help="iteration N was restarted with --continue at EPOCH seconds (repeatable)")
    p.add_argument("--ended", action="append", metavar="N@EPOCH",
                   help="iteration N originally ended at EPOCH seconds (repeatable)")
    p.add_argument("--pauses", help="file of 'stop EPOCH' / 'cont EPOCH' lines: suspended intervals, not counted")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.set_defaults(func=cmd_trajectory)

    a = ap.parse_args(argv)
    if hasattr(a, "extra") and a.extra and a.extra[0] == "--":
        a.extra = a.extra[1:]
    a.func(a)


if __name__ == "__main__":
    main()
