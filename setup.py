"""Packaging for scipion-em-nonuniform (Scipion plugin + stand-alone ``nonuniform`` engine)."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
# Read the version without importing the package (that would import pwem).
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "nonuniform" / "__init__.py").read_text(),
                    re.MULTILINE).group(1)

setup(
    name="scipion-em-nonuniform",
    version=VERSION,
    description="Open non-uniform refinement for single-particle cryo-EM, as a Scipion plugin "
                "and a stand-alone command line",
    long_description=(HERE / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    url="https://github.com/scipion-em/scipion-em-nonuniform",
    license="GPLv3",
    python_requires=">=3.10",
    packages=find_packages(include=["nonuniform", "nonuniform.*"]),
    package_data={"nonuniform": ["protocols.conf", "nonuniform_logo.png"]},
    install_requires=[
        "numpy",
        "scipy",
        "mrcfile",
        "numba",
        "matplotlib",
        "tqdm",
        "scipion-pyworkflow>=3.11",
        "scipion-em",
    ],
    extras_require={
        "gpu": ["cupy-cuda12x"],
        # scipion-em-relion 4.0.20 is the last release that drives RELION 3.1 (Debian's relion):
        # the tests check that RELION's post-processing accepts our refinements.
        # MPI (mpiexec -n K nonuniform refine ...): mpi4py, with MPICH from PyPI where the machine has
        # no MPI of its own (mpi4py's wheels also drive Open MPI: see README, "MPI and clusters").
        "mpi": ["mpi4py>=4", "mpich"],
        # The MPI tests run real mpiexec launches: the test extra brings the mpi extra's packages.
        "test": ["pytest", "scipion-em-relion==4.0.20", "mpi4py>=4", "mpich"],
    },
    entry_points={
        "pyworkflow.plugin": ["nonuniform = nonuniform"],
        "console_scripts": ["nonuniform = nonuniform.engine.cli:main"],
    },
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "License :: OSI Approved :: GNU General Public License v3 or later (GPLv3+)",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Bio-Informatics",
    ],
)
