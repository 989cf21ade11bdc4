"""MobileBERT's training method (paper §3.3-3.5 and §4): teacher pre-training, layer-wise knowledge transfer
(PKT / JKT / AKT, or the bare baseline) and pre-training distillation, as one pipeline.

    losses     knowledge-transfer losses as pure functions (FMT, AT, mean/variance, MLM/KD/NSP, eq. 2-4)
    transfer   teacher -> student copy, and what each kind of stage trains (freezing, PKT LR multiples)
    steps      per-step losses of each stage, in the engine's global-normalised convention
    settings   the `mobilebert train` YAML as dataclasses, and teacher/student compatibility checks
    teacher    any BERT-family teacher checkpoint (HF, sentence-transformers): config, heads, vocabulary
    shapes     teacher/student of different shapes: from-teacher student, layer map, head grouping, projections
    bridge     what one run does about them (decided before anything is written, printed at the start)
    pipeline   the stages, checkpoints, resume and exports (`Pipeline(settings).run()`)
    estimate   up-front FLOP and time estimate; report: the end-of-run summary and evaluation
"""
