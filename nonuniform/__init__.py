"""Scipion plugin ``nonuniform``: open non-uniform refinement for single-particle cryo-EM.

The refinement engine (:mod:`nonuniform.engine`) needs only numpy/scipy and runs without
Scipion; the :class:`Plugin` class, protocols and viewers exist only when ``pwem`` imports.
"""

__version__ = "0.1.0"

_references = ["Punjani2020"]
_logo = "nonuniform_logo.png"

try:
    import pwem
except ImportError:  # engine-only use: the Scipion layer is simply absent
    pwem = None

if pwem is not None:
    import os
    import sys

    import pyworkflow
    from pyworkflow.utils import Environ

    from .constants import NONUNIFORM_URL

    class Plugin(pwem.Plugin):
        """Scipion plugin entry: a pure-Python engine, so no binaries or paths to configure."""

        _url = NONUNIFORM_URL
        _processingField = [pyworkflow.SPA]

        @classmethod
        def getEnviron(cls):
            """Environment for the engine subprocess: the caller's, unchanged."""
            return Environ(os.environ)

        @classmethod
        def getProgram(cls):
            """The engine's command line, run by the interpreter that runs the protocols."""
            return f"{sys.executable} -m nonuniform.engine"

        @classmethod
        def defineBinaries(cls, env):
            """Nothing to install: the engine is installed with the plugin by pip."""
