"""The demo (``nonuniform demo``) and the evaluation it reports: resolution and pose errors vs truth."""

import json

import numpy as np

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


def test_demo_end_to_end(tmp_path):
    # Smallest demo that runs every step: 300 membrane-like particles, box 32, two iterations per
    # mode. Far too small to orient the images from the 30 Å start (a 77 Å particle: see
    # refine.MIN_START_ELEMENTS), so this checks the report, not the science (benchmarks/bench_nu.py).
    report = run_demo(str(tmp_path), n_particles=300, box=32, pixel_size_ang=3.0, snr=0.5, seed=2,
                      max_iterations=2)
    for name in ("report.json", "report.md", "fsc_vs_truth.png", "data/particles.star", "data/truth.mrc",
                 "uniform/map.mrc", "nonuniform/map_nu.mrc"):
        assert (tmp_path / name).exists(), name
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))
    assert (report["n_particles"], report["box"], report["snr"]) == (300, 32, 0.5)
    for mode in ("uniform", "nonuniform"):
        ev = report["runs"][mode]
        assert ev["iterations"] == 2 and ev["wall_seconds"] > 0
        assert 0 <= ev["median_angular_error_deg"] <= 180 and 0 <= ev["frame_rotation_deg"] <= 180
        # Resolutions between Nyquist (6 Å) and the box (96 Å).
        assert 6.0 <= ev["map_vs_truth_fsc05_ang"] <= 96.0 and 6.0 <= ev["gold_standard_resolution_ang"] <= 96.0
    assert "map_nu_vs_truth_fsc05_ang" in report["runs"]["nonuniform"]
    assert "map_nu_vs_truth_fsc05_ang" not in report["runs"]["uniform"]
    md = (tmp_path / "report.md").read_text()
    assert "map frame aligned" in md and "| uniform | nonuniform |" in md
