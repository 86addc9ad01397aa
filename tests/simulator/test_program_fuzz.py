# SPDX-License-Identifier: Apache-2.0
"""Hostile programs: mutants of real compiled programs, resealed (every section's SHA-256
and the header CRC recomputed, as anyone can), must load and run safely or be refused
with the project's own one-line errors; never a crash, a raw exception or a write
outside device DRAM.

The mutants change one thing at a time where a checksum cannot help: an instruction
field (boundary and random values of its width), a JSON value of a section (wrong
types, negatives, huge numbers, deep nesting), bytes of a section, the instruction
order, a host op's model. ``NPUSIM_FUZZ_EXAMPLES=20000`` runs a long campaign.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from exporter_graphs import (
    convnext_block,
    mobilenet_v3_block,
    pad_conv,
    segmentation_head,
    shufflenet_unit,
)
from exporter_graphs_attention import self_attention
from exporter_graphs_host import detection_tail
from fuzzing import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper
from onnx_helpers import make_model, small_featurizer

from npusim.compiler import compile_model
from npusim.simulator import isa
from npusim.simulator.device import Device, ExecutionError, InputError
from npusim.simulator.host import HostOpError
from npusim.simulator.isa import INSTRUCTION_BYTES, FieldWidths
from npusim.simulator.program import Program, ProgramError, Section, pack_sections, unpack_sections

SAFE = (ProgramError, ExecutionError, InputError, HostOpError)
"""What a hostile program may raise: the project's own errors, nothing else."""

CORPUS = {  # name -> (builder, numerics): together they use every opcode
    "featurizer": (lambda: (small_featurizer(), None), "msfp8"),
    "shufflenet": (lambda: _graph(shufflenet_unit()), "msfp16"),
    "mobilenet_v3": (lambda: _graph(mobilenet_v3_block()), "fp32"),
    "segmentation": (lambda: _graph(segmentation_head()), "msfp16"),
    "reflect_pad": (lambda: _graph(pad_conv("reflect")), "fp32"),
    "convnext": (lambda: _graph(convnext_block()), "msfp16"),
    "attention": (lambda: _graph(self_attention()), "msfp16"),
    "detection_tail": (lambda: _graph(detection_tail()), "fp32"),
    "gather_reduce": (lambda: (_gather_reduce(), None), "fp32"),
}


def _gather_reduce() -> onnx.ModelProto:
    weights = {"idx": np.array([3, 0, 2, 2], np.int64), "axes": np.array([2], np.int64)}
    nodes = [helper.make_node("Gather", ["x", "idx"], ["g"], axis=1),
             helper.make_node("ReduceSum", ["g", "axes"], ["r"], keepdims=0),
             helper.make_node("Relu", ["r"], ["y"])]
    return make_model(nodes, {"x": [1, 5, 6]}, {"y": [1, 4]}, weights)


def _graph(eg):
    return eg.model, eg.input_shapes


@pytest.fixture(scope="module")
def corpus() -> dict[str, tuple[bytes, dict[str, np.ndarray]]]:
    out = {}
    for name, (build, numerics) in CORPUS.items():
        model, shapes = build()
        prog = compile_model(model, "tiny", numerics, input_shapes=shapes)
        rng = np.random.default_rng(0)
        feeds = {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in prog.inputs}
        out[name] = (prog.to_bytes(), feeds)
    return out


def test_corpus_covers_every_opcode(corpus):
    used = {type(i) for data, _ in corpus.values() for i in Program.from_bytes(data).instructions}
    missing = {cls.__name__ for cls in isa.INSTRUCTIONS} - {c.__name__ for c in used}
    assert missing <= {"VvAdd", "VRelu"}, missing  # folded into MV_MUL by the compiler


def _try(data: bytes, feeds: dict[str, np.ndarray]) -> str:
    """Load and run ``data``; return what happened, or fail on anything not allowed."""
    try:
        prog = Program.from_bytes(data, "mutant")
        dev = Device(prog.target)
        dev.load(prog)
        dev.run(feeds)
    except SAFE as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, repr(msg)
        return type(exc).__name__
    return "ran"


# --- mutations -------------------------------------------------------------------------

def _reseal(data: bytes, changes: dict[Section, bytes]) -> bytes:
    fp, raw = unpack_sections(data)
    raw.update(changes)
    return pack_sections(raw, fp)


BOUNDARY = st.sampled_from([0, 1, 2, 3, 63, 64, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 1])


@st.composite
def field_values(draw, bits: int) -> int:
    v = draw(st.one_of(BOUNDARY, st.integers(0, (1 << bits) - 1)))
    return v & ((1 << bits) - 1)


@st.composite
def instruction_mutants(draw, data: bytes) -> bytes:
    prog = Program.from_bytes(data)
    widths = FieldWidths.for_device(prog.target)
    code, layers = list(prog.instructions), list(prog.layers)
    k = draw(st.integers(0, len(code) - 1))
    how = draw(st.sampled_from(["field", "field", "field", "drop", "swap", "dup", "opcode"]))
    if how == "field" and dataclasses.fields(code[k]):
        for _ in range(draw(st.integers(1, 3))):
            f = draw(st.sampled_from(dataclasses.fields(code[k])))
            value = draw(field_values(getattr(widths, f.metadata["kind"])))
            code[k] = dataclasses.replace(code[k], **{f.name: value})
    elif how == "drop":
        del code[k], layers[k]
    elif how == "swap":
        j = draw(st.integers(0, len(code) - 1))
        code[k], code[j] = code[j], code[k]
    elif how == "dup":
        code.insert(k, code[k])
        layers.insert(k, layers[k])
    words = [i.encode(widths) for i in code]
    if how == "opcode":
        words[k] = bytes([draw(st.integers(0, 255))]) + words[k][1:]
    _, raw = unpack_sections(data)
    meta = json.loads(raw[Section.METADATA])
    meta["layers"] = layers  # the records follow the code, as a forger would make them
    return _reseal(data, {Section.INSTRUCTIONS: b"".join(words),
                          Section.METADATA: json.dumps(meta).encode()})


JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.sampled_from([-1, 0, 1, 2**31, 2**53, 10**30, 1.5, -0.0]),
    st.integers(), st.text(max_size=8), st.just([]), st.just({}), st.just([[[[0]]]]),
    st.just("float64"), st.just("object"), st.just("V999999999"))


def _paths(obj, path=()):
    yield path
    if isinstance(obj, dict):
        for key, v in obj.items():
            yield from _paths(v, (*path, key))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*path, i))


def _set(obj, path, value):
    if not path:
        return value
    *head, last = path
    target = obj
    for p in head:
        target = target[p]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return obj


_DELETE = object()
JSON_SECTIONS = [Section.IO, Section.TENSORS, Section.METADATA]


@st.composite
def json_mutants(draw, data: bytes) -> bytes:
    _, raw = unpack_sections(data)
    kinds = JSON_SECTIONS + ([Section.HOST] if Section.HOST in raw else [])
    kind = draw(st.sampled_from(kinds))
    payload = raw[kind]
    head = 0
    if kind == Section.HOST:  # a u64 length, the JSON table, the models
        head = int.from_bytes(payload[:8], "little")
        obj = json.loads(payload[8:8 + head])
    else:
        obj = json.loads(payload)
    paths = [p for p in _paths(obj) if kind != Section.METADATA or p[:1] != ("placement",)]
    path = draw(st.sampled_from(paths))
    value = draw(st.one_of(JSON_VALUES, st.just(_DELETE) if path else JSON_VALUES))
    text = json.dumps(_set(obj, path, value)).encode()
    if kind == Section.HOST:
        text = len(text).to_bytes(8, "little") + text + payload[8 + head:]
    return _reseal(data, {kind: text})


@st.composite
def byte_mutants(draw, data: bytes) -> bytes:
    _, raw = unpack_sections(data)
    kind = draw(st.sampled_from(sorted(raw)))
    payload = bytearray(raw[kind])
    how = draw(st.sampled_from(["flip", "cut", "insert"]))
    at = draw(st.integers(0, max(0, len(payload) - 1)))
    if how == "flip" and payload:
        payload[at] ^= 1 << draw(st.integers(0, 7))
    elif how == "cut":
        del payload[at:at + draw(st.integers(1, 64))]
    else:
        payload[at:at] = draw(st.binary(min_size=1, max_size=16))
    return _reseal(data, {kind: bytes(payload)})


@pytest.mark.parametrize("name", list(CORPUS))
@fuzz_settings(40)
@given(data=st.data())
def test_fuzz_program_mutants(corpus, name, data):
    program, feeds = corpus[name]
    kind = data.draw(st.sampled_from(["instruction", "json", "bytes"]))
    strategy = {"instruction": instruction_mutants, "json": json_mutants,
                "bytes": byte_mutants}[kind]
    _try(data.draw(strategy(program)), feeds)


# --- regressions: each defect found by an outside fuzzer ------------------------------

def _edit(data: bytes, k: int, **fields) -> bytes:
    prog = Program.from_bytes(data)
    widths = FieldWidths.for_device(prog.target)
    code = list(prog.instructions)
    code[k] = dataclasses.replace(code[k], **fields)
    return _reseal(data, {Section.INSTRUCTIONS: b"".join(i.encode(widths) for i in code)})


def _first(data: bytes, cls) -> int:
    return next(k for k, i in enumerate(Program.from_bytes(data).instructions)
                if isinstance(i, cls))


def _meta(data: bytes, edit) -> bytes:
    _, raw = unpack_sections(data)
    meta = json.loads(raw[Section.METADATA])
    edit(meta)
    return _reseal(data, {Section.METADATA: json.dumps(meta).encode()})


def test_copy_rows_and_strides_past_dram_are_refused(corpus):
    program, feeds = corpus["shufflenet"]
    k = _first(program, isa.VCopy)
    end = Program.from_bytes(program).target.dram_mib * 2**20
    for fields in ({"rows": 2**31}, {"rows": 2, "dst_stride": 2**31}, {"dst": end - 64},
                   {"rows": 0}, {"rows": 2, "src_stride": 2**32 - 1}):
        with pytest.raises(ProgramError, match="outside|at least 1"):
            Program.from_bytes(_edit(program, k, **fields))


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["memory_map"].pop("activations"), "activations"),
    (lambda m: m["memory_map"]["activations"].__setitem__(1, 1 << 40), "past"),
    (lambda m: m["memory_map"]["activations"].__setitem__(1, 1 << 60), "maximum"),
    (lambda m: m["memory_map"].update(activations=[1 << 36, 64]), "past"),
    (lambda m: m["memory_map"].update(weights=[0, 7]), "region weights"),
    (lambda m: m.update(seed=-1), "seed|minimum"),
    (lambda m: m.update(rounding="up"), "rounding|is not one of"),
    (lambda m: m["layers"].pop(), "layer records"),
])
def test_bad_memory_map_and_metadata_are_refused(corpus, edit, match):
    program, _ = corpus["featurizer"]
    with pytest.raises(ProgramError, match=match):
        Program.from_bytes(_meta(program, edit))


@pytest.mark.parametrize("cls, fields, match", [
    (isa.VRd, {"io": 7}, "I/O slot"),
    (isa.VWr, {"io": 200}, "I/O slot"),
    (isa.VWr, {"nbytes": 4}, "does not move"),
    (isa.VPool, {"mode": 9}, "PoolMode"),
    (isa.VPool, {"mode": 0, "stride_h": 0}, "at least 1"),
    (isa.MvMul, {"stride_w": 0}, "at least 1"),
    (isa.MvMul, {"channels": 0}, "at least 1"),
    (isa.MvMul, {"groups": 0}, "at least 1"),
    (isa.MvMul, {"groups": 3}, "groups"),
    (isa.MvMul, {"weights": 1}, "no weight tensor"),
    (isa.MvMul, {"kernel_h": 200}, "output of|weight tensor"),
])
def test_bad_instruction_fields_are_refused(corpus, cls, fields, match):
    program, _ = corpus["featurizer"]
    with pytest.raises(ProgramError, match=match):
        Program.from_bytes(_edit(program, _first(program, cls), **fields))


def test_host_call_without_its_entry_is_refused(corpus):
    program, _ = corpus["detection_tail"]
    k = _first(program, isa.HostCall)
    with pytest.raises(ProgramError, match="not in the host table"):
        Program.from_bytes(_edit(program, k, index=999))


@pytest.mark.parametrize("device, match", [
    (b"[1, 2]", "type 'object'"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deep"),
    (b'{"name": "x", "native_dim": NaN}', "not a JSON number"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_bad_json_sections_are_one_line_errors(corpus, device, match):
    program, _ = corpus["featurizer"]
    for kind in (Section.DEVICE, Section.IO, Section.METADATA):
        with pytest.raises(ProgramError, match=match) as err:
            Program.from_bytes(_reseal(program, {kind: device}))
        assert "\n" not in str(err.value)


def test_host_table_model_out_of_range_is_refused(corpus):
    program, _ = corpus["detection_tail"]
    _, raw = unpack_sections(program)
    payload = raw[Section.HOST]
    n = int.from_bytes(payload[:8], "little")
    table = json.loads(payload[8:8 + n])
    table[0]["model"] = [0]
    text = json.dumps(table).encode()
    with pytest.raises(ProgramError, match="HOST"):
        Program.from_bytes(_reseal(program, {Section.HOST: len(text).to_bytes(8, "little")
                                             + text + payload[8 + n:]}))
    table[0]["model"] = [0, 1 << 40]
    text = json.dumps(table).encode()
    with pytest.raises(ProgramError, match="runs past"):
        Program.from_bytes(_reseal(program, {Section.HOST: len(text).to_bytes(8, "little")
                                             + text + payload[8 + n:]}))


def test_host_model_that_onnxruntime_refuses_is_a_program_error(corpus):
    program, feeds = corpus["detection_tail"]
    _, raw = unpack_sections(program)
    payload = raw[Section.HOST]
    n = int.from_bytes(payload[:8], "little")
    models = bytearray(payload[8 + n:])
    models[:16] = b"\xff" * 16  # the first model's bytes no longer parse
    mutant = _reseal(program, {Section.HOST: payload[:8 + n] + bytes(models)})
    assert _try(mutant, feeds) == "ProgramError"


def test_the_executor_stays_inside_dram_when_checks_are_bypassed(corpus):
    """Defence in depth: a program that skipped the checks (built in memory and loaded
    without them) still cannot make the device touch memory outside its DRAM buffer."""
    program, feeds = corpus["shufflenet"]
    prog = Program.from_bytes(program)
    k = _first(program, isa.VCopy)
    code = list(prog.instructions)
    code[k] = dataclasses.replace(code[k], dst=prog.target.dram_mib * 2**20 - 64)
    bad = dataclasses.replace(prog, instructions=tuple(code))
    dev = Device(prog.target)
    dev.load(prog)
    dev.program = bad
    with pytest.raises(ExecutionError, match="outside device DRAM"):
        dev.run(feeds)


def test_a_run_never_takes_an_instruction_word_it_cannot_decode(corpus):
    program, _ = corpus["featurizer"]
    _, raw = unpack_sections(program)
    code = raw[Section.INSTRUCTIONS]
    with pytest.raises(ProgramError, match="whole words"):
        Program.from_bytes(_reseal(program, {Section.INSTRUCTIONS: code[:-1]}))
    bad = code[:INSTRUCTION_BYTES - 1] + b"\x80" + code[INSTRUCTION_BYTES:]
    with pytest.raises(ProgramError, match="bad instruction"):
        Program.from_bytes(_reseal(program, {Section.INSTRUCTIONS: bad}))


def test_a_sequence_the_host_keeps_survives_the_file():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("SplitToSequence", ["r"], ["seq"], axis=1, keepdims=1),
             helper.make_node("SequenceLength", ["seq"], ["n"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 3])],
        [helper.make_tensor_sequence_value_info("seq", onnx.TensorProto.FLOAT, None),
         helper.make_tensor_value_info("n", onnx.TensorProto.INT64, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    prog = Program.from_bytes(compile_model(model, "tiny", "fp32").to_bytes())
    dev = Device(prog.target)
    dev.load(prog)
    out, _ = dev.run({"x": np.ones((1, 4, 3), np.float32)})
    assert int(out["n"]) == 4 and len(out["seq"]) == 4


def test_a_host_model_with_external_data_is_refused(corpus, tmp_path, monkeypatch):
    """onnxruntime would read a relative external-data path from the working directory:
    a hostile program could serve the files beside the server (its keys) as outputs."""
    (tmp_path / "secret").write_bytes(b"API-KEY!" * 8)
    monkeypatch.chdir(tmp_path)
    program, feeds = corpus["detection_tail"]
    prog = Program.from_bytes(program)
    host = onnx.load_model_from_string(prog.host_ops[0].model)
    t = host.graph.initializer.add()
    t.name, t.data_type, t.data_location = "leak", onnx.TensorProto.UINT8, onnx.TensorProto.EXTERNAL
    t.dims.append(8)
    entry = t.external_data.add()
    entry.key, entry.value = "location", "secret"
    ops = (dataclasses.replace(prog.host_ops[0], model=host.SerializeToString()),
           *prog.host_ops[1:])
    mutant = dataclasses.replace(prog, host_ops=ops).to_bytes()
    with pytest.raises(ProgramError, match="external file"):
        Device(prog.target).load(Program.from_bytes(mutant))
