"""MobileBERT's training method (paper §3.3-3.5 and §4): the losses and what each stage trains; no I/O.

    losses     knowledge-transfer losses as pure functions (FMT, AT, mean/variance, MLM/KD/NSP, eq. 2-4)
    transfer   teacher -> student copy, and what each kind of stage trains (freezing, PKT LR multiples)
    steps      per-step losses of each stage, in the engine's global-normalised convention
    shapes     teacher/student of different shapes: from-teacher student, layer map, head grouping, projections

The job that runs them (stages, checkpoints, resume, teachers read from disk) is mobilebert.recipes.train.
"""
