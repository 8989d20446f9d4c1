"""The GPU route of the E/M-step against the host route: projection, backprojection, scoring, search.

Every test runs twice, on the host device and on a CUDA device: a real GPU with cupy arrays when
there is one, else numba's CUDA simulator with numpy arrays (the root conftest turns it on where there
is no GPU), which runs the same numba.cuda kernels and the same array code as a GPU, slowly: sizes
here are tiny (a few thousand kernel threads per call). The whole-refinement comparison needs a real
GPU (the simulator would take hours).
"""

import numpy as np
import pytest

from nonuniform.engine import backend, geometry, pose_search, project, reconstruct, scoring
from nonuniform.engine.errors import InputError

from .conftest import blob_phantom, write_tiny_simulation


def _gpu():
    try:
        return backend.open_gpu(0)
    except InputError:
        return None


GPU = _gpu()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(GPU is None, reason="needs cupy and a CUDA GPU, or numba's CUDA simulator "
                                                     "(NUMBA_ENABLE_CUDASIM=1)")]
BOX = 12


def _host(a):
    return backend.asnumpy(a)


@pytest.fixture(scope="module")
def volume():
    return blob_phantom(BOX, np.random.default_rng(0), n_blobs=12, sigma_px=1.0)


def _spectra(vol, rots, shifts, rng, noise=0.2):
    """rfft2_c images of ``vol`` at poses ``rots`` translated by ``shifts`` px, plus noise (host)."""
    ft = project.Projector(vol).project(rots) * project.shift_phase(BOX, shifts)
    noise_ft = (rng.normal(0, noise * BOX, ft.shape) + 1j * rng.normal(0, noise * BOX, ft.shape))
    return (ft + noise_ft).astype(np.complex64)


def test_projection_matches_host(volume):
    rots = geometry.random_rotations(4, np.random.default_rng(1))
    host = project.Projector(volume).project(rots)
    dev = project.Projector(volume, device=GPU).project(rots)
    assert isinstance(dev, GPU.xp.ndarray)
    # Same float32 trilinear interpolation from the same float32 spectrum (FFTs may differ in the last
    # bits between cuFFT and pocketfft): agreement to 1e-5 of the largest coefficient.
    assert np.allclose(_host(dev), host, atol=1e-5 * np.abs(host).max())


def test_backprojection_matches_host(volume):
    rng = np.random.default_rng(2)
    rots = geometry.random_rotations(3, rng)
    ft = _spectra(volume, rots, np.zeros((3, 2)), rng)
    ctf = rng.uniform(-1, 1, ft.shape).astype(np.float32)
    w = rng.uniform(0.5, 2, ft.shape).astype(np.float32)
    maps = []
    for dev in (backend.CPU, GPU):
        bp = reconstruct.BackProjector(BOX, device=dev)
        bp.insert(dev.asarray(ft), dev.asarray(ctf), rots, weights=dev.asarray(w),
                  symmetry=np.stack([np.eye(3), geometry.euler_to_matrix(0.0, 0.0, 180.0)]))
        d, wt = bp.hermitian_accumulators()
        maps.append((_host(d), _host(wt), _host(bp.reconstruct())))
    (d0, w0, m0), (d1, w1, m1) = maps
    # float64 sums of float32 terms in another order (atomics): 1e-6 of the largest accumulated value.
    assert np.allclose(d1, d0, atol=1e-6 * np.abs(d0).max())
    assert np.allclose(w1, w0, atol=1e-6 * w0.max())
    assert np.allclose(m1, m0, atol=1e-5 * np.abs(m0).max())


def _pixels_and_images(volume, n, rng):
    rots = geometry.random_rotations(n, rng)
    shifts = rng.uniform(-1.5, 1.5, (n, 2))
    ft = _spectra(volume, rots, shifts, rng)
    pix = scoring.pixel_set(BOX, 4)
    w = scoring.pixel_weights(pix, np.ones(BOX // 2 + 1, np.float32))
    return rots, shifts, ft, pix, w


def test_score_poses_matches_host(volume):
    rng = np.random.default_rng(3)
    rots, shifts, ft, pix, w = _pixels_and_images(volume, 3, rng)
    templates = geometry.random_rotations(24, rng)
    templates[5:8] = rots  # the true poses are among the candidates
    offsets = scoring.shift_grid(2.0, 1.0)
    out = {}
    for dev in (backend.CPU, GPU):
        proj = project.Projector(volume, device=dev)
        bank = scoring.TemplateBank(proj, templates, pix)
        x = scoring.gather(dev.asarray(ft), pix, dev)
        for metric in ("likelihood", "cc"):
            out[dev.kind, metric] = scoring.score_poses(x, None, dev.asarray(w), bank, offsets, pix, top_k=4,
                                                        chunk=10, metric=metric, device=dev)
    for metric in ("likelihood", "cc"):
        (s0, j0, t0), (s1, j1, t1) = out["cpu", metric], out["cuda", metric]
        # Identical ranking; scores from float32 GEMMs in another summation order: 1e-4 relative.
        assert np.array_equal(j0, j1) and np.array_equal(t0, t1)
        assert np.allclose(s0, s1, rtol=1e-4, atol=1e-4 * np.abs(s0).max())
        assert list(j0[:, 0]) == [5, 6, 7]


def test_score_candidates_matches_host(volume):
    rng = np.random.default_rng(4)
    rots, shifts, ft, pix, w = _pixels_and_images(volume, 2, rng)
    cand = np.stack([rots, geometry.random_rotations(2, rng)], axis=1)  # (2, 2, 3, 3): truth first
    cand_shift = np.stack([shifts.round(), np.zeros((2, 2))], axis=1)
    offsets = geometry.local_grid(np.eye(3), 6.0, 6.0)
    shift_offsets = scoring.shift_grid(1.0, 0.5)
    pen = rng.uniform(0, 1, (2, 2, len(offsets))).astype(np.float32)
    out = []
    for dev in (backend.CPU, GPU):
        proj = project.Projector(volume, device=dev)
        x = scoring.gather(dev.asarray(ft), pix, dev)
        out.append(scoring.score_candidates(proj, x, None, dev.asarray(w), pix, cand, cand_shift, offsets,
                                            shift_offsets, top_k=3, rot_penalty=pen))
    (s0, r0, t0), (s1, r1, t1) = out
    assert np.allclose(r0, r1) and np.allclose(t0, t1)
    assert np.allclose(s0, s1, rtol=1e-4, atol=1e-4 * np.abs(s0).max())


def test_global_search_matches_host(volume):
    rng = np.random.default_rng(5)
    rots, shifts, ft, pix, w = _pixels_and_images(volume, 2, rng)
    grid = geometry.random_rotations(30, rng)
    grid[:2] = rots @ geometry.euler_to_matrix(4.0, 3.0, -5.0)  # near the truth, not on it
    params = pose_search.SearchParams(coarse_step_deg=12.0, final_step_deg=6.0, top_k=2, refine_top_k=2,
                                      final_top_k=2, shift_range_px=2.0, shift_step_px=1.0)
    out = []
    for dev in (backend.CPU, GPU):
        proj = project.Projector(volume, device=dev)
        out.append(pose_search.global_search(proj, dev.asarray(ft), None, np.ones(BOX // 2 + 1), 4.0,
                                             params=params, rotations=grid))
    a, b = out
    assert np.allclose(a.rotations, b.rotations) and np.allclose(a.shifts_px, b.shifts_px)
    assert np.allclose(a.candidate_scores, b.candidate_scores, rtol=1e-4)


@pytest.mark.skipif(GPU is not None and GPU.simulated, reason="a refinement under numba's CUDA simulator takes hours")
def test_refinement_on_gpu_matches_cpu(tmp_path):
    from nonuniform.engine.refine import RefineConfig, Refinement

    data = write_tiny_simulation(tmp_path / "data", 300, seed=3)
    runs = {}
    for name, gpu in (("cpu", None), ("gpu", 0)):
        cfg = RefineConfig(max_iterations=3, nu_cutoffs=12, gpu=gpu)
        st = Refinement(str(data / "particles.star"), str(data / "truth.mrc"), str(tmp_path / name), cfg).run()
        runs[name] = st
    a, b = runs["cpu"], runs["gpu"]
    # Poses: float32 scores in another order can swap near-ties; most particles keep the same pose.
    same = geometry.angular_distance_deg(a.rotations, b.rotations) < 1e-3
    assert same.mean() > 0.95
    for h in (0, 1):
        ra, rb = a.references[h].ravel(), b.references[h].ravel()
        assert np.corrcoef(ra, rb)[0, 1] > 0.999
    assert abs(a.resolution_ang - b.resolution_ang) <= 0.05 * a.resolution_ang


def test_e_and_m_step_matches_host(tmp_path):
    """One half-set's whole E- and M-step (images streamed, CTFs, global search, noise model,
    backprojection at each of its two best poses), box 16, 4 particles, a 45° grid refined to
    22.5° (about 30 s under the simulator)."""
    from nonuniform.engine import particles as particles_mod
    from nonuniform.engine.estep import align_and_backproject
    from nonuniform.engine.refine import RefineConfig

    from .conftest import simulate_star

    rng = np.random.default_rng(6)
    vol = blob_phantom(16, rng, n_blobs=10, sigma_px=1.2)
    star = simulate_star(tmp_path, vol, 4, 4.0, rng, noise_std=0.05, max_origin_px=1.0)
    parts = particles_mod.load_particles(str(star))
    cfg = RefineConfig(initial_step_deg=45.0, shift_range_px=2.0, batch=3, posterior_poses=2, min_posterior=0.0)
    idx = np.arange(4)
    sigma2 = np.full(9, 0.05 ** 2 * 16 ** 2)  # white noise of std 0.05 in rfft2_c units: likelihood metric
    out = []
    for dev in (backend.CPU, GPU):
        out.append(align_and_backproject(parts, idx, idx % 2, vol, sigma2, cfg, (True, 22.5, 4.0), (1,),
                                         np.eye(3)[None], device=dev))
    a, b = out
    assert np.allclose(a.rotations, b.rotations) and np.allclose(a.shifts_px, b.shifts_px)
    assert np.allclose(a.sigma2, b.sigma2, rtol=1e-4)
    assert np.array_equal(a.n_poses, b.n_poses) and np.allclose(a.pmax, b.pmax, rtol=1e-3)
    for fa, fb in zip(a.folds, b.folds):
        da, db = fa.hermitian_accumulators()[0], _host(fb.hermitian_accumulators()[0])
        assert np.allclose(da, db, atol=1e-5 * np.abs(da).max())
