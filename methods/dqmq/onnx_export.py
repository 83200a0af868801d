"""A trained model as ONNX: one QDQ graph per bit configuration, and for DQMQ a router graph that makes the model's own
quality decision, so the deployed model picks its configuration from the pixels (the quality tag is never an input).

Configuration graphs. Every quantized layer reads its input through QuantizeLinear -> DequantizeLinear at the
layer's activation bits and its weight as stored integers through DequantizeLinear at its weight bits: the integer
types of opset 21, INT4 / UINT4 for 2-4 bits, INT8 / UINT8 for 5-8, INT16 / UINT16 above (a Clip to the b-bit range
before the QuantizeLinear where b is below the type's width). The integers are LSQ's, computed by the same code as the
PyTorch forward. BatchNorm after a convolution is folded into it (the per-channel factor goes into the weight's
per-axis scale, the integers are unchanged), and its bias is stored as INT32 at the input scale x the weight scale, as
onnxruntime's QDQ fusion expects; a full-precision model is the same graph without Q/DQ nodes.

Router (DQMQ). The quality statistics, the policy network and its argmax, as in PyTorch (exported with
torch.onnx's dynamo exporter), then the cheapest exported configuration that gives every layer at least the bits the
policy chose: the configuration itself when it was exported (every configuration the policy picks on the training
mixture, up to `max_configs`, the most frequent first, and the all-highest one, which covers any choice).

The output folder: deploy.json (the configurations: files, bits, share of training inputs; the router's file),
router.onnx, config_<i>.onnx. `OnnxDeployment` runs it with onnxruntime, each configuration's inputs in one batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.errors import UserError
from common.io import write_json
from methods.dqmq.bit_bn import BitBatchNorm2d
from methods.dqmq.model import QuantModel
from methods.dqmq.nets import BasicBlock
from methods.dqmq.quant import _positive, levels, lsq

OPSET = 21
_BN = (nn.BatchNorm2d, BitBatchNorm2d)


def _int_type(bits: int, signed: bool):
    from onnx import TensorProto as T

    for width, (s, u) in ((4, (T.INT4, T.UINT4)), (8, (T.INT8, T.UINT8)), (16, (T.INT16, T.UINT16))):
        if bits <= width:
            return width, s if signed else u
    raise UserError(f"export: {bits}-bit codes have no ONNX integer type (at most 16 bits)")


@dataclass
class _Graph:
    """Nodes and initializers of the graph being built, with unique names."""

    nodes: list
    inits: list
    count: int = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem: str, value, dtype=None) -> str:
        from onnx import helper, numpy_helper

        name = self.name(stem)
        if dtype is None:
            self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        else:  # an integer type numpy has no dtype for (INT4): raw values, packed by onnx
            arr = np.asarray(value)
            self.inits.append(helper.make_tensor(name, dtype, arr.shape, arr.flatten().tolist()))
        return name

    def op(self, kind: str, inputs: list[str], **attrs) -> str:
        from onnx import helper

        out = self.name(kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out


def _quant_input(g: _Graph, x: str, layer, a_idx: int) -> tuple[str, float]:
    """QuantizeLinear -> DequantizeLinear of a layer's input at candidate a_idx; returns (output, scale)."""
    bits = int(layer.candidates[a_idx])
    signed = bool(layer.a_signed)
    qn, qp, off = levels(bits, signed)
    if off:
        raise UserError("export: 1-bit activations (a mid-rise code without zero) have no QuantizeLinear form")
    step = float(_positive(layer.a_step.detach())[a_idx])
    width, dtype = _int_type(bits, signed)
    if bits < width:  # Max / Min, not Clip: onnxruntime 1.32's Clip -> QuantizeLinear fusion fails on INT4 types
        x = g.op("Min", [g.op("Max", [x, g.const("lo", np.float32(qn * step))]), g.const("hi", np.float32(qp * step))])
    scale, zero = g.const("a_scale", np.float32(step)), g.const("a_zero", [0], dtype)
    g.inits[-1].dims[:] = []  # a scalar zero point
    q = g.op("QuantizeLinear", [x, scale, zero])
    return g.op("DequantizeLinear", [q, scale, zero]), step


def _weight(layer, w_idx: int) -> tuple[np.ndarray, float, int]:
    """(integer codes, step, bits) of a layer's weight at candidate w_idx, from the forward's own LSQ code."""
    qn, qp, off = layer.w_levels[w_idx]
    if off:
        raise UserError("export: 1-bit weights (a mid-rise code without zero) have no DequantizeLinear form")
    step = _positive(layer.w_step.detach())[w_idx]
    with torch.no_grad():
        codes = (lsq(layer.weight, step, qn, qp, off) / step).round()
    return codes.numpy().astype(np.int64), float(step), int(layer.candidates[w_idx])


def _bn_factors(bn: nn.BatchNorm2d | None, out: int) -> tuple[np.ndarray, np.ndarray]:
    if bn is None:
        return np.ones(out, np.float64), np.zeros(out, np.float64)
    factor = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().double().numpy()
    return factor, (bn.bias.detach().double() - bn.running_mean.double() * torch.from_numpy(factor)).numpy()


def _layer(g: _Graph, x: str, layer: nn.Module, bn: nn.Module | None, bits: dict | None) -> str:
    """A Conv2d (with the BatchNorm after it folded in) or Linear: QDQ at its configured bits, or float (bits None)."""
    conv = isinstance(layer, nn.Conv2d)
    out_ch = layer.weight.shape[0]
    if isinstance(bn, BitBatchNorm2d):  # bit-specific BatchNorm: the configured pair's is folded
        if bits is None:
            raise UserError("export: a model with quant.bit_bn has no float graph (its BatchNorm depends on the bits)")
        bn = bn.pair(int(bits["w"][bits["index"]]), int(bits["a"][bits["index"]]))
    factor, shift = _bn_factors(bn, out_ch)
    bias = shift + (factor * layer.bias.detach().double().numpy() if layer.bias is not None else 0.0)
    attrs = (
        dict(
            strides=list(layer.stride),
            pads=[*layer.padding, *layer.padding],
            dilations=list(layer.dilation),
            group=layer.groups,
        )
        if conv
        else dict(transB=1)
    )
    kind = "Conv" if conv else "Gemm"
    if bits is None:
        w = layer.weight.detach().double().numpy() * factor.reshape(-1, *[1] * (layer.weight.dim() - 1))
        return g.op(kind, [x, g.const("w", w.astype(np.float32)), g.const("b", bias.astype(np.float32))], **attrs)
    i = bits["index"]
    xq, a_step = _quant_input(g, x, layer, int(bits["a"][i]))
    codes, w_step, w_bits = _weight(layer, int(bits["w"][i]))
    _, w_type = _int_type(w_bits, True)
    w_scale = (w_step * factor).astype(np.float32)
    zeros = g.const("w_zero", np.zeros(out_ch, np.int64), w_type)
    w = g.op("DequantizeLinear", [g.const("w_q", codes, w_type), g.const("w_scale", w_scale), zeros], axis=0)
    bits["index"] = i + 1
    if not bits["int8"]:
        # Outside an all-8-bit graph the INT32 bias at input x weight scale rounds by up to a tenth of a low-bit
        # activation step (it changed 3% of the next layer's 6-bit codes), and onnxruntime runs such graphs in
        # float anyway: the bias stays float.
        return g.op(kind, [xq, w, g.const("b", bias.astype(np.float32))], **attrs)
    # INT32 at input scale x weight scale, the form onnxruntime fuses into QLinearConv / integer matmuls.
    from onnx import TensorProto

    b_scale = (a_step * w_scale.astype(np.float64)).astype(np.float32)
    b_codes = np.round(bias / b_scale.astype(np.float64)).astype(np.int64)
    b_zero = g.const("b_zero", np.zeros(out_ch, np.int64), TensorProto.INT32)
    b = g.op(
        "DequantizeLinear", [g.const("b_q", b_codes, TensorProto.INT32), g.const("b_scale", b_scale), b_zero], axis=0
    )
    return g.op(kind, [xq, w, b], **attrs)


def _emit(g: _Graph, x: str, module: nn.Module, bits: dict | None) -> str:
    """The graph of `module` on input x (the networks of nets.py: sequences of conv-BN-ReLU, basic blocks, pooling,
    flatten, linear)."""
    if isinstance(module, nn.Sequential):
        children = list(module)
        i = 0
        while i < len(children):
            child = children[i]
            if isinstance(child, (nn.Conv2d, nn.Linear)):
                bn = children[i + 1] if i + 1 < len(children) and isinstance(children[i + 1], _BN) else None
                x = _layer(g, x, child, bn, bits)
                i += 2 if bn is not None else 1
            else:
                x = _emit(g, x, child, bits)
                i += 1
        return x
    if isinstance(module, BasicBlock):
        out = g.op("Relu", [_layer(g, x, module.conv1, module.bn1, bits)])
        out = _layer(g, out, module.conv2, module.bn2, bits)
        return g.op("Relu", [g.op("Add", [out, _emit(g, x, module.shortcut, bits)])])
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return _layer(g, x, module, None, bits)
    simple = {nn.ReLU: ("Relu", {}), nn.Identity: ("Identity", {}), nn.Flatten: ("Flatten", {"axis": 1})}
    if type(module) in simple:
        kind, attrs = simple[type(module)]
        return g.op(kind, [x], **attrs)
    if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
        return g.op("GlobalAveragePool", [x])
    raise UserError(
        f"export: {type(module).__name__} has no ONNX export here (the networks digits_cnn and resnet20 have one)"
    )


def network_graph(model: QuantModel, config: tuple[list[int], list[int]] | None, name: str):
    """The ONNX model of the network at one configuration (candidate indices of weights and activations per layer),
    or in float (config None): input `image` [N, C, H, W] in [0, 1], output `logits`."""
    from onnx import TensorProto, helper

    g = _Graph([], [])
    x = g.op("Sub", ["image", g.const("mean", model.mean.numpy().astype(np.float32))])
    x = g.op("Div", [x, g.const("std", model.std.numpy().astype(np.float32))])
    bits = None
    if config is not None:
        cand = model.candidates.tolist()
        int8 = all(cand[k] == 8 for k in (*config[0], *config[1]))  # integer kernels: the biases as INT32
        bits = {"w": config[0], "a": config[1], "index": 0, "int8": int8}
    out = _emit(g, x, model.net, bits)
    g.nodes.append(helper.make_node("Identity", [out], ["logits"]))
    c, s = model.in_chans, model.image_size
    graph = helper.make_graph(
        g.nodes,
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", c, s, s])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", None])],
        g.inits,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dqmq")
    onnx_model.ir_version = 10
    return onnx_model


def _features(g: _Graph, image: str, policy, hw: tuple[int, int]) -> str:
    """policy.quality_features of the images (side hw), standardised ([N, 7]), as graph nodes: the same formulas in
    the same order; the image side decides the same two branches as in PyTorch (static shapes)."""
    from methods.dqmq.policy import _IMMERKAER, _LAPLACE

    eps = g.const("eps", np.float32(1e-4))

    def mean(x: str, axes: list[int], keep: int = 0) -> str:
        return g.op("ReduceMean", [x, g.const("axes", np.array(axes, np.int64))], keepdims=keep)

    def diff(x: str, axis: int) -> str:
        def part(lo: int, hi: int) -> str:
            args = [np.array([v], np.int64) for v in (lo, hi, axis)]
            return g.op("Slice", [x, *(g.const("s", a) for a in args)])

        return g.op("Abs", [g.op("Sub", [part(1, 2**62), part(0, -1)])])

    def tv(x: str) -> str:
        both = g.op("Add", [mean(diff(x, 3), [1, 2, 3]), mean(diff(x, 2), [1, 2, 3])])
        return g.op("Add", [g.op("Div", [both, g.const("two", np.float32(2))]), eps])

    grey = mean(image, [1], keep=1)
    centered = g.op("Sub", [grey, mean(grey, [2, 3], keep=1)])
    contrast = g.op("Add", [g.op("Sqrt", [mean(g.op("Mul", [centered, centered]), [1, 2, 3])]), eps])
    kernels = torch.stack([_LAPLACE, _IMMERKAER])[:, None].numpy()
    responses = mean(g.op("Abs", [g.op("Conv", [grey, g.const("k", kernels)])]), [2, 3])  # [N, 2]
    lap, imm = (g.op("Gather", [responses, g.const("i", np.array(i, np.int64))], axis=1) for i in (0, 1))
    noise = g.op("Mul", [imm, g.const("c", np.float32(np.sqrt(np.pi / 2) / 6))])
    t = tv(grey)
    h, w = hw
    t_half = tv(g.op("AveragePool", [grey], kernel_shape=[2, 2], strides=[2, 2])) if min(h, w) >= 4 else t
    if w - 1 >= 9:
        dx = diff(grey, 3)
        grid = np.array([i for i in range(w - 1) if i % 8 == 7], np.int64)
        rest = np.array([i for i in range(w - 1) if i % 8 != 7], np.int64)
        at_grid, others = (mean(g.op("Gather", [dx, g.const("i", i)], axis=3), [1, 2, 3]) for i in (grid, rest))
        blocky = g.op("Div", [at_grid, g.op("Add", [others, eps])])
    else:
        blocky = g.op("Div", [contrast, contrast])
    columns = [
        g.op("Log", [contrast]),
        g.op("Log", [g.op("Add", [noise, eps])]),
        g.op("Log", [g.op("Div", [g.op("Add", [lap, eps]), contrast])]),
        g.op("Log", [g.op("Div", [t, contrast])]),
        g.op("Log", [g.op("Div", [t_half, t])]),
        blocky,
        mean(grey, [1, 2, 3]),
    ]
    one = g.const("axis", np.array([1], np.int64))
    q = g.op("Concat", [g.op("Unsqueeze", [c, one]) for c in columns], axis=1)
    q = g.op("Sub", [q, g.const("feat_mean", policy.feat_mean.numpy())])
    return g.op("Div", [q, g.const("feat_std", policy.feat_std.numpy())])


def _mlp(g: _Graph, x: str, layers: list[nn.Linear]) -> str:
    """Linear layers with SiLU between them (the policy's encoder and head)."""
    for i, layer in enumerate(layers):
        w, b = (g.const(n, p.detach().numpy()) for n, p in (("w", layer.weight), ("b", layer.bias)))
        x = g.op("Gemm", [x, w, b], transB=1)
        if i < len(layers) - 1:
            x = g.op("Mul", [x, g.op("Sigmoid", [x])])
    return x


def router_graph(model: QuantModel, table: torch.Tensor):
    """DQMQ's decision as a graph: image -> `config`, the index of the exported configuration that runs it (the
    cheapest whose bits are at least the policy's choice in every layer), and `choice`, the policy's own [N, L, 2]."""
    from onnx import TensorProto, helper

    g = _Graph([], [])
    policy = model.policy
    linears = [m for m in policy.encoder if isinstance(m, nn.Linear)] + [policy.head]
    logits = _mlp(g, _features(g, "image", policy, (model.image_size, model.image_size)), linears)
    shape = g.const("shape", np.array([-1, *policy.shape], np.int64))
    choice = g.op("ArgMax", [g.op("Reshape", [logits, shape])], axis=-1, keepdims=0)  # [N, L, 2]
    ge = g.op(
        "GreaterOrEqual",
        [g.const("table", table.numpy()[None]), g.op("Unsqueeze", [choice, g.const("a", np.array([1], np.int64))])],
    )
    covers = g.op(
        "ReduceMin", [g.op("Cast", [ge], to=TensorProto.FLOAT), g.const("axes", np.array([2, 3], np.int64))], keepdims=0
    )
    bits = model.candidates[table].double()
    cost = (model.macs.double() * bits[..., 0] * bits[..., 1]).sum(-1)
    cost = (cost / cost.max()).float().numpy()  # in [0, 1]; a configuration that does not cover costs 2 or more
    score = g.op("Sub", [g.const("cost", cost + 2), g.op("Mul", [covers, g.const("two", np.float32(2))])])
    g.nodes += [
        helper.make_node("ArgMin", [score], ["config"], axis=1, keepdims=0),
        helper.make_node("Identity", [choice], ["choice"]),
    ]
    c, s = model.in_chans, model.image_size
    graph = helper.make_graph(
        g.nodes,
        "dqmq_router",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", c, s, s])],
        [
            helper.make_tensor_value_info("config", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("choice", TensorProto.INT64, ["N", *policy.shape[:2]]),
        ],
        g.inits,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dqmq")
    onnx_model.ir_version = 10
    return onnx_model


@torch.no_grad()
def configurations(model: QuantModel, images: torch.Tensor, max_configs: int, batch_size: int = 512):
    """The distinct configurations the model picks on `images` ([M, L, 2] candidate indices, most frequent first,
    at most max_configs, the all-highest one added when missing) and each one's share of the images."""
    model.eval()
    parts = [torch.stack(model.decide(images[i : i + batch_size]), -1) for i in range(0, len(images), batch_size)]
    configs, counts = torch.unique(torch.cat(parts).flatten(1), dim=0, return_counts=True)
    order = counts.argsort(descending=True, stable=True)[:max_configs]
    configs, shares = configs[order].view(len(order), -1, 2), (counts[order].double() / len(images)).tolist()
    top = torch.full_like(configs[0], len(model.candidates) - 1)
    if not (configs == top).flatten(1).all(1).any():
        configs, shares = torch.cat([configs, top[None]]), [*shares, 0.0]
    return configs, shares


def export_onnx(model: QuantModel, out: Path, images: torch.Tensor, max_configs: int, method: str) -> dict:
    """Write the deployment of `model` into `out` (see the module's doc); returns deploy.json's content."""
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    if model.method == "fp":
        onnx.save(network_graph(model, None, "fp"), str(out / "config_0.onnx"))
        manifest = {"method": method, "router": None, "configs": [{"file": "config_0.onnx", "float": True}]}
        write_json(out / "deploy.json", manifest)
        return manifest
    table, shares = configurations(model, images, max_configs)
    cand = model.candidates.tolist()
    entries = []
    for i, (config, share) in enumerate(zip(table, shares, strict=True)):
        w, a = config[:, 0].tolist(), config[:, 1].tolist()
        onnx.save(network_graph(model, (w, a), f"{method}_{i}"), str(out / f"config_{i}.onnx"))
        entries.append(
            {
                "file": f"config_{i}.onnx",
                "weight_bits": [cand[k] for k in w],
                "act_bits": [cand[k] for k in a],
                "train_share": share,
                "int8_kernels": all(cand[k] == 8 for k in w + a),
            }
        )
    router = None
    if model.method == "dqmq":
        router = "router.onnx"
        onnx.save(router_graph(model, table), str(out / router))
    manifest = {"method": method, "candidates": cand, "layers": model.layer_names, "router": router, "configs": entries}
    write_json(out / "deploy.json", manifest)
    return manifest


def _has_vnni() -> bool:
    """Whether this CPU has 8-bit dot-product instructions (x86 VNNI; ARM's are assumed: dotprod / i8mm)."""
    import platform

    if platform.machine().lower() in ("arm64", "aarch64"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


class OnnxDeployment:
    """An exported folder run with onnxruntime: the router (if any) picks each image's configuration, each
    configuration runs its images in one batch."""

    def __init__(self, folder: str | Path, threads: int = 1, integer_kernels: bool | None = None):
        """`integer_kernels`: let onnxruntime fuse all-8-bit graphs into its int8 kernels; None: only where the CPU
        has VNNI (without it, x86 u8 x s8 products saturate in int16: on a 2-core AVX2 machine they moved a trained
        W8A8 digits CNN's logits by up to 5.7 and changed 2% of its predictions)."""
        import onnxruntime as ort

        if integer_kernels is None:
            integer_kernels = _has_vnni()
        folder = Path(folder)
        try:
            self.manifest = json.loads((folder / "deploy.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"{folder}: not a DQMQ ONNX export (deploy.json: {e})") from None

        def session(name: str, optimize: bool = True):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            # onnxruntime 1.32 optimizes an all-8-bit QDQ graph into integer kernels (QLinearConv, QGemm). Any other
            # graph runs as written: its optimizations break INT4 graphs (fused into QLinearConv, which has no INT4
            # kernel; the basic level alone moved a 4-bit digits CNN's logits by up to 1.5), and fusing the 8-bit
            # layers of a 6/8-bit graph changed 0.7% of a digits CNN's predictions.
            if not optimize:
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            return ort.InferenceSession(str(folder / name), opts, providers=["CPUExecutionProvider"])

        configs = self.manifest["configs"]
        self.configs = [
            session(c["file"], c.get("float", False) or integer_kernels and c["int8_kernels"]) for c in configs
        ]
        self.router = session(self.manifest["router"]) if self.manifest["router"] else None

    def route(self, image: np.ndarray) -> np.ndarray:
        if self.router is None:
            return np.zeros(len(image), np.int64)
        return self.router.run(["config"], {"image": image})[0]

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits [N, classes], configuration index [N]) of float32 images [N, C, H, W] in [0, 1]."""
        image = np.ascontiguousarray(image, dtype=np.float32)
        which = self.route(image)
        logits = None
        for k in np.unique(which):
            rows = np.flatnonzero(which == k)
            part = self.configs[int(k)].run(["logits"], {"image": image[rows]})[0]
            if logits is None:
                logits = np.zeros((len(image), part.shape[1]), np.float32)
            logits[rows] = part
        return logits, which


@torch.no_grad()
def agreement(model: QuantModel, deployed: OnnxDeployment, images: torch.Tensor, batch_size: int = 512) -> dict:
    """Share of `images` (float [N, C, H, W]) on which the ONNX deployment predicts the PyTorch model's class, and
    the share whose configuration is exactly the policy's choice (the rest run the cheapest exported one above it)."""
    model.eval()
    same, exact = 0, 0
    table = None
    if deployed.router is not None:
        cand = model.candidates.tolist()
        table = [(c["weight_bits"], c["act_bits"]) for c in deployed.manifest["configs"]]
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size]
        logits, which = deployed(x.numpy())
        same += int((torch.from_numpy(logits).argmax(1) == model(x).argmax(1)).sum())
        if table is None:
            exact += len(x)
            continue
        w, a = model.decide(x)
        for k, wi, ai in zip(which.tolist(), w.tolist(), a.tolist(), strict=True):
            exact += table[k] == ([cand[j] for j in wi], [cand[j] for j in ai])
    return {"agreement": same / len(images), "exact_config": exact / len(images)}
