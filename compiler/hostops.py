# SPDX-License-Identifier: Apache-2.0
"""One host op as a self-contained ONNX model, for onnxruntime on the host.

The program carries these models; the device runtime and the golden interpreter
run the same bytes, so host results agree bit for bit too.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.errors import UnsupportedOpError
from compiler.ir import Op, inputs_of, node


def host_model(g: nx.DiGraph, name: str) -> tuple[bytes, list[int]]:
    """The model for value ``name``, and the indices of its inputs fed at run time.

    Constant inputs become initializers; the others are graph inputs ``in<i>``.
    """
    n = node(g, name)
    if n.proto is None:
        raise UnsupportedOpError(f"unsupported op {n.op.value} (value '{name}'): it cannot run "
                                 "on the device and has no ONNX form for the host")
    proto = onnx.NodeProto()
    proto.ParseFromString(n.proto)
    srcs = inputs_of(g, name)
    renamed, k = [], 0
    for slot in proto.input:
        renamed.append(f"in{k}" if slot else "")
        k += bool(slot)
    if k != len(srcs):  # a pass changed the inputs (e.g. a folded bias): plain positions
        renamed = [f"in{i}" for i in range(len(srcs))]
    del proto.input[:]
    proto.input.extend(renamed)
    outs = [("out" if i == 0 else f"unused{i}") if o else "" for i, o in enumerate(proto.output)]
    del proto.output[:]
    proto.output.extend(outs)
    proto.name = name
    inputs, inits, fed = [], [], []
    for i, src in enumerate(srcs):
        s = node(g, src)
        if s.op == Op.CONST and isinstance(s.value, np.ndarray):
            inits.append(numpy_helper.from_array(np.asarray(s.value), f"in{i}"))
        else:
            elem = helper.np_dtype_to_tensor_dtype(np.dtype(s.dtype))
            inputs.append(helper.make_tensor_value_info(f"in{i}", elem, list(s.shape)))
            fed.append(i)
    out = helper.make_tensor_value_info("out", helper.np_dtype_to_tensor_dtype(
        np.dtype(n.dtype)), list(n.shape))
    graph = helper.make_graph([proto], name, inputs, [out], inits)
    opsets = [helper.make_opsetid(d, v) for d, v in g.graph.get("opsets", [("", 17)])]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="npusim")
    model.ir_version = min(model.ir_version, 10)
    return model.SerializeToString(), fed
