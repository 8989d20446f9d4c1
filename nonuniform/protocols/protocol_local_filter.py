"""Scipion protocol: the non-uniform adaptive filter and local resolution of any two half-maps.

Runs ``nonuniform filter`` (the cross-validated local low-pass filter of non-uniform refinement,
applied once to existing half-maps, e.g. a RELION refinement's) and ``nonuniform locres``
(band-wise local FSC) on the half-maps of a ``Volume``.
"""

import json

import pyworkflow.protocol.params as params
from pwem.objects import Volume
from pwem.protocols import ProtAnalysis3D
from pyworkflow.constants import BETA
from pyworkflow.object import Float

from .. import convert
from ..constants import NU_FILTER_TYPES, NU_OBJECTIVE_HELP, NU_OBJECTIVES
from .protocol_base import NonUniformEngineMixin


class ProtNonUniformLocalFilter(ProtAnalysis3D, NonUniformEngineMixin):
    """Adaptive (non-uniform) local filtering and local resolution of two half-maps.

    At every voxel, the low-pass cutoff is chosen by cross-validation: the cutoff whose filtered
    half-map best predicts the other half-map in a window around the voxel. Well-ordered regions
    keep their high resolution, disordered ones are smoothed, and noise is not mistaken for signal
    because the two half-maps are independent (gold-standard). Also writes the map of chosen
    cutoffs (in Å) and a local-resolution map from the local FSC.
    """

    _label = "non-uniform local filter"
    _devStatus = BETA
    _possibleOutputs = {"outputVolume": Volume, "outputCutoffMap": Volume, "outputLocalResolution": Volume}

    def __init__(self, **kwargs):
        ProtAnalysis3D.__init__(self, **kwargs)
        self.medianCutoff = Float()
        self.medianLocalResolution = Float()

    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputVolume", params.PointerParam, pointerClass="Volume", important=True,
                      label="Map with half-maps",
                      help="A map whose two independent half-maps are attached, e.g. the output volume of a "
                           "RELION, cryoSPARC or non-uniform refinement.")
        form.addParam("inputMask", params.PointerParam, pointerClass="VolumeMask", allowsNull=True,
                      label="Mask (optional)",
                      help="Solvent mask: voxels outside it get the lowest cutoff, and the statistics and "
                           "histogram are taken inside it.")
        form.addParam("awf", params.FloatParam, default=3.0, validators=[params.Positive],
                      label="Adaptive window factor (AWF)",
                      help="Window radius in units of each voxel's local wavelength (cryoSPARC refine_nu_awf).")
        form.addParam("order", params.IntParam, default=8, validators=[params.GE(1)],
                      expertLevel=params.LEVEL_ADVANCED, label="Butterworth order",
                      help="Steepness of the candidate low-pass filters.")
        form.addParam("numCutoffs", params.IntParam, default=50, validators=[params.GE(2)],
                      expertLevel=params.LEVEL_ADVANCED, label="Number of candidate cutoffs",
                      help="Candidate cutoff frequencies, equispaced up to Nyquist.")
        form.addParam("filterType", params.EnumParam, choices=list(NU_FILTER_TYPES), default=0,
                      expertLevel=params.LEVEL_ADVANCED, label="Filter type",
                      help="Shape of the candidate low-pass filters.")
        form.addParam("objective", params.EnumParam, choices=list(NU_OBJECTIVES), default=0,
                      expertLevel=params.LEVEL_ADVANCED, label="Filter choice by", help=NU_OBJECTIVE_HELP)
        form.addParam("locresThreshold", params.FloatParam, default=0.143, validators=[params.Range(0.01, 0.99)],
                      expertLevel=params.LEVEL_ADVANCED, label="Local FSC threshold",
                      help="Local resolution is where the local FSC of the half-maps falls below this value.")
        self._defineComputeParams(form)

    def _insertAllSteps(self):
        mask = self.inputMask.get()
        self._insertFunctionStep(self.convertInputStep, self.inputVolume.get().getObjId(),
                                 mask.getObjId() if mask else None, needsGPU=False)
        self._insertFunctionStep(self.filterStep, self.awf.get(), self.order.get(), self.numCutoffs.get(),
                                 self.filterType.get(), self.objective.get())
        self._insertFunctionStep(self.locresStep, self.locresThreshold.get(), needsGPU=False)
        self._insertFunctionStep(self.createOutputStep, needsGPU=False)

    def convertInputStep(self, volumeId, maskId):
        extra = self._getExtraPath()
        half1, half2 = self.inputVolume.get().getHalfMaps(asList=True)
        paths = {"half1": convert.engineMapFile(half1, extra, "half1"),
                 "half2": convert.engineMapFile(half2, extra, "half2")}
        if self.inputMask.get() is not None:
            paths["mask"] = convert.engineMapFile(self.inputMask.get().getFileName(), extra, "mask")
        with open(self._getExtraPath("inputs.json"), "w") as f:
            json.dump(paths, f)

    def _inputArguments(self, out):
        with open(self._getExtraPath("inputs.json")) as f:
            paths = json.load(f)
        args = f"--half1 {paths['half1']} --half2 {paths['half2']} --out {out}"
        return args + (f" --mask {paths['mask']}" if "mask" in paths else "")

    def filterStep(self, awf, order, numCutoffs, filterType, objective=0):
        self._runEngine(f"filter {self._inputArguments(self._getExtraPath('filter'))} --awf {awf} "
                        f"--order {order} --n-cutoffs {numCutoffs} --filter-type {NU_FILTER_TYPES[filterType]} "
                        f"--objective {NU_OBJECTIVES[objective]}")

    def locresStep(self, threshold):
        self._runEngine(f"locres {self._inputArguments(self._getExtraPath('locres'))} --threshold {threshold}")

    def createOutputStep(self):
        vol = self.inputVolume.get()
        apix = vol.getSamplingRate()
        outputs = {"outputVolume": self._volume(self._getExtraPath("filter", "filtered.mrc"), apix),
                   "outputCutoffMap": self._volume(self._getExtraPath("filter", "cutoff_ang.mrc"), apix),
                   "outputLocalResolution": self._volume(self._getExtraPath("locres", "locres.mrc"), apix)}
        self._defineOutputs(**outputs)
        for obj in outputs.values():
            self._defineSourceRelation(self.inputVolume, obj)
        with open(self._getExtraPath("filter", "filter.json")) as f:
            self.medianCutoff.set(json.load(f)["cutoff_ang_percentiles"]["50"])
        with open(self._getExtraPath("locres", "locres.json")) as f:
            self.medianLocalResolution.set(json.load(f)["median_ang"])
        self._store(self.medianCutoff, self.medianLocalResolution)

    def _validate(self):
        vol = self.inputVolume.get()
        if vol is None:
            return ["Choose a map with half-maps."]
        if not vol.hasHalfMaps() or len(vol.getHalfMaps(asList=True)) != 2:
            return [f"{vol.getFileName()} has no pair of half-maps attached; choose the output volume of a "
                    "gold-standard refinement (or import the map with its two half-maps)."]
        errors = []
        if self.inputMask.get() is not None:
            errors += self._checkMapMatches(self.inputMask.get(), "mask", vol, "map")
        return errors + self._computeErrors()

    def _summary(self):
        if not self.hasAttribute("outputVolume"):
            return ["Output not ready yet."]
        return [f"Adaptive filter: median cutoff *{self.medianCutoff.get():.2f} Å*; local resolution: median "
                f"*{self.medianLocalResolution.get():.2f} Å*."]

    def _methods(self):
        if not self.hasAttribute("outputVolume"):
            return []
        return [f"The half-maps of {self.getObjectTag('inputVolume')} were filtered with the cross-validated "
                f"adaptive local filter of non-uniform refinement [Punjani2020] (adaptive window factor "
                f"{self.awf.get():g}, {NU_FILTER_TYPES[self.filterType.get()]} filters of order {self.order.get()}, "
                f"{self.numCutoffs.get()} candidate cutoffs, chosen by {NU_OBJECTIVES[self.objective.get()]}) in "
                f"scipion-em-nonuniform; local resolution was "
                f"estimated from the local FSC at {self.locresThreshold.get():g}."]

    def _citations(self):
        return ["Punjani2020"]
