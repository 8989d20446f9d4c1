"""E/M step of one half-set: marginalized backprojection and the noise-model helpers."""

import types

import numpy as np

from nonuniform.engine import estep, fourier, geometry
from nonuniform.engine.project import shift_phase
from nonuniform.engine.reconstruct import BackProjector


def test_particle_major_insertion_equals_one_pose_at_a_time(monkeypatch):
    """Every (image, pose) pair with a positive posterior is inserted once, into its image's fold,
    weighted by its posterior and centred by its own shift, whatever the chunking."""
    box, n, k = 16, 7, 4
    rng = np.random.default_rng(3)
    images = fourier.rfft2_c(rng.normal(size=(n, box, box)).astype(np.float32))
    ctfs = rng.uniform(-1, 1, size=(n, box, box // 2 + 1)).astype(np.float32)
    weights = rng.uniform(0.5, 2, size=(box, box // 2 + 1)).astype(np.float32)
    res = types.SimpleNamespace(
        candidate_rotations=geometry.euler_to_matrix(*rng.uniform(0, 180, size=(3, n * k))).reshape(n, k, 3, 3),
        candidate_shifts_px=rng.uniform(-2, 2, size=(n, k, 2)))
    post = rng.uniform(size=(n, k))
    post[post < 0.3] = 0  # some poses dropped
    post[:, 0] = np.maximum(post[:, 0], 0.1)
    post /= post.sum(1, keepdims=True)
    folds = np.array([0, 1, 1, 0, 1, 0, 0])
    monkeypatch.setattr(estep, "INSERT_CHUNK", 5)  # chunks that split a particle's poses
    got = [BackProjector(box), BackProjector(box)]
    estep._backproject_poses(got, folds, images, ctfs, res, post, weights, None)
    want = [BackProjector(box), BackProjector(box)]
    for i in range(n):
        for j in np.flatnonzero(post[i]):
            centred = images[i:i + 1] * shift_phase(box, -res.candidate_shifts_px[i:i + 1, j])
            want[folds[i]].insert(centred, ctfs[i:i + 1], res.candidate_rotations[i:i + 1, j],
                                  weights=weights[None] * np.float32(post[i, j]))
    for g, w in zip(got, want):
        assert g.count == w.count
        # Same sums in another order: float64 accumulators agree to rounding.
        np.testing.assert_allclose(g.data, w.data, rtol=1e-6, atol=1e-9 * np.abs(w.data).max())
        np.testing.assert_allclose(g.weight, w.weight, rtol=1e-6, atol=1e-9 * w.weight.max())
    assert got[0].count == int((post[folds == 0] > 0).sum()) and got[1].count > 0


def test_shell_power_and_scale_fit():
    box = 32
    rng = np.random.default_rng(0)
    noise = fourier.rfft2_c(rng.normal(scale=2.0, size=(1000, box, box)))
    p = estep.shell_power(noise, box)
    # White noise of variance 4: |F|² averages N² σ² in every shell (tolerance 5 %: shells from 3 on
    # hold >= 9 independent complex coefficients per image, >= 9,000 over the 1,000 images: ~1 % error).
    np.testing.assert_allclose(p[3:box // 2], box * box * 4.0, rtol=0.05)
    pred = fourier.rfft2_c(rng.normal(size=(3, box, box)))
    scaled = estep.fit_scale(pred * np.array([0.5, 2.0, -1.0])[:, None, None], pred)
    np.testing.assert_allclose(scaled, pred * np.array([0.5, 2.0, -1.0])[:, None, None], rtol=1e-10, atol=1e-9)
