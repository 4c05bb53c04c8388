"""The numbers an answer states, as regression targets for the embedding of its question.

Why: the facts that decide the habit tasks are numbers in the answer text ("37 days ago; 3 refill
purchases ..."). The contrastive loss can match such an answer by recognising the user from other
cues, and NTP lets a small LM copy the digits from the prefix, so neither needs the embedding to
hold the number. A linear head whose reading of the embedding must correlate with the answer's
first `slots` numbers, among the batch's users asked the same question, does
(`qanchor.losses.answer_number_loss`). One head serves every question, so the same directions
must hold the spend under a spending question and the recency under a recency question: the
query has to decide what the vector says.

Numbers are read in order of appearance and squashed with log1p (a spend of 7,961 and a count of 3
on one scale); an answer with fewer numbers masks the rest. No schema is needed, so answers
written from a user's own logs work the same way as the synthetic ones.
"""

from __future__ import annotations

import re

import numpy as np

#: A decimal number not glued to a letter, digit or point on its left: "tier-2" reads 2, "v1.2" reads nothing.
#: The answer templates write no thousands separators.
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")


def answer_numbers(answers: list[str], slots: int) -> tuple[np.ndarray, np.ndarray]:
    """(values [len(answers), slots] float32 as log1p, present [len(answers), slots] bool)."""
    if slots <= 0:
        raise ValueError(f"answer number slots must be positive, got {slots}")
    values = np.zeros((len(answers), slots), dtype=np.float32)
    present = np.zeros((len(answers), slots), dtype=bool)
    for row, text in enumerate(answers):
        found = [float(m) for m in _NUMBER.findall(text)[:slots]]
        values[row, :len(found)] = np.log1p(found)
        present[row, :len(found)] = True
    return values, present
