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
    """Iterate over ``(k, images)``: the images of the k-th array of particle numbers in ``batches``.

    Parameters
    ----------
    particles : Particles
    batches : list of (b,) int arrays
        Particle numbers of each batch, in the order they are to be processed.
    device : backend.Device
        Images are yielded on it (real space, float32, (b, N, N)).
    """

    def __init__(self, particles, batches, device):
        self.particles, self.batches, self.device = particles, [np.asarray(b) for b in batches], device
        box = particles.box_px
        largest = max([len(b) for b in self.batches], default=1)
        self._buffers = [self._host_buffer((largest, box, box)) for _ in range(2)]

    def _host_buffer(self, shape):
        if self.device.is_cpu or self.device.simulated:
            return np.empty(shape, np.float32)
        import cupy

        mem = cupy.cuda.alloc_pinned_memory(int(np.prod(shape)) * 4)
        return np.frombuffer(mem, np.float32, int(np.prod(shape))).reshape(shape)

    def _read(self, k):
        buf = self._buffers[k % 2][: len(self.batches[k])]
        read_images(self.particles, self.batches[k], out=buf)
        return buf

    def __iter__(self):
        n_batches = len(self.batches)
        if n_batches == 0:
            return
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self._read, 0)
            for k in range(n_batches):
                buf = pending.result()
                # The device copy is made before the next read may reuse this batch's buffer (k + 2).
                images = self.device.asarray(buf) if not self.device.is_cpu else buf.copy()
                if k + 1 < n_batches:
                    pending = pool.submit(self._read, k + 1)
                yield k, images
