"""Throughput of the Scipion <-> engine conversion (nonuniform/convert.py) by particle count.

Builds a SetOfParticles (one MRC stack, CTF, ALIGN_PROJ poses) of N particles in a temporary
folder, then times ``writeSetOfParticles`` (Scipion set -> RELION STAR for the engine), the engine's
``load_particles`` + ``save_particles`` (a stand-in for its refined output) and
``copyRefinedParticles`` (the STAR back onto a copy of the set, by id). Prints particles/s per stage.

    .venv/bin/python benchmarks/bench_convert.py 2000 20000
"""

import os
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("SCIPION_DOMAIN", "pwem")

from pwem.objects import Acquisition, CTFModel, Particle, SetOfParticles, Transform  # noqa: E402

from nonuniform import convert  # noqa: E402
from nonuniform.engine import io, particles  # noqa: E402


def build(folder, n, rng, box=16):
    stack = os.path.join(folder, "stack.mrcs")
    io.write_stack(stack, np.zeros((n, box, box), np.float32), 1.5)
    parts = SetOfParticles(filename=os.path.join(folder, "particles.sqlite"))
    parts.setSamplingRate(1.5)
    parts.setAcquisition(Acquisition(voltage=300.0, sphericalAberration=2.7, amplitudeContrast=0.1))
    parts.setHasCTF(True)
    parts.setAlignmentProj()
    for i in range(n):
        p = Particle(location=(i + 1, stack))
        p.setCTF(CTFModel(defocusU=15000.0, defocusV=14000.0, defocusAngle=30.0))
        p.setTransform(Transform(convert.matrixFromGeometry(*rng.uniform(0, 90, 3), *rng.uniform(-3, 3, 2))))
        parts.append(p)
    parts.write()
    return parts


def main(counts):
    rng = np.random.default_rng(0)
    print(f"{'particles':>10} {'write STAR':>14} {'engine I/O':>14} {'read back':>14}  (particles/s)")
    for n in counts:
        with tempfile.TemporaryDirectory() as folder:
            parts = build(folder, n, rng)
            t0 = time.perf_counter()
            convert.writeSetOfParticles(parts, os.path.join(folder, "in.star"), folder)
            t1 = time.perf_counter()
            loaded = particles.load_particles(os.path.join(folder, "in.star"))
            particles.save_particles(os.path.join(folder, "out.star"), loaded, random_subset=np.ones(n, int))
            t2 = time.perf_counter()
            out = SetOfParticles(filename=os.path.join(folder, "out.sqlite"))
            convert.copyRefinedParticles(parts, out, os.path.join(folder, "out.star"))
            out.write()
            t3 = time.perf_counter()
            assert out.getSize() == n
            print(f"{n:>10} {n / (t1 - t0):>14,.0f} {n / (t2 - t1):>14,.0f} {n / (t3 - t2):>14,.0f}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [2000, 20000])
