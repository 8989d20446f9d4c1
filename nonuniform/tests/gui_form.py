"""Open a protocol's form in Scipion's Tk GUI on a private Xvfb display and save a screenshot.

``python -m nonuniform.tests.gui_form OUT.png [ProtocolClassName]`` (what ``test_scipion_gui.py``
runs, and how ``docs/protocol_form_refine.png`` is made). Needs Xvfb (apt ``xvfb``) and tkinter;
sets up a throw-away Scipion user folder when the environment has none.
"""

import os
import subprocess
import sys
import tempfile
import time


def _scipion_environment():
    """A headless Scipion environment (as the root conftest.py makes); False if one was set already.

    pyworkflow reads it when first imported, which importing this package already did: the caller
    must start a new interpreter after a True.
    """
    if os.environ.get("SCIPION_HOSTS"):
        return False
    root = tempfile.mkdtemp(prefix="nonuniform-gui-")
    hosts = os.path.join(root, "hosts.conf")
    with open(hosts, "w") as f:
        f.write("[localhost]\nPARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d --map-by node %_(COMMAND)s\n")
    os.environ.update(SCIPION_DOMAIN="pwem", SCIPION_USER_DATA=root, SCIPION_HOSTS=hosts,
                      SCIPION_PYTHON=sys.executable, SCIPION_TEST_NOSYNC="1")
    return True


def _start_xvfb():
    """Start Xvfb on the first free display number; return (process, display)."""
    for number in range(91, 120):
        if os.path.exists(f"/tmp/.X11-unix/X{number}") or os.path.exists(f"/tmp/.X{number}-lock"):
            continue
        proc = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1400x1000x24", "-nolisten", "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(50):
            if os.path.exists(f"/tmp/.X11-unix/X{number}"):
                return proc, f":{number}"
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        proc.kill()
    raise RuntimeError("could not start Xvfb")


def capture_form(out_png, class_name="ProtNonUniformRefine3D"):
    """Render the form of ``class_name`` and save it as ``out_png``; returns its (width, height)."""
    xvfb, display = _start_xvfb()
    os.environ["DISPLAY"] = display
    try:
        from PIL import ImageGrab
        import pyworkflow.gui.project  # noqa: F401 (imported first: pyworkflow.gui.form has an import cycle)
        from pyworkflow.gui.form import FormWindow
        from pyworkflow.plugin import Domain
        from pyworkflow.project import Manager

        manager = Manager()
        name = f"form_{class_name}_{os.getpid()}"
        project = manager.createProject(name)
        os.chdir(project.path)
        prot = project.newProtocol(Domain.findClass(class_name))
        window = FormWindow(f"Protocol Run: {class_name}", prot, lambda *args: None)
        window.adjustSize()
        root = window.root
        size = {}

        def grab():
            root.update()
            x, y, w, h = root.winfo_rootx(), root.winfo_rooty(), root.winfo_width(), root.winfo_height()
            ImageGrab.grab(bbox=(x, y, x + w, y + h), xdisplay=display).save(out_png)
            size["wh"] = (w, h)
            root.quit()

        root.after(2000, grab)  # let Tk map and draw the window
        window.show()  # maps the window (centred) and runs Tk's loop until grab() quits it
        root.destroy()
        return size["wh"]
    finally:
        xvfb.terminate()
        xvfb.wait(timeout=10)


if __name__ == "__main__":
    if _scipion_environment():  # run again with the environment in place before pyworkflow loads
        os.execv(sys.executable, [sys.executable, "-m", "nonuniform.tests.gui_form", *sys.argv[1:]])
    out = os.path.abspath(sys.argv[1])
    print(*capture_form(out, *sys.argv[2:3]))
