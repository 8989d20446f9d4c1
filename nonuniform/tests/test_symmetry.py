"""Tests for nonuniform.engine.symmetry: orders, closure, orientation, RELION agreement."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from nonuniform.engine.errors import InputError
from nonuniform.engine.symmetry import symmetry_matrices, symmetry_order

GROUPS_AND_ORDERS = [
    ("C1", 1),
    ("C2", 2),
    ("c5", 5),
    ("C12", 12),
    ("D1", 2),
    ("D2", 4),
    ("d3", 6),
    ("D7", 14),
    ("T", 12),
    ("o", 24),
    ("I", 60),
    ("I1", 60),
    ("i2", 60),
    ("I3", 60),
    ("I4", 60),
]
GROUP_NAMES = [g for g, _ in GROUPS_AND_ORDERS]

# Group elements are built from float64 products of a few rotations: exact to ~1e-15. 1e-9
# leaves six orders of magnitude of margin and is far below the ~0.1 gap between elements.
EXACT_TOL = 1e-9


def _index_of(mats, r, tol):
    d = np.abs(mats - r).max(axis=(1, 2))
    hits = np.flatnonzero(d < tol)
    return hits


@pytest.mark.parametrize("name,order", GROUPS_AND_ORDERS)
def test_order_and_identity_first(name, order):
    mats = symmetry_matrices(name)
    assert mats.shape == (order, 3, 3)
    assert mats.dtype == np.float64
    assert symmetry_order(name) == order
    np.testing.assert_array_equal(mats[0], np.eye(3))


@pytest.mark.parametrize("name", GROUP_NAMES)
def test_proper_rotations_and_distinct(name):
    mats = symmetry_matrices(name)
    eye = np.broadcast_to(np.eye(3), mats.shape)
    np.testing.assert_allclose(mats @ mats.transpose(0, 2, 1), eye, atol=EXACT_TOL)
    np.testing.assert_allclose(np.linalg.det(mats), 1.0, atol=EXACT_TOL)
    for r in mats:
        assert len(_index_of(mats, r, 1e-6)) == 1


@pytest.mark.parametrize("name", GROUP_NAMES)
def test_closure_and_inverse(name):
    mats = symmetry_matrices(name)
    products = np.einsum("aij,bjk->abik", mats, mats).reshape(-1, 3, 3)
    # every product is an element of the group: min distance to the set < EXACT_TOL
    d = np.abs(products[:, None] - mats[None]).max(axis=(2, 3)).min(axis=1)
    assert d.max() < EXACT_TOL
    for r in mats:
        assert len(_index_of(mats, r.T, EXACT_TOL)) == 1


def _nfold_axes(mats):
    """(n, unit axis with a positive largest component) for every non-identity operator."""
    out = []
    for r in mats[1:]:
        angle = np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))
        w, v = np.linalg.eig(r)
        axis = np.real(v[:, np.argmin(np.abs(w - 1.0))])
        axis /= np.linalg.norm(axis)
        if axis[np.argmax(np.abs(axis))] < 0:
            axis = -axis
        out.append((round(2 * np.pi / angle), axis))
    return out


def _has_axis(mats, n, axis):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    # eigen-decomposition of exact rotations gives axes to ~1e-12; 1e-8 is ample margin
    return any(
        k == n and min(np.abs(a - axis).max(), np.abs(a + axis).max()) < 1e-8
        for k, a in _nfold_axes(mats)
    )


def test_documented_relion_axes():
    phi = (1 + 5**0.5) / 2
    assert _has_axis(symmetry_matrices("C4"), 4, (0, 0, 1))
    assert _has_axis(symmetry_matrices("D3"), 3, (0, 0, 1))
    assert _has_axis(symmetry_matrices("D3"), 2, (1, 0, 0))  # RELION: Dn 2-fold on x
    assert not _has_axis(symmetry_matrices("D3"), 2, (0, 1, 0))
    assert _has_axis(symmetry_matrices("T"), 3, (0, 0, 1))
    assert _has_axis(
        symmetry_matrices("T"), 2, (0, 0.816496580927726, 0.5773502691896258)
    )
    assert _has_axis(symmetry_matrices("O"), 4, (0, 0, 1))
    assert _has_axis(symmetry_matrices("O"), 3, (1, 1, 1))
    i1, i2, i3, i4 = (symmetry_matrices(f"I{k}") for k in range(1, 5))
    for m in (i1, i2):
        for e in np.eye(3):
            assert _has_axis(m, 2, e)
    assert _has_axis(i1, 5, (phi, 0, -1))
    assert _has_axis(i2, 5, (1, 0, phi))
    assert _has_axis(i2, 3, (0, 1 / phi, phi))
    for m in (i3, i4):
        assert _has_axis(m, 5, (0, 0, 1))
        assert _has_axis(m, 2, (0, 1, 0))
    assert _has_axis(i3, 2, (-1, 0, phi))
    assert _has_axis(i4, 2, (1, 0, phi))
    np.testing.assert_array_equal(symmetry_matrices("I"), i2)


def test_returns_a_writable_copy():
    a = symmetry_matrices("D2")
    a[:] = 0
    np.testing.assert_array_equal(symmetry_matrices("D2")[0], np.eye(3))


@pytest.mark.parametrize("bad", ["C0", "X3", "D", "I5", "", "C-2", "D0", "C2.5", "Oh"])
def test_bad_names_raise_input_error(bad):
    with pytest.raises(InputError, match="valid groups: C1, Cn, Dn"):
        symmetry_matrices(bad)
    with pytest.raises(InputError, match=re.escape(repr(bad))):
        symmetry_order(bad)


def test_non_string_raises_input_error():
    with pytest.raises(InputError, match="valid groups"):
        symmetry_matrices(2)


def _relion_ops(name):
    out = subprocess.run(
        ["relion_refine", "--sym", name, "--print_symmetry_ops"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    lines = out.splitlines()
    mats = [
        [[float(v) for v in lines[i + k].split()] for k in (1, 2, 3)]
        for i, line in enumerate(lines)
        if re.match(r"\s*R\(\d+\)=", line)
    ]
    return np.array(mats)


@pytest.mark.relion
@pytest.mark.skipif(
    shutil.which("relion_refine") is None, reason="relion_refine not on PATH"
)
@pytest.mark.parametrize(
    "name", ["C1", "C5", "D1", "D2", "D7", "T", "O", "I", "I1", "I2", "I3", "I4"]
)
def test_matches_relion_print_symmetry_ops(name):
    ours = symmetry_matrices(name)
    theirs = _relion_ops(name)
    assert theirs.shape == ours.shape
    # RELION prints matrix entries with 5 significant digits (e.g. 0.80902 for 0.809017):
    # rounding error <= 5e-6 for |x| < 1; RELION also builds T and I from axes typed with
    # 6 decimals (~1e-6 more). 2e-5 covers both with margin and is far below the >= 0.1
    # distance between distinct group elements, so the matching is one-to-one.
    d = np.abs(ours[:, None] - theirs[None]).max(axis=(2, 3))
    assert d.min(axis=1).max() < 2e-5, (
        "an operator of ours is missing from RELION's set"
    )
    assert d.min(axis=0).max() < 2e-5, "an operator of RELION's is missing from ours"
