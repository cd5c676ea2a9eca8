"""An ONNX teacher's FLOPs, counted on its graph with the rule torch's FlopCounterMode uses for a torch
teacher (a multiply-add counts 2; convolutions and matrix products only), so select's capacity filter
treats an ONNX teacher like any other. ORT runs the graph outside torch, where the counter sees nothing:
counting the module would give 0, which reads as "smaller than every student". A graph whose shapes
cannot be inferred, or that holds an op this count does not model (Einsum), is None: unknown, never 0.
"""

from __future__ import annotations

import math
from typing import Any

# op -> index of its weight input (work per output element: the weight's size over its first axis)
_WEIGHTED = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "ConvTranspose": 1}
# op -> (index of the first operand, whose last axis is reduced; index of the second)
_MATMUL = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "Gemm": (0, 1)}
_UNCOUNTED = {"Einsum"}


def onnx_flops(proto: Any, input_shape: tuple[int, int, int], layout: str = "NCHW") -> int | None:
    """Batch-1 forward FLOPs of the ModelProto `proto` (external data need not be loaded) fed a
    (C, H, W) image in `layout`; None when they cannot be counted."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    inits = {t.name for t in model.graph.initializer}
    images = [i for i in model.graph.input if i.name not in inits]
    if len(images) != 1:
        return None
    c, h, w = input_shape
    dims = images[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        return None
    for d, v in zip(dims, (1, h, w, c) if layout == "NHWC" else (1, c, h, w), strict=True):
        d.Clear()
        d.dim_value = v
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # a graph the checker's inference cannot follow: unknown
        return None
    return _count(inferred.graph, _shapes(inferred.graph))


def _shapes(graph: Any) -> dict[str, tuple[int, ...] | None]:
    """Every known tensor shape of the graph: initializers, inputs, outputs and inferred values."""
    out: dict[str, tuple[int, ...] | None] = {t.name: tuple(t.dims) for t in graph.initializer}
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.name in out:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        out[vi.name] = tuple(dims) if tt.HasField("shape") and None not in dims else None
    return out


def _count(graph: Any, shapes: dict[str, tuple[int, ...] | None]) -> int | None:
    total = 0
    for node in graph.node:
        if node.op_type in _UNCOUNTED:
            return None
        if node.op_type not in _WEIGHTED and node.op_type not in _MATMUL:
            continue
        out = shapes.get(node.output[0])
        if node.op_type == "ConvTranspose":  # torch counts a transposed conv over its input positions
            out = shapes.get(node.input[0])
        if node.op_type in _WEIGHTED:
            weight = shapes.get(node.input[_WEIGHTED[node.op_type]])
            per = None if weight is None else math.prod(weight[1:])
        else:
            per = _inner_size(node, shapes)
        if out is None or per is None:
            return None
        total += 2 * math.prod(out) * per
    return total


def _inner_size(node: Any, shapes: dict[str, tuple[int, ...] | None]) -> int | None:
    """K of a matrix product: the reduced axis of its first operand (Gemm's transA transposes it)."""
    a = shapes.get(node.input[_MATMUL[node.op_type][0]])
    if not a:
        return None
    if node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute):
        return a[0]
    return a[-1]
