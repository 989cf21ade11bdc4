"""Up-front cost estimate of a training run: tokens, FLOPs and a rough wall-clock time per stage, and the
peak memory per process, which `train` and `finetune` compare with the machine's before anything is written.

FLOPs count the matrix multiplies (2 per multiply-add): per token and layer, the layer's weight matrices
plus the attention products (2 x S x intra for scores and context); the MLM head only at masked
positions. Training is 3x a forward (forward + backward). Knowledge-transfer and PD stages add one
teacher forward; PKT stage l runs both models l layers deep. Time = FLOPs / (a measured matmul rate x
a utilisation factor), so it is a rough guide (the quickstart's summary prints it beside the real time).
Memory: see `memory_estimate` below (weights, gradients, optimizer state, a teacher, measured activations).
"""

from __future__ import annotations

import os
import time

import torch

from mobilebert.config import MobileBertConfig

UTILISATION = {"cpu": 0.35, "cuda": 0.35}
H100_BF16 = 989e12  # dense bf16 FLOP/s of one H100 SXM (vendor figure), for the scale line


def _layer_macs(cfg: MobileBertConfig, seq_len: int) -> float:
    """Multiply-adds per token of one transformer layer (weights + attention products)."""
    H, I, F = cfg.hidden_size, cfg.true_hidden_size, cfg.num_feedforward_networks
    qk_in = I if (cfg.use_bottleneck_attention or cfg.key_query_shared_bottleneck) else H
    v_in = I if cfg.use_bottleneck_attention else H
    macs = 2 * qk_in * I + v_in * I + I * I            # Q, K, V, attention output
    macs += F * 2 * I * cfg.intermediate_size          # F stacked FFNs
    if cfg.use_bottleneck:
        macs += H * I * (2 if cfg.key_query_shared_bottleneck else 1) + I * H  # bottlenecks in/out
    return macs + 2 * seq_len * I                      # scores and context


def forward_flops_per_token(cfg: MobileBertConfig, seq_len: int, layers: int | None = None,
                            mlm_fraction: float = 0.0) -> float:
    layers = cfg.num_hidden_layers if layers is None else layers
    emb = 3 * cfg.embedding_size * cfg.hidden_size if cfg.trigram_input else 0
    head = mlm_fraction * (cfg.hidden_size ** 2 + cfg.hidden_size * cfg.vocab_size)
    return 2.0 * (emb + layers * _layer_macs(cfg, seq_len) + head)


def measure_matmul_flops(device: torch.device, seconds: float = 0.3) -> float:
    """Achieved FLOP/s of a 512x512 fp32 matmul on `device` (the machine's own yardstick)."""
    n = 512
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(4):
            a @ b
        reps += 4
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def estimate(stages, teacher: MobileBertConfig | None, student: MobileBertConfig, seq_len: int,
             mlm_fraction: float, flops_per_s: float, world_size: int = 1, device_type: str = "cpu",
             doubled: frozenset = frozenset()) -> list[dict]:
    """One row per stage: steps, tokens, PFLOPs and estimated hours on this machine x world_size. Stages whose
    kind is in `doubled` run both models on the masked and the clean batch (kt.input=clean with MLM in the step)."""
    rows = []
    rate = flops_per_s * UTILISATION.get(device_type, 0.35) * world_size
    for st in stages:
        tokens = st.train.steps * st.train.batch_size * seq_len
        if st.kind == "teacher":
            per_tok = 3 * forward_flops_per_token(teacher, seq_len, mlm_fraction=mlm_fraction)
        else:
            depth = st.layer if st.kind in ("pkt", "emb") else None
            heads = mlm_fraction if st.kind in ("pd", "akt", "bare") else 0.0
            per_tok = 3 * forward_flops_per_token(student, seq_len, depth, heads)
            if st.kind != "bare" and teacher is not None:
                t_depth = getattr(st, "teacher_layer", None)  # the layer map's m_l (different depths)
                per_tok += forward_flops_per_token(teacher, seq_len, depth if t_depth is None else t_depth, heads)
        flops = per_tok * tokens * (2 if st.kind in doubled else 1)
        rows.append({"stage": st.name, "steps": st.train.steps, "tokens": tokens, "pflops": flops / 1e15,
                     "hours": flops / rate / 3600})
    return rows


def format_estimate(rows: list[dict], flops_per_s: float, device: str) -> str:
    lines = [f"cost estimate (matmul rate {flops_per_s / 1e9:.0f} GFLOP/s on {device}, "
             f"{int(UTILISATION.get(device.split(':')[0], 0.35) * 100)}% utilisation assumed):",
             f"  {'stage':<10} {'steps':>9} {'tokens':>10} {'PFLOP':>10} {'time':>10}"]

    def fmt_time(h: float) -> str:
        if h >= 24 * 730:
            return f"{h / 24 / 365:,.0f} years"
        return f"{h * 60:.1f} min" if h < 1 else (f"{h:.1f} h" if h < 48 else f"{h / 24:,.1f} days")

    compact = rows if len(rows) <= 8 else rows[:3] + [None] + rows[-3:]
    for r in compact:
        if r is None:
            lines.append(f"  {'...':<10}")
            continue
        lines.append(f"  {r['stage']:<10} {r['steps']:>9,} {r['tokens']:>10.3g} {r['pflops']:>10.3g} "
                     f"{fmt_time(r['hours']):>10}")
    total = sum(r["hours"] for r in rows)
    ref_hours = sum(r["pflops"] for r in rows) * 1e15 / (8 * H100_BF16 * UTILISATION["cuda"]) / 3600
    lines.append(f"  {'total':<10} {sum(r['steps'] for r in rows):>9,} {sum(r['tokens'] for r in rows):>10.3g} "
                 f"{sum(r['pflops'] for r in rows):>10.3g} {fmt_time(total):>10}")
    lines.append(f"  for scale: 8 x H100 (989 TFLOP/s dense bf16 each) at the same utilisation: {fmt_time(ref_hours)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- memory
# Peak memory of a training step, per process:
#   trained weights (fp32) + their gradients + the optimizer's two moments (AdamW and LAMB alike) + one
#   parameter-sized temporary for the update = 20 bytes per trained parameter;
#   a frozen teacher's weights (4 bytes per parameter) in KT and PD;
#   activations: what autograd keeps for the backward pass of one micro-batch. These are not counted by
#   formula: `saved_bytes` measures them on 1- and 2-layer copies of the model at the run's sequence
#   length, for 1 and 2 sequences and in the run's precision, and the run's size is extrapolated linearly
#   (the layers are identical; every term is per sequence or per model). KT stages also keep the
#   teacher's feature maps and attention scores for the layer losses;
# The torch runtime (and a CUDA context) already exists when the estimate is compared with the memory still
# available, so it is not counted. Checked on CPU against the growth of peak RSS over two real LAMB steps
# (MlmNspLoss, seq 128): MobileBERT at batch 96, estimate 8.7 GiB, measured 8.6 GiB; debug-ibbert at batch 256,
# 2.9 vs 3.5 GiB, both with glibc's MALLOC_MMAP_THRESHOLD_ fixed. With glibc's default (adaptive) threshold,
# freed activation blocks stay in the process, and the deep model's RSS grew by 16.2 GiB: the estimate
# counts tensors, not allocator slack.
BYTES_PER_TRAINED_PARAM = 20
GiB = float(1 << 30)


def size(n: float) -> str:
    return f"{n / GiB:,.1f} GiB" if n >= GiB / 10 else f"{n / (1 << 20):.0f} MiB"


def saved_bytes(fn, params=()) -> tuple[int, int]:
    """Bytes of the distinct tensor storages autograd saves for backward while `fn()` runs, as (activations,
    weight copies): `params` themselves are not counted (they are counted apart), and a saved tensor of a
    parameter's shape but another dtype is autocast's low-precision copy of it (one per model, not per
    sequence). `fn` returns the output, which keeps the graph alive until the count is done."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    shapes = {(tuple(p.shape), p.dtype) for p in params}
    dtypes = {p.dtype for p in params}
    act: dict[int, int] = {}
    copies: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            copy = t.dtype not in dtypes and any(shape == tuple(t.shape) for shape, _ in shapes)
            (copies if copy else act)[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(act.values()), sum(copies.values())


def _autocast(precision: str):
    # CPU autocast in bf16 stands for fp16 too: both keep 2-byte copies.
    if precision == "fp32":
        return torch.autocast("cpu", enabled=False)
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _probe_model(cfg: MobileBertConfig):
    """A `MobileBertForPreTraining` with zero weights, built without the cost of random initialisation."""
    from mobilebert.heads import MobileBertForPreTraining

    with torch.device("meta"):
        model = MobileBertForPreTraining(cfg)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, buf in model.named_buffers():
            if name.endswith("position_ids"):
                buf.copy_(torch.arange(buf.shape[-1]).expand_as(buf))
            else:
                buf.zero_()
    model.tie_weights()  # to_empty gives tied parameters their own storage
    return model.train()


_PROBES: dict = {}  # (config, seq_len, n_masked, precision, hidden) -> probe: the numbers depend on nothing else


def _pretraining_probe(cfg: MobileBertConfig, seq_len: int, n_masked: int, precision: str, hidden: bool) -> dict:
    key = (repr(cfg), seq_len, n_masked, precision, hidden)
    if key not in _PROBES:
        _PROBES[key] = _measure_probe(cfg, seq_len, n_masked, precision, hidden)
    return dict(_PROBES[key])


def _measure_probe(cfg: MobileBertConfig, seq_len: int, n_masked: int, precision: str, hidden: bool) -> dict:
    """Activation bytes of a pre-training forward (MLM at `n_masked` positions + NSP) through 1 and 2 layers
    for 1 and 2 sequences, as sequences x (seq + layers x seq_layer) + fixed + layers x per_layer (fixed:
    per forward, such as the MLM decoder matrix and autocast's weight copies); and the parameter count as
    params + layers x layer_params."""
    from mobilebert.distill.steps import run_model

    measured, params = {}, {}
    for layers in (1, 2):
        model = _probe_model(cfg.replace(num_hidden_layers=layers))
        weights = list(model.parameters())
        params[layers] = sum(p.numel() for p in weights)
        for n in (1, 2):
            ids = (torch.arange(n * seq_len).view(n, seq_len) % (cfg.vocab_size - 1)) + 1
            labels = torch.full_like(ids, -100)
            labels[:, 1:1 + n_masked] = ids[:, 1:1 + n_masked]
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                     "token_type_ids": torch.zeros_like(ids), "labels": labels}

            def fwd():
                with _autocast(precision):
                    return run_model(model, batch, heads=True, hidden=hidden, scores=hidden)

            measured[layers, n] = sum(saved_bytes(fwd, weights))
        del model, weights
    seq1, seq2 = measured[1, 2] - measured[1, 1], measured[2, 2] - measured[2, 1]
    fix1, fix2 = measured[1, 1] - seq1, measured[2, 1] - seq2
    return {"seq_layer": seq2 - seq1, "seq": 2 * seq1 - seq2, "per_layer": fix2 - fix1, "fixed": 2 * fix1 - fix2,
            "layer_params": params[2] - params[1], "params": 2 * params[1] - params[2]}


def _at(probe: dict, layers: int, sequences: int) -> tuple[int, int]:
    """(parameters of the whole model, activation bytes for `sequences` through `layers` layers)."""
    return (probe["params"] + probe["layer_params"] * probe["model_layers"],
            max(0, probe["fixed"] + layers * probe["per_layer"]
                + sequences * (probe["seq"] + layers * probe["seq_layer"])))


def stage_key(kind: str) -> str:
    """The settings group of a stage kind (for messages)."""
    return "teacher.train" if kind == "teacher" else ("pd" if kind == "pd" else "kt")


def memory_estimate(stages, teacher: MobileBertConfig | None, student: MobileBertConfig, seq_len: int,
                    max_predictions: int, precision: str = "fp32", world_size: int = 1,
                    doubled: frozenset = frozenset()) -> list[dict]:
    """One row per stage: bytes per process of weights+gradients+optimizer, teacher, activations, total.
    Stages whose kind is in `doubled` run on twice the micro-batch (the masked rows, then the clean ones)."""
    probes = {}

    def probe(name: str, cfg: MobileBertConfig, hidden: bool) -> dict:
        if (name, hidden) not in probes:
            p = _pretraining_probe(cfg, seq_len, max_predictions, precision, hidden)
            probes[name, hidden] = {**p, "model_layers": cfg.num_hidden_layers}
        return probes[name, hidden]

    rows = []
    for st in stages:
        micro = max(1, st.train.batch_size // world_size // st.train.grad_accum)
        rows_run = micro * (2 if st.kind in doubled else 1)  # the sequences the models run on
        kt = st.kind in ("pkt", "jkt", "akt")
        uses_teacher = st.kind not in ("teacher", "bare") and teacher is not None
        cfg = teacher if st.kind == "teacher" else student
        depth = st.layer if st.kind == "pkt" else cfg.num_hidden_layers
        params, act = _at(probe("teacher" if st.kind == "teacher" else "student", cfg, kt), depth, rows_run)
        logits = 4 * micro * max_predictions * cfg.vocab_size  # (M, V) fp32 MLM logits of the micro-batch
        act += 2 * logits  # the backward's gradients of the log-softmax and of the logits, alive together
        teacher_bytes = 0
        if uses_teacher:
            t = probe("teacher", teacher, False)
            t_params, one_layer = _at(t, 1, rows_run)
            teacher_bytes = 4 * t_params
            act += one_layer  # the no-grad teacher forward: about one layer's tensors alive at a time
            if st.kind in ("pd", "akt"):  # its MLM logits, kept for the distillation loss
                act += 4 * micro * max_predictions * teacher.vocab_size
            if kt:  # its feature maps and attention scores, kept for the layer losses (fp32)
                act += 4 * rows_run * seq_len * depth * (teacher.hidden_size + teacher.num_attention_heads * seq_len)
        weights = BYTES_PER_TRAINED_PARAM * params
        rows.append({"stage": st.name, "kind": st.kind, "micro_batch": micro, "weights": weights,
                     "teacher": teacher_bytes, "activations": act,
                     "total": weights + teacher_bytes + act})
    return rows


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """What a cgroup-v2 memory limit (containers) still leaves, if one is set."""
    try:
        limit = open("/sys/fs/cgroup/memory.max", encoding="ascii").read().strip()
        if limit == "max":
            return None
        used = int(open("/sys/fs/cgroup/memory.current", encoding="ascii").read())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def available_memory(device: torch.device) -> tuple[int | None, str]:
    """(bytes available to this process's training, a description): free GPU memory on a GPU; on CPU the
    kernel's MemAvailable (or a container's remaining limit, when lower) shared by this machine's processes."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free, f"{device} ({size(free)} free of {size(total)})"
    values = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    if not values:
        return None, "this machine (memory unknown)"
    have = min(values)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # torchrun on CPU: the processes share the RAM
    where = f"this machine ({size(have)} available" + (f", shared by {local} processes)" if local > 1 else ")")
    return have // local, where


def check_memory(rows: list[dict], have: int | None, where: str, override: str, hints: dict) -> None:
    """Refuse (ConfigError) when the largest stage needs more than `have`; `hints[kind]` = (batch key,
    grad_accum key, model key) to name in the message."""
    from mobilebert.errors import ConfigError

    if have is None or not rows:
        return
    big = max(rows, key=lambda r: r["total"])
    if big["total"] <= have:
        return
    batch_key, accum_key, model_key = hints[big["kind"]]
    parts = f"weights+gradients+optimizer {size(big['weights'])}"
    if big["teacher"]:
        parts += f", teacher {size(big['teacher'])}"
    parts += f", activations {size(big['activations'])} at micro-batch {big['micro_batch']}"
    act_one = big["activations"] / big["micro_batch"]
    if big["total"] - big["activations"] + act_one > have:
        fix = f"choose a smaller {model_key}"
    else:
        fix = f"lower {batch_key} or raise {accum_key}"
    raise ConfigError(f"{big['stage']}: the run needs about {size(big['total'])} ({parts}) but {where}; "
                      f"{fix}, or set {override}=true to start it anyway")


def check_finetune_memory(model, teacher, seq_len: int, micro: int, precision: str, device) -> None:
    """Refuse a run whose estimated peak memory exceeds the device's (train.allow_large=true overrides): the
    trained weights + gradients + AdamW moments + an update temporary (20 bytes a parameter), the teacher's
    weights, and the activations autograd keeps, measured on this model for 1 and 2 sequences of `seq_len`
    tokens and scaled to `micro` (as `memory_estimate` does for pre-training)."""
    measured = {}
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else torch.autocast(
        device.type, enabled=False)
    weights = list(model.parameters())
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # dropout draws no numbers
        for k in (1, 2):
            x = {"input_ids": torch.ones(k, seq_len, dtype=torch.long, device=device),
                 "attention_mask": torch.ones(k, seq_len, dtype=torch.long, device=device),
                 "token_type_ids": torch.zeros(k, seq_len, dtype=torch.long, device=device)}

            def fwd():
                with ctx:
                    return model(**x)

            measured[k] = sum(saved_bytes(fwd, weights))
    per_seq = measured[2] - measured[1]
    act = max(0, measured[1] - per_seq) + micro * per_seq
    params = sum(p.numel() for p in weights)
    t_bytes = 4 * sum(p.numel() for p in teacher.parameters()) if teacher is not None else 0
    row = {"stage": "finetune", "kind": "finetune", "micro_batch": micro, "weights": BYTES_PER_TRAINED_PARAM * params,
           "teacher": t_bytes, "activations": act}
    row["total"] = row["weights"] + t_bytes + act
    check_memory([row], *available_memory(device), "train.allow_large",
                 {"finetune": ("train.batch_size", "train.grad_accum", "model.init")})


def format_memory(rows: list[dict]) -> str:
    big = max(rows, key=lambda r: r["total"])
    return (f"memory estimate: {size(big['total'])} per process at most, beyond the torch runtime ({big['stage']}: "
            f"weights+gradients+optimizer {size(big['weights'])}, teacher {size(big['teacher'])}, activations "
            f"{size(big['activations'])} at micro-batch {big['micro_batch']})")
