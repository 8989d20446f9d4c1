"""Compare a refinement's poses and map with the simulation's ground truth.

    python benchmarks/evaluate.py SIMULATION_DIR REFINE_DIR

Prints the median/mean angular error (deg) and shift error (px) of every checkpoint and of the
final particles.star against the simulated poses, and the FSC-vs-truth resolutions (0.5 and
0.143) of the final map and of a reconstruction at the true poses.
"""

import argparse
import os

import numpy as np

from nonuniform.engine import fsc, geometry, io, particles, pipeline, refine_state


def pose_errors(truth, rotations, shifts_px):
    rt = pipeline.particle_rotations(truth)
    ang = geometry.angular_distance_deg(rt, rotations)
    st = -np.stack([truth.shift_x_ang, truth.shift_y_ang], -1) / truth.pixel_size_ang
    return ang, np.linalg.norm(st - shifts_px, axis=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sim")
    ap.add_argument("refine")
    a = ap.parse_args()
    truth = particles.load_particles(os.path.join(a.sim, "particles.star"))
    for _, ck in refine_state.checkpoint_files(a.refine):
        z = np.load(ck)
        ang, sh = pose_errors(truth, z["rotations"], z["shifts_px"])
        print(f"{os.path.basename(ck)}: angular error median {np.median(ang):.2f} deg, mean {ang.mean():.2f}, "
              f">10 deg {np.mean(ang > 10) * 100:.1f} %; shift error median {np.median(sh):.2f} px; "
              f"resolution {float(z['resolution_ang']):.2f} A")
    vt, apix = io.read_mrc(os.path.join(a.sim, "truth.mrc"))
    box = vt.shape[0]
    for name in ("map.mrc", "half1.mrc", "map_nu.mrc"):
        path = os.path.join(a.refine, name)
        if os.path.exists(path):
            v, _ = io.read_mrc(path)
            c = fsc.fsc_curve(v, vt)
            print(f"{name} vs truth: FSC 0.5 {fsc.resolution_at(c, box, apix, 0.5):.2f} A, "
                  f"0.143 {fsc.resolution_at(c, box, apix, 0.143):.2f} A")
    rec = pipeline.reconstruct_particles(truth, halves=True)
    c = fsc.fsc_curve(rec["map"], vt)
    ch = fsc.fsc_curve(rec["half1"], vt)
    print(f"true poses, full map vs truth: FSC 0.5 {fsc.resolution_at(c, box, apix, 0.5):.2f} A, "
          f"0.143 {fsc.resolution_at(c, box, apix, 0.143):.2f} A; half-map: "
          f"0.5 {fsc.resolution_at(ch, box, apix, 0.5):.2f} A")


if __name__ == "__main__":
    main()
