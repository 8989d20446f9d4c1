"""Scipion protocol: gold-standard 3-D refinement with the non-uniform (or uniform) regularizer.

A thin shell around ``nonuniform refine``: the form maps onto the engine's options, the particles
go out as a RELION 3.1 STAR file (:mod:`nonuniform.convert`), the engine runs through
``self.runJob`` (its log lines land in the run's output log) and writes into ``extra/run``; the
outputs are registered from the files it wrote. The engine checkpoints every iteration, so
Scipion's *Continue* resumes a stopped or failed run from its last finished iteration.
"""

import json
import os

import pyworkflow.protocol.params as params
import pyworkflow.utils as pwutils
from pwem.constants import ALIGN_3D
from pwem.objects import SetOfFSCs, SetOfParticles, Volume, VolumeMask
from pwem.protocols import ProtRefine3D
from pyworkflow.constants import BETA
from pyworkflow.object import Float, Integer

from .. import convert
from ..constants import NU_FILTER_TYPES, NU_OBJECTIVE_HELP, NU_OBJECTIVES
from .protocol_base import NonUniformEngineMixin


class ProtNonUniformRefine3D(ProtRefine3D, NonUniformEngineMixin):
    """Gold-standard 3-D refinement whose regularizer is the non-uniform, cross-validated
    adaptive filter (Punjani, Zhang & Fleet, Nat. Methods 2020), or the uniform FSC filter.

    The particles are split into two independent half-sets; each is refined against its own
    reference. In non-uniform mode, each half-set's reference is low-pass filtered voxel by voxel
    with the cutoff that best predicts one half of its data from the other (cross-validation), so
    well-ordered regions keep their high-resolution detail while disordered ones (micelles,
    flexible domains) are smoothed. The resolution is the gold-standard FSC at 0.143 between the
    two half-maps, corrected for the mask by phase randomization.
    """

    _engineUsesGpu = True  # refine --gpu ID
    _engineUsesMpi = True  # mpiexec -n K ... refine

    _label = "non-uniform 3D refinement"
    _devStatus = BETA
    _possibleOutputs = {
        "outputVolume": Volume,
        "outputParticles": SetOfParticles,
        "outputFSC": SetOfFSCs,
        "outputMask": VolumeMask,
        "outputVolumeSharpened": Volume,
        "outputVolumeNonUniform": Volume,
        "outputCutoffHalf1": Volume,
        "outputCutoffHalf2": Volume,
    }

    def __init__(self, **kwargs):
        ProtRefine3D.__init__(self, **kwargs)
        self.finalResolution = Float()
        self.iterationsDone = Integer()

    # -- form ---------------------------------------------------------------------------------

    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputParticles", params.PointerParam, pointerClass="SetOfParticles",
                      important=True, label="Input particles",
                      help="Particles with CTF information (defocus, voltage, Cs, amplitude contrast). "
                           "Their poses, if any, are not used as a start: every particle is searched "
                           "globally against the reference. An existing half-set split "
                           "(_rlnRandomSubset 1/2) is kept; otherwise the particles are split at random.")
        form.addParam("referenceVolume", params.PointerParam, pointerClass="Volume", important=True,
                      label="Initial volume",
                      help="Starting map, with the same box size and pixel size as the particles. It is "
                           "low-pass filtered to the initial resolution below, so a model from ab initio "
                           "or from another refinement is fine.")
        form.addParam("refMask", params.PointerParam, pointerClass="VolumeMask", allowsNull=True,
                      label="Solvent mask (optional)",
                      help="A soft mask (1 on the particle, 0 in the solvent) used for the references and "
                           "the masked FSC. Leave empty to let the refinement build a dynamic mask from "
                           "the current map at every iteration (recommended).")
        form.addParam("symmetryGroup", params.StringParam, default="C1", label="Symmetry",
                      help="Point group in RELION's notation and orientation: C1 (none), Cn, Dn (2-fold "
                           "axis on x), T, O, I (= I2), I1-I4.")
        form.addParam("maskDiameterA", params.FloatParam, default=-1, label="Particle diameter (Å)",
                      help="Diameter of the circular mask applied to the references before alignment, in "
                           "Ångström. -1 uses 80% of the box.")
        form.addParam("doNonUniform", params.BooleanParam, default=True, label="Non-uniform refinement?",
                      help="Yes: regularize with the non-uniform, cross-validated local filter (cryoSPARC "
                           "refine_nu_enable). No: the uniform FSC filter of conventional refinement "
                           "(RELION-style), e.g. as a baseline for comparison on the same particles.")

        form.addSection(label="Refinement")
        form.addParam("refine_res_init", params.FloatParam, default=30.0, validators=[params.Positive],
                      label="Initial low-pass resolution (Å)",
                      help="The initial volume is low-pass filtered to this resolution. Coarser than "
                           "about a third of the particle diameter may leave the first search unable to "
                           "orient the images (a warning says so).")
        form.addParam("refine_res_gsfsc_split", params.FloatParam, default=20.0, validators=[params.GE(0)],
                      expertLevel=params.LEVEL_ADVANCED, label="GS-FSC split resolution (Å)",
                      help="The two half-set references share (average) their frequencies below this "
                           "resolution so that they stay in register; above it they are fully independent. "
                           "0 never joins them.")
        form.addParam("maxIterations", params.IntParam, default=20, validators=[params.GE(1)],
                      expertLevel=params.LEVEL_ADVANCED, label="Maximum iterations",
                      help="The refinement stops earlier when the resolution and the poses stop improving.")
        form.addParam("refine_num_final_iterations", params.IntParam, default=1, validators=[params.GE(0)],
                      expertLevel=params.LEVEL_ADVANCED, label="Extra final passes",
                      help="Iterations run after convergence is declared (cryoSPARC "
                           "refine_num_final_iterations).")
        form.addParam("doMarginalize", params.BooleanParam, default=True, expertLevel=params.LEVEL_ADVANCED,
                      label="Marginalize over poses?",
                      help="Yes: each particle is backprojected at its best poses, weighted by their "
                           "posterior probability (as RELION). No: at its single best pose.")
        form.addParam("posteriorPoses", params.IntParam, default=64, validators=[params.GE(1)],
                      condition="doMarginalize", expertLevel=params.LEVEL_ADVANCED,
                      label="Posterior poses per particle",
                      help="Number of best poses kept per particle for the weighted backprojection.")
        form.addParam("minPosterior", params.FloatParam, default=0.01, validators=[params.Range(0, 0.999)],
                      condition="doMarginalize", expertLevel=params.LEVEL_ADVANCED,
                      label="Minimum posterior probability",
                      help="Poses less probable than this are left out of the backprojection.")
        form.addParam("seed", params.IntParam, default=0, expertLevel=params.LEVEL_ADVANCED,
                      label="Random seed",
                      help="Seed of the half-set split (when the input has none) and of the phase "
                           "randomization; the same seed gives the same result.")

        form.addSection(label="Non-uniform")
        form.addParam("refine_nu_awf", params.FloatParam, default=3.0, validators=[params.Positive],
                      condition="doNonUniform", label="Adaptive window factor (AWF)",
                      help="The cross-validation at each voxel uses a window of AWF times the voxel's "
                           "local wavelength. Lower: sharper transitions between regions but noisier "
                           "choices; higher: smoother, more reliable choices (cryoSPARC refine_nu_awf).")
        form.addParam("refine_nu_order", params.IntParam, default=8, validators=[params.GE(1)],
                      condition="doNonUniform", expertLevel=params.LEVEL_ADVANCED,
                      label="Butterworth order",
                      help="Steepness of the candidate low-pass filters (cryoSPARC refine_nu_order).")
        form.addParam("refine_nu_num_cutoffs", params.IntParam, default=50, validators=[params.GE(2)],
                      condition="doNonUniform", expertLevel=params.LEVEL_ADVANCED,
                      label="Number of candidate cutoffs",
                      help="Candidate cutoff frequencies, equispaced up to Nyquist, among which each voxel "
                           "chooses.")
        form.addParam("refine_nu_filtertype", params.EnumParam, choices=list(NU_FILTER_TYPES), default=0,
                      condition="doNonUniform", expertLevel=params.LEVEL_ADVANCED,
                      label="Filter type",
                      help="Shape of the candidate low-pass filters (cryoSPARC refine_nu_filtertype).")
        form.addParam("refine_nu_objective", params.EnumParam, choices=list(NU_OBJECTIVES), default=0,
                      condition="doNonUniform", expertLevel=params.LEVEL_ADVANCED,
                      label="Filter choice by", help=NU_OBJECTIVE_HELP)

        self._defineComputeParams(form)

    # -- steps --------------------------------------------------------------------------------

    def _insertAllSteps(self):
        mask = self.refMask.get()
        self._insertFunctionStep(self.convertInputStep, self.inputParticles.get().getObjId(),
                                 self.referenceVolume.get().getObjId(), mask.getObjId() if mask else None,
                                 needsGPU=False)
        self._insertFunctionStep(self.refineStep, self._engineArguments())
        self._insertFunctionStep(self.createOutputStep, needsGPU=False)

    def _runDir(self, *paths):
        return self._getExtraPath("run", *paths)

    def convertInputStep(self, particlesId, volumeId, maskId):
        extra = self._getExtraPath()
        # New inputs make earlier engine results meaningless: start the engine afresh.
        pwutils.cleanPath(self._runDir())
        n = convert.writeSetOfParticles(self.inputParticles.get(), self._getExtraPath("input_particles.star"),
                                        extra)
        self.info(f"{n} particles written to {self._getExtraPath('input_particles.star')}")
        paths = {"reference": convert.engineMapFile(self.referenceVolume.get().getFileName(), extra, "reference")}
        if self.refMask.get() is not None:
            paths["mask"] = convert.engineMapFile(self.refMask.get().getFileName(), extra, "mask")
        with open(self._getExtraPath("inputs.json"), "w") as f:
            json.dump(paths, f)

    def _engineArguments(self):
        """The engine's command line (without the run-time --continue / --overwrite)."""
        mode = "nonuniform" if self.doNonUniform else "uniform"
        args = ["refine", "--particles", self._getExtraPath("input_particles.star"), "--out", self._runDir(),
                "--mode", mode, "--sym", self.symmetryGroup.get().strip(),
                "--initial-lowpass-ang", self.refine_res_init.get(),
                "--gsfsc-split-ang", self.refine_res_gsfsc_split.get(),
                "--iterations", self.maxIterations.get(),
                "--extra-final-passes", self.refine_num_final_iterations.get(),
                "--seed", self.seed.get()]
        if self.maskDiameterA.get() > 0:
            args += ["--diameter-ang", self.maskDiameterA.get()]
        if self.doMarginalize:
            args += ["--posterior-poses", self.posteriorPoses.get(), "--min-posterior", self.minPosterior.get()]
        else:
            args += ["--no-marginalize"]
        if self.doNonUniform:
            args += ["--awf", self.refine_nu_awf.get(), "--nu-order", self.refine_nu_order.get(),
                     "--nu-cutoffs", self.refine_nu_num_cutoffs.get(),
                     "--nu-filter-type", NU_FILTER_TYPES[self.refine_nu_filtertype.get()],
                     "--nu-objective", NU_OBJECTIVES[self.refine_nu_objective.get()]]
        return " ".join(str(a) for a in args)

    def refineStep(self, arguments):
        with open(self._getExtraPath("inputs.json")) as f:
            paths = json.load(f)
        arguments += f" --ref {paths['reference']}"
        if "mask" in paths:
            arguments += f" --mask {paths['mask']}"
        if convert.finishedIterations(self._runDir()):
            arguments += " --continue"  # Scipion's Continue: resume from the last finished iteration
        elif os.path.isdir(self._runDir()):
            arguments += " --overwrite"  # stopped before its first checkpoint: nothing to keep
        self._runEngine(arguments)

    def createOutputStep(self):
        run = self._runDir
        with open(run("summary.json")) as f:
            summary = json.load(f)
        particles = self.inputParticles.get()
        apix = particles.getSamplingRate()

        vol = self._volume(run("map.mrc"), apix)
        vol.setHalfMaps([run("half1.mrc"), run("half2.mrc")])
        outParticles = convert.copyRefinedParticles(particles, self._createSetOfParticles(), run("particles.star"))
        fscs = self._createSetOfFSCs()
        for fsc in convert.readFscCurves(run("fsc.csv")):
            fscs.append(fsc)
        fscs.write()
        mask = VolumeMask()
        mask.setFileName(run("mask.mrc"))
        mask.setSamplingRate(apix)
        outputs = {"outputVolume": vol, "outputParticles": outParticles, "outputFSC": fscs, "outputMask": mask,
                   "outputVolumeSharpened": self._volume(run("map_sharp.mrc"), apix)}
        if self.doNonUniform:
            outputs["outputVolumeNonUniform"] = self._volume(run("map_nu.mrc"), apix)
            for h in (1, 2):
                outputs[f"outputCutoffHalf{h}"] = self._volume(run(f"cutoff_half{h}.mrc"), apix)
        self._defineOutputs(**outputs)
        for name, obj in outputs.items():
            if name == "outputParticles":
                self._defineTransformRelation(self.inputParticles, obj)
            else:
                self._defineSourceRelation(self.inputParticles, obj)
        self._defineSourceRelation(self.referenceVolume, vol)
        self.finalResolution.set(summary["resolution_ang"])
        self.iterationsDone.set(summary["iterations"])
        self._store(self.finalResolution, self.iterationsDone)

    # -- helpers ------------------------------------------------------------------------------

    def _diameterA(self):
        d = self.maskDiameterA.get()
        if d and d > 0:
            return d
        p = self.inputParticles.get()
        return 0.8 * p.getXDim() * p.getSamplingRate()

    # -- info ---------------------------------------------------------------------------------

    def _validate(self):
        errors = []
        particles = self.inputParticles.get()
        if particles is None:
            return ["Choose the input particles."]
        if not particles.hasCTF():
            errors.append("The input particles have no CTF information. Estimate the CTF of the micrographs "
                          "(e.g. CTFFIND or Gctf) and extract the particles again, or assign a CTF to them.")
        if particles.getAlignment() == ALIGN_3D:
            errors.append("The input particles carry 3D (subtomogram) alignment, which single-particle "
                          "refinement cannot use. Give particles with no alignment, 2D or projection "
                          "alignment.")
        errors += self._checkMapMatches(self.referenceVolume.get(), "initial volume", particles)
        if self.refMask.get() is not None:
            errors += self._checkMapMatches(self.refMask.get(), "solvent mask", particles)
        problem = convert.symmetryError(self.symmetryGroup.get().strip())
        if problem:
            errors.append(f"Symmetry: {problem}")
        need = 2 * convert.minParticlesPerHalf()
        if particles.getSize() < need:
            errors.append(f"The input has {particles.getSize()} particles; gold-standard refinement needs at "
                          f"least {need} (two half-sets of {need // 2}).")
        errors += self._computeErrors()
        return errors

    def _warnings(self):
        particles = self.inputParticles.get()
        if particles is None or not particles.getSamplingRate():
            return []
        message = convert.coarseStartWarning(self._diameterA(), self.refine_res_init.get())
        return [message + " Lower 'Initial low-pass resolution' in the Refinement tab."] if message else []

    def _summary(self):
        mode = "non-uniform" if self.doNonUniform else "uniform"
        lines = [f"Regularization: *{mode}*; symmetry {self.symmetryGroup.get()}."]
        if self.hasAttribute("outputVolume") and self.finalResolution.get():
            lines.append(f"Final resolution (gold-standard FSC = 0.143, mask-corrected): "
                         f"*{self.finalResolution.get():.2f} Å* after {self.iterationsDone.get()} iterations.")
        else:
            progress = convert.lastIteration(self._runDir())
            if progress:
                lines.append(f"Iteration {progress[0]} done: {progress[1]:.2f} Å (running or stopped).")
            else:
                lines.append("Output not ready yet.")
        return lines

    def _methods(self):
        if not self.hasAttribute("outputVolume"):
            return []
        particles = self.inputParticles.get()
        text = (f"{particles.getSize()} particles ({self.getObjectTag('inputParticles')}) were refined against "
                f"{self.getObjectTag('referenceVolume')}, low-pass filtered to {self.refine_res_init.get():g} Å, "
                f"with gold-standard refinement in scipion-em-nonuniform (symmetry "
                f"{self.symmetryGroup.get()}). ")
        if self.doNonUniform:
            text += (f"Each half-set's reference was regularized with non-uniform refinement's cross-validated "
                     f"adaptive filter [Punjani2020] ({NU_FILTER_TYPES[self.refine_nu_filtertype.get()]} "
                     f"low-pass filters of order {self.refine_nu_order.get()}, "
                     f"{self.refine_nu_num_cutoffs.get()} candidate cutoffs, adaptive window factor "
                     f"{self.refine_nu_awf.get():g}, filters chosen by "
                     f"{NU_OBJECTIVES[self.refine_nu_objective.get()]}). ")
        else:
            text += "The references were regularized with the uniform FSC-based filter [Scheres2012]. "
        text += (f"Half-set references shared frequencies below {self.refine_res_gsfsc_split.get():g} Å. "
                 f"After {self.iterationsDone.get()} iterations the resolution was "
                 f"{self.finalResolution.get():.2f} Å by the gold-standard FSC at 0.143, corrected for masking "
                 f"effects by phase randomization [Chen2013].")
        return [text]

    def _citations(self):
        return ["Punjani2020", "Scheres2012", "Chen2013"]
