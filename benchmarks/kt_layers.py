"""Where the knowledge-transfer study's students lose the teacher (issue 11: "where a goal is missed, say what you
found out about why"): zero-shot STS-B layer by layer.

For the teacher (all-MiniLM-L6-v2) and every student the study has pre-trained (runs/kt-study: random, bare,
pkt-fmt, pkt-fmt-at, jkt, akt; rows not yet trained are left out), each STS-B dev sentence is encoded alone and its
token states are mean-pooled at the embedding output and after every layer (mobilebert.tasks.zeroshot). Per layer
two numbers:

    gold     Spearman of the pair cosines with the gold scores (the study's zero-shot column is the last layer)
    teacher  Spearman of the pair cosines with the teacher's pair cosines at the layer the student's layer learns
             from (the study's students have the teacher's depth, so the same index): how closely the student
             reproduces the teacher's similarity judgements, whatever their quality

A second table asks whether the fine-tuning recipe can reach what a model knows: a linear probe on frozen
last-layer features, [CLS] state against mean-pooled states. Pair features (|u - v|, u * v), ridge regression
fitted on STS-B train (the penalty picked on its last 10 %), Spearman on dev. The recipe's head reads [CLS].
A third table probes the recipe's own input, the pair in one pass: its [CLS], its mean, and its two sentences'
token means compared. Where the study's prepared corpus exists (STATE/shards), a fourth gives each student's
feature-map distance from the teacher layer by layer on MLM-masked text (what transfer reads with kt.input=masked)
and on the same text clean (what zero-shot use and fine-tuning read).

    python benchmarks/kt_layers.py [--state runs/kt-study] [--out docs/kt-layers.md] [--pairs N] [--no-probe]

Costs seconds per model on 1 thread (1,500 pairs, 6 layers); writes a Markdown table with machine, versions, date.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kt_study import ROWS, data_root, environment, minilm_dir  # noqa: E402
from kt_study_report import LABELS  # noqa: E402  (the study's row names)


def model_dirs(state: Path) -> dict[str, Path]:
    """Row -> model folder, for the rows whose model exists."""
    found = {"teacher": minilm_dir(), "random": state / "random-student"}
    found.update({row: state / "pretrain" / row / "student" for row in ROWS[2:]})
    return {row: p for row, p in found.items() if (p / "config.json").is_file()}


def measure(folder: Path, a: list[str], b: list[str], vocab: Path | None = None):
    """(L + 1, N) pair cosines of the model in `folder` (its own vocabulary, or `vocab`: a training checkpoint)."""
    from mobilebert.checkpoint import load_pretrained
    from mobilebert.model import MobileBertModel
    from mobilebert.tasks.zeroshot import pair_cosines_by_layer
    from mobilebert.tokenizer import Tokenizer

    model = load_pretrained(MobileBertModel, folder)
    return pair_cosines_by_layer(model, Tokenizer.from_file(vocab or folder), a, b)


def cls_and_mean(folder: Path, sentences: list[str], batch_size: int = 64):
    """(N, H) [CLS] states and (N, H) mean-pooled states of the last layer, as float64 arrays."""
    import torch

    from mobilebert.checkpoint import load_pretrained
    from mobilebert.model import MobileBertModel, masked_mean
    from mobilebert.tokenizer import Tokenizer

    model, tok = load_pretrained(MobileBertModel, folder).eval(), Tokenizer.from_file(folder)
    cls, mean = [], []
    with torch.no_grad():
        for i in range(0, len(sentences), batch_size):
            enc = tok(sentences[i:i + batch_size], max_length=128, padding="longest")
            h = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).last_hidden_state  # (B, S, H)
            cls.append(h[:, 0])
            mean.append(masked_mean(h, enc["attention_mask"]))
    return torch.cat(cls).double().numpy(), torch.cat(mean).double().numpy()


def cls_variation(folder: Path, sentences: list[str]) -> tuple[list[float], tuple[float, int, float, float]]:
    """Per hidden state (embeddings, layer 1..L): the share of the [CLS] state's energy that varies between
    sentences, sum of per-channel variances / mean squared norm (0: the same vector for every sentence); and of
    the last layer's [CLS] (mean norm, its largest channel on average, that channel's mean, the tokens' mean norm)."""
    import numpy as np
    import torch

    from mobilebert.checkpoint import load_pretrained
    from mobilebert.model import MobileBertModel
    from mobilebert.tokenizer import Tokenizer

    model, tok = load_pretrained(MobileBertModel, folder).eval(), Tokenizer.from_file(folder)
    enc = tok(sentences, max_length=128, padding="longest")
    with torch.no_grad():
        states = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"],
                       output_hidden_states=True).hidden_states
    out = []
    for h in states:
        c = h[:, 0].double().numpy()                                                     # (N, H)
        out.append(float(c.var(0).sum() / (np.linalg.norm(c, axis=1) ** 2).mean()))
    c = states[-1][:, 0].double().numpy()                                                # (N, H) last layer's [CLS]
    mean = c.mean(0)                                                                     # (H,)
    top = int(np.abs(mean).argmax())
    real = enc["attention_mask"].bool()
    real[:, 0] = False                                                                   # the other tokens
    tokens = float(states[-1][real].norm(dim=-1).mean())
    return out, (float(np.linalg.norm(c, axis=1).mean()), top, float(mean[top]), tokens)


def masked_and_clean(shards: Path, n: int = 32, step: int = 1000) -> tuple[dict, dict]:
    """n segments of the study's prepared corpus drawn as its pre-training batches are (step 1000: past the 500
    steps it trained), MLM-masked as transfer saw them, and with their original tokens restored."""
    from mobilebert.data.pretraining import PretrainingData
    from mobilebert.distill.steps import unmasked

    batch = PretrainingData(shards, seq_len=128, seed=0).batch(step, n)
    return batch, unmasked(batch)


def hidden_states(folder: Path, batches) -> list[tuple]:
    """Per batch, the model's hidden states (embeddings, layer 1..L), each (B, S, H)."""
    import torch

    from mobilebert.checkpoint import load_pretrained
    from mobilebert.model import MobileBertModel

    model = load_pretrained(MobileBertModel, folder).eval()
    with torch.no_grad():
        return [model(b["input_ids"], b["attention_mask"], b["token_type_ids"], output_hidden_states=True).hidden_states
                for b in batches]


def map_distances(student: list[tuple], teacher: list[tuple], batches) -> list[str]:
    """Per hidden state, "masked / clean": the transfer loss's distance of the student's feature maps from the
    teacher's (MSE of non-affine LayerNorm'd maps over the real tokens; 0 = equal, 2 = uncorrelated); "–" where
    the widths differ. Student hidden state l is compared with the teacher's l (the study's equal depths).
    `student`, `teacher`: `hidden_states` of the two models on `batches`."""
    from mobilebert.distill.losses import feature_map_loss

    # other widths have no common space outside training (its projections are not exported): None
    per = [[feature_map_loss(x, y, b["attention_mask"], standardize_maps=True).item()
            if x.shape[-1] == y.shape[-1] else None for x, y in zip(t, s)]
           for t, s, b in zip(teacher, student, batches)]
    return ["–" if None in pair else " / ".join(f"{v:.2f}" for v in pair) for pair in zip(*per)]


def distance_table(models: dict[str, Path], shards: Path) -> list[str]:
    """Markdown: every student's feature-map distance from the teacher per hidden state, masked / clean text.
    The corpus is tokenized with the study's (the teacher's) vocabulary: a model with another is left out."""
    from mobilebert.checkpoint import load_config

    batches = masked_and_clean(shards)
    configs = {row: load_config(folder) for row, folder in models.items()}
    teacher = hidden_states(models["teacher"], batches)  # once, for every student
    depth = max(c.num_hidden_layers for c in configs.values()) + 1
    lines = ["| model | " + " | ".join(["embeddings", *[f"layer {i}" for i in range(1, depth)]]) + " |",
             "|---|" + "---:|" * depth]
    for row, folder in models.items():
        if row == "teacher":
            continue
        if configs[row].vocab_size != configs["teacher"].vocab_size:
            print(f"distances: {row} left out (vocabulary of {configs[row].vocab_size}, not the corpus's)")
            continue
        cells = map_distances(hidden_states(folder, batches), teacher, batches)
        lines.append(f"| {LABELS.get(row, row)} | " + " | ".join(cells + ["–"] * (depth - len(cells))) + " |")
    return lines


def joint_features(folder: Path, a: list[str], b: list[str], batch_size: int = 32):
    """The fine-tuning recipe's input, `[CLS] a [SEP] b [SEP]` in one pass: (N, H) float64 arrays of the last
    layer's [CLS] state, its mean over all real tokens, and its means over segment a's and segment b's tokens."""
    import torch

    from mobilebert.checkpoint import load_pretrained
    from mobilebert.model import MobileBertModel, masked_mean
    from mobilebert.tokenizer import Tokenizer

    model, tok = load_pretrained(MobileBertModel, folder).eval(), Tokenizer.from_file(folder)
    out = [[], [], [], []]
    with torch.no_grad():
        for i in range(0, len(a), batch_size):
            enc = tok(a[i:i + batch_size], b[i:i + batch_size], max_length=128, padding="longest")
            mask, types = enc["attention_mask"], enc["token_type_ids"]
            h = model(enc["input_ids"], mask, types).last_hidden_state  # (B, S, H)
            seg_a = mask * (types == 0)
            seg_a[:, 0] = 0  # [CLS] is neither sentence
            for k, x in enumerate((h[:, 0], masked_mean(h, mask), masked_mean(h, seg_a), masked_mean(h, mask * types))):
                out[k].append(x)
    return [torch.cat(x).double().numpy() for x in out]


def pair_feats(u, v):
    """Pair features of two sentence vectors, as sentence-transformers' classifiers use them: (N, 2H)."""
    import numpy as np

    return np.concatenate([np.abs(u - v), u * v], 1)


def ridge_probe(train: tuple, dev: tuple) -> float:
    """Dev Spearman of a ridge regression on pair features (|u - v|, u * v); train/dev = (u, v, gold)."""
    return ridge_probe_x(pair_feats(*train[:2]), train[2], pair_feats(*dev[:2]), dev[2])


def ridge_probe_x(x, y, x_dev, y_dev) -> float:
    """Dev Spearman of a ridge regression of y on x (N, D), the penalty picked on the last 10 % of train."""
    import numpy as np

    from mobilebert.tasks.metrics import spearman

    mu, sd = x.mean(0), x.std(0) + 1e-8
    x = (x - mu) / sd
    cut = int(0.9 * len(y))

    def fit(xs, ys, lam):
        a = xs.T @ xs + lam * np.eye(xs.shape[1])
        return np.linalg.solve(a, xs.T @ (ys - ys.mean())), ys.mean()

    lams = [0.1, 1, 10, 100, 1000, 10000]
    best = max(lams, key=lambda lam: spearman(x[cut:] @ fit(x[:cut], y[:cut], lam)[0], y[cut:]))
    w, b = fit(x, y, best)
    return float(spearman(((x_dev - mu) / sd) @ w + b, y_dev))


def joint_probe_table(models: dict[str, Path], glue: Path) -> list[str]:
    """Markdown rows: per model, ridge probes on features of the pair encoded in one pass (the recipe's input)."""
    from mobilebert.tasks.zeroshot import read_sts_pairs

    tr, dv = read_sts_pairs(glue / "STS-B" / "train.tsv"), read_sts_pairs(glue / "STS-B" / "dev.tsv")
    lines = ["| model | [CLS] | mean of all tokens | segment means (\\|u - v\\|, u * v) |", "|---|---:|---:|---:|"]
    for row, folder in models.items():
        t0 = time.time()
        (ct, mt, ut, vt), (cd, md, ud, vd) = (joint_features(folder, a, b) for a, b, _ in (tr, dv))
        scores = [ridge_probe_x(ct, tr[2], cd, dv[2]), ridge_probe_x(mt, tr[2], md, dv[2]),
                  ridge_probe((ut, vt, tr[2]), (ud, vd, dv[2]))]
        print(f"joint probe {row}: {time.time() - t0:.1f} s", flush=True)
        lines.append(f"| {LABELS.get(row, row)} | " + " | ".join(f"{x:.3f}" for x in scores) + " |")
    return lines


def probe_table(models: dict[str, Path], glue: Path) -> list[str]:
    """Markdown rows: per model, the probe's dev Spearman on [CLS] and on mean-pooled states."""
    from mobilebert.tasks.zeroshot import read_sts_pairs

    tr, dv = read_sts_pairs(glue / "STS-B" / "train.tsv"), read_sts_pairs(glue / "STS-B" / "dev.tsv")
    lines = ["| model | [CLS] state | mean-pooled states |", "|---|---:|---:|"]
    for row, folder in models.items():
        t0 = time.time()
        feats = [cls_and_mean(folder, a + b) for a, b, _ in (tr, dv)]
        scores = []
        for k in (0, 1):  # 0: [CLS], 1: mean
            (xt, xd) = feats[0][k], feats[1][k]
            nt, nd = len(tr[0]), len(dv[0])
            scores.append(ridge_probe((xt[:nt], xt[nt:], tr[2]), (xd[:nd], xd[nd:], dv[2])))
        print(f"probe {row}: {time.time() - t0:.1f} s", flush=True)
        lines.append(f"| {LABELS.get(row, row)} | {scores[0]:.3f} | {scores[1]:.3f} |")
    return lines


def table(cos: dict, gold) -> list[str]:
    """Markdown rows: per model, gold / teacher Spearman at layers 0 (embeddings) .. L."""
    from mobilebert.tasks.metrics import spearman

    depth = max(len(c) for c in cos.values())
    head = "| model | " + " | ".join(["embeddings", *[f"layer {i}" for i in range(1, depth)]]) + " |"
    lines = [head, "|---|" + "---:|" * depth]
    teacher = cos["teacher"]
    for row, c in cos.items():
        cells = []
        for i in range(depth):
            if i >= len(c):
                cells.append("–")
                continue
            g = spearman(c[i], gold)
            t = "" if row == "teacher" or i >= len(teacher) else f" / {spearman(c[i], teacher[i]):.3f}"
            cells.append(f"{g:.3f}{t}")
        lines.append(f"| {LABELS.get(row, row)} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--state", default=str(REPO / "runs" / "kt-study"), help="the study's folder (its models)")
    p.add_argument("--out", default=str(REPO / "docs" / "kt-layers.md"))
    p.add_argument("--pairs", type=int, default=0, help="only the first N dev pairs (0: all 1,500)")
    p.add_argument("--no-probe", action="store_true", help="skip the linear-probe table (encodes STS-B train)")
    p.add_argument("--extra", action="append", default=[], metavar="LABEL=FOLDER",
                   help="another model folder to measure beside the study's (repeatable)")
    args = p.parse_args()
    from mobilebert.tasks.zeroshot import read_sts_pairs

    dev = data_root() / "glue" / "STS-B" / "dev.tsv"
    a, b, gold = read_sts_pairs(dev)
    if args.pairs:
        a, b, gold = a[:args.pairs], b[:args.pairs], gold[:args.pairs]
    cos, seconds = {}, {}
    models = model_dirs(Path(args.state))
    for extra in args.extra:
        label, sep, folder = extra.rpartition("=")  # the label may hold "=" itself
        if not sep or not (Path(folder) / "config.json").is_file():
            p.error(f"--extra {extra}: expected LABEL=FOLDER with a config.json in FOLDER")
        models[label] = Path(folder)
    for row, folder in models.items():
        t0 = time.time()
        cos[row] = measure(folder, a, b)
        seconds[row] = time.time() - t0
        print(f"{row}: {seconds[row]:.1f} s", flush=True)
    env = environment()
    state = Path(args.state).resolve()
    shown = state.relative_to(REPO) if state.is_relative_to(REPO) else state
    state_args = "" if state == Path(p.get_default("state")) else f" --state {shown}"
    text = ["# Zero-shot STS-B layer by layer (knowledge-transfer study)", "",
            f"Produced by `python benchmarks/kt_layers.py{state_args}` on {time.strftime('%Y-%m-%d')}: {env['cpu']} "
            f"({env['cores']} cores), Python {env['python']}, "
            f"{', '.join(f'{k} {env[k]}' for k in ('torch', 'transformers', 'tokenizers') if k in env)}, "
            f"commit {env['commit']}; {sum(seconds.values()):.0f} s in all. "
            f"STS-B dev, {len(a)} pairs. Each cell: Spearman of the pair cosines of mean-pooled states with the gold "
            "scores / with the teacher's pair cosines at the same layer. The last column is the study's zero-shot "
            "column.", "", *table(cos, gold), ""]
    depth = max(len(c) for c in cos.values())
    text += ["## How much the [CLS] state varies between sentences", "",
             "Share of the [CLS] state's energy that varies between sentences (sum of per-channel variances / "
             "mean squared norm) over the first 300 STS-B dev first sentences, per hidden state. 0: the same "
             "vector for every sentence, so a head that reads [CLS] (the fine-tuning recipe's) has nothing to use.",
             "", "| model | " + " | ".join(["embeddings", *[f"layer {i}" for i in range(1, depth)]]) + " |",
             "|---|" + "---:|" * depth]
    last = ["", "The last layer's [CLS] state itself, over the same sentences: its mean norm, its largest channel "
            "on average and that channel's mean, beside the mean norm of the other tokens' states.", "",
            "| model | [CLS] norm | largest channel: mean | other tokens' norm |", "|---|---:|---:|---:|"]
    for row, folder in models.items():
        shares, (norm, top, value, tokens) = cls_variation(folder, a[:300])
        shares = [f"{v:.2f}" for v in shares]
        text.append(f"| {LABELS.get(row, row)} | " + " | ".join(shares + ["–"] * (depth - len(shares))) + " |")
        last.append(f"| {LABELS.get(row, row)} | {norm:.1f} | {top}: {value:+.1f} | {tokens:.1f} |")
    text += last + [""]
    shards = Path(args.state) / "shards"
    if (shards / "manifest.json").is_file():
        text += ["## Feature maps on masked and on clean text", "",
                 "The transfer loss's distance of each student's feature maps from the teacher's (MSE of non-affine "
                 "LayerNorm'd maps, GR's FMT without its x100; 0 = equal, 2 = uncorrelated), over the real tokens of "
                 "32 segments of the study's corpus drawn as its pre-training batches are, past the steps it trained. "
                 "Each cell: masked (15 % of the tokens corrupted for MLM, the input transfer reads with "
                 "`kt.input=masked`) / clean (the same segments with their tokens restored: the input of zero-shot "
                 "use and fine-tuning).", "", *distance_table(models, shards), ""]
    if not args.no_probe:
        text += ["## Linear probe on frozen last-layer features: [CLS] against mean pooling", "",
                 "Ridge regression on pair features (|u - v|, u * v) of frozen last-layer features, fitted on STS-B "
                 "train (5,749 pairs; penalty picked on its last 10 %), dev Spearman. The fine-tuning recipe's head "
                 "reads the [CLS] state.", "", *probe_table(models, data_root() / "glue"), "",
                 "## Linear probe on the pair encoded in one pass (the fine-tuning recipe's input)", "",
                 "Each STS-B pair as `[CLS] a [SEP] b [SEP]` in one pass, as fine-tuning feeds it; ridge regression "
                 "(fitted as above) on the last layer's [CLS] state, on its mean over all real tokens (what "
                 "`model.pooling=mean` reads), and on pair features of the means over each sentence's tokens. "
                 "A head on one pooled vector must learn the comparison that the last column hands the probe.", "",
                 *joint_probe_table(models, data_root() / "glue"), ""]
    out = Path(args.out)
    out.write_text("\n".join(text), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
