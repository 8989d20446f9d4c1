"""Render one PNG of every plot of the plugin's viewers into docs/ (the README's *Viewers* pictures).

Usage, from the repository root (about 5 minutes on 2 cores)::

    python docs/make_viewer_pngs.py

Builds a throw-away headless Scipion project (the environment of the root ``conftest.py``):
800 membrane-protein-like particles simulated by ``nonuniform simulate --phantom membrane`` (box
48, 2.5 Å/px, SNR 0.1), imported with Scipion's RELION STAR import, refined non-uniform and
uniform (6 iterations from the truth low-passed to 25 Å, one soft mask), the local filter on the
NU half-maps, and the comparison of the two runs against the truth. Each view is drawn by the
viewer itself (``savePng``), as the Scipion window would show it; ``analyze_results_refine.png``
is the NU run's viewer form in the Tk GUI on a private Xvfb display
(``nonuniform.tests.gui_viewer``).
"""

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import conftest  # noqa: E402,F401  (sets up the headless Scipion environment before pyworkflow loads)

import numpy as np  # noqa: E402
from pwem.protocols import ProtImportMask, ProtImportParticles, ProtImportVolumes  # noqa: E402
from pyworkflow.project import Manager  # noqa: E402

from nonuniform.engine import cli, io, masks  # noqa: E402
from nonuniform.protocols import (ProtNonUniformCompareRefinements, ProtNonUniformLocalFilter,  # noqa: E402
                                  ProtNonUniformRefine3D)
from nonuniform.viewers import (NonUniformCompareViewer, NonUniformLocalFilterViewer,  # noqa: E402
                                NonUniformRefineViewer)

BOX, APIX = 48, 2.5
VIEWS = {
    NonUniformRefineViewer: ["showFsc", "showFscIterations", "showProgress", "showAngularDistribution",
                             "showPoseChanges", "showMapSlices", "showCutoffSlices"],
    NonUniformLocalFilterViewer: ["showFilteredSlices", "showCutoffSlices", "showLocalResolutionSlices",
                                  "showHistogram"],
    NonUniformCompareViewer: ["showFsc", "showTable", "showTruth", "showPoseChanges"],
}
PREFIX = {NonUniformRefineViewer: "viewer_refine", NonUniformLocalFilterViewer: "viewer_local_filter",
          NonUniformCompareViewer: "viewer_compare"}


def launch(project, prot):
    project.launchProtocol(prot, wait=True)
    if not prot.isFinished():
        raise RuntimeError(f"{prot.getRunName()} failed: see {prot.getLogPaths()[0]}")
    return prot


def main():
    project = Manager().createProject("nonuniform_docs")
    os.chdir(project.getPath())
    data = os.path.abspath("simulated")
    assert cli.main(["simulate", "--phantom", "membrane", "--out", data, "--n-particles", "800", "--box", str(BOX),
                     "--pixel-size", str(APIX), "--snr", "0.1", "--seed", "3"]) == 0
    truth, _ = io.read_mrc(os.path.join(data, "truth.mrc"))
    io.write_mrc(os.path.join(data, "mask.mrc"), masks.auto_mask(truth, APIX, threshold_frac=0.1, extend_ang=3.0,
                                                                 soft_ang=6.0).astype(np.float32), APIX)
    particles = launch(project, project.newProtocol(
        ProtImportParticles, importFrom=ProtImportParticles.IMPORT_FROM_RELION,
        starFile=os.path.join(data, "particles.star"), samplingRate=APIX, magnification=50000, voltage=300,
        sphericalAberration=2.7, amplitudeContrast=0.1)).outputParticles
    truthVol = launch(project, project.newProtocol(ProtImportVolumes, filesPath=os.path.join(data, "truth.mrc"),
                                                   samplingRate=APIX)).outputVolume
    mask = launch(project, project.newProtocol(ProtImportMask, maskPath=os.path.join(data, "mask.mrc"),
                                               samplingRate=APIX)).outputMask
    runs = []
    for label, nonUniform in (("NU", True), ("uniform", False)):
        prot = project.newProtocol(ProtNonUniformRefine3D, doNonUniform=nonUniform, maxIterations=6,
                                   refine_res_init=25.0, numberOfThreads=2)
        prot.setObjLabel(label)
        prot.inputParticles.set(particles)
        prot.referenceVolume.set(truthVol)
        prot.refMask.set(mask)
        runs.append(launch(project, prot))
    localFilter = project.newProtocol(ProtNonUniformLocalFilter, numberOfThreads=2)
    localFilter.inputVolume.set(runs[0].outputVolume)
    localFilter.inputMask.set(mask)
    launch(project, localFilter)
    compare = project.newProtocol(ProtNonUniformCompareRefinements)
    for prot in runs:
        compare.inputRefinements.append(prot)
    compare.inputMask.set(mask)
    compare.groundTruth.set(truthVol)
    launch(project, compare)
    print("\n".join(compare.summary()))

    for viewerClass, prot in ((NonUniformRefineViewer, runs[0]), (NonUniformLocalFilterViewer, localFilter),
                              (NonUniformCompareViewer, compare)):
        viewer = viewerClass(project=project, protocol=prot)
        viewer.setProtocol(prot)
        for name in VIEWS[viewerClass]:
            path = os.path.join(REPO, "docs", f"{PREFIX[viewerClass]}_{name[4:].lower()}.png")
            viewer.savePng(name, path)
            print("wrote", path)

    shots = os.path.abspath("gui")
    os.makedirs(shots, exist_ok=True)
    subprocess.run([sys.executable, "-m", "nonuniform.tests.gui_viewer", project.getName(), shots], check=True)
    shutil.copy(os.path.join(shots, f"{runs[0].getObjId()}.png"),
                os.path.join(REPO, "docs", "analyze_results_refine.png"))


if __name__ == "__main__":
    main()
