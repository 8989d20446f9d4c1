"""Draw nonuniform/nonuniform_logo.png: a map slice sharp in the core, smoothed at the rim.

Run from the repository root: ``python docs/make_logo.py``.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

rng = np.random.default_rng(7)
n = 128
y, x = np.mgrid[:n, :n] - n / 2
r = np.hypot(x, y)
blobs = np.zeros((n, n))
for cx, cy in rng.uniform(-40, 40, (90, 2)):
    blobs += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 2.2 ** 2))
blobs *= r < 46
sharp = ndimage.gaussian_filter(blobs, 0.6)
smooth = ndimage.gaussian_filter(blobs, 4.0) * 3
w = np.clip((r - 18) / 14, 0, 1)  # core sharp, rim smoothed: the non-uniform idea
img = (1 - w) * sharp + w * smooth
fig = plt.figure(figsize=(1.28, 1.28), dpi=100)
ax = fig.add_axes([0, 0, 1, 1])
ax.imshow(img, cmap="viridis", interpolation="bilinear")
ax.add_patch(plt.Circle((n / 2, n / 2), 30, fill=False, color="white", lw=1.2, ls="--"))
ax.text(n / 2, n - 6, "NU", color="white", ha="center", va="bottom", fontsize=14, weight="bold")
ax.set_axis_off()
fig.savefig("nonuniform/nonuniform_logo.png")
