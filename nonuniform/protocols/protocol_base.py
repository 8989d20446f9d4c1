"""What the plugin's protocols share: the compute section, running the engine, map checks."""

import pyworkflow.protocol.params as params
from pwem.objects import Volume

from .. import Plugin, convert


class NonUniformEngineMixin:
    """Mixed into the plugin's protocols (after the Scipion base class)."""

    def _defineComputeParams(self, form):
        """Hidden GPU switch and list (Scipion's run-header widget) and the parallel section."""
        form.addHidden(params.USE_GPU, params.BooleanParam, default=False, label="Use GPU for execution",
                       help="Run the refinement's pose search, backprojection, reconstruction and NU "
                            "regularization on an NVIDIA GPU (needs the plugin's gpu extra: cupy).")
        form.addHidden(params.GPU_LIST, params.StringParam, default="0", label="Choose GPU IDs",
                       help="The CUDA device id to use, e.g. 0 (one GPU per run).")
        form.addParallelSection(threads=4, mpi=1)

    # Whether the protocol's engine command takes --gpu and runs under MPI (refine does; filter and
    # locres run in one process on the CPU).
    _engineUsesGpu = False
    _engineUsesMpi = False

    def _gpuIds(self):
        return [g for g in self.gpuList.get("").replace(",", " ").split()]

    def _computeErrors(self):
        """_validate messages for GPU and MPI requests the engine cannot honour (here)."""
        errors = []
        if self.usesGpu():
            ids = self._gpuIds()
            fix = "Set 'Use GPU' to No in the run header to run on the CPU."
            if not self._engineUsesGpu:
                errors.append("GPU execution was requested ('Use GPU' = Yes), but this protocol runs on the CPU "
                              "only. " + fix)
            elif len(ids) != 1 or not ids[0].isdigit():
                errors.append(f"GPU ids '{self.gpuList.get()}': give one CUDA device id (e.g. 0); one run drives "
                              "one GPU.")
            else:
                problem = convert.gpuProblem(int(ids[0]))
                if problem:
                    errors.append(f"GPU execution was requested ('Use GPU' = Yes), but this machine cannot run it: "
                                  f"{problem}. " + fix)
        if self.numberOfMpi.get() > 1:
            if not self._engineUsesMpi:
                errors.append(f"MPI ({self.numberOfMpi.get()} processes): this protocol runs in one process; set "
                              "'MPI' to 1 and use 'Threads' to run on several cores.")
            else:
                problem = convert.mpiProblem()
                if problem:
                    errors.append(f"MPI ({self.numberOfMpi.get()} processes) was requested, but {problem}.")
        return errors

    def _runEngine(self, arguments):
        """Run ``nonuniform <arguments>`` with this run's threads; its log goes to the run's output log."""
        threads = max(1, self.numberOfThreads.get())
        if self._engineUsesGpu and self.usesGpu():
            arguments += f" --gpu {self._gpuIds()[0]}"
        env = Plugin.getEnviron()
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
        # With MPI > 1, Scipion wraps the command in the host's PARALLEL_COMMAND (hosts.conf: mpirun
        # here, or the queue's launcher on a cluster); each rank runs 'Threads' threads.
        mpi = self.numberOfMpi.get() if self._engineUsesMpi else 1
        self.runJob(Plugin.getProgram(), f"--threads {threads} {arguments} 2>&1", env=env,
                    numberOfMpi=max(1, mpi), numberOfThreads=1)

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
