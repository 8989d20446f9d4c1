"""What the plugin's viewers share: plots in a Scipion ``EmPlotter``, ChimeraX views, PNG export."""

import math
import os

from pwem.viewers import ChimeraView, EmPlotter
from pwem.viewers.viewer_localres import chimeraInstalled
from pyworkflow.gui.plotter import Plotter

from .. import convert
from . import chimerax, plots

# Colour map of resolution-like maps (Å): low values (fine detail) blue, high values red, as in
# ResMap and RELION's local-resolution viewers.
RESOLUTION_CMAP = "jet"


class NonUniformViewerMixin:
    """Mixed into the plugin's protocol viewers (before the pwem viewer class).

    Every view is a method ``_show<Name>(paramName=None)`` returning a list of Scipion views; the
    plots are drawn by :mod:`nonuniform.viewers.plots` into an ``EmPlotter`` figure, so the same
    drawing is what :meth:`savePng` writes headless.
    """

    def _plotView(self, plot, *args, windowTitle="nonuniform", **kwargs):
        """``plot(*args, fig=<EmPlotter figure>, **kwargs)`` shown in a Scipion plot window."""
        plotter = EmPlotter(windowTitle=windowTitle)
        plot(*args, fig=plotter.getFigure(), **kwargs)
        plotter.tightLayoutOn = False  # the plot function laid the figure out itself
        return [plotter]

    def _chimeraView(self, script, what):
        """Open ``script`` in ChimeraX, or say where it is when ChimeraX is not configured."""
        if chimeraInstalled():
            return [ChimeraView(script)]
        return [self.infoMessage(f"ChimeraX is not configured in this Scipion (install the scipion-em-chimera "
                                 f"plugin and ChimeraX to open it from here). The script showing the {what} "
                                 f"was written to\n\n{os.path.abspath(script)}\n\nOpen it in ChimeraX "
                                 "(File > Open, or: chimerax <file>).", "ChimeraX script written")]

    @staticmethod
    def _mapView(fileName):
        """[ChimeraView] of a map when ChimeraX is configured, else [] (the caller shows slices)."""
        return [ChimeraView(fileName)] if chimeraInstalled() else []

    def _viewerPath(self, *paths):
        """A file in the run's ``extra/viewer`` folder (ChimeraX scripts stay next to the results)."""
        folder = self.protocol._getExtraPath("viewer")
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, *paths)

    def _mapSlicesView(self, fileNames, title, colorbarLabel=None, resolutionScale=False):
        """Central slices of the maps ``[(label, file)]``; with ``resolutionScale``, in the form's
        colour scale and only inside the mask (:meth:`_maskFile`)."""
        volumes = [(label, convert.readMap(fileName)[0]) for label, fileName in fileNames]
        kwargs = {}
        if resolutionScale:
            low, high = self._scale()
            kwargs = dict(cmap=self._colorName(), vmin=low, vmax=high, mask=self._inside())
        return self._plotView(plots.plot_slices, volumes, self._samplingRate(), title,
                              colorbar_label=colorbarLabel, **kwargs)

    def _inside(self):
        """Voxels inside the solvent mask (value > 0.5), or None without a mask."""
        maskFile = self._maskFile()
        return None if maskFile is None else convert.readMap(maskFile)[0] > 0.5

    def resolutionRange(self, fileNames):
        """(min, max) Å of the maps ``fileNames`` together, inside the mask, rounded outwards to
        0.01 Å (the form shows them): the default colour scale."""
        inside = self._inside()
        values = [convert.readMap(f)[0] for f in fileNames]
        values = [v if inside is None else v[inside] for v in values]
        low, high = min(v.min() for v in values), max(v.max() for v in values)
        return math.floor(low * 100) / 100, math.ceil(high * 100) / 100

    def _colorName(self):
        return self.colorMap.get() or RESOLUTION_CMAP

    def _scale(self):
        """(lowest, highest) Å of the colour scale: the form's values (defaults: the maps' range)."""
        return sorted((self.lowest.get(), self.highest.get()))

    def _coloredSurfaceView(self, mapFile, colorFile, what, scriptName):
        script = self._viewerPath(scriptName)
        low, high = self._scale()
        chimerax.write_colored_surface_cxc(script, mapFile, colorFile, self._samplingRate(), low, high, what=what)
        return self._chimeraView(script, f"map surface coloured by {what}")

    def savePng(self, paramName, path):
        """Draw the view of form parameter ``paramName`` headless and save it as a PNG at ``path``.

        Returns
        -------
        matplotlib.figure.Figure
            The figure saved (its plotter window is closed).

        Raises
        ------
        ValueError
            If that view is not a plot (a message or a ChimeraX view).
        """
        views = self._getVisualizeDict()[paramName](paramName)
        plotters = [v for v in views if isinstance(v, Plotter)]
        if not plotters:
            raise ValueError(f"the view {paramName} is not a plot: {views}")
        fig = plotters[0].getFigure()
        fig.savefig(path, format="png")
        plotters[0].close()
        return fig
