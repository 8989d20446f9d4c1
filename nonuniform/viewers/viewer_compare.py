"""Viewer of ``ProtNonUniformCompareRefinements``: overlaid FSC, the table, pose changes, ground truth.

Reads the files the protocol wrote in ``extra/`` (``fsc_<k>.csv``, ``truth_fsc_<k>.csv``,
``poses_<i>_<j>.csv``, ``comparison.json``).
"""

import numpy as np
import pyworkflow.protocol.params as params
from pwem.viewers import EmProtocolViewer
from pyworkflow.viewer import DESKTOP_TKINTER

from .. import convert
from ..protocols import ProtNonUniformCompareRefinements
from . import plots
from .viewer_base import NonUniformViewerMixin

# Curves of the half-map FSC that can be overlaid: (choice label, column in fsc_<k>.csv).
FSC_CHOICES = [("mask-corrected", "fsc_corrected"), ("with the mask", "fsc_masked"), ("no mask", "fsc_unmasked")]


class NonUniformCompareViewer(NonUniformViewerMixin, EmProtocolViewer):
    """Gold-standard FSC of every run overlaid (one mask), the table of resolutions, histograms of
    the pose changes between runs, and the FSC of each run's map against the ground truth."""

    _label = "viewer comparison of refinements"
    _targets = [ProtNonUniformCompareRefinements]
    _environments = [DESKTOP_TKINTER]

    def _table(self):
        return self.protocol._readJson("comparison.json")

    def _defineParams(self, form):
        form.addSection(label="Visualization")
        group = form.addGroup("Resolution")
        group.addParam("fscCurve", params.EnumParam, choices=[c[0] for c in FSC_CHOICES], default=0,
                       display=params.EnumParam.DISPLAY_HLIST, label="FSC curve")
        group.addParam("showFsc", params.LabelParam, label="Gold-standard FSC of every run",
                       help="The FSC between each run's half-maps, all in the same mask, overlaid.")
        group.addParam("showTable", params.LabelParam, label="Table of resolutions")
        if self.protocol.groundTruth.get() is not None:
            group.addParam("showTruth", params.LabelParam, label="FSC against the ground truth",
                           help="FSC of each run's map against the ground-truth map, in the same mask.")
        group = form.addGroup("Particles")
        group.addParam("showPoseChanges", params.LabelParam, label="Pose changes between runs",
                       help="For each pair of runs, histograms of the change in orientation and shift of the "
                            "particles they share (matched by id).")

    def _getVisualizeDict(self):
        return {"showFsc": self._showFsc, "showTable": self._showTable, "showTruth": self._showTruth,
                "showPoseChanges": self._showPoseChanges}

    def _curves(self, prefix, column):
        curves = []
        for k, run in enumerate(self._table()["runs"], 1):
            cols, meta = convert.readFscTable(self.protocol._getExtraPath(f"{prefix}_{k}.csv"))
            res = meta.get(f"resolution_{column}_ang")
            curves.append(plots.Curve(run["label"], cols["freq_inv_ang"], cols[column], float(res) if res else None))
        return curves

    def _showFsc(self, paramName=None):
        label, column = FSC_CHOICES[self.fscCurve.get()]
        return self._plotView(plots.plot_fsc, self._curves("fsc", column), threshold=self._table()["threshold"],
                              title=f"Gold-standard FSC of each refinement ({label}, one mask for all)",
                              note="Each curve: the FSC between one run's two half-maps; resolutions where "
                                   "it crosses the threshold. Curves further right: finer detail resolved.")

    def _showTruth(self, paramName=None):
        if self.protocol.groundTruth.get() is None:
            return [self.infoMessage("No ground-truth map was given to this comparison.", "No ground truth")]
        return self._plotView(plots.plot_fsc, self._curves("truth_fsc", "fsc_corrected"),
                              threshold=self._table()["truth_threshold"],
                              title="FSC of each run's map against the ground truth (mask-corrected)",
                              note="How much of the true structure each map recovers, shell by shell; "
                                   "resolutions where the FSC crosses the threshold.")

    def _showTable(self, paramName=None):
        header, rows = self.protocol.comparisonTable()
        return self._plotView(plots.plot_table, header, rows, "Resolution of each refinement",
                              note=f"Gold-standard FSC = {self._table()['threshold']:g} of the half-maps, in one "
                                   f"mask; against the ground truth: FSC = {self._table()['truth_threshold']:g}.")

    def poseChangeSeries(self):
        """[(label, angle_deg, shift_ang (n, 2))] per pair of runs, as the protocol wrote them."""
        series = []
        for pair in self._table()["pairs"]:
            data = np.loadtxt(self.protocol._getExtraPath(pair["file"]), delimiter=",", ndmin=2).reshape(-1, 4)
            series.append((f"{pair['first']} → {pair['second']}", data[:, 1], data[:, 2:4]))
        return series

    def _showPoseChanges(self, paramName=None):
        return self._plotView(plots.plot_pose_changes, self.poseChangeSeries(),
                              title="Change of particle poses between refinements")
