"""The comparison protocol and its viewer on the shared project's NU and uniform refinements."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("pwem", reason="scipion-em not installed")
pytest.importorskip("relion", reason="scipion-em-relion not installed (pip install -e '.[test]')")

from matplotlib.patches import StepPatch  # noqa: E402
from pwem.objects import SetOfFSCs  # noqa: E402
from pyworkflow.plugin import Domain  # noqa: E402

from nonuniform.engine import fsc  # noqa: E402
from nonuniform.protocols import ProtNonUniformCompareRefinements  # noqa: E402
from nonuniform.tests import scipion_results  # noqa: E402
from nonuniform.viewers import NonUniformCompareViewer  # noqa: E402

pytestmark = pytest.mark.scipion


class TestNonUniformCompareRefinements(scipion_results.SharedProjectTest):
    """NU, uniform and NU again (a run compared with itself), one mask, the truth as ground truth."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        prot = cls.newProtocol(ProtNonUniformCompareRefinements)
        for run in (cls.runs.nu, cls.runs.uniform, cls.runs.nu):
            prot.inputRefinements.append(run)
        prot.inputMask.set(cls.runs.mask)
        prot.groundTruth.set(cls.runs.truth)
        cls.launchProtocol(prot)
        cls.compare = prot
        with open(prot._getExtraPath("comparison.json")) as f:
            cls.table = json.load(f)

    def viewer(self):
        viewer = NonUniformCompareViewer(project=self.proj, protocol=self.compare)
        viewer.setProtocol(self.compare)
        return viewer

    def render(self, name):
        path = self.compare._getExtraPath(f"view_{name}.png")
        fig = self.viewer().savePng(name, path)
        self.assertTrue(os.path.getsize(path) > 0)
        return fig

    def test_same_resolutions_as_the_runs_report_with_the_same_mask(self):
        # The refinements ran with this mask, so the comparison measures what they reported: the
        # same half-maps, mask and (for runs of this plugin) random phases give the same numbers.
        runs = {r["label"]: r for r in self.table["runs"]}
        self.assertEqual(list(runs), ["NU", "uniform", "NU [3]"])
        for label, prot in (("NU", self.runs.nu), ("uniform", self.runs.uniform), ("NU [3]", self.runs.nu)):
            _, meta = fsc.read_fsc_csv(prot._getExtraPath("run", "fsc.csv"))
            # The engine writes resolutions with 4 decimals.
            self.assertAlmostEqual(runs[label]["resolution_corrected_ang"], prot.finalResolution.get(), places=9)
            for kind in ("masked", "unmasked", "corrected"):
                self.assertAlmostEqual(runs[label][f"resolution_{kind}_ang"],
                                       float(meta[f"resolution_fsc_{kind}_ang"]), delta=5e-5)
            # Against the truth (the FSC = 0.5 of a 2-iteration run from a 20 Å start): finer
            # than the start and not beyond Nyquist (measured ~6.8 Å).
            self.assertTrue(2 * scipion_results.APIX <= runs[label]["resolution_truth_ang"] < 20.0)
        self.assertEqual(runs["NU"]["particles"], scipion_results.N_PARTICLES)

    def test_summary_prints_the_table(self):
        summary = "\n".join(self.compare.summary())
        self.assertIn("run | particles | corrected FSC | masked FSC | unmasked FSC | vs ground truth", summary)
        for run in self.table["runs"]:
            self.assertIn(f"{run['label']} | {run['particles']} | {run['resolution_corrected_ang']:.2f} Å | "
                          f"{run['resolution_masked_ang']:.2f} Å | {run['resolution_unmasked_ang']:.2f} Å | "
                          f"{run['resolution_truth_ang']:.2f} Å", summary)

    def test_output_fsc_set(self):
        self.assertIsInstance(self.compare.outputFSC, SetOfFSCs)
        curves = {f.getObjLabel(): f.clone() for f in self.compare.outputFSC}
        self.assertEqual(list(curves), ["NU", "uniform", "NU [3]"])
        x, y = curves["uniform"].getData()
        self.assertAlmostEqual(fsc.resolution_at(y, scipion_results.BOX, scipion_results.APIX),
                               self.runs.uniform.finalResolution.get(), delta=1e-4)  # CSV: 8 digits

    def test_fsc_view_overlays_every_run(self):
        fig = self.render("showFsc")
        labels = [line.get_label() for line in fig.axes[0].get_lines()]
        for run in self.table["runs"]:
            self.assertIn(f"{run['label']}: {run['resolution_corrected_ang']:.2f} Å", labels)

    def test_truth_and_table_views(self):
        fig = self.render("showTruth")
        labels = [line.get_label() for line in fig.axes[0].get_lines()]
        self.assertIn("FSC = 0.5 (resolution threshold)", labels)
        self.assertIn(f"NU: {self.table['runs'][0]['resolution_truth_ang']:.2f} Å", labels)
        fig = self.render("showTable")
        cells = fig.axes[0].tables[0].get_celld()
        self.assertEqual(cells[(1, 0)].get_text().get_text(), "NU")
        self.assertEqual(cells[(2, 2)].get_text().get_text(), f"{self.runs.uniform.finalResolution.get():.2f} Å")

    def test_pose_changes_of_a_run_with_itself_are_zero_centred(self):
        pairs = {(p["first"], p["second"]): p for p in self.table["pairs"]}
        self.assertEqual(set(pairs), {("NU", "uniform"), ("NU", "NU [3]"), ("uniform", "NU [3]")})
        fig = self.render("showPoseChanges")
        angle = {p.get_label().split(" (")[0]: p for p in fig.axes[0].patches if isinstance(p, StepPatch)}
        shift = {p.get_label().split(" (")[0]: p for p in fig.axes[1].patches if isinstance(p, StepPatch)}
        n = scipion_results.N_PARTICLES
        values, edges, _ = angle["NU → NU [3]"].get_data()
        self.assertEqual(values[0], n)  # every particle in the first bin, [0°, edge)
        values, edges, _ = shift["NU → NU [3]"].get_data()
        centre = np.flatnonzero((edges[:-1] < 0) & (edges[1:] > 0))
        self.assertEqual(len(centre), 1)
        self.assertAlmostEqual(edges[centre[0]], -edges[centre[0] + 1])  # a bin centred on 0
        self.assertEqual(values[centre[0]], 2 * n)  # x and y of every particle
        # Two different refinements: the particles do move (not all in the zero bin).
        values, _, _ = angle["NU → uniform"].get_data()
        self.assertEqual(values.sum(), n)
        self.assertLess(values[0], n)
        self.assertGreater(pairs[("NU", "uniform")]["median_angle_deg"], 0)

    def test_viewer_is_found_and_protocol_is_in_the_menu(self):
        import pwem
        from pyworkflow.gui.project.viewprotocols_extra import ProtocolTreeConfig

        self.assertEqual(Domain.findViewers(self.compare, "tkinter")[0], NonUniformCompareViewer)
        tree = ProtocolTreeConfig.load(pwem.Domain, os.path.join(self.runs.data, "no-base.conf"))["Protocols SPA"]
        places = []

        def walk(node, path):
            for child in node.childs:
                if child.value == "ProtNonUniformCompareRefinements":
                    places.append("/".join(path))
                walk(child, path + [child.text])

        walk(tree, [])
        self.assertEqual(places, ["3D/Analysis"])

    def test_fewer_than_two_refinements_or_other_box_are_refused(self):
        prot = self.newProtocol(ProtNonUniformCompareRefinements)
        prot.inputRefinements.append(self.runs.nu)
        prot.inputMask.set(self.runs.mask)
        self.assertIn("at least two refinements", prot.validate()[0])
        prot.inputRefinements.append(self.runs.localFilter)  # not a refinement: no half-maps output
        self.assertTrue(any("no output volume with two half-maps" in e for e in prot.validate()))
        prot = self.newProtocol(ProtNonUniformCompareRefinements, symmetryGroup="X3")
        prot.inputRefinements.append(self.runs.nu)
        prot.inputRefinements.append(self.runs.uniform)
        prot.inputMask.set(self.runs.mask)
        self.assertTrue(any(e.startswith("Symmetry:") and "X3" in e for e in prot.validate()), prot.validate())


@pytest.mark.parametrize("group", ["C4", "D2", "O"])
def test_pose_change_ignores_symmetry_equivalent_orientations(group):
    """A pose A and A R (R a symmetry operator of the map) give the same image: no change."""
    from nonuniform import convert
    from nonuniform.engine import geometry, symmetry

    rng = np.random.default_rng(0)
    a = geometry.random_rotations(50, rng)
    b = a @ symmetry.symmetry_matrices(group)[rng.integers(1, symmetry.symmetry_order(group), 50)]

    def poses(mats):
        return convert.Poses(np.arange(50), *geometry.matrix_to_euler(mats), np.zeros((50, 2)))

    _, plain, _ = convert.poseChanges(poses(a), poses(b))
    _, sym, _ = convert.poseChanges(poses(a), poses(b), group)
    # Through Euler angles and back (float64): ~1e-6° from arccos near 0.
    assert sym.max() < 1e-4
    # Without the group the operators count as real changes: their angles are 90° or more here.
    assert plain.min() > 89.0
