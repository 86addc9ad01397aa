# SPDX-License-Identifier: Apache-2.0
"""An onnxruntime-like session over a program on a simulated device.

Example:
    >>> from npusim.runtime import Session                       # doctest: +SKIP
    >>> sess = Session("resnet50.npub")                    # doctest: +SKIP
    >>> (features,) = sess.run(None, {"images": x})        # doctest: +SKIP
    >>> sess.last_stats.latency_us                         # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npusim.simulator.config import DeviceConfig, load_device
from npusim.simulator.device import Device, InputError, RunStats
from npusim.simulator.program import Program


class Session:
    """Runs one program; ``device`` defaults to the program's own target.

    Naming another device checks the program's fingerprint against it, as loading
    a bitstream onto an FPGA of another part would fail.
    """

    def __init__(self, program: Program | str | Path,
                 device: str | Path | DeviceConfig | None = None) -> None:
        self.program = program if isinstance(program, Program) else Program.load(program)
        cfg = self.program.target if device is None else load_device(device)
        self.device = Device(cfg)
        self.device.load(self.program)
        self.last_stats: RunStats | None = None
        self.last_images = 0
        """Images in the last run (a batch runs them one after another)."""

    def get_inputs(self):
        return list(self.program.inputs)

    def get_outputs(self):
        return list(self.program.outputs)

    def run(self, output_names: list[str] | None,
            feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; return the requested outputs (all if ``None``) in order.

        A feed may also hold a batch of inputs for this batch-1 program: ``N`` in place of
        the input's leading 1 (``[N, 3, 224, 224]`` for ``[1, 3, 224, 224]``, as
        onnxruntime takes a batch), or a new leading axis (``[N, *shape]``). The images
        run through the device one after another (:meth:`Device.run_batch`) and each
        output comes back the same way; ``last_stats`` are one image's.
        """
        layout = self._batch_layout(feeds)
        self.last_images = 1
        if layout is None:
            outputs, stats = self.device.run(feeds)
        else:
            kind, images = layout
            self.last_images = images
            batch = {k: self._split(np.asarray(v), kind) for k, v in feeds.items()}
            outputs, stats = self.device.run_batch(batch)
            outputs = {k: self._join(v, kind) for k, v in outputs.items()}
        self.last_stats = stats
        names = output_names or [t.name for t in self.program.outputs]
        unknown = [n for n in names if n not in outputs]
        if unknown:
            raise InputError(f"unknown output '{unknown[0]}'; the program gives "
                             f"{', '.join(outputs)}")
        return [outputs[n] for n in names]

    def _batch_layout(self, feeds: dict[str, np.ndarray]) -> tuple[str, int] | None:
        """``None`` for one input per name, else ``("lead" | "stack", images)``."""
        specs = {t.name: t.shape for t in self.program.inputs}
        kinds = set()
        for name, value in feeds.items():
            shape, want = np.shape(value), specs.get(name)
            if want is None or shape == want:
                kinds.add(None)
            elif len(shape) == len(want) + 1 and shape[1:] == want:
                kinds.add(("stack", shape[0]))
            elif len(want) and want[0] == 1 and len(shape) == len(want) \
                    and shape[1:] == want[1:]:
                kinds.add(("lead", shape[0]))
            else:
                kinds.add(None)  # the device names the mismatch
        if kinds == {None} or not kinds:
            return None
        if len(kinds) > 1:
            raise InputError("the feeds do not agree on a batch: "
                             + ", ".join(f"{k}: {list(np.shape(v))}" for k, v in feeds.items()))
        kind, images = kinds.pop()
        if images < 1:
            raise InputError("a batch needs at least one input")
        return kind, images

    @staticmethod
    def _split(value: np.ndarray, kind: str) -> np.ndarray:
        return value[:, None] if kind == "lead" else value

    @staticmethod
    def _join(value: np.ndarray, kind: str) -> np.ndarray:
        """``[images, *shape]`` back to the caller's layout."""
        if kind == "lead" and value.ndim > 1 and value.shape[1] == 1:
            return value.reshape(value.shape[0], *value.shape[2:])
        return value
