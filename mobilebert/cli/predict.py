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


def run(args: argparse.Namespace) -> int:
    from mobilebert.recipes.evaluate import predict_command

    return predict_command(args.checkpoint, args.text, args.question, args.context, args.file, args.out,
                           args.batch_size)
