"""Commands on maps: ``nonuniform fsc``, ``nonuniform filter`` (the NU adaptive filter of two
half-maps) and ``nonuniform locres``, with the map-input checks they share (see :mod:`.cli`).
"""

import logging
import os
import time

import numpy as np

from .errors import InputError, require
from .io import check_output_folder, make_output_folder, read_mask, read_volume
from .regularize import DEFAULT_OBJECTIVE, MAP_GAIN_POWER, OBJECTIVES

logger = logging.getLogger("nonuniform")


# ----------------------------------------------------------------------------------------------
# input checks


def check_output_path(path):
    """Refuse, before any work, an output file whose folder cannot be created (as ``mkdir -p``) or
    written, or that is a folder."""
    if os.path.isdir(path):
        raise InputError(f"output {os.path.abspath(path)} is a folder, not a file name")
    check_output_folder(os.path.dirname(os.path.abspath(path)))


def _check_threshold(threshold):
    require(0 < threshold < 1, "--threshold", threshold, "in (0, 1)")


def _check_same_grid(a, apix_a, name_a, b, apix_b, name_b):
    if a.shape != b.shape:
        raise InputError(f"{name_b} has shape {b.shape} but {name_a} has {a.shape}")
    if apix_a > 0 and apix_b > 0 and abs(apix_a - apix_b) > 1e-3 * apix_a:
        raise InputError(f"{name_b} has pixel size {apix_b:.4f} Å but {name_a} has {apix_a:.4f} Å")


def _read_half_maps(args):
    """``--half1``, ``--half2`` and optional ``--mask``, validated: (half1, half2, pixel size, mask)."""
    v1, a1 = read_volume(args.half1, "half-map")
    v2, a2 = read_volume(args.half2, "half-map")
    _check_same_grid(v1, a1, args.half1, v2, a2, args.half2)
    for v, name in ((v1, args.half1), (v2, args.half2)):
        if float(v.std()) == 0.0:
            raise InputError(f"half-map {name} is constant (empty)")
    mask = None
    if args.mask:
        mask, am = read_mask(args.mask)
        _check_same_grid(v1, a1, args.half1, mask, am, args.mask)
    if not a1 > 0:
        raise InputError(f"{args.half1} has no pixel size in its header")
    return v1, v2, a1, mask


# ----------------------------------------------------------------------------------------------
# fsc


def add_fsc_args(p):
    p.add_argument("map1", help="first half-map (.mrc)")
    p.add_argument("map2", help="second half-map (.mrc)")
    p.add_argument("--mask", help="soft solvent mask (.mrc); adds masked and phase-randomization-"
                                  "corrected curves")
    p.add_argument("--out", default="fsc", help="output prefix: writes PREFIX.csv and PREFIX.png (missing folders "
                                                "are created)")
    p.add_argument("--threshold", type=float, default=0.143, help="FSC threshold of the reported resolution")
    p.add_argument("--pixel-size", type=float, help="pixel size in Å (default: from the map header)")
    p.add_argument("--seed", type=int, default=0, help="seed of the phase randomization")


def run_fsc(args):
    from . import fsc
    from .plots import plot_fsc

    check_output_path(args.out + ".csv")
    _check_threshold(args.threshold)
    require(args.pixel_size is None or (args.pixel_size > 0 and np.isfinite(args.pixel_size)), "--pixel-size",
            args.pixel_size, "a positive number of Å")
    require(args.seed >= 0, "--seed", args.seed, "a non-negative integer")
    v1, a1 = read_volume(args.map1, "map")
    v2, a2 = read_volume(args.map2, "map")
    _check_same_grid(v1, a1, args.map1, v2, a2, args.map2)
    for v, name in ((v1, args.map1), (v2, args.map2)):
        if float(v.std()) == 0.0:
            raise InputError(f"map {name} is constant: its FSC is undefined")
    apix = args.pixel_size or a1
    if not apix or apix <= 0:
        raise InputError(f"{args.map1} has no pixel size in its header; pass --pixel-size")
    box = v1.shape[0]
    if args.mask:
        mask, am = read_mask(args.mask)
        _check_same_grid(v1, a1, args.map1, mask, am, args.mask)
        res = fsc.corrected_fsc(v1, v2, mask, apix, np.random.default_rng(args.seed),
                                threshold=args.threshold)
        curves, resolutions = res.curves(), res.resolutions_ang()
        for w in res.warnings:
            logger.warning(w)
        headline = ("corrected", res.resolution_corrected_ang)
    else:
        curve = fsc.fsc_curve(v1, v2)
        r = fsc.resolution_at(curve, box, apix, args.threshold)
        curves, resolutions = {"fsc_unmasked": curve}, {"fsc_unmasked": r}
        headline = ("unmasked", r)
    make_output_folder(os.path.dirname(os.path.abspath(args.out)))
    fsc.write_fsc_csv(args.out + ".csv", curves, box, apix,
                      metadata={f"resolution_{k}_ang": f"{v:.4f}" for k, v in resolutions.items()})
    plot_fsc(args.out + ".png", curves, resolutions, apix, box, threshold=args.threshold,
             title=f"FSC of {os.path.basename(args.map1)} and {os.path.basename(args.map2)}")
    print(f"FSC={args.threshold:g} resolution ({headline[0]}): {headline[1]:.2f} Å")
    logger.info("wrote %s.csv and %s.png", args.out, args.out)
    return 0


# ----------------------------------------------------------------------------------------------
# filter


def _add_half_map_args(p, mask_help):
    """--half1, --half2, --out (a folder) and --mask, shared by ``filter`` and ``locres``."""
    p.add_argument("--half1", required=True, help="first half-map (.mrc)")
    p.add_argument("--half2", required=True, help="second half-map (.mrc), independent of the first")
    p.add_argument("--out", required=True, help="output folder (created with its parents if absent)")
    p.add_argument("--mask", help=mask_help)


def add_filter_args(p):
    _add_half_map_args(p, "solvent mask (.mrc): voxels outside get the lowest cutoff")
    p.add_argument("--awf", type=float, default=3.0, help="adaptive window factor (cryoSPARC refine_nu_awf)")
    p.add_argument("--order", type=int, default=8, help="Butterworth order (refine_nu_order)")
    p.add_argument("--n-cutoffs", type=int, default=50, help="number of candidate cutoffs up to Nyquist")
    p.add_argument("--filter-type", default="butterworth", choices=("butterworth", "gaussian", "rect"),
                   help="candidate low-pass kernel (refine_nu_filtertype)")
    p.add_argument("--objective", default=DEFAULT_OBJECTIVE, choices=OBJECTIVES,
                   help="risk-wiener: unbiased local-error estimate of candidates whose bands keep their local "
                        "Wiener gain; risk: the same estimate, plain low-pass candidates; cv: the paper's plain "
                        "cross-validation")


def run_filter(args):
    from .io import write_json, write_mrc
    from .regularize import check_nu_options, nu_filter

    check_nu_options(args.awf, args.order, args.n_cutoffs, args.filter_type, args.objective,
                     ("--awf", "--order", "--n-cutoffs", "--filter-type", "--objective"))
    check_output_folder(args.out)
    v1, v2, a1, mask = _read_half_maps(args)
    t0 = time.time()
    # Cross-validation between the two independent halves picks each voxel's cutoff; the
    # average of the halves is filtered with it (each half is one fold of the full data).
    res = nu_filter(v1, v2, half_map=(v1 + v2) / 2, pixel_size_ang=a1, awf=args.awf, order=args.order,
                    n_cutoffs=args.n_cutoffs, kind=args.filter_type, mask=mask, objective=args.objective,
                    gain_power=MAP_GAIN_POWER)
    dt = time.time() - t0
    make_output_folder(args.out)
    write_mrc(os.path.join(args.out, "filtered.mrc"), res.filtered, a1)
    write_mrc(os.path.join(args.out, "cutoff_ang.mrc"), res.cutoff_ang, a1)
    inside = res.cutoff_ang if mask is None else res.cutoff_ang[mask > 0.5]
    summary = {"half1": os.path.abspath(args.half1), "half2": os.path.abspath(args.half2),
               "awf": args.awf, "order": args.order, "n_cutoffs": args.n_cutoffs,
               "filter_type": args.filter_type, "objective": args.objective, "seconds": round(dt, 2),
               "cutoff_ang_percentiles": {str(q): float(np.percentile(inside, q)) for q in (5, 25, 50, 75, 95)}}
    write_json(os.path.join(args.out, "filter.json"), summary)
    logger.info("adaptive filter in %.1f s; cutoff median %.2f Å (5-95 %%: %.2f-%.2f Å) -> %s", dt,
                summary["cutoff_ang_percentiles"]["50"], summary["cutoff_ang_percentiles"]["5"],
                summary["cutoff_ang_percentiles"]["95"], args.out)
    return 0


# ----------------------------------------------------------------------------------------------
# locres


def add_locres_args(p):
    _add_half_map_args(p, "mask (.mrc): statistics and histogram inside it")
    p.add_argument("--threshold", type=float, default=0.143, help="local FSC threshold")
    p.add_argument("--window-factor", type=float, default=4.0,
                   help="window radius (2σ) in units of each band's wavelength")
    p.add_argument("--bands", type=int, default=24, help="number of frequency bands")


def run_locres(args):
    from .locres import local_resolution, write_locres_outputs

    _check_threshold(args.threshold)
    require(args.window_factor > 0 and np.isfinite(args.window_factor), "--window-factor", args.window_factor,
            "a positive number")
    require(args.bands >= 2, "--bands", args.bands, "at least 2")
    check_output_folder(args.out)
    v1, v2, a1, mask = _read_half_maps(args)
    t0 = time.time()
    res = local_resolution(v1, v2, a1, mask=mask, threshold=args.threshold, window_factor=args.window_factor,
                           n_bands=args.bands)
    make_output_folder(args.out)
    write_locres_outputs(args.out, res, a1)
    logger.info("local resolution in %.1f s: median %.2f Å (5-95 %%: %.2f-%.2f Å) -> %s", time.time() - t0,
                res.median_ang, res.percentiles_ang[5], res.percentiles_ang[95], args.out)
    return 0
