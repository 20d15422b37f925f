"""A BERT sentence encoder as an ONNX graph, built from a ``model.safetensors`` file with numpy and
the ``onnx`` helper API: no PyTorch, no transformers, no exporter.

The graph is the BERT encoder of Hugging Face's ``BertModel`` (absolute positions, one segment,
post-LayerNorm layers, exact erf GELU) followed by sentence-transformers' mean pooling over the
attention mask and L2 normalisation, so one ``run`` maps token ids to the sentence embeddings::

    model = build_sentence_encoder(model_dir)        # onnx.ModelProto
    onnx.save(model, "minilm.onnx")
    # inputs:  input_ids, attention_mask  int64 (batch, seq)     output: embeddings float32 (batch, dim)

Batch and sequence lengths are dynamic. The weights are read with numpy (:func:`read_safetensors`):
the format is an 8-byte header length, a JSON header and raw little-endian arrays, which is less
code than a dependency on the ``safetensors`` package would save.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

# bump when the graph changes (ops, pooling, constants): it is part of the encoder ids
GRAPH_VERSION = "v1"
OPSET = 17                     # LayerNormalization is a standard op from 17 (onnxruntime >= 1.13)

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a numpy array (float16 weights widened to float32)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = memoryview(f.read())   # views of it, not copies, until the float16 widening
    tensors = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if spec["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {spec['dtype']}, not one of {sorted(_DTYPES)}")
        start, stop = spec["data_offsets"]
        a = np.frombuffer(data[start:stop], dtype=np.dtype(_DTYPES[spec["dtype"]]).newbyteorder("<"))
        a = a.reshape(spec["shape"])
        tensors[name] = a.astype(np.float32) if a.dtype == np.float16 else a
    return tensors


class _Graph:
    """Nodes and initializers being collected; names are made unique by a counter."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.initializers: list = []
        self._n = 0

    def _name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value, hint: str = "c", dtype=np.float32) -> str:
        from onnx import numpy_helper

        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, hint: str = "", out: str = "", **attrs) -> str:
        """Append a node; its output's name (``out``, or one made from ``hint``) is returned."""
        from onnx import helper

        out = out or self._name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def linear(self, x: str, w: np.ndarray, b: np.ndarray, hint: str) -> str:
        """``x @ w.T + b`` for a torch ``Linear`` weight ``w`` of shape (out, in)."""
        return self.op("Add", self.op("MatMul", x, self.const(w.T, f"{hint}.w")), self.const(b, f"{hint}.b"),
                       hint=hint)

    def layer_norm(self, x: str, w: np.ndarray, b: np.ndarray, eps: float, hint: str) -> str:
        return self.op("LayerNormalization", x, self.const(w, f"{hint}.g"), self.const(b, f"{hint}.b"),
                       axis=-1, epsilon=eps, hint=hint)


def build_sentence_encoder(model_dir: str | Path):
    """The ONNX model (``onnx.ModelProto``) of the sentence-transformers BERT model in
    ``model_dir``: ``config.json`` and ``model.safetensors`` for the transformer,
    ``1_Pooling/config.json`` for the pooling (only mean pooling is built; anything else raises
    ValueError) and ``modules.json`` for whether a ``Normalize`` module follows it."""
    from onnx import TensorProto, helper

    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    modes = [k for k, on in pooling.items() if k.startswith("pooling_mode") and on]
    if modes != ["pooling_mode_mean_tokens"]:
        raise ValueError(f"{model_dir}: only mean pooling is built, the model asks for {pooling}")
    modules = json.loads((model_dir / "modules.json").read_text())
    normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
    if cfg.get("model_type") != "bert" or cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{model_dir} is not a BERT model with absolute positions")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{model_dir}: hidden_act {cfg['hidden_act']!r}, only the exact 'gelu' is built")
    w = read_safetensors(model_dir / "model.safetensors")
    # checkpoints saved from BertModel have no prefix, from e.g. BertForMaskedLM a "bert." one
    w = {k.removeprefix("bert."): v for k, v in w.items()}
    d, heads, eps = int(cfg["hidden_size"]), int(cfg["num_attention_heads"]), float(cfg["layer_norm_eps"])
    head_dim = d // heads

    g = _Graph()
    ids, mask = "input_ids", "attention_mask"
    # embeddings: word + token type (one segment: type 0 for every token) + absolute position,
    # added in that order as BertEmbeddings does
    x = g.op("Gather", g.const(w["embeddings.word_embeddings.weight"], "word_emb"), ids, axis=0)
    x = g.op("Add", x, g.const(w["embeddings.token_type_embeddings.weight"][0], "type_emb"))
    seq = g.op("Slice", g.op("Shape", ids), g.const([1], dtype=np.int64), g.const([2], dtype=np.int64))
    positions = g.op("Slice", g.const(w["embeddings.position_embeddings.weight"], "pos_emb"),
                     g.const([0], dtype=np.int64), seq, g.const([0], dtype=np.int64))
    x = g.op("Add", x, positions)
    x = g.layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps, "emb_ln")

    # padding keys get the most negative float added to their scores (HF's extended attention
    # mask): their softmax weight is exactly 0, so padding cannot change a text's embedding
    mask_f = g.op("Cast", mask, to=TensorProto.FLOAT)
    key_bias = g.op("Mul", g.op("Sub", g.const(1.0), mask_f), g.const(np.finfo(np.float32).min))
    key_bias = g.op("Unsqueeze", key_bias, g.const([1, 2], dtype=np.int64))          # (n, 1, 1, s)
    split_heads = g.const([0, 0, heads, head_dim], dtype=np.int64)                   # (n, s, h, hd)
    merge_heads = g.const([0, 0, d], dtype=np.int64)
    scale = g.const(1.0 / np.sqrt(head_dim))

    def heads(x: str, prefix: str, hint: str, perm: list[int]) -> str:
        """The projection ``prefix`` of ``x``, split into heads and transposed by ``perm``."""
        y = g.linear(x, w[prefix + ".weight"], w[prefix + ".bias"], hint)
        return g.op("Transpose", g.op("Reshape", y, split_heads), perm=perm)

    for i in range(int(cfg["num_hidden_layers"])):
        p = f"encoder.layer.{i}."
        q = heads(x, p + "attention.self.query", f"l{i}.q", [0, 2, 1, 3])            # (n, h, s, hd)
        k = heads(x, p + "attention.self.key", f"l{i}.k", [0, 2, 3, 1])              # (n, h, hd, s)
        v = heads(x, p + "attention.self.value", f"l{i}.v", [0, 2, 1, 3])            # (n, h, s, hd)
        scores = g.op("Add", g.op("Mul", g.op("MatMul", q, k), scale), key_bias)
        ctx = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        ctx = g.op("Reshape", g.op("Transpose", ctx, perm=[0, 2, 1, 3]), merge_heads)
        y = g.linear(ctx, w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"],
                     f"l{i}.attn_out")
        x = g.layer_norm(g.op("Add", y, x), w[p + "attention.output.LayerNorm.weight"],
                         w[p + "attention.output.LayerNorm.bias"], eps, f"l{i}.attn_ln")
        # feed-forward with the exact GELU of BERT's "gelu": 0.5 x (1 + erf(x / sqrt 2)), written
        # (constants per layer included) as onnxruntime's GeluFusion expects, so it runs as BiasGelu
        y = g.linear(x, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"], f"l{i}.ffn_in")
        erf = g.op("Erf", g.op("Div", y, g.const(np.sqrt(2.0))))
        y = g.op("Mul", g.op("Mul", y, g.op("Add", erf, g.const(1.0))), g.const(0.5))
        y = g.linear(y, w[p + "output.dense.weight"], w[p + "output.dense.bias"], f"l{i}.ffn_out")
        x = g.layer_norm(g.op("Add", y, x), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"],
                         eps, f"l{i}.ffn_ln")

    # sentence-transformers' Pooling (mean over real tokens, count clamped at 1e-9) and Normalize
    # (F.normalize: x / max(|x|, 1e-12))
    m = g.op("Unsqueeze", mask_f, g.const([-1], dtype=np.int64))                     # (n, s, 1)
    axis1 = g.const([1], dtype=np.int64)
    summed = g.op("ReduceSum", g.op("Mul", x, m), axis1, keepdims=0)
    count = g.op("Max", g.op("ReduceSum", m, axis1, keepdims=0), g.const(1e-9))
    out = g.op("Div", summed, count, hint="mean_pooled")
    if normalize:
        squares = g.op("ReduceSum", g.op("Mul", out, out), g.const([-1], dtype=np.int64), keepdims=1)
        out = g.op("Div", out, g.op("Max", g.op("Sqrt", squares), g.const(1e-12)), hint="normalized")
    g.op("Identity", out, out="embeddings")

    graph = helper.make_graph(
        g.nodes, "sentence_encoder",
        [helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info(mask, TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", d])],
        g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="xmodal", producer_version=GRAPH_VERSION)
    model.ir_version = 8   # the oldest IR that opset 17 needs: loads in onnxruntime >= 1.13
    return model
