"""Open the plugin's viewers (Analyze Results) in Scipion's Tk GUI on a private Xvfb display.

``python -m nonuniform.tests.gui_viewer PROJECT OUT_DIR`` opens, through the same call as the
GUI's *Analyze Results* (``Viewer.visualize``), the viewer of every run of the existing project
PROJECT that one of the plugin's viewers targets, saves a screenshot of its form as
``OUT_DIR/<run id>.png`` and prints ``<run id> <viewer class> <width> <height>`` per run.
Needs Xvfb, tkinter and the Scipion environment of the caller (e.g. the root conftest.py's).
"""

import os
import sys

from nonuniform.tests.gui_form import _start_xvfb


def capture_viewers(project_name, out_dir):
    """Screenshots of the viewer forms of ``project_name``'s runs: [(run id, viewer, w, h)]."""
    xvfb, display = _start_xvfb()
    os.environ["DISPLAY"] = display
    try:
        from PIL import ImageGrab
        import pyworkflow.gui.project  # noqa: F401 (imported first: pyworkflow.gui.form has an import cycle)
        from pyworkflow.gui.form import FormWindow
        from pyworkflow.plugin import Domain
        from pyworkflow.project import Manager
        from pyworkflow.viewer import DESKTOP_TKINTER

        project = Manager().loadProject(project_name)
        shown = []
        show = FormWindow.show

        def show_and_grab(window, *args, **kwargs):
            """FormWindow.show, with a screenshot taken once Tk has drawn the window."""
            def grab():
                root = window.root
                root.update()
                x, y, w, h = root.winfo_rootx(), root.winfo_rooty(), root.winfo_width(), root.winfo_height()
                ImageGrab.grab(bbox=(x, y, x + w, y + h), xdisplay=display).save(shown[-1][0])
                shown[-1][1:] = [w, h]
                root.quit()

            window.root.after(2000, grab)
            show(window, *args, **kwargs)
            window.root.destroy()

        FormWindow.show = show_and_grab
        results = []
        for prot in project.getRuns():
            viewers = [v for v in Domain.findViewers(prot, DESKTOP_TKINTER) if v.__module__.startswith("nonuniform.")]
            if not viewers:
                continue
            shown.append([os.path.join(out_dir, f"{prot.getObjId()}.png"), 0, 0])
            viewers[0](project=project, protocol=prot).visualize(prot)  # what Analyze Results does
            results.append((prot.getObjId(), viewers[0].__name__, *shown[-1][1:]))
        return results
    finally:
        xvfb.terminate()
        xvfb.wait(timeout=10)


if __name__ == "__main__":
    for row in capture_viewers(sys.argv[1], os.path.abspath(sys.argv[2])):
        print(*row)
