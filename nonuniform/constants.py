"""Constants shared by the Scipion layer of the ``nonuniform`` plugin."""

# Home page shown by Scipion for the plugin and its protocols.
NONUNIFORM_URL = "https://github.com/scipion-em/scipion-em-nonuniform"

# Console script installed by setup.py; protocols run the engine through it.
NONUNIFORM_PROGRAM = "nonuniform"

# Candidate low-pass filter shapes of the NU regularizer, in the order of the forms' choices
# (cryoSPARC's refine_nu_filtertype order); the values are the engine's option values.
NU_FILTER_TYPES = ("butterworth", "rect", "gaussian")

# How the NU regularizer compares its candidates, in the order of the forms' choices (the engine's
# --nu-objective / --objective values; the first is the engine's default).
NU_OBJECTIVES = ("risk-wiener", "risk", "cv")
NU_OBJECTIVE_HELP = ("How each voxel's candidate filters are compared. risk-wiener (default): an unbiased "
                     "estimate of the filtered map's local error, for low-pass filters whose bands keep "
                     "their local Wiener gain (bands with some signal are attenuated rather than cut). "
                     "risk: the same estimate for plain low-pass filters. cv: the original paper's "
                     "cross-validation between the two folds, which rates each filter on a fold (half the "
                     "data) and so cuts the well-ordered regions' partly informative bands.")
