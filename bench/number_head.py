"""Which answer numbers a trained model's embedding states: the number head's correlation per question.

A model pretrained with `model.loss.number_weight` has a linear head that reads an answer's first
numbers back from the anchor embedding (`qanchor.losses.answer_number_loss`). Its loss is one mean
over every question; this breaks it down, so one sees WHICH facts reached the embedding (totals and
counts, say) and which did not (the recency of one rare kind of payment), for a saved bench/quality.py
variant and the bundle it was trained on:

    python bench/number_head.py --bundle .devbundle/q30 --model OUT/runs/numbers/final

Rows are the bundle's pretraining-pool examples, up to `--per-question` per question (the last
ones of the pool, which a short run has mostly not drawn yet); each cell is the Pearson
correlation, over the rows whose answer states that slot's number, between the head's output and
the number (log1p). D_future answers ("Over the next 30 days ...") are left out: their slots hold
different behaviours from user to user.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import emit  # noqa: E402
from quality import load_bundle, load_trained  # noqa: E402

from qanchor.answer_numbers import answer_numbers  # noqa: E402
from qanchor.model.batch import collate_users  # noqa: E402

#: D_future answers (`qanchor.synthetic.future_summary`) open with this; their slots hold a different
#: behaviour for each user, so a correlation per slot means nothing there.
FUTURE_PREFIX = "Over the next"


def correlations(predicted: np.ndarray, values: np.ndarray, present: np.ndarray, min_rows: int = 10) -> list[float | None]:
    """Per slot: Pearson r over the rows stating it; None with fewer than `min_rows` or a constant number."""
    out = []
    for slot in range(values.shape[1]):
        rows = present[:, slot]
        if rows.sum() < min_rows or np.ptp(values[rows, slot]) == 0 or np.ptp(predicted[rows, slot]) == 0:
            out.append(None)
        else:
            out.append(float(np.corrcoef(predicted[rows, slot], values[rows, slot])[0, 1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="the bench/quality.py bundle the model trained on")
    parser.add_argument("--model", type=Path, required=True, help="a saved variant: OUT/runs/<variant>/final")
    parser.add_argument("--per-question", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--results-name", default="number_head", help="bench/results/<name>.json")
    args = parser.parse_args()
    bundle, cache = load_bundle(args.bundle)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_trained(args.model, cache, device)
    net = model.network.eval()
    if net.number_head is None:
        parser.error(f"{args.model} has no number head: it was trained with model.loss.number_weight 0")
    by_question = defaultdict(list)
    for example in reversed(bundle.train):
        if not example.answer.startswith(FUTURE_PREFIX) and len(by_question[example.query]) < args.per_question:
            by_question[example.query].append(example)
    slots = net.number_head.out_features
    rows = []
    for question, examples in tqdm(sorted(by_question.items()), desc="questions"):
        predicted = []
        with torch.no_grad():
            for start in range(0, len(examples), args.batch_size):
                batch = examples[start:start + args.batch_size]
                users = collate_users([e.features for e in batch], [e.reference_time for e in batch], net.spec, cache)
                users = {k: v.to(device) for k, v in users.items()}
                out = net(users, cache.table(device), net.suffix_ids([e.query for e in batch]),
                          net.answer_ids([e.answer for e in batch]))
                predicted.append(out.numbers.float().cpu())
        values, present = answer_numbers([e.answer for e in examples], slots)
        cors = correlations(torch.cat(predicted).numpy(), values, present)
        rows.append({"question": question, "rows": len(examples),
                     **{f"slot_{i + 1}": "-" if c is None else round(c, 3) for i, c in enumerate(cors)}})
    emit(args.results_name, rows, {"model": str(args.model), "bundle": str(args.bundle), "device": str(device)})


if __name__ == "__main__":
    main()
