"""Headless plots of engine outputs (matplotlib, Agg backend, imported only when plotting)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from .backend import asnumpy
from .io import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["CURVE_LABELS", "plot_fsc", "plot_locres_histogram"]

# Legend text of the curves of ``FscResult.curves()`` (other names are shown as they are).
CURVE_LABELS = {
    "fsc_unmasked": "no mask",
    "fsc_masked": "with the solvent mask",
    "fsc_phase_randomized": "with the mask, phases randomized",
    "fsc_corrected": "mask-corrected (reported)",
}


def plot_fsc(
    path_png,
    curves: Mapping[str, np.ndarray],
    resolution_labels: Mapping[str, float] | None,
    pixel_size_ang: float,
    box: int,
    threshold: float = 0.143,
    title: str | None = None,
):
    """Plot FSC curves against spatial frequency and save a PNG, atomically.

    Legends use :data:`CURVE_LABELS`; when resolutions are given, a note under the plot says how
    they were taken (:data:`~.fsc.CROSSING_RULE`).

    Parameters
    ----------
    path_png : str or os.PathLike
        Output PNG file (written to a temporary file, then ``os.replace``).
    curves : mapping of str to (N//2 + 1,) arrays
        FSC per shell ``0 .. N//2`` by label (e.g. ``FscResult.curves()``).
    resolution_labels : mapping of str to float, optional
        Resolution (Å) per curve label, appended to the legend entry (e.g.
        ``FscResult.resolutions_ang()``).
    pixel_size_ang : float
        Pixel size (Å).
    box : int
        Box size ``N`` (px).
    threshold : float
        Drawn as a dashed horizontal line.
    title : str, optional
        What is plotted (e.g. "Gold-standard FSC of the half-maps").

    Returns
    -------
    matplotlib.figure.Figure
        The figure that was saved.
    """
    from .fsc import CROSSING_RULE

    # An explicit Agg canvas: no pyplot, no change to the process-wide backend (a Scipion GUI
    # may be using Qt in the same process).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = resolution_labels or {}
    freq = np.arange(box // 2 + 1) / (box * pixel_size_ang)
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        c = np.asarray(asnumpy(curve), dtype=np.float64).ravel()
        label = CURVE_LABELS.get(name, name)
        if name in labels:
            label += f" ({labels[name]:.2f} Å)"
        ax.plot(freq[: c.size], c, label=label, lw=1.5)
    ax.axhline(threshold, color="0.4", ls="--", lw=1, label=f"FSC = {threshold:g}")
    ax.axhline(0.0, color="0.8", lw=0.8)
    ax.set_xlim(0.0, freq[-1])
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    top = ax.secondary_xaxis(
        "top",
        functions=(
            lambda f: 1.0 / np.maximum(f, 1e-6),
            lambda d: 1.0 / np.maximum(d, 1e-6),
        ),
    )
    top.set_xlabel("resolution (Å)")
    top_ticks = freq[-1] * np.array([0.25, 0.5, 0.75, 1.0])
    top.set_xticks(1.0 / top_ticks)
    top.set_xticklabels([f"{d:.1f}" for d in 1.0 / top_ticks])
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize="medium", pad=24)  # above the resolution axis
    if labels:
        import textwrap

        note = f"Resolutions in the legend: {CROSSING_RULE.replace('the threshold', f'{threshold:g}')}."
        fig.text(0.5, 0.01, textwrap.fill(note, 95), ha="center", va="bottom", fontsize="x-small", color="0.3")
    fig.tight_layout(rect=(0, 0.07 if labels else 0, 1, 1))
    with atomic_write(path_png) as tmp:
        fig.savefig(tmp, format="png")
    return fig


def plot_locres_histogram(path_png, result) -> None:
    """Plot the histogram of a local-resolution map inside its mask and save a PNG, atomically.

    Parameters
    ----------
    path_png : str or os.PathLike
        Output PNG file (written to a temporary file, then ``os.replace``).
    result : nonuniform.engine.locres.LocresResult
        Uses ``histogram_counts``, ``histogram_edges_ang`` (Å), ``median_ang``, ``threshold``
        and ``mask`` (voxel count in the title).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(result.histogram_counts, dtype=np.float64)
    edges = np.asarray(result.histogram_edges_ang, dtype=np.float64)
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue",
           edgecolor="white", linewidth=0.5)
    ax.axvline(result.median_ang, color="tab:red", ls="--", lw=1.2,
               label=f"median {result.median_ang:.2f} Å")
    ax.set_xlabel("local resolution (Å)")
    ax.set_ylabel("voxels")
    ax.set_title(
        f"local resolution, FSC = {result.threshold:g}, {int(np.sum(result.mask))} voxels in mask",
        fontsize="medium",
    )
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path_png) as tmp:
        fig.savefig(tmp, format="png")
