"""`SquadTask`: the `Task` of SQuAD v1.1/v2.0 extractive question answering (paper §4.4).

Examples (`mobilebert.tasks.squad.SquadExample`) become windowed features (`squad.build_features`,
run_squad.py's doc_stride/max_query_length); the QA head's start and end logits become answer texts
through `squad.postprocess` (n-best, max_answer_length, v2.0's null score against
null_score_diff_threshold); answers are scored with the official v1.1/v2.0 EM and F1 and written as
predictions.json (+ nbest_predictions.json on dev, + null_odds.json for v2.0).
"""

from __future__ import annotations

from pathlib import Path

from mobilebert.tasks import metrics as M
from mobilebert.tasks import squad
from mobilebert.tasks.base import SQUAD_SEQ, Split, Task


class SquadTask(Task):
    kind, head, arch = "squad", "qa", "ForQuestionAnswering"
    max_seq_length = SQUAD_SEQ
    target_keys, output_keys = ("start_positions", "end_positions"), ("start_logits", "end_logits")
    main_metric = "f1"

    def __init__(self, version_2: bool = False, doc_stride: int = 128, max_query_length: int = 64,
                 max_answer_length: int = 30, n_best_size: int = 20, null_score_diff_threshold: float = 0.0):
        self.version_2 = version_2
        self.doc_stride, self.max_query_length = doc_stride, max_query_length
        self.max_answer_length, self.n_best_size = max_answer_length, n_best_size
        self.null_score_diff_threshold = null_score_diff_threshold

    @property
    def name(self) -> str:
        return "SQuAD v2.0" if self.version_2 else "SQuAD v1.1"

    def head_config(self) -> dict:
        return {"num_labels": 2}

    def features(self, examples: list[squad.SquadExample], tokenizer, max_seq_length: int | None = None,
                 training: bool = False) -> list[dict]:
        feats = squad.build_features(examples, tokenizer, max_seq_length or SQUAD_SEQ, self.doc_stride,
                                     self.max_query_length, training)
        return [{"input_ids": f.input_ids, "token_type_ids": f.token_type_ids, "start_position": f.start_position,
                 "end_position": f.end_position, "squad": f} for f in feats]

    def outputs(self, model_output, lengths: list[int]) -> list:
        s = model_output.start_logits.float().cpu().numpy()   # (B, T)
        e = model_output.end_logits.float().cpu().numpy()
        return [(s[j, :n], e[j, :n]) for j, n in enumerate(lengths)]

    def answers(self, examples, features, outputs) -> list[dict]:
        preds, _, nbest = self.predict(examples, features, outputs)
        return [{"answer": preds[e.qid], "probability": next((x["probability"] for x in nbest[e.qid]
                                                              if x["text"] == preds[e.qid]), 0.0)} for e in examples]

    def predict(self, examples, features, outputs):
        """(predictions qid -> text, null_odds qid -> score diff (v2.0), nbest qid -> list)."""
        return squad.postprocess(examples, [f["squad"] for f in features], [o[0] for o in outputs],
                                 [o[1] for o in outputs], self.n_best_size, self.max_answer_length, self.version_2,
                                 self.null_score_diff_threshold)

    def score(self, gold: squad.SquadData, predictions) -> dict:
        preds, odds, _ = predictions
        if gold.version_2:
            return M.squad_v2_evaluate(gold.as_dataset(), preds, odds)
        m = M.squad_v1_evaluate(gold.as_dataset(), preds)
        m["total"] = len(gold.examples)
        return m

    def write(self, split: Split, predictions, out_dir: Path, name: str, dev: bool = True) -> list[Path]:
        preds, odds, nbest = predictions
        out_dir = Path(out_dir)
        written = [squad.write_json(preds, out_dir / "predictions.json")]
        if dev:
            written.append(squad.write_json(nbest, out_dir / "nbest_predictions.json"))
        if self.version_2:
            written.append(squad.write_json(odds, out_dir / "null_odds.json"))
        return written
