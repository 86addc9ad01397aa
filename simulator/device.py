# SPDX-License-Identifier: Apache-2.0
"""The simulated device: loads a program, runs it with the golden numerics, counts cycles.

Example:
    >>> from compiler import compile_model            # doctest: +SKIP
    >>> dev = Device(load_device("brainwave-s10"))    # doctest: +SKIP
    >>> dev.load(compile_model("model.onnx"))         # doctest: +SKIP
    >>> outputs, stats = dev.run({"images": x})       # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from simulator import isa, kernels
from simulator.config import DeviceConfig
from simulator.host import host_kernel
from simulator.kernels import ConvGeometry
from simulator.numerics import BfpTensor, Rounding, unpack
from simulator.program import Program, ProgramError, TensorDesc
from simulator.schedule import schedule
from simulator.stats import LayerStats, RunStats

__all__ = ["Device", "InputError", "LayerStats", "RunStats"]


class InputError(ValueError):
    """Inputs that do not match the program's input descriptors."""


class Device:
    """One simulated accelerator of configuration ``config``; holds one program at a time."""

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        self.program: Program | None = None
        self._dram: np.ndarray | None = None
        self._weights: dict[int, BfpTensor | np.ndarray] = {}
        self.stats: RunStats | None = None

    def load(self, program: Program) -> None:
        """Load ``program``, replacing the one before; refuse one built for another target."""
        if program.target.fingerprint() != self.config.fingerprint():
            raise ProgramError(
                f"program was built for device '{program.target.name}' "
                f"({program.target.numerics}, fingerprint "
                f"{program.target.fingerprint().hex()[:12]}), not for this device "
                f"'{self.config.name}' ({self.config.numerics}, "
                f"{self.config.fingerprint().hex()[:12]})")
        size = sum(program.memory_map[r][1] for r in program.memory_map)
        if size > self.config.dram_mib * 2**20:
            raise ProgramError(f"program needs {size} bytes of DRAM; the device has "
                               f"{self.config.dram_mib} MiB")
        abase, asize = program.memory_map["activations"]
        dram = np.zeros(abase + asize + 64, dtype=np.uint8)
        wbase, wsize = program.memory_map["weights"]
        cbase, csize = program.memory_map["constants"]
        dram[wbase:wbase + wsize] = np.frombuffer(program.weights, np.uint8)
        dram[cbase:cbase + csize] = np.frombuffer(program.constants, np.uint8)
        weights = {}
        for t in program.weight_tensors:  # the weight memory holds decoded tiles
            raw = program.weights[t.addr:t.addr + t.nbytes]
            if t.dtype == "float32":
                weights[wbase + t.addr] = np.frombuffer(raw, np.float32).reshape(t.shape)
            else:
                weights[wbase + t.addr] = unpack(raw, t.shape, program.target.format(t.dtype))
        self.program, self._dram = program, dram
        self._weights = weights
        self._host = [host_kernel(h.model) for h in program.host_ops]
        # the schedule depends only on the program and the device: price it once
        self.stats = schedule(program, self.config)

    # --- memory access ---
    def _f32(self, addr: int, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64))
        return self._dram[addr:addr + 4 * n].view(np.float32).reshape(shape)

    def _read(self, t: TensorDesc) -> np.ndarray:
        raw = self._dram[t.addr:t.addr + t.nbytes]
        return raw.view(np.dtype(t.dtype)).reshape(t.shape)

    def _store(self, addr: int, value: np.ndarray, dtype=np.float32) -> None:
        flat = np.ascontiguousarray(value, dtype=dtype).reshape(-1)
        self._dram[addr:addr + flat.nbytes] = flat.view(np.uint8)

    def _check_inputs(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        assert self.program is not None
        names = [t.name for t in self.program.inputs]
        unknown = sorted(set(inputs) - set(names))
        if unknown:
            raise InputError(f"unknown input '{unknown[0]}'; the program takes "
                             f"{', '.join(names)}")
        arrays = []
        for t in self.program.inputs:
            if t.name not in inputs:
                raise InputError(f"missing input '{t.name}' of shape {list(t.shape)}")
            a = np.asarray(inputs[t.name])
            want = np.dtype(t.dtype)
            if a.dtype != want and not (a.dtype.kind in "fiu" and want.kind in "f"):
                raise InputError(f"input '{t.name}' has dtype {a.dtype}, expected {want}")
            if tuple(a.shape) != t.shape:
                raise InputError(f"input '{t.name}' has shape {list(a.shape)}, "
                                 f"expected {list(t.shape)}")
            arrays.append(a.astype(want, copy=False))
        return arrays

    def run(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], RunStats]:
        """Execute the loaded program on ``inputs``; returns the outputs and the stats."""
        if self.program is None:
            raise ProgramError("no program loaded")
        prog = self.program
        host_in = self._check_inputs(inputs)
        host_out: dict[str, np.ndarray] = {}
        fmt = prog.target.format()
        rounding = Rounding(prog.metadata.get("rounding", "nearest_even"))
        for i in prog.instructions:
            self._execute(i, host_in, host_out, fmt, rounding)
        return host_out, self.stats

    def _execute(self, i: isa.Instruction, host_in, host_out, fmt, rounding) -> None:
        prog = self.program
        if isinstance(i, isa.VRd):
            self._store(i.dst, host_in[i.io], host_in[i.io].dtype)
        elif isinstance(i, isa.VWr):
            t = prog.outputs[i.io]
            host_out[t.name] = self._read(t).copy()
        elif isinstance(i, isa.HostCall):
            h = prog.host_ops[i.index]
            out = self._host[i.index]([self._read(t) for t in h.inputs])
            self._store(h.output.addr, out, np.dtype(h.output.dtype))
        elif isinstance(i, isa.MvMul):
            self._mv_mul(i, fmt, rounding)
        elif isinstance(i, isa.VvAdd):
            a, b = self._f32(i.src0, (i.length,)), self._f32(i.src1, (i.length,))
            y = kernels.alu("add", a, b)
            self._store(i.dst, kernels.relu(y) if i.relu else y)
        elif isinstance(i, isa.VRelu):
            self._store(i.dst, kernels.relu(self._f32(i.src, (i.length,))))
        elif isinstance(i, isa.VSoftmax):
            self._store(i.dst, kernels.softmax(self._f32(i.src, (i.rows, i.cols)), -1))
        elif isinstance(i, isa.VPool):
            self._pool(i)
        elif isinstance(i, isa.VvAlu):
            a = self._f32(i.src0, (i.length,))
            if i.bcast == isa.Broadcast.CHANNEL:
                b = self._f32(i.src1, (1, i.channels, 1))
                a = a.reshape(-1, i.channels, i.plane)
            else:
                b = self._f32(i.src1, (i.length if i.bcast == isa.Broadcast.NONE else 1,))
            self._store(i.dst, kernels.alu(isa.AluOp(i.op).name.lower(), a, b))
        elif isinstance(i, isa.VUnary):
            alpha, beta = (float(np.uint32(v).view(np.float32)) for v in (i.alpha, i.beta))
            self._store(i.dst, kernels.unary(isa.UnaryFn(i.fn).name.lower(),
                                             self._f32(i.src, (i.length,)), alpha, beta))
        elif isinstance(i, isa.VCopy):
            src = self._dram[i.src:i.src + 4 * i.rows * i.src_stride].view(np.float32)
            dst = self._dram[i.dst:i.dst + 4 * ((i.rows - 1) * i.dst_stride + i.row_len)]
            dst = dst.view(np.float32)
            dst_rows = np.lib.stride_tricks.as_strided(
                dst, (i.rows, i.row_len), (4 * i.dst_stride, 4))
            dst_rows[:] = src.reshape(i.rows, i.src_stride)[:, :i.row_len]

    def _mv_mul(self, i: isa.MvMul, fmt, rounding) -> None:
        x = self._f32(i.src, (i.batch, i.channels, i.height, i.width))
        w = self._weights[i.weights]
        bias = self._f32(i.bias, (i.out_channels,))
        geom = ConvGeometry((i.kernel_h, i.kernel_w), (i.stride_h, i.stride_w),
                            (i.pad_top, i.pad_left, i.pad_bottom, i.pad_right),
                            (i.dilation_h, i.dilation_w), i.groups)
        oh, ow = geom.output_hw(i.height, i.width)
        out_shape = (i.batch, i.out_channels, oh, ow)
        seed = int(self.program.metadata.get("seed", 0))
        if (i.kernel_h, i.kernel_w, i.height, i.width) == (1, 1, 1, 1):  # dense layer
            res = self._f32(i.residual, (i.batch, i.out_channels)) if i.has_residual else None
            y = kernels.dense(x.reshape(i.batch, i.channels), w, bias, fmt, res, bool(i.relu),
                              rounding, seed)
        else:
            res = self._f32(i.residual, out_shape) if i.has_residual else None
            y = kernels.conv2d(x, w, bias, geom, fmt, res, bool(i.relu), rounding, seed)
        self._store(i.dst, y)

    def _pool(self, i: isa.VPool) -> None:
        x = self._f32(i.src, (i.batch, i.channels, i.height, i.width))
        if i.mode == isa.PoolMode.GLOBAL_AVG:
            y = kernels.global_avgpool(x)
        elif i.mode == isa.PoolMode.GLOBAL_MAX:
            y = kernels.global_maxpool(x)
        else:
            geom = ConvGeometry((i.kernel_h, i.kernel_w), (i.stride_h, i.stride_w),
                                (i.pad_top, i.pad_left, i.pad_bottom, i.pad_right))
            if i.mode == isa.PoolMode.MAX:
                y = kernels.maxpool(x, geom, bool(i.ceil_mode))
            else:
                y = kernels.avgpool(x, geom, bool(i.ceil_mode), bool(i.count_include_pad))
        self._store(i.dst, y)
