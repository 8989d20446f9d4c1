"""Particle images streamed batch by batch from their memory-mapped stacks, one batch ahead.

A background thread reads batch k+1 (and checks it) while batch k is being aligned, so disk and
page-cache reads overlap the compute; on a GPU it reads into page-locked (pinned) host buffers,
whose upload to the device is a fast DMA. Memory holds two batches of images, whatever the number
of particles.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .particles import read_images


class ImageBatches:
    """Iterate over ``(slice, images)`` of the particles ``indices`` in batches of ``batch``.

    Parameters
    ----------
    particles : Particles
    indices : (m,) int
        Particle numbers, in the order they are to be processed.
    batch : int
        Images per batch.
    device : backend.Device
        Images are yielded on it (real space, float32, (k, N, N)).
    """

    def __init__(self, particles, indices, batch, device):
        self.particles, self.indices, self.batch, self.device = particles, np.asarray(indices), batch, device
        box = particles.box_px
        self._buffers = [self._host_buffer((min(batch, max(len(self.indices), 1)), box, box)) for _ in range(2)]

    def _host_buffer(self, shape):
        if self.device.is_cpu or self.device.simulated:
            return np.empty(shape, np.float32)
        import cupy

        mem = cupy.cuda.alloc_pinned_memory(int(np.prod(shape)) * 4)
        return np.frombuffer(mem, np.float32, int(np.prod(shape))).reshape(shape)

    def _read(self, k):
        sl = slice(k * self.batch, min(len(self.indices), (k + 1) * self.batch))
        buf = self._buffers[k % 2][: sl.stop - sl.start]
        read_images(self.particles, self.indices[sl], out=buf)
        return sl, buf

    def __iter__(self):
        n_batches = -(-len(self.indices) // self.batch)
        if n_batches == 0:
            return
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self._read, 0)
            for k in range(n_batches):
                sl, buf = pending.result()
                # The device copy is made before the next read may reuse this batch's buffer (k + 2).
                images = self.device.asarray(buf) if not self.device.is_cpu else buf.copy()
                if k + 1 < n_batches:
                    pending = pool.submit(self._read, k + 1)
                yield sl, images
