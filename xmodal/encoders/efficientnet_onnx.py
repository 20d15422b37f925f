"""EfficientNet-Lite0's trunk as an ONNX graph, built from its weights with ``onnx.helper``.

Why: exporting the PyTorch model (``torch.onnx.export``) needs PyTorch installed, for a graph of
93 operators (49 convolutions, 33 clips, 9 adds, a pool) that ONNX Runtime then runs on its own.
This module writes that graph directly from the weights file (read by
:mod:`xmodal.encoders.torch_weights`), operator for operator what
``efficientnet_lite_pytorch``'s ``EfficientNet.extract_features`` followed by a global average
pool computes in evaluation mode:

- stem: 3x3 stride-2 convolution, batch norm, ReLU6;
- 16 MBConv blocks (the stage table below): 1x1 expansion (not in the first stage), depthwise
  kxk convolution with the stage's stride, 1x1 projection, each with batch norm, ReLU6 after the
  first two; a residual add where the block keeps stride 1 and its width (drop-connect is the
  identity at inference); no squeeze-excitation in the Lite models;
- head: 1x1 convolution to 1280 channels, batch norm, ReLU6, then the mean over the spatial axes.

Every convolution pads like TensorFlow's "SAME", statically for the given ``image_size`` as the
package's ``Conv2dStaticSamePadding`` does (the extra pixel of an odd total goes bottom/right).
Batch norm (eps 1e-3) is folded into the preceding convolution in float64, as the PyTorch export
folded it in float32. ``tests/test_lean_image.py`` pins the result to the PyTorch model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from xmodal.errors import DataError

OPSET = 17
# the oldest IR version that carries opset 17: what ONNX Runtime >= 1.14 reads
IR_VERSION = 8
BN_EPS = 1e-3
# (repeats, kernel, stride, expand ratio) per stage: efficientnet_lite_pytorch's block strings
# "r1_k3_s11_e1_i32_o16", ... for lite0 (width and depth coefficients 1.0: nothing is rescaled;
# the channel counts come with the weights)
LITE0_STAGES = ((1, 3, 1, 1), (2, 3, 2, 6), (2, 5, 2, 6), (3, 3, 2, 6), (3, 5, 1, 6), (4, 5, 2, 6),
                (1, 3, 1, 6))
HEAD_CHANNELS = 1280


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, list[int]]:
    """(output size, ONNX ``pads`` [top, left, bottom, right]) of a TF-"same" convolution on a
    ``size`` x ``size`` input: output ``ceil(size / stride)``, the larger half of the padding
    after, like ``Conv2dStaticSamePadding``."""
    out = -(-size // stride)
    pad = max((out - 1) * stride + kernel - size, 0)
    return out, [pad // 2, pad // 2, pad - pad // 2, pad - pad // 2]


class _Graph:
    """Nodes and initializers in the making; every tensor name is the state-dict prefix it
    came from, so that a graph viewer shows where each weight sits."""

    def __init__(self, state: Mapping[str, np.ndarray]) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.state = state
        self.used: set[str] = set()
        self.nodes: list = []
        self.initializers = [numpy_helper.from_array(np.float32(0.0), "relu6_min"),
                             numpy_helper.from_array(np.float32(6.0), "relu6_max")]

    def weight(self, name: str) -> np.ndarray:
        if name not in self.state:
            raise DataError(f"the weights have no {name}: not an EfficientNet-Lite0 state dict")
        self.used.add(name)
        return np.asarray(self.state[name], dtype=np.float64)

    def conv_bn(self, x: str, conv: str, bn: str, size: int, kernel: int = 1, stride: int = 1,
                depthwise: bool = False, relu6: bool = True) -> tuple[str, int]:
        """Convolution ``conv`` (one filter per channel if ``depthwise``) with batch norm ``bn``
        folded in, then ReLU6 as a Clip: the output name and its spatial size."""
        w = self.weight(f"{conv}.weight")
        if w.ndim != 4 or w.shape[-2:] != (kernel, kernel):
            raise DataError(f"{conv}.weight is {w.shape}, EfficientNet-Lite0 has {kernel}x{kernel} "
                            "kernels there")
        gamma, beta = self.weight(f"{bn}.weight"), self.weight(f"{bn}.bias")
        mean, var = self.weight(f"{bn}.running_mean"), self.weight(f"{bn}.running_var")
        self.used.add(f"{bn}.num_batches_tracked")
        scale = gamma / np.sqrt(var + BN_EPS)
        out_size, pads = same_padding(size, kernel, stride)
        folded_w = (w * scale[:, None, None, None]).astype(np.float32)
        folded_b = (beta - mean * scale).astype(np.float32)
        self.initializers += [self.numpy_helper.from_array(folded_w, f"{conv}.weight"),
                              self.numpy_helper.from_array(folded_b, f"{conv}.bias")]
        y = f"{conv}.out"
        self.nodes.append(self.helper.make_node(
            "Conv", [x, f"{conv}.weight", f"{conv}.bias"], [y], name=conv, kernel_shape=[kernel, kernel],
            strides=[stride, stride], pads=pads, group=w.shape[0] if depthwise else 1))
        if relu6:
            self.nodes.append(self.helper.make_node("Clip", [y, "relu6_min", "relu6_max"], [f"{y}.relu6"],
                                                    name=f"{conv}.relu6"))
            y = f"{y}.relu6"
        return y, out_size

    def add(self, a: str, b: str, name: str) -> str:
        self.nodes.append(self.helper.make_node("Add", [a, b], [name], name=name))
        return name


def efficientnet_lite0_graph(state: Mapping[str, np.ndarray], image_size: int = 224):
    """The ``onnx.ModelProto`` mapping ``images`` (n, 3, image_size, image_size), normalised, to
    ``features`` (n, 1280): EfficientNet-Lite0's pooled last-convolution features. ``state`` is the
    PyTorch state dict as numpy arrays; a key it lacks, or a tensor it has that the trunk does not
    use (another model's weights), is a DataError."""
    from onnx import TensorProto, checker, helper

    g = _Graph(state)
    x, size = g.conv_bn("images", "_conv_stem", "_bn0", image_size, kernel=3, stride=2)
    block = 0
    for repeats, kernel, stride, expand in LITE0_STAGES:
        for r in range(repeats):
            p = f"_blocks.{block}"
            inputs = x
            if expand != 1:
                x, _ = g.conv_bn(x, f"{p}._expand_conv", f"{p}._bn0", size)
            x, size = g.conv_bn(x, f"{p}._depthwise_conv", f"{p}._bn1", size, kernel=kernel,
                                stride=stride if r == 0 else 1, depthwise=True)
            x, _ = g.conv_bn(x, f"{p}._project_conv", f"{p}._bn2", size, relu6=False)
            # the package's condition: id_skip, stride 1 and as many channels out as in; the
            # first block of a stage never qualifies (its stride is a list there, and its width
            # changes anyway)
            if r > 0:
                x = g.add(x, inputs, f"{p}.residual")
            block += 1
    x, _ = g.conv_bn(x, "_conv_head", "_bn1", size)
    g.nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"),
                helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1)]

    unused = set(state) - g.used - {"_fc.weight", "_fc.bias"}
    if unused:
        raise DataError("the weights have tensors EfficientNet-Lite0 has not: "
                        f"{', '.join(sorted(unused)[:5])}")
    graph = helper.make_graph(
        g.nodes, "efficientnet_lite0_trunk",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, image_size, image_size])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", HEAD_CHANNELS])],
        g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="xmodal")
    # a malformed graph stops here; what shape inference lets through (a convolution fed more
    # channels than its weights take) stops at the first run, in ImageEncoder._export_onnx
    checker.check_model(model, full_check=True)
    return model
