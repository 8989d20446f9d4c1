"""Viewer of ``ProtNonUniformRefine3D`` (Analyze Results): FSC, progress, poses, maps, NU cutoffs.

Everything is read from what the engine wrote in the run's ``extra/run`` folder (``fsc.csv``,
``checkpoints/iterNNN_fsc.csv``, ``summary.json``, ``particles.star``, the maps) and
``extra/input_particles.star`` (the input poses); nothing is recomputed.
"""

import glob
import json
import os
import re

import pyworkflow.protocol.params as params
from pwem.viewers import EmProtocolViewer, FscViewer
from pwem.wizards import ColorScaleWizardBase
from pyworkflow.viewer import DESKTOP_TKINTER

from .. import convert
from ..protocols import ProtNonUniformRefine3D
from . import chimerax, plots
from .viewer_base import NonUniformViewerMixin

# Maps of a refinement: (choice label, file in extra/run, only in non-uniform mode).
MAPS = [("final map (FSC-weighted)", "map.mrc", False),
        ("sharpened map", "map_sharp.mrc", False),
        ("non-uniform filtered map", "map_nu.mrc", True),
        ("half-map 1", "half1.mrc", False),
        ("half-map 2", "half2.mrc", False),
        ("solvent mask", "mask.mrc", False)]

# fsc.csv columns: (legend, curve style).
FSC_CURVES = [("fsc_unmasked", "no mask", {}),
              ("fsc_masked", "with the solvent mask", {}),
              ("fsc_phase_randomized", "with the mask, phases randomized (the mask's own correlation)",
               {"color": "0.6", "linestyle": ":", "linewidth": 1.2}),
              ("fsc_corrected", "mask-corrected (reported)", {"linewidth": 2.6})]


def fscCurves(csvFile, curves=FSC_CURVES):
    """:class:`~.plots.Curve` list of an engine FSC file, with the resolutions the engine wrote."""
    cols, meta = convert.readFscTable(csvFile)
    out = []
    for key, label, style in curves:
        if key in cols:
            res = meta.get(f"resolution_{key}_ang")
            out.append(plots.Curve(label, cols["freq_inv_ang"], cols[key], float(res) if res else None, **style))
    return out


class NonUniformRefineViewer(NonUniformViewerMixin, EmProtocolViewer):
    """FSC curves (final and per iteration), resolution and pose change per iteration, angular
    distribution, pose changes against the input poses, the maps, and the non-uniform filter's
    cutoff maps as coloured slices or a ChimeraX surface."""

    _label = "viewer non-uniform refinement"
    _targets = [ProtNonUniformRefine3D]
    _environments = [DESKTOP_TKINTER]

    def _run(self, *paths):
        return self.protocol._getExtraPath("run", *paths)

    def _isNonUniform(self):
        return bool(self.protocol.doNonUniform.get())

    def _samplingRate(self):
        return self.protocol.inputParticles.get().getSamplingRate()

    def _mapChoices(self):
        return [m for m in MAPS if self._isNonUniform() or not m[2]]

    def _cutoffFiles(self):
        return [(f"half-set {h}", self._run(f"cutoff_half{h}.mrc")) for h in (1, 2)]

    def _maskFile(self):
        return self._run("mask.mrc")

    def _defineParams(self, form):
        form.addSection(label="Visualization")
        group = form.addGroup("Resolution")
        group.addParam("showFsc", params.LabelParam, label="Final FSC curves",
                       help="Gold-standard FSC of the two half-maps: without mask, with the solvent mask, "
                            "and corrected for the mask by phase randomization (the reported resolution), "
                            "with the 0.143 threshold.")
        group.addParam("showFscScipion", params.LabelParam, expertLevel=params.LEVEL_ADVANCED,
                       label="Final FSC in Scipion's FSC viewer",
                       help="The same curves (outputFSC) in Scipion's generic FSC viewer.")
        group.addParam("showFscIterations", params.LabelParam, label="FSC of every iteration",
                       help="The mask-corrected gold-standard FSC after each iteration, overlaid.")
        group.addParam("showProgress", params.LabelParam, label="Resolution and pose change per iteration")

        group = form.addGroup("Particles")
        group.addParam("showAngularDistribution", params.LabelParam, label="Angular distribution",
                       help="Particles per viewing direction on a Mollweide map of the sphere.")
        group.addParam("showAngularDistributionChimera", params.LabelParam,
                       label="Angular distribution in ChimeraX",
                       help="Cylinders around the map, one per populated direction, length and colour "
                            "by particle count (a .bild file and a .cxc script in extra/viewer).")
        group.addParam("showPoseChanges", params.LabelParam, label="Pose change from the input poses",
                       help="Histograms of the change in orientation and shift of every particle between "
                            "the input poses and the refined ones (only if the input had poses); with "
                            "symmetry, the smallest change over symmetry-equivalent orientations.")

        group = form.addGroup("Maps")
        group.addParam("mapToShow", params.EnumParam, choices=[m[0] for m in self._mapChoices()], default=0,
                       label="Map")
        group.addParam("showMap", params.LabelParam, label="Show the map",
                       help="In ChimeraX when it is configured in Scipion, otherwise as central slices.")
        group.addParam("showMapSlices", params.LabelParam, label="Show central slices of the map")

        if self._isNonUniform() and all(os.path.exists(f) for _, f in self._cutoffFiles()):
            group = form.addGroup("Non-uniform filter cutoffs (local resolution)")
            group.addParam("showCutoffSlices", params.LabelParam, label="Cutoff maps as coloured slices",
                           help="The low-pass cutoff (Å) the non-uniform filter chose at every voxel for "
                                "each half-set's reference in the last iteration: a local-resolution map.")
            low, high = self.resolutionRange([f for _, f in self._cutoffFiles()])
            ColorScaleWizardBase.defineColorScaleParams(group, defaultHighest=high, defaultLowest=low)
            group.addParam("showCutoffChimera", params.LabelParam, label="Map surface coloured by cutoff in ChimeraX",
                           help="A ChimeraX script (extra/viewer) colouring the final map by the half-set 1 "
                                "cutoff map with the colour scale above.")

    def _getVisualizeDict(self):
        return {"showFsc": self._showFsc, "showFscScipion": self._showFscScipion,
                "showFscIterations": self._showFscIterations, "showProgress": self._showProgress,
                "showAngularDistribution": self._showAngularDistribution,
                "showAngularDistributionChimera": self._showAngularDistributionChimera,
                "showPoseChanges": self._showPoseChanges, "showMap": self._showMap,
                "showMapSlices": self._showMapSlices, "showCutoffSlices": self._showCutoffSlices,
                "showCutoffChimera": self._showCutoffChimera}

    # -- resolution ---------------------------------------------------------------------------

    def _showFsc(self, paramName=None):
        return self._plotView(plots.plot_fsc, fscCurves(self._run("fsc.csv")),
                              title=f"Gold-standard FSC of the half-maps ({self.protocol.getRunName()})",
                              note="Resolutions where each curve crosses 0.143. The mask-corrected curve "
                                   "removes the correlation the solvent mask itself creates (Chen et al. "
                                   "2013); it is the resolution the refinement reports.")

    def _showFscScipion(self, paramName=None):
        FscViewer(project=self.getProject(), protocol=self.protocol, threshold=0.143,
                  figure=None).visualize(self.protocol.outputFSC)
        return []

    def iterationFscFiles(self):
        """[(iteration, file)] of the per-iteration FSC files the engine kept."""
        files = glob.glob(self._run("checkpoints", "iter*_fsc.csv"))
        return sorted((int(re.search(r"iter(\d+)_fsc\.csv$", f).group(1)), f) for f in files)

    def _showFscIterations(self, paramName=None):
        iterations, curves, resolutions = [], [], []
        for it, path in self.iterationFscFiles():
            corrected = fscCurves(path, [FSC_CURVES[-1]])[0]
            iterations.append(it)
            curves.append((corrected.freq_inv_ang, corrected.fsc))
            resolutions.append(corrected.resolution_ang)
        if not iterations:
            return [self.infoMessage("No per-iteration FSC files in extra/run/checkpoints.", "No iterations")]
        return self._plotView(plots.plot_fsc_iterations, iterations, curves, resolutions)

    def summary(self):
        with open(self._run("summary.json")) as f:
            return json.load(f)

    def _showProgress(self, paramName=None):
        return self._plotView(plots.plot_iteration_history, self.summary()["history"])

    # -- particles ----------------------------------------------------------------------------

    def finalPoses(self):
        return convert.posesFromStar(self._run("particles.star"))

    def _showAngularDistribution(self, paramName=None):
        poses = self.finalPoses()
        return self._plotView(plots.plot_angular_distribution, poses.rot_deg, poses.tilt_deg,
                              title=f"Angular distribution of the refined particles ({self.protocol.getRunName()})")

    def _showAngularDistributionChimera(self, paramName=None):
        poses = self.finalPoses()
        bild, script = self._viewerPath("angular_distribution.bild"), self._viewerPath("angular_distribution.cxc")
        box = self.protocol.inputParticles.get().getXDim()
        chimerax.write_angular_distribution_bild(bild, poses.rot_deg, poses.tilt_deg, box, self._samplingRate())
        chimerax.write_angular_distribution_cxc(script, self._run("map.mrc"), bild, self._samplingRate())
        return self._chimeraView(script, "angular distribution")

    def inputPoses(self):
        """:class:`~nonuniform.convert.Poses` of the input particles, or None if they had none."""
        if not self.protocol.inputParticles.get().hasAlignmentProj():
            return None
        return convert.posesFromStar(self.protocol._getExtraPath("input_particles.star"))

    def _showPoseChanges(self, paramName=None):
        before = self.inputPoses()
        if before is None:
            return [self.infoMessage("The input particles had no poses (no projection alignment): there is "
                                     "nothing to compare the refined poses with.", "No input poses")]
        _, angle, shift = convert.poseChanges(before, self.finalPoses(), self.protocol.symmetryGroup.get().strip())
        return self._plotView(plots.plot_pose_changes, [("input → refined", angle, shift)],
                              title=f"Pose change from the input poses ({self.protocol.getRunName()})")

    # -- maps ---------------------------------------------------------------------------------

    def _selectedMap(self):
        label, name, _ = self._mapChoices()[self.mapToShow.get()]
        return label, self._run(name)

    def _showMap(self, paramName=None):
        return self._mapView(self._selectedMap()[1]) or self._showMapSlices(paramName)

    def _showMapSlices(self, paramName=None):
        label, path = self._selectedMap()
        return self._mapSlicesView([(label, path)], f"{label} ({self.protocol.getRunName()})")

    def _noCutoffs(self):
        """A message for a uniform refinement (no cutoff maps), else None."""
        if self._isNonUniform():
            return None
        return [self.infoMessage("A uniform refinement has no cutoff maps.", "Uniform refinement")]

    def _showCutoffSlices(self, paramName=None):
        title = "Non-uniform filter: local low-pass cutoff of each half-set's reference (blue = finer detail kept)"
        return self._noCutoffs() or self._mapSlicesView(self._cutoffFiles(), title,
                                                        colorbarLabel="cutoff resolution (Å)", resolutionScale=True)

    def _showCutoffChimera(self, paramName=None):
        return self._noCutoffs() or self._coloredSurfaceView(self._run("map.mrc"), self._cutoffFiles()[0][1],
                                                             "non-uniform filter cutoff", "map_colored_by_cutoff.cxc")
