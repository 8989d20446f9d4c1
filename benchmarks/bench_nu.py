"""Non-uniform vs uniform regularization: figures for the NU issue.

    python benchmarks/bench_nu.py filter [--box 128]
        Regional phantom (sharp core, blurred periphery, empty solvent) with independent noise per
        half: MSE vs truth of the NU-filtered and the uniform-FSC-filtered map, cutoff map vs the
        true local band limit, pure-noise behaviour, and the time of one NU regularization.

    python benchmarks/bench_nu.py refine --out DIR [--n 5000] [--box 64] [--phantom membrane|protein]
        Simulates a dataset, refines it from the truth low-passed to 30 Å in uniform and in NU mode,
        prints resolution vs truth, angular errors and wall times, and plots FSC(map, truth) against
        the gold-standard prediction sqrt(2 FSC_gs / (1 + FSC_gs)) (over-fitting check) to
        DIR/fsc_consistency.png.

    python benchmarks/bench_nu.py membrane --work DIR [--n 4000] [--objectives risk-wiener cv] [--json F]
        The harder membrane benchmark (nu_membrane_data.py: ~30 kDa pseudo-symmetric protein, belt about
        half the mass, SNR 0.05, 1.5 Å/px): simulates DIR/data, reconstructs at the true poses, refines
        uniform and NU (one run per objective), then reports per region (rigid core, flexible domain,
        belt, solvent) FSC/CC/amplitude/error vs truth for the uniform map, the NU FSC-weighted map and
        the NU-regularized map(s); FSC-0.5 vs truth in the protein mask against the true-pose limit;
        misassigned particles; wall time per iteration and regularization seconds; and the
        gold-standard consistency plot DIR/fsc_consistency.png.

    python benchmarks/bench_nu.py sweep --work DIR --counts 1000 2000 4000 [--json F]
        The paper's Fig. 6: one uniform and one NU refinement per particle count (the first n particles
        of DIR/data), 1/resolution² (FSC-0.5 vs truth, protein mask) against the count, log axis, to
        DIR/particle_sweep.png.
"""

import argparse
import os
import sys
import time

import numpy as np

from nonuniform.engine import filters, fourier, fsc, io, membrane, phantoms, regularize, simulate
from nonuniform.engine.demo import evaluate_run
from nonuniform.engine.particles import load_particles
from nonuniform.engine.refine import RefineConfig, Refinement


def regional_phantom(n, rng, blur_px=2.5):
    """Sharp core (r <= n/5) of σ = 1 px blobs, periphery blurred by a σ = blur_px Gaussian."""
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)

    def blobs(count, radius):
        v = np.zeros((n, n, n), np.float32)
        for c in rng.uniform(-radius, radius, (count, 3)):
            v += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / 2.0)
        return v

    core = blobs(int(60 * (n / 64) ** 3), 0.12 * n) * (r <= n / 5)
    per = blobs(int(60 * (n / 64) ** 3), 0.35 * n) * (r > n / 5)
    k = fourier.radial_freq_rfft(per.shape)
    per = fourier.irfftn_c(fourier.rfftn_c(per) * np.exp(-2 * np.pi ** 2 * blur_px ** 2 * k ** 2), per.shape)
    return (core + per).astype(np.float32), r


def bench_filter(args):
    rng = np.random.default_rng(0)
    n = args.box
    truth, r = regional_phantom(n, rng)
    s = 0.6 * truth.std()
    q1 = truth + rng.normal(0, s, truth.shape).astype(np.float32)
    q2 = truth + rng.normal(0, s, truth.shape).astype(np.float32)
    n1, n2 = (rng.normal(0, 1, truth.shape).astype(np.float32) for _ in range(2))
    uni = regularize.uniform_fsc_filter(q1, q2)
    norm = float(np.mean(truth ** 2))
    print(f"regional phantom, box {n}: MSE vs truth relative to mean truth²: raw {np.mean(((q1 + q2) / 2 - truth) ** 2) / norm:.4f}, "
          f"uniform FSC filter {np.mean((uni - truth) ** 2) / norm:.4f}")
    for obj in regularize.OBJECTIVES:
        t = time.time()
        res = regularize.nu_filter(q1, q2, objective=obj)
        t_nu = time.time() - t
        mse = float(np.mean((res.filtered - truth) ** 2))
        print(f"{obj}: MSE {mse / norm:.4f} ({100 * (1 - mse / np.mean((uni - truth) ** 2)):.0f} % lower than the "
              f"uniform FSC filter's); cutoff (px) core median {np.median(res.cutoff_ang[r <= 0.16 * n]):.2f} (blobs σ 1 px, "
              f"Nyquist 2), periphery {np.median(res.cutoff_ang[(r > 0.25 * n) & (r < 0.31 * n)]):.2f} (blurred by σ 2.5 px), "
              f"solvent {np.median(res.cutoff_ang[r > 0.45 * n]):.2f}; {t_nu:.1f} s at {n}³ (50 cutoffs, AWF 3, order 8)")
        rn = regularize.nu_filter(n1, n2, objective=obj)
        lowest3 = 1.0 / rn.cutoffs_inv_px[2]
        print(f"   pure-noise halves: {100 * np.mean(rn.cutoff_ang >= lowest3 * (1 - 1e-6)):.1f} % of voxels at the 3 "
              f"lowest cutoffs; output std / input std = {rn.filtered.std() / n1.std():.4f}")


def bench_refine(args):
    out = os.path.abspath(args.out)
    data = os.path.join(out, "data")
    rng = np.random.default_rng(args.seed)
    if not os.path.exists(os.path.join(data, "particles.star")):
        if args.phantom == "membrane":
            ph = membrane.membrane_phantom(args.box, args.pixel_size, rng)
            truth = ph.truth()
        else:
            ph = truth = phantoms.protein_phantom(args.box, args.pixel_size, rng)
        sim = simulate.simulate_particles(ph, args.n, args.pixel_size, rng, snr=args.snr)
        simulate.write_simulation(data, sim, args.pixel_size, truth)
        io.write_mrc(os.path.join(data, "init.mrc"), filters.lowpass_cosine(truth, args.pixel_size, 30.0),
                     args.pixel_size)
    truth, apix = io.read_mrc(os.path.join(data, "truth.mrc"))
    truth_particles = load_particles(os.path.join(data, "particles.star"))
    rows, curves = {}, {}
    for mode in ("uniform", "nonuniform"):
        run = os.path.join(out, mode)
        if not os.path.exists(os.path.join(run, "summary.json")):
            t = time.time()
            Refinement(os.path.join(data, "particles.star"), os.path.join(data, "init.mrc"), run,
                       RefineConfig(mode=mode, seed=args.seed), overwrite=True).run()
            print(f"{mode}: {time.time() - t:.0f} s", flush=True)
        ev, c = evaluate_run(run, truth_particles, truth, apix)
        import json

        with open(os.path.join(run, "summary.json")) as f:
            summ = json.load(f)
        ev["wall_seconds"] = summ["wall_seconds"]
        ev["gs_resolution_ang"] = summ["resolution_ang"]
        rows[mode] = ev
        gs, _ = fsc.read_fsc_csv(os.path.join(run, "fsc.csv"))
        curves[mode] = (gs["fsc_unmasked"], c["map"])
    print(f"{args.phantom} phantom, {args.n} particles, box {args.box}, {args.pixel_size} Å/px, SNR {args.snr}")
    keys = ["gs_resolution_ang", "map_vs_truth_fsc05_ang", "map_vs_truth_fsc0143_ang", "map_nu_vs_truth_fsc05_ang",
            "median_angular_error_deg", "mean_angular_error_deg", "fraction_angular_error_above_10deg",
            "frame_rotation_deg", "median_angular_error_frame_aligned_deg",
            "fraction_angular_error_above_10deg_frame_aligned", "wall_seconds"]
    print(f"{'':40s} {'uniform':>10s} {'nonuniform':>10s}")
    for k in keys:
        vals = [rows[m].get(k) for m in ("uniform", "nonuniform")]
        print(f"{k:40s} " + " ".join(f"{v:10.3f}" if v is not None else f"{'-':>10s}" for v in vals))
    print(f"NU / uniform wall time: {rows['nonuniform']['wall_seconds'] / rows['uniform']['wall_seconds']:.2f}")
    freq = np.arange(args.box // 2 + 1) / (args.box * apix)
    plot_consistency(os.path.join(out, "fsc_consistency.png"), freq, curves, "FSC")
    for mode, (gs, vs_truth) in curves.items():
        pred = np.sqrt(np.clip(2 * gs / (1 + gs), 0, 1))
        sel = slice(1, args.box // 2)
        print(f"{mode}: max |FSC_truth - predicted| over shells = {np.max(np.abs(vs_truth[sel] - pred[sel])):.3f}, "
              f"mean = {np.mean(np.abs(vs_truth[sel] - pred[sel])):.3f}")
    print(f"plot: {os.path.join(out, 'fsc_consistency.png')}")


# ------------------------------------------------------------------------------------------------
# The harder membrane benchmark and the particle-count sweep


def _write_subset(data, star_out, n):
    """A STAR file of the first ``n`` particles of ``data`` (absolute image paths), unless it exists."""
    from nonuniform.engine import star as starfile

    if os.path.exists(star_out):
        return
    blocks = starfile.read_star(os.path.join(data, "particles.star"))
    table = {k: np.asarray(v)[:n] for k, v in blocks["particles"].items()}
    table["rlnImageName"] = np.array([f"{x.split('@')[0]}@{os.path.join(data, x.split('@')[1])}"
                                      for x in table["rlnImageName"]])
    os.makedirs(os.path.dirname(star_out), exist_ok=True)
    starfile.write_star(star_out, {"optics": blocks["optics"], "particles": table})


def _refine(data, out, mode, objective, n=None, seed=0):
    """Refine (the first ``n`` particles of) ``data`` into ``out`` unless it has finished there already."""
    if os.path.exists(os.path.join(out, "summary.json")):
        return
    star = os.path.join(data, "particles.star")
    if n is not None:  # the first n particles (random poses already; half-sets alternate)
        star = os.path.join(out + "_input", "particles.star")
        _write_subset(data, star, n)
    cfg = RefineConfig(mode=mode, seed=seed, nu_objective=objective)
    t = time.time()
    Refinement(star, os.path.join(data, "init.mrc"), out, cfg, overwrite=True).run()
    print(f"  {os.path.basename(out)}: {time.time() - t:.0f} s", flush=True)


def _protein_mask(labels):
    from nonuniform.engine import masks

    return masks.soft_edge(masks.dilate((labels == 1) | (labels == 3), 3.0), 3.0)


def _truth_resolution(vol, truth, pmask, apix):
    c = fsc.fsc_curve(vol * pmask, truth * pmask)
    return fsc.resolution_at(c, truth.shape[0], apix, 0.5), c


def _onto_truth(vol, g):
    """The run's map turned onto the truth's frame: a refinement fixes its map only up to a rotation
    (its poses are ``true @ g``, :func:`geometry.frame_alignment`), and a few degrees already cost
    detail at 5 Å. Cubic-spline resampling about the box centre."""
    from scipy import ndimage

    n = vol.shape[0]
    c = np.full(3, n // 2, float)
    flip = np.eye(3)[::-1]  # array axes are (z, y, x)
    m = flip @ g.T @ flip
    return ndimage.affine_transform(vol, m, offset=c - m @ c, order=3, mode="wrap").astype(np.float32)


def _read_run_map(run, name):
    """``run/name.mrc`` in the truth's frame (see :func:`_onto_truth`; the run's frame is cached by
    :func:`_run_report`)."""
    return _onto_truth(io.read_mrc(os.path.join(run, name + ".mrc"))[0], _FRAMES[run])


_FRAMES = {}


def _run_report(run, truth_particles, truth, pmask, apix):
    import json

    from nonuniform.engine import geometry
    from nonuniform.engine.pipeline import particle_rotations

    with open(os.path.join(run, "summary.json")) as f:
        summ = json.load(f)
    refined = load_particles(os.path.join(run, "particles.star"), require_ctf=False)
    true_rot = particle_rotations(truth_particles, np.arange(len(refined.rot_deg)))  # the first n particles
    aligned, g, frame_deg = geometry.frame_alignment(true_rot, particle_rotations(refined))
    _FRAMES[run] = g
    hist = summ["history"]
    reg = [sum(h["regularize_seconds_half"]) for h in hist if "regularize_seconds_half" in h]
    row = {"gs_resolution_ang": summ["resolution_ang"], "iterations": summ["iterations"],
           "wall_seconds": summ["wall_seconds"], "seconds_per_iteration": summ["wall_seconds"] / len(hist),
           "regularize_seconds_per_iteration": float(np.mean(reg)) if reg else None,
           "frame_rotation_deg": frame_deg, "median_angular_error_deg": float(np.median(aligned)),
           "fraction_misassigned_30deg": float(np.mean(aligned > 30))}
    for name in ("map", "map_nu"):
        path = os.path.join(run, name + ".mrc")
        if os.path.exists(path):
            row[f"{name}_vs_truth_fsc05_ang"], _ = _truth_resolution(_read_run_map(run, name), truth, pmask, apix)
    return row, summ


def bench_membrane(args):
    import json

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from nu_membrane_data import make_dataset
    from nu_regions import compare, format_table

    work = os.path.abspath(args.work)
    data = os.path.join(work, "data")
    meta = make_dataset(data, n=args.n)
    print(f"data: {json.dumps(meta)}")
    truth, apix = io.read_mrc(os.path.join(data, "truth.mrc"))
    labels = np.rint(io.read_mrc(os.path.join(data, "regions.mrc"))[0]).astype(int)
    pmask = _protein_mask(labels)
    truth_particles = load_particles(os.path.join(data, "particles.star"))
    tp_weighted = _true_pose_map(data, work, None, pmask)
    runs = {"uniform": ("uniform", None)}
    for obj in args.objectives:
        runs["nu" if obj == "risk-wiener" else f"nu_{obj}"] = ("nonuniform", obj)
    for name, (mode, obj) in runs.items():
        _refine(data, os.path.join(work, name), mode, obj or "risk-wiener")
    rows, summaries = {}, {}
    for name in runs:
        rows[name], summaries[name] = _run_report(os.path.join(work, name), truth_particles, truth, pmask, apix)
    rows["true poses"] = {"map_vs_truth_fsc05_ang": _truth_resolution(tp_weighted, truth, pmask, apix)[0]}
    core_res = rows["nu"]["map_vs_truth_fsc05_ang"] if "nu" in rows else rows["uniform"]["map_vs_truth_fsc05_ang"]
    maps = {"uniform map.mrc": _read_run_map(os.path.join(work, "uniform"), "map")}
    for name in runs:
        if name != "uniform":
            maps[f"{name} map.mrc (FSC-weighted)"] = _read_run_map(os.path.join(work, name), "map")
            maps[f"{name} map_nu.mrc"] = _read_run_map(os.path.join(work, name), "map_nu")
    if "nu" in runs:  # the default run's half-maps through the filter with the other objectives
        run = os.path.join(work, "nu")
        h1, h2 = io.read_mrc(os.path.join(run, "half1.mrc"))[0], io.read_mrc(os.path.join(run, "half2.mrc"))[0]
        for obj in regularize.OBJECTIVES:
            if obj != "risk-wiener":
                r = regularize.nu_filter(h1, h2, half_map=(h1 + h2) / 2, objective=obj,
                                         gain_power=regularize.MAP_GAIN_POWER)
                maps[f"nu half-maps, filter --objective {obj}"] = _onto_truth(r.filtered, _FRAMES[run])
    maps["true poses (FSC-weighted)"] = tp_weighted
    regions = compare(maps, truth, labels, apix, core_res)
    print(f"\nwhole protein (mask: core + flexible domain), FSC-0.5 vs truth; amplitudes below at {core_res:.2f} Å")
    keys = ["gs_resolution_ang", "map_vs_truth_fsc05_ang", "map_nu_vs_truth_fsc05_ang", "median_angular_error_deg",
            "fraction_misassigned_30deg", "frame_rotation_deg", "iterations", "seconds_per_iteration",
            "regularize_seconds_per_iteration", "wall_seconds"]
    print("| | " + " | ".join(rows) + " |\n|---|" + "---|" * len(rows))
    for k in keys:
        cells = [f"{rows[r][k]:.3f}" if rows[r].get(k) is not None else "–" for r in rows]
        print(f"| {k} | " + " | ".join(cells) + " |")
    print("\nper region\n" + format_table(regions))
    _consistency_plot(work, summaries, truth, pmask, apix)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"data": meta, "runs": rows, "regions": regions, "amplitude_at_ang": core_res}, f, indent=1)


def plot_consistency(path, freq, curves, ylabel):
    """FSC(map, truth) and its gold-standard prediction sqrt(2 FSC_gs / (1 + FSC_gs)) per run, to ``path``.

    ``curves``: run name -> (gold-standard FSC, FSC of the map against the truth), per shell."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, (gs, vs_truth) in curves.items():
        pred = np.sqrt(np.clip(2 * gs / (1 + gs), 0, 1))
        line, = ax.plot(freq, vs_truth, label=f"{name}: measured FSC of the map against the truth")
        ax.plot(freq, pred, "--", color=line.get_color(), label=f"{name}: predicted from the half-maps")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel(ylabel)
    ax.set_title("Over-fitting check: gold-standard FSC predicts the FSC against the truth")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def _consistency_plot(work, summaries, truth, pmask, apix):
    """Gold-standard consistency of each run in the protein mask (see :func:`plot_consistency`)."""
    box = truth.shape[0]
    curves = {}
    for name in summaries:
        run = os.path.join(work, name)
        h1, h2 = _read_run_map(run, "half1"), _read_run_map(run, "half2")
        curves[name] = gs, vs_truth = (fsc.fsc_curve(h1 * pmask, h2 * pmask),
                                       fsc.fsc_curve((h1 + h2) / 2 * pmask, truth * pmask))
        pred = np.sqrt(np.clip(2 * gs / (1 + gs), 0, 1))
        sel = slice(1, box // 2)
        print(f"{name}: |FSC vs truth - prediction| mean {np.mean(np.abs(vs_truth[sel] - pred[sel])):.3f}, "
              f"max {np.max(np.abs(vs_truth[sel] - pred[sel])):.3f} over shells 1-{box // 2 - 1}")
    plot_consistency(os.path.join(work, "fsc_consistency.png"), np.arange(box // 2 + 1) / (box * apix), curves,
                     "FSC (protein mask)")
    print(f"plot: {os.path.join(work, 'fsc_consistency.png')}")


def _true_pose_map(data, work, n, pmask):
    """FSC-weighted (protein mask) reconstruction of the first ``n`` particles (all: None) at their true
    poses, the limit of any refinement of them; reconstructed into ``work`` once."""
    from nonuniform.engine import cli

    out = os.path.join(work, "truepose" if n is None else f"truepose_{n}")
    if not os.path.exists(os.path.join(out, "map_half2.mrc")):
        star = os.path.join(data, "particles.star")
        if n is not None:
            star = os.path.join(work, f"truepose_{n}_input", "particles.star")
            _write_subset(data, star, n)
        cli.main(["reconstruct", "--particles", star, "--out", os.path.join(out, "map.mrc"), "--halves"])
    t1, t2 = (io.read_mrc(os.path.join(out, f"map_half{h}.mrc"))[0] for h in (1, 2))
    return filters.apply_radial_filter((t1 + t2) / 2, filters.fsc_weighting(fsc.fsc_curve(t1 * pmask, t2 * pmask),
                                                                            zero_after_below=1e-4))


def bench_sweep(args):
    import json

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from nu_membrane_data import make_dataset

    work = os.path.abspath(args.work)
    data = os.path.join(work, "data")
    meta = make_dataset(data, n=max(args.counts))
    truth, apix = io.read_mrc(os.path.join(data, "truth.mrc"))
    labels = np.rint(io.read_mrc(os.path.join(data, "regions.mrc"))[0]).astype(int)
    pmask = _protein_mask(labels)
    truth_particles = load_particles(os.path.join(data, "particles.star"))
    res = {"uniform": {}, "nonuniform": {}, "nonuniform map_nu": {}, "true poses": {}}
    misassigned = {"uniform": {}, "nonuniform": {}}
    for n in sorted(args.counts):
        for mode, tag in (("uniform", "uniform"), ("nonuniform", "nu")):
            # The full-data runs of ``membrane`` are reused when the count is the whole data set.
            run = os.path.join(work, tag if n == meta["n_particles"] else f"sweep_{tag}_{n}")
            _refine(data, run, mode, "risk-wiener", n=None if n == meta["n_particles"] else n)
            row = _run_report(run, truth_particles, truth, pmask, apix)[0]
            res[mode][n] = row["map_vs_truth_fsc05_ang"]
            misassigned[mode][n] = row["fraction_misassigned_30deg"]
            if mode == "nonuniform":
                res["nonuniform map_nu"][n] = row["map_nu_vs_truth_fsc05_ang"]
            nu_map = f"; NU-filtered map {row['map_nu_vs_truth_fsc05_ang']:.2f} Å" if mode == "nonuniform" else ""
            print(f"{mode:10s} {n:6d} particles: {res[mode][n]:.2f} Å (FSC-0.5 vs truth, protein mask{nu_map}), "
                  f"{100 * misassigned[mode][n]:.1f} % > 30° off", flush=True)
        res["true poses"][n] = _truth_resolution(_true_pose_map(data, work, n, pmask), truth, pmask, apix)[0]
        print(f"true poses {n:6d} particles: {res['true poses'][n]:.2f} Å", flush=True)
    full_uniform = res["uniform"][max(args.counts)]
    counts = np.array(sorted(args.counts), float)
    target = 1 / full_uniform ** 2
    need = {}
    for key in ("nonuniform", "nonuniform map_nu"):
        # Particles NU needs to reach uniform's full-data resolution: log-linear interpolation of 1/d² vs log n.
        y = 1 / np.array([res[key][int(n)] for n in counts]) ** 2
        need[key] = None
        if y.max() >= target:
            k = int(np.argmax(y >= target))
            need[key] = counts[0] if k == 0 else float(np.exp(np.interp(target, [y[k - 1], y[k]],
                                                                        np.log([counts[k - 1], counts[k]]))))
        print(f"{key} reaches uniform's full-data resolution ({full_uniform:.2f} Å) with "
              + (f"{need[key]:.0f} particles ({100 * need[key] / counts[-1]:.0f} % of the data)" if need[key]
                 else "more particles than tried"))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for k, (mode, label, style) in enumerate((
            ("uniform", "uniform refinement (map.mrc)", "o-"),
            ("nonuniform", "non-uniform refinement (map.mrc)", "o-"),
            ("nonuniform map_nu", "non-uniform refinement (NU-filtered map_nu.mrc)", "s--"),
            ("true poses", "reconstruction at the true poses (the limit)", "^:"))):
        d = np.array([res[mode][int(n)] for n in counts])
        line, = ax.plot(counts, 1 / d ** 2, style, label=label)
        for n, v in zip(counts, d):
            ax.annotate(f"{v:.2f} Å", (n, 1 / v ** 2), textcoords="offset points", xytext=(-34 if k % 2 else 5, -3),
                        fontsize=7, color=line.get_color())
    ax.axhline(target, color="grey", ls=":", label=f"uniform with all {int(counts[-1])} particles")
    ax.set_xscale("log")
    ax.set_xticks(counts)
    ax.set_xticklabels([f"{int(n)}" for n in counts])
    ax.minorticks_off()
    ax.set_xlabel("number of particles")
    ax.set_ylabel("1 / resolution² (1/Å²), FSC 0.5 vs truth")
    ax.set_title("Resolution against particle count (membrane benchmark)")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_xlim(counts[0] / 1.3, counts[-1] * 1.3)
    top = max(1 / min(r.values()) ** 2 for r in res.values())
    ax.set_ylim(top=top * 1.3)  # room for the legend above the curves
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(os.path.join(work, "particle_sweep.png"))
    print(f"plot: {os.path.join(work, 'particle_sweep.png')}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"resolution_ang": {m: {str(k): v for k, v in r.items()} for m, r in res.items()},
                       "fraction_misassigned_30deg": {m: {str(k): v for k, v in r.items()}
                                                      for m, r in misassigned.items()},
                       "nu_particles_for_uniform_full_resolution": need}, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("filter")
    f.add_argument("--box", type=int, default=128)
    r = sub.add_parser("refine")
    r.add_argument("--out", required=True)
    r.add_argument("--n", type=int, default=5000)
    r.add_argument("--box", type=int, default=64)
    r.add_argument("--pixel-size", type=float, default=2.0)
    r.add_argument("--snr", type=float, default=0.1)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--phantom", choices=("membrane", "protein"), default="membrane")
    m = sub.add_parser("membrane")
    m.add_argument("--work", required=True)
    m.add_argument("--n", type=int, default=4000)
    m.add_argument("--objectives", nargs="*", default=["risk-wiener", "cv"])
    m.add_argument("--json")
    w = sub.add_parser("sweep")
    w.add_argument("--work", required=True)
    w.add_argument("--counts", type=int, nargs="+", default=[1000, 2000, 4000])
    w.add_argument("--json")
    args = ap.parse_args()
    {"filter": bench_filter, "refine": bench_refine, "membrane": bench_membrane, "sweep": bench_sweep}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
