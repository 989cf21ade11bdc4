"""Mobile runtime artifact: an ExecuTorch program (XNNPACK delegate), checked against PyTorch.

Paper §5 runs MobileBERT with TFLite on a Pixel 4 (Table 7: 62 ms). TFLite/LiteRT's PyTorch converter
(`litert-torch`) would downgrade shared packages of this environment, while ExecuTorch installs beside
torch 2.13 untouched and ships a host runtime (`executorch.runtime`) that executes the very `.pte` file
a phone would load; so ExecuTorch is the mobile runtime here. The program keeps dynamic batch and
sequence axes up to `max_seq` (XNNPACK plans memory for that bound); `--int8` applies XNNPACK's dynamic
int8 quantization of the linear layers (torchao PT2E flow), the analogue of TFLite's `Optimize.DEFAULT`.

As for ONNX, the file is written to a temporary name, executed on real token ids at two shapes, and
compared with the PyTorch model's own forward; a float program must agree within `rtol`, an int8
program on every argmax. The model's config and vocabulary go into a `<file>.pte.json` sidecar.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from mobilebert import atomic
from mobilebert.errors import UserError
from mobilebert.export.onnx import (DEFAULT_RTOL, ParityError, ParityReport, atomic_output, check_parity,
                                    graph_model_for, metadata_for, sample_inputs)
from mobilebert.export.wrapper import ExportWrapper, head_name

INT8_RTOL = 0.1


def _require_executorch():
    try:
        import executorch  # noqa: F401  (only: is it installed?)
    except ImportError:
        raise UserError("the ExecuTorch export needs the `executorch` package: pip install executorch") from None


def _dynamic_shapes(model, max_seq: int, max_batch: int):
    from torch.export import Dim

    # The trigram embedding slices [1:] and [:-1], which torch.export specialises for length 2: start at 3.
    # XNNPACK plans activation memory for the upper bounds: keep them as small as the use needs.
    seq = Dim("sequence", min=3, max=max_seq)
    batch = Dim("batch", min=1, max=max_batch)
    if head_name(model) == "MobileBertForMultipleChoice":
        spec = {0: batch, 1: Dim("choices", min=1, max=16), 2: seq}
    else:
        spec = {0: batch, 1: seq}
    return (spec, spec, spec)


def lower_to_executorch(wrapper, example, dynamic_shapes, int8: bool = False) -> bytes:
    """torch.export -> (optional XNNPACK dynamic int8) -> edge -> XNNPACK delegate -> .pte bytes."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from torch.export import export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if int8:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                                  get_symmetric_quantization_config)
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            gm = export(wrapper, example, dynamic_shapes=dynamic_shapes).module()
            quantizer = XNNPACKQuantizer().set_global(
                get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
            gm = prepare_pt2e(gm, quantizer)
            gm(*example)  # dynamic quantization needs no ranges; one pass initialises the observers
            wrapper = convert_pt2e(gm)
        program = export(wrapper, example, dynamic_shapes=dynamic_shapes)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        return lowered.to_executorch().buffer


def export_executorch(model, out, max_seq: int | None = None, rtol: float = DEFAULT_RTOL, tokenizer=None,
                      vocab_path: Path | None = None, fold_nonorm: bool = False, int8: bool = False,
                      max_batch: int = 16, fuse: bool = False) -> ParityReport:
    """Write `out` (.pte) and `out.json`, after checking the program against PyTorch; ParityError otherwise."""
    _require_executorch()
    out = Path(out)
    if out.suffix != ".pte":
        raise UserError(f"--out {out}: the file name must end in .pte")
    if max_seq is None:  # 128, or fewer where the model has fewer positions
        max_seq = min(128, model.config.max_position_embeddings)
    if not 3 <= max_seq <= model.config.max_position_embeddings:
        raise UserError(f"--max-seq {max_seq}: must be from 3 to the model's max_position_embeddings="
                        f"{model.config.max_position_embeddings}")
    if max_batch < 2:
        raise UserError(f"--max-batch {max_batch}: must be at least 2 (the check runs two batch sizes)")
    model = model.eval().float()
    # fuse: the residual steps as linear + add, which XNNPACK quantizes
    graph_model = graph_model_for(model, fuse, fold_nonorm, residual_gemm=False)
    wrapper = ExportWrapper(graph_model).eval()  # (B, S, H): FusedLayer flattens per layer (token-major over
    # the whole stack made torch.export's symbolic shapes grow until sympy took minutes per layer)
    batches = [sample_inputs(model, tokenizer), sample_inputs(model, tokenizer, batch=2, seed=1)]
    batches = [tuple(t[..., :max_seq] for t in b) for b in batches]
    blob = lower_to_executorch(wrapper, batches[0], _dynamic_shapes(model, max_seq, max_batch), int8=int8)
    meta = metadata_for(model, vocab_path)
    meta["mobilebert.max_seq"] = max_seq
    meta["mobilebert.max_batch"] = max_batch
    meta["mobilebert.quantized"] = "int8-dynamic" if int8 else ""
    tmp, cleanup = atomic_output(out)
    sidecar = out.with_name(out.name + ".json")
    tmp_side = tmp.with_name(tmp.name + ".json")
    try:
        tmp.write_bytes(blob)
        tmp_side.write_text(json.dumps(meta), encoding="utf-8")
        from mobilebert.export.runtime import ExecuTorchSession

        session = ExecuTorchSession(tmp, check_inputs=False)
        # int8: within 10% of the output scale; its accuracy is checked on a dev set (mobilebert quantize).
        report = ParityReport(rtol=max(rtol, INT8_RTOL) if int8 else rtol, require_argmax=not int8)
        check_parity(session, model, batches, report)
        if not report.ok:
            what = f"rtol {report.rtol:g}" + ("" if int8 else " and identical argmax")
            raise ParityError(f"{out}: ExecuTorch program disagrees with PyTorch ({what}): {report}; no file written")
        atomic.commit(tmp_side, sidecar)
        atomic.commit(tmp, out)
    finally:
        cleanup()
        if tmp_side.exists():
            tmp_side.unlink()
    return report
