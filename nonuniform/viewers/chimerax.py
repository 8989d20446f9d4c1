"""Files for UCSF ChimeraX: angular-distribution glyphs (.bild) and scripts (.cxc).

ChimeraX places voxel ``i`` of a map at ``i * pixel_size`` Å, so the box centre (voxel N//2,
our origin) is at ``(N//2) * pixel_size`` Å on each axis; the glyphs are drawn around it.
"""

import logging
import os

import numpy as np

from .plots import angular_histogram

logger = logging.getLogger(__name__)

__all__ = ["write_angular_distribution_bild", "write_angular_distribution_cxc", "write_colored_surface_cxc"]


def write_angular_distribution_bild(path, rot_deg, tilt_deg, box, pixel_size_ang, radius_frac=0.45):
    """One cylinder per populated direction bin (RELION's ``*_angdist.bild`` style).

    Cylinders start on a sphere of ``radius_frac * box`` pixels around the box centre, point
    along the projection direction ``(cos rot sin tilt, sin rot sin tilt, cos tilt)``, and their
    length (up to half that radius) and colour (blue: few, red: many) follow the particle count
    of the bin (:func:`~.plots.angular_histogram`).

    Returns
    -------
    int
        Number of cylinders written.
    """
    counts, lon_edges, lat_edges = angular_histogram(rot_deg, tilt_deg)
    lon = 0.5 * (lon_edges[1:] + lon_edges[:-1])
    sin_lat = 0.5 * (np.sin(lat_edges[1:]) + np.sin(lat_edges[:-1]))  # equal-area bin centre
    centre = (box // 2) * pixel_size_ang
    r0 = radius_frac * box * pixel_size_ang
    width = max(0.25, 0.01 * box) * pixel_size_ang
    top = counts.max() if counts.size else 0
    lines = [f"# angular distribution: {int(counts.sum())} particles, counts per equal-area direction bin"]
    for i, j in zip(*np.nonzero(counts)):
        cos_lat = np.sqrt(max(0.0, 1.0 - sin_lat[i] ** 2))
        d = np.array([np.cos(lon[j]) * cos_lat, np.sin(lon[j]) * cos_lat, sin_lat[i]])
        w = counts[i, j] / top
        start = centre + r0 * d
        end = centre + r0 * (1.0 + 0.5 * w) * d
        lines.append(f".color {w:.3f} 0 {1 - w:.3f}")
        lines.append(".cylinder {:.2f} {:.2f} {:.2f} {:.2f} {:.2f} {:.2f} {:.2f}".format(*start, *end, width))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return int(np.count_nonzero(counts))


def write_angular_distribution_cxc(path, map_file, bild_file, pixel_size_ang):
    """A ChimeraX script that opens the map and the angular-distribution glyphs around it."""
    _write(path, ["# ChimeraX: the map with its angular distribution (cylinders: particles per direction)",
                  f"open {_quote(map_file)}",
                  f"volume #1 voxelSize {pixel_size_ang:g} style surface",
                  f"open {_quote(bild_file)}",
                  "view"])


def write_colored_surface_cxc(path, map_file, color_file, pixel_size_ang, lowest_ang, highest_ang,
                              what="local resolution"):
    """A ChimeraX script colouring the surface of ``map_file`` by the values (Å) of ``color_file``.

    Blue is the best (lowest Å) end of ``[lowest_ang, highest_ang]``, red the worst, with a colour
    key in Å.
    """
    mid = 0.5 * (lowest_ang + highest_ang)
    palette = f"{lowest_ang:.2f},blue:{mid:.2f},white:{highest_ang:.2f},red"
    _write(path, [f"# ChimeraX: surface of {os.path.basename(map_file)} coloured by {what} (Å)",
                  f"open {_quote(map_file)}",
                  f"open {_quote(color_file)}",
                  f"volume #1 voxelSize {pixel_size_ang:g} style surface",
                  f"volume #2 voxelSize {pixel_size_ang:g} hide",
                  f"color sample #1 map #2 palette {palette}",
                  f"key blue:{lowest_ang:.1f} white:{mid:.1f} red:{highest_ang:.1f} pos 0.05,0.08 size 0.4,0.04",
                  f"2dlabels text '{what} (Å)' xpos 0.05 ypos 0.14 size 16",
                  "view"])


def _quote(path):
    return f'"{os.path.abspath(path)}"'


def _write(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    logger.info("wrote %s", path)
