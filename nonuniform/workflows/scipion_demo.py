"""Non-uniform and uniform refinement side by side in a Scipion project (and RELION's, when installed).

Run it as ``nonuniform demo --scipion [DIR]`` or ``python -m nonuniform.workflows.scipion_demo [DIR]``;
copy it as the start of your own workflow. It

1. simulates membrane-protein-like particles with ``nonuniform simulate --phantom membrane`` (an
   ordered core, a disordered belt whose density differs per particle, a flexible domain; CTF and
   noise) and a start model, the ground truth low-passed to 30 Å;
2. creates the Scipion project ``nonuniform_demo`` in ``DIR`` and imports them with Scipion's import
   protocols (the particles from the RELION STAR file: needs scipion-em-relion);
3. runs ``ProtNonUniformRefine3D`` in non-uniform and in uniform mode from the same start and,
   when scipion-em-relion and RELION's programs are installed, RELION's 3D auto-refine;
4. compares every refinement with ``ProtNonUniformCompareRefinements`` (one mask for all, FSC
   against the ground truth) and prints its table.

Open the project afterwards in Scipion's GUI to see every run and its viewers: the demo prints the
command (``scipion3 project nonuniform_demo`` in a Scipion installation).
"""

import argparse
import glob
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

logger = logging.getLogger("nonuniform.demo.scipion")

PROJECT = "nonuniform_demo"
RELION_RANKS = 3  # auto-refine's minimum: a leader and one worker per half-set


def scipion_environment(folder):
    """Set what a headless Scipion needs when it is not set already; True if anything was set.

    pyworkflow reads these variables when first imported, so a caller that gets True must start a
    new interpreter (``main`` does). Outside a Scipion installation: domain ``pwem``, the user-data
    folder ``folder/ScipionUserData``, a hosts.conf whose MPI command allows 3 RELION ranks on a
    small machine, this interpreter for the protocols, and RELION_HOME for scipion-em-relion
    (RELION's programs on PATH in a folder named after its version, which the plugin reads). On
    fewer than 3 cores, Open MPI is allowed to oversubscribe whichever hosts.conf is in use.
    """
    changed = False

    def default(name, value):
        nonlocal changed
        if not os.environ.get(name):
            os.environ[name] = value() if callable(value) else value
            changed = True

    default("SCIPION_DOMAIN", "pwem")
    default("SCIPION_PYTHON", sys.executable)
    if not os.environ.get("SCIPION_HOME") and not os.environ.get("SCIPION_HOSTS"):
        user = os.path.join(os.path.abspath(folder), "ScipionUserData")
        os.makedirs(user, exist_ok=True)
        hosts = os.path.join(user, "hosts.conf")
        with open(hosts, "w") as f:
            f.write("[localhost]\nPARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d --oversubscribe %_(COMMAND)s\n")
        default("SCIPION_USER_DATA", user)
        default("SCIPION_HOSTS", hosts)
    relion = shutil.which("relion_refine_mpi")
    if relion and not os.environ.get("RELION_HOME"):
        home = os.path.join(tempfile.mkdtemp(prefix="nonuniform-relion-"), f"relion-{_relion_version()}")
        os.makedirs(os.path.join(home, "bin"))
        for exe in glob.glob(os.path.join(os.path.dirname(relion), "relion_*")):
            os.symlink(exe, os.path.join(home, "bin", os.path.basename(exe)))
        default("RELION_HOME", home)
    if os.geteuid() == 0:  # Open MPI refuses root unless told (containers, CI)
        default("OMPI_ALLOW_RUN_AS_ROOT", "1")
        default("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    if (os.cpu_count() or 1) < RELION_RANKS:  # RELION's 3 ranks on fewer cores, whatever hosts.conf says
        default("OMPI_MCA_rmaps_base_oversubscribe", "1")
    return changed


def _relion_version():
    """RELION's version as its programs print it (e.g. 3.1.3), or 3.1 when they do not say."""
    try:
        out = subprocess.run(["relion_refine", "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "3.1"
    for word in out.replace("-", " ").split():
        if word[:1].isdigit() and "." in word:
            return word.strip(",")
    return "3.1"


def relion_available():
    """True when scipion-em-relion and RELION's MPI refinement program are installed."""
    try:
        import relion  # noqa: F401
    except ImportError:
        return False
    return shutil.which("relion_refine_mpi") is not None and shutil.which("mpirun") is not None


def relion_finest_sampling(diameter_ang, pixel_size):
    """Index, in scipion-em-relion's sampling list, of the finest angular step RELION auto-refine may reach.

    RELION's default (1.8°) suits high-resolution data; on a small box it makes the local iterations
    long for no gain. Stop at the finest listed step that is still at least the angle that moves the
    particle's edge by one Nyquist period (2 px): 4.5° for box 32 at 3.5 Å (-> 7.5°), 2.2° for the
    full-size demo (-> 3.7°).
    """
    import math

    from relion.constants import ANGULAR_SAMPLING_LIST

    nyquist_deg = math.degrees(2 * pixel_size / diameter_ang)
    steps = [float(s) for s in ANGULAR_SAMPLING_LIST]
    return max(i for i, step in enumerate(steps) if step >= nyquist_deg)


def simulate(data, n_particles, box, pixel_size, snr, seed):
    """Membrane-like particles (STAR + stack + truth.mrc) and ``start_30A.mrc`` in ``data``."""
    from nonuniform.engine import filters, io

    subprocess.run([sys.executable, "-m", "nonuniform.engine", "simulate", "--phantom", "membrane", "--out", data,
                    "--n-particles", str(n_particles), "--box", str(box), "--pixel-size", str(pixel_size),
                    "--snr", str(snr), "--seed", str(seed)], check=True)
    truth, apix = io.read_mrc(os.path.join(data, "truth.mrc"))
    io.write_mrc(os.path.join(data, "start_30A.mrc"), filters.lowpass_cosine(truth, apix, 30.0), apix)
    # One mask for every comparison: the truth's support, widened by 2 px and softened.
    io.write_mrc(os.path.join(data, "mask.mrc"), _soft_support(truth, apix), apix)


def _soft_support(vol, apix):
    from nonuniform.engine import masks

    return masks.auto_mask(vol, apix, threshold_frac=0.1, extend_ang=2 * apix, soft_ang=3 * apix,
                           lowpass_ang=4 * apix)


def run(folder, n_particles=2000, box=64, pixel_size=2.0, snr=0.1, seed=0, max_iterations=12, threads=2,
        with_relion=None):
    """Build and run the demo project in ``folder``; returns the comparison protocol."""
    from pwem.protocols import ProtImportMask, ProtImportParticles, ProtImportVolumes
    from pyworkflow.plugin import Domain
    from pyworkflow.project import Manager

    from nonuniform.protocols import ProtNonUniformRefine3D

    folder = os.path.abspath(folder)
    data = os.path.join(folder, "data")
    simulate(data, n_particles, box, pixel_size, snr, seed)
    manager = Manager()
    name = PROJECT
    while manager.hasProject(name):  # an earlier demo in another folder: keep both
        name = f"{PROJECT}_{int(name.rpartition('_')[2]) + 1 if name != PROJECT else 2}"
    project = manager.createProject(name, location=folder)
    os.chdir(project.getPath())  # Scipion launches protocols from the project folder

    def launch(prot, label):
        prot.setObjLabel(label)
        errors = prot.validate()
        if errors:
            raise RuntimeError(f"{label}: " + "; ".join(errors))
        t0 = time.time()
        project.launchProtocol(prot, wait=True)
        if not prot.isFinished():
            raise RuntimeError(f"{label} failed: see {prot.getLogPaths()[0]}")
        logger.info("%s finished in %.0f s", label, time.time() - t0)
        return prot

    particles = launch(project.newProtocol(
        ProtImportParticles, importFrom=ProtImportParticles.IMPORT_FROM_RELION,
        starFile=os.path.join(data, "particles.star"), samplingRate=pixel_size, magnification=50000,
        voltage=300, sphericalAberration=2.7, amplitudeContrast=0.1), "import particles").outputParticles
    start = launch(project.newProtocol(ProtImportVolumes, filesPath=os.path.join(data, "start_30A.mrc"),
                                       samplingRate=pixel_size), "import start (30 Å)").outputVolume
    truth = launch(project.newProtocol(ProtImportVolumes, filesPath=os.path.join(data, "truth.mrc"),
                                       samplingRate=pixel_size), "import ground truth").outputVolume
    mask = launch(project.newProtocol(ProtImportMask, maskPath=os.path.join(data, "mask.mrc"),
                                      samplingRate=pixel_size), "import mask").outputMask

    refinements = []
    for nonUniform in (True, False):
        prot = project.newProtocol(ProtNonUniformRefine3D, doNonUniform=nonUniform, refine_res_init=30.0,
                                   maxIterations=max_iterations, seed=seed, numberOfThreads=threads)
        prot.inputParticles.set(particles)
        prot.referenceVolume.set(start)
        refinements.append(launch(prot, "non-uniform refinement" if nonUniform else "uniform refinement"))
    if with_relion is None:
        with_relion = relion_available()
        if not with_relion:
            logger.info("RELION's refinement left out: scipion-em-relion or RELION's programs are not installed")
    if with_relion:
        prot = project.newProtocol(Domain.findClass("ProtRelionRefine3D"), initialLowPassFilterA=30.0,
                                   maskDiameterA=int(0.8 * box * pixel_size), doGpu=False, numberOfMpi=RELION_RANKS,
                                   numberOfThreads=1,
                                   localSearchAutoSamplingDeg=relion_finest_sampling(0.8 * box * pixel_size,
                                                                                     pixel_size))
        prot.inputParticles.set(particles)
        prot.referenceVolume.set(start)
        refinements.append(launch(prot, "RELION 3D auto-refine"))

    compare = project.newProtocol(Domain.findClass("ProtNonUniformCompareRefinements"))
    for prot in refinements:
        compare.inputRefinements.append(prot)
    compare.inputMask.set(mask)
    compare.groundTruth.set(truth)
    launch(compare, "comparison")
    return compare


def main(argv=None):
    from nonuniform.engine.cli import add_demo_data_args

    parser = argparse.ArgumentParser(prog="nonuniform demo --scipion", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("folder", nargs="?", default="nonuniform-scipion-demo",
                        help="folder for the data and the project (must be empty or absent)")
    add_demo_data_args(parser)
    parser.add_argument("--threads", type=int, default=2, help="threads per refinement")
    parser.add_argument("--no-relion", action="store_true", help="leave RELION's auto-refine out")
    args = parser.parse_args(argv)
    if os.path.isdir(args.folder) and os.listdir(args.folder) and not os.environ.get("NONUNIFORM_DEMO_STARTED"):
        parser.exit(2, f"nonuniform demo --scipion: {args.folder} is not empty; give another folder\n")
    if scipion_environment(args.folder):  # pyworkflow must see the environment when it is imported
        os.environ["NONUNIFORM_DEMO_STARTED"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "nonuniform.workflows.scipion_demo", *sys.argv[1:]]
                 if argv is None else [sys.executable, "-m", "nonuniform.workflows.scipion_demo", *argv])
    # Our progress lines only (pyworkflow logs every subprocess it starts at INFO on loggers of its own).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    t0 = time.time()
    compare = run(args.folder, n_particles=args.n_particles, box=args.box, pixel_size=args.pixel_size,
                  snr=args.snr, seed=args.seed, max_iterations=args.iterations, threads=args.threads,
                  with_relion=False if args.no_relion else None)
    print("\n".join(compare.summary()))
    project = compare.getProject()
    print(f"\nDone in {time.time() - t0:.0f} s. Project: {project.getPath()}")
    if os.environ.get("SCIPION_HOME"):
        print(f"Open it: scipion3 project {project.getShortName()}")
    else:
        print("Open it: " + " ".join(f"{k}={os.environ[k]}" for k in ("SCIPION_DOMAIN", "SCIPION_USER_DATA",
                                                                      "SCIPION_HOSTS") if os.environ.get(k))
              + f" {sys.executable} -m pyworkflow.apps.pw_project {project.getShortName()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
