"""nonuniform.convert: Scipion particles <-> the engine's STAR files (no Scipion project needed)."""

import numpy as np
import pytest

pytest.importorskip("pwem", reason="scipion-em not installed")

from pwem.convert.transformations import euler_matrix  # noqa: E402
from pwem.objects import (CTFModel, Acquisition, Integer, Particle, SetOfParticles,  # noqa: E402
                          Transform)

from nonuniform import convert  # noqa: E402
from nonuniform.engine import geometry, io, particles, star  # noqa: E402

pytestmark = pytest.mark.scipion

BOX, APIX = 16, 2.5


def scipion_matrix(rot, tilt, psi, ox_px, oy_px):
    """Scipion's ALIGN_PROJ matrix of a RELION pose, built the way the RELION plugin does
    (pwem's transformations, not our geometry module): an independent oracle."""
    r = euler_matrix(*np.deg2rad([-rot, -tilt, -psi]), axes="szyz")
    r[:3, 3] = [-ox_px, -oy_px, 0.0]
    return np.linalg.inv(r)


def make_set(tmp_path, n, rng, ids=None, disabled=(), poses=True, stack=None, subsets=None):
    """A SetOfParticles of ``n`` images of one MRC stack, with CTF and (optionally) ALIGN_PROJ poses."""
    stack = stack or str(tmp_path / "stack.mrcs")
    io.write_stack(stack, rng.standard_normal((n, BOX, BOX)).astype(np.float32), APIX)
    parts = SetOfParticles(filename=str(tmp_path / "particles.sqlite"))
    parts.setSamplingRate(APIX)
    acq = Acquisition(voltage=200.0, sphericalAberration=2.0, amplitudeContrast=0.07, magnification=50000)
    parts.setAcquisition(acq)
    parts.setHasCTF(True)
    if poses:
        parts.setAlignmentProj()
    truth = {}
    for i in range(n):
        p = Particle(location=(i + 1, stack))
        if ids is not None:
            p.setObjId(ids[i])
        ctf = CTFModel(defocusU=float(rng.uniform(9000, 20000)), defocusV=float(rng.uniform(8000, 9000)),
                       defocusAngle=float(rng.uniform(0, 180)))
        ctf.setPhaseShift(float(rng.uniform(0, 90)))
        ctf.standardize()
        p.setCTF(ctf)
        pose = (rng.uniform(-180, 180), rng.uniform(1, 179), rng.uniform(-180, 180), *rng.uniform(-4, 4, 2))
        if poses:
            p.setTransform(Transform(scipion_matrix(*pose)))
        p.setEnabled(i not in disabled)
        if subsets is not None:
            p._rlnRandomSubset = Integer(subsets[i])
        parts.append(p)
        truth[p.getObjId()] = (pose, ctf.getDefocusU(), ctf.getDefocusV(), ctf.getDefocusAngle(),
                               ctf.getPhaseShift())
    parts.write()
    return parts, truth


def test_geometry_matches_the_relion_plugin_convention():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pose = (rng.uniform(-180, 180), rng.uniform(0.5, 179.5), rng.uniform(-180, 180), *rng.uniform(-5, 5, 2))
        m = convert.matrixFromGeometry(*pose)
        # Same matrix as pwem's transformations give (float64 round-off only).
        assert np.allclose(m, scipion_matrix(*pose), atol=1e-12)
        back = convert.geometryFromMatrix(m)
        # Same rotation (compared as matrices: arccos in angular_distance_deg resolves only ~1e-6°).
        assert np.allclose(geometry.euler_to_matrix(*back[:3]), geometry.euler_to_matrix(*pose[:3]), atol=1e-12)
        assert np.allclose(back[3:], pose[3:], atol=1e-12)


def test_pose_survives_scipion_star_engine_star_scipion(tmp_path):
    """A known pose goes Scipion -> STAR -> engine -> STAR -> Scipion unchanged (to 1e-4°)."""
    rng = np.random.default_rng(1)
    parts, truth = make_set(tmp_path, 12, rng)
    star_in = str(tmp_path / "in.star")
    assert convert.writeSetOfParticles(parts, star_in, str(tmp_path)) == 12
    loaded = particles.load_particles(star_in)
    # The engine reads the poses (RELION angles and origins in Å), CTF and optics we wrote.
    for k, (pose, du, dv, ang, phase) in enumerate(truth.values()):
        a = geometry.euler_to_matrix(*pose[:3])
        b = geometry.euler_to_matrix(loaded.rot_deg[k], loaded.tilt_deg[k], loaded.psi_deg[k])
        assert geometry.angular_distance_deg(a[None], b[None])[0] < 1e-4  # STAR keeps 6 decimals
        assert np.allclose([loaded.shift_x_ang[k], loaded.shift_y_ang[k]], np.array(pose[3:]) * APIX, atol=1e-5)
        assert np.allclose([loaded.defocus_u_ang[k], loaded.defocus_v_ang[k], loaded.defocus_angle_deg[k],
                            loaded.phase_shift_deg[k]], [du, dv, ang, phase], atol=1e-5)
    assert loaded.pixel_size_ang == APIX and loaded.box_px == BOX
    assert np.allclose([loaded.voltage_kv[0], loaded.cs_mm[0], loaded.amplitude_contrast_frac[0]], [200, 2, 0.07])
    star_out = str(tmp_path / "out.star")
    particles.save_particles(star_out, loaded, random_subset=np.arange(12) % 2 + 1)
    out = convert.copyRefinedParticles(parts, SetOfParticles(filename=str(tmp_path / "out.sqlite")), star_out)
    assert out.getSize() == 12 and out.hasAlignmentProj()
    for p in out:
        pose = truth[p.getObjId()][0]
        back = convert.geometryFromMatrix(p.getTransform().getMatrix())
        a0, a1 = geometry.euler_to_matrix(*pose[:3]), geometry.euler_to_matrix(*back[:3])
        assert geometry.angular_distance_deg(a0[None], a1[None])[0] < 1e-4
        assert np.allclose(back[3:], pose[3:], atol=1e-5)
        assert p._rlnRandomSubset.get() == (p.getObjId() - 1) % 2 + 1
        assert p.getCTF().getDefocusU() == pytest.approx(truth[p.getObjId()][1])  # input attributes kept


def test_subset_with_disabled_items_maps_back_by_id(tmp_path):
    """Ids with gaps, disabled items, and an engine file whose rows are in another order."""
    rng = np.random.default_rng(2)
    ids = [3, 4, 7, 10, 11, 15, 16, 20, 21, 30]
    parts, truth = make_set(tmp_path, len(ids), rng, ids=ids, disabled={1, 5})  # ids 4 and 15 disabled
    star_in = str(tmp_path / "in.star")
    assert convert.writeSetOfParticles(parts, star_in, str(tmp_path)) == 8
    blocks = star.read_star(star_in)
    written = [int(i) for i in blocks["particles"]["rlnImageId"]]
    assert written == [3, 7, 10, 11, 16, 20, 21, 30]
    # Engine output with new poses and its rows reversed: nothing may depend on row order.
    loaded = particles.load_particles(star_in)
    new_rot = np.arange(8) * 10.0
    particles.save_particles(str(tmp_path / "eng.star"), loaded, rot_deg=new_rot, tilt_deg=np.full(8, 90.0),
                             psi_deg=np.zeros(8), shift_x_ang=np.zeros(8), shift_y_ang=np.zeros(8),
                             random_subset=np.ones(8, int),
                             extra_columns={"rlnMaxValueProbDistribution": np.linspace(0.1, 0.8, 8),
                                            "rlnNrOfSignificantSamples": np.arange(1, 9)})
    blocks = star.read_star(str(tmp_path / "eng.star"))
    blocks["particles"] = star.Table((k, np.asarray(v)[::-1]) for k, v in blocks["particles"].items())
    star.write_star(str(tmp_path / "eng_reversed.star"), blocks)
    out = convert.copyRefinedParticles(parts, SetOfParticles(filename=str(tmp_path / "out.sqlite")),
                                       str(tmp_path / "eng_reversed.star"))
    got = {p.getObjId(): (convert.geometryFromMatrix(p.getTransform().getMatrix())[:3],
                          p._rlnMaxValueProbDistribution.get(), p._rlnNrOfSignificantSamples.get(), p.isEnabled())
           for p in out}
    assert sorted(got) == written
    for k, objId in enumerate(written):
        angles, pmax, nsig, enabled = got[objId]
        a = geometry.euler_to_matrix(new_rot[k], 90.0, 0.0)
        assert geometry.angular_distance_deg(a[None], geometry.euler_to_matrix(*angles)[None])[0] < 1e-4
        assert pmax == pytest.approx(0.1 + 0.1 * k) and nsig == k + 1 and enabled


def test_existing_half_sets_are_kept_and_no_alignment_is_allowed(tmp_path):
    rng = np.random.default_rng(3)
    parts, _ = make_set(tmp_path, 6, rng, poses=False, subsets=[1, 2, 2, 1, 1, 2])
    star_in = str(tmp_path / "in.star")
    convert.writeSetOfParticles(parts, star_in, str(tmp_path))
    loaded = particles.load_particles(star_in)
    assert loaded.random_subset.tolist() == [1, 2, 2, 1, 1, 2]
    assert np.all(loaded.rot_deg == 0) and np.all(loaded.shift_x_ang == 0)


def test_other_formats_are_converted_once_into_extra(tmp_path):
    """A SPIDER stack (not readable by the engine) becomes one MRC stack in the extra folder."""
    from pwem.emlib.image import ImageHandler

    rng = np.random.default_rng(4)
    parts, _ = make_set(tmp_path, 5, rng)
    ImageHandler().convertStack(str(tmp_path / "stack.mrcs"), str(tmp_path / "stack.stk"))
    spider = SetOfParticles(filename=str(tmp_path / "spider.sqlite"))
    spider.copyInfo(parts)
    for p in parts:
        q = p.clone()
        q.setLocation(p.getIndex(), str(tmp_path / "stack.stk"))
        spider.append(q)
    spider.write()
    extra = tmp_path / "extra"
    extra.mkdir()
    convert.writeSetOfParticles(spider, str(tmp_path / "in.star"), str(extra))
    loaded = particles.load_particles(str(tmp_path / "in.star"))
    assert {path for _, path in loaded.image_refs} == {str(extra / "converted_particles.mrcs")}
    original = io.open_stack(str(tmp_path / "stack.mrcs"))[:]
    # The same pixels after MRC -> SPIDER -> MRC (float32 both ways).
    assert np.allclose(particles.read_images(loaded, np.arange(5)), original, atol=1e-6)


def test_fsc_curves_and_checks(tmp_path):
    from nonuniform.engine import fsc

    n = 32
    curves = {k: np.linspace(1, 0, n // 2 + 1) for k in convert.FSC_LABELS}
    fsc.write_fsc_csv(str(tmp_path / "fsc.csv"), curves, n, 2.0)
    out = convert.readFscCurves(str(tmp_path / "fsc.csv"))
    assert [f.getObjLabel() for f in out] == list(convert.FSC_LABELS.values())
    x, y = out[0].getData()
    assert x[-1] == pytest.approx(0.25) and y[0] == pytest.approx(1.0)  # 1/Å up to Nyquist of 2 Å/px
    assert convert.symmetryError("D7") is None and "X3" in convert.symmetryError("X3")
    assert convert.coarseStartWarning(120, 30) is None
    assert "2.6 resolution elements" in convert.coarseStartWarning(77, 30)
