"""Headless Scipion environment for ``python -m pytest`` run from the repository root.

pyworkflow reads its configuration from environment variables once, when it is first imported,
and collecting ``nonuniform/tests`` imports ``nonuniform/__init__.py`` -> ``pwem`` ->
``pyworkflow``. So the variables are set here, in a conftest at the repository root (loaded
before the package), not in ``nonuniform/tests/conftest.py``. Every run gets a fresh temporary
Scipion user-data folder (projects, logs, hosts.conf); it is deleted at the end unless a
test failed after creating a Scipion project there (its path is then printed).

numba's CUDA simulator is switched on (``NUMBA_ENABLE_CUDASIM=1``, read when ``numba.cuda`` is first
imported) unless the variable is already set or the machine has an NVIDIA GPU (``nvidia-smi`` on
PATH or ``/dev/nvidia0``; numba.cuda and cupy must not be imported to find out, as that would fix
the setting): the CUDA kernels' tests (``tests/test_gpu_kernels.py``) then run on the CPU, thread
by thread. The simulator only replaces ``numba.cuda``; ``@njit`` CPU code is unaffected.
"""

import glob
import os
import shutil
import sys
import tempfile

SCIPION_TMP = tempfile.mkdtemp(prefix="nonuniform-scipion-")


def _scipion_environment(root):
    """Point Scipion at ``root`` and write the minimal hosts.conf a headless run needs."""
    hosts = os.path.join(root, "hosts.conf")
    with open(hosts, "w") as f:
        f.write("[localhost]\n"
                "PARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d --map-by node %_(COMMAND)s\n")
    os.makedirs(os.path.join(root, "tests"), exist_ok=True)
    os.environ.update({
        "SCIPION_DOMAIN": "pwem",  # without it Project.createMapper fails (Domain is None)
        "SCIPION_USER_DATA": root,
        "SCIPION_TESTS": os.path.join(root, "tests"),
        "SCIPION_TEST_NOSYNC": "1",  # never try to download test datasets
        "SCIPION_PYTHON": sys.executable,  # protocol subprocesses use this interpreter
        "SCIPION_HOSTS": hosts,
        "RELION_HOME": _relion_home(root),  # for scipion-em-relion (a test dependency)
    })
    # hosts.conf's mpirun is Open MPI's (Debian's, which RELION needs): let it run as root (CI
    # containers) and start more ranks than this machine has cores.
    for var in ("OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "OMPI_MCA_rmaps_base_oversubscribe"):
        os.environ.setdefault(var, "1")


def _relion_home(root):
    """A RELION_HOME for scipion-em-relion: ``relion-3.1.3/bin`` linking to RELION's programs on PATH.

    The relion plugin takes the RELION version from the home folder's *name* (Debian installs the
    programs in /usr/bin, which names no version), so the folder is named after Debian's 3.1.3.
    It exists (with an empty bin/) even without RELION, so the plugin's path check passes and
    only the tests that run RELION's programs skip.
    """
    home = os.path.join(root, "software", "relion-3.1.3")
    os.makedirs(os.path.join(home, "bin"), exist_ok=True)
    program = shutil.which("relion_postprocess")
    if program:
        for exe in glob.glob(os.path.join(os.path.dirname(program), "relion_*")):
            os.symlink(exe, os.path.join(home, "bin", os.path.basename(exe)))
    return home


_scipion_environment(SCIPION_TMP)

if not (shutil.which("nvidia-smi") or os.path.exists("/dev/nvidia0")):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


def _keep(exitstatus):
    """Keep the folder only for a failed run that created Scipion projects in it."""
    return exitstatus != 0 and os.path.isdir(os.path.join(SCIPION_TMP, "projects"))


def pytest_sessionfinish(session, exitstatus):
    if not _keep(exitstatus):
        shutil.rmtree(SCIPION_TMP, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus):
    if _keep(exitstatus):  # runs after pytest_sessionfinish: the folder exists only if kept
        terminalreporter.write_line(f"Scipion test projects and logs kept in {SCIPION_TMP}")
