"""The scripted Scipion example in README.rst runs as written."""

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("pwem", reason="scipion-em not installed")
pytest.importorskip("relion", reason="the example imports a STAR file with scipion-em-relion")

pytestmark = pytest.mark.scipion

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "README.rst")


def readme_example():
    """The Python code block of the README's 'Using it in Scipion' section."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("Using it in Scipion\n"):]
    block = re.search(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", section).group(1)
    return "\n".join(line[4:] for line in block.splitlines()) + "\n"


def test_readme_scipion_example_runs(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    # The root conftest's Scipion environment (a throw-away user-data folder) is inherited.
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(("NU ", "uniform "))]
    assert [ln.split()[:2] for ln in lines] == [["NU", "finished"], ["uniform", "finished"]], res.stdout
    # Each summary line reports a final resolution; 300 particles at SNR 0.5 in a 100 Å box get
    # well below the 20 Å start in 3 iterations (measured ~7 Å), a failed alignment would not.
    for ln in lines:
        resolution = float(re.search(r"\*(\d+\.\d+) Å\*", ln).group(1))
        assert 5.0 <= resolution < 15.0, ln
