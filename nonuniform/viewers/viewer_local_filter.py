"""Viewer of ``ProtNonUniformLocalFilter``: filtered map, cutoff and local-resolution maps.

Reads ``extra/filter/{filtered.mrc, cutoff_ang.mrc}`` and ``extra/locres/{locres.mrc,
locres.json}`` as the engine wrote them (the histogram is the one in ``locres.json``).
"""

import json
import os

import pyworkflow.protocol.params as params
from pwem.viewers import LocalResolutionViewer
from pwem.wizards import ColorScaleWizardBase
from pyworkflow.viewer import DESKTOP_TKINTER

from ..protocols import ProtNonUniformLocalFilter
from . import plots
from .viewer_base import NonUniformViewerMixin

# Maps that can colour the surface in ChimeraX: (choice label, file in extra, what it shows).
COLOR_MAPS = [("local resolution", ("locres", "locres.mrc")),
              ("adaptive filter cutoff", ("filter", "cutoff_ang.mrc"))]


class NonUniformLocalFilterViewer(NonUniformViewerMixin, LocalResolutionViewer):
    """Slices of the adaptively filtered map, of the cutoff and local-resolution maps (one colour
    scale in Å, so the two compare directly), the local-resolution histogram, and a ChimeraX
    surface coloured by either map."""

    _label = "viewer non-uniform local filter"
    _targets = [ProtNonUniformLocalFilter]
    _environments = [DESKTOP_TKINTER]

    def _samplingRate(self):
        return self.protocol.inputVolume.get().getSamplingRate()

    def _file(self, *paths):
        return self.protocol._getExtraPath(*paths)

    def _maskFile(self):
        mask = self.protocol.inputMask.get()
        return None if mask is None else mask.getFileName()

    def colorFiles(self):
        return [self._file(*path) for _, path in COLOR_MAPS]

    def _defineParams(self, form):
        form.addSection(label="Visualization")
        group = form.addGroup("Maps")
        group.addParam("showFiltered", params.LabelParam, label="Filtered map",
                       help="The adaptively (non-uniformly) filtered map: in ChimeraX when it is configured, "
                            "otherwise central slices.")
        group.addParam("showFilteredSlices", params.LabelParam, label="Central slices of the filtered map")
        group.addParam("showHistogram", params.LabelParam, label="Histogram of local resolution",
                       help="Local resolution (Å) of the voxels inside the mask, as the engine binned it.")

        group = form.addGroup("Coloured slices (Å)")
        group.addParam("showCutoffSlices", params.LabelParam, label="Adaptive filter cutoff",
                       help="The low-pass cutoff (Å) chosen at every voxel by cross-validation.")
        group.addParam("showLocalResolutionSlices", params.LabelParam, label="Local resolution",
                       help="Local resolution (Å) from the local FSC of the half-maps.")
        # Before the run has written its maps (Analyze Results on a running run): a neutral scale.
        done = all(os.path.exists(f) for f in self.colorFiles())
        low, high = self.resolutionRange(self.colorFiles()) if done else (0.0, 0.0)
        ColorScaleWizardBase.defineColorScaleParams(group, defaultHighest=high, defaultLowest=low)

        group = form.addGroup("ChimeraX")
        group.addParam("colorBy", params.EnumParam, choices=[c[0] for c in COLOR_MAPS], default=0,
                       display=params.EnumParam.DISPLAY_HLIST, label="Colour the filtered map by")
        group.addParam("showChimera", params.LabelParam, label="Coloured surface in ChimeraX",
                       help="A ChimeraX script (extra/viewer) colouring the filtered map's surface with the "
                            "colour scale above.")

    def _getVisualizeDict(self):
        return {"showFiltered": self._showFiltered, "showFilteredSlices": self._showFilteredSlices,
                "showHistogram": self._showHistogram, "showCutoffSlices": self._showCutoffSlices,
                "showLocalResolutionSlices": self._showLocalResolutionSlices, "showChimera": self._showChimera}

    def _showFiltered(self, paramName=None):
        return self._mapView(self._file("filter", "filtered.mrc")) or self._showFilteredSlices(paramName)

    def _showFilteredSlices(self, paramName=None):
        return self._mapSlicesView([("filtered map", self._file("filter", "filtered.mrc"))],
                                   f"Adaptively filtered map ({self.protocol.getRunName()})")

    def locresSummary(self):
        with open(self._file("locres", "locres.json")) as f:
            return json.load(f)

    def _showHistogram(self, paramName=None):
        info = self.locresSummary()
        return self._plotView(plots.plot_histogram, info["histogram"]["counts"], info["histogram"]["edges_ang"],
                              "local resolution (Å)", f"Local resolution inside the mask (local FSC = "
                              f"{info['threshold']:g})", median=info["median_ang"])

    def _showCutoffSlices(self, paramName=None):
        return self._mapSlicesView([("cutoff", self._file("filter", "cutoff_ang.mrc"))],
                                   "Adaptive filter: low-pass cutoff chosen at each voxel (blue = finer detail kept)",
                                   colorbarLabel="cutoff resolution (Å)", resolutionScale=True)

    def _showLocalResolutionSlices(self, paramName=None):
        return self._mapSlicesView([("local resolution", self._file("locres", "locres.mrc"))],
                                   "Local resolution (blue = better)", colorbarLabel="local resolution (Å)",
                                   resolutionScale=True)

    def _showChimera(self, paramName=None):
        what, path = COLOR_MAPS[self.colorBy.get()]
        return self._coloredSurfaceView(self._file("filter", "filtered.mrc"), self._file(*path), what,
                                        f"filtered_map_colored_by_{path[0]}.cxc")
