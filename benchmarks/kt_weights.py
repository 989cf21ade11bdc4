"""How far pre-training moved each study student's weights from their initialisation, and what that leaves its
last attention layer able to carry (issue 11: "where a goal is missed, say what you found out about why").

The study's students keep a [CLS] state that is the same for every sentence (docs/kt-layers.md). This script
looks for the cause in the weights. For every pre-trained row of the knowledge-transfer study (runs/kt-study)
it rebuilds the student exactly as its run built it before the first step (the run's settings.yaml, its seed,
the teacher copy or SVD it starts from) and compares:

    matrices     ||W - W0|| / ||W0|| over all encoder and head weight matrices, and cos(W, W0)
    biases       ||b|| (all start at 0)
    NoNorm       ||g - g0|| / ||g0|| of the NoNorm scales (start at 1)

LAMB (paper §4; the study's optimizer) moves a matrix by lr x ||W|| per step (its trust ratio), and biases and
NoNorm parameters, excluded from the trust ratio as in GR, by ~lr per element. Over 500 steps at lr 1.5e-3 the
matrices can therefore barely leave their random init, while the biases grow freely.

A second table reads the last layer's attention, over 200 STS-B dev sentences: the mean norm of the value
vectors of the [CLS] token and of the other tokens, the variance of the other tokens' value vectors (summed over
channels), and the variance between sentences of what [CLS] gathers from the other tokens (sum over them of its
head-averaged attention times their value). What [CLS] gathers is what can make it differ between sentences.

    python benchmarks/kt_weights.py [--state runs/kt-study] [--out docs/kt-weights.md]

Seconds per row (it rebuilds each student once, with the teacher where the run used one).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kt_layers import model_dirs  # noqa: E402
from kt_study import data_root, environment, minilm_dir  # noqa: E402
from kt_study_report import LABELS  # noqa: E402


def initial_student(run: Path) -> dict:
    """The state dict the run in `run` (a `mobilebert train` folder) started its student from."""
    from mobilebert.recipes.settings import load_settings
    from mobilebert.recipes.train import Pipeline
    from mobilebert.recipes.train_settings import TrainSettings

    with tempfile.TemporaryDirectory() as tmp:
        s = load_settings(TrainSettings, run / "settings.yaml", [f"run.out={tmp}/run"])
        pipe = Pipeline(s)
        if "teacher" in s.run.stages:  # the teacher the run trained itself, where its student stages read it
            (Path(tmp) / "run").mkdir(exist_ok=True)
            (Path(tmp) / "run" / "teacher").symlink_to((run / "teacher").resolve())
        student = pipe.initial_student()
        return {k: v.detach().clone() for k, v in student.state_dict().items()}


def movement(final: dict, init: dict) -> dict:
    """Relative distance and cosine of the weight matrices, biases' norm, NoNorm scales' relative change."""
    import torch

    groups = {"matrix": [], "bias": [], "norm": []}
    for key, w in final.items():
        if key not in init or key.startswith("cls.") or "embeddings" in key:
            continue  # the MLM/NSP heads and the embeddings (copied or SVD'd from the teacher) are left out
        kind = "bias" if key.endswith("bias") else "norm" if "LayerNorm" in key else "matrix" if w.dim() == 2 else None
        if kind:
            groups[kind].append((w.double().flatten(), init[key].double().flatten()))
    cat = {k: (torch.cat([a for a, _ in v]), torch.cat([b for _, b in v])) for k, v in groups.items()}
    w, w0 = cat["matrix"]
    g, g0 = cat["norm"]
    return {"matrix_dist": float((w - w0).norm() / w0.norm()), "matrix_cos": float(w @ w0 / (w.norm() * w0.norm())),
            "bias_norm": float(cat["bias"][0].norm()), "norm_dist": float((g - g0).norm() / g0.norm())}


def last_layer_values(folder: Path, sentences: list[str]) -> dict:
    """The last attention layer's value vectors and what [CLS] gathers from the other tokens (module docstring)."""
    import torch

    from mobilebert.checkpoint import load_pretrained
    from mobilebert.model import MobileBertModel
    from mobilebert.tokenizer import Tokenizer

    model, tok = load_pretrained(MobileBertModel, folder).eval(), Tokenizer.from_file(minilm_dir())
    enc = tok(sentences, max_length=128, padding="longest")
    layer, seen = model.encoder.layer[-1], {}
    hook = layer.register_forward_pre_hook(lambda mod, args: seen.__setitem__("x", args[0]))
    with torch.no_grad():
        out = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], output_attentions=True)
        hook.remove()
        x = seen["x"]                                                     # (N, S, H) the last layer's input
        bottleneck_values = layer.use_bottleneck and not layer.key_query_shared_bottleneck
        v = layer.attention.self.value(layer.bottleneck.input(x) if bottleneck_values else x)  # (N, S, heads*d)
        others = enc["attention_mask"].bool().clone()
        others[:, 0] = False                                              # real tokens but [CLS]
        p = out.attentions[-1].mean(1)[:, 0]                              # (N, S) [CLS]'s attention, head mean
        gathered = (p[..., None] * v * others[..., None]).sum(1)          # (N, heads*d)
    var = lambda t: float(t.double().var(0).sum())
    return {"v_cls": float(v[:, 0].norm(dim=-1).mean()), "v_tok": float(v[others].norm(dim=-1).mean()),
            "v_tok_var": var(v[others]), "gathered_var": var(gathered)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--state", default=str(REPO / "runs" / "kt-study"), help="the study's folder (its runs)")
    p.add_argument("--out", default=str(REPO / "docs" / "kt-weights.md"))
    args = p.parse_args()
    from safetensors.torch import load_file

    from mobilebert.tasks.zeroshot import read_sts_pairs

    t0, state = time.time(), Path(args.state)
    models = model_dirs(state)
    runs = {row: state / "pretrain" / row for row in models if (state / "pretrain" / row / "settings.yaml").is_file()}
    if not runs:
        sys.exit(f"kt_weights: no finished pre-training run under {state / 'pretrain'} (run benchmarks/kt_study.py)")
    from mobilebert.errors import UserError

    moved = {}
    for row, run in runs.items():
        try:
            start = initial_student(run)
        except UserError as e:  # e.g. the run's prepared data is gone: its start cannot be rebuilt
            sys.exit(f"kt_weights: {run / 'settings.yaml'}: {e}")
        moved[row] = movement(load_file(str(models[row] / "model.safetensors")), start)
        print(f"{row}: matrices {moved[row]['matrix_dist']:.3f} from init", flush=True)
    sentences = read_sts_pairs(data_root() / "glue" / "STS-B" / "dev.tsv")[0][:200]
    values = {row: last_layer_values(folder, sentences) for row, folder in models.items() if row != "random"}
    env = environment()
    text = ["# How far pre-training moved the study's students from their initialisation", "",
            f"Produced by `python benchmarks/kt_weights.py` on {time.strftime('%Y-%m-%d')}: {env['cpu']} "
            f"({env['cores']} cores), Python {env['python']}, torch {env['torch']}, commit {env['commit']}; "
            f"{time.time() - t0:.0f} s. Each student is compared with the weights its own run started from (rebuilt "
            "from its settings.yaml and seed). Matrices: encoder weight matrices; embeddings (copied or SVD'd "
            "from the teacher) and the MLM/NSP heads left out.", "",
            "| row | matrices: distance / init norm | matrices: cos with init | biases: norm (init 0) "
            "| NoNorm scales: distance / init norm |", "|---|---:|---:|---:|---:|"]
    for row, m in moved.items():
        text.append(f"| {LABELS.get(row, row)} | {m['matrix_dist']:.3f} | {m['matrix_cos']:.3f} | "
                    f"{m['bias_norm']:.1f} | {m['norm_dist']:.3f} |")
    text += ["", "## What the last attention layer can carry to [CLS]", "",
             "Over the first 200 STS-B dev first sentences, each alone: mean norm of the last layer's value vectors "
             "of [CLS] and of the other tokens, the other tokens' value variance (sum over channels), and the "
             "variance between sentences of what [CLS] gathers from the other tokens (its head-averaged attention "
             "times their values, summed). The teacher's [CLS] varies between sentences because of the last term.",
             "", "| model | [CLS] value norm | other tokens' value norm | their variance | variance of what [CLS] "
             "gathers |", "|---|---:|---:|---:|---:|"]
    for row, v in values.items():
        text.append(f"| {LABELS.get(row, row)} | {v['v_cls']:.2f} | {v['v_tok']:.2f} | {v['v_tok_var']:.2f} | "
                    f"{v['gathered_var']:.3f} |")
    out = Path(args.out)
    out.write_text("\n".join(text) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
