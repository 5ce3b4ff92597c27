"""Write the multiple-choice versions of the suite's facts (``../data/*_mc.jsonl``).

    python make_data.py

Each fact of ``../data/forget.jsonl`` and ``../data/retain.jsonl`` becomes an MMLU-style row
(``question``, ``choices``, ``answer`` as a 0-based index, ``subject``, and the fact's
``paraphrased_question``): the choices are the answer sentence and its three perturbed
answer sentences, the correct one at a varied position: the positions 0-3 in equal shares,
shuffled with a fixed seed (deterministic).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
SUBJECTS = {"Where": "birthplaces", "What": "professions"}  # by the question's first word


def mc_row(fact: dict, position: int) -> dict:
    wrong = list(fact["perturbed_answer"])
    choices = wrong[:position] + [fact["answer"]] + wrong[position:]
    return {"question": fact["question"], "choices": choices, "answer": position,
            "subject": SUBJECTS[fact["question"].split()[0]],
            "paraphrased_question": fact["paraphrased_question"]}


def main() -> None:
    for split in ("forget", "retain"):
        facts = [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
                 if line.strip()]
        positions = [i % 4 for i in range(len(facts))]
        random.Random(0).shuffle(positions)
        lines = [json.dumps(mc_row(f, p), ensure_ascii=False) for f, p in zip(facts, positions)]
        (DATA / f"{split}_mc.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{DATA / f'{split}_mc.jsonl'}: {len(lines)} questions")


if __name__ == "__main__":
    main()
