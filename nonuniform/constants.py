"""Constants shared by the Scipion layer of the ``nonuniform`` plugin."""

# Home page shown by Scipion for the plugin and its protocols.
NONUNIFORM_URL = "https://github.com/scipion-em/scipion-em-nonuniform"

# Console script installed by setup.py; protocols run the engine through it.
NONUNIFORM_PROGRAM = "nonuniform"
