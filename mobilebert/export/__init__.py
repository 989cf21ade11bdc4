"""Deployment (paper §5): ONNX export and ExecuTorch programs checked against PyTorch, a runtime
wrapper for exported files (`runtime.load_session`), and the latency/size benchmark (`bench`).

Submodules import torch / onnx / executorch themselves; importing this package is cheap.
"""

__all__ = ["wrapper", "onnx", "mobile", "runtime", "bench"]
