"""Bad input, command by command: every case ends with exit status 2, one error line naming the
culprit, and nothing written (the folder it ran in is unchanged, byte for byte and file for file).

Categories: missing, corrupt or truncated image stack; STAR file with no rows or missing columns;
wrong box or pixel size; NaN/Inf in images, reference, half-maps or mask; a mask that misses the
particle; non-positive pixel size; odd and tiny boxes; bad symmetry; invalid numeric options;
unwritable or non-empty output folder.
"""

import logging
import os
import shutil
import warnings

import numpy as np
import pytest

from nonuniform.engine import cli, io, masks

from .conftest import write_tiny_simulation


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The tiny simulation (200 particles, box 32 at 3 Å/px), a mask made from its truth and two
    noisy half-maps."""
    folder = write_tiny_simulation(tmp_path_factory.mktemp("bad_input"), 200, seed=5)
    truth, apix = io.read_mrc(str(folder / "truth.mrc"))
    io.write_mrc(str(folder / "mask.mrc"), masks.auto_mask(truth, apix, threshold_frac=0.2, extend_ang=6,
                                                           soft_ang=8), apix)
    rng = np.random.default_rng(0)
    for h in (1, 2):
        io.write_mrc(str(folder / f"half{h}.mrc"), truth + rng.normal(0, truth.std(), truth.shape), apix)
    return folder


def _copy(inputs, tmp, *names):
    for name in names:
        shutil.copy(inputs / name, tmp / name)


def _refine(inputs, tmp, *extra, star=None, ref=None, out=None):
    return ["refine", "--particles", str(star or inputs / "particles.star"), "--ref", str(ref or inputs / "truth.mrc"),
            "--out", str(out or tmp / "out"), "--nu-cutoffs", "8", *extra]


def _edit_star(inputs, tmp, edit, block="particles"):
    """A copy of the particles (STAR and stack) in ``tmp`` with ``edit(table)`` applied to one block."""
    _copy(inputs, tmp, "particles.star", "particles.mrcs")
    blocks = io.read_star(str(tmp / "particles.star"))
    edit(blocks[block])
    io.write_star(str(tmp / "particles.star"), blocks)
    return tmp / "particles.star"


def _edit_stack(inputs, tmp, edit):
    """A copy of the particles whose stack file's bytes are replaced by ``edit(bytes)``."""
    _copy(inputs, tmp, "particles.star", "particles.mrcs")
    data = (tmp / "particles.mrcs").read_bytes()
    (tmp / "particles.mrcs").write_bytes(edit(data))
    return tmp / "particles.star"


def _edit_map(inputs, tmp, name, edit, apix=None):
    """``tmp/bad_<name>``: map ``name`` of the inputs with ``edit(array)`` applied (and pixel size ``apix``)."""
    vol, a = io.read_mrc(str(inputs / name))
    vol = edit(vol.copy())
    path = tmp / f"bad_{name}"
    io.write_mrc(str(path), vol, a if apix is None else apix)
    return path


def _with(vol, index, value):
    vol[index] = value
    return vol


def _rows(n):
    def edit(table):
        for col in list(table):
            table[col] = table[col][:n]
    return edit


def _drop(column):
    def edit(table):
        del table[column]
    return edit


def _set(column, value):
    def edit(table):
        table[column] = np.full(len(table[column]), value)
    return edit


def _images(edit):
    """A copy of the particles whose images are ``edit(images)``, (n, N, N)."""
    def make(inputs, tmp):
        _copy(inputs, tmp, "particles.star")
        imgs, apix = io.read_mrc(str(inputs / "particles.mrcs"))
        io.write_stack(str(tmp / "particles.mrcs"), edit(imgs.copy()), apix)
        return tmp / "particles.star"
    return make


def _boxed(box):
    """A consistent particle set with ``box``-px images (images and rlnImageSize), other columns kept."""
    def make(inputs, tmp):
        imgs, apix = io.read_mrc(str(inputs / "particles.mrcs"))
        c = imgs.shape[1] // 2
        io.write_stack(str(tmp / "particles.mrcs"), imgs[:, c - box // 2: c - box // 2 + box, c - box // 2:
                                                         c - box // 2 + box], apix)
        blocks = io.read_star(str(inputs / "particles.star"))
        for table in blocks.values():
            if "rlnImageSize" in table:
                table["rlnImageSize"] = np.full(len(table["rlnImageSize"]), box)
        io.write_star(str(tmp / "particles.star"), blocks)
        return tmp / "particles.star"
    return make


def _nonempty(tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine")
    return tmp / "out"


def _finished_run(inputs, tmp):
    """A finished 1-iteration refinement in ``tmp/out`` (what a bad --continue must not lose)."""
    assert cli.main(_refine(inputs, tmp, "--iterations", "1", "--initial-lowpass-ang", "20")) == 0
    return tmp / "out"


def _blocked(tmp):
    (tmp / "a_file").write_text("")
    return tmp / "a_file" / "out"


# name -> (inputs, tmp) -> (argv, culprit that the one error line must contain)
CASES = {
    # -- refine: particles
    "refine missing stack": lambda i, t: (_refine(i, t, star=_copy(i, t, "particles.star") or t / "particles.star"),
                                          "particles.mrcs"),
    "refine corrupt stack": lambda i, t: (_refine(i, t, star=_edit_stack(i, t, lambda b: b"\x07" * len(b))),
                                          "particles.mrcs"),
    "refine truncated stack": lambda i, t: (_refine(i, t, star=_edit_stack(i, t, lambda b: b[: len(b) // 2])),
                                            "truncated"),
    "refine STAR with 0 rows": lambda i, t: (_refine(i, t, star=_edit_star(i, t, _rows(0))), "no particles"),
    "refine STAR without rlnImageName": lambda i, t: (_refine(i, t, star=_edit_star(i, t, _drop("rlnImageName"))),
                                                      "rlnImageName"),
    "refine STAR without rlnDefocusU": lambda i, t: (_refine(i, t, star=_edit_star(i, t, _drop("rlnDefocusU"))),
                                                     "rlnDefocusU"),
    "refine STAR wrong box": lambda i, t: (_refine(i, t, star=_edit_star(i, t, _set("rlnImageSize", 40), "optics")),
                                           "rlnImageSize"),
    "refine NaN image": lambda i, t: (_refine(i, t, star=_images(lambda m: _with(m, (17, 3, 4), np.nan))(i, t)),
                                      "particles.mrcs"),
    "refine Inf image": lambda i, t: (_refine(i, t, star=_images(lambda m: _with(m, (0, 0, 0), np.inf))(i, t)),
                                      "particles.mrcs"),
    "refine odd box": lambda i, t: (_refine(i, t, star=_boxed(31)(i, t)), "are 31 px"),
    "refine tiny box": lambda i, t: (_refine(i, t, star=_boxed(8)(i, t)), "are 8 px"),
    "refine too few particles": lambda i, t: (_refine(i, t, star=_edit_star(i, t, _rows(60))), "too few particles"),
    # -- refine: reference and mask
    "refine NaN reference": lambda i, t: (
        _refine(i, t, ref=_edit_map(i, t, "truth.mrc", lambda v: _with(v, 5, np.nan))), "bad_truth.mrc"),
    "refine reference without pixel size, other box": lambda i, t: (
        _refine(i, t, ref=_edit_map(i, t, "truth.mrc", lambda v: np.pad(v, 4), apix=0)), "bad_truth.mrc"),
    "refine reference pixel size negative": lambda i, t: (
        _refine(i, t, ref=_edit_map(i, t, "truth.mrc", lambda v: v, apix=-3)), "bad_truth.mrc"),
    "refine NaN mask": lambda i, t: (
        _refine(i, t, "--mask", _edit_map(i, t, "mask.mrc", lambda v: _with(v, 0, np.nan))), "bad_mask.mrc"),
    "refine Inf mask": lambda i, t: (
        _refine(i, t, "--mask", _edit_map(i, t, "mask.mrc", lambda v: _with(v, 3, np.inf))), "bad_mask.mrc"),
    "refine mask missing the particle": lambda i, t: (
        _refine(i, t, "--mask", _edit_map(i, t, "mask.mrc", lambda v: np.roll(v, 12, axis=2))), "misses the particle"),
    "refine mask pixel size": lambda i, t: (_refine(i, t, "--mask", _edit_map(i, t, "mask.mrc", lambda v: v, apix=2.5)),
                                            "bad_mask.mrc"),
    "refine mask box": lambda i, t: (_refine(i, t, "--mask", _edit_map(i, t, "mask.mrc", lambda v: v[:30, :30, :30])),
                                     "bad_mask.mrc"),
    "refine mask values": lambda i, t: (_refine(i, t, "--mask", _edit_map(i, t, "mask.mrc", lambda v: 255 * v)),
                                        "bad_mask.mrc"),
    # -- refine: options and output folder
    "refine bad symmetry": lambda i, t: (_refine(i, t, "--sym", "C0"), "C0"),
    "refine --nu-cutoffs 1": lambda i, t: (_refine(i, t, "--nu-cutoffs", "1"), "--nu-cutoffs"),
    "refine --awf -1": lambda i, t: (_refine(i, t, "--awf", "-1"), "--awf"),
    "refine --awf nan": lambda i, t: (_refine(i, t, "--awf", "nan"), "--awf"),
    "refine --nu-order 0": lambda i, t: (_refine(i, t, "--nu-order", "0"), "--nu-order"),
    "refine --iterations 0": lambda i, t: (_refine(i, t, "--iterations", "0"), "--iterations"),
    "refine --extra-final-passes -1": lambda i, t: (_refine(i, t, "--extra-final-passes", "-1"),
                                                    "--extra-final-passes"),
    "refine --gsfsc-split-ang -20": lambda i, t: (_refine(i, t, "--gsfsc-split-ang", "-20"), "--gsfsc-split-ang"),
    "refine --initial-lowpass-ang inf": lambda i, t: (_refine(i, t, "--initial-lowpass-ang", "inf"),
                                                      "--initial-lowpass-ang"),
    "refine --diameter-ang 0": lambda i, t: (_refine(i, t, "--diameter-ang", "0"), "--diameter-ang"),
    "refine --posterior-poses 0": lambda i, t: (_refine(i, t, "--posterior-poses", "0"), "--posterior-poses"),
    "refine --min-posterior 1": lambda i, t: (_refine(i, t, "--min-posterior", "1"), "--min-posterior"),
    "refine --seed -1": lambda i, t: (_refine(i, t, "--seed", "-1"), "--seed"),
    "refine --threads 0": lambda i, t: (["--threads", "0", *_refine(i, t)], "--threads"),
    "refine --gpu 0,1": lambda i, t: (_refine(i, t, "--gpu", "0,1"), "one CUDA device id"),
    "refine unwritable --scratch": lambda i, t: (_refine(i, t, "--scratch", str(_blocked(t) / "scratch")),
                                                 "--scratch"),
    "refine --gpu -1": lambda i, t: (_refine(i, t, "--gpu", "-1"), "--gpu"),
    "refine --continue with a bad option": lambda i, t: (
        _refine(i, t, "--continue", "--awf", "0", out=_finished_run(i, t)), "--awf"),
    "refine --continue with another particle set": lambda i, t: (
        _refine(i, t, "--continue", star=_edit_star(i, t, _rows(150)), out=_finished_run(i, t)), "checkpoint"),
    "refine non-empty output folder": lambda i, t: (_refine(i, t, out=_nonempty(t)), "not empty"),
    "refine unwritable output folder": lambda i, t: (_refine(i, t, out=_blocked(t)), "a_file"),
    # -- reconstruct
    "reconstruct NaN image": lambda i, t: (["reconstruct", "--particles", str(_images(
        lambda m: _with(m, (5, 1, 1), np.nan))(i, t)), "--out", str(t / "o.mrc")], "particles.mrcs"),
    "reconstruct truncated stack": lambda i, t: (["reconstruct", "--particles", str(_edit_stack(
        i, t, lambda b: b[:-100])), "--out", str(t / "o.mrc")], "truncated"),
    "reconstruct bad symmetry": lambda i, t: (["reconstruct", "--particles", str(i / "particles.star"), "--sym", "D0",
                                               "--out", str(t / "o.mrc")], "D0"),
    "reconstruct --pad 0": lambda i, t: (["reconstruct", "--particles", str(i / "particles.star"), "--pad", "0",
                                          "--out", str(t / "o.mrc")], "--pad"),
    "reconstruct unwritable output": lambda i, t: (["reconstruct", "--particles", str(i / "particles.star"),
                                                    "--out", str(_blocked(t) / "o.mrc")], "a_file"),
    # -- fsc
    "fsc NaN map": lambda i, t: (["fsc", str(_edit_map(i, t, "half1.mrc", lambda v: _with(v, 7, np.nan))),
                                  str(i / "half2.mrc"), "--out", str(t / "fsc")], "bad_half1.mrc"),
    "fsc wrong box": lambda i, t: (["fsc", str(i / "half1.mrc"), str(_edit_map(i, t, "half2.mrc",
                                                                              lambda v: v[:30, :30, :30])),
                                    "--out", str(t / "fsc")], "bad_half2.mrc"),
    "fsc --threshold 1.5": lambda i, t: (["fsc", str(i / "half1.mrc"), str(i / "half2.mrc"), "--threshold", "1.5",
                                          "--out", str(t / "fsc")], "--threshold"),
    "fsc no pixel size": lambda i, t: (["fsc", str(_edit_map(i, t, "half1.mrc", lambda v: v, apix=0)),
                                        str(_edit_map(i, t, "half2.mrc", lambda v: v, apix=0)),
                                        "--out", str(t / "fsc")], "bad_half1.mrc"),
    "fsc --seed -1": lambda i, t: (["fsc", str(i / "half1.mrc"), str(i / "half2.mrc"), "--mask", str(i / "mask.mrc"),
                                    "--seed", "-1", "--out", str(t / "fsc")], "--seed"),
    # -- filter
    "filter --awf 0": lambda i, t: (["filter", "--half1", str(i / "half1.mrc"), "--half2", str(i / "half2.mrc"),
                                     "--awf", "0", "--out", str(t / "f")], "--awf"),
    "filter --n-cutoffs 1": lambda i, t: (["filter", "--half1", str(i / "half1.mrc"), "--half2", str(i / "half2.mrc"),
                                           "--n-cutoffs", "1", "--out", str(t / "f")], "--n-cutoffs"),
    "filter Inf mask": lambda i, t: (["filter", "--half1", str(i / "half1.mrc"), "--half2", str(i / "half2.mrc"),
                                      "--mask", str(_edit_map(i, t, "mask.mrc", lambda v: _with(v, 2, -np.inf))),
                                      "--out", str(t / "f")], "bad_mask.mrc"),
    # -- locres
    "locres --bands 1": lambda i, t: (["locres", "--half1", str(i / "half1.mrc"), "--half2", str(i / "half2.mrc"),
                                       "--bands", "1", "--out", str(t / "l")], "--bands"),
    "locres --window-factor -1": lambda i, t: (["locres", "--half1", str(i / "half1.mrc"), "--half2",
                                                str(i / "half2.mrc"), "--window-factor", "-1", "--out", str(t / "l")],
                                               "--window-factor"),
    "locres NaN half-map": lambda i, t: (["locres", "--half1", str(i / "half1.mrc"), "--half2", str(_edit_map(
        i, t, "half2.mrc", lambda v: _with(v, 1, np.nan))), "--out", str(t / "l")], "bad_half2.mrc"),
    # -- simulate and demo
    "simulate --pixel-size 0": lambda i, t: (["simulate", "--pixel-size", "0", "--out", str(t / "s")], "--pixel-size"),
    "simulate tiny box": lambda i, t: (["simulate", "--box", "8", "--out", str(t / "s")], "--box"),
    "simulate box too small for the phantom": lambda i, t: (["simulate", "--box", "16", "--out", str(t / "s")],
                                                            "--box 16"),
    "simulate --n-particles 0": lambda i, t: (["simulate", "--n-particles", "0", "--out", str(t / "s")],
                                              "--n-particles"),
    "simulate non-empty output folder": lambda i, t: (["simulate", "--out", str(_nonempty(t))], "not empty"),
    "demo non-empty output folder": lambda i, t: (["demo", "--out", str(_nonempty(t))], "not empty"),
    "demo odd box": lambda i, t: (["demo", "--box", "33", "--out", str(t / "d")], "--box"),
    "demo --n-particles 10": lambda i, t: (["demo", "--n-particles", "10", "--out", str(t / "d")], "--n-particles"),
}


def _snapshot(folder):
    """Every file and folder under ``folder`` with its size and modification time."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.stat(path)
            found[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns)
    return found


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, inputs, tmp_path, caplog):
    argv, culprit = CASES[case](inputs, tmp_path)
    before, before_inputs = _snapshot(tmp_path), _snapshot(inputs)
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:  # nothing printed besides the error line
        warnings.simplefilter("always")
        assert cli.main([str(a) for a in argv]) == 2
    assert not caught, [str(w.message) for w in caught]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and culprit in errors[0], errors
    assert _snapshot(tmp_path) == before and _snapshot(inputs) == before_inputs


def test_gpu_request_without_a_usable_gpu(inputs, tmp_path, caplog, monkeypatch):
    """``--gpu`` where cupy or a device is missing: exit 2, one line saying what is missing, nothing
    written (numba's CUDA simulator, which the test session may have turned on, is turned off)."""
    from nonuniform.engine.backend import gpu_problem

    problem = gpu_problem(0)
    if problem is None:
        pytest.skip("this machine has a usable GPU")
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "0")
    before = _snapshot(tmp_path)
    assert cli.main([str(a) for a in _refine(inputs, tmp_path, "--gpu", "0")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].endswith(f"--gpu 0: {problem}; run without --gpu to use the CPU"), errors
    assert _snapshot(tmp_path) == before


def test_reference_without_pixel_size_takes_the_particles(inputs, tmp_path, caplog):
    """The documented rule: a header pixel size of 0 on a map with the particles' box is taken to be
    the particles' pixel size, with a warning naming the file (another box is refused, above)."""
    from nonuniform.engine.refine import RefineConfig, Refinement

    ref = _edit_map(inputs, tmp_path, "truth.mrc", lambda v: v, apix=0)
    r = Refinement(str(inputs / "particles.star"), str(ref), str(tmp_path / "out"),
                   RefineConfig(max_iterations=1, initial_lowpass_ang=20))
    warned = [m.getMessage() for m in caplog.records if m.levelname == "WARNING"]
    assert any("bad_truth.mrc has no pixel size" in w and "3.0000 Å" in w for w in warned), warned
    assert not any("resampling" in w for w in warned)  # same grid: used as it is
    assert r.ref0.shape == (32, 32, 32)


def test_missing_parent_folders_are_created(inputs, tmp_path):
    """One rule for every command: the parents of --out are created, as ``mkdir -p``."""
    i, deep = inputs, tmp_path / "a" / "b"
    halves = ["--half1", str(i / "half1.mrc"), "--half2", str(i / "half2.mrc")]
    runs = {"refine": _refine(i, tmp_path, "--iterations", "1", "--initial-lowpass-ang", "20",
                              out=deep / "refine" / "run"),
            "reconstruct": ["reconstruct", "--particles", str(i / "particles.star"),
                            "--out", str(deep / "reconstruct" / "map.mrc")],
            "fsc": ["fsc", str(i / "half1.mrc"), str(i / "half2.mrc"), "--out", str(deep / "fsc" / "fsc")],
            "filter": ["filter", *halves, "--n-cutoffs", "8", "--out", str(deep / "filter" / "out")],
            "locres": ["locres", *halves, "--bands", "6", "--out", str(deep / "locres" / "out")],
            "simulate": ["simulate", "--n-particles", "4", "--box", "32", "--out", str(deep / "simulate" / "out")]}
    for name, argv in runs.items():
        assert cli.main(argv) == 0, name
    for made in ("refine/run/map.mrc", "reconstruct/map.mrc", "fsc/fsc.csv", "filter/out/filtered.mrc",
                 "locres/out/locres.mrc", "simulate/out/particles.star"):
        assert (deep / made).is_file(), made
