# SPDX-License-Identifier: Apache-2.0
"""The simulated device: loads a program, runs it with the golden numerics, counts cycles.

Example:
    >>> from npusim.compiler import compile_model            # doctest: +SKIP
    >>> dev = Device(load_device("brainwave-s10"))    # doctest: +SKIP
    >>> dev.load(compile_model("model.onnx"))         # doctest: +SKIP
    >>> outputs, stats = dev.run({"images": x})       # doctest: +SKIP
"""

from __future__ import annotations

import functools
import math

import numpy as np

from npusim.simulator import isa, kernels, threads
from npusim.simulator.config import DeviceConfig
from npusim.simulator.fused import ELEMENTWISE_GRAIN, FusedPasses
from npusim.simulator.host import HostKernel, HostOpError, host_kernel
from npusim.simulator.kernels import ConvGeometry
from npusim.simulator.numerics import FP32, BfpTensor, Rounding, unpack
from npusim.simulator.program import Program, ProgramError, TensorDesc
from npusim.simulator.progress import task
from npusim.simulator.schedule import program_work, schedule
from npusim.simulator.stats import LayerStats, RunStats

__all__ = ["Device", "ExecutionError", "InputError", "LayerStats", "RunStats"]


class InputError(ValueError):
    """Inputs that do not match the program's input descriptors."""


class ExecutionError(RuntimeError):
    """An instruction the device cannot execute: it addresses memory outside device DRAM,
    indexes out of range, or has inconsistent fields."""


@functools.lru_cache(maxsize=1024)
def _unary_fn(fn: int, alpha: int, beta: int):
    """``f(x, out)`` of a V_UNARY's fields (decoded once; a network runs the same few)."""
    name = isa.UnaryFn(fn).name.lower()
    a, b = isa.bits_f32(alpha), isa.bits_f32(beta)
    return lambda x, out: kernels.unary(name, x, a, b, out)


@functools.lru_cache(maxsize=64)
def _alu_fn(op: int, rev: bool):
    """``f(a, b, out)`` of a VV_ALU's operation (``b`` first when reversed)."""
    name = isa.AluOp(op).name.lower()
    if rev:
        return lambda a, b, out: kernels.alu(name, b, a, out)
    return lambda a, b, out: kernels.alu(name, a, b, out)


SPARE_ARENA_BYTES = 1 << 26
"""A run's arena up to this size is kept for the next run of the same batch size."""


class Device:
    """One simulated accelerator of configuration ``config``; holds one program at a time."""

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        self.program: Program | None = None
        self._dram: np.ndarray | None = None
        self._weights: dict[int, BfpTensor | np.ndarray] = {}
        self.stats: RunStats | None = None
        self._arena: np.ndarray | None = None  # [images, arena bytes] during a run
        self._spare: np.ndarray | None = None  # the last run's arena, for the next
        self._regions: dict[tuple[int, int], tuple[bool, int]] = {}  # checked ranges
        self._prepared: dict[tuple, object] = {}  # views and plans into the current arena
        self._host_mem: list[dict[str, object]] = []
        self._fused: FusedPasses | None = None
        self.fuse = True
        """Whether runs of element-wise instructions and sigmoid-multiply pairs run as one
        pass each (:mod:`~npusim.simulator.fused`; the same bits either way)."""

    def load(self, program: Program) -> None:
        """Load ``program``, replacing the one before; refuse one built for another target."""
        if program.target.fingerprint() != self.config.fingerprint():
            raise ProgramError(
                f"program was built for device '{program.target.name}' "
                f"({program.target.numerics}, fingerprint "
                f"{program.target.fingerprint().hex()[:12]}), not for this device "
                f"'{self.config.name}' ({self.config.numerics}, "
                f"{self.config.fingerprint().hex()[:12]})")
        program.check()  # a program built in memory gets the checks a loaded one had
        end = max(base + size for base, size in program.memory_map.values())
        dram = np.zeros(end + 64, dtype=np.uint8)
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
        self._spare, self._regions, self._prepared = None, {}, {}
        self._host = [self._host_kernel(k, h) for k, h in enumerate(program.host_ops)]
        works = program_work(program, self.config)
        self._fused = FusedPasses(program.instructions, works)
        # the schedule depends only on the program and the device: price it once
        self.stats = schedule(program, self.config, works)

    @staticmethod
    def _host_kernel(k: int, h) -> HostKernel:
        try:
            kernel = host_kernel(h.model)
        except HostOpError as exc:
            raise ProgramError(f"host op {k} ({h.op}): {exc}") from None
        ins, outs = kernel.session.get_inputs(), kernel.session.get_outputs()
        if (len(ins), len(outs)) != (len(h.inputs), len(h.outputs)):
            raise ProgramError(f"host op {k} ({h.op}): its model takes {len(ins)} inputs and "
                               f"makes {len(outs)} outputs; the program gives "
                               f"{len(h.inputs)} and expects {len(h.outputs)}")
        return kernel

    # --- memory access: every value is [images, ...] -------------------------------------
    def _region(self, addr: int, nbytes: int, what: str) -> tuple[bool, int]:
        """``(in the activation arena, offset)`` of a byte range that lies in one region."""
        key = (addr, nbytes)
        found = self._regions.get(key)
        if found is None:
            found = self._regions[key] = self._check_region(addr, nbytes, what)
        return found

    def _check_region(self, addr: int, nbytes: int, what: str) -> tuple[bool, int]:
        base, size = self.program.memory_map["activations"]
        if base <= addr and addr + nbytes <= base + size:
            return True, addr - base
        if addr < 0 or addr + nbytes > self._dram.size or (addr < base + size
                                                           and addr + nbytes > base):
            raise ExecutionError(f"{what}: bytes [{addr}, {addr + nbytes}) are outside device "
                                 f"DRAM ({self._dram.size} bytes in use) or straddle the "
                                 "activation arena")
        return False, addr

    def _bytes(self, addr: int, nbytes: int, what: str) -> np.ndarray:
        """``[images, nbytes]`` uint8: a view of each image's arena, or the shared image."""
        arena, off = self._region(addr, nbytes, what)
        if arena:
            return self._arena[:, off:off + nbytes]
        return np.broadcast_to(self._dram[off:off + nbytes], (self._arena.shape[0], nbytes))

    def _f32(self, addr: int, shape: tuple[int, ...], what: str = "read") -> np.ndarray:
        """``[images, *shape]`` float32 at ``addr``: a view, made once per arena (a layer
        reads three or four operands, and numpy takes microseconds per view)."""
        key = (addr, shape)
        view = self._prepared.get(key)
        if view is None:
            images = self._arena.shape[0]
            view = self._prepared[key] = self._bytes(addr, 4 * math.prod(shape), what).view(
                np.float32).reshape(images, *shape)
        return view

    # what a pass of several instructions (:mod:`~npusim.simulator.fused`) reads memory by
    def prepared(self, key: tuple, make):
        """``make()``, made once per arena (``()`` when it raises an ExecutionError)."""
        plan = self._prepared.get(key)
        if plan is None:
            try:
                plan = make()
            except ExecutionError:
                plan = ()
            self._prepared[key] = plan
        return plan

    def in_arena(self, addr: int, nbytes: int) -> bool:
        """Whether a byte range lies in the activation arena (ExecutionError when it is
        outside device DRAM)."""
        return self._region(addr, nbytes, "operand")[0]

    def view(self, addr: int, shape: tuple[int, ...], what: str = "read") -> np.ndarray:
        """``[images, *shape]`` float32 at ``addr`` (:meth:`_f32`)."""
        return self._f32(addr, shape, what)

    def _read(self, t: TensorDesc) -> np.ndarray:
        images = self._arena.shape[0]
        return self._bytes(t.addr, t.nbytes, "read").view(np.dtype(t.dtype)).reshape(
            images, *t.shape)

    def _store(self, addr: int, value: np.ndarray, dtype=np.float32) -> None:
        """Store ``value`` (``[images, ...]``) at ``addr`` of each image's arena."""
        images = self._arena.shape[0]
        flat = np.ascontiguousarray(value, dtype=dtype).reshape(images, -1).view(np.uint8)
        arena, off = self._region(addr, flat.shape[1], "write")
        if not arena:
            raise ExecutionError(f"write: bytes [{addr}, {addr + flat.shape[1]}) are outside "
                                 "the activation arena")
        self._arena[:, off:off + flat.shape[1]] = flat

    def _check_inputs(self, inputs: dict[str, np.ndarray], images: int) -> list[np.ndarray]:
        """The inputs as ``[images, *shape]`` arrays of the program's dtypes."""
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
            if tuple(a.shape) != (images, *t.shape):
                expected = [images, *t.shape] if images > 1 else list(t.shape)
                got = list(a.shape) if images > 1 else list(a.shape[1:])
                raise InputError(f"input '{t.name}' has shape {got}, expected {expected}")
            arrays.append(a.astype(want, copy=False))
        return arrays

    def run(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], RunStats]:
        """Execute the loaded program on ``inputs``; returns the outputs and the stats."""
        outputs, stats = self.run_batch({k: np.asarray(v)[None] for k, v in inputs.items()})
        return {k: v[0] for k, v in outputs.items()}, stats

    def run_batch(self, inputs: dict[str, np.ndarray]
                  ) -> tuple[dict[str, np.ndarray], RunStats]:
        """Run the program on a batch of images, one after another on the device: each
        input is ``[images, *shape]`` and so is each output. The stats are one image's
        (the device takes ``images`` times its latency).

        The host does the images' work together wherever the golden result allows it:
        the rows of a product and the elements of a vector operation are independent, so
        each instruction runs once over the whole batch.
        """
        if self.program is None:
            raise ProgramError("no program loaded")
        prog = self.program
        sizes = {np.shape(v)[0] if np.ndim(v) else 0 for v in inputs.values()}
        if len(sizes) > 1 or 0 in sizes:
            raise InputError("the inputs of a batch must all have the same leading "
                             f"(image) axis; got {sorted(sizes)}")
        images = sizes.pop() if sizes else 1
        host_in = self._check_inputs(inputs, images)
        host_out: dict[str, np.ndarray] = {}
        fmt = prog.target.format()
        rounding = Rounding(prog.metadata.get("rounding", "nearest_even"))
        self._arena = self._fresh_arena(images)
        # host-resident values, one run's worth per image
        self._host_mem: list[dict[str, object]] = [{} for _ in range(images)]
        try:
            with (np.errstate(all="ignore"),  # fp32 arithmetic as the device's: inf and NaN
                  threads.hold(),  # sleeping compute threads wake now, and sleep at the end
                  task("simulate", total=len(prog.instructions), unit="instr") as progress):
                instructions, k = prog.instructions, 0
                fused = self._fused if self.fuse else None
                while k < len(instructions):
                    i = instructions[k]
                    ran = fused.run(k, self) if fused is not None else 0
                    if ran:
                        k += ran
                        progress.update(ran)
                        continue
                    self._execute(i, host_in, host_out, fmt, rounding)
                    k += 1
                    progress.update()
            for t in prog.outputs:  # outputs the host computed never went to the device
                if t.name not in host_out and t.name in self._host_mem[0]:
                    host_out[t.name] = np.stack([np.asarray(m[t.name]) for m in self._host_mem])
        finally:
            if self._arena.nbytes <= SPARE_ARENA_BYTES:
                self._spare = self._arena
            self._arena = None
        return host_out, self.stats

    def _fresh_arena(self, images: int) -> np.ndarray:
        """A zeroed arena for ``images``: the last run's again when it fits (its pages
        are mapped and the views into it made), else a new one."""
        shape = (images, self.program.memory_map["activations"][1])
        spare, self._spare = self._spare, None
        if spare is not None and spare.shape == shape:
            spare.fill(0)
            return spare
        self._prepared = {}
        return np.zeros(shape, np.uint8)

    def _execute(self, i: isa.Instruction, host_in, host_out, fmt, rounding) -> None:
        prog = self.program
        if isinstance(i, isa.VRd):
            self._store(i.dst, host_in[i.io], host_in[i.io].dtype)
        elif isinstance(i, isa.VWr):
            t = prog.outputs[i.io]
            host_out[t.name] = self._read(t).copy()
        elif isinstance(i, isa.HostCall):
            self._host_call(i)
        elif isinstance(i, isa.MvMul):
            self._mv_mul(i, rounding)
        elif isinstance(i, isa.MmMul):
            a = self._f32(i.src_a, (i.batch, i.m, i.k))
            b = self._f32(i.src_b, (1 if i.b_shared else i.batch, i.k, i.n))
            seed = int(self.program.metadata.get("seed", 0))
            self._store(i.dst, [kernels.matmul_act(a[n], b[n], fmt, rounding, seed)
                                for n in range(a.shape[0])])
        elif isinstance(i, isa.VvAdd):
            def add(a, b, out, relu=bool(i.relu)):
                y = kernels.alu("add", a, b, out)
                return kernels.relu(y, out=y) if relu else y

            self._map(i.dst, (i.length,), add, [(i.src0, None), (i.src1, None)])
        elif isinstance(i, isa.VRelu):
            self._map(i.dst, (i.length,), kernels.relu, [(i.src, None)])
        elif isinstance(i, isa.VSoftmax):
            self._store(i.dst, kernels.softmax(self._f32(i.src, (i.rows, i.cols)), -1))
        elif isinstance(i, isa.VPool):
            self._pool(i)
        elif isinstance(i, isa.VvAlu):
            self._alu(i)
        elif isinstance(i, isa.VUnary):
            self._map(i.dst, (i.length,), _unary_fn(i.fn, i.alpha, i.beta), [(i.src, None)])
        elif isinstance(i, isa.VReduce):
            x = self._f32(i.src, (i.outer, i.mid, i.inner))
            y = kernels.reduce(x.reshape(x.shape[0] * i.outer, i.mid, i.inner),
                               isa.ReduceMode(i.mode).name.lower())
            self._store(i.dst, y)
        elif isinstance(i, isa.VNorm):
            n = i.channels or i.cols
            x = self._f32(i.src, (i.rows, i.cols))
            scale, bias = self._f32(i.scale, (n,))[0], self._f32(i.bias, (n,))[0]
            eps = isa.bits_f32(i.epsilon)
            if i.channels and i.rows % i.channels:  # rows of one image do not repeat
                y = [kernels.norm(xi, scale, bias, eps, i.channels) for xi in x]
            else:
                y = kernels.norm(x.reshape(x.shape[0] * i.rows, i.cols), scale, bias, eps,
                                 i.channels)
            self._store(i.dst, y)
        elif isinstance(i, isa.VResize):
            x = self._f32(i.src, (i.planes, i.in_h, i.in_w))
            self._store(i.dst, kernels.resize(
                x.reshape(x.shape[0] * i.planes, i.in_h, i.in_w), (i.out_h, i.out_w),
                isa.ResizeMode(i.mode).name.lower(), isa.CoordMode(i.coord).name.lower(),
                isa.NearestMode(i.nearest).name.lower(),
                (isa.bits_f32(i.scale_h), isa.bits_f32(i.scale_w))))
        elif isinstance(i, isa.VMove):
            self._move(i)
        elif isinstance(i, isa.VPad):
            x = self._f32(i.src, (i.outer, i.height, i.width))
            pads = (i.pad_top, i.pad_left, i.pad_bottom, i.pad_right)
            self._store(i.dst, kernels.pad2d(x.reshape(x.shape[0] * i.outer, i.height, i.width),
                                             pads, isa.PadMode(i.mode).name.lower(),
                                             isa.bits_f32(i.value)))
        elif isinstance(i, isa.VGather):
            self._gather(i)
        elif isinstance(i, isa.VCopy):
            key = ("copy", id(i))
            views = self._prepared.get(key)
            if views is None:  # once per arena: DenseNet makes 600 copies a run
                src = self._rows(i.src, i.rows, i.row_len, i.src_stride, "V_COPY source")
                dst = self._rows(i.dst, i.rows, i.row_len, i.dst_stride, "V_COPY destination")
                if not dst.flags.writeable:
                    raise ExecutionError("V_COPY destination is outside the activation arena")
                views = self._prepared[key] = (src, dst)
            np.copyto(views[1], views[0])

    def _host_call(self, i: isa.HostCall) -> None:
        """A host op: onnxruntime runs each image's call (host models are batch-1 graphs)."""
        h = self.program.host_ops[i.index]
        stored = {t.name: self._read(t) for t in h.inputs if t.name not in h.on_host}
        results: dict[str, list] = {t.name: [] for t in h.outputs if t.name not in h.on_host}
        for n, mem in enumerate(self._host_mem):
            args = [mem[t.name] if t.name in h.on_host else np.asarray(stored[t.name][n])
                    for t in h.inputs]
            for t, value in zip(h.outputs, self._host[i.index].run(args), strict=True):
                if t.name in h.on_host:  # stays in host memory for a later host call
                    mem[t.name] = value
                    continue
                value = np.asarray(value)
                if value.shape != t.shape or value.dtype.kind != np.dtype(t.dtype).kind:
                    raise ExecutionError(f"host op '{h.op}' made '{t.name}' {value.dtype} "
                                         f"{list(value.shape)}; the program expects "
                                         f"{t.dtype} {list(t.shape)}")
                results[t.name].append(value)
        for t in h.outputs:
            if t.name not in h.on_host:
                self._store(t.addr, np.stack(results[t.name]), np.dtype(t.dtype))

    def _gather(self, i: isa.VGather) -> None:
        table = self._bytes(i.table, 4 * i.count, "V_GATHER table").view("<i4")
        bad = (table < 0) | (table >= i.axis_len)
        if bad.any():
            n, j = np.unravel_index(int(np.argmax(bad)), bad.shape)
            raise ExecutionError(f"V_GATHER index {int(table[n, j])} (entry {j}) is outside "
                                 f"[0, {i.axis_len})")
        x = self._f32(i.src, (i.outer, i.axis_len, i.inner))
        if (table == table[:1]).all():  # one table for every image (a constant one)
            y = kernels.gather(x.reshape(x.shape[0] * i.outer, i.axis_len, i.inner), table[0])
        else:
            y = [kernels.gather(xi, ti) for xi, ti in zip(x, table, strict=True)]
        self._store(i.dst, y)

    def _rows(self, addr: int, rows: int, row_len: int, stride: int, what: str) -> np.ndarray:
        """``rows`` fp32 rows of ``row_len`` elements, ``stride`` elements apart, of each
        image: a ``[images, rows, row_len]`` view."""
        span = 4 * ((rows - 1) * stride + row_len)
        flat = self._bytes(addr, span, what).view(np.float32)
        return np.lib.stride_tricks.as_strided(
            flat, (flat.shape[0], rows, row_len), (flat.strides[0], 4 * stride, 4),
            writeable=flat.flags.writeable)

    def _alu(self, i: isa.VvAlu) -> None:
        if i.div < 1 or i.mod < 1 or i.length % (i.div * i.mod):
            raise ExecutionError(f"VV_ALU: length {i.length} is not a multiple of div {i.div} "
                                 f"x mod {i.mod}")
        # the broadcast operand is read once per (div, mod) period: b[(k // div) % mod]
        shape = (i.length // (i.div * i.mod), i.mod, i.div)
        self._map(i.dst, shape, _alu_fn(i.op, bool(i.rev)),
                  [(i.src0, None), (i.src1, (1, i.mod, 1))])

    def _map(self, dst: int, shape: tuple[int, ...], fn,
             srcs: list[tuple[int, tuple[int, ...] | None]]) -> None:
        """An element-wise instruction: ``fn(*sources, out)`` into ``dst``. A source is
        ``(addr, None)``, read as ``[images, *shape]``, or ``(addr, its shape)``, one
        broadcast against the others. ``fn`` may write into ``out`` (an array of the
        result's shape) and return it, or return a new array.

        The result is written straight into the arena, a large one cut along the first
        axis of ``shape`` longer than 1 into one share per thread (a broadcast source is
        cut along it too where it has that axis whole). A destination that overlaps a
        source other than exactly (a same-shaped one, in place) is computed whole, then
        stored.
        """
        key = ("map", dst, shape, *srcs)
        plan = self._prepared.get(key)
        if plan is None:
            plan = self._prepared[key] = self._map_plan(dst, shape, srcs)
        ins, out, axis = plan
        if out is None:
            self._store(dst, fn(*ins, None))
            return
        tasks = out.shape[axis]
        total = out.size
        if total < ELEMENTWISE_GRAIN or tasks < 2:  # one share: no cuts
            y = fn(*ins, out)
            if y is not out:
                out[...] = y
            return

        def share(a: int, b: int) -> None:
            cut = (slice(None),) * axis + (slice(a, b),)
            o = out[cut]
            y = fn(*(x[cut] if x.shape[axis] == tasks else x for x in ins), o)
            if y is not o:
                o[...] = y

        threads.run(share, tasks, grain=max(1, ELEMENTWISE_GRAIN * tasks // total))

    def _map_plan(self, dst: int, shape: tuple[int, ...],
                  srcs: tuple[tuple[int, tuple[int, ...] | None], ...]):
        """``(sources, out, axis)`` of :meth:`_map`: the operands' views, the result's (None
        when it goes through :meth:`_store`) and the axis the threads cut."""
        nbytes = 4 * math.prod(shape)
        ins = [self._f32(a, s or shape) for a, s in srcs]
        arena, off = self._region(dst, nbytes, "write")
        overlap = any(not (a == dst and s is None) and a < dst + nbytes and dst < a + x[0].nbytes
                      for (a, s), x in zip(srcs, ins, strict=True))
        if not arena or overlap or not shape:
            return ins, None, 0
        out = self._f32(dst, shape, "write")
        axis = next((k for k, n in enumerate(shape) if n > 1), 0) + 1  # of [images, *shape]
        return ins, out, axis

    def _move(self, i: isa.VMove) -> None:
        lo, hi = kernels.move_span(i.dims, i.strides)
        if hi < lo:
            return
        first, end = i.src + 4 * lo, i.src + 4 * hi + 4
        window = self._bytes(first, end - first, "V_MOVE source").view(np.float32)
        direct = self._direct_out(i.dst, tuple(i.dims), [(first, end - first)])
        if direct is not None:
            kernels.move(window[0], -lo, i.dims, i.strides, out=direct)
            return
        self._store(i.dst, [kernels.move(np.ascontiguousarray(w), -lo, i.dims, i.strides)
                            for w in window])

    def _mv_mul(self, i: isa.MvMul, rounding) -> None:
        key = ("mv", id(i))
        run = self._prepared.get(key)
        if run is None:
            run = self._prepared[key] = self._mv_plan(i)
        y = run(rounding)
        if y is not None:
            self._store(i.dst, y)

    def _mv_plan(self, i: isa.MvMul):
        """``run(rounding)`` for one MV_MUL: its fields decoded and checked, its operands'
        views made, once per arena (a layer of a mobile network computes for 20-100 µs).
        It returns the result to store, or None when the kernel wrote it in place (the
        closure holds no reference to the device, so a device is freed with its last
        user)."""
        if i.in_dil_h < 1 or i.in_dil_w < 1:
            raise ExecutionError(f"MV_MUL: input dilation {i.in_dil_h} x {i.in_dil_w} "
                                 "must be at least 1")
        x = self._f32(i.src, (i.batch, i.channels, i.height, i.width))
        images = x.shape[0]
        w = self._weights[i.weights]
        # a layer multiplies in its weights' format (a program may mix them); fp32 weights
        # make an fp32 layer
        fmt = w.fmt if isinstance(w, BfpTensor) else FP32
        bias = self._f32(i.bias, (i.out_channels,))[0]
        geom = ConvGeometry((i.kernel_h, i.kernel_w), (i.stride_h, i.stride_w),
                            (i.pad_top, i.pad_left, i.pad_bottom, i.pad_right),
                            (i.dilation_h, i.dilation_w), i.groups, (i.in_dil_h, i.in_dil_w))
        oh, ow = geom.output_hw(i.height, i.width)
        rows = images * i.batch  # the images' rows stream through the array together
        seed = int(self.program.metadata.get("seed", 0))
        clip = (isa.bits_f32(i.clip_lo), isa.bits_f32(i.clip_hi)) if i.clip else None
        relu = bool(i.relu)
        if (i.kernel_h, i.kernel_w, i.height, i.width) == (1, 1, 1, 1):  # dense layer
            res = (self._f32(i.residual, (i.batch, i.out_channels)).reshape(rows, -1)
                   if i.has_residual else None)
            x = x.reshape(rows, i.channels)
            if fmt.is_fp32 and images > 1:
                # an fp32 GEMM's order of additions may change with its row count (BLAS
                # picks its kernels by size): each image alone gives one image's result
                def dense(rounding) -> list:
                    return [kernels.dense(x[k:k + i.batch], w, bias, fmt,
                                          None if res is None else res[k:k + i.batch], relu,
                                          rounding, seed, clip) for k in range(0, rows, i.batch)]
            else:
                def dense(rounding) -> np.ndarray:
                    return kernels.dense(x, w, bias, fmt, res, relu, rounding, seed, clip)
            return dense
        out_shape = (i.batch, i.out_channels, oh, ow)
        res = (self._f32(i.residual, out_shape).reshape(rows, *out_shape[1:])
               if i.has_residual else None)
        direct = self._direct_out(i.dst, (rows, *out_shape[1:]),
                                  [(i.src, x.nbytes // images), (i.bias, bias.nbytes)]
                                  + ([(i.residual, res.nbytes // images)]
                                     if res is not None else []))
        x = x.reshape(rows, *x.shape[2:])

        def conv(rounding) -> np.ndarray | None:
            y = kernels.conv2d(x, w, bias, geom, fmt, res, relu, rounding, seed, clip,
                               out=direct)
            return None if y is direct else y
        return conv

    def _direct_out(self, addr: int, shape: tuple[int, ...],
                    operands: list[tuple[int, int]]) -> np.ndarray | None:
        """The result's place in the activation arena, for a kernel to write into (one
        copy fewer), or None: only for one image (its arena is contiguous), and only
        when the result shares no byte with an operand."""
        if self._arena.shape[0] != 1:
            return None
        nbytes = 4 * math.prod(shape)
        arena, off = self._region(addr, nbytes, "write")
        if not arena:
            return None  # _store raises the error
        if any(a < addr + nbytes and addr < a + n for a, n in operands):
            return None
        return self._arena[0, off:off + nbytes].view(np.float32).reshape(shape)

    def _pool(self, i: isa.VPool) -> None:
        x = self._f32(i.src, (i.batch, i.channels, i.height, i.width))
        x = x.reshape(x.shape[0] * i.batch, *x.shape[2:])
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
