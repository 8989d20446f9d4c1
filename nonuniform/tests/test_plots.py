"""Tests for nonuniform.engine.plots (headless PNG output)."""

import os
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="matplotlib is needed for the plots")

from nonuniform.engine import plots


def test_plot_fsc_writes_png_without_pyplot(tmp_path):
    n, px = 32, 1.2
    s = np.arange(n // 2 + 1)
    curves = {
        "fsc_masked": np.exp(-((s / 8.0) ** 2)),
        "fsc_unmasked": np.exp(-((s / 6.0) ** 2)),
    }
    path = tmp_path / "fsc.png"
    plots.plot_fsc(path, curves, {"fsc_masked": 4.1}, px, n)
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["fsc.png"]  # temporary file replaced, none left
    assert path.stat().st_size > 1000


def test_plot_fsc_says_what_is_plotted(tmp_path):
    n, px = 32, 1.2
    s = np.arange(n // 2 + 1)
    curves = {"fsc_unmasked": np.exp(-((s / 6.0) ** 2)), "fsc_corrected": np.exp(-((s / 8.0) ** 2))}
    fig = plots.plot_fsc(tmp_path / "fsc.png", curves, {"fsc_corrected": 4.1}, px, n, title="FSC of a and b")
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["no mask", "mask-corrected (reported) (4.10 Å)"]
    assert not [t for t in legend if "fsc_" in t]  # no code names
    assert ax.get_title() == "FSC of a and b"
    notes = [t.get_text() for t in fig.texts]
    assert len(notes) == 1 and "below 0.143 and stays below for at least 2 shells" in " ".join(notes[0].split())


def test_engine_import_does_not_import_matplotlib():
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # block pwem (the Scipion layer imports matplotlib itself): the engine alone must not
    code = (
        "import sys; sys.modules['pwem'] = None; import nonuniform.engine.plots; "
        "print('matplotlib' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    )
    assert out.stdout.strip() == "False"
