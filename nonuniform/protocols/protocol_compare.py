"""Scipion protocol: compare refinements of the same particles on an equal footing.

Two or more 3-D refinements (non-uniform and uniform runs of this plugin, RELION's 3D
auto-refine, any ``ProtRefine3D`` with half-maps and aligned particles) are measured the same
way: the gold-standard FSC of each run's half-maps with one solvent mask for all, corrected by
phase randomization (the engine's ``corrected_fsc``, through :mod:`nonuniform.convert`; for a
run of this plugin with the random phases that run used, so with its mask the comparison
reproduces its reported resolution exactly); the
change of pose of every particle between each pair of runs (matched by particle id); and, when a
ground-truth map is given (simulated data), the FSC of each run's map against it.

Files in ``extra/``: ``fsc_<k>.csv`` and ``truth_fsc_<k>.csv`` (run k = 1, 2, ... in input
order; the engine's FSC CSV layout), ``poses_<i>_<j>.csv`` (id, angle_deg, dx_ang, dy_ang) and
``comparison.json`` (the table).
"""

import json

import numpy as np
import pyworkflow.protocol.params as params
from pwem.objects import FSC, SetOfFSCs
from pwem.protocols import ProtAnalysis3D
from pyworkflow.constants import BETA

from .. import convert
from .protocol_base import NonUniformEngineMixin
from .protocol_refine import ProtNonUniformRefine3D

TABLE_HEADER = ["run", "particles", "corrected FSC", "masked FSC", "unmasked FSC", "vs ground truth"]


class ProtNonUniformCompareRefinements(ProtAnalysis3D, NonUniformEngineMixin):
    """Compare refinements of the same particles: gold-standard FSC with one mask for all
    (phase-randomization corrected), a table of resolutions, pose changes between runs, and the
    FSC against a ground-truth map when one is given."""

    _label = "compare refinements"
    _devStatus = BETA
    _possibleOutputs = {"outputFSC": SetOfFSCs}

    # -- form ---------------------------------------------------------------------------------

    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputRefinements", params.MultiPointerParam, pointerClass="ProtRefine3D",
                      minNumObjects=2, important=True, label="Refinements",
                      help="Two or more 3-D refinements of the same particles (e.g. non-uniform and uniform "
                           "runs of this plugin, RELION 3D auto-refine). Each must have an output volume with "
                           "its two half-maps and output particles with projection alignment.")
        form.addParam("inputMask", params.PointerParam, pointerClass="VolumeMask", important=True,
                      label="Solvent mask (for every run)",
                      help="One soft mask for every FSC, so the resolutions compare: a run's own mask (e.g. a "
                           "tighter one) changes its reported resolution.")
        form.addParam("groundTruth", params.PointerParam, pointerClass="Volume", allowsNull=True,
                      label="Ground-truth map (optional)",
                      help="For simulated data: each run's map is compared with it (FSC at the threshold "
                           "below), in the same mask.")
        form.addParam("symmetryGroup", params.StringParam, default="C1", label="Symmetry",
                      help="Point group of the map (RELION notation): a particle's orientation and its "
                           "symmetry-equivalent ones count as the same pose in the pose changes.")
        form.addParam("threshold", params.FloatParam, default=0.143, validators=[params.Range(0.01, 0.99)],
                      expertLevel=params.LEVEL_ADVANCED, label="Half-map FSC threshold",
                      help="Resolution of the gold-standard FSC between half-maps (0.143).")
        form.addParam("truthThreshold", params.FloatParam, default=0.5, validators=[params.Range(0.01, 0.99)],
                      expertLevel=params.LEVEL_ADVANCED, label="FSC threshold against the ground truth",
                      help="A map against an error-free reference: 0.5 (equivalent to 0.143 between "
                           "half-maps).")
        form.addParam("seed", params.IntParam, default=0, expertLevel=params.LEVEL_ADVANCED, label="Random seed",
                      help="Seed of the phase randomization of the mask correction (runs of this plugin use "
                           "the random phases of their own last iteration, so that the comparison "
                           "reproduces their reported resolution).")

    # -- steps --------------------------------------------------------------------------------

    def _refinements(self):
        return [pointer.get() for pointer in self.inputRefinements]

    def _insertAllSteps(self):
        truth = self.groundTruth.get()
        self._insertFunctionStep(self.convertInputStep, [p.getObjId() for p in self._refinements()],
                                 self.inputMask.get().getObjId(), truth.getObjId() if truth else None,
                                 needsGPU=False)
        for k in range(1, len(self._refinements()) + 1):
            self._insertFunctionStep(self.fscStep, k, self.threshold.get(), self.truthThreshold.get(),
                                     self.seed.get(), needsGPU=False)
        self._insertFunctionStep(self.poseStep, self.symmetryGroup.get().strip(), needsGPU=False)
        self._insertFunctionStep(self.createOutputStep, needsGPU=False)

    def _labels(self):
        """Run names, made unique (a run given twice gets ``[k]``)."""
        labels = []
        for k, prot in enumerate(self._refinements(), 1):
            name = prot.getRunName()
            labels.append(name if name not in labels else f"{name} [{k}]")
        return labels

    def convertInputStep(self, refinementIds, maskId, truthId):
        extra = self._getExtraPath()
        runs = []
        for k, (prot, label) in enumerate(zip(self._refinements(), self._labels()), 1):
            vol = prot.outputVolume
            half1, half2 = vol.getHalfMaps(asList=True)
            runs.append({"label": label, "protocol_id": prot.getObjId(),
                         "half1": convert.engineMapFile(half1, extra, f"run{k}_half1"),
                         "half2": convert.engineMapFile(half2, extra, f"run{k}_half2"),
                         "map": convert.engineMapFile(vol.getFileName(), extra, f"run{k}_map"),
                         "pixel_size_ang": vol.getSamplingRate(), "particles": prot.outputParticles.getSize(),
                         "phase_seed": self._phaseSeed(prot)})
        inputs = {"runs": runs, "mask": convert.engineMapFile(self.inputMask.get().getFileName(), extra, "mask")}
        if self.groundTruth.get() is not None:
            inputs["truth"] = convert.engineMapFile(self.groundTruth.get().getFileName(), extra, "truth")
        self._writeJson("inputs.json", inputs)

    def _phaseSeed(self, prot):
        """Seed of the phase randomization: a run of this plugin's own (its seed and last iteration,
        as the engine seeds it), else this protocol's. With few Fourier shells (small boxes) the
        corrected resolution moves by about a shell from one set of random phases to another."""
        if isinstance(prot, ProtNonUniformRefine3D) and prot.iterationsDone.get():
            return convert.engineFscSeed(prot.seed.get(), prot.iterationsDone.get())
        return [self.seed.get()]

    def _readJson(self, name):
        with open(self._getExtraPath(name)) as f:
            return json.load(f)

    def _writeJson(self, name, obj):
        with open(self._getExtraPath(name), "w") as f:
            json.dump(obj, f, indent=2)

    def fscStep(self, k, threshold, truthThreshold, seed):
        inputs = self._readJson("inputs.json")
        run = inputs["runs"][k - 1]
        result = {}
        res, warnings = convert.writeCorrectedFsc(run["half1"], run["half2"], inputs["mask"], run["pixel_size_ang"],
                                                  self._getExtraPath(f"fsc_{k}.csv"), threshold, run["phase_seed"])
        result.update({f"resolution_{name[4:]}_ang": value for name, value in res.items()})
        self.info(f"{run['label']}: gold-standard FSC = {threshold:g} at {res['fsc_corrected']:.2f} Å "
                  f"(mask-corrected)")
        if "truth" in inputs:
            res, more = convert.writeCorrectedFsc(run["map"], inputs["truth"], inputs["mask"], run["pixel_size_ang"],
                                                  self._getExtraPath(f"truth_fsc_{k}.csv"), truthThreshold, [seed])
            result["resolution_truth_ang"] = res["fsc_corrected"]
            warnings += more
            self.info(f"{run['label']}: FSC against the ground truth = {truthThreshold:g} at "
                      f"{res['fsc_corrected']:.2f} Å")
        for w in warnings:
            self.warning(f"{run['label']}: {w}")
        self._writeJson(f"result_{k}.json", {**result, "warnings": list(warnings)})

    def poseStep(self, symmetryGroup):
        poses = [convert.posesFromSet(prot.outputParticles) for prot in self._refinements()]
        labels = self._labels()
        pairs = []
        for i in range(len(poses)):
            for j in range(i + 1, len(poses)):
                ids, angle, shift = convert.poseChanges(poses[i], poses[j], symmetryGroup)
                name = f"poses_{i + 1}_{j + 1}.csv"
                np.savetxt(self._getExtraPath(name), np.column_stack([ids, angle, shift]), fmt="%.6g", delimiter=",",
                           header=f"pose change from {labels[i]} to {labels[j]}\nid,angle_deg,dx_ang,dy_ang")
                pairs.append({"first": labels[i], "second": labels[j], "file": name, "particles": int(len(ids)),
                              "median_angle_deg": float(np.median(angle)) if len(ids) else None,
                              "median_shift_ang": float(np.median(np.hypot(*shift.T))) if len(ids) else None})
                if not len(ids):
                    self.warning(f"{labels[i]} and {labels[j]} have no particle in common (ids differ)")
        self._writeJson("pairs.json", pairs)

    def createOutputStep(self):
        inputs = self._readJson("inputs.json")
        table = {"threshold": self.threshold.get(), "truth_threshold": self.truthThreshold.get(),
                 "runs": [], "pairs": self._readJson("pairs.json")}
        fscs = self._createSetOfFSCs()
        for k, run in enumerate(inputs["runs"], 1):
            table["runs"].append({"label": run["label"], "particles": run["particles"],
                                  **self._readJson(f"result_{k}.json")})
            cols, _ = convert.readFscTable(self._getExtraPath(f"fsc_{k}.csv"))
            fsc = FSC(objLabel=run["label"])
            fsc.setData(cols["freq_inv_ang"].tolist(), cols["fsc_corrected"].tolist())
            fscs.append(fsc)
        fscs.write()
        self._writeJson("comparison.json", table)
        self._defineOutputs(outputFSC=fscs)
        for prot in self._refinements():
            self._defineSourceRelation(prot.outputVolume, fscs)

    # -- results ------------------------------------------------------------------------------

    def comparisonTable(self):
        """(header, rows) of the resolutions (text cells, "7.24 Å"), or None before the run finished."""
        try:
            table = self._readJson("comparison.json")
        except OSError:
            return None
        rows = []
        for run in table["runs"]:
            truth = run.get("resolution_truth_ang")
            rows.append([run["label"], run["particles"], f"{run['resolution_corrected_ang']:.2f} Å",
                         f"{run['resolution_masked_ang']:.2f} Å", f"{run['resolution_unmasked_ang']:.2f} Å",
                         "–" if truth is None else f"{truth:.2f} Å"])
        return TABLE_HEADER, rows

    # -- info ---------------------------------------------------------------------------------

    def _validate(self):
        refinements = self._refinements()
        if len(refinements) < 2:
            return ["Choose at least two refinements to compare."]
        mask = self.inputMask.get()
        if mask is None:
            return ["Choose the solvent mask."]
        problem = convert.symmetryError(self.symmetryGroup.get().strip())
        errors = [f"Symmetry: {problem}"] if problem else []
        for prot in refinements:
            name = prot.getRunName()
            vol = getattr(prot, "outputVolume", None)
            if vol is None or not vol.hasHalfMaps() or len(vol.getHalfMaps(asList=True)) != 2:
                errors.append(f"{name} has no output volume with two half-maps (has it finished?).")
                continue
            parts = getattr(prot, "outputParticles", None)
            if parts is None or not parts.hasAlignmentProj():
                errors.append(f"{name} has no output particles with projection alignment.")
            errors += self._checkMapMatches(mask, "solvent mask", vol, f"map of {name}")
            if self.groundTruth.get() is not None:
                errors += self._checkMapMatches(self.groundTruth.get(), "ground-truth map", vol, f"map of {name}")
        return errors

    def _summary(self):
        table = self.comparisonTable()
        if table is None:
            return ["Output not ready yet."]
        header, rows = table
        lines = [f"Gold-standard FSC = {self.threshold.get():g} with one mask for all runs (corrected: "
                 f"phase-randomization); vs ground truth: FSC = {self.truthThreshold.get():g}.",
                 " | ".join(header)]
        lines += [" | ".join(str(c) for c in row) for row in rows]
        return lines

    def _methods(self):
        if self.comparisonTable() is None:
            return []
        return [f"{len(self._refinements())} refinements were compared with the gold-standard FSC of their half-maps "
                f"in one solvent mask ({self.getObjectTag('inputMask')}), corrected for the mask by phase "
                f"randomization [Chen2013], at FSC = {self.threshold.get():g}, in scipion-em-nonuniform."]

    def _citations(self):
        return ["Chen2013"]
