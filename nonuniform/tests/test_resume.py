"""Exact resume: ``--continue`` (after a finished run or a kill -9 anywhere) gives the outputs of an
uninterrupted run, bit for bit, because everything the outputs need lives in the checkpoints."""

import json
import os
import subprocess
import sys

import pytest

from nonuniform.engine import cli, fsc
from nonuniform.engine.refine import OUTPUT_FILES
from .conftest import write_tiny_simulation

# Files that must be byte-identical between an uninterrupted and a resumed run: every output but
# summary.json (wall times: compared without them below) and the PNG plot.
EXACT = tuple(name for name in OUTPUT_FILES if name not in ("summary.json", "fsc.png"))


@pytest.fixture(scope="module")
def tiny_sim(tmp_path_factory):
    """200 particles, box 32 (about a second per NU iteration)."""
    return write_tiny_simulation(tmp_path_factory.mktemp("tiny_resume"), 200, seed=11)


def _args(sim, out, *extra):
    return ["refine", "--particles", str(sim / "particles.star"), "--ref", str(sim / "truth.mrc"), "--out",
            str(out), "--nu-cutoffs", "8", "--initial-lowpass-ang", "20", "--iterations", "2", *extra]


@pytest.fixture(scope="module")
def reference_run(tiny_sim, tmp_path_factory):
    """An uninterrupted 2-iteration NU refinement."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert cli.main(_args(tiny_sim, out)) == 0
    return out


def _timeless(summary):
    summary = dict(summary, wall_seconds=None)
    summary["history"] = [dict(h, seconds=None, estep_seconds=None, regularize_seconds_half=None)
                          for h in summary["history"]]
    return summary


def assert_same_outputs(a, b):
    for name in EXACT:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert _timeless(sa) == _timeless(sb)


def test_continue_finished_run_changes_nothing(reference_run, tiny_sim, tmp_path):
    out = tmp_path / "run"
    assert cli.main(_args(tiny_sim, out)) == 0
    before = {name: (out / name).read_bytes() for name in EXACT}
    assert cli.main(_args(tiny_sim, out, "--continue")) == 0
    for name in EXACT:
        assert (out / name).read_bytes() == before[name], name
    assert_same_outputs(reference_run, out)
    # The run's time counts its iterations, not the few seconds of the session that continued it.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["wall_seconds"] == sum(h["seconds"] for h in summary["history"]) > 0


def test_overwrite_forgets_the_earlier_run(reference_run, tiny_sim, tmp_path):
    """--overwrite over a longer NU run removes its checkpoints and outputs: a later --continue resumes
    this (uniform) run and no NU map of the earlier one is left."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference_run, out)  # 2 iterations
    assert cli.main(_args(tiny_sim, out, "--overwrite", "--iterations", "1", "--mode", "uniform")) == 0
    assert not (out / "map_nu.mrc").exists() and not (out / "cutoff_half1.mrc").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["iter001.json", "iter001.npz",
                                                                       "iter001_fsc.csv", "iter001_maps.npz"]
    assert cli.main(_args(tiny_sim, out, "--continue", "--iterations", "1", "--mode", "uniform")) == 0
    assert json.loads((out / "summary.json").read_text())["iterations"] == 1


def test_json_outputs_are_strict(reference_run):
    """summary.json and the checkpoint JSONs hold no bare NaN: the first pose change is null."""
    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    summary = json.loads((reference_run / "summary.json").read_text(), parse_constant=refuse)
    assert summary["history"][0]["mean_pose_change_deg"] is None
    assert summary["history"][1]["mean_pose_change_deg"] >= 0
    for it in (1, 2):
        json.loads((reference_run / "checkpoints" / f"iter{it:03d}.json").read_text(), parse_constant=refuse)


def test_iteration_fsc_curves_checkpointed(reference_run):
    """Each iteration's gold-standard FSC curves are kept as checkpoints/iterNNN_fsc.csv."""
    for it in (1, 2):
        cols, meta = fsc.read_fsc_csv(str(reference_run / "checkpoints" / f"iter{it:03d}_fsc.csv"))
        assert {"fsc_unmasked", "fsc_masked", "fsc_corrected"} <= set(cols) and "resolution_fsc_corrected_ang" in meta
    final, _ = fsc.read_fsc_csv(str(reference_run / "fsc.csv"))
    last, _ = fsc.read_fsc_csv(str(reference_run / "checkpoints" / "iter002_fsc.csv"))
    assert all((final[k] == last[k]).all() for k in final)


# (kill point, iteration): during the E-step (between the two half-sets' pose searches; in
# iteration 1 before any checkpoint exists), during the regularization (between the halves), while
# writing a checkpoint (maps written, state not yet), after the last iteration's checkpoint (before
# any output), and half-way through the outputs.
KILL_POINTS = ["estep:1", "estep:2", "regularize:1", "checkpoint:2", "outputs_start:2", "outputs:2"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill9_then_continue_is_exact(point, reference_run, tiny_sim, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, NONUNIFORM_KILL_AT=point)
    proc = subprocess.run([sys.executable, "-m", "nonuniform.engine", *_args(tiny_sim, out)], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]  # died of SIGKILL at the named point
    assert not (out / "summary.json").exists()
    assert cli.main(_args(tiny_sim, out, "--continue")) == 0
    assert_same_outputs(reference_run, out)
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temporary file left over
