"""Pre-training step throughput: our MobileBertForPreTraining against transformers', same run, same weights.

Measures tokens/s of forward + backward (+ an optimizer-free step) on random token batches, alternating the
two implementations so that machine noise hits both alike, and reports the ratio. CPU by default; on a GPU
add `--device cuda --dtype bf16` (and `--compile` for torch.compile on both sides; `--preset bert-base` for
the BERT_BASE row of the issue's table). Usage:
    python benchmarks/model_throughput.py --preset mobilebert --batch 8 --seq 128 --steps 5
    python benchmarks/model_throughput.py --device cuda --dtype bf16 --batch 256 --steps 20 --compile
"""

import argparse
import json
import platform
import statistics
import time

import torch
import transformers as hf

import mobilebert as mb


def step_time(model, batch, sparse: bool, device: str, dtype) -> float:
    start = time.perf_counter()
    with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
        out = model(**batch, sparse_mlm=True) if sparse else model(**batch)
    out.loss.backward()
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="mobilebert")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models (same settings)")
    args = ap.parse_args()
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers under autocast; the same for both sides
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    cfg = mb.get_config(args.preset)
    ours = mb.MobileBertForPreTraining(cfg).to(args.device).train()
    theirs = hf.MobileBertForPreTraining(hf.MobileBertConfig(**{k: v for k, v in cfg.to_hf_dict().items()
                                                                if k not in ("true_hidden_size", "architectures")}))
    theirs.load_state_dict(ours.state_dict(), strict=False)
    theirs.to(args.device).train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, cfg.vocab_size, (args.batch, args.seq), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, ::7] = ids[:, ::7]  # ~15% of positions predicted, as in pre-training
    batch = {k: v.to(args.device) for k, v in dict(input_ids=ids, attention_mask=torch.ones_like(ids),
             token_type_ids=torch.zeros_like(ids), labels=labels,
             next_sentence_label=torch.zeros(args.batch, dtype=torch.long)).items()}
    run_ours, run_theirs = ours, theirs
    if args.compile:
        run_ours, run_theirs = torch.compile(ours), torch.compile(theirs)
    runs = {"transformers": (run_theirs, False), "ours (dense MLM)": (run_ours, False),
            "ours (sparse MLM)": (run_ours, True)}
    times = {k: [] for k in runs}
    for name, (m, sparse) in runs.items():  # warm-up (compiles, when --compile)
        for _ in range(3 if args.compile else 1):
            step_time(m, batch, sparse, args.device, dtype)
    for _ in range(args.steps):
        for name, (m, sparse) in runs.items():
            times[name].append(step_time(m, batch, sparse, args.device, dtype))
    tokens = args.batch * args.seq
    base = statistics.median(times["transformers"])
    result = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "transformers": hf.__version__, "threads": torch.get_num_threads(), **vars(args), "results": {}}
    if args.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    for name, ts in times.items():
        med = statistics.median(ts)
        result["results"][name] = {"median_s": round(med, 4), "tokens_per_s": round(tokens / med, 1),
                                   "speedup_vs_transformers": round(base / med, 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
