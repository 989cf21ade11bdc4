"""`mobilebert predict CHECKPOINT ...`: run a fine-tuned checkpoint on inputs typed on the command line or
read from a file, and print the label (or score, or answer) with its probability.

    mobilebert predict RUN/best "a gripping, beautifully made film"            # one sentence
    mobilebert predict RUN/best "A man is playing a flute." "A man plays."     # a sentence pair
    mobilebert predict RUN/best --question "Who won?" --context "The Broncos won the game."
    mobilebert predict RUN/best --file inputs.tsv [--out predictions.jsonl]     # batches

A file holds one input per line: `text` or `text_a<TAB>text_b` (for a QA model `question<TAB>context`),
or JSON lines with keys text/text_a, text_b, or question and context. File results are JSON lines:
{"label", "probability"} (classification), {"score"} (regression) or {"answer", "probability"} (QA).
"""

import argparse

from mobilebert.atomic import write_text


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="predict with a fine-tuned checkpoint (sentence, pair, question, or a file)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a fine-tuned checkpoint folder (for example RUN/best), or a model exported "
                                      "by `mobilebert export` (.onnx, fp32 or int8, or .pte)")
    p.add_argument("text", nargs="*", help="a sentence, or two for a sentence pair")
    p.add_argument("--question", help="QA models: the question")
    p.add_argument("--context", help="QA models: the passage to answer from")
    p.add_argument("--file", help="a TSV/text or JSONL file of inputs, one per line")
    p.add_argument("--out", help="write file results (JSON lines) here instead of stdout")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=run)


def read_inputs(path: str, qa: bool) -> list[tuple[str, str | None, int]]:
    """(text_a or question, text_b or context, line) per non-blank line; bad lines name file and line."""
    import json
    from pathlib import Path

    from mobilebert.errors import DataError, read_text

    p = Path(path)
    lines = read_text(p).splitlines()
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if p.suffix.lower() in (".jsonl", ".json"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{n}: malformed JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{n}: expected a JSON object")
            a = obj.get("question") if qa else obj.get("text_a", obj.get("text"))
            b = obj.get("context") if qa else obj.get("text_b")
        else:
            parts = line.split("\t")
            if len(parts) > 2:
                raise DataError(f"{p}:{n}: has {len(parts)} tab-separated fields, expected 1 or 2")
            a, b = parts[0], (parts[1] if len(parts) == 2 else None)
        for value in (a, b):
            if value is not None and not isinstance(value, str):
                raise DataError(f"{p}:{n}: expected text (a JSON string), got {json.dumps(value)[:40]}")
        if not isinstance(a, str) or not a.strip() or (b is not None and (not isinstance(b, str) or not b.strip())):
            raise DataError(f"{p}:{n}: empty text" + (" (QA needs question<TAB>context)" if qa else ""))
        if qa and b is None:
            raise DataError(f"{p}:{n}: a QA model needs a question and a context")
        out.append((a, b, n))
    if not out:
        raise DataError(f"{p}: no inputs")
    return out


def predict(checkpoint: str, inputs: list[tuple[str, str | None]], batch_size: int = 64) -> list[dict]:
    """Predictions for (text_a, text_b) pairs, or (question, context) pairs for a QA checkpoint."""
    import json
    from pathlib import Path

    import numpy as np

    from mobilebert.checkpoint import load_config
    from mobilebert.cli.evaluate import checkpoint_settings
    from mobilebert.errors import UserError
    from mobilebert.recipes.settings import pick_device, pick_precision
    from mobilebert.tasks import GLUE_SEQ, TaskData, _glue_features, _squad_features, custom_task, load_model_for_task
    from mobilebert.tasks import check_vocab_fits, load_tokenizer, squad

    exported = Path(checkpoint).suffix in (".onnx", ".pte")
    if exported:
        # An exported model (mobilebert export): config and vocabulary travel inside the file.
        from mobilebert.export.runtime import load_session
        from mobilebert.recipes.finetune_settings import FinetuneSettings

        session = load_session(checkpoint)
        if session.tokenizer is None:
            raise UserError(f"{checkpoint}: exported without a vocabulary; export again with --vocab")
        s, cfg, tokenizer = FinetuneSettings(), session.config, session.tokenizer
        arch = session.head
        s.data.max_seq_length = min(cfg.max_position_embeddings, 384 if arch.endswith("QuestionAnswering") else 128)
    else:
        s = checkpoint_settings(checkpoint, ["train.progress=false"])
        cfg = load_config(checkpoint)
        arch = (cfg.architectures or [""])[0]
        tokenizer = load_tokenizer(s.model)
    device = pick_device("cpu" if exported else s.train.device)
    precision = "fp32" if exported else pick_precision(s.train.precision, device)

    def load(data):
        return _SessionModel(session) if exported else \
            load_model_for_task(checkpoint, data, tokenizer, fine_tuned=True).to(device)

    if arch.endswith("ForQuestionAnswering"):
        info = Path(checkpoint) / "task.json"
        version_2 = bool(json.loads(info.read_text(encoding="utf-8")).get("version_2")) \
            if not exported and info.is_file() else False
        data = TaskData("predict", "squad", None, tokenizer.pad_id, version_2=version_2)
        examples = [squad.SquadExample(str(i), q, c, []) for i, (q, c) in enumerate(inputs)]
        feats = _squad_features(examples, tokenizer, s.data, False)
        check_vocab_fits((f["input_ids"] for f in feats), tokenizer, "the input")
        model = load(data)
        outs = data.run(model, feats, batch_size, device, precision)
        preds, _, nbest = data._postprocess(examples, feats, outs, s.data)
        return [{"answer": preds[e.qid], "probability": next((x["probability"] for x in nbest[e.qid]
                                                              if x["text"] == preds[e.qid]), 0.0)} for e in examples]
    regression = cfg.num_labels == 1 or cfg.problem_type == "regression"
    labels = None if regression else [cfg.id2label[i] for i in range(cfg.num_labels)] if cfg.id2label \
        else [str(i) for i in range(cfg.num_labels)]
    pair = any(b is not None for _, b in inputs)
    if pair and not all(b is not None for _, b in inputs):
        raise UserError("give every input as a sentence pair, or none")
    trained_pair = None if exported else _trained_on_pairs(checkpoint, s.data)
    if trained_pair is not None and trained_pair != pair:
        raise UserError(f"{checkpoint} was fine-tuned on {'sentence pairs' if trained_pair else 'single sentences'} "
                        f"({s.data.task}); give {'two sentences' if trained_pair else 'one sentence'} per input")
    spec = custom_task("predict", "a", "b" if pair else None, labels=labels, regression=regression)
    data = TaskData("predict", "glue", spec, tokenizer.pad_id)
    from mobilebert.tasks.glue import Example
    examples = [Example(str(i), a, b, None, 0) for i, (a, b) in enumerate(inputs)]
    feats = _glue_features(spec, examples, tokenizer, s.data.max_seq_length or GLUE_SEQ)
    check_vocab_fits((f["input_ids"] for f in feats), tokenizer, "the input")
    model = load(data)
    logits = np.stack(data.run(model, feats, batch_size, device, precision))
    if regression:
        return [{"score": float(x)} for x in logits[:, 0]]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return [{"label": labels[int(p.argmax())], "probability": float(p.max())} for p in probs]


class _SessionModel:
    """An exported model (ONNX Runtime / ExecuTorch session) behind the model interface TaskData.run uses."""

    def __init__(self, session):
        self.session = session

    def eval(self):
        return self

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, **_):
        import torch

        from mobilebert.model import ModelOutput

        out = self.session(input_ids.numpy(), attention_mask.numpy(), token_type_ids.numpy())
        return ModelOutput(**{k: torch.from_numpy(v) for k, v in out.items()
                              if k in ("logits", "start_logits", "end_logits")})


def _trained_on_pairs(checkpoint: str, ds) -> bool | None:
    """Whether the checkpoint's task had a second text (None when the checkpoint has no settings.yaml)."""
    from pathlib import Path

    from mobilebert.errors import UserError
    from mobilebert.tasks import get_task

    if not (Path(checkpoint) / "settings.yaml").is_file():
        return None
    if ds.task.lower() == "custom":
        return ds.text_b is not None
    try:
        return get_task(ds.task).text_b is not None
    except UserError:
        return None


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from mobilebert.checkpoint import load_config
    from mobilebert.errors import UserError
    from mobilebert.outpaths import check_out_file

    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    if any(not t.strip() for t in args.text):
        raise UserError("empty sentence: give the text to predict on")
    for name, value in (("--question", args.question), ("--context", args.context)):
        if value is not None and not value.strip():
            raise UserError(f"{name}: empty; give the text to predict on")
    if args.out:
        if not args.file:
            raise UserError("--out is for --file results; command-line inputs print their prediction")
        check_out_file(args.out, "--out")
    if Path(args.checkpoint).suffix in (".onnx", ".pte"):
        from mobilebert.export.runtime import load_session

        qa = load_session(args.checkpoint, check_inputs=False).head.endswith("ForQuestionAnswering")
    else:
        qa = (load_config(args.checkpoint).architectures or [""])[0].endswith("ForQuestionAnswering")
    if args.file:
        if args.text or args.question or args.context:
            raise UserError("give inputs either on the command line or with --file, not both")
        rows = read_inputs(args.file, qa)
        results = predict(args.checkpoint, [(a, b) for a, b, _ in rows], args.batch_size)
        lines = [json.dumps({"line": n, **r}, ensure_ascii=False) for (_, _, n), r in zip(rows, results)]
        if args.out:
            write_text(args.out, "\n".join(lines) + "\n")
        else:
            print("\n".join(lines))
        return 0
    if qa:
        if not (args.question and args.context) or args.text:
            raise UserError("a question-answering model needs --question and --context")
        r = predict(args.checkpoint, [(args.question, args.context)], 1)[0]
        print(f"{r['answer'] or '(no answer)'}\t{r['probability']:.4f}")
        return 0
    if not 1 <= len(args.text) <= 2 or args.question or args.context:
        raise UserError("give one sentence or a sentence pair (or --file); --question/--context are for QA models")
    r = predict(args.checkpoint, [(args.text[0], args.text[1] if len(args.text) == 2 else None)], 1)[0]
    print(f"{r['score']:.4f}" if "score" in r else f"{r['label']}\t{r['probability']:.4f}")
    return 0
