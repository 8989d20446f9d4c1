"""Are a refinement's misassigned particles a search failure, or does its reference not tell the poses apart?

    PYTHONPATH=. python benchmarks/nu_pseudosym.py --data DIR/data --run DIR/nu [--per-half 60]

For the particles whose refined pose is more than 30° from the truth (after turning the run's frame onto
the truth's, ``geometry.frame_alignment``; on pseudo-symmetric particles these are mostly rotations about
the ring axis), it runs the same local search (2° steps within 6°, shifts ±3 px) with the run's last
references and noise model twice: around the assigned pose and around the true pose (true shifts). If
the true pose's neighbourhood scored higher for most of them, a wider search (e.g. trying the
pseudo-symmetry mates) would fix them; if the scores are a tie, the data and reference cannot tell the
poses apart, and only a better reference (or more signal) can.
"""

import argparse
import glob
import os
import sys

import numpy as np

from nonuniform.engine import fourier, geometry
from nonuniform.engine.particles import load_particles, read_images
from nonuniform.engine.pipeline import particle_ctfs, particle_rotations
from nonuniform.engine.pose_search import SearchParams, local_search
from nonuniform.engine.project import Projector


def diagnose(data, run, per_half=60, threshold_deg=30.0):
    truth = load_particles(os.path.join(data, "particles.star"))
    refined = load_particles(os.path.join(run, "particles.star"))
    n = len(refined.rot_deg)
    t_rot, r_rot = particle_rotations(truth, np.arange(n)), particle_rotations(refined)
    err, g, _ = geometry.frame_alignment(t_rot, r_rot)
    z = np.load(sorted(glob.glob(os.path.join(run, "checkpoints", "iter*[0-9].npz")))[-1])
    out = {"fraction_misassigned": float(np.mean(err > threshold_deg))}
    box = refined.box_px
    kw = dict(step_deg=2.0, radius_deg=6.0, shift_range_px=3.0, shift_step_px=1.0,
              params=SearchParams(metric="likelihood"))
    diffs = []
    for h in (1, 2):
        idx = np.flatnonzero((err > threshold_deg) & (z["halves"] == h))[:per_half]
        if len(idx) == 0:
            continue
        proj = Projector(z["references"][h - 1], pad=2)
        s2 = z["sigma2"][h - 1]
        inv = (1.0 / np.maximum(s2, 1e-6 * s2.max())).astype(np.float32)
        images, ctfs = fourier.rfft2_c(read_images(refined, idx)), particle_ctfs(refined, idx)
        true_shift = -np.stack([truth.shift_x_ang[idx], truth.shift_y_ang[idx]], 1) / truth.pixel_size_ang
        assigned = local_search(proj, images, ctfs, inv, box // 2 - 1, r_rot[idx], z["shifts_px"][idx], **kw)
        true = local_search(proj, images, ctfs, inv, box // 2 - 1, t_rot[idx] @ g, true_shift, **kw)
        diffs.append(true.scores - assigned.scores)
    d = np.concatenate(diffs) if diffs else np.zeros(0)
    out.update({"tested": int(len(d)), "fraction_true_scores_higher": float(np.mean(d > 0)) if len(d) else None,
                "median_loglik_true_minus_assigned": float(np.median(d)) if len(d) else None,
                "fraction_true_higher_by_3": float(np.mean(d > 3)) if len(d) else None})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--per-half", type=int, default=60)
    a = ap.parse_args()
    r = diagnose(a.data, a.run, a.per_half)
    print(f"{a.run}: {100 * r['fraction_misassigned']:.1f} % of particles > 30° from the truth; of {r['tested']} "
          f"tested, the true pose's neighbourhood scores higher for {100 * r['fraction_true_scores_higher']:.0f} % "
          f"(by > 3 log-likelihood units for {100 * r['fraction_true_higher_by_3']:.0f} %), median difference "
          f"{r['median_loglik_true_minus_assigned']:+.1f}")


if __name__ == "__main__":
    sys.exit(main())
