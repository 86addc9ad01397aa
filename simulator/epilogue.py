# SPDX-License-Identifier: Apache-2.0
"""What follows a product's reduction (bias, residual, ReLU, clip), in place or on the way
into place (:mod:`npusim.simulator.gemm`)."""

from __future__ import annotations

import numpy as np

from npusim.simulator import _fast_gemm, _vnni

_NONE1 = np.empty(0, np.float32)
_NONE2 = np.empty((0, 0), np.float32)


class Epilogue:
    """What follows the reduction, per image: ``+ bias``, ``+ residual``, ReLU (fused into
    the pass that makes each slice of output rows, while it is in cache)."""

    def __init__(self, bias: np.ndarray | None, residual: np.ndarray | None, relu: bool,
                 out_shape: tuple[int, ...], clip: tuple[float, float] | None = None) -> None:
        self.bias = _NONE1 if bias is None else np.ascontiguousarray(bias, np.float32)
        self.residual = (None if residual is None else
                         np.ascontiguousarray(residual, np.float32).reshape(out_shape[0],
                                                                            out_shape[1], -1))
        self.relu = bool(relu)
        self.clip = clip is not None
        self.lo, self.hi = (np.float32(clip[0]), np.float32(clip[1])) if clip else (0, 0)

    def apply(self, image: int, plane: np.ndarray, o0: int, o1: int, n0: int, n1: int
              ) -> None:
        """On rows ``[o0, o1)`` and columns ``[n0, n1)`` of image ``image``'s result
        ``plane [O, N]`` (C-contiguous)."""
        if not self.bias.size and self.residual is None and not self.relu and not self.clip:
            return
        res = _NONE2 if self.residual is None else self.residual[image]
        _fast_gemm.epilogue(plane, o0, o1, n0, n1, self.bias, res, self.relu, self.clip,
                            np.float32(self.lo), np.float32(self.hi))

    def finisher(self, image: int, plane: np.ndarray, base: int = 0) -> Finisher:
        """``finish(o0, o1, n0, n1)`` for a product that writes rows ``base...`` of
        ``plane``: the epilogue on the rows and columns it has just made."""
        return Finisher(self, image, plane, base)


class Finisher:
    """The epilogue of one image's product that writes rows ``base...`` of ``plane``:
    called ``(o0, o1, n0, n1)`` on what the product has just made in place, or
    :meth:`store` to move a result made elsewhere into place with the epilogue on the way."""

    def __init__(self, epi: Epilogue, image: int, plane: np.ndarray, base: int) -> None:
        self.epi, self.image, self.plane, self.base = epi, image, plane, base

    def __call__(self, o0: int, o1: int, n0: int, n1: int) -> None:
        self.epi.apply(self.image, self.plane, self.base + o0, self.base + o1, n0, n1)

    def in_register(self) -> tuple[np.ndarray, bool, bool, np.float32, np.float32] | None:
        """``(bias, relu, clip, lo, hi)`` for a kernel that applies the epilogue to its
        sums before it stores them (``bias`` empty when there is none), or None when there
        is a residual to add (the kernel then stores the bare sums and calls the finisher
        on them)."""
        epi = self.epi
        if epi.residual is not None:
            return None
        return epi.bias, epi.relu, epi.clip, np.float32(epi.lo), np.float32(epi.hi)

    def whole(self) -> tuple[np.ndarray, np.ndarray, bool, bool, np.float32, np.float32]:
        """``(bias, residual, relu, clip, lo, hi)`` for a kernel that applies the whole
        epilogue in its registers, from row ``base`` of the plane on: ``bias`` and
        ``residual`` (``[rows, N]``) empty when there is none."""
        epi = self.epi
        res = _NONE2 if epi.residual is None else epi.residual[self.image, self.base:]
        return (epi.bias[self.base:], res, epi.relu, epi.clip, np.float32(epi.lo),
                np.float32(epi.hi))

    def store(self, t: np.ndarray, width: int, ow: int, rows: int, o: int, n0: int,
              groups: tuple[int, int] | None = None) -> None:
        """Output rows ``0...o`` from ``t [>= o, >= rows * width]`` (``rows`` lines of
        ``width`` pixels, the first ``ow`` of each wanted) into columns ``n0...`` of the
        plane, with the epilogue, in one pass; with ``groups = (og, pad)``, ``t`` holds
        each group's ``og`` rows padded to ``pad``."""
        epi = self.epi
        res = _NONE2 if epi.residual is None else epi.residual[self.image]
        og, pad = groups or (o, o)
        _vnni.store(t, width, ow, rows, o, self.plane, self.base, n0, epi.bias, res,
                    epi.relu, epi.clip, np.float32(epi.lo), np.float32(epi.hi), og, pad)
