"""Constants shared by the Scipion layer of the ``nonuniform`` plugin."""

# Home page shown by Scipion for the plugin and its protocols.
NONUNIFORM_URL = "https://github.com/scipion-em/scipion-em-nonuniform"

# Console script installed by setup.py; protocols run the engine through it.
NONUNIFORM_PROGRAM = "nonuniform"

# Candidate low-pass filter shapes of the NU regularizer, in the order of the forms' choices
# (cryoSPARC's refine_nu_filtertype order); the values are the engine's option values.
NU_FILTER_TYPES = ("butterworth", "rect", "gaussian")
