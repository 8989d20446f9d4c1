"""Per-region comparison of maps against the ground truth (rigid core, flexible domain, belt, solvent).

Used by ``bench_nu.py``. Regions come from ``regions.mrc`` of ``nu_membrane_data.py`` (labels 0 solvent,
1 rigid core, 2 belt, 3 flexible domain). Inside a region (its label dilated by 2 px, with a 3 px soft
edge; solvent: everything beyond 3 px of the particle), for a map M and the truth T:

* ``fsc05_ang``: FSC-0.5 resolution of M against T, both masked by the region with a wider (6 px)
  soft edge; only for the rigid core and the flexible domain (the belt has no detail beyond ~20 Å:
  its masked FSC measures the mask's edge, not the map);
* ``cc``: real-space correlation of M and T over the region's voxels (mask-weighted);
* ``amplitude``: signal amplitude of M relative to T in the shell at ``amp_res_ang``,
  Re Σ M_k T_k* / Σ |T_k|² over that shell of the masked maps: 1 = the truth's amplitude, and noise
  in M does not bias it (for solvent, where T is ~0, the rms of M is reported instead);
* ``rmse``: root-mean-square error of M against T over the region, relative to T's rms over the
  protein (core + flexible domain).
"""

import numpy as np

from nonuniform.engine import fourier, fsc, masks

REGIONS = {"rigid core": 1, "flexible domain": 3, "belt": 2, "solvent": 0}


def region_masks(labels):
    """Soft masks per region name (float32, values in [0, 1])."""
    out = {}
    particle = labels > 0
    for name, lab in REGIONS.items():
        if lab == 0:
            near = masks.dilate(particle, 3.0)
            out[name] = (~near).astype(np.float32)
        else:
            out[name] = masks.soft_edge(masks.dilate(labels == lab, 2.0), 3.0)
    return out


def shell_amplitude(m, t, box, apix, res_ang):
    """Re Σ M T* / Σ |T|² over the Fourier shell at ``res_ang`` (± half a shell)."""
    fm, ft = fourier.rfftn_c(m), fourier.rfftn_c(t)
    sh = fourier.shell_index_rfft(m.shape)
    s = int(round(box * apix / res_ang))
    sel = sh == s
    den = float(np.sum(np.abs(ft[sel]) ** 2))
    return float(np.sum((fm[sel] * np.conj(ft[sel])).real) / den) if den > 0 else float("nan")


def compare(maps, truth, labels, apix, amp_res_ang):
    """{map name: {region: {fsc05_ang, cc, amplitude, rmse}}} for the given maps (name -> volume)."""
    box = truth.shape[0]
    rm = region_masks(labels)
    fsc_masks = {reg: masks.soft_edge(masks.dilate(labels == REGIONS[reg], 2.0), 6.0)
                 for reg in ("rigid core", "flexible domain")}
    prot = (labels == 1) | (labels == 3)
    t_rms = float(np.sqrt(np.mean(truth[prot] ** 2)))
    out = {}
    for name, m in maps.items():
        row = {}
        for reg, w in rm.items():
            mw, tw = m * w, truth * w
            r = {}
            if reg in ("rigid core", "flexible domain"):
                wf = fsc_masks[reg]
                c = fsc.fsc_curve(m * wf, truth * wf)
                r["fsc05_ang"] = fsc.resolution_at(c, box, apix, 0.5)
            if reg != "solvent":
                r["amplitude"] = shell_amplitude(mw, tw, box, apix, amp_res_ang)
                mm, tt = m[w > 0.5] - np.average(m, weights=w), truth[w > 0.5] - np.average(truth, weights=w)
                r["cc"] = float(np.sum(mm * tt) / np.sqrt(np.sum(mm ** 2) * np.sum(tt ** 2)))
            r["rmse"] = float(np.sqrt(np.average((m - truth) ** 2, weights=w))) / t_rms
            row[reg] = r
        out[name] = row
    return out


def format_table(result, keys=("fsc05_ang", "amplitude", "cc", "rmse")):
    """Markdown table: one row per (map, region)."""
    lines = ["| map | region | FSC-0.5 vs truth (Å) | amplitude vs truth | CC vs truth | rel. RMSE |",
             "|---|---|---|---|---|---|"]
    for name, row in result.items():
        for reg, r in row.items():
            cells = [f"{r[k]:.3f}" if k in r and r[k] is not None else "–" for k in keys]
            lines.append(f"| {name} | {reg} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
