"""Tests for nonuniform.engine.io and .particles: MRC, STAR, particle loading, atomic writes."""

import json
import os
import shutil
import subprocess

import mrcfile
import numpy as np
import pytest

from nonuniform.engine import io
from nonuniform.engine.errors import InputError
from nonuniform.engine.particles import (Particles, image_name, load_particles, read_images,
                                         save_particles, write_particles_star)

# STAR floats are written with 6 decimals ("%12.6f", as RELION does): a value read back is
# within 0.5e-6 of the one written, so 1e-6 absolute is the round-trip tolerance.
STAR_TOL = 1e-6


def _make_dataset(folder, n=6, box=16, pixel_size_ang=1.5, stack="parts.mrcs", seed=0, **kw):
    """Write an (n, box, box) stack and a RELION 3.1 STAR file describing it."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, box, box)).astype(np.float32)
    os.makedirs(folder, exist_ok=True)
    io.write_stack(os.path.join(folder, stack), images, pixel_size_ang)
    star = os.path.join(folder, "particles.star")
    write_particles_star(
        star, [image_name(i, stack) for i in range(n)], pixel_size_ang, box, 300.0, 2.7, 0.1,
        defocus_u_ang=rng.uniform(1e4, 2e4, n), defocus_v_ang=rng.uniform(1e4, 2e4, n),
        defocus_angle_deg=rng.uniform(0, 180, n), rot_deg=rng.uniform(-180, 180, n),
        tilt_deg=rng.uniform(0, 180, n), psi_deg=rng.uniform(-180, 180, n),
        shift_x_ang=rng.uniform(-5, 5, n), shift_y_ang=rng.uniform(-5, 5, n),
        random_subset=1 + np.arange(n) % 2, **kw)
    return star, images


def _edit_star(star, edit):
    """Read ``star``, apply ``edit(blocks)`` and write it back."""
    blocks = io.read_star(star)
    edit(blocks)
    io.write_star(star, blocks)


def _raises(match_parts, fn, *args, **kwargs):
    """Assert ``fn`` raises InputError whose message contains every string of match_parts."""
    with pytest.raises(InputError) as err:
        fn(*args, **kwargs)
    for part in match_parts:
        assert part in str(err.value), (part, str(err.value))
    return str(err.value)


# ------------------------------------------------------------------------------------------
# MRC


@pytest.mark.parametrize("shape", [(16, 16, 16), (17, 18, 19), (12, 10)])
def test_mrc_round_trip_keeps_data_and_pixel_size(tmp_path, shape):
    rng = np.random.default_rng(1)
    vol = rng.standard_normal(shape).astype(np.float32)
    path = tmp_path / "map.mrc"
    io.write_mrc(path, vol, 1.234)
    data, pixel_size_ang = io.read_mrc(path)
    assert data.dtype == np.float32 and data.shape == shape
    np.testing.assert_array_equal(data, vol)  # float32 stored as float32: bit-exact
    # The header stores the voxel size as float32: 1.234 is exact to ~1e-7 relative.
    assert pixel_size_ang == pytest.approx(1.234, rel=1e-6)
    with mrcfile.open(path) as mrc:
        assert mrc.voxel_size.z == pytest.approx(1.234, rel=1e-6)


def test_read_mrc_missing_file_names_it(tmp_path):
    _raises(["nothere.mrc"], io.read_mrc, tmp_path / "nothere.mrc")


def test_open_stack_shapes_and_read_only(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.standard_normal((3, 8, 8)).astype(np.float32)
    io.write_stack(tmp_path / "s.mrcs", images, 2.0)
    io.write_mrc(tmp_path / "single.mrc", images[0], 2.0)
    stack = io.open_stack(tmp_path / "s.mrcs")
    assert stack.shape == (3, 8, 8)
    np.testing.assert_array_equal(stack, images)
    assert not stack.flags.writeable
    single = io.open_stack(tmp_path / "single.mrc")
    assert single.shape == (1, 8, 8)
    assert io.stack_dims(str(tmp_path / "s.mrcs")) == (3, 8, 8)
    io.close_stacks()


def test_open_stack_eviction_keeps_views_valid(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_MAX_OPEN_STACKS", 2)
    io.close_stacks()
    views = []
    for k in range(4):
        io.write_stack(tmp_path / f"s{k}.mrcs", np.full((2, 4, 4), k, np.float32), 1.0)
        views.append(io.open_stack(tmp_path / f"s{k}.mrcs"))
    assert len(io._stack_cache) == 2
    for k, v in enumerate(views):  # evicted (closed) stacks still read correctly
        assert float(v[1, 2, 3]) == k
    io.close_stacks()


# ------------------------------------------------------------------------------------------
# STAR


def test_particle_api_is_reexported_by_io():
    from nonuniform.engine import particles

    for name in ("Particles", "load_particles", "read_images", "save_particles",
                 "write_particles_star", "image_name", "CTF_COLUMNS"):
        assert getattr(io, name) is getattr(particles, name)
    with pytest.raises(AttributeError):
        io.no_such_name  # noqa: B018


def test_star_round_trip_relion31_layout(tmp_path):
    optics = io.Table(rlnOpticsGroupName=np.array(["opticsGroup1", "opticsGroup2"]),
                      rlnOpticsGroup=np.array([1, 2]), rlnImagePixelSize=np.array([1.1, 1.1]))
    particles = io.Table(rlnImageName=np.array(["000001@a b.mrcs", "000002@x.mrcs", ""]),
                         rlnOpticsGroup=np.array([1, 2, 2]),
                         rlnAngleRot=np.array([-179.123456, 0.0, 12.5]),
                         rlnLogLikeliContribution=np.array([1.5e12, -3e-7, 0.0]))
    general = io.Table(rlnFinalResolution=np.array([3.25]), rlnNote=np.array(["ok"]), loop=False)
    path = tmp_path / "t.star"
    io.write_star(path, {"general": general, "optics": optics, "particles": particles})
    text = path.read_text()
    assert "# version 30001" in text and "loop_" in text and "_rlnAngleRot #3" in text
    back = io.read_star(path)
    assert list(back) == ["general", "optics", "particles"]
    assert back["general"].loop is False and back["particles"].loop is True
    assert back["general"]["rlnNote"][0] == "ok"
    assert back["general"]["rlnFinalResolution"][0] == pytest.approx(3.25, abs=STAR_TOL)
    np.testing.assert_array_equal(back["particles"]["rlnImageName"], particles["rlnImageName"])
    assert back["particles"]["rlnOpticsGroup"].dtype == np.int64
    np.testing.assert_allclose(back["particles"]["rlnAngleRot"], particles["rlnAngleRot"],
                               atol=STAR_TOL)
    # Exponent format keeps 7 significant digits: relative 1e-6.
    np.testing.assert_allclose(back["particles"]["rlnLogLikeliContribution"],
                               particles["rlnLogLikeliContribution"], rtol=1e-6)
    np.testing.assert_array_equal(back["optics"]["rlnOpticsGroupName"],
                                  optics["rlnOpticsGroupName"])


def test_read_star_relion30_with_comments_and_quotes(tmp_path):
    path = tmp_path / "r30.star"
    path.write_text(
        "# written by hand\n\ndata_\n\nloop_\n_rlnImageName #1\n_rlnMicrographName #2 \n"
        "_rlnDefocusU #3\n# a comment between rows\n"
        "000001@s.mrcs 'mic 1.mrc' 10000\n  000002@s.mrcs \"mic2.mrc\" 12000.5\n\n")
    blocks = io.read_star(path)
    assert list(blocks) == [""]
    table = blocks[""]
    assert table.n_rows == 2
    np.testing.assert_array_equal(table["rlnMicrographName"], ["mic 1.mrc", "mic2.mrc"])
    np.testing.assert_array_equal(table["rlnDefocusU"], [10000.0, 12000.5])
    assert table["rlnDefocusU"].dtype == np.float64


def test_read_star_bad_row_names_file_and_line(tmp_path):
    path = tmp_path / "bad.star"
    path.write_text("data_particles\nloop_\n_rlnA #1\n_rlnB #2\n1 2\n3\n")
    _raises([str(path), "line 6"], io.read_star, path)


def test_read_star_missing_file(tmp_path):
    _raises(["missing.star"], io.read_star, tmp_path / "missing.star")


# ------------------------------------------------------------------------------------------
# Particles: loading, saving


def test_load_particles_relion31(tmp_path):
    star, images = _make_dataset(tmp_path / "d", phase_shift_deg=np.full(6, 30.0))
    parts = load_particles(star)
    assert isinstance(parts, Particles) and len(parts) == 6
    assert parts.box_px == 16 and parts.pixel_size_ang == pytest.approx(1.5)
    assert parts.image_refs[2] == (2, str(tmp_path / "d" / "parts.mrcs"))
    assert parts.has_ctf
    np.testing.assert_array_equal(parts.voltage_kv, np.full(6, 300.0))
    np.testing.assert_array_equal(parts.phase_shift_deg, np.full(6, 30.0))
    np.testing.assert_array_equal(parts.bfactor_ang2, np.zeros(6))
    np.testing.assert_array_equal(parts.ctf_scale, np.ones(6))
    np.testing.assert_array_equal(parts.random_subset, [1, 2, 1, 2, 1, 2])
    np.testing.assert_array_equal(parts.optics_group, np.ones(6))
    got = read_images(parts, [4, 0, 4])
    assert got.dtype == np.float32 and got.shape == (3, 16, 16)
    np.testing.assert_array_equal(got, images[[4, 0, 4]])


def test_save_particles_round_trip_updates_poses_and_keeps_columns(tmp_path):
    star, _ = _make_dataset(tmp_path / "d", extra_columns={"rlnMyScore": np.arange(6.0)})
    parts = load_particles(star)
    rng = np.random.default_rng(3)
    rot, tilt, psi = rng.uniform(-180, 180, 6), rng.uniform(0, 180, 6), rng.uniform(-180, 180, 6)
    sx, sy = rng.uniform(-3, 3, 6), rng.uniform(-3, 3, 6)
    out = tmp_path / "out" / "refined.star"
    out.parent.mkdir()
    save_particles(out, parts, rot, tilt, psi, sx, sy, random_subset=[2, 1, 2, 1, 2, 1],
                   extra_columns={"rlnMaxValueProbDistribution": np.full(6, 0.5)})
    again = load_particles(out)
    for got, want in [(again.rot_deg, rot), (again.tilt_deg, tilt), (again.psi_deg, psi),
                      (again.shift_x_ang, sx), (again.shift_y_ang, sy),
                      (again.defocus_u_ang, parts.defocus_u_ang)]:
        np.testing.assert_allclose(got, want, atol=STAR_TOL)
    np.testing.assert_array_equal(again.random_subset, [2, 1, 2, 1, 2, 1])
    assert again.image_refs == parts.image_refs  # stacks outside out/: absolute paths
    table = again.particles_table
    np.testing.assert_allclose(table["rlnMyScore"], np.arange(6.0), atol=STAR_TOL)
    np.testing.assert_allclose(table["rlnMaxValueProbDistribution"], 0.5, atol=STAR_TOL)
    assert "optics" in io.read_star(out)


def _write_relion30(folder, n=4, box=12):
    """A RELION 3.0 STAR file: one data_ block, pixel size from detector/magnification,
    origins in pixels, CTF per particle."""
    rng = np.random.default_rng(4)
    images = rng.standard_normal((n, box, box)).astype(np.float32)
    os.makedirs(folder, exist_ok=True)
    io.write_stack(os.path.join(folder, "old.mrcs"), images, 2.0)
    table = io.Table(
        rlnImageName=np.array([image_name(i, "old.mrcs") for i in range(n)]),
        rlnDefocusU=np.full(n, 15000.0), rlnDefocusV=np.full(n, 14000.0),
        rlnDefocusAngle=np.full(n, 30.0), rlnVoltage=np.array([300.0, 300.0, 200.0, 300.0]),
        rlnSphericalAberration=np.full(n, 2.7), rlnAmplitudeContrast=np.full(n, 0.07),
        rlnMagnification=np.full(n, 10000.0), rlnDetectorPixelSize=np.full(n, 2.0),
        rlnOriginX=np.array([1.0, -2.0, 0.5, 0.0]), rlnOriginY=np.array([0.0, 3.0, -1.0, 2.0]),
        rlnAngleRot=np.array([10.0, 20.0, 30.0, 40.0]))
    star = os.path.join(folder, "old.star")
    io.write_star(star, {"": table})
    text = open(star).read().replace("# version 30001\n", "")  # RELION 3.0 writes no version
    open(star, "w").write(text)
    return star


def test_load_relion30_converts_pixels_and_saves_as_31(tmp_path):
    star = _write_relion30(tmp_path)
    parts = load_particles(star)
    # 2.0 um detector pixel / 10000x magnification = 2.0 Å.
    assert parts.pixel_size_ang == pytest.approx(2.0)
    np.testing.assert_allclose(parts.shift_x_ang, [2.0, -4.0, 1.0, 0.0], atol=STAR_TOL)
    np.testing.assert_allclose(parts.shift_y_ang, [0.0, 6.0, -2.0, 4.0], atol=STAR_TOL)
    np.testing.assert_array_equal(parts.voltage_kv, [300, 300, 200, 300])
    out = tmp_path / "new.star"
    save_particles(out, parts)
    blocks = io.read_star(out)
    assert blocks["optics"].n_rows == 2  # two distinct voltages -> two optics groups
    assert "rlnOriginX" not in blocks["particles"] and "rlnVoltage" not in blocks["particles"]
    again = load_particles(out)
    np.testing.assert_allclose(again.shift_x_ang, parts.shift_x_ang, atol=STAR_TOL)
    np.testing.assert_array_equal(again.voltage_kv, parts.voltage_kv)
    assert again.pixel_size_ang == pytest.approx(2.0)
    assert again.image_refs == parts.image_refs  # stack under the output folder, relative


def test_two_optics_groups_give_per_particle_values(tmp_path):
    star, _ = _make_dataset(tmp_path)

    def add_group(blocks):
        optics = blocks["optics"]
        for k in optics:
            optics[k] = np.concatenate([optics[k], optics[k]])
        optics["rlnOpticsGroup"] = np.array([1, 2])
        optics["rlnVoltage"] = np.array([300.0, 200.0])
        blocks["particles"]["rlnOpticsGroup"] = np.array([1, 2, 2, 1, 1, 2])

    _edit_star(star, add_group)
    parts = load_particles(star)
    np.testing.assert_array_equal(parts.voltage_kv, [300, 200, 200, 300, 300, 200])
    np.testing.assert_array_equal(parts.optics_group, [1, 2, 2, 1, 1, 2])


def test_relion_project_relative_paths_are_found(tmp_path, monkeypatch):
    """RELION writes image paths relative to its project folder, not to the STAR file."""
    monkeypatch.chdir(tmp_path)  # neither the STAR folder nor the project folder
    project = tmp_path / "proj"
    _make_dataset(project / "Extract" / "job005", stack="mic1.mrcs")
    star = project / "Refine3D" / "job010" / "run_data.star"
    star.parent.mkdir(parents=True)
    parts0 = load_particles(project / "Extract" / "job005" / "particles.star")
    save_particles(star, parts0)

    def to_project_relative(blocks):
        blocks["particles"]["rlnImageName"] = np.array(
            [image_name(i, "Extract/job005/mic1.mrcs") for i in range(6)])

    _edit_star(star, to_project_relative)
    parts = load_particles(star)
    assert parts.image_refs[0][1] == str(project / "Extract" / "job005" / "mic1.mrcs")


# ------------------------------------------------------------------------------------------
# Particles: every refused input names its culprit


def test_error_missing_star(tmp_path):
    _raises(["particles STAR file not found", "gone.star"], load_particles, tmp_path / "gone.star")


def test_error_no_particles_block(tmp_path):
    star = tmp_path / "p.star"
    io.write_star(star, {"optics": io.Table(rlnImagePixelSize=np.array([1.0]))})
    _raises(["no particles block", str(star), "data_optics"], load_particles, star)


def test_error_missing_image_name(tmp_path):
    star, _ = _make_dataset(tmp_path)
    _edit_star(star, lambda b: b["particles"].pop("rlnImageName"))
    _raises(["rlnImageName", "data_particles", star], load_particles, star)


def test_error_missing_ctf_columns_named(tmp_path):
    star, _ = _make_dataset(tmp_path)

    def drop(blocks):
        blocks["particles"].pop("rlnDefocusV")
        blocks["optics"].pop("rlnVoltage")

    _edit_star(star, drop)
    msg = _raises(["missing CTF columns", "rlnDefocusV", "rlnVoltage"], load_particles, star)
    assert "rlnDefocusU" not in msg
    parts = load_particles(star, require_ctf=False)
    assert not parts.has_ctf
    assert np.isnan(parts.voltage_kv).all() and np.isfinite(parts.defocus_u_ang).all()


def test_error_missing_pixel_size(tmp_path):
    star, _ = _make_dataset(tmp_path)
    _edit_star(star, lambda b: b["optics"].pop("rlnImagePixelSize"))
    _raises(["missing pixel size", "rlnImagePixelSize", "rlnDetectorPixelSize"],
            load_particles, star)


def test_error_pixel_size_differs_between_optics_groups(tmp_path):
    star, _ = _make_dataset(tmp_path)

    def two_groups(blocks):
        optics = blocks["optics"]
        for k in optics:
            optics[k] = np.concatenate([optics[k], optics[k]])
        optics["rlnOpticsGroup"] = np.array([1, 2])
        optics["rlnImagePixelSize"] = np.array([1.5, 1.2])
        blocks["particles"]["rlnOpticsGroup"] = np.array([1, 1, 1, 2, 2, 2])

    _edit_star(star, two_groups)
    _raises(["pixel size differs between optics groups", "group 1: 1.5", "group 2: 1.2"],
            load_particles, star)


def test_error_pixel_size_differs_between_particles_relion30(tmp_path):
    star = _write_relion30(tmp_path)
    _edit_star(star, lambda b: b[""].__setitem__("rlnMagnification",
                                                   np.array([1e4, 1e4, 1.1e4, 1e4])))
    _raises(["pixel size differs between particles", "1.81818 to 2 Å"], load_particles, star)


def test_error_stack_missing_names_file_and_first_particle(tmp_path):
    star, _ = _make_dataset(tmp_path)

    def rename(blocks):
        blocks["particles"]["rlnImageName"][3:] = [image_name(i, "lost.mrcs") for i in range(3)]

    _edit_star(star, rename)
    _raises(["image stack not found", "lost.mrcs", "particle #4", "000001@lost.mrcs"],
            load_particles, star)


def test_error_index_out_of_range(tmp_path):
    star, _ = _make_dataset(tmp_path)

    def beyond(blocks):
        blocks["particles"]["rlnImageName"][2] = image_name(9, "parts.mrcs")

    _edit_star(star, beyond)
    _raises(["image index 10 out of range", "parts.mrcs", "holds 6 images", "particle #3"],
            load_particles, star)


def test_error_non_square_images(tmp_path):
    star, _ = _make_dataset(tmp_path)
    io.write_stack(tmp_path / "parts.mrcs", np.zeros((6, 16, 18), np.float32), 1.5)
    _raises(["non-square images", "18 x 16", "parts.mrcs"], load_particles, star)


def test_error_box_differs_between_stacks(tmp_path):
    star, _ = _make_dataset(tmp_path)
    io.write_stack(tmp_path / "other.mrcs", np.zeros((2, 20, 20), np.float32), 1.5)

    def second_stack(blocks):
        blocks["particles"]["rlnImageName"][5] = image_name(1, "other.mrcs")

    _edit_star(star, second_stack)
    _raises(["box size differs between stacks", "parts.mrcs", "16 px", "other.mrcs", "20 px"],
            load_particles, star)


def test_error_box_differs_from_image_size(tmp_path):
    star, _ = _make_dataset(tmp_path)
    _edit_star(star, lambda b: b["optics"].__setitem__("rlnImageSize", np.array([32])))
    _raises(["rlnImageSize 32", "16 px", "parts.mrcs"], load_particles, star)


@pytest.mark.filterwarnings("ignore:Data array contains NaN values:RuntimeWarning")
def test_error_nan_image_names_file_and_index(tmp_path):
    star, images = _make_dataset(tmp_path)
    parts = load_particles(star)
    read_images(parts, [4])  # caches the stack; rewriting it below must be noticed
    images[4, 3, 3] = np.nan
    io.write_stack(tmp_path / "parts.mrcs", images, 1.5)
    read_images(parts, [0, 1, 2])  # clean images read fine
    _raises(["000005@", "parts.mrcs", "NaN or Inf", "particle #5"], read_images, parts, [1, 4])


# ------------------------------------------------------------------------------------------
# Atomic writes and JSON


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.mrc"
    with pytest.raises(RuntimeError):
        with io.atomic_write(target) as tmp:
            with open(tmp, "w") as f:
                f.write("partial")
            raise RuntimeError("crash while writing")
    assert os.listdir(tmp_path) == []
    target.write_text("previous")
    with pytest.raises(RuntimeError):
        with io.atomic_write(target) as tmp:
            with open(tmp, "w") as f:
                f.write("partial")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "previous" and os.listdir(tmp_path) == ["out.mrc"]


def test_write_mrc_failure_keeps_previous_file(tmp_path):
    target = tmp_path / "map.mrc"
    io.write_mrc(target, np.ones((4, 4, 4)), 1.0)
    with pytest.raises(ValueError):
        io.write_mrc(target, np.ones((2, 2, 2, 2)), 1.0)
    np.testing.assert_array_equal(io.read_mrc(target)[0], np.ones((4, 4, 4)))
    assert os.listdir(tmp_path) == ["map.mrc"]


def test_write_json_converts_numpy(tmp_path):
    path = tmp_path / "s.json"
    io.write_json(path, {"res_ang": np.float32(3.5), "n": np.int64(7), "curve": np.arange(3)})
    assert json.loads(path.read_text()) == {"res_ang": 3.5, "n": 7, "curve": [0, 1, 2]}


def _strict_json(text):
    """Parse like a strict JSON parser: NaN, Infinity and -Infinity are errors."""
    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")
    return json.loads(text, parse_constant=refuse)


def test_write_json_is_strict(tmp_path):
    path = tmp_path / "s.json"
    io.write_json(path, {"change": float("nan"), "res": [np.float64(np.inf), 2.0], "c": np.array([1.0, np.nan]),
                         "nested": {"x": (-np.inf, 1)}})
    assert _strict_json(path.read_text()) == {"change": None, "res": [None, 2.0], "c": [1.0, None],
                                              "nested": {"x": [None, 1]}}


# ------------------------------------------------------------------------------------------
# RELION reads what we write


@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_star_printtable") is None,
                    reason="relion_star_printtable not on PATH (apt-get install relion)")
def test_relion_reads_saved_particles(tmp_path):
    star, _ = _make_dataset(tmp_path)
    out = tmp_path / "saved.star"
    save_particles(out, load_particles(star), psi_deg=np.arange(6.0))
    res = subprocess.run(["relion_star_printtable", str(out), "data_particles", "rlnImageName",
                          "rlnAnglePsi"], capture_output=True, text=True, check=True)
    rows = [line.split() for line in res.stdout.splitlines() if line.strip()]
    assert [r[0] for r in rows] == [image_name(i, "parts.mrcs") for i in range(6)]
    np.testing.assert_allclose([float(r[1]) for r in rows], np.arange(6.0), atol=STAR_TOL)
