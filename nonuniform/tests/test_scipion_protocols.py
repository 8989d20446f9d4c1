"""The plugin's protocols in a real, headless Scipion project (environment: the root conftest.py).

Particles simulated by ``nonuniform simulate`` (with CTF) and a start model enter through Scipion's
own import protocols (the particles through the RELION STAR import of scipion-em-relion, a test
dependency), then the refinement runs in non-uniform and uniform mode, the local filter on its
half-maps, RELION's post-processing on our refinement, and a stopped run is continued.
"""

import json
import os
import shutil
import time

import numpy as np
import pytest

pytest.importorskip("pwem", reason="scipion-em not installed")
pytest.importorskip("relion", reason="scipion-em-relion not installed (pip install -e '.[test]')")

from pwem.objects import FSC, SetOfFSCs, SetOfParticles, Volume, VolumeMask  # noqa: E402
from pwem.protocols import ProtImportMask, ProtImportParticles, ProtImportVolumes, ProtRefine3D  # noqa: E402
from pyworkflow.plugin import Domain  # noqa: E402
from pyworkflow.protocol import MODE_RESUME  # noqa: E402
from pyworkflow.tests import BaseTest, setupTestProject  # noqa: E402

from nonuniform import convert  # noqa: E402
from nonuniform.engine import cli, geometry, io, star  # noqa: E402
from nonuniform.protocols import ProtNonUniformLocalFilter, ProtNonUniformRefine3D  # noqa: E402

pytestmark = pytest.mark.scipion

BOX, APIX, N_PARTICLES = 32, 3.0, 240


def write_map(path, vol):
    io.write_mrc(path, np.ascontiguousarray(vol, dtype=np.float32), APIX)
    return path


class TestNonUniformProtocols(BaseTest):
    """One project: imports, two refinements (NU and uniform), then everything that reads them."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        data = os.path.abspath(os.path.join(cls.proj.getPath(), "simulated"))
        # 240 particles, box 32 at 3 Å/px, SNR 1: two iterations take ~10 s per refinement here.
        assert cli.main(["simulate", "--out", data, "--n-particles", str(N_PARTICLES), "--box", str(BOX),
                         "--pixel-size", str(APIX), "--snr", "1", "--seed", "1"]) == 0
        truth, _ = io.read_mrc(os.path.join(data, "truth.mrc"))
        mask = (truth > 0.1 * truth.max()).astype(np.float32)
        write_map(os.path.join(data, "mask.mrc"), mask)
        write_map(os.path.join(data, "wrong_box.mrc"), np.zeros((40, 40, 40)) + truth.mean())
        cls.data = data
        cls.particles = cls.importParticles(os.path.join(data, "particles.star"))
        cls.start = cls.importVolume(os.path.join(data, "truth.mrc"))
        cls.mask = cls.runProt(ProtImportMask, maskPath=os.path.join(data, "mask.mrc"),
                               samplingRate=APIX).outputMask
        # The start is the truth low-passed to 20 Å by the engine (3.9 resolution elements across
        # the 77 Å particle; 30 Å would leave 2.6 and a warning).
        common = dict(maxIterations=2, refine_res_init=20.0, numberOfThreads=2)
        cls.nu = cls.runRefine(objLabel="NU", **common)
        cls.uniform = cls.runRefine(objLabel="uniform", doNonUniform=False, **common)

    # -- helpers ------------------------------------------------------------------------------

    @classmethod
    def runProt(cls, protClass, wait=True, **kwargs):
        prot = cls.newProtocol(protClass, **kwargs)
        cls.launchProtocol(prot, wait=wait)
        return prot

    @classmethod
    def importParticles(cls, starFile):
        return cls.runProt(ProtImportParticles, importFrom=ProtImportParticles.IMPORT_FROM_RELION,
                           starFile=starFile, samplingRate=APIX, magnification=50000, voltage=300,
                           sphericalAberration=2.7, amplitudeContrast=0.1).outputParticles

    @classmethod
    def importVolume(cls, path):
        return cls.runProt(ProtImportVolumes, filesPath=path, samplingRate=APIX).outputVolume

    @classmethod
    def newRefine(cls, particles=None, volume=None, **kwargs):
        prot = cls.newProtocol(ProtNonUniformRefine3D, **kwargs)
        prot.inputParticles.set(particles or cls.particles)
        prot.referenceVolume.set(volume or cls.start)
        return prot

    @classmethod
    def runRefine(cls, **kwargs):
        prot = cls.newRefine(**kwargs)
        cls.launchProtocol(prot)
        return prot

    def assertMap(self, vol, path_end, cls=Volume):
        self.assertIsInstance(vol, cls)
        self.assertEqual(vol.getDim(), (BOX, BOX, BOX))
        self.assertAlmostEqual(vol.getSamplingRate(), APIX)
        self.assertTrue(vol.getFileName().endswith(path_end), vol.getFileName())
        self.assertTrue(os.path.exists(vol.getFileName()))

    # -- refinement outputs -------------------------------------------------------------------

    def test_nonuniform_refinement_outputs(self):
        prot = self.nu
        self.assertIsInstance(prot, ProtRefine3D)  # what RELION post-process / SIDESPLITTER select
        run = prot._getExtraPath("run")
        self.assertMap(prot.outputVolume, "run/map.mrc")
        halves = prot.outputVolume.getHalfMaps(asList=True)
        self.assertEqual([os.path.basename(h) for h in halves], ["half1.mrc", "half2.mrc"])
        self.assertTrue(all(os.path.exists(h) for h in halves))
        self.assertMap(prot.outputMask, "run/mask.mrc", VolumeMask)
        self.assertMap(prot.outputVolumeSharpened, "run/map_sharp.mrc")
        self.assertMap(prot.outputVolumeNonUniform, "run/map_nu.mrc")
        for h in (1, 2):
            self.assertMap(getattr(prot, f"outputCutoffHalf{h}"), f"run/cutoff_half{h}.mrc")
        # Gold-standard FSC: four labelled curves, x in 1/Å up to Nyquist; the corrected one gives
        # the resolution the engine reported (the 0.143 crossing, to the 0.01 Å the engine rounds).
        self.assertIsInstance(prot.outputFSC, SetOfFSCs)
        fscs = {f.getObjLabel(): f.clone() for f in prot.outputFSC}
        self.assertEqual(list(fscs), list(convert.FSC_LABELS.values()))
        x, y = fscs["Corrected (phase-randomization)"].getData()
        self.assertAlmostEqual(x[-1], 1 / (2 * APIX), places=6)
        self.assertAlmostEqual(y[0], 1.0, places=3)
        with open(os.path.join(run, "summary.json")) as f:
            summary = json.load(f)
        self.assertEqual(summary["mode"], "nonuniform")
        self.assertAlmostEqual(prot.finalResolution.get(), summary["resolution_ang"])
        self.assertEqual(prot.iterationsDone.get(), 2)
        # The 240 noisy particles of a 96 Å box reach better than 15 Å in two iterations from a 20 Å
        # start (measured ~8 Å); a refinement that failed to align stays at the start's 20 Å or worse.
        self.assertLess(prot.finalResolution.get(), 15.0)
        self.assertGreaterEqual(prot.finalResolution.get(), 2 * APIX)  # Nyquist
        self.assertIn(f"{prot.finalResolution.get():.2f} Å", "\n".join(prot.summary()))
        self.assertIn("Punjani2020", prot._methods()[0])
        # The form's default filter choice is the engine's (risk-wiener), and it reaches the run.
        self.assertIn("--nu-objective risk-wiener", prot._engineArguments())
        with open(os.path.join(run, "config.json")) as f:
            self.assertEqual(json.load(f)["nu_objective"], "risk-wiener")

    def test_refined_particles_carry_the_engine_poses(self):
        parts = self.nu.outputParticles
        self.assertIsInstance(parts, SetOfParticles)
        self.assertEqual(parts.getSize(), N_PARTICLES)
        self.assertTrue(parts.hasAlignmentProj() and parts.hasCTF())
        self.assertAlmostEqual(parts.getSamplingRate(), APIX)
        table = star.read_star(self.nu._getExtraPath("run", "particles.star"))["particles"]
        row = {int(i): k for k, i in enumerate(table["rlnImageId"])}
        for p in parts:
            self.assertTrue(p.isEnabled())
            k = row[p.getObjId()]
            rot, tilt, psi, ox, oy = convert.geometryFromMatrix(p.getTransform().getMatrix())
            a = geometry.euler_to_matrix(table["rlnAngleRot"][k], table["rlnAngleTilt"][k], table["rlnAnglePsi"][k])
            # STAR keeps 6 decimals: the same rotation to ~1e-5°, the same origin to 1e-5 px.
            self.assertLess(geometry.angular_distance_deg(a, geometry.euler_to_matrix(rot, tilt, psi)), 1e-3)
            self.assertAlmostEqual(ox * APIX, table["rlnOriginXAngst"][k], places=4)
            self.assertEqual(p._rlnRandomSubset.get(), int(table["rlnRandomSubset"][k]))
            self.assertGreater(p._rlnMaxValueProbDistribution.get(), 0)
        # The simulation's half-sets (rlnRandomSubset, through the RELION import) were kept.
        inputSubsets = {p.getObjId(): p._rlnRandomSubset.get() for p in self.particles}
        self.assertEqual({p.getObjId(): p._rlnRandomSubset.get() for p in parts}, inputSubsets)

    def test_uniform_refinement_is_the_baseline(self):
        prot = self.uniform
        self.assertMap(prot.outputVolume, "run/map.mrc")
        self.assertEqual(len(prot.outputVolume.getHalfMaps(asList=True)), 2)
        for name in ("outputVolumeNonUniform", "outputCutoffHalf1", "outputCutoffHalf2"):
            self.assertFalse(prot.hasAttribute(name), name)
        with open(prot._getExtraPath("run", "summary.json")) as f:
            self.assertEqual(json.load(f)["mode"], "uniform")
        self.assertIn("--mode uniform", prot._engineArguments())
        self.assertNotIn("--awf", prot._engineArguments())
        self.assertLess(prot.finalResolution.get(), 15.0)  # as for NU above
        self.assertIn("*uniform*", prot.summary()[0])

    def test_engine_log_reaches_the_run_log(self):
        with open(self.nu.getLogPaths()[0]) as f:
            log = f.read()
        self.assertIn("iteration 1:", log)
        self.assertIn("final resolution", log)

    # -- what reads a refinement --------------------------------------------------------------

    def test_local_filter_on_refinement_half_maps(self):
        prot = self.newProtocol(ProtNonUniformLocalFilter, numberOfThreads=2)
        prot.inputVolume.set(self.nu.outputVolume)
        prot.inputMask.set(self.mask)
        self.launchProtocol(prot)
        self.assertMap(prot.outputVolume, "filter/filtered.mrc")
        self.assertMap(prot.outputCutoffMap, "filter/cutoff_ang.mrc")
        self.assertMap(prot.outputLocalResolution, "locres/locres.mrc")
        cutoff, _ = io.read_mrc(prot.outputCutoffMap.getFileName())
        inside = cutoff[io.read_mrc(self.mask.getFileName())[0] > 0.5]
        # Cutoffs are resolutions between Nyquist (6 Å) and the box (96 Å); inside the particle the
        # median lies near the refinement's resolution, within a factor 2.
        self.assertTrue(np.all((cutoff >= 2 * APIX - 1e-3) & (cutoff <= BOX * APIX + 1e-3)))
        self.assertLess(abs(np.log2(np.median(inside) / self.nu.finalResolution.get())), 1.0)
        self.assertAlmostEqual(prot.medianCutoff.get(), float(np.median(inside)), places=3)
        self.assertIn("median cutoff", prot.summary()[0])
        with open(prot._getExtraPath("filter", "filter.json")) as f:
            self.assertEqual(json.load(f)["objective"], "risk-wiener")

    def test_relion_postprocess_takes_our_refinement(self):
        postprocess = Domain.findClass("ProtRelionPostprocess")
        prot = self.newProtocol(postprocess, doAutoBfactor=False, bfactor=-50)
        prot.protRefine.set(self.nu)
        prot.solventMask.set(self.nu.outputMask)
        self.assertEqual(prot.validate(), [])
        if not shutil.which("relion_postprocess"):
            pytest.skip("relion_postprocess not on PATH (apt-get install relion)")
        self.launchProtocol(prot)
        self.assertTrue(os.path.exists(prot.outputVolume.getFileName()))
        out, _ = io.read_mrc(prot.outputVolume.getFileName())
        self.assertEqual(out.shape, (BOX,) * 3)
        self.assertTrue(np.isfinite(out).all() and out.std() > 0)

    # -- input checks (what the GUI shows before anything runs) ---------------------------------

    def assertRefused(self, prot, *fragments):
        errors = prot.validate()
        text = "\n".join(errors)
        for fragment in fragments:
            self.assertIn(fragment, text)
        self.assertFalse(os.path.exists(prot._getExtraPath()))  # never launched

    def test_particles_without_ctf_are_refused(self):
        noCtf = self.runProt(ProtImportParticles, importFrom=ProtImportParticles.IMPORT_FROM_FILES,
                             filesPath=self.data, filesPattern="particles.mrcs", samplingRate=APIX).outputParticles
        self.assertFalse(noCtf.hasCTF())
        self.assertRefused(self.newRefine(particles=noCtf), "no CTF information")

    def test_reference_of_another_box_is_refused(self):
        wrong = self.importVolume(os.path.join(self.data, "wrong_box.mrc"))
        self.assertRefused(self.newRefine(volume=wrong), "initial volume is 40 px wide, the particles 32 px",
                           "resize it")

    def test_mask_of_another_size_is_refused(self):
        wrong = self.runProt(ProtImportMask, maskPath=os.path.join(self.data, "wrong_box.mrc"),
                             samplingRate=APIX).outputMask
        prot = self.newRefine()
        prot.refMask.set(wrong)
        self.assertRefused(prot, "solvent mask is 40 px wide")

    def test_gpu_request_without_a_gpu_and_mpi_are_refused(self):
        from nonuniform.engine.backend import gpu_problem

        if gpu_problem(0) is None:
            self.skipTest("this machine has a usable GPU")
        self.assertRefused(self.newRefine(useGpu=True), "GPU execution was requested", gpu_problem(0),
                           "Set 'Use GPU' to No")
        self.assertRefused(self.newRefine(useGpu=True, gpuList="0 1"), "give one CUDA device id")
        localFilter = self.newProtocol(ProtNonUniformLocalFilter, numberOfMpi=2)
        localFilter.inputVolume.set(self.nu.outputVolume)
        self.assertRefused(localFilter, "runs in one process")

    def test_gpu_id_reaches_the_engine_command(self):
        for useGpu, expected in ((True, " --gpu 1 "), (False, None)):
            prot = self.newRefine(useGpu=useGpu, gpuList="1")
            calls = []
            prot.runJob = lambda program, args, **kw: calls.append(args)
            prot._runEngine("refine --out x")
            self.assertEqual(len(calls), 1)
            if expected:
                self.assertIn(expected, calls[0] + " ")
            else:
                self.assertNotIn("--gpu", calls[0])

    def test_3d_alignment_is_refused(self):
        """Particles carrying subtomogram-style ALIGN_3D transforms (imported from a Scipion sqlite)."""
        path = os.path.join(self.data, "aligned3d.sqlite")
        aligned = SetOfParticles(filename=path)
        aligned.copyInfo(self.particles)
        aligned.setAlignment3D()
        for p in self.particles.iterItems(limit=120):  # enough for the particle-count check
            aligned.append(p.clone())
        aligned.write()
        aligned.close()
        imported = self.runProt(ProtImportParticles, importFrom=ProtImportParticles.IMPORT_FROM_SCIPION,
                                sqliteFile=path, samplingRate=APIX, magnification=50000, voltage=300,
                                sphericalAberration=2.7, amplitudeContrast=0.1).outputParticles
        self.assertEqual(imported.getAlignment(), "3D")
        self.assertRefused(self.newRefine(particles=imported), "3D (subtomogram) alignment")

    def test_bad_symmetry_is_refused(self):
        self.assertRefused(self.newRefine(symmetryGroup="X3"), "Symmetry:", "X3")

    def test_coarse_start_is_warned(self):
        self.assertIn("resolution elements", self.newRefine(refine_res_init=30.0)._warnings()[0])
        self.assertEqual(self.newRefine(refine_res_init=20.0)._warnings(), [])

    def test_valid_form_passes(self):
        self.assertEqual(self.newRefine().validate(), [])

    # -- MPI ------------------------------------------------------------------------------------

    def test_mpi_runs_through_the_hosts_parallel_command(self):
        """'MPI' = 2 launches the engine with hosts.conf's PARALLEL_COMMAND (mpirun here, standing in
        for a queue's launcher, as in README's cluster recipe): two ranks, the same result as the
        one-process run with the same parameters."""
        prot = self.runRefine(objLabel="NU, 2 MPI", maxIterations=2, refine_res_init=20.0, numberOfThreads=1,
                              numberOfMpi=2)
        with open(prot.getLogPaths()[0]) as f:
            log = f.read()
        self.assertIn("mpirun -np 2", log)
        self.assertIn("2 MPI ranks share each half-set's batches", log)
        self.assertEqual(prot.finalResolution.get(), self.nu.finalResolution.get())
        for name in ("half1.mrc", "half2.mrc"):
            a = io.read_mrc(prot._getExtraPath("run", name))[0]
            b = io.read_mrc(self.nu._getExtraPath("run", name))[0]
            self.assertGreater(np.corrcoef(a.ravel(), b.ravel())[0, 1], 0.9999)

    # -- Continue -------------------------------------------------------------------------------

    def test_continue_resumes_from_the_last_checkpoint(self):
        prot = self.newRefine(objLabel="stopped", maxIterations=5, refine_num_final_iterations=4,
                              refine_res_init=20.0, numberOfThreads=2)
        self.proj.launchProtocol(prot, wait=False)
        run = prot._getExtraPath("run")
        t0 = time.time()
        while not convert.finishedIterations(run):
            self.assertLess(time.time() - t0, 300, "no checkpoint after 5 minutes")
            time.sleep(0.2)
        self.proj._updateProtocol(prot)
        self.proj.stopProtocol(prot)
        done = convert.finishedIterations(run)[-1]
        self.assertEqual(convert.finishedIterations(run), list(range(1, done + 1)))
        self.assertLess(done, 5, "the run finished before it could be stopped")
        self.assertFalse(os.path.exists(prot._getExtraPath("run", "summary.json")))
        self.assertIn("running or stopped", "\n".join(prot.summary()))
        # Scipion's Continue (the default run mode): the finished conversion step is skipped and
        # the engine resumes after the newest checkpoint instead of starting over.
        prot.runMode.set(MODE_RESUME)
        self.launchProtocol(prot)
        with open(prot.getLogPaths()[0]) as f:
            log = f.read()
        self.assertIn(f"resuming after iteration {done}", log)
        self.assertEqual(log.count("particles written to"), 1)
        with open(prot._getExtraPath("run", "summary.json")) as f:
            history = json.load(f)["history"]
        self.assertEqual([h["iteration"] for h in history], list(range(1, 6)))
        self.assertEqual(prot.iterationsDone.get(), 5)

    # -- discovery ------------------------------------------------------------------------------

    def test_protocols_are_discovered_and_placed_in_the_menu(self):
        import pwem
        from pyworkflow.gui.project.viewprotocols_extra import ProtocolTreeConfig

        protocols = pwem.Domain.getProtocols()
        self.assertIs(protocols["ProtNonUniformRefine3D"], ProtNonUniformRefine3D)
        self.assertIs(protocols["ProtNonUniformLocalFilter"], ProtNonUniformLocalFilter)
        tree = ProtocolTreeConfig.load(pwem.Domain, os.path.join(self.data, "no-base.conf"))["Protocols SPA"]
        places = set()

        def walk(node, path):
            for child in node.childs:
                if "NonUniform" in str(child.value):
                    places.add((child.value, "/".join(path)))
                walk(child, path + [child.text])

        walk(tree, [])
        self.assertEqual(places, {("ProtNonUniformRefine3D", "3D/Refine"),
                                  ("ProtNonUniformLocalFilter", "3D/Analysis/Resolution"),
                                  ("ProtNonUniformLocalFilter", "3D/Postprocess"),
                                  ("ProtNonUniformCompareRefinements", "3D/Analysis")})
        plugin = pwem.Domain.getPlugin("nonuniform")
        self.assertTrue(os.path.exists(os.path.join(os.path.dirname(plugin.__file__), plugin._logo)))
        # The Citations tab resolves every key through bibtex.py.
        citations = "\n".join(ProtNonUniformRefine3D().citations())
        for author in ("Punjani", "Scheres", "Chen"):
            self.assertIn(author, citations)
