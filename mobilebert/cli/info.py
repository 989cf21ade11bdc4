"""`mobilebert info PRESET_OR_CHECKPOINT [--seq N]`: parameters and FLOPs beside the paper's Table 1."""

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="parameters and forward FLOPs of a preset or checkpoint, beside the paper")
    p.add_argument("model", help="a preset name (see --list) or a checkpoint folder with config.json")
    p.add_argument("--seq", type=int, default=128, help="sequence length for the FLOP count (default 128)")
    p.add_argument("--activations", metavar="TEXT", help="run TEXT through the model (a checkpoint folder with a "
                   "vocabulary) and report the largest activation of each layer against fp16's range")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mobilebert.checkpoint import load_config
    from mobilebert.errors import ConfigError
    from mobilebert.info import explain, model_info
    from mobilebert.presets import PRESETS, get_config

    if args.model in PRESETS:
        name, cfg = args.model, get_config(args.model)
    elif Path(args.model).exists():
        name, cfg = None, load_config(args.model)
    else:
        raise ConfigError(f"{args.model!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint folder")
    if args.seq < 1 or args.seq > cfg.max_position_embeddings:
        raise ConfigError(f"--seq {args.seq}: must be between 1 and max_position_embeddings={cfg.max_position_embeddings}")
    info = model_info(cfg, args.seq)
    print(f"{args.model}: {cfg.num_hidden_layers} layers, inter-block {cfg.hidden_size}, intra {cfg.true_hidden_size}, "
          f"{cfg.num_attention_heads} heads, {cfg.num_feedforward_networks} FFN(s) of {cfg.intermediate_size}, "
          f"{cfg.normalization_type}, {cfg.hidden_act}")
    print(f"  parameters, total (with pre-training heads): {info.total:>13,}")
    print(f"  parameters, without heads:                   {info.without_heads:>13,}")
    print(f"  parameters, without embeddings (or heads):   {info.without_embeddings:>13,}")
    print(f"  forward FLOPs at batch 1, seq {args.seq}:          {info.flops / 1e9:>10.2f} G")
    for line in explain(name, cfg, info):
        print("  " + line)
    if args.activations:
        _report_activations(args, cfg)
    return 0


def _report_activations(args: argparse.Namespace, cfg) -> None:
    from mobilebert.heads import load_model
    from mobilebert.errors import UserError
    from mobilebert.info import activation_peaks
    from mobilebert.model import FP16_MAX
    from mobilebert.tokenizer import Tokenizer

    if args.model in __import__("mobilebert.presets").presets.PRESETS:
        raise UserError("--activations needs a checkpoint folder (random preset weights say nothing about fp16)")
    tok = Tokenizer.from_file(args.model)
    model = load_model(args.model).eval()
    peaks = activation_peaks(model, tok(args.activations, max_length=cfg.max_position_embeddings))
    over = [(n, p) for n, p in peaks if not p <= FP16_MAX]
    top = max(peaks, key=lambda np_: np_[1])
    print(f"  largest activation: {top[1]:.4g} at {top[0]}")
    if over:
        print(f"  fp16 overflows first at {over[0][0]} ({over[0][1]:.4g} > {FP16_MAX:.0f}); "
              f"{len(over)} of {len(peaks)} modules exceed fp16: use bf16 or fp32")
    else:
        print(f"  fits fp16 on this input (headroom {FP16_MAX / top[1]:.1f}x)")
