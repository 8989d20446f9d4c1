"""One small, real Scipion project shared by the viewer and comparison tests (built once per session).

Particles simulated by ``nonuniform simulate`` (with CTF and their true poses) enter through
Scipion's RELION STAR import, so they carry projection alignment; the truth, low-passed by the
refinement to 20 Å, is the start model and the ground truth. Non-uniform and uniform
refinements run with one solvent mask, and the local filter on the NU half-maps.
"""

import functools
import os
import types

import numpy as np

from pwem.protocols import ProtImportMask, ProtImportParticles, ProtImportVolumes
from pyworkflow.project import Manager
from pyworkflow.tests import BaseTest

from nonuniform.engine import cli, io, masks
from nonuniform.protocols import ProtNonUniformLocalFilter, ProtNonUniformRefine3D

BOX, APIX, N_PARTICLES = 32, 3.0, 240
PROJECT = "NonUniformResults"


class SharedProjectTest(BaseTest):
    """Base class: ``cls.proj`` is the shared project, ``cls.runs`` its runs (see :func:`shared_runs`)."""

    @classmethod
    def setUpClass(cls):
        cls.runs = shared_runs()
        cls.proj = cls.runs.project
        os.chdir(cls.proj.path)  # launching needs the project as working directory


@functools.lru_cache(maxsize=1)
def shared_runs():
    """Build the project: imports, NU and uniform refinements (2 iterations), the local filter."""
    proj = Manager().createProject(PROJECT)
    os.chdir(proj.path)

    class Launcher(BaseTest):
        pass

    Launcher.proj = proj

    def run(protClass, **kwargs):
        prot = Launcher.newProtocol(protClass, **kwargs)
        Launcher.launchProtocol(prot)
        return prot

    data = os.path.abspath(os.path.join(proj.path, "simulated"))
    # 240 particles, box 32 at 3 Å/px, SNR 1: a two-iteration refinement takes ~10 s here.
    assert cli.main(["simulate", "--out", data, "--n-particles", str(N_PARTICLES), "--box", str(BOX),
                     "--pixel-size", str(APIX), "--snr", "1", "--seed", "1"]) == 0
    truth, _ = io.read_mrc(os.path.join(data, "truth.mrc"))
    # A soft mask (as a user would make one: 3 Å beyond the density, 6 Å raised-cosine edge); a
    # binary one correlates the half-maps' noise and spoils the masked FSC.
    io.write_mrc(os.path.join(data, "mask.mrc"), masks.auto_mask(truth, APIX, threshold_frac=0.1, extend_ang=3.0,
                                                                 soft_ang=6.0).astype(np.float32), APIX)
    particles = run(ProtImportParticles, importFrom=ProtImportParticles.IMPORT_FROM_RELION,
                    starFile=os.path.join(data, "particles.star"), samplingRate=APIX, magnification=50000,
                    voltage=300, sphericalAberration=2.7, amplitudeContrast=0.1).outputParticles
    truthVol = run(ProtImportVolumes, filesPath=os.path.join(data, "truth.mrc"), samplingRate=APIX).outputVolume
    mask = run(ProtImportMask, maskPath=os.path.join(data, "mask.mrc"), samplingRate=APIX).outputMask

    def refine(label, nonUniform):
        prot = Launcher.newProtocol(ProtNonUniformRefine3D, doNonUniform=nonUniform, maxIterations=2,
                                    refine_res_init=20.0, numberOfThreads=2)
        prot.setObjLabel(label)  # (newProtocol's objLabel= is replaced by the default label)
        prot.inputParticles.set(particles)
        prot.referenceVolume.set(truthVol)
        prot.refMask.set(mask)
        Launcher.launchProtocol(prot)
        return prot

    nu, uniform = refine("NU", True), refine("uniform", False)
    localFilter = Launcher.newProtocol(ProtNonUniformLocalFilter, numberOfThreads=2)
    localFilter.inputVolume.set(nu.outputVolume)
    localFilter.inputMask.set(mask)
    Launcher.launchProtocol(localFilter)
    return types.SimpleNamespace(project=proj, data=data, particles=particles, truth=truthVol, mask=mask, nu=nu,
                                 uniform=uniform, localFilter=localFilter)
