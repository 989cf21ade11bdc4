"""Benchmark: quantization-aware training (`finetune model.qat=true`) against post-training int8, GLUE dev.

Paper §5 and the official QAT code: fake quantization during fine-tuning of the relu6 + NoNorm model, so
that the int8 model loses less. No pre-trained relu6 + NoNorm MobileBERT exists on this machine, so the
experiment trains a small one on the task itself (preset `debug-mobilebert` with `hidden_act=relu6`: 4
layers, 64-d inter-block, 32-d bottlenecks; random init, seeded), which is a far weaker model than the
paper's, and compares like with like:

1. fp32 fine-tuning from scratch for --epochs (lr --lr)                              -> base
2. from base, --extra-epochs more in fp32 (lr --extra-lr)                            -> fp32 control
3. from base, the same --extra-epochs with QAT (fake quantization at the official points) -> qat
4. `mobilebert quantize` scores the control and the QAT model, each against its own fp32 forward, on the
   full dev set: ONNX Runtime dynamic int8 (per-channel) and static QDQ int8 (calibrated on 128 train
   examples), the two post-training methods of Table 6.

    python benchmarks/qat_vs_ptq.py --glue ../shared/data/glue --task sst-2 --out runs/qat-sst2

Writes results.json and table.md to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def finetune(out: Path, init: str, args, epochs: float, lr: float, qat: bool) -> dict:
    from mobilebert.recipes.finetune import finetune as run
    from mobilebert.recipes.finetune_settings import FinetuneSettings
    from mobilebert.recipes.settings import load_settings

    overrides = [f"out={out}", f"data.task={args.task}", f"data.dir={args.glue}", f"model.init={init}",
                 f"model.tokenizer={args.vocab}", f"model.qat={str(qat).lower()}", f"train.epochs={epochs}",
                 f"optim.lr={lr}", "train.batch_size=32", "data.max_seq_length=64", "data.predict_test=false",
                 "train.progress=false", "train.log_every=200", f"train.seed={args.seed}",
                 f"data.max_train_examples={args.max_train}"]
    t = time.time()
    results = run(load_settings(FinetuneSettings, None, overrides))
    return {"best": results["best"], "minutes": (time.time() - t) / 60}


def main() -> None:
    import torch

    from mobilebert import get_config
    from mobilebert.model import MobileBertModel
    from mobilebert.recipes.quantize import quantize_checkpoint
    from kt_study_rows import data_root  # beside this file: $MOBILEBERT_DATA, else ../shared/data

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--glue", default=str(data_root() / "glue"))
    ap.add_argument("--vocab", default=None, help="vocab.txt (default: ../bert-base-uncased/vocab.txt from --glue)")
    ap.add_argument("--task", default="sst-2")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--extra-epochs", type=float, default=1.0)
    ap.add_argument("--extra-lr", type=float, default=1e-4)
    ap.add_argument("--max-train", type=int, default=0, help="0: the whole train set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/qat")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.vocab is None:
        args.vocab = str(Path(args.glue).parent / "bert-base-uncased" / "vocab.txt")
    init = out / "init"
    torch.manual_seed(args.seed)
    MobileBertModel(get_config("debug-mobilebert", hidden_act="relu6")).save_pretrained(init)
    runs = {"base": finetune(out / "base", str(init), args, args.epochs, args.lr, qat=False)}
    for name, qat in (("fp32-control", False), ("qat", True)):
        runs[name] = finetune(out / name, str(out / "base" / "best"), args, args.extra_epochs, args.extra_lr, qat)
    table = []
    for name in ("fp32-control", "qat"):
        for method in ("ort-dynamic", "ort-static"):
            r = quantize_checkpoint(out / name / "best", args.task.upper(), args.glue, out=out / f"{name}.{method}.onnx",
                                    method=method, max_drop=100.0, log=lambda *a: None).report
            table.append({"model": name, "method": method, "metric": r.metric, "fp32": 100 * r.fp32, "int8": 100 * r.int8,
                          "drop": r.drop, "agreement": r.agreement, "n": r.n})
            print(f"{name:13s} {method:12s} {r.metric} fp32 {100 * r.fp32:.2f} int8 {100 * r.int8:.2f} drop {r.drop:+.2f} "
                  f"agreement {100 * r.agreement:.2f}%")
    lines = ["| model | method | fp32 | int8 | drop (points) | agreement |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {t['model']} | {t['method']} | {t['fp32']:.2f} | {t['int8']:.2f} | {t['drop']:+.2f} | "
              f"{100 * t['agreement']:.2f}% |" for t in table]
    (out / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "runs": runs, "int8": table,
                                                  "torch": torch.__version__}, indent=2) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
