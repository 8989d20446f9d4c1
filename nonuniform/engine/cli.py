"""Command line: ``nonuniform <command> ...`` (also ``python -m nonuniform.engine``); the commands
on maps (``fsc``, ``filter``, ``locres``) live in :mod:`.cli_maps`.

Every command validates its inputs first; bad input ends with one message naming the culprit and
exit status 2, and outputs are written atomically, so a failed run leaves no partial files.
"""

import argparse
import logging
import os
import sys
import time

import numpy as np

from . import fourier
from .cli_maps import (add_filter_args, add_fsc_args, add_locres_args, check_output_path, run_filter, run_fsc,
                       run_locres)
from .distributed import launched_rank
from .errors import InputError, require
from .io import check_output_folder, make_output_folder
from .regularize import OBJECTIVES

logger = logging.getLogger("nonuniform")


# ----------------------------------------------------------------------------------------------
# helpers


def _progress(total, desc):
    """A tqdm progress bar on stderr (silent when stderr is not a terminal or tqdm is missing)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is an install requirement
        return None
    return tqdm(total=total, desc=desc, unit="ptcl", file=sys.stderr, disable=not sys.stderr.isatty(),
                leave=False)


# ----------------------------------------------------------------------------------------------
# simulate


def add_simulate_args(p):
    p.add_argument("--out", required=True, help="output folder (created with its parents; must be empty or absent)")
    p.add_argument("--phantom", choices=("protein", "membrane"), default="protein",
                   help="protein-like map with fine detail, or membrane-protein-like (ordered core, "
                        "disordered belt, flexible domain)")
    p.add_argument("--n-particles", type=int, default=1000, help="number of particle images")
    p.add_argument("--box", type=int, default=96, help="box size in px")
    p.add_argument("--pixel-size", type=float, default=1.5, help="pixel size in Å")
    p.add_argument("--snr", type=float, default=0.05,
                   help="signal-to-noise ratio (variance of signal / variance of noise); 0 = noiseless")
    p.add_argument("--seed", type=int, default=0, help="seed of the phantom, poses, CTFs and noise")


def run_simulate(args):
    from . import membrane, phantoms, simulate

    require(args.n_particles >= 1, "--n-particles", args.n_particles, "at least 1")
    require(args.box >= 16, "--box", args.box, "at least 16 px")
    require(args.pixel_size > 0 and np.isfinite(args.pixel_size), "--pixel-size", args.pixel_size,
            "a positive number of Å")
    require(args.snr >= 0, "--snr", args.snr, "0 (noiseless) or positive")  # inf is noiseless too
    require(args.seed >= 0, "--seed", args.seed, "a non-negative integer")
    check_output_folder(args.out, must_be_empty=True)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    try:
        if args.phantom == "protein":
            truth = source = phantoms.protein_phantom(args.box, args.pixel_size, rng)
        else:
            source = membrane.membrane_phantom(args.box, args.pixel_size, rng)
            truth = source.truth()
    except ValueError as exc:  # the phantom does not fit the box
        raise InputError(f"--box {args.box} / --pixel-size {args.pixel_size}: {exc}") from None
    sim = simulate.simulate_particles(source, args.n_particles, args.pixel_size, rng,
                                      snr=args.snr if args.snr > 0 else np.inf)
    paths = simulate.write_simulation(args.out, sim, args.pixel_size, truth)
    logger.info("simulated %d particles (%s phantom, box %d, %.3f Å/px, SNR %g) in %.1f s -> %s",
                args.n_particles, args.phantom, args.box, args.pixel_size, args.snr,
                time.time() - t0, paths["star"])
    return 0


# ----------------------------------------------------------------------------------------------
# reconstruct


def add_reconstruct_args(p):
    p.add_argument("--particles", required=True, help="RELION STAR file with poses and CTF")
    p.add_argument("--out", required=True,
                   help="output map (.mrc; missing folders are created); with --halves also *_half1/2.mrc")
    p.add_argument("--halves", action="store_true",
                   help="also reconstruct the two half-sets (rlnRandomSubset, or a seeded random split)")
    p.add_argument("--sym", default="C1", help="point group (RELION names: C1, Cn, Dn, T, O, I...)")
    p.add_argument("--no-ctf", action="store_true", help="ignore CTF columns (and allow their absence)")
    p.add_argument("--pad", type=int, default=2, help="Fourier oversampling factor of the reconstruction")
    p.add_argument("--seed", type=int, default=0, help="seed of the half-set split when none is given")


def run_reconstruct(args):
    from . import symmetry
    from .io import write_mrc
    from .particles import load_particles
    from .pipeline import reconstruct_particles

    symmetry.symmetry_matrices(args.sym)  # validates the name before any work
    require(args.pad >= 1, "--pad", args.pad, "at least 1")
    require(args.seed >= 0, "--seed", args.seed, "a non-negative integer")
    check_output_path(args.out)
    particles = load_particles(args.particles, require_ctf=not args.no_ctf)
    if args.no_ctf:
        particles.has_ctf = False
    t0 = time.time()
    bar = _progress(len(particles), "reconstruct")
    out = reconstruct_particles(particles, sym=args.sym, halves=args.halves, pad=args.pad, seed=args.seed,
                                progress=None if bar is None else bar.update)
    if bar is not None:
        bar.close()
    stem = args.out[:-4] if args.out.endswith(".mrc") else args.out
    make_output_folder(os.path.dirname(os.path.abspath(args.out)))
    write_mrc(args.out, out["map"], particles.pixel_size_ang)
    if args.halves:
        write_mrc(stem + "_half1.mrc", out["half1"], particles.pixel_size_ang)
        write_mrc(stem + "_half2.mrc", out["half2"], particles.pixel_size_ang)
    dt = time.time() - t0
    logger.info("reconstructed %d particles (box %d, %s) in %.1f s (%.0f particles/s) -> %s",
                len(particles), particles.box_px, args.sym, dt, len(particles) / dt, args.out)
    return 0


# ----------------------------------------------------------------------------------------------
# refine


def add_refine_args(p):
    from .refine_state import RefineConfig

    d = RefineConfig()
    p.add_argument("--particles", required=True, help="RELION STAR file with CTF parameters")
    p.add_argument("--ref", required=True, help="initial model (.mrc); resampled if box/pixel size differ")
    p.add_argument("--out", required=True, help="output folder (created with its parents; must be empty unless "
                                                "--continue or --overwrite)")
    p.add_argument("--mode", choices=("nonuniform", "uniform"), default=d.mode,
                   help="regularizer: the non-uniform cross-validated adaptive filter, or the uniform FSC filter")
    p.add_argument("--mask", help="static solvent mask (.mrc, values in [0, 1], on the particles' grid) instead "
                                  "of the dynamic mask")
    p.add_argument("--sym", default=d.sym, help="point group (RELION names: C1, Cn, Dn, T, O, I...)")
    p.add_argument("--diameter-ang", type=float, help="particle diameter in Å (default: 0.8 × the box)")
    p.add_argument("--initial-lowpass-ang", type=float, default=d.initial_lowpass_ang,
                   help="low-pass of the initial model in Å")
    p.add_argument("--gsfsc-split-ang", type=float, default=d.gsfsc_split_ang,
                   help="the half-sets' references share frequencies below this resolution in Å (0: never)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the half-set split and the searches")
    p.add_argument("--iterations", type=int, default=d.max_iterations, help="maximum number of iterations")
    p.add_argument("--extra-final-passes", type=int, default=d.extra_final_passes,
                   help="iterations run after convergence is declared")
    p.add_argument("--no-marginalize", dest="marginalize", action="store_false",
                   help="backproject each particle at its best pose only, not at its top poses "
                        "weighted by their posterior probabilities")
    p.add_argument("--posterior-poses", type=int, default=d.posterior_poses,
                   help="poses per particle kept for the posterior (more: closer to full marginalization, "
                        "slower backprojection)")
    p.add_argument("--min-posterior", type=float, default=d.min_posterior,
                   help="drop poses whose posterior probability is below this")
    p.add_argument("--awf", type=float, default=d.awf,
                   help="NU adaptive window factor: window radius in wavelengths of the voxel's cutoff")
    p.add_argument("--nu-order", type=int, default=d.nu_order, help="NU Butterworth order")
    p.add_argument("--nu-cutoffs", type=int, default=d.nu_cutoffs,
                   help="NU number of candidate cutoffs, up to Nyquist")
    p.add_argument("--nu-filter-type", default=d.nu_filter_type, choices=("butterworth", "gaussian", "rect"),
                   help="NU candidate low-pass kernel")
    p.add_argument("--nu-objective", default=d.nu_objective, choices=OBJECTIVES,
                   help="how each voxel's candidates are compared: risk-wiener (default) rates each candidate by an unbiased "
                        "estimate of the filtered map's local error and keeps the bands below its cutoff at "
                        "their local Wiener gain; risk: the same estimate, plain low-pass candidates; cv: the "
                        "paper's plain cross-validation (cuts the core's partly informative bands)")
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="resume a killed or finished run from its last checkpoint (same outputs as an "
                        "uninterrupted run)")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty output folder")
    p.add_argument("--scratch", metavar="DIR", help="copy the image stacks to DIR (a fast local disk) first and "
                   "read them from there; copies already in DIR are reused")
    p.add_argument("--batch", type=int, default=d.batch, help="images aligned per batch: the unit of work "
                   "shared out to MPI ranks (memory grows with it)")
    p.add_argument("--gpu", metavar="ID", help="run the pose search, backprojection, reconstruction and NU "
                   "regularization on CUDA device ID (needs the gpu extra: cupy); one device per process")


def gpu_id(text):
    """The device id of ``--gpu``: one non-negative integer (InputError otherwise)."""
    if text is None:
        return None
    t = str(text).strip()
    if not t.isdigit():
        raise InputError(f"--gpu {text!r}: expected one CUDA device id (0, 1, ...); one process drives one GPU")
    return int(t)


def run_refine(args):
    from .refine import RefineConfig, Refinement

    cfg = RefineConfig(gpu=gpu_id(args.gpu), batch=args.batch, scratch=args.scratch, mode=args.mode, sym=args.sym, diameter_ang=args.diameter_ang,
                       initial_lowpass_ang=args.initial_lowpass_ang, gsfsc_split_ang=args.gsfsc_split_ang,
                       seed=args.seed, max_iterations=args.iterations, extra_final_passes=args.extra_final_passes,
                       awf=args.awf, nu_order=args.nu_order, nu_cutoffs=args.nu_cutoffs,
                       nu_filter_type=args.nu_filter_type, nu_objective=args.nu_objective, mask_path=args.mask, marginalize=args.marginalize,
                       posterior_poses=args.posterior_poses, min_posterior=args.min_posterior)
    Refinement(args.particles, args.ref, args.out, cfg, resume=args.resume, overwrite=args.overwrite).run(
        resume=args.resume)
    return 0


# ----------------------------------------------------------------------------------------------
# demo


def add_demo_data_args(p):
    """The demo's data and refinement options (also those of the Scipion demo workflow)."""
    p.add_argument("--n-particles", type=int, default=2000, help="number of simulated particles")
    p.add_argument("--box", type=int, default=64, help="box size in px")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulation and the refinements")
    p.add_argument("--pixel-size", type=float, default=2.0, help="pixel size in Å")
    p.add_argument("--snr", type=float, default=0.1, help="signal-to-noise ratio of the simulated images")
    p.add_argument("--iterations", type=int, default=12, help="maximum iterations of each refinement")


def add_demo_args(p):
    p.add_argument("--out", default="nonuniform-demo", help="output folder (must be empty or absent)")
    add_demo_data_args(p)
    p.add_argument("--scipion", nargs="?", const="nonuniform-scipion-demo", metavar="DIR",
                   help="instead, build a Scipion project in DIR (default nonuniform-scipion-demo; --out is "
                        "ignored) with the NU, uniform and, when scipion-em-relion and RELION are installed, "
                        "RELION refinements and their comparison (nonuniform/workflows/scipion_demo.py)")
    p.add_argument("--no-relion", action="store_true", help="with --scipion: leave RELION's refinement out")


def run_demo(args):
    from .demo import run_demo as demo
    from .refine import MIN_PARTICLES_PER_HALF

    if args.scipion:
        # The Scipion workflow runs in its own interpreter: the engine never imports Scipion.
        import subprocess

        cmd = [sys.executable, "-m", "nonuniform.workflows.scipion_demo", args.scipion,
               "--n-particles", str(args.n_particles), "--box", str(args.box), "--pixel-size", str(args.pixel_size),
               "--snr", str(args.snr), "--iterations", str(args.iterations), "--seed", str(args.seed),
               "--threads", str(getattr(args, "threads", None) or 2), *(["--no-relion"] if args.no_relion else [])]
        return subprocess.run(cmd).returncode

    require(args.n_particles >= 2 * MIN_PARTICLES_PER_HALF, "--n-particles", args.n_particles,
            f"at least {2 * MIN_PARTICLES_PER_HALF}")
    require(args.box >= 32 and args.box % 2 == 0, "--box", args.box, "even and at least 32 px")
    require(args.seed >= 0, "--seed", args.seed, "a non-negative integer")
    check_output_folder(args.out, must_be_empty=True, hint="; give another --out")
    t0 = time.time()
    demo(args.out, n_particles=args.n_particles, box=args.box, pixel_size_ang=args.pixel_size, snr=args.snr,
         seed=args.seed, max_iterations=args.iterations)
    logger.info("demo finished in %.0f s: see %s", time.time() - t0, os.path.join(args.out, "report.md"))
    with open(os.path.join(args.out, "report.md")) as f:
        print(f.read())
    return 0


# ----------------------------------------------------------------------------------------------

COMMANDS = {
    "demo": (add_demo_args, run_demo, "simulate a membrane-like dataset, refine it uniform and NU, report"),
    "simulate": (add_simulate_args, run_simulate, "simulate a particle stack from a phantom"),
    "reconstruct": (add_reconstruct_args, run_reconstruct, "reconstruct a map at the STAR file's poses"),
    "fsc": (add_fsc_args, run_fsc, "Fourier shell correlation of two maps (CSV + PNG)"),
    "refine": (add_refine_args, run_refine, "gold-standard 3-D refinement (non-uniform or uniform)"),
    "locres": (add_locres_args, run_locres, "local resolution map (band-wise local FSC) of two half-maps"),
    "filter": (add_filter_args, run_filter, "non-uniform (cross-validated, locally adaptive) filter of two half-maps"),
}


DESCRIPTION = ("Non-uniform refinement for single-particle cryo-EM: simulate data, reconstruct, refine, filter "
               "and measure maps. 'nonuniform COMMAND --help' lists a command's options.")


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default, except unset ones (None) and switches (False)."""

    def _get_help_string(self, action):
        help_ = action.help or ""
        default = action.default
        if ("%(default)" in help_ or "(default" in help_ or default in (None, False, argparse.SUPPRESS)
                or not action.option_strings):
            return help_
        return help_ + " (default: %(default)s)"


def build_parser():
    from .. import __version__

    parser = argparse.ArgumentParser(prog="nonuniform", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"nonuniform {__version__}")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for FFTs and kernels (default: all cores)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (add_args, _, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".",
                           formatter_class=HelpFormatter)
        add_args(p)
        # Also accepted after the command (``nonuniform refine ... --threads 2``).
        p.add_argument("--threads", type=int, default=argparse.SUPPRESS,
                       help="CPU threads for FFTs and kernels (default: all cores)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = launched_rank()
    # Under MPI rank 0 speaks for the run; the other ranks log only a failure of their own (CRITICAL:
    # the input errors every rank finds alike are logged once, by rank 0).
    logging.basicConfig(level=(logging.DEBUG if args.verbose else logging.INFO) if rank == 0 else logging.CRITICAL,
                        format="%(asctime)s %(levelname)s %(message)s" if rank == 0
                        else f"%(asctime)s rank {rank} %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.threads is not None:
        if args.threads < 1:
            logger.error("--threads must be at least 1, not %d", args.threads)
            return 2
        fourier.set_workers(args.threads)
        try:
            import numba

            numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
        except ImportError:  # pragma: no cover
            pass
    try:
        return COMMANDS[args.command][1](args)
    except InputError as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
