"""Cross-checks against the RELION 3.1 binaries (Debian ``relion`` package): image model, reconstruction
and STAR interoperability.

Every test runs the RELION program it needs and is skipped when that program is not on PATH
(``apt-get install relion``). Boxes are even (64): RELION 3.1 mishandles odd boxes (it writes odd-box
projections shifted by one pixel), so there is nothing to compare there.

RELION maps do not reproduce the zero frequency (``relion_reconstruct`` leaves a near-constant offset of
about -mean(map)), so maps are compared after removing their means and FSC shell 0 is ignored.
relion_reconstruct also multiplies its output by a soft sphere (1 out to N/2, ~3 px raised-cosine
edge; measured), so our maps get that sphere before they are compared with RELION's: otherwise the
noise we keep in the box corners, not the reconstruction, dominates the difference.
RELION resolves relative image paths from its working directory (the project folder), so RELION
programs run with ``cwd`` set to the folder that holds the STAR files.
"""

import dataclasses
import shutil
import subprocess

import numpy as np
import pytest

from nonuniform.engine import fourier, fsc, geometry, io, masks, particles, pipeline, project, reconstruct, symmetry

from .conftest import blob_phantom, simulate_star

BOX = 64
APIX = 1.5
# Shells 1 .. 0.8 Nyquist: the band the reconstruction accuracy target is stated on (docs/architecture.rst).
BAND = slice(1, int(0.8 * BOX / 2) + 1)


def needs(*programs):
    """Mark a test ``relion`` and skip it unless every program is on PATH."""
    missing = [p for p in programs if shutil.which(p) is None]

    def wrap(func):
        func = pytest.mark.relion(func)
        return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not on PATH "
                                                        "(apt-get install relion)")(func)
    return wrap


def run_relion(args, cwd):
    """Run a RELION program; on failure show its output (RELION reports errors on stdout)."""
    res = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(map(str, args))} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def fine_volume(rng):
    """Blobs of 1 px sigma plus white noise inside a sphere: power at every frequency up to Nyquist."""
    vol = blob_phantom(BOX, rng, n_blobs=60, sigma_px=1.0)
    z, y, x = np.mgrid[:BOX, :BOX, :BOX] - BOX // 2
    inside = x * x + y * y + z * z < (0.35 * BOX) ** 2
    return (vol + 0.3 * rng.standard_normal(vol.shape) * inside).astype(np.float32)


def random_poses(n, rng, max_origin_px=6.0):
    """Uniform poses, origins (Å), astigmatic defocus and phase shifts, as STAR columns."""
    rot, tilt, psi = geometry.matrix_to_euler(geometry.random_rotations(n, rng))
    du = rng.uniform(5000, 25000, n)
    return dict(rot_deg=rot, tilt_deg=tilt, psi_deg=psi,
                shift_x_ang=rng.uniform(-max_origin_px, max_origin_px, n) * APIX,
                shift_y_ang=rng.uniform(-max_origin_px, max_origin_px, n) * APIX,
                defocus_u_ang=du, defocus_v_ang=du - rng.uniform(0, 3000, n),
                defocus_angle_deg=rng.uniform(-180, 180, n), phase_shift_deg=rng.uniform(0, 120, n))


def write_pose_star(path, poses, stack="none.mrcs"):
    """A STAR file with our writer; relion_project --ang ignores the (absent) images it names."""
    n = len(poses["rot_deg"])
    p = dict(poses)
    particles.write_particles_star(
        str(path), [particles.image_name(i, stack) for i in range(n)], APIX, BOX, 300, 2.7, 0.1,
        p.pop("defocus_u_ang"), p.pop("defocus_v_ang"), p.pop("defocus_angle_deg"), **p)


def our_images(vol, parts):
    """Our image model for a loaded STAR file: irfft2(CTF · shift(project(A), -origin))."""
    idx = np.arange(len(parts))
    ft = project.Projector(vol).project(pipeline.particle_rotations(parts))
    ft = project.shift_images_ft(ft, pipeline.image_shifts_px(parts))
    return fourier.irfft2_c(pipeline.particle_ctfs(parts, idx) * ft, parts.box_px)


def subset(parts, idx):
    """A shallow copy of ``parts`` restricted to the particles ``idx``."""
    fields = {}
    for f in dataclasses.fields(parts):
        v = getattr(parts, f.name)
        if isinstance(v, np.ndarray) and v.shape == (len(parts),):
            v = v[idx]
        elif f.name == "image_refs":
            v = [v[i] for i in idx]
        fields[f.name] = v
    return particles.Particles(**fields)


def ncc(a, b):
    """Normalized correlation of each image pair, (n,)."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def band_limit(images, r_max_px):
    """Keep the Fourier coefficients with |k| <= r_max_px."""
    n, box = len(images), images.shape[-1]
    _, _, flat = project.image_pixels(box, r_max_px)
    f = fourier.rfft2_c(images).reshape(n, -1)
    g = np.zeros_like(f)
    g[:, flat] = f[:, flat]
    return fourier.irfft2_c(g.reshape(n, box, box // 2 + 1), box)


def fsc_no_dc(a, b):
    """FSC of mean-removed maps (RELION maps carry a DC offset); read shells >= 1 only."""
    return fsc.fsc_curve(a - a.mean(), b - b.mean())


def fsc_vs_relion(ours, theirs):
    """FSC of our map and a relion_reconstruct map, both mean-removed and multiplied by RELION's
    output sphere (outside it RELION's map is a constant that would otherwise bias shell 1)."""
    sphere = masks.soft_sphere(BOX, BOX / 2, 3.0)
    return fsc.fsc_curve((ours - ours.mean()) * sphere, (theirs - theirs.mean()) * sphere)


# ----------------------------------------------------------------------------------------------
# Shared RELION runs (module scope: each RELION program runs once for several tests)


@pytest.fixture(scope="module")
def relion_stack(tmp_path_factory):
    """3000 noiseless relion_project --ctf images of a fine-detail map, in a RELION-like project.

    The input STAR file is written by our ``write_particles_star``; relion_project runs from the
    project folder and writes ``Project/job001/sim.star`` whose image names are relative to that
    folder (``Project/job001/sim.mrcs``), as RELION jobs do.
    """
    if shutil.which("relion_project") is None:
        pytest.skip("relion_project not on PATH (apt-get install relion)")
    root = tmp_path_factory.mktemp("relion_stack")
    rng = np.random.default_rng(2024)
    vol = fine_volume(rng)
    io.write_mrc(str(root / "truth.mrc"), vol, APIX)
    poses = random_poses(3000, rng)
    write_pose_star(root / "poses.star", poses)
    (root / "Project" / "job001").mkdir(parents=True)
    run_relion(["relion_project", "--i", "truth.mrc", "--o", "Project/job001/sim", "--ang", "poses.star",
                "--ctf", "--angpix", APIX], cwd=root)
    return {"root": root, "truth": vol, "poses": poses, "star": root / "Project" / "job001" / "sim.star"}


@pytest.fixture(scope="module")
def our_stack(tmp_path_factory):
    """2000 noiseless particles simulated with our engine and written with our STAR writer."""
    root = tmp_path_factory.mktemp("our_stack")
    rng = np.random.default_rng(77)
    vol = blob_phantom(BOX, rng, n_blobs=60, sigma_px=1.0)
    star = simulate_star(root, vol, 2000, APIX, rng, max_origin_px=5.0)
    return {"root": root, "truth": vol, "star": star}


# ----------------------------------------------------------------------------------------------
# a. Image model: relion_project images == ours


@needs("relion_project")
def test_projection_images_match_relion_project(relion_stack):
    """Same map, same STAR file (poses, origins, astigmatic CTF, phase shift): same images."""
    parts = particles.load_particles(str(relion_stack["star"]))
    idx = np.arange(60)  # 60 random poses are plenty to catch a convention error; keeps it fast
    theirs = pipeline.read_images(parts, idx)
    sub = subset(parts, idx)
    ours = our_images(relion_stack["truth"], sub)
    # Whole image, every frequency: measured min cc 0.9983 on this white-noise-rich map. The whole
    # difference sits in the outermost shell N/2-1 < |k| <= N/2, where RELION's sphere-truncated
    # padded spectrum differs from plain trilinear slicing (cc 0.999996 on blobs alone, whose power
    # there is tiny). 0.99 leaves room for that shell and still fails every convention error: an
    # origin sign flip gives cc < 0.15, defocus angle -θ ~0.2, phase shift -φ ~-1, Aᵀ for A ~0.
    cc = ncc(theirs, ours)
    assert cc.min() > 0.99, f"image correlation with relion_project down to {cc.min():.5f}"
    # Inside |k| <= N/2 - 1 the two models agree to rounding: measured 1 - cc = 2e-11 and LSQ
    # scale 1 ± 2e-7. Without the sinc² gridding pre-correction: 1 - cc = 5e-4, scale 1.063, so the
    # bounds 1e-6 and 1e-3 pin the pre-correction too.
    a, b = band_limit(theirs, BOX / 2 - 1), band_limit(ours, BOX / 2 - 1)
    cc_in = ncc(a, b)
    assert 1 - cc_in.min() < 1e-6, f"band-limited 1 - cc up to {1 - cc_in.min():.2e}"
    scale = (a * b).sum(axis=(1, 2)) / (b * b).sum(axis=(1, 2))
    np.testing.assert_allclose(scale, 1.0, atol=1e-3)
    # Sensitivity: our images with the opposite origin sign must not pass.
    sub.shift_x_ang, sub.shift_y_ang = -sub.shift_x_ang, -sub.shift_y_ang
    assert ncc(theirs, our_images(relion_stack["truth"], sub)).max() < 0.9


# ----------------------------------------------------------------------------------------------
# b. Reconstruction from RELION-simulated images == relion_reconstruct --ctf


@needs("relion_project", "relion_reconstruct")
def test_reconstruction_matches_relion_reconstruct(relion_stack):
    """Our reconstruction of relion_project's images (read from RELION's STAR) == relion_reconstruct's."""
    root = relion_stack["root"]
    run_relion(["relion_reconstruct", "--i", "Project/job001/sim.star", "--o", "relion_rec.mrc", "--ctf"],
               cwd=root)
    theirs, apix = io.read_mrc(str(root / "relion_rec.mrc"))
    assert abs(apix - APIX) < 1e-3
    # We read the STAR file RELION wrote (project-relative image paths) and reconstruct it.
    ours = pipeline.reconstruct_particles(particles.load_particles(str(relion_stack["star"])))["map"]
    # Measured (both maps times RELION's output sphere): FSC(ours, RELION) >= 0.9995 over shells
    # 1..0.8 Nyquist and 0.993 at Nyquist with 3000 noiseless particles. 0.995 leaves margin for
    # library/rounding changes while failing a wrong CTF or origin convention (FSC near 0 or
    # negative at mid frequencies) or a reconstruction without gridding correction.
    curve = fsc_vs_relion(ours, theirs)
    assert curve[BAND].min() > 0.995, f"FSC(ours, relion_reconstruct) down to {curve[BAND].min():.4f}"
    # Same amplitude scale: LSQ gain of RELION's map on ours measured 1.007; 2 % allows the
    # different treatment of the outer shells.
    gain = float(((theirs - theirs.mean()) * (ours - ours.mean())).sum() / ((ours - ours.mean()) ** 2).sum())
    assert abs(gain - 1) < 0.02
    # Both reconstruct the truth (accuracy target of docs/architecture.rst: FSC > 0.9 to 0.8
    # Nyquist, noiseless; measured 0.998 for both).
    truth = relion_stack["truth"]
    for name, m in (("ours", ours), ("relion", theirs)):
        c = fsc_no_dc(m, truth)
        assert c[BAND].min() > 0.9, f"FSC({name}, truth) down to {c[BAND].min():.4f}"


# ----------------------------------------------------------------------------------------------
# c. STAR interoperability


@needs("relion_project")
def test_we_read_the_star_relion_writes(relion_stack):
    """relion_project's output STAR: poses, origins, CTF and image paths as we wrote them."""
    parts = particles.load_particles(str(relion_stack["star"]))
    poses = relion_stack["poses"]
    n = len(poses["rot_deg"])
    assert len(parts) == n and parts.box_px == BOX and parts.has_ctf
    assert parts.pixel_size_ang == pytest.approx(APIX)
    root = relion_stack["root"]
    assert parts.image_refs[0] == (0, str(root / "Project" / "job001" / "sim.mrcs"))
    assert parts.image_refs[-1][0] == n - 1
    # RELION prints 6 significant digits (e.g. -137.62908, 15219.816094).
    for ours_name, col in (("rot_deg", "rot_deg"), ("tilt_deg", "tilt_deg"), ("psi_deg", "psi_deg"),
                           ("shift_x_ang", "shift_x_ang"), ("shift_y_ang", "shift_y_ang"),
                           ("defocus_u_ang", "defocus_u_ang"), ("defocus_v_ang", "defocus_v_ang"),
                           ("defocus_angle_deg", "defocus_angle_deg"),
                           ("phase_shift_deg", "phase_shift_deg")):
        np.testing.assert_allclose(getattr(parts, ours_name), poses[col], rtol=1e-5, atol=1e-4,
                                   err_msg=ours_name)
    np.testing.assert_allclose(parts.voltage_kv, 300)
    np.testing.assert_allclose(parts.cs_mm, 2.7)
    np.testing.assert_allclose(parts.amplitude_contrast_frac, 0.1)


@needs("relion_reconstruct")
def test_relion_reconstructs_the_star_we_write(our_stack, tmp_path):
    """relion_reconstruct --subset 1/2 on a STAR file re-saved with save_particles in another folder
    (absolute image names), with new half-set labels and, for half 2 only, poses we changed."""
    parts = particles.load_particles(str(our_stack["star"]))
    labels = np.where(np.arange(len(parts)) < len(parts) // 2, 1, 2)
    psi = np.where(labels == 2, parts.psi_deg + 90.0, parts.psi_deg)  # half 2: wrong in-plane angle
    saved = tmp_path / "Refine" / "run_data.star"
    saved.parent.mkdir()
    particles.save_particles(str(saved), parts, psi_deg=psi, random_subset=labels)
    for h in (1, 2):
        run_relion(["relion_reconstruct", "--i", "Refine/run_data.star", "--o", f"half{h}.mrc", "--ctf",
                    "--subset", h], cwd=tmp_path)
    theirs = [io.read_mrc(str(tmp_path / f"half{h}.mrc"))[0] for h in (1, 2)]
    ours = pipeline.reconstruct_particles(particles.load_particles(str(saved)), halves=True)
    truth = our_stack["truth"]
    # Half 1 (true poses, 1000 noiseless particles) is the expected map: measured FSC vs truth
    # 0.997 to 0.8 Nyquist; 0.9 is the accuracy target (docs/architecture.rst). A pose, origin or CTF column that
    # RELION misread would break it (NB: relion_reconstruct --ctf runs silently without defocus).
    c = fsc_no_dc(theirs[0], truth)
    assert c[BAND].min() > 0.9, f"FSC(relion half1, truth) down to {c[BAND].min():.4f}"
    # Half 2 was written with psi + 90°: RELION must read those values and labels as we do. Its map
    # is far from the truth (measured mean FSC 0.07; had it used the old poses or half 1's
    # particles it would be ~1) and equal to our reconstruction of the same rows: measured min FSC
    # 0.987 (half 2; inconsistent poses act like noise, weighted a little differently by RELION's
    # iterative gridding and our division) and 0.9992 (half 1).
    assert fsc_no_dc(theirs[1], truth)[BAND].mean() < 0.5
    assert fsc_vs_relion(ours["half2"], theirs[1])[BAND].min() > 0.95
    assert fsc_vs_relion(ours["half1"], theirs[0])[BAND].min() > 0.99


# ----------------------------------------------------------------------------------------------
# Symmetry in reconstruction (operators themselves: test_symmetry.py vs relion_refine)


@needs("relion_reconstruct")
def test_symmetrized_reconstruction_matches_relion(our_stack):
    """D3 reconstruction of an asymmetric particle set: RELION and we apply the operators alike."""
    root = our_stack["root"]
    out = root / "relion_d3_half1.mrc"
    run_relion(["relion_reconstruct", "--i", "particles.star", "--o", out.name, "--ctf", "--subset", 1,
                "--sym", "D3"], cwd=root)
    theirs, _ = io.read_mrc(str(out))
    parts = particles.load_particles(str(our_stack["star"]))
    idx = np.flatnonzero(parts.random_subset == 1)
    bp = reconstruct.BackProjector(BOX)
    bp.insert(pipeline.centred_image_spectra(parts, idx), pipeline.particle_ctfs(parts, idx),
              pipeline.particle_rotations(parts, idx), symmetry=symmetry.symmetry_matrices("D3"))
    ours = bp.reconstruct()
    # Same particles and the same group: maps agree (measured FSC min 0.997, mean 0.999 over
    # shells 1..0.8 Nyquist). Operators applied on the other side (R·A instead of A·R) give min
    # 0.36, the D3 2-folds turned 90° about z min 0.42. 0.98 allows for the different
    # interpolation of the symmetry copies in RELION's symmetrization and our repeated insertion.
    curve = fsc_vs_relion(ours, theirs)
    assert curve[BAND].min() > 0.98, f"FSC(ours D3, relion D3) down to {curve[BAND].min():.4f}"
    # Sensitivity: the C1 map of the same particles is far from the D3 one (mean FSC 0.45).
    c1 = pipeline.reconstruct_particles(subset(parts, idx))["map"]
    assert fsc_vs_relion(c1, theirs)[BAND].mean() < 0.8
