"""PyTorch-side int8 of MobileBERT: dynamic int8 linear layers (NoNorm folding, a graph rewrite, lives in
mobilebert.export.fold).

Dynamic int8 (`quantize_torch_dynamic`). Paper §3.3 / Table 6 use TFLite dynamic-range
quantization: int8 weights, activations quantized on the fly. PyTorch's
`torch.ao.quantization.quantize_dynamic` does the same for `nn.Linear` on the CPU (fbgemm/x86
kernels), which lets `mobilebert quantize --method torch-dynamic` and `mobilebert bench` measure int8
in the PyTorch runtime without any export. The attention matmuls (activation x activation) stay in
float, as in the ONNX Runtime path. torch's quantized modules are not part of the Hugging Face
checkpoint layout, so the quantized model is an in-memory object and is not saved.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


def quantize_torch_dynamic(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A copy of `model` whose nn.Linear layers run int8 weights with dynamically quantized inputs.

    The MLM head's extra matrix is used as a raw weight (not through Linear.forward) and stays float."""
    from torch.ao.quantization import quantize_dynamic

    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates quantized tensor creation in favour of torchao
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers, counting packed int8 weights of quantized linears."""
    total, seen = 0, set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    for m in model.modules():
        packed = getattr(m, "_packed_params", None)
        if packed is not None:
            w, b = packed._weight_bias()
            total += w.numel() * w.element_size() + (0 if b is None else b.numel() * b.element_size())
    return total
