"""Refinement driver: outputs, resume after a kill, determinism, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from nonuniform.engine import cli, io
from nonuniform.engine.refine import RefineConfig, Refinement, resample_map
from .conftest import write_tiny_simulation


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Box 32, 3 Å/px, 300 particles at SNR 0.5: a few seconds per iteration."""
    return write_tiny_simulation(tmp_path_factory.mktemp("tiny"), 300, seed=3)


def _refine(tiny, out, *extra):
    return cli.main(["refine", "--particles", str(tiny / "particles.star"), "--ref", str(tiny / "truth.mrc"),
                     "--out", str(out), "--nu-cutoffs", "12", *extra])


def test_refine_outputs(tiny, tmp_path):
    out = tmp_path / "run"
    assert _refine(tiny, out, "--iterations", "2") == 0
    for name in ("half1.mrc", "half2.mrc", "map.mrc", "map_sharp.mrc", "map_nu.mrc", "mask.mrc",
                 "cutoff_half1.mrc", "cutoff_half2.mrc", "fsc.csv", "fsc.png", "particles.star",
                 "summary.json", "config.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 2 and len(summary["history"]) == 2
    # A 30 Å start on 300 particles at SNR 0.5 resolves better than the start (Nyquist 6 Å).
    assert summary["resolution_ang"] < 20
    parts = io.read_star(str(out / "particles.star"))["particles"]
    assert set(np.unique(parts["rlnRandomSubset"])) == {1, 2}
    config = json.loads((out / "config.json").read_text())
    assert config["mode"] == "nonuniform" and config["awf"] == 3.0


def test_resume_matches_uninterrupted_run(tiny, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _refine(tiny, a, "--mode", "uniform", "--iterations", "3") == 0
    assert _refine(tiny, b, "--mode", "uniform", "--iterations", "2") == 0
    assert _refine(tiny, b, "--mode", "uniform", "--iterations", "3", "--continue") == 0
    ha, _ = io.read_mrc(str(a / "half1.mrc"))
    hb, _ = io.read_mrc(str(b / "half1.mrc"))
    # Per-iteration seeds and deterministic kernels: the resumed run is the same computation.
    assert np.array_equal(ha, hb)


def test_kill_then_continue(tiny, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "nonuniform.engine", "refine", "--particles", str(tiny / "particles.star"),
           "--ref", str(tiny / "truth.mrc"), "--out", str(out), "--mode", "uniform", "--iterations", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((out / "checkpoints").glob("iter001.npz")) if (out / "checkpoints").exists() else True:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists()
    # Without --continue the folder is refused; with it the run completes.
    assert subprocess.run(cmd, capture_output=True).returncode == 2
    assert subprocess.run(cmd + ["--continue"], capture_output=True).returncode == 0
    assert json.loads((out / "summary.json").read_text())["iterations"] == 4
    assert not [f for f in os.listdir(out) if f.startswith(".")]


def test_reference_resampled_with_warning(tiny, tmp_path, caplog):
    vol, apix = io.read_mrc(str(tiny / "truth.mrc"))
    big = resample_map(vol, apix, 48, 2.0)
    io.write_mrc(str(tmp_path / "big.mrc"), big, 2.0)
    back = resample_map(big, 2.0, 32, apix)
    # Fourier resampling there and back keeps the map (up to the band limit of the coarser grid).
    assert np.corrcoef(back.ravel(), vol.ravel())[0, 1] > 0.98
    ref = Refinement(str(tiny / "particles.star"), str(tmp_path / "big.mrc"), str(tmp_path / "o"),
                     RefineConfig(max_iterations=1))
    assert ref.ref0.shape == (32, 32, 32)
    assert any("resampling" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_coarse_start_warns(tiny, tmp_path, caplog):
    # Box 32 at 3 Å/px: the default particle diameter is 0.8 x 96 = 76.8 Å, 2.6 resolution elements
    # of the default 30 Å start (below 3): warned, with the finer start it suggests (76.8 / 4 Å).
    star, ref = str(tiny / "particles.star"), str(tiny / "truth.mrc")
    Refinement(star, ref, str(tmp_path / "a"), RefineConfig(max_iterations=1))
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "initial low-pass" in r.getMessage()]
    assert len(warned) == 1 and "2.6 resolution elements" in warned[0] and "19 Å" in warned[0], warned
    caplog.clear()
    Refinement(star, ref, str(tmp_path / "b"), RefineConfig(max_iterations=1, initial_lowpass_ang=20.0))
    assert not [r for r in caplog.records if "initial low-pass" in r.getMessage()]


def test_refine_bad_input(tiny, tmp_path, caplog):
    star = str(tiny / "particles.star")
    ref = str(tiny / "truth.mrc")
    # Too few particles per half-set.
    blocks = io.read_star(star)
    for col in list(blocks["particles"]):
        blocks["particles"][col] = blocks["particles"][col][:80]
    io.write_star(str(tiny / "few.star"), blocks)
    # No CTF.
    blocks = io.read_star(star)
    del blocks["particles"]["rlnDefocusU"]
    io.write_star(str(tiny / "noctf.star"), blocks)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cases = [(["--particles", str(tiny / "few.star")], "too few particles"),
             (["--particles", str(tiny / "noctf.star")], "rlnDefocusU"),
             (["--particles", star, "--sym", "C0"], "C0"),
             (["--particles", star, "--posterior-poses", "0"], "--posterior-poses"),
             (["--particles", star, "--min-posterior", "1.5"], "--min-posterior"),
             (["--particles", star, "--initial-lowpass-ang", "0"], "--initial-lowpass-ang"),
             (["--particles", star, "--diameter-ang", "-5"], "--diameter-ang"),
             (["--particles", star, "--out", str(blocker / "x")], "a_file")]
    for extra, culprit in cases:
        caplog.clear()
        args = ["refine", "--ref", ref, "--out", str(tmp_path / "out")] + extra
        if "--out" in extra:
            args = ["refine", "--ref", ref] + extra
        assert cli.main(args) == 2
        msgs = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(msgs) == 1 and culprit in msgs[0], msgs


def _perturb_half(tiny, folder, half):
    """A copy of ``tiny`` whose half-set ``half`` images carry extra noise (as strong as the images);
    returns the folder and the mask of the perturbed particles."""
    import shutil

    from nonuniform.engine import particles

    folder.mkdir()
    for name in ("particles.star", "particles.mrcs", "truth.mrc"):
        shutil.copy(tiny / name, folder / name)
    p = particles.load_particles(str(folder / "particles.star"))
    imgs, apix = io.read_mrc(str(folder / "particles.mrcs"))
    rng = np.random.default_rng(0)
    hit = p.random_subset == half
    imgs[hit] += rng.normal(0, imgs.std(), imgs[hit].shape).astype(np.float32)
    io.write_stack(str(folder / "particles.mrcs"), imgs, apix)
    return folder, hit


def _iterate_both(tiny, bad, tmp_path, split_ang, n_iterations):
    """NU iterations on ``tiny`` and on its perturbed copy ``bad``: per run, [(State, IterationMaps)]."""
    runs = []
    for folder, out in ((tiny, tmp_path / "a"), (bad, tmp_path / "b")):
        cfg = RefineConfig(mode="nonuniform", gsfsc_split_ang=split_ang, nu_cutoffs=12,
                           max_iterations=n_iterations, min_global_iterations=1, initial_lowpass_ang=20)
        r = Refinement(str(folder / "particles.star"), str(folder / "truth.mrc"), str(out), cfg)
        st, per_iteration = r._initial_state(), []
        for _ in range(n_iterations):
            st, maps = r.iterate(st)
            per_iteration.append((st, maps))
        runs.append(per_iteration)
    return runs


@pytest.mark.parametrize("perturbed", [2, 1])
def test_nu_half_sets_stay_independent(tiny, tmp_path, perturbed):
    """NU mode, join disabled: perturbing one half-set's images leaves the other's poses, raw map,
    cutoff map and masked reference bit-identical in every iteration (each half's search plan,
    masks and seeds come from its own data), while the perturbed half-set does change."""
    bad, hit = _perturb_half(tiny, tmp_path / "perturbed", perturbed)
    kept = 3 - perturbed  # the other half-set
    other = ~hit
    # Three iterations: the first with the initial plan, then plans from each half's own results.
    runs = _iterate_both(tiny, bad, tmp_path, split_ang=0, n_iterations=3)
    k = kept - 1
    for it, ((sa, ma), (sb, mb)) in enumerate(zip(*runs), start=1):
        assert np.array_equal(sa.rotations[other], sb.rotations[other]), it
        assert np.array_equal(sa.shifts_px[other], sb.shifts_px[other]), it
        assert np.array_equal(ma.halves[kept], mb.halves[kept]), it
        assert np.array_equal(ma.extras[f"cutoff_half{kept}"], mb.extras[f"cutoff_half{kept}"]), it
        assert np.array_equal(sa.references[k], sb.references[k]), it
        assert sa.half_resolution_ang[k] == sb.half_resolution_ang[k], it
        # the perturbation did reach the perturbed half-set
        assert not np.array_equal(sa.references[1 - k], sb.references[1 - k]), it


def test_join_shares_only_frequencies_below_the_split(tiny, tmp_path):
    """NU mode with the low-resolution join (GS-FSC split 20 Å): perturbing half-set 2's images
    leaves half-set 1's poses and raw map of the iteration bit-identical, and its next reference
    changes only below 1/20 Å⁻¹ (the shared band). From the next iteration on, half-set 1 aligns
    against that shared band, so nothing of it can stay bit-identical: the join is the one,
    deliberate, exchange between the half-sets (as RELION's --low_resol_join_halves)."""
    from nonuniform.engine import fourier

    bad, hit = _perturb_half(tiny, tmp_path / "perturbed", 2)
    other = ~hit
    [(sa, ma)], [(sb, mb)] = _iterate_both(tiny, bad, tmp_path, split_ang=20.0, n_iterations=1)
    assert np.array_equal(sa.rotations[other], sb.rotations[other])
    assert np.array_equal(ma.halves[1], mb.halves[1])
    fa, fb = fourier.rfftn_c(sa.references[0]), fourier.rfftn_c(sb.references[0])
    k = fourier.radial_freq_rfft(sa.references[0].shape) / 3.0  # tiny is at 3 Å/px
    low, high = k < 1 / 20.0 - 1e-6, k > 1 / 20.0 + 1e-6
    diff = np.abs(fa - fb)
    # Below the split the references share half-set 2's (perturbed) data: they differ by a sizeable
    # fraction of the signal. Above it, only the float32 round-off of the real-space round trip in
    # join_low_resolution remains (~1e-7 of the spectrum's scale; 1e-4 leaves room).
    assert diff[low].max() > 1e-2 * np.abs(fa[low]).max()
    assert diff[high].max() < 1e-4 * np.abs(fa).max()


def test_marginalization_over_top_poses(tiny, tmp_path):
    on, off = tmp_path / "on", tmp_path / "off"
    assert _refine(tiny, on, "--mode", "uniform", "--iterations", "2") == 0
    assert _refine(tiny, off, "--mode", "uniform", "--iterations", "2", "--no-marginalize") == 0
    h_on = json.loads((on / "summary.json").read_text())["history"]
    h_off = json.loads((off / "summary.json").read_text())["history"]
    # Iteration 1 scores by cc (no noise model yet): best pose only, in both runs.
    assert h_on[0]["poses_per_particle"] == 1 and h_on[0]["mean_max_posterior"] == 1
    # Then the likelihood's posterior spreads over several of the top-K poses at this SNR...
    assert h_on[1]["poses_per_particle"] > 1.2 and h_on[1]["mean_max_posterior"] < 0.95
    # ...unless switched off.
    assert h_off[1]["poses_per_particle"] == 1 and h_off[1]["mean_max_posterior"] == 1
    assert json.loads((off / "config.json").read_text())["marginalize"] is False
    # particles.star carries RELION's per-particle columns for them.
    parts = io.read_star(str(on / "particles.star"))["particles"]
    pmax, n_sig = np.asarray(parts["rlnMaxValueProbDistribution"]), np.asarray(parts["rlnNrOfSignificantSamples"])
    assert np.all((pmax > 0) & (pmax <= 1)) and np.all(n_sig >= 1) and n_sig.max() > 1
    np.testing.assert_allclose(pmax.mean(), h_on[1]["mean_max_posterior"], rtol=1e-5)
    off_parts = io.read_star(str(off / "particles.star"))["particles"]
    assert np.all(np.asarray(off_parts["rlnNrOfSignificantSamples"]) == 1)
    # --posterior-poses caps the poses kept per particle.
    two = tmp_path / "two"
    assert _refine(tiny, two, "--mode", "uniform", "--iterations", "2", "--posterior-poses", "2") == 0
    n_two = np.asarray(io.read_star(str(two / "particles.star"))["particles"]["rlnNrOfSignificantSamples"])
    assert n_two.max() == 2 and json.loads((two / "config.json").read_text())["posterior_poses"] == 2


def test_scratch_copies_stacks_and_changes_nothing(tiny, tmp_path, caplog):
    """--scratch DIR: the stacks are read from copies in DIR, the results are those of a run without it,
    the output STAR still names the original stack, and a resumed run reuses the copies."""
    caplog.set_level("INFO")
    assert _refine(tiny, tmp_path / "plain", "--iterations", "1") == 0
    assert _refine(tiny, tmp_path / "staged", "--iterations", "1", "--scratch", str(tmp_path / "scratch")) == 0
    copies = list((tmp_path / "scratch").iterdir())
    assert len(copies) == 1 and copies[0].name.endswith("_particles.mrcs")
    assert copies[0].read_bytes() == (tiny / "particles.mrcs").read_bytes()
    for name in ("half1.mrc", "map.mrc", "map_nu.mrc"):
        a, b = io.read_mrc(str(tmp_path / "plain" / name))[0], io.read_mrc(str(tmp_path / "staged" / name))[0]
        assert np.array_equal(a, b), name
    names = io.read_star(str(tmp_path / "staged" / "particles.star"))["particles"]["rlnImageName"]
    assert all(str(n).endswith(str(tiny / "particles.mrcs")) or str(n).endswith("particles.mrcs") for n in names)
    assert not any("scratch" in str(n) for n in names)
    caplog.clear()
    assert _refine(tiny, tmp_path / "staged", "--iterations", "2", "--scratch", str(tmp_path / "scratch"),
                   "--continue") == 0
    assert any("0 copied" in r.getMessage() for r in caplog.records)


def test_nu_reference_mask_keeps_the_detergent_belt(tmp_path):
    """NU mode masks its references with the particle's envelope (map low-passed to >= 15 Å), which keeps a
    smooth, low-density belt; the FSC's dynamic mask (current resolution) keeps only part of it."""
    from nonuniform.engine import membrane, simulate

    rng = np.random.default_rng(0)
    ph = membrane.membrane_phantom(64, 2.0, rng)
    vol, labels = ph.truth(), ph.regions()
    simulate.write_simulation(str(tmp_path), simulate.simulate_particles(vol, 100, 2.0, rng, snr=1.0), 2.0, vol)
    run = Refinement(str(tmp_path / "particles.star"), str(tmp_path / "truth.mrc"), str(tmp_path / "out"),
                     RefineConfig(mode="nonuniform"))

    def kept(mask, label):
        return float(np.sum((vol * mask)[labels == label]) / np.sum(vol[labels == label]))

    fsc_mask, envelope = run._masks(vol, 5.0), run._masks(vol, 5.0, envelope=True)
    # Measured: belt mass kept 0.21 (FSC mask) and 0.999 (envelope); the core and the flexible domain whole
    # in both; solvent voxels inside (> 0.5) 3 % and 6 %.
    assert kept(fsc_mask, membrane.REGION_BELT) < 0.5
    assert kept(envelope, membrane.REGION_BELT) > 0.95
    for m in (fsc_mask, envelope):
        assert kept(m, membrane.REGION_CORE) > 0.99 and kept(m, membrane.REGION_FLEXIBLE) > 0.99
    assert np.mean(envelope[labels == membrane.REGION_SOLVENT] > 0.5) < 0.15
