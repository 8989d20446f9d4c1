"""The harder membrane-like benchmark of the NU-quality work: data set, true-pose maps, region masks.

A small asymmetric membrane protein (about 30 kDa: a pseudo-6-fold ring of transmembrane helices around
a central one, plus a flexible soluble domain) in a detergent belt that is about half of the particle's
mass and differs from particle to particle; realistic CTF (1-2.5 µm underfocus, 300 kV), SNR 0.05 over
the particle disc, 1.5 Å/px so that Nyquist (3 Å) is well beyond what the data support.

    python benchmarks/nu_membrane_data.py --out DIR [--n 4000] [--box 96] [--pixel-size 1.5] [--snr 0.05]

writes DIR/particles.{star,mrcs} (true poses), truth.mrc, regions.mrc (0 solvent, 1 rigid core, 2 belt,
3 flexible domain), init.mrc (truth low-passed to 30 Å) and dataset.json (masses, SNR over the box).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from nonuniform.engine import filters, io, membrane, simulate


def make_dataset(out, n=4000, box=96, pixel_size=1.5, snr=0.05, seed=7):
    """Simulate the data set into ``out`` (skipped when ``out/dataset.json`` exists); returns its description."""
    meta_path = os.path.join(out, "dataset.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            return json.load(f)
    t = time.time()
    rng = np.random.default_rng(seed)
    ph = membrane.membrane_phantom(box, pixel_size, rng)
    truth = ph.truth()
    sim, clean = simulate.simulate_particles(ph, n, pixel_size, rng, snr=snr, return_clean=True)
    simulate.write_simulation(out, sim, pixel_size, truth)
    io.write_mrc(os.path.join(out, "regions.mrc"), ph.regions().astype(np.float32), pixel_size)
    io.write_mrc(os.path.join(out, "init.mrc"), filters.lowpass_cosine(truth, pixel_size, 30.0), pixel_size)
    core, belt, flex = (float(v.sum()) for v in (ph.core, ph.belt, truth - ph.core - ph.belt))
    residues = len(ph.core_atoms.coords_ang) + len(ph.flexible_atoms.coords_ang)
    # SNR over the whole box: mean per-image signal variance over the box / noise variance.
    noise_var = float(np.var(sim.images[:200] - clean[:200]))
    snr_box = float(np.mean(np.var(clean[:200], axis=(1, 2)))) / noise_var
    del clean
    meta = {"n_particles": n, "box": box, "pixel_size_ang": pixel_size, "snr_particle_disc": snr,
            "snr_over_box": snr_box, "seed": seed, "protein_kda": round(residues * 0.110, 1),
            "belt_mass_fraction": belt / (core + belt + flex), "flexible_fraction_of_protein": flex / (core + flex),
            "flex_sigma_deg": ph.flex_sigma_deg, "belt_variation": ph.belt_scale,
            "seconds": round(time.time() - t, 1)}
    with open(meta_path + ".tmp", "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(meta_path + ".tmp", meta_path)
    return meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--box", type=int, default=96)
    ap.add_argument("--pixel-size", type=float, default=1.5)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    print(json.dumps(make_dataset(a.out, a.n, a.box, a.pixel_size, a.snr, a.seed), indent=1))


if __name__ == "__main__":
    sys.exit(main())
