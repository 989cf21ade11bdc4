"""The `evaluate` and `predict` jobs: a fine-tuned checkpoint (or an exported model) on its task.

`evaluate` scores a fine-tuned checkpoint on its task's dev set(s) with the exact GLUE/SQuAD metrics
(paper §4.3 Table 4, §4.4 Table 5), reading the task and data settings from the checkpoint's own
`settings.yaml`; it writes dev (and test) predictions when asked. `predict` runs a checkpoint or an
exported ONNX/ExecuTorch model on sentences, sentence pairs or question/context pairs typed on the
command line or read from a file. Both go through the task abstraction (`mobilebert.tasks.base.Task`).
"""

from __future__ import annotations

import json
from pathlib import Path

from mobilebert.atomic import write_text
from mobilebert.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    UserError,
    read_text,
)


def checkpoint_settings(checkpoint: str, overrides: list[str]):
    """The checkpoint's resolved settings (if any) + overrides, with model.init pointing at the checkpoint."""
    from mobilebert.checkpoint import load_config
    from mobilebert.recipes.finetune_settings import FinetuneSettings
    from mobilebert.recipes.settings import load_settings

    folder = Path(checkpoint)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: not a checkpoint folder (no config.json)")
    saved = folder / "settings.yaml"
    s = load_settings(FinetuneSettings, saved if saved.is_file() else None,
                      list(overrides) + [f"model.init={folder}", "model.tokenizer=null", "distill.teacher=null"])
    trained = load_config(folder).classifier_pooling
    if s.model.pooling not in (None, trained):
        raise ConfigError(f"model.pooling: {folder}'s classifier was trained on {trained} pooling, which it keeps; "
                          "leave model.pooling unset")
    return s


def evaluate(checkpoint: str, overrides: list[str], out_dir: str | None = None, test: bool = False) -> dict:
    """Score `checkpoint` on its dev set(s); with out_dir, write dev (and with test, test) predictions and
    eval_results.json there. Prints and returns the metrics."""
    from mobilebert.checkpoint import load_config
    from mobilebert.outpaths import check_out_dir
    from mobilebert.recipes.settings import pick_device, pick_precision
    from mobilebert.tasks import load_model_for_task, load_tokenizer
    from mobilebert.tasks.data import build_task_data

    if test and not out_dir:
        raise ConfigError("--test writes test predictions: give --out DIR as well")
    out = check_out_dir(out_dir, "--out") if out_dir else None
    for sub in ("dev", "test") if out is not None else ():
        check_out_dir(out / sub, "--out")
    s = checkpoint_settings(checkpoint, overrides)
    cfg = load_config(checkpoint)
    if s.data.task == "custom" and s.data.labels is None and cfg.id2label and not s.data.regression:
        s.data.labels = list(cfg.id2label.values())   # the label order the head was trained with
    tokenizer = load_tokenizer(s.model)
    data = build_task_data(s.data, tokenizer, s.train.seed, splits=("dev", "test") if test else ("dev",))
    if not data.dev:
        raise ConfigError("data: no dev file to evaluate on (set data.dir or data.dev_file)")
    device = pick_device(s.train.device)
    precision = pick_precision(s.train.precision, device)
    model = load_model_for_task(checkpoint, data.task, tokenizer, fine_tuned=True).to(device)
    bs, progress = s.train.eval_batch_size, s.train.progress
    result = data.evaluate(model, device, precision, bs, out / "dev" if out else None, progress)
    metrics = {"task": data.name, "checkpoint": str(checkpoint), **result["metrics"]}
    if any(data.skipped.values()):
        metrics["skipped_rows"] = data.skipped
    if test and out is not None and data.test:
        metrics["test_files"] = [str(p) for p in data.predict_test(model, device, precision, bs, out / "test",
                                                                   progress)]
    text = json.dumps(metrics, indent=2)
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "eval_results.json", text + "\n")
    return metrics


# ------------------------------------------------------------------------------------ predict


def read_inputs(path: str, qa: bool) -> list[tuple[str, str | None, int]]:
    """(text_a or question, text_b or context, line) per non-blank line; bad lines name file and line."""
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


def is_qa(checkpoint: str) -> bool:
    """Whether a checkpoint folder or an exported model has a question-answering head."""
    from mobilebert.checkpoint import load_config

    if Path(checkpoint).suffix in (".onnx", ".pte"):
        from mobilebert.export.runtime import load_session

        return load_session(checkpoint, check_inputs=False).head.endswith("ForQuestionAnswering")
    return (load_config(checkpoint).architectures or [""])[0].endswith("ForQuestionAnswering")


def predict(checkpoint: str, inputs: list[tuple[str, str | None]], batch_size: int = 64) -> list[dict]:
    """Predictions for (text_a, text_b) pairs, or (question, context) pairs for a QA checkpoint."""
    from mobilebert.checkpoint import load_config
    from mobilebert.recipes.settings import pick_device, pick_precision
    from mobilebert.tasks import load_model_for_task, load_tokenizer
    from mobilebert.tasks.base import check_vocab_fits
    from mobilebert.tasks.data import TaskData
    from mobilebert.tasks.glue import Example, custom_task
    from mobilebert.tasks.qa import SquadTask
    from mobilebert.tasks.sentence import SentenceTask
    from mobilebert.tasks.squad import SquadExample

    exported = Path(checkpoint).suffix in (".onnx", ".pte")
    if exported:
        # An exported model (mobilebert export): config and vocabulary travel inside the file.
        from mobilebert.export.runtime import load_session

        session = load_session(checkpoint)
        if session.tokenizer is None:
            raise UserError(f"{checkpoint}: exported without a vocabulary; export again with --vocab")
        cfg, tokenizer, arch = session.config, session.tokenizer, session.head
        max_seq = min(cfg.max_position_embeddings, 384 if arch.endswith("QuestionAnswering") else 128)
        device, precision, ds = pick_device("cpu"), "fp32", None
    else:
        s = checkpoint_settings(checkpoint, ["train.progress=false"])
        cfg = load_config(checkpoint)
        arch = (cfg.architectures or [""])[0]
        tokenizer = load_tokenizer(s.model)
        ds, max_seq = s.data, s.data.max_seq_length
        device = pick_device(s.train.device)
        precision = pick_precision(s.train.precision, device)

    if arch.endswith("ForQuestionAnswering"):
        info = Path(checkpoint) / "task.json"
        version_2 = bool(json.loads(info.read_text(encoding="utf-8")).get("version_2")) \
            if not exported and info.is_file() else False
        task = SquadTask(version_2) if ds is None else SquadTask(
            version_2, ds.doc_stride, ds.max_query_length, ds.max_answer_length, ds.n_best_size,
            ds.null_score_diff_threshold)
        examples = [SquadExample(str(i), q, c, []) for i, (q, c) in enumerate(inputs)]
    else:
        regression = cfg.num_labels == 1 or cfg.problem_type == "regression"
        labels = None if regression else [cfg.id2label[i] for i in range(cfg.num_labels)] if cfg.id2label \
            else [str(i) for i in range(cfg.num_labels)]
        pair = any(b is not None for _, b in inputs)
        if pair and not all(b is not None for _, b in inputs):
            raise UserError("give every input as a sentence pair, or none")
        trained_pair = None if exported else _trained_on_pairs(checkpoint, s.data)
        if trained_pair is not None and trained_pair != pair:
            raise UserError(f"{checkpoint} was fine-tuned on {'sentence pairs' if trained_pair else 'single sentences'}"
                            f" ({s.data.task}); give {'two sentences' if trained_pair else 'one sentence'} per input")
        task = SentenceTask(custom_task("predict", "a", "b" if pair else None, labels=labels, regression=regression))
        examples = [Example(str(i), a, b, None, 0) for i, (a, b) in enumerate(inputs)]
    feats = task.features(examples, tokenizer, max_seq)
    check_vocab_fits((f["input_ids"] for f in feats), tokenizer, "the input")
    model = _SessionModel(session) if exported else \
        load_model_for_task(checkpoint, task, tokenizer, fine_tuned=True).to(device)
    outs = TaskData(task, tokenizer.pad_id).run(model, feats, batch_size, device, precision)
    return task.answers(examples, feats, outs)


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
    from mobilebert.tasks.glue import get_task

    if not (Path(checkpoint) / "settings.yaml").is_file():
        return None
    if ds.task.lower() == "custom":
        return ds.text_b is not None
    try:
        return get_task(ds.task).text_b is not None
    except UserError:
        return None


def predict_command(checkpoint: str, text: list[str], question: str | None, context: str | None,
                    file: str | None, out: str | None, batch_size: int) -> int:
    """`mobilebert predict`: check the inputs, predict, print (or write --out JSON lines)."""
    from mobilebert.outpaths import check_out_file

    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    if any(not t.strip() for t in text):
        raise UserError("empty sentence: give the text to predict on")
    for name, value in (("--question", question), ("--context", context)):
        if value is not None and not value.strip():
            raise UserError(f"{name}: empty; give the text to predict on")
    if out:
        if not file:
            raise UserError("--out is for --file results; command-line inputs print their prediction")
        check_out_file(out, "--out")
    qa = is_qa(checkpoint)
    if file:
        if text or question or context:
            raise UserError("give inputs either on the command line or with --file, not both")
        rows = read_inputs(file, qa)
        results = predict(checkpoint, [(a, b) for a, b, _ in rows], batch_size)
        lines = [json.dumps({"line": n, **r}, ensure_ascii=False) for (_, _, n), r in zip(rows, results)]
        if out:
            write_text(out, "\n".join(lines) + "\n")
        else:
            print("\n".join(lines))
        return 0
    if qa:
        if not (question and context) or text:
            raise UserError("a question-answering model needs --question and --context")
        r = predict(checkpoint, [(question, context)], 1)[0]
        print(f"{r['answer'] or '(no answer)'}\t{r['probability']:.4f}")
        return 0
    if not 1 <= len(text) <= 2 or question or context:
        raise UserError("give one sentence or a sentence pair (or --file); --question/--context are for QA models")
    r = predict(checkpoint, [(text[0], text[1] if len(text) == 2 else None)], 1)[0]
    print(f"{r['score']:.4f}" if "score" in r else f"{r['label']}\t{r['probability']:.4f}")
    return 0
