"""Plots of refinement, local-filter and comparison results, headless or in a Scipion viewer.

Plain functions of arrays (no Scipion, no file reading): each draws into ``fig`` (a matplotlib
``Figure``: the one of a Scipion ``EmPlotter`` in the GUI, or a new Agg figure when None),
saves it as a PNG when ``path_png`` is given, and returns the figure. Nothing is computed that
the engine already wrote: curves, histograms and maps are drawn as they are given.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Curve", "angular_histogram", "plot_angular_distribution", "plot_fsc", "plot_fsc_iterations",
           "plot_histogram", "plot_iteration_history", "plot_pose_changes", "plot_slices", "plot_table"]

# Equal-area bins of projection directions: 36 in longitude (rot, 10°) x 18 in sin(latitude).
ANGULAR_BINS_LON, ANGULAR_BINS_LAT = 36, 18


@dataclasses.dataclass
class Curve:
    """One FSC curve: values per shell at spatial frequencies in 1/Å, and its resolution (Å)."""

    label: str
    freq_inv_ang: np.ndarray
    fsc: np.ndarray
    resolution_ang: float | None = None
    color: object = None
    linewidth: float = 1.6
    linestyle: str = "-"


def _figure(fig, figsize):
    """``fig``, or a new figure on an Agg canvas (no pyplot: the process-wide backend is untouched)."""
    if fig is not None:
        fig.set_size_inches(*figsize)
        return fig
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _finish(fig, path_png, note=None):
    if note:
        import textwrap

        fig.text(0.5, 0.01, textwrap.fill(note, 110), ha="center", va="bottom", fontsize="x-small", color="0.3")
    fig.tight_layout(rect=(0, 0.08 if note else 0, 1, 1))
    if path_png:
        fig.savefig(path_png, format="png")
        logger.info("wrote %s", path_png)
    return fig


# ----------------------------------------------------------------------------------------------
# FSC


def _fsc_axes(ax, nyquist_inv_ang, threshold, title):
    """Frequency axis (1/Å) at the bottom, resolution (Å) at the top, the threshold line."""
    ax.axhline(threshold, color="0.35", ls="--", lw=1, label=f"FSC = {threshold:g} (resolution threshold)")
    ax.axhline(0.0, color="0.8", lw=0.8)
    ax.set_xlim(0.0, nyquist_inv_ang)
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("Fourier shell correlation")
    top = ax.secondary_xaxis("top", functions=(lambda f: 1.0 / np.maximum(f, 1e-6),
                                               lambda d: 1.0 / np.maximum(d, 1e-6)))
    ticks = nyquist_inv_ang * np.array([0.2, 0.4, 0.6, 0.8, 1.0])
    top.set_xticks(1.0 / ticks)
    top.set_xticklabels([f"{1 / t:.1f}" for t in ticks])
    top.set_xlabel("resolution (Å)")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize="medium", pad=12)


def plot_fsc(curves, threshold=0.143, title="Fourier shell correlation", note=None, fig=None, path_png=None):
    """FSC curves against spatial frequency, the threshold, and each curve's resolution.

    Parameters
    ----------
    curves : list of Curve
        Curves to overlay; a curve with ``resolution_ang`` gets it in its legend entry and a dot
        where it crosses the threshold (at frequency ``1 / resolution_ang``).
    threshold : float
        FSC threshold of the resolutions (0.143 for half-maps, 0.5 against a ground truth).
    title, note : str
        Plot title, and a plain-language note under the plot.
    fig : matplotlib.figure.Figure, optional
    path_png : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = _figure(fig, (7.0, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    nyquist = max(float(np.max(c.freq_inv_ang)) for c in curves)
    _fsc_axes(ax, nyquist, threshold, title)
    for c in curves:
        label = c.label if c.resolution_ang is None else f"{c.label}: {c.resolution_ang:.2f} Å"
        line, = ax.plot(c.freq_inv_ang, c.fsc, label=label, color=c.color, lw=c.linewidth, ls=c.linestyle)
        if c.resolution_ang:
            ax.plot([1.0 / c.resolution_ang], [threshold], "o", color=line.get_color(), ms=5)
    ax.legend(loc="lower left", fontsize="small")
    return _finish(fig, path_png, note)


def plot_fsc_iterations(iterations, curves, resolutions_ang, threshold=0.143, fig=None, path_png=None):
    """The gold-standard FSC of every iteration, overlaid, coloured from first (light) to last.

    Parameters
    ----------
    iterations : list of int
    curves : list of (freq_inv_ang, fsc) pairs of (N//2 + 1,) arrays
        Per iteration, as the engine wrote them (frequency in 1/Å).
    resolutions_ang : list of float
        Per iteration, the resolution the engine reported.
    threshold : float
        FSC threshold line.
    """
    from matplotlib import cm, colormaps
    from matplotlib.colors import Normalize

    fig = _figure(fig, (7.0, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    nyquist = max(float(np.max(f)) for f, _ in curves)
    _fsc_axes(ax, nyquist, threshold, "Gold-standard FSC (mask-corrected) at each iteration")
    norm = Normalize(vmin=min(iterations) - 0.5, vmax=max(iterations))
    cmap = colormaps["viridis_r"]
    few = len(iterations) <= 8
    for it, (freq, fsc), res in zip(iterations, curves, resolutions_ang):
        last = it == max(iterations)
        ax.plot(freq, fsc, color=cmap(norm(it)), lw=2.2 if last else 1.2,
                label=f"iteration {it}: {res:.2f} Å" if few or last else None)
    if not few:
        sm = cm.ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(sm, ax=ax, label="iteration")
    ax.legend(loc="lower left", fontsize="small")
    return _finish(fig, path_png, "Each curve is the FSC between the two independently refined half-maps after "
                                  "that iteration; curves moving right mean the resolution improved.")


# ----------------------------------------------------------------------------------------------
# refinement progress


def _values(history, key):
    return np.array([np.nan if h.get(key) is None else h[key] for h in history], dtype=np.float64)


def plot_iteration_history(history, fig=None, path_png=None):
    """Resolution and pose change per iteration, from the engine's ``summary.json`` history.

    Parameters
    ----------
    history : list of dict
        One entry per iteration with ``iteration``, ``resolution_ang``, ``mean_pose_change_deg``,
        ``median_pose_change_deg`` (None at the first iteration) and ``angular_step_deg``.
    """
    fig = _figure(fig, (7.0, 6.0))
    it = _values(history, "iteration")
    ax1 = fig.add_subplot(2, 1, 1)
    ax1.plot(it, _values(history, "resolution_ang"), "o-", color="tab:blue",
             label="gold-standard resolution (FSC 0.143, mask-corrected)")
    ax1.set_ylabel("resolution (Å)")
    ax1.invert_yaxis()  # better resolution (fewer Å) upwards
    ax1.set_title("Refinement progress", fontsize="medium")
    ax1.legend(loc="best", fontsize="small")
    ax1.grid(alpha=0.3)
    ax2 = fig.add_subplot(2, 1, 2, sharex=ax1)
    ax2.plot(it, _values(history, "mean_pose_change_deg"), "o-", color="tab:red",
             label="mean change of particle orientation")
    ax2.plot(it, _values(history, "median_pose_change_deg"), "s--", color="tab:orange",
             label="median change of particle orientation")
    ax2.plot(it, _values(history, "angular_step_deg"), ":", color="0.4", label="angular search step")
    ax2.set_ylabel("degrees")
    ax2.set_xlabel("iteration")
    ax2.set_ylim(bottom=0)
    ax2.set_xticks(it)
    ax2.legend(loc="best", fontsize="small")
    ax2.grid(alpha=0.3)
    return _finish(fig, path_png, "Orientation change: angle between each particle's orientation in this "
                                  "iteration and the previous one (none at iteration 1). The refinement "
                                  "has converged when the resolution stops improving and the changes fall "
                                  "below the search step.")


# ----------------------------------------------------------------------------------------------
# angular distribution and pose changes


def angular_histogram(rot_deg, tilt_deg, n_lon=ANGULAR_BINS_LON, n_lat=ANGULAR_BINS_LAT):
    """Particle counts per projection direction in equal-area bins of the sphere.

    The direction of a RELION pose (rot, tilt) is longitude ``rot`` and latitude ``90° - tilt``;
    bins are uniform in longitude and in ``sin(latitude)``, so every bin covers ``4π / (n_lon
    n_lat)`` steradians and counts are comparable.

    Returns
    -------
    counts : (n_lat, n_lon) int array
        Sums to the number of particles.
    lon_edges_rad : (n_lon + 1,) array, from -π to π
    lat_edges_rad : (n_lat + 1,) array, from -π/2 to π/2
    """
    lon = np.deg2rad((np.asarray(rot_deg, np.float64) + 180.0) % 360.0 - 180.0)
    sin_lat = np.cos(np.deg2rad(np.asarray(tilt_deg, np.float64)))
    lon_edges = np.linspace(-np.pi, np.pi, n_lon + 1)
    sin_edges = np.linspace(-1.0, 1.0, n_lat + 1)
    counts, _, _ = np.histogram2d(np.clip(sin_lat, -1, 1), lon, bins=(sin_edges, lon_edges))
    return counts.astype(np.int64), lon_edges, np.arcsin(sin_edges)


def plot_angular_distribution(rot_deg, tilt_deg, title="Angular distribution of the particles", fig=None,
                              path_png=None):
    """Counts of particles per projection direction on a Mollweide map of the sphere.

    Parameters
    ----------
    rot_deg, tilt_deg : (n,) arrays
        RELION Euler angles (degrees) of the final poses; psi (in-plane) does not change the
        direction.
    """
    counts, lon_edges, lat_edges = angular_histogram(rot_deg, tilt_deg)
    fig = _figure(fig, (8.0, 5.0))
    ax = fig.add_subplot(1, 1, 1, projection="mollweide")
    shown = np.ma.masked_equal(counts, 0)
    mesh = ax.pcolormesh(lon_edges, lat_edges, shown, cmap="viridis", shading="flat")
    mesh.set_array(shown)
    fig.colorbar(mesh, ax=ax, orientation="horizontal", fraction=0.05, pad=0.08,
                 label="particles per direction bin (empty bins white)")
    ax.set_xlabel("rot (longitude, degrees)")
    ax.set_ylabel("90° − tilt (latitude)")
    ax.set_xticks(np.deg2rad([-120, -60, 0, 60, 120]))
    ax.tick_params(labelsize="x-small")
    for label in ax.get_xticklabels():  # readable over the cells
        label.set_bbox({"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})
    ax.grid(alpha=0.4)
    fig.suptitle(f"{title}\n{int(counts.sum())} particles, {np.count_nonzero(counts)} of {counts.size} "
                 f"directions seen", fontsize="medium")
    return _finish(fig, path_png, "Each cell is one of equal-area patches of the sphere of viewing "
                                  "directions; gaps or a few dominant cells mean preferred orientation.")


def plot_pose_changes(series, title="Change of particle poses", fig=None, path_png=None):
    """Histograms of the change in orientation (degrees) and in shift (Å, x and y), overlaid.

    Parameters
    ----------
    series : list of (label, angle_deg, shift_xy_ang)
        ``angle_deg`` (n,) the angle between the two orientations of each particle,
        ``shift_xy_ang`` (n, 2) the difference of its in-plane shifts in Å.
    """
    fig = _figure(fig, (9.0, 4.4))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    angle_max = max(1.0, max(float(np.max(a, initial=0)) for _, a, _ in series))
    angle_edges = np.linspace(0.0, min(180.0, angle_max * 1.05), 37)
    shift_max = max(float(np.max(np.abs(s), initial=0)) for _, _, s in series)
    half = max(shift_max * 1.05, 0.5)
    shift_edges = np.linspace(-half, half, 42)  # an odd count of bins: one is centred on 0
    for label, angle, shift in series:
        angle, shift = np.asarray(angle), np.asarray(shift).reshape(-1, 2)
        ax1.stairs(np.histogram(angle, bins=angle_edges)[0], angle_edges, lw=1.5,
                   label=f"{label} (median {np.median(angle):.2f}°, n = {angle.size})")
        ax2.stairs(np.histogram(shift.ravel(), bins=shift_edges)[0], shift_edges, lw=1.5,
                   label=f"{label} (median |Δ| {np.median(np.hypot(*shift.T)):.2f} Å)")
    ax1.set_xlabel("change of orientation (degrees)")
    ax1.set_ylabel("particles")
    ax1.set_title("Orientation", fontsize="medium")
    ax2.set_xlabel("change of shift, x and y (Å)")
    ax2.set_ylabel("particle shifts (x and y)")
    ax2.set_title("Shift", fontsize="medium")
    for ax in (ax1, ax2):
        ax.legend(loc="upper right", fontsize="x-small")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize="medium")
    return _finish(fig, path_png, "Particles matched by id. Orientation change: the angle of the rotation "
                                  "between the two poses; shift change: difference of the in-plane origin "
                                  "offsets. Peaks at zero mean the same poses.")


# ----------------------------------------------------------------------------------------------
# maps


def plot_slices(volumes, pixel_size_ang, title, cmap="gray", vmin=None, vmax=None, colorbar_label=None,
                mask=None, fig=None, path_png=None):
    """Central slices of one or more maps on the three axes, one row per map, one colour scale.

    Parameters
    ----------
    volumes : list of (label, (N, N, N) array)
        Maps in (z, y, x) order, origin at N//2; slices at index N//2.
    pixel_size_ang : float
        Axes are in Å.
    vmin, vmax : float, optional
        Colour scale (default: the range of all the maps, inside ``mask`` if given).
    colorbar_label : str, optional
        Colour-bar label with units, e.g. "local resolution (Å)".
    mask : (N, N, N) bool array, optional
        Voxels shown; the others are left white (e.g. the solvent of a local-resolution map).
    """
    from matplotlib import colormaps

    fig = _figure(fig, (9.0, 0.8 + 3.0 * len(volumes)))
    shown = [(label, np.ma.masked_where(~mask, vol) if mask is not None else np.ma.asarray(vol))
             for label, vol in volumes]
    lo = min(float(v.min()) for _, v in shown) if vmin is None else vmin
    hi = max(float(v.max()) for _, v in shown) if vmax is None else vmax
    colours = colormaps[cmap].with_extremes(bad="white")
    axes = fig.subplots(len(volumes), 3, squeeze=False)
    image = None
    for row, (label, vol) in enumerate(shown):
        n = vol.shape[0]
        c = n // 2
        extent = (np.array([-c, n - c]) - 0.5) * pixel_size_ang
        planes = (("z", "x (Å)", "y (Å)", vol[c]), ("y", "x (Å)", "z (Å)", vol[:, c, :]),
                  ("x", "y (Å)", "z (Å)", vol[:, :, c]))
        for ax, (axis, xlabel, ylabel, plane) in zip(axes[row], planes):
            image = ax.imshow(plane, cmap=colours, vmin=lo, vmax=hi, origin="lower", interpolation="nearest",
                              extent=(*extent, *extent))
            ax.set_title(f"{label}: central {axis} slice", fontsize="small")
            ax.set_xlabel(xlabel, fontsize="small")
            ax.set_ylabel(ylabel, fontsize="small")
            ax.tick_params(labelsize="x-small")
    fig.suptitle(title, fontsize="medium")
    note = "White: outside the solvent mask (not shown)." if mask is not None else None
    if note:
        fig.text(0.45, 0.01, note, ha="center", va="bottom", fontsize="x-small", color="0.3")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 0.88, 1))
    cax = fig.add_axes((0.9, 0.12, 0.025, 0.76))
    fig.colorbar(image, cax=cax, label=colorbar_label or "density (map units)")
    if path_png:
        fig.savefig(path_png, format="png")
        logger.info("wrote %s", path_png)
    return fig


def plot_histogram(counts, edges, xlabel, title, median=None, ylabel="voxels", fig=None, path_png=None):
    """A histogram from counts and bin edges that the engine wrote (nothing is re-binned).

    Parameters
    ----------
    counts : (n,) array
        Count per bin.
    edges : (n + 1,) array
        Bin edges, in the unit of ``xlabel`` (e.g. Å).
    xlabel, title, ylabel : str
        Axis labels with units, and the title.
    median : float, optional
        Drawn as a dashed line and given in the legend (Å).
    """
    counts, edges = np.asarray(counts, np.float64), np.asarray(edges, np.float64)
    fig = _figure(fig, (7.0, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue", edgecolor="white",
           linewidth=0.5, label=f"{int(counts.sum())} {ylabel}")
    if median is not None:
        ax.axvline(median, color="tab:red", ls="--", lw=1.2, label=f"median {median:.2f} Å")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return _finish(fig, path_png)


def plot_table(header, rows, title, note=None, fig=None, path_png=None):
    """A table of text cells (e.g. resolutions of several refinements).

    Parameters
    ----------
    header : list of str
        Column titles, with units.
    rows : list of lists
        Cells, shown as text.
    title, note : str
        Title, and a plain-language note under the table.
    """
    fig = _figure(fig, (min(12.0, 1.2 * len(header) + 1.0), 1.6 + 0.35 * len(rows)))
    ax = fig.add_subplot(1, 1, 1)
    ax.axis("off")
    table = ax.table(cellText=[[str(c) for c in r] for r in rows], colLabels=header, loc="center",
                     cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1.0, 1.4)
    ax.set_title(title, fontsize="medium")
    return _finish(fig, path_png, note)
