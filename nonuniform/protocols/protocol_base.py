"""What the plugin's protocols share: the compute section, running the engine, map checks."""

import pyworkflow.protocol.params as params
from pwem.objects import Volume

from .. import Plugin, convert


class NonUniformEngineMixin:
    """Mixed into the plugin's protocols (after the Scipion base class)."""

    def _defineComputeParams(self, form):
        """Hidden GPU switch and list (Scipion's run-header widget) and the parallel section."""
        form.addHidden(params.USE_GPU, params.BooleanParam, default=False, label="Use GPU for execution",
                       help="Run the engine on an NVIDIA GPU (needs cupy). Not available in this version: "
                            "the refinement runs on the CPU.")
        form.addHidden(params.GPU_LIST, params.StringParam, default="0", label="Choose GPU IDs",
                       help="GPU ids, e.g. 0 or 0,1.")
        form.addParallelSection(threads=4, mpi=1)

    def _computeErrors(self):
        """_validate messages for GPU and MPI requests the engine cannot honour yet."""
        errors = []
        if self.usesGpu():
            problem = convert.gpuProblem()
            errors.append("GPU execution was requested ('Use GPU' = Yes), but "
                          + (f"this machine cannot run it: {problem}. " if problem else
                             "this version of nonuniform runs on the CPU only. ")
                          + "Set 'Use GPU' to No in the run header to refine on the CPU.")
        if self.numberOfMpi.get() > 1:
            errors.append(f"MPI ({self.numberOfMpi.get()} processes) is not supported yet: set 'MPI' to 1 and "
                          "use 'Threads' to run on several cores.")
        return errors

    def _runEngine(self, arguments):
        """Run ``nonuniform <arguments>`` with this run's threads; its log goes to the run's output log."""
        threads = max(1, self.numberOfThreads.get())
        env = Plugin.getEnviron()
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
        self.runJob(Plugin.getProgram(), f"--threads {threads} {arguments} 2>&1", env=env,
                    numberOfMpi=1, numberOfThreads=1)

    def _checkMapMatches(self, obj, label, reference, referenceLabel="particles"):
        """_validate messages when ``obj`` (a volume) differs in box or pixel size from ``reference``."""
        if obj is None:
            return [f"Choose the {label}."]
        errors = []
        box, refBox = obj.getXDim(), reference.getXDim()
        apix, refApix = obj.getSamplingRate(), reference.getSamplingRate()
        if box != refBox:
            errors.append(f"The {label} is {box} px wide, the {referenceLabel} {refBox} px: resize it "
                          f"to {refBox} px at {refApix:.4g} Å/px first (e.g. with the 'crop/resize volumes' "
                          "protocol of Xmipp or RELION).")
        elif abs(apix - refApix) > 1e-3 * refApix:
            errors.append(f"The {label} has a pixel size of {apix:.4g} Å, the {referenceLabel} "
                          f"{refApix:.4g} Å: resample it to {refApix:.4g} Å/px first, or fix its sampling rate "
                          "if only the header is wrong.")
        return errors

    @staticmethod
    def _volume(path, apix):
        vol = Volume()
        vol.setFileName(path)
        vol.setSamplingRate(apix)
        return vol
