"""The jobs, one module per `mobilebert` command that trains or measures something (torchtune's recipes).

Each recipe reads top to bottom: settings in, a setup, a run that hands its loss step to the one engine loop
(`mobilebert.engine.loop.train_loop`), and the files it writes. The command line (`mobilebert.cli`) only
parses arguments and calls a recipe; recipes call down into the method and task layers
(distill, tasks, export, quant, engine, data), never the other way.

    train        teacher pre-training -> knowledge transfer -> pre-training distillation (paper §3.5, §4)
    finetune     GLUE / SQuAD / custom fine-tuning, with optional task distillation and QAT
    quantize     post-training int8 (ONNX Runtime or PyTorch dynamic) with an accuracy gate
    bench        latency of the exported runtimes
    settings     the settings vocabulary and checks both training recipes share (device, precision, lr ...)
"""
