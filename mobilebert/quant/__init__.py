"""int8 for MobileBERT (paper §3.3 Table 6, §5): ONNX Runtime dynamic and static (QDQ) post-training
quantization (`ort`), PyTorch dynamic quantization and NoNorm folding (`pytorch`), quantization-aware
training at the official fake-quant points (`qat.prepare_qat`), the fp32-vs-int8 accuracy gate
(`evaluate`) and the `mobilebert quantize` pipeline (`pipeline`)."""

__all__ = ["ort", "pytorch", "qat", "evaluate", "pipeline"]
