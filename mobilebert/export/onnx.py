"""ONNX export of MobileBERT (base model and every task head), checked against PyTorch before it is kept.

Paper §5 / official `run_classifier.py --export_dir` exports a fixed-signature graph for on-device
inference; here the graph is ONNX with dynamic batch and sequence axes (and choices, for multiple
choice). Peers' exports are known to drift silently (optimum#1027: max diff 34 against PyTorch), so
`export_onnx` never trusts the exporter: it writes to a temporary file, runs the graph in ONNX Runtime
on real token ids at two different shapes, compares every output with the *original* PyTorch model
(max absolute and relative difference, relative = max|a-b| / max|b|, and argmax agreement for logits),
and only then moves the file into place. A failed check raises `ParityError` and leaves nothing behind.

The model's config (and the vocabulary, when one is found) travel inside the file as ONNX metadata,
so `mobilebert.export.runtime.load_session` can run and tokenize for an exported model on its own.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mobilebert import atomic
from mobilebert.errors import UserError
from mobilebert.export.wrapper import INPUT_NAMES, ExportWrapper, head_name, output_names, reference_outputs

OPSET_MIN, OPSET_MAX = 14, 20  # SDPA needs 14; torch's TorchScript exporter stops at 20
DEFAULT_OPSET = 17
DEFAULT_RTOL = 1e-4
# Real English sentences (and a pair) for parity checks when no sample file is given.
SAMPLE_TEXTS = [
    ("it 's a charming and often affecting journey .", None),
    ("unflinchingly bleak and desperate", None),
    ("the film is strictly routine .", "a gorgeous , witty , seductive movie ."),
    ("MobileBERT is a thin version of BERT_LARGE, equipped with bottleneck structures.", None),
]


class ParityError(UserError):
    """An exported or quantized model disagrees with PyTorch beyond the tolerance."""


@dataclass
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float  # max|a - b| / max|b|
    argmax_agree: float | None = None  # fraction of rows whose argmax matches (logits only)

    def __str__(self) -> str:
        agree = "" if self.argmax_agree is None else f", argmax agreement {self.argmax_agree:.1%}"
        return f"{self.name}: max abs diff {self.max_abs:.3g}, max rel diff {self.max_rel:.3g}{agree}"


@dataclass
class ParityReport:
    diffs: list[OutputDiff] = field(default_factory=list)
    rtol: float = DEFAULT_RTOL
    require_argmax: bool = True  # int8 programs are gated by rtol only (their argmax is checked on a dev set)

    @property
    def ok(self) -> bool:
        return all(d.max_rel <= self.rtol and (not self.require_argmax or d.argmax_agree in (None, 1.0))
                   for d in self.diffs)

    def __str__(self) -> str:
        return "; ".join(str(d) for d in self.diffs)


def compare_outputs(names, got, want, rtol: float = DEFAULT_RTOL, report: ParityReport | None = None) -> ParityReport:
    """Per-output max abs / rel difference; argmax agreement over the last axis for logit outputs."""
    report = report or ParityReport(rtol=rtol)
    for name, a, b in zip(names, got, want):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            raise ParityError(f"output {name}: shape {a.shape} differs from PyTorch's {b.shape}")
        abs_diff = float(np.abs(a - b).max()) if a.size else 0.0
        rel = abs_diff / max(float(np.abs(b).max()) if b.size else 0.0, 1e-12)
        agree = None
        if "logits" in name and a.shape[-1] > 1:
            # Rows whose two best reference logits tie to float precision have no defined argmax.
            top2 = np.sort(b, axis=-1)[..., -2:]
            defined = (top2[..., 1] - top2[..., 0]) > 1e-6 * max(float(np.abs(b).max()), 1e-12)
            same = a.argmax(-1) == b.argmax(-1)
            agree = float(same[defined].mean()) if defined.any() else 1.0
        prev = next((d for d in report.diffs if d.name == name), None)
        if prev is None:
            report.diffs.append(OutputDiff(name, abs_diff, rel, agree))
        else:  # several input batches: keep the worst
            prev.max_abs, prev.max_rel = max(prev.max_abs, abs_diff), max(prev.max_rel, rel)
            if agree is not None:
                prev.argmax_agree = min(prev.argmax_agree, agree)
    return report


def check_opset(opset: int) -> int:
    if not isinstance(opset, int) or not OPSET_MIN <= opset <= OPSET_MAX:
        raise UserError(f"--opset {opset}: unsupported; choose an ONNX opset from {OPSET_MIN} to {OPSET_MAX}")
    return opset


def sample_inputs(model, tokenizer=None, texts=None, batch: int | None = None, seed: int = 0):
    """(input_ids, attention_mask, token_type_ids) int64 tensors with padding, shaped for the model's head.

    With a tokenizer the rows are real sentences; without one they are random in-vocabulary ids with
    [CLS]/[SEP]-like ends and ragged lengths (so the attention mask has padded positions either way)."""
    cfg = model.config
    texts = list(texts or SAMPLE_TEXTS)
    if batch is not None:
        texts = (texts * (batch // len(texts) + 1))[:batch]
    if tokenizer is not None:
        a = [t[0] for t in texts]
        b = [t[1] or "" for t in texts] if any(t[1] for t in texts) else None
        max_len = min(cfg.max_position_embeddings, 128)
        enc = tokenizer(a, b, max_length=max_len, truncation="longest_first", padding="longest")
        ids, mask, types = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    else:
        g = torch.Generator().manual_seed(seed)
        n, length = len(texts), min(cfg.max_position_embeddings, 24)
        ids = torch.randint(999, cfg.vocab_size, (n, length), generator=g)
        lengths = [length - 3 * i % max(length - 2, 1) for i in range(n)]
        mask = torch.tensor([[1] * k + [0] * (length - k) for k in lengths])
        ids = ids * mask
        types = torch.zeros_like(ids)
    types = types.clamp(max=cfg.type_vocab_size - 1)
    if head_name(model) == "MobileBertForMultipleChoice":
        # Two choices per example: (B, C, S).
        ids, mask, types = (t[: t.shape[0] // 2 * 2].reshape(-1, 2, t.shape[-1]) for t in (ids, mask, types))
    return ids, mask, types


def load_for_export(path: str | os.PathLike, task: str | None = None):
    """Load a checkpoint folder for export; a missing path or a folder that is not a model is a UserError."""
    from mobilebert.heads import load_model

    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such model folder or file")
    return load_model(p, task=task).eval()


def find_vocab(model_path: str | os.PathLike | None, vocab: str | os.PathLike | None = None) -> Path | None:
    """The vocabulary to embed: `vocab` if given, else vocab.txt / tokenizer.json beside the checkpoint."""
    if vocab is not None:
        if not Path(vocab).is_file():
            raise UserError(f"--vocab {vocab}: file not found")
        return Path(vocab)
    if model_path is None:
        return None
    folder = Path(model_path) if Path(model_path).is_dir() else Path(model_path).parent
    for name in ("vocab.txt", "tokenizer.json"):
        if (folder / name).is_file():
            return folder / name
    return None


def metadata_for(model, vocab_path: Path | None) -> dict[str, str]:
    meta = {"mobilebert.config": json.dumps(model.config.to_hf_dict()), "mobilebert.head": head_name(model),
            "mobilebert.outputs": json.dumps(list(output_names(model)))}
    if vocab_path is not None:
        meta["mobilebert.vocab_name"] = vocab_path.name
        meta["mobilebert.vocab"] = vocab_path.read_text(encoding="utf-8")
    return meta


def set_metadata(onnx_path: str | os.PathLike, meta: dict[str, str]) -> None:
    import onnx

    m = onnx.load(str(onnx_path))
    existing = {p.key: p for p in m.metadata_props}
    for key, value in meta.items():
        if key in existing:
            existing[key].value = value
        else:
            m.metadata_props.add(key=key, value=value)
    onnx.save(m, str(onnx_path))


def _dynamic_axes(model) -> dict[str, dict[int, str]]:
    mc = head_name(model) == "MobileBertForMultipleChoice"
    axes = {n: ({0: "batch", 1: "choices", 2: "sequence"} if mc else {0: "batch", 1: "sequence"}) for n in INPUT_NAMES}
    for name in output_names(model):
        if name in ("last_hidden_state", "prediction_logits", "start_logits", "end_logits") or \
                (name == "logits" and head_name(model) in ("MobileBertForMaskedLM", "MobileBertForTokenClassification")):
            axes[name] = {0: "batch", 1: "sequence"}
        elif mc:
            axes[name] = {0: "batch", 1: "choices"}
        else:
            axes[name] = {0: "batch"}
    return axes


def check_parity(session, model, batches, report: ParityReport) -> ParityReport:
    """Run `session` (ONNX Runtime or ExecuTorch: arrays in, {output name: array} out) on each batch and
    compare with the PyTorch model's own forward; the worst difference per output goes into `report`."""
    names = output_names(model)
    for ids, mask, types in batches:
        want = [t.float().numpy() for t in reference_outputs(model, ids, mask, types)]
        got = session(ids.numpy(), mask.numpy(), types.numpy())
        compare_outputs(names, [got[n] for n in names], want, report.rtol, report)
    return report


def check_onnx_parity(onnx_path, model, batches, rtol: float = DEFAULT_RTOL) -> ParityReport:
    """Run the ONNX file in ONNX Runtime on each batch and compare with the PyTorch model's own forward."""
    from mobilebert.export.runtime import load_session

    return check_parity(load_session(onnx_path, check_inputs=False), model, batches, ParityReport(rtol=rtol))


def graph_model_for(model, fuse: bool = False, fold_nonorm: bool = False, residual_gemm: bool = True):
    """The model an export traces: fused (mobilebert.export.fuse, which folds too; `residual_gemm` as there),
    NoNorm-folded (mobilebert.export.fold), or `model` itself. Parity is always checked against `model`."""
    if fuse:
        from mobilebert.export.fuse import fuse_for_inference

        return fuse_for_inference(model, residual_gemm=residual_gemm)
    if fold_nonorm:
        from mobilebert.export.fold import fold_nonorm as fold

        return fold(model)[0]
    return model


def atomic_output(out: Path):
    """A temporary path in `out`'s folder (so the final rename is atomic) and a cleanup function."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # not created yet: the writer creates it with the usual permissions (mkstemp would make it 0600)
    tmp = str(atomic.temp_path(out))

    def cleanup():
        for p in (tmp, tmp + ".data"):
            if os.path.exists(p):
                os.unlink(p)
    return Path(tmp), cleanup


def export_onnx(model, out: str | os.PathLike, opset: int = DEFAULT_OPSET, rtol: float = DEFAULT_RTOL,
                tokenizer=None, vocab_path: Path | None = None, fold_nonorm: bool = False,
                token_major: bool = True, fuse: bool = False, trim_rows: bool = True) -> ParityReport:
    """Export `model` (any head) to `out` and check it against PyTorch; raises ParityError (no file) on failure.

    fold_nonorm: merge NoNorm into adjacent linears first (mobilebert.export.fold); the check still
    compares with the unfolded model. fuse: fold, then carry the residual NoNorms and merge the linears
    that share an input (mobilebert.export.fuse; implies token-major). token_major: run the encoder on (B*S, H) (`wrapper.encode`; faster
    in ONNX Runtime); False keeps (B, S, H), for comparison. trim_rows: a siamese classifier's sentence rows are
    trimmed to the longer sentence in the graph (`wrapper.trim_rows`); False keeps the input's length, for
    comparison (benchmarks/siamese_trim.py)."""
    check_opset(opset)
    out = Path(out)
    if out.suffix != ".onnx":
        raise UserError(f"--out {out}: the file name must end in .onnx")
    model = model.eval().float()
    graph_model = graph_model_for(model, fuse, fold_nonorm)
    wrapper = ExportWrapper(graph_model, token_major=token_major or fuse, trim_rows=trim_rows)  # fused: token-major
    # Two shapes: the trace shape and another batch/sequence size, so a lost dynamic axis shows up.
    batches = [sample_inputs(model, tokenizer), sample_inputs(model, tokenizer, batch=2, seed=1)]
    if batches[1][0].shape[-1] == batches[0][0].shape[-1]:
        ids, mask, types = batches[1]
        pad = torch.zeros_like(ids[..., :3])
        batches[1] = (torch.cat([ids, pad], -1), torch.cat([mask, pad], -1), torch.cat([types, pad], -1))
    tmp, cleanup = atomic_output(out)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(wrapper, batches[0], str(tmp), input_names=list(INPUT_NAMES),
                              output_names=list(wrapper.output_names), dynamic_axes=_dynamic_axes(model),
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        set_metadata(tmp, metadata_for(model, vocab_path))
        report = check_onnx_parity(tmp, model, batches, rtol)
        if not report.ok:
            raise ParityError(f"{out}: ONNX export disagrees with PyTorch beyond rtol {rtol:g} ({report}); "
                              "no file written")
        atomic.commit(tmp, out)
    finally:
        cleanup()
    return report
