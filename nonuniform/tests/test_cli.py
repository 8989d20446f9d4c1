"""Command line: outputs of reconstruct/fsc and one clear error (exit 2, no output) per bad input."""

import os
import shutil

import numpy as np
import pytest

from nonuniform.engine import cli, fsc, io

from .conftest import blob_phantom


def test_reconstruct_and_fsc_commands(small_dataset, tmp_path, capsys):
    out = tmp_path / "map.mrc"
    assert cli.main(["reconstruct", "--particles", str(small_dataset["star"]), "--out", str(out),
                     "--halves"]) == 0
    for name in ("map.mrc", "map_half1.mrc", "map_half2.mrc"):
        vol, apix = io.read_mrc(str(tmp_path / name))
        assert vol.shape == (48, 48, 48) and apix == pytest.approx(2.0)
    prefix = tmp_path / "halves"
    assert cli.main(["fsc", str(tmp_path / "map_half1.mrc"), str(tmp_path / "map_half2.mrc"),
                     "--out", str(prefix)]) == 0
    assert "resolution" in capsys.readouterr().out
    cols, meta = fsc.read_fsc_csv(str(prefix) + ".csv")
    # Noiseless halves of 750 particles: FSC > 0.9 to 0.8 Nyquist (sparser sampling beyond),
    # and above 0.143 up to Nyquist (2 x 2 Å = 4 Å).
    assert cols["fsc_unmasked"][1:20].min() > 0.9
    assert float(meta["resolution_fsc_unmasked_ang"]) == pytest.approx(4.0, abs=0.05)
    assert os.path.getsize(str(prefix) + ".png") > 1000


@pytest.fixture()
def bad_star(small_dataset, tmp_path):
    """A private copy of the small dataset that a test may damage."""
    for name in ("particles.star", "particles.mrcs"):
        shutil.copy(small_dataset["folder"] / name, tmp_path / name)
    return tmp_path / "particles.star"


def _rewrite_star(path, drop=(), set_values=None):
    blocks = io.read_star(str(path))
    table = blocks["particles"]
    for col in drop:
        table.pop(col, None)
        blocks["optics"].pop(col, None)
    for col, val in (set_values or {}).items():
        table[col] = np.full(len(table["rlnImageName"]), val)
    io.write_star(str(path), blocks)


def _damage_stack(path, fn):
    imgs, apix = io.read_mrc(str(path))
    io.write_stack(str(path), fn(imgs), apix)


BAD_INPUTS = {
    "missing stack": (lambda s: os.remove(s.parent / "particles.mrcs"), "particles.mrcs"),
    "no CTF columns": (lambda s: _rewrite_star(s, drop=("rlnDefocusU", "rlnDefocusV")), "rlnDefocusU"),
    "NaN image": (lambda s: _damage_stack(s.parent / "particles.mrcs",
                                          lambda a: np.where(np.arange(len(a))[:, None, None] == 7,
                                                             np.nan, a)), "000008@"),
    "box mismatch": (lambda s: _damage_stack(s.parent / "particles.mrcs", lambda a: a[:, :40, :40]), "rlnImageSize"),
    "non-square": (lambda s: _damage_stack(s.parent / "particles.mrcs", lambda a: a[:, :, :40]), "square"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_reconstruct_bad_input(case, bad_star, tmp_path, caplog):
    damage, culprit = BAD_INPUTS[case]
    damage(bad_star)
    out = tmp_path / "out.mrc"
    assert cli.main(["reconstruct", "--particles", str(bad_star), "--out", str(out)]) == 2
    assert not out.exists()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and culprit in errors[0], errors
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp") or f.startswith("out")]


def test_reconstruct_bad_symmetry_and_folder(small_dataset, tmp_path, caplog):
    star = str(small_dataset["star"])
    assert cli.main(["reconstruct", "--particles", star, "--out", str(tmp_path / "o.mrc"), "--sym", "Q7"]) == 2
    (tmp_path / "a_file").write_text("")
    assert cli.main(["reconstruct", "--particles", star, "--out", str(tmp_path / "a_file" / "o.mrc")]) == 2
    assert cli.main(["reconstruct", "--particles", str(tmp_path / "missing.star"),
                     "--out", str(tmp_path / "o.mrc")]) == 2
    msgs = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "Q7" in msgs[0] and "a_file is a file" in msgs[1] and "missing.star" in msgs[2]
    assert os.listdir(tmp_path) == ["a_file"]


def test_fsc_bad_input(tmp_path, caplog):
    rng = np.random.default_rng(0)
    a = blob_phantom(32, rng)
    io.write_mrc(str(tmp_path / "a.mrc"), a, 1.0)
    io.write_mrc(str(tmp_path / "small.mrc"), a[:30, :30, :30], 1.0)
    io.write_mrc(str(tmp_path / "apix.mrc"), a, 1.3)
    io.write_mrc(str(tmp_path / "const.mrc"), np.ones_like(a), 1.0)
    cases = {"small.mrc": ["small.mrc"], "apix.mrc": ["apix.mrc"], "const.mrc": ["const.mrc"],
             "mask": ["a.mrc", "--mask", str(tmp_path / "small.mrc")]}
    for culprit, extra in cases.items():
        caplog.clear()
        args = ["fsc", str(tmp_path / "a.mrc"), str(tmp_path / extra[0])] + extra[1:]
        assert cli.main(args + ["--out", str(tmp_path / "f")]) == 2
        msgs = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(msgs) == 1 and ("small.mrc" if culprit == "mask" else culprit) in msgs[0]
    assert not list(tmp_path.glob("f.*"))


def test_locres_command(tmp_path, caplog):
    rng = np.random.default_rng(4)
    truth = blob_phantom(40, rng)
    h1, h2 = (truth + rng.normal(0, 0.05, truth.shape).astype(np.float32) for _ in range(2))
    io.write_mrc(str(tmp_path / "h1.mrc"), h1, 1.5)
    io.write_mrc(str(tmp_path / "h2.mrc"), h2, 1.5)
    out = tmp_path / "loc"
    assert cli.main(["locres", "--half1", str(tmp_path / "h1.mrc"), "--half2", str(tmp_path / "h2.mrc"),
                     "--out", str(out)]) == 0
    loc, apix = io.read_mrc(str(out / "locres.mrc"))
    assert apix == pytest.approx(1.5) and loc.min() >= 3.0 - 1e-4  # never finer than Nyquist
    assert (out / "locres_histogram.png").exists() and (out / "locres.json").exists()
    io.write_mrc(str(tmp_path / "other.mrc"), h2[:32, :32, :32], 1.5)
    assert cli.main(["locres", "--half1", str(tmp_path / "h1.mrc"), "--half2", str(tmp_path / "other.mrc"),
                     "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def _subparsers(parser):
    import argparse

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_help_is_complete_and_plain(capsys):
    parser = cli.build_parser()
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    top = capsys.readouterr().out
    assert "``" not in top and "COMMAND --help" in top
    assert set(_subparsers(parser)) == set(cli.COMMANDS)
    for name, sub in _subparsers(parser).items():
        text = sub.format_help()
        assert "``" not in text, name
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help and len(action.help) > 8, (name, action.dest)  # every option says what it is
            if action.default not in (None, False) and action.option_strings and action.default != "==SUPPRESS==":
                # every default is shown in the help
                assert "default" in sub._get_formatter()._get_help_string(action), (name, action.dest)


def test_dev_sh_demo_into_a_file_is_refused_cleanly(tmp_path):
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    target = tmp_path / "a_file"
    target.write_text("")
    # Refused before anything is installed or run: one line naming the file, exit 2.
    proc = subprocess.run(["bash", os.path.join(root, "dev.sh"), "demo", str(target)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"demo: {target} is a file, not a folder; give a folder: "
                                                "./dev.sh demo DIR"]
    assert target.read_text() == ""
