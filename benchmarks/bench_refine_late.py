"""Re-run the last iterations of a finished ``nonuniform refine`` run with other search settings.

    python benchmarks/bench_refine_late.py --run O --data D --out X [--from 4] [--set KEY=VALUE ...]
        [--local-radius 1.5] [--local-final 0.5] [--local-prior 0] [--from-truth] [--mask M.mrc]

Copies the checkpoints 1..``--from`` of run ``O`` (made by ``bench_refine.py ours``) into ``X`` and
resumes there with ``O``'s configuration, changed by ``--set`` (``RefineConfig`` fields, values as
JSON: ``--set posterior_poses=32 --set min_global_iterations=6``). Then prints one line: wall
seconds, the map's FSC against ``D/truth.mrc`` at 0.5 and 0.143 (and with ``--mask`` applied to
map and truth), the angular error against the true poses, the mean largest posterior and poses
per particle.

The local search's neighbourhood is not a ``refine`` option (the engine searches 1.5 steps around
each pose down to half a step, without a prior); ``--local-radius``, ``--local-final`` (final step
as a fraction of the step) and ``--local-prior`` (RELION-like Gaussian prior on the rotation, sigma
in steps; 0 = none) change it here for experiments. ``--from-truth`` replaces the poses of the
starting checkpoint by the TRUE ones (``D/particles.star``): where the same refinement settles from
there is the accuracy the data allow.

Used for the "where the gap comes from" table of ``figures/bench_refine_5000_box96.txt``.
"""

import argparse
import json
import logging
import os
import shutil
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from nonuniform.engine import estep, fsc, geometry, io, particles, pipeline
from nonuniform.engine.refine import RefineConfig, Refinement


def _patch_local_search(radius, final, prior):
    """Wrap ``estep.local_search`` so the refinement uses the given neighbourhood (in steps)."""
    original = estep.local_search

    def local_search(*args, step_deg, radius_deg, final_step_deg=None, params=None, **kw):
        if prior and params.metric == "likelihood":
            kw["sigma_rot_deg"] = prior * step_deg
        return original(*args, step_deg=step_deg, radius_deg=radius * step_deg,
                        final_step_deg=final * step_deg, params=params, **kw)

    estep.local_search = local_search


def _resolutions(vol, truth, apix):
    c = fsc.fsc_curve(vol - vol.mean(), truth - truth.mean())
    return fsc.resolution_at(c, vol.shape[0], apix, 0.5), fsc.resolution_at(c, vol.shape[0], apix, 0.143)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a finished run of ours (with checkpoints/)")
    ap.add_argument("--data", required=True, help="bench_refine.py simulate's folder (truth.mrc, particles.star)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--from", dest="start", type=int, default=4, help="resume after this iteration (default 4)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="RefineConfig field (JSON value)")
    ap.add_argument("--local-radius", type=float, default=1.5, help="local search radius in steps (default 1.5)")
    ap.add_argument("--local-final", type=float, default=0.5, help="final local step, fraction of the step (0.5)")
    ap.add_argument("--local-prior", type=float, default=0.0, help="rotation prior sigma in steps (0: none)")
    ap.add_argument("--from-truth", action="store_true", help="start from the true poses")
    ap.add_argument("--mask", help="also compare map and truth with this mask applied")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    data = os.path.abspath(a.data)
    if os.path.exists(a.out):
        sys.exit(f"{a.out} exists")
    for need in [os.path.join(a.run, "config.json"), os.path.join(data, "truth.mrc")] + [
            os.path.join(a.run, "checkpoints", f"iter{i:03d}.npz") for i in range(1, a.start + 1)]:
        if not os.path.exists(need):
            sys.exit(f"{need}: no such file (--run must be a finished run with checkpoints up to --from)")
    os.makedirs(os.path.join(a.out, "checkpoints"))
    for i in range(1, a.start + 1):
        for ext in ("npz", "json"):
            shutil.copy(os.path.join(a.run, "checkpoints", f"iter{i:03d}.{ext}"), os.path.join(a.out, "checkpoints"))
    truth_particles = particles.load_particles(os.path.join(data, "particles.star"), require_ctf=False)
    true_rot = pipeline.particle_rotations(truth_particles)
    if a.from_truth:
        path = os.path.join(a.out, "checkpoints", f"iter{a.start:03d}.npz")
        z = dict(np.load(path))
        z["rotations"], z["shifts_px"] = true_rot, pipeline.image_shifts_px(truth_particles)
        with open(path, "wb") as f:
            np.savez(f, **z)

    with open(os.path.join(a.run, "config.json")) as f:
        cfg = json.load(f)
    star = cfg.pop("particles")
    for key in ("version", "argv"):
        cfg.pop(key, None)
    for item in a.set:
        key, _, value = item.partition("=")
        cfg[key] = json.loads(value)
    _patch_local_search(a.local_radius, a.local_final, a.local_prior)

    t0 = time.time()
    r = Refinement(star, os.path.join(data, "init.mrc"), a.out, RefineConfig(**cfg), resume=True)
    st = r.run(resume=True)
    wall = time.time() - t0

    truth, apix = io.read_mrc(os.path.join(data, "truth.mrc"))
    vol, _ = io.read_mrc(os.path.join(a.out, "map.mrc"))
    r05, r0143 = _resolutions(vol, truth, apix)
    masked = ""
    if a.mask:
        m, _ = io.read_mrc(a.mask)
        masked = " masked {:.2f} / {:.2f},".format(*_resolutions(vol * m, truth * m, apix))
    ang = geometry.angular_distance_deg(true_rot, st.rotations)
    print(f"{a.out}: {wall:.0f} s, vs truth 0.5 / 0.143 {r05:.2f} / {r0143:.2f} Å,{masked} angular error median "
          f"{np.median(ang):.2f}° mean {ang.mean():.2f}° > 10° {100 * np.mean(ang > 10):.1f} %, mean max posterior "
          f"{st.pmax.mean():.3f}, {st.n_poses.mean():.1f} poses per particle")


if __name__ == "__main__":
    main()
