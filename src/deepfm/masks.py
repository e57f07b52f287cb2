"""Dropout keep masks: cheap to draw, and keyed by (epoch seed, step) inside a training epoch.

Both the plain model path (:class:`deepfm.models.layers.Dropout`) and the fused training kernels
(``deepfm.fast``) take their masks from :func:`keep`, so they compute the same numbers.

Inside :func:`epoch_stream` (the training loop opens one per epoch) the ``k``-th mask of step
``t`` depends only on the epoch's seed, ``t``, ``k``, its shape and ``p``: a run resumed at any
step draws the masks an uninterrupted run draws, whatever the checkpoint frequency. Outside one,
masks come from the global generator (seeded by ``torch.manual_seed``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch

POOL_ELEMENTS = 1 << 20  # mask elements drawn at once per draw slot (1 MiB of uint8 at p = 0.5)


def keep_mask(shape: tuple[int, ...], p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dropout's scaled keep mask: ``1 / (1 - p)`` with probability ``1 - p``, else 0.

    Drawn from ``generator`` (default: the global one), cheaply: ``bernoulli_`` on CPU costs one
    generator call per element (~0.25 ms for 1024 x 16, once the largest single cost of a
    training step here). For ``p = 0.5`` every random bit is a keep flag, so one 64-bit draw
    serves 64 elements, and the mask is ``uint8`` (values 0 and 2: a quarter of the memory, and
    multiplying a float tensor by it gives float). For other ``p`` each 64-bit draw gives four
    16-bit uniforms compared with ``p`` (``p`` is rounded to a multiple of 2**-16) and the mask
    is float32.
    """
    n = math.prod(shape)
    scale = keep_scale(p)
    if p == 0.5:
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 63) // 64,), dtype=torch.int64, generator=generator)
        keep = np.unpackbits(words.numpy().view(np.uint8), count=n)
        keep += keep  # 0 / 2
    else:
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, generator=generator)
        uniform = words.numpy().view(np.int16)[:n]
        keep = (uniform >= round(p * 65536) - 32768).astype(np.float32)
        keep *= np.float32(scale)
    return torch.from_numpy(keep).view(shape)


def keep_scale(p: float) -> float:
    """The value of a kept entry in :func:`keep_mask`'s masks, exactly: ``1 / (1 - p)`` in float32
    (2 for ``p = 0.5``)."""
    return 2.0 if p == 0.5 else float(np.float32(1.0 / (1.0 - p)))


class MaskStream:
    """The masks of one epoch, keyed by ``(seed, step, k, shape, p)`` (``k``: draw within the step).

    Draws are pooled: for each draw slot ``k`` the masks of up to :data:`POOL_ELEMENTS` elements
    (~64 steps of a MovieLens MLP) are drawn at once from a generator seeded by the block of
    steps, so pooling changes nothing but the cost.
    """

    def __init__(self, seed: int, step: int = 0) -> None:
        self.seed = seed
        self.step = step
        self._draw = 0
        self._pools: dict[tuple, tuple[int, torch.Tensor]] = {}

    def at(self, step: int) -> None:
        """The masks drawn next belong to ``step`` (0-based within the epoch)."""
        self.step, self._draw = step, 0

    def keep(self, shape: tuple[int, ...], p: float, dtype: torch.dtype | None = None) -> torch.Tensor:
        k = self._draw
        self._draw += 1
        ahead = max(1, POOL_ELEMENTS // max(1, math.prod(shape)))
        block = self.step // ahead
        slot = (k, tuple(shape), float(p))  # what the draw depends on; the dtype only converts it
        pool = self._pools.get((slot, dtype))
        if pool is None or pool[0] != block:
            seed = hash((self.seed, block, *slot)) & (2**63 - 1)  # ints/floats hash the same everywhere
            mask = keep_mask((ahead, *shape), p, torch.Generator().manual_seed(seed))
            pool = (block, mask.to(_mask_dtype(mask.dtype, dtype)))
            self._pools[(slot, dtype)] = pool
        return pool[1][self.step % ahead]


def _mask_dtype(mask: torch.dtype, like: torch.dtype | None) -> torch.dtype:
    """The dtype ``x * mask`` has for ``x`` of dtype ``like``: a mask converted to it once per
    pool gives the same products as multiplying by the drawn mask, without a conversion per
    multiply (4 per step of a 2-layer MLP: ~3% of a MovieLens step)."""
    return mask if like is None else torch.promote_types(like, mask)


_stream: MaskStream | None = None


def keep(shape: tuple[int, ...], p: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """This draw's keep mask: from the epoch's stream inside :func:`epoch_stream`, else from the
    global generator. With ``dtype`` (the dtype of what it multiplies), in the dtype the product
    has (the same values: the mask's are 0 and ``1 / (1 - p)``)."""
    if _stream is None:
        mask = keep_mask(tuple(shape), p)
        return mask.to(_mask_dtype(mask.dtype, dtype))
    return _stream.keep(tuple(shape), p, dtype)


@contextlib.contextmanager
def epoch_stream(seed: int, step: int = 0) -> Iterator[MaskStream]:
    """Within: masks keyed by ``(seed, step)`` (call ``stream.at(step)`` before each step);
    after, even on an error, from the global generator again."""
    global _stream
    previous, _stream = _stream, MaskStream(seed, step)
    try:
        yield _stream
    finally:
        _stream = previous
