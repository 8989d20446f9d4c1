"""Distribution: results independent of the batching and of the number of MPI ranks.

The refinement's per-iteration work is a sum over batches of particles (``estep.HalfSetStep``), each
batch with its own random stream, so any split of the batches gives the same poses and the same maps
up to the order of float64 sums. Checked in one process (steps of disjoint batch sets add up to the
step of all batches) and with real MPI runs (``mpiexec -n K``, K = 1, 2, 3, from the installed
MPI: the ``mpi`` extra's mpich and mpi4py), including a rank killed mid-run and the resumed run.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from nonuniform.engine import io, particles as particles_mod
from nonuniform.engine.estep import align_and_backproject, batches_of
from nonuniform.engine.refine import RefineConfig

from .conftest import write_tiny_simulation


def _mpiexec():
    """The mpiexec next to this interpreter (the mpich wheel's), else the one on PATH."""
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.exists(local) else shutil.which("mpiexec")


def _have_mpi4py():
    try:
        import mpi4py  # noqa: F401
        return True
    except ImportError:
        return False


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None or not _have_mpi4py(),
                               reason="needs mpi4py and an mpiexec (pip install mpi4py mpich)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Box 32, 3 Å/px, 300 particles: 150 per half-set, 5 batches of 32."""
    return write_tiny_simulation(tmp_path_factory.mktemp("mpi_tiny"), 300, seed=3)


def test_steps_of_disjoint_batches_add_up(tiny):
    parts = particles_mod.load_particles(str(tiny / "particles.star"))
    ref, _ = io.read_mrc(str(tiny / "truth.mrc"))
    cfg = RefineConfig(batch=16, posterior_poses=4)
    idx = np.arange(0, 300, 2)[:64]
    n_batches = len(batches_of(idx, cfg.batch))
    assert n_batches == 4

    def step(batches):
        return align_and_backproject(parts, idx, idx % 2, ref, np.zeros(17), cfg, (True, 15.0, 6.0), (0, 1, 7, 1),
                                     np.eye(3)[None], batches=batches)

    whole = step(None)
    parts_sum = step([0, 2]) + step([3, 1])
    # Each particle's pose comes from its own batch alone: identical, whichever split.
    assert np.array_equal(whole.rotations, parts_sum.rotations)
    assert np.array_equal(whole.shifts_px, parts_sum.shifts_px)
    assert np.array_equal(whole.n_poses, parts_sum.n_poses) and whole.count == parts_sum.count == 64
    assert np.allclose(whole.sigma2, parts_sum.sigma2, rtol=1e-12)
    for a, b in zip(whole.folds, parts_sum.folds):
        # float64 sums in another order: 1e-12 of the largest accumulated value.
        assert np.allclose(a.data, b.data, rtol=0, atol=1e-12 * np.abs(a.data).max())
        assert np.allclose(a.weight, b.weight, rtol=0, atol=1e-12 * a.weight.max())


def _mpi_refine(k, tiny, out, *extra, env=None):
    cmd = [MPIEXEC, "-n", str(k), sys.executable, "-m", "nonuniform.engine", "--threads", "1", "refine",
           "--particles", str(tiny / "particles.star"), "--ref", str(tiny / "truth.mrc"), "--out", str(out),
           "--iterations", "2", "--nu-cutoffs", "12", "--batch", "32", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def _results(out):
    stars = io.read_star(str(out / "particles.star"))["particles"]
    maps = {name: io.read_mrc(str(out / name))[0] for name in ("half1.mrc", "half2.mrc", "map.mrc", "map_nu.mrc")}
    return stars, maps, json.loads((out / "summary.json").read_text())


@needs_mpi
def test_same_result_with_1_2_and_3_ranks(tiny, tmp_path):
    runs = {}
    for k in (1, 2, 3):
        r = _mpi_refine(k, tiny, tmp_path / f"k{k}")
        assert r.returncode == 0, r.stdout + r.stderr
        assert (f"{k} MPI ranks share" in r.stderr) == (k > 1)
        runs[k] = _results(tmp_path / f"k{k}")
    stars1, maps1, sum1 = runs[1]
    for k in (2, 3):
        stars, maps, summ = runs[k]
        # Same half-sets and poses (each batch's search is the same computation on any rank).
        for col in ("rlnRandomSubset", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"):
            assert np.array_equal(stars1[col], stars[col]), (k, col)
        # Maps: the accumulators differ only by the order of float64 sums.
        for name, m in maps1.items():
            assert np.corrcoef(m.ravel(), maps[name].ravel())[0, 1] >= 0.9999, (k, name)
            assert np.abs(m - maps[name]).max() <= 1e-4 * np.abs(m).max(), (k, name)
        assert summ["resolution_ang"] == pytest.approx(sum1["resolution_ang"], rel=1e-6)


@needs_mpi
def test_killed_rank_ends_the_run_and_it_resumes(tiny, tmp_path):
    """Rank 1 of 2 is killed (SIGKILL) in iteration 2's E-step: the launcher ends the run with an error,
    iteration 1's checkpoint is there, and --continue gives the uninterrupted run's result."""
    killed = _mpi_refine(2, tiny, tmp_path / "run", env={"NONUNIFORM_KILL_AT": "estep:2:1"})
    assert killed.returncode != 0
    assert (tmp_path / "run" / "checkpoints" / "iter001.npz").exists()
    assert not (tmp_path / "run" / "map.mrc").exists()
    resumed = _mpi_refine(2, tiny, tmp_path / "run", "--continue")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming after iteration 1" in resumed.stderr
    whole = _mpi_refine(2, tiny, tmp_path / "whole")
    assert whole.returncode == 0
    (s1, m1, _), (s2, m2, _) = _results(tmp_path / "run"), _results(tmp_path / "whole")
    assert all(np.array_equal(s1[c], s2[c]) for c in s1)
    assert all(np.array_equal(m1[n], m2[n]) for n in m1)


def test_launcher_and_mpi_library_mismatch_is_refused(tiny, tmp_path):
    """A launcher that started 2 processes whose MPI library mpi4py does not speak: each process
    would see itself alone and redo the whole run; refused with exit 2 before anything is written."""
    if not _have_mpi4py():
        pytest.skip("needs mpi4py")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "OMPI", "MPI_"))}
    env["PMI_SIZE"] = "2"  # claims 2 processes; MPI itself is started as a singleton
    r = subprocess.run([sys.executable, "-m", "nonuniform.engine", "refine", "--particles",
                        str(tiny / "particles.star"), "--ref", str(tiny / "truth.mrc"), "--out",
                        str(tmp_path / "out"), "--iterations", "1"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 2, r.stderr
    assert "launcher started 2 processes but MPI sees 1" in r.stderr
    assert not (tmp_path / "out").exists()
