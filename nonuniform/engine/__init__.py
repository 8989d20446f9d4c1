"""The `nonuniform` refinement engine: numpy/scipy (+ optional cupy, mpi4py), no Scipion imports."""
