"""The viewers of the refinement and the local filter, rendered headless from a real small project.

Every view is drawn by the viewer's own code (the figure a Scipion plot window would show), saved
as a PNG, and what it shows is checked against the files the engine wrote.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("pwem", reason="scipion-em not installed")
pytest.importorskip("relion", reason="scipion-em-relion not installed (pip install -e '.[test]')")

from matplotlib.collections import QuadMesh  # noqa: E402
from matplotlib.patches import StepPatch  # noqa: E402
from pyworkflow.plugin import Domain  # noqa: E402
from pyworkflow.viewer import MessageView  # noqa: E402

from nonuniform import convert  # noqa: E402
from nonuniform.engine import fsc, io, star  # noqa: E402
from nonuniform.protocols import ProtNonUniformLocalFilter, ProtNonUniformRefine3D  # noqa: E402
from nonuniform.tests import scipion_results  # noqa: E402
from nonuniform.viewers import NonUniformLocalFilterViewer, NonUniformRefineViewer, plots  # noqa: E402

pytestmark = pytest.mark.scipion

BOX, APIX = scipion_results.BOX, scipion_results.APIX


def images(fig):
    return [im for ax in fig.axes for im in ax.get_images()]


class TestNonUniformViewers(scipion_results.SharedProjectTest):
    """Views of the NU and uniform refinements and of the local filter of the shared project."""

    def viewer(self, cls, prot):
        viewer = cls(project=self.proj, protocol=prot)
        viewer.setProtocol(prot)  # what the GUI does before showing the form: defines the params
        return viewer

    def render(self, viewer, name):
        """The view ``name`` saved as a PNG in the run's extra/viewer folder; its figure."""
        path = viewer.protocol._getExtraPath(f"view_{name}.png")
        fig = viewer.savePng(name, path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        return fig

    def assertScaleSpans(self, low, high, lowest, highest):
        """The colour scale [low, high] spans [lowest, highest], rounded outwards to 0.01 Å."""
        self.assertTrue(low <= lowest < low + 0.01 and high - 0.01 < highest <= high, (low, high, lowest, highest))

    def summary(self, prot):
        with open(prot._getExtraPath("run", "summary.json")) as f:
            return json.load(f)

    # -- discovery ------------------------------------------------------------------------------

    def test_viewers_are_found_for_their_protocols(self):
        # Analyze Results asks the Domain for the viewers of the run (the instance).
        for prot, viewer in ((self.runs.nu, NonUniformRefineViewer), (self.runs.uniform, NonUniformRefineViewer),
                             (self.runs.localFilter, NonUniformLocalFilterViewer)):
            self.assertEqual(Domain.findViewers(prot, "tkinter")[0], viewer)

    def test_viewers_of_runs_without_results_still_open(self):
        """Analyze Results on a run that has not written its maps yet: the form opens."""
        refine = self.newProtocol(ProtNonUniformRefine3D)
        refine.inputParticles.set(self.runs.particles)
        self.assertFalse(hasattr(self.viewer(NonUniformRefineViewer, refine), "showCutoffSlices"))
        localFilter = self.newProtocol(ProtNonUniformLocalFilter)
        viewer = self.viewer(NonUniformLocalFilterViewer, localFilter)
        self.assertEqual((viewer.lowest.get(), viewer.highest.get()), (0.0, 0.0))

    # -- refinement: resolution ---------------------------------------------------------------

    def test_final_fsc_crosses_the_threshold_at_the_reported_resolution(self):
        prot = self.runs.nu
        fig = self.render(self.viewer(NonUniformRefineViewer, prot), "showFsc")
        ax = fig.axes[0]
        lines = {line.get_label(): line for line in ax.get_lines()}
        reported = self.summary(prot)["resolution_ang"]
        corrected = lines[f"mask-corrected (reported): {reported:.2f} Å"]
        # The plotted curve crosses 0.143 where the engine said: the same crossing rule on the
        # plotted points (CSV keeps 8 significant digits, so the crossing agrees to ~1e-6 Å).
        x, y = corrected.get_data()
        self.assertAlmostEqual(fsc.resolution_at(y, BOX, APIX, 0.143), reported, delta=1e-4)
        self.assertAlmostEqual(x[-1], 1 / (2 * APIX), places=6)  # up to Nyquist, in 1/Å
        dots = [line for line in ax.get_lines()
                if line.get_marker() == "o" and line.get_color() == corrected.get_color()]
        # The dot sits at the resolution the engine wrote in fsc.csv (4 decimals: 1/Å to ~1e-6).
        self.assertAlmostEqual(dots[0].get_xdata()[0], 1 / reported, delta=1e-5)
        self.assertIn("FSC = 0.143 (resolution threshold)", lines)
        _, meta = fsc.read_fsc_csv(prot._getExtraPath("run", "fsc.csv"))
        self.assertIn(f"no mask: {float(meta['resolution_fsc_unmasked_ang']):.2f} Å", lines)
        self.assertIn(f"with the solvent mask: {float(meta['resolution_fsc_masked_ang']):.2f} Å", lines)
        self.assertEqual(fig.axes[0].child_axes[0].get_xlabel(), "resolution (Å)")

    def test_scipion_fsc_viewer_shows_the_output_fsc(self):
        import matplotlib.pyplot as plt

        prot = self.runs.nu
        before = set(plt.get_fignums())
        self.assertEqual(self.viewer(NonUniformRefineViewer, prot)._showFscScipion(), [])  # it shows itself
        new = [plt.figure(n) for n in set(plt.get_fignums()) - before]
        labels = [line.get_label() for fig in new for ax in fig.axes for line in ax.get_lines()]
        for f in prot.outputFSC:
            self.assertTrue(any(label.startswith(f.getObjLabel() + " (") for label in labels),
                            (f.getObjLabel(), labels))
        for fig in new:
            plt.close(fig)

    def test_fsc_of_every_iteration(self):
        prot = self.runs.nu
        fig = self.render(self.viewer(NonUniformRefineViewer, prot), "showFscIterations")
        history = self.summary(prot)["history"]
        labels = [line.get_label() for line in fig.axes[0].get_lines() if line.get_label().startswith("iteration")]
        self.assertEqual(labels, [f"iteration {h['iteration']}: {h['resolution_ang']:.2f} Å" for h in history])

    def test_resolution_and_pose_change_per_iteration(self):
        prot = self.runs.nu
        fig = self.render(self.viewer(NonUniformRefineViewer, prot), "showProgress")
        history = self.summary(prot)["history"]
        res = {line.get_label(): line for line in fig.axes[0].get_lines()}
        change = {line.get_label(): line for line in fig.axes[1].get_lines()}
        np.testing.assert_array_equal(res["gold-standard resolution (FSC 0.143, mask-corrected)"].get_ydata(),
                                      [h["resolution_ang"] for h in history])
        mean = change["mean change of particle orientation"].get_ydata()
        self.assertTrue(np.isnan(mean[0]))  # no previous poses at iteration 1
        self.assertEqual(mean[1], history[1]["mean_pose_change_deg"])

    # -- refinement: particles ----------------------------------------------------------------

    def test_angular_distribution_counts_every_particle(self):
        prot = self.runs.nu
        viewer = self.viewer(NonUniformRefineViewer, prot)
        fig = self.render(viewer, "showAngularDistribution")
        mesh = [c for ax in fig.axes for c in ax.collections if isinstance(c, QuadMesh)][0]
        self.assertEqual(int(mesh.get_array().sum()), prot.outputParticles.getSize())
        # The ChimeraX glyphs: one cylinder per populated direction bin; without ChimeraX the view
        # says where the script is.
        views = viewer._showAngularDistributionChimera()
        self.assertIsInstance(views[0], MessageView)
        with open(viewer._viewerPath("angular_distribution.bild")) as f:
            cylinders = sum(line.startswith(".cylinder") for line in f)
        self.assertEqual(cylinders, int(np.count_nonzero(mesh.get_array())))
        with open(viewer._viewerPath("angular_distribution.cxc")) as f:
            script = f.read()
        self.assertIn(os.path.abspath(prot._getExtraPath("run", "map.mrc")), script)
        self.assertIn("angular_distribution.bild", script)

    def test_pose_change_from_the_input_poses(self):
        prot = self.runs.nu
        fig = self.render(self.viewer(NonUniformRefineViewer, prot), "showPoseChanges")
        angle, shift = (ax.patches[0] for ax in fig.axes[:2])
        self.assertIsInstance(angle, StepPatch)
        n = prot.outputParticles.getSize()
        self.assertEqual(int(angle.get_data().values.sum()), n)
        self.assertEqual(int(shift.get_data().values.sum()), 2 * n)  # x and y of every particle
        # The input poses are the simulation's true ones and the start is the truth low-passed, so
        # the refined poses stay near them: most particles move by less than 30° (median measured
        # ~5°); a pose change computed against the wrong particles would be spread to 180°.
        values, edges, _ = angle.get_data()
        self.assertGreater(values[edges[1:] <= 30].sum(), n / 2)

    def test_uniform_run_has_no_cutoff_views(self):
        viewer = self.viewer(NonUniformRefineViewer, self.runs.uniform)
        self.assertFalse(hasattr(viewer, "showCutoffSlices"))  # the form has no cutoff group
        self.assertIsInstance(viewer._showCutoffSlices()[0], MessageView)
        self.assertIsInstance(viewer._showCutoffChimera()[0], MessageView)
        self.render(viewer, "showFsc")
        self.assertNotIn("non-uniform filtered map", viewer.getParam("mapToShow").choices)

    # -- refinement: maps ---------------------------------------------------------------------

    def test_map_slices_are_the_central_slices(self):
        prot = self.runs.nu
        viewer = self.viewer(NonUniformRefineViewer, prot)
        fig = self.render(viewer, "showMapSlices")
        vol, _ = io.read_mrc(prot._getExtraPath("run", "map.mrc"))
        c = BOX // 2
        shown = [im.get_array() for im in images(fig)]
        for got, want in zip(shown, (vol[c], vol[:, c, :], vol[:, :, c])):
            np.testing.assert_array_equal(got, want)
        self.assertEqual(fig.axes[-1].get_ylabel(), "density (map units)")
        self.render(viewer, "showMap")  # no ChimeraX here: the same slices

    def test_cutoff_slices_colour_scale_spans_the_cutoff_maps(self):
        prot = self.runs.nu
        viewer = self.viewer(NonUniformRefineViewer, prot)
        inside = io.read_mrc(prot._getExtraPath("run", "mask.mrc"))[0] > 0.5
        cutoffs = [io.read_mrc(prot._getExtraPath("run", f"cutoff_half{h}.mrc"))[0][inside] for h in (1, 2)]
        low, high = viewer.lowest.get(), viewer.highest.get()  # the form's defaults
        self.assertScaleSpans(low, high, min(c.min() for c in cutoffs), max(c.max() for c in cutoffs))
        fig = self.render(viewer, "showCutoffSlices")
        shown = images(fig)
        self.assertEqual(len(shown), 6)  # two half-sets, three axes
        c = BOX // 2
        planes = (inside[c], inside[:, c, :], inside[:, :, c]) * 2
        for im, plane in zip(shown, planes):
            self.assertEqual((im.norm.vmin, im.norm.vmax), (low, high))
            np.testing.assert_array_equal(im.get_array().mask, ~plane)  # the solvent is left white
        self.assertEqual(fig.axes[-1].get_ylabel(), "cutoff resolution (Å)")
        # The ChimeraX script colours the final map by the half-set 1 cutoff on the same scale.
        self.assertIsInstance(viewer._showCutoffChimera()[0], MessageView)
        with open(viewer._viewerPath("map_colored_by_cutoff.cxc")) as f:
            script = f.read()
        self.assertIn(os.path.abspath(prot._getExtraPath("run", "cutoff_half1.mrc")), script)
        self.assertIn(f"palette {low:.2f},blue:", script)
        self.assertIn(f"{high:.2f},red", script)

    # -- local filter ---------------------------------------------------------------------------

    def test_local_filter_views(self):
        prot = self.runs.localFilter
        viewer = self.viewer(NonUniformLocalFilterViewer, prot)
        inside = io.read_mrc(self.runs.mask.getFileName())[0] > 0.5
        cutoff = io.read_mrc(prot._getExtraPath("filter", "cutoff_ang.mrc"))[0][inside]
        locres = io.read_mrc(prot._getExtraPath("locres", "locres.mrc"))[0][inside]
        # One colour scale for both maps (same Å, same colour), spanning both inside the mask.
        low, high = viewer.lowest.get(), viewer.highest.get()
        self.assertScaleSpans(low, high, min(cutoff.min(), locres.min()), max(cutoff.max(), locres.max()))
        c = BOX // 2
        for name, path in (("showCutoffSlices", ("filter", "cutoff_ang.mrc")),
                           ("showLocalResolutionSlices", ("locres", "locres.mrc"))):
            fig = self.render(viewer, name)
            z = images(fig)[0].get_array()
            for im in images(fig):
                self.assertEqual((im.norm.vmin, im.norm.vmax), (low, high))
            vol = io.read_mrc(prot._getExtraPath(*path))[0]
            np.testing.assert_array_equal(z.compressed(), vol[c][inside[c]])  # the map inside the mask
        fig = self.render(viewer, "showFilteredSlices")
        np.testing.assert_array_equal(images(fig)[0].get_array(),
                                      io.read_mrc(prot._getExtraPath("filter", "filtered.mrc"))[0][BOX // 2])
        # The histogram is the engine's (locres.json), bar for bar.
        with open(prot._getExtraPath("locres", "locres.json")) as f:
            histogram = json.load(f)["histogram"]
        fig = self.render(viewer, "showHistogram")
        heights = [bar.get_height() for bar in fig.axes[0].patches]
        self.assertEqual(heights, histogram["counts"])
        self.assertIsInstance(viewer._showChimera()[0], MessageView)
        with open(viewer._viewerPath("filtered_map_colored_by_locres.cxc")) as f:
            self.assertIn("color sample #1 map #2", f.read())

    def test_viewer_forms_open_in_the_gui(self):
        """Analyze Results on each run opens the viewer's form in Scipion's Tk GUI (private Xvfb)."""
        pytest.importorskip("tkinter", reason="tkinter missing (apt-get install python3-tk)")
        if not shutil.which("Xvfb"):
            pytest.skip("Xvfb missing (apt-get install xvfb)")
        from PIL import Image

        out = self.proj.getTmpPath()
        # A fresh interpreter: Tk and the display stay out of the test process.
        res = subprocess.run([sys.executable, "-m", "nonuniform.tests.gui_viewer", self.proj.getName(), out],
                             capture_output=True, text=True, timeout=300)
        self.assertEqual(res.returncode, 0, res.stderr[-3000:])
        rows = {int(r.split()[0]): r.split()[1:] for r in res.stdout.splitlines() if r[:1].isdigit()}
        expected = {self.runs.nu: "NonUniformRefineViewer", self.runs.uniform: "NonUniformRefineViewer",
                    self.runs.localFilter: "NonUniformLocalFilterViewer"}
        for prot, viewer in expected.items():
            name, width, height = rows[prot.getObjId()]
            self.assertEqual(name, viewer)
            img = np.asarray(Image.open(os.path.join(out, f"{prot.getObjId()}.png")).convert("L"), dtype=float)
            # A drawn form (groups, labels, eye buttons) has many grey levels; an unmapped window
            # grabs as one flat colour.
            self.assertEqual(img.shape, (int(height), int(width)))
            self.assertGreater(len(np.unique(img)), 50)

    def test_star_poses_and_scipion_poses_agree(self):
        """Poses from the engine's particles.star and from the output set are the same."""
        prot = self.runs.nu
        starFile = prot._getExtraPath("run", "particles.star")
        ids, angle, shift = convert.poseChanges(convert.posesFromStar(starFile),
                                                convert.posesFromSet(prot.outputParticles))
        self.assertEqual(len(ids), prot.outputParticles.getSize())
        self.assertEqual(len(ids), len(star.read_star(starFile)["particles"]["rlnImageId"]))
        # STAR keeps 6 decimals: the same rotation to ~1e-5° (the angle, an arccos, resolves
        # ~1e-3° near 0), the same shift to 1e-5 Å.
        self.assertLess(angle.max(), 1e-2)
        self.assertLess(np.abs(shift).max(), 1e-4)


def test_plot_functions_write_pngs_headless(tmp_path):
    """The plot functions need no Scipion object: arrays in, a PNG out."""
    rng = np.random.default_rng(0)
    rot, tilt = rng.uniform(-180, 180, 500), np.degrees(np.arccos(rng.uniform(-1, 1, 500)))
    fig = plots.plot_angular_distribution(rot, tilt, path_png=str(tmp_path / "angles.png"))
    self_counts = [c for c in fig.axes[0].collections if isinstance(c, QuadMesh)][0].get_array()
    assert int(self_counts.sum()) == 500
    freq = np.arange(17) / (32 * 3.0)
    curve = np.clip(1.2 - 10 * freq, -0.05, 1)
    plots.plot_fsc([plots.Curve("test", freq, curve, fsc.resolution_at(curve, 32, 3.0))],
                   path_png=str(tmp_path / "fsc.png"))
    for name in ("angles.png", "fsc.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"



def test_readme_shows_a_picture_of_every_view():
    """Each view of the three viewers has its picture in docs/, and README.rst shows them all."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "README.rst"), encoding="utf-8") as f:
        readme = f.read()
    shown = set(re.findall(r"image:: (docs/viewer_\w+\.png)", readme))
    on_disk = {f"docs/{name}" for name in os.listdir(os.path.join(root, "docs")) if name.startswith("viewer_")}
    assert shown == {name for name in on_disk if name.endswith(".png")}
    # One picture per plot of each viewer (the ChimeraX and Scipion-FSC views are not plots).
    assert len(shown) == 15
