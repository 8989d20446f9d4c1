"""The protocols' forms open in Scipion's Tk GUI (on a private Xvfb display)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("pwem", reason="scipion-em not installed")
pytest.importorskip("tkinter", reason="tkinter missing (apt-get install python3-tk)")
if not shutil.which("Xvfb"):
    pytest.skip("Xvfb missing (apt-get install xvfb)", allow_module_level=True)

pytestmark = pytest.mark.scipion


@pytest.mark.parametrize("class_name", ["ProtNonUniformRefine3D", "ProtNonUniformLocalFilter"])
def test_form_opens_and_renders(tmp_path, class_name):
    from PIL import Image

    out = tmp_path / "form.png"
    # A fresh interpreter: Tk, the display and the form's project stay out of the test process.
    res = subprocess.run([sys.executable, "-m", "nonuniform.tests.gui_form", str(out), class_name],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    width, height = map(int, res.stdout.split()[-2:])
    img = np.asarray(Image.open(out).convert("L"), dtype=float)
    assert img.shape == (height, width)
    # A drawn form (header, tabs, fields, buttons) is a window of at least Scipion's minimum size
    # (600 x 450) with many grey levels; an unmapped window grabs as one flat colour.
    assert width >= 600 and height >= 450
    assert img.std() > 20 and len(np.unique(img)) > 50


def test_documentation_screenshot_is_committed():
    here = os.path.dirname(os.path.abspath(__file__))
    shot = os.path.join(here, "..", "..", "docs", "protocol_form_refine.png")
    assert os.path.getsize(shot) > 10_000, "run: python -m nonuniform.tests.gui_form docs/protocol_form_refine.png"
