"""The demo (``nonuniform demo``) and the evaluation it reports: resolution and pose errors vs truth."""

import json

import numpy as np
import pytest

from nonuniform.engine import geometry, io, phantoms, simulate
from nonuniform.engine.demo import evaluate_run, run_demo
from nonuniform.engine.particles import load_particles
from nonuniform.engine.particles_write import save_particles
from nonuniform.engine.pipeline import particle_rotations


def test_evaluate_run_reports_turned_frame(tmp_path):
    # A "run" whose map is the truth and whose poses are the true ones turned by 4° about z (the
    # map frame a refinement is free to pick): raw errors are 4°, frame-aligned ones 0.
    rng = np.random.default_rng(5)
    vol = phantoms.protein_phantom(32, 3.0, rng)
    sim = simulate.simulate_particles(vol, 120, 3.0, rng, snr=1.0)
    simulate.write_simulation(str(tmp_path / "data"), sim, 3.0, vol)
    truth = load_particles(str(tmp_path / "data" / "particles.star"))
    turned = particle_rotations(truth) @ geometry.euler_to_matrix(4.0, 0.0, 0.0)
    rot, tilt, psi = geometry.matrix_to_euler(turned)
    run = tmp_path / "run"
    run.mkdir()
    save_particles(str(run / "particles.star"), truth, rot, tilt, psi)
    io.write_mrc(str(run / "map.mrc"), vol, 3.0)
    ev, curves = evaluate_run(str(run), truth, vol, 3.0)
    # STAR files hold angles to 6 decimals: errors of ~1e-5°; 0.01° leaves room for the float32 maths.
    assert abs(ev["median_angular_error_deg"] - 4.0) < 0.01
    assert ev["median_angular_error_frame_aligned_deg"] < 0.01
    assert abs(ev["frame_rotation_deg"] - 4.0) < 0.01
    assert ev["fraction_angular_error_above_10deg"] == 0.0
    # The map is the truth: FSC 1 at every shell, so both thresholds sit at Nyquist (2 px = 6 Å).
    assert np.allclose(curves["map"][1:], 1.0, atol=1e-6)
    assert ev["map_vs_truth_fsc05_ang"] == ev["map_vs_truth_fsc0143_ang"] == 6.0
    assert "map_nu_vs_truth_fsc05_ang" not in ev


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    # Smallest demo whose refinements work: 300 membrane-like particles at SNR 1, box 48 at 3 Å/px
    # (a 115 Å particle: 3.8 resolution elements from the 30 Å start, see refine.MIN_START_ELEMENTS),
    # three iterations per mode; about 35 s on 2 cores.
    report = run_demo(str(tmp_path), n_particles=300, box=48, pixel_size_ang=3.0, snr=1.0, seed=2,
                      max_iterations=3)
    for name in ("report.json", "report.md", "fsc_vs_truth.png", "data/particles.star", "data/truth.mrc",
                 "uniform/map.mrc", "nonuniform/map_nu.mrc"):
        assert (tmp_path / name).exists(), name
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))
    assert (report["n_particles"], report["box"], report["snr"]) == (300, 48, 1.0)
    # Bounds from seeds 2, 3 and 4 of this set-up (measured): median angular error 5.0-11.3°, frame
    # rotation <= 2.3°, map vs truth at FSC 0.5 7.7-8.2 Å, gold-standard 6.2-7.0 Å (Nyquist 6 Å),
    # NU-filtered map 6.6-7.0 Å, always 0.8 Å or more better than the unfiltered one. A refinement
    # that does not orient the images (box 32 at 3-4 Å/px, seed 2: measured) ends at median errors
    # of 58-71° and maps at 15-17 Å, far outside.
    for mode in ("uniform", "nonuniform"):
        ev = report["runs"][mode]
        assert ev["iterations"] == 3 and ev["wall_seconds"] > 0
        assert ev["median_angular_error_deg"] < 20, (mode, ev)
        assert ev["frame_rotation_deg"] < 5, (mode, ev)
        assert 6.0 <= ev["map_vs_truth_fsc05_ang"] < 10.0, (mode, ev)
        assert 6.0 <= ev["gold_standard_resolution_ang"] < 9.0, (mode, ev)
    nu, uni = report["runs"]["nonuniform"], report["runs"]["uniform"]
    assert nu["map_nu_vs_truth_fsc05_ang"] < nu["map_vs_truth_fsc05_ang"] - 0.3, nu
    # NU refinement beats uniform against the truth: its NU-filtered map vs the uniform run's map
    # (what each mode hands the user) was 1.15-1.63 Å better over seeds 2-4; 0.5 Å is required.
    assert nu["map_nu_vs_truth_fsc05_ang"] < uni["map_vs_truth_fsc05_ang"] - 0.5, (nu, uni)
    assert "map_nu_vs_truth_fsc05_ang" not in report["runs"]["uniform"]
    md = (tmp_path / "report.md").read_text()
    assert "map frame aligned" in md and "| uniform | nonuniform |" in md
