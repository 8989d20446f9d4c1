"""``nonuniform demo --scipion`` end to end on a small setting (RELION's refinement included when installed)."""

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("pwem", reason="scipion-em not installed")
pytest.importorskip("relion", reason="the demo imports a STAR file with scipion-em-relion")

from nonuniform.workflows import scipion_demo  # noqa: E402

pytestmark = [pytest.mark.scipion, pytest.mark.slow]


def test_scipion_demo_small(tmp_path):
    out = tmp_path / "demo"
    # 300 membrane-like particles, box 32 at 3.5 Å/px, SNR 0.5, 3 iterations: a few minutes on 2 cores,
    # most of it RELION's (3 MPI ranks); the default (2000 particles, box 64) is the README's figure.
    res = subprocess.run([sys.executable, "-m", "nonuniform.engine", "demo", "--scipion", str(out),
                          "--n-particles", "300", "--box", "32", "--pixel-size", "3.5", "--snr", "0.5",
                          "--iterations", "3", "--threads", "2"],
                         capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        logs = sorted(out.glob("nonuniform_demo/Runs/*/logs/run.stderr"))
        pytest.fail(res.stdout[-3000:] + res.stderr[-3000:] + "".join(
            f"\n--- {p}\n{p.read_text()[-1500:]}" for p in logs if p.stat().st_size))
    labels = ["non-uniform refinement", "uniform refinement"]
    if scipion_demo.relion_available():
        labels.append("RELION 3D auto-refine")
    table = res.stdout
    for label in labels:  # every run is a row of the comparison table: label | particles | resolutions (Å)
        row = next((ln for ln in table.splitlines() if ln.startswith(label + " |")), None)
        assert row is not None, f"{label} missing from:\n{table}"
        cells = [c.strip() for c in row.split("|")]
        assert cells[1] == "300"
        resolutions = [float(x) for x in re.findall(r"\d+\.\d+", " ".join(cells[2:]))]
        # Between Nyquist (7 Å) and the 30 Å start: a refinement that never aligned stays near 30 Å.
        assert resolutions and all(7.0 - 1e-6 <= r < 30.0 for r in resolutions), row
    assert "Open it:" in table and os.path.isdir(out / "nonuniform_demo")


def test_scipion_demo_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "something").write_text("x")
    res = subprocess.run([sys.executable, "-m", "nonuniform.engine", "demo", "--scipion", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "is not empty" in res.stderr
    assert sorted(os.listdir(tmp_path)) == ["something"]
