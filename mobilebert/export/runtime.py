"""Run exported MobileBERT models: one callable for ONNX (fp32 or int8) and ExecuTorch `.pte` files.

Paper §5: the deployed model is a plain graph run by an on-device runtime (TFLite in the paper; here
ONNX Runtime on the host and ExecuTorch as the mobile runtime). `load_session(path)` returns an object
with `__call__(input_ids, attention_mask, token_type_ids) -> {output name: numpy array}`, plus the
model's `config`, `head`, `output_names` and, when the vocabulary was embedded at export time,
a `tokenizer`; so `mobilebert predict` and the benchmarks treat every exported format alike.

Inputs are checked before they reach the runtime, because runtimes fail late and obscurely (a Gather
index error deep in the graph) on a sequence longer than the model's positions or an id outside the
vocabulary; those are user errors with a one-line message here.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from mobilebert.config import MobileBertConfig
from mobilebert.errors import UserError


class ExportedSession:
    """Common input checks and metadata; subclasses implement `_run(list of int64 arrays) -> list of arrays`."""

    def __init__(self, path: Path, meta: dict[str, str], check_inputs: bool = True):
        self.path = path
        if "mobilebert.config" not in meta:
            raise UserError(f"{path}: not a MobileBERT export (no mobilebert.config metadata); "
                            "export it with `mobilebert export`")
        self.config = MobileBertConfig.from_hf_dict(json.loads(meta["mobilebert.config"]), source=str(path))
        self.head = meta.get("mobilebert.head", "MobileBertModel")
        self.output_names = tuple(json.loads(meta.get("mobilebert.outputs", "[]")))
        self.check_inputs = check_inputs
        self.tokenizer = _tokenizer_from(meta)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> dict[str, np.ndarray]:
        ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids, dtype=np.int64)
        if self.check_inputs:
            self._check(ids, mask, types)
        outs = self._run([ids, mask, types])
        return dict(zip(self.output_names, outs))

    def _check(self, ids, mask, types) -> None:
        cfg, rank = self.config, 3 if self.head == "MobileBertForMultipleChoice" else 2
        if ids.ndim != rank:
            raise UserError(f"{self.path.name}: input_ids must have {rank} dimensions, got shape {ids.shape}")
        if mask.shape != ids.shape or types.shape != ids.shape:
            raise UserError(f"{self.path.name}: attention_mask {mask.shape} and token_type_ids {types.shape} "
                            f"must have the shape of input_ids {ids.shape}")
        if ids.shape[-1] > cfg.max_position_embeddings:
            raise UserError(f"{self.path.name}: sequence of {ids.shape[-1]} tokens is longer than the model's "
                            f"max_position_embeddings={cfg.max_position_embeddings}")
        if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
            raise UserError(f"{self.path.name}: token id {int(ids.max())} outside the vocabulary of {cfg.vocab_size}")
        if types.size and (types.min() < 0 or types.max() >= cfg.type_vocab_size):
            raise UserError(f"{self.path.name}: token_type_ids must be in [0, {cfg.type_vocab_size})")

    def _run(self, inputs):
        raise NotImplementedError


class OrtSession(ExportedSession):
    """ONNX Runtime on the CPU. threads=None lets ONNX Runtime choose; benchmarks pin it."""

    def __init__(self, path: Path, threads: int | None = None, check_inputs: bool = True, optimized_path=None):
        import onnx
        import onnxruntime as ort

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf DecodeError and friends
            raise UserError(f"{path}: not a readable ONNX file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        super().__init__(path, {p.key: p.value for p in proto.metadata_props}, check_inputs)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.log_severity_level = 3  # errors only: the int8 graphs print harmless shape-inference notes
        if optimized_path is not None:
            so.optimized_model_filepath = str(optimized_path)
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in self.session.get_outputs()]
        self.output_names = self.output_names or tuple(names)
        self._input_names = [i.name for i in self.session.get_inputs()]

    def _run(self, inputs):
        return self.session.run(list(self.output_names), dict(zip(self._input_names, inputs)))


class ExecuTorchSession(ExportedSession):
    """An ExecuTorch program (XNNPACK-delegated), run through `executorch.runtime`."""

    def __init__(self, path: Path, check_inputs: bool = True):
        sidecar = path.with_name(path.name + ".json")
        if not sidecar.is_file():
            raise UserError(f"{path}: metadata file {sidecar.name} not found beside it; re-export with "
                            "`mobilebert export executorch`")
        super().__init__(path, json.loads(sidecar.read_text(encoding="utf-8")), check_inputs)
        try:
            from executorch.runtime import Runtime
        except ImportError:
            raise UserError(f"{path}: running .pte files needs the `executorch` package (pip install executorch)") from None
        import torch

        self._torch = torch
        program = Runtime.get().load_program(str(path))
        self.method = program.load_method("forward")
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        self.max_seq, self.max_batch = meta.get("mobilebert.max_seq"), meta.get("mobilebert.max_batch")

    def _check(self, ids, mask, types) -> None:
        super()._check(ids, mask, types)
        if self.max_seq and ids.shape[-1] > self.max_seq:
            raise UserError(f"{self.path.name}: sequence of {ids.shape[-1]} tokens is longer than the "
                            f"{self.max_seq} this program was exported for (--max-seq at export)")
        if self.max_batch and ids.shape[0] > self.max_batch:
            raise UserError(f"{self.path.name}: batch of {ids.shape[0]} is larger than the {self.max_batch} this "
                            "program was exported for (--max-batch at export); split the batch")

    def _run(self, inputs):
        outs = self.method.execute([self._torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
        return [o.detach().numpy() if hasattr(o, "numpy") else np.asarray(o) for o in outs]


def _tokenizer_from(meta: dict[str, str]):
    """The vocabulary embedded at export time as a Tokenizer, or None."""
    text = meta.get("mobilebert.vocab")
    if not text:
        return None
    from mobilebert.tokenizer import Tokenizer

    name = meta.get("mobilebert.vocab_name", "vocab.txt")
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / name
        p.write_text(text, encoding="utf-8")
        return Tokenizer.from_file(p)


def load_session(path: str | os.PathLike, threads: int | None = None, check_inputs: bool = True) -> ExportedSession:
    """Open an exported model: `.onnx` (ONNX Runtime, fp32 or int8) or `.pte` (ExecuTorch)."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.onnx")) + sorted(p.glob("*.pte"))
        if len(found) != 1:
            raise UserError(f"{p}: expected exactly one .onnx or .pte file in this folder, found {len(found)}")
        p = found[0]
    if not p.is_file():
        raise UserError(f"{p}: no such exported model file")
    if p.suffix == ".onnx":
        return OrtSession(p, threads=threads, check_inputs=check_inputs)
    if p.suffix == ".pte":
        return ExecuTorchSession(p, check_inputs=check_inputs)
    raise UserError(f"{p}: unknown exported model format (expected .onnx or .pte)")
