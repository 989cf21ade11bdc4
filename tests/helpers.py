"""Test helpers shared by several test folders (tests/ is on sys.path through conftest.py)."""

CONTEXT = ("Super Bowl 50 was an American football game to determine the champion of the National Football "
           "League (NFL) for the 2015 season. The American Football Conference (AFC) champion Denver Broncos "
           "defeated the National Football Conference (NFC) champion Carolina Panthers 24\u201310 to earn their "
           "third Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in the San "
           "Francisco Bay Area at Santa Clara, California.")


def _answer(text, nth=0):
    start = -1
    for _ in range(nth + 1):
        start = CONTEXT.index(text, start + 1)
    return {"text": text, "answer_start": start}


def squad_json(version="1.1", extra_qas=()):
    qas = [
        {"id": "q1", "question": "Which team won Super Bowl 50?", "answers": [_answer("Denver Broncos")]},
        {"id": "q2", "question": "Where was the game played?",
         "answers": [_answer("Levi's Stadium"), _answer("Santa Clara, California")]},
        {"id": "q3", "question": "What was the score?", "answers": [_answer("24\u201310")]},
    ]
    if version.startswith("v2"):
        qas.append({"id": "q4", "question": "Who lost Super Bowl 51?", "answers": [], "is_impossible": True,
                    "plausible_answers": [_answer("Carolina Panthers")]})
    qas.extend(extra_qas)
    return {"version": version, "data": [{"title": "Super_Bowl_50", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}
