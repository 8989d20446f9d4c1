"""Packaging: the engine works without Scipion; Scipion discovers the plugin."""

import importlib
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Run in a fresh interpreter: a meta-path finder makes every pwem/pyworkflow import fail, then
# every engine module is imported (``__main__`` excluded: importing it would run the CLI).
IMPORT_ENGINE_WITHOUT_SCIPION = r"""
import importlib, importlib.abc, pkgutil, sys

class BlockScipion(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("pwem", "pyworkflow"):
            raise ImportError(f"{name} is blocked for this test")
        return None

sys.meta_path.insert(0, BlockScipion())
import nonuniform
import nonuniform.engine
assert not hasattr(nonuniform, "Plugin"), "Plugin must only exist when pwem imports"
names = [m.name for m in pkgutil.walk_packages(nonuniform.engine.__path__, "nonuniform.engine.")
         if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m.partition(".")[0] in ("pwem", "pyworkflow"))
assert not leaked, leaked
print(len(names))
"""


def test_engine_imports_without_scipion():
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", IMPORT_ENGINE_WITHOUT_SCIPION], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.split()[-1]) >= 2  # at least errors and io were imported


@pytest.mark.scipion
def test_pyworkflow_discovers_plugin():
    pwem = pytest.importorskip("pwem", reason="scipion-em not installed")
    plugins = pwem.Domain.getPlugins()
    assert "nonuniform" in plugins, ("the 'pyworkflow.plugin' entry point is missing: "
                                     "pip install -e . first")
    module = plugins["nonuniform"]
    assert issubclass(module.Plugin, pwem.Plugin)
    assert module.Plugin.getUrl()
    assert module.Plugin.getEnviron()["PATH"] == os.environ["PATH"]
    assert module._references == ["Punjani2020"]
    # bibtex.py's docstring parses and holds every key the plugin cites.
    assert {"Punjani2020", "Scheres2012"} <= set(module._bibtex)
    assert module._bibtex["Punjani2020"]["doi"].endswith("10.1038/s41592-020-00990-8")


def test_public_api_names_resolve():
    import nonuniform.engine as engine

    for name in engine.__all__:
        assert getattr(engine, name) is getattr(importlib.import_module(f"nonuniform.engine.{engine._API[name]}"),
                                                name), name
    with pytest.raises(AttributeError):
        engine.no_such_function  # noqa: B018
    # Submodules stay importable by name next to the re-exports.
    from nonuniform.engine import fsc, refine

    assert callable(fsc.fsc_curve) and refine.Refinement is engine.Refinement
