"""D_future: profile + a fixed query -> a text summary of the user's next-window actions.

The summary picks the user's most frequent (modality, category) behaviours greedily, damping
a candidate's frequency each time its modality or category was already picked (a maximal-
marginal-relevance style trade-off), so a heavy food-delivery user's summary still mentions
their travel searches. Task marker events (late fee, fund purchase, ...) and scheduled payments (a refill, a quarterly
plan) are always kept: they are the rare, decision-relevant actions the pretraining objective
should learn to foresee, and a scheduled payment is foreseeable only from WHEN the last one was.
That also makes the one generic question's answer name every downstream label, which no corpus
written before its scenarios were known can do (`qanchor data corpus` answers with the user's
most frequent kinds only); `name_notable=False` ranks them with every other behaviour instead.

`future_kind_questions` asks the same future one kind at a time ("Will this user pay for
refills in the next 30 days?" -> "Yes: ..." / "No, ..."), so the query decides which part of the
user's behaviour the answer, and hence the embedding, is about: the "query as anchor" signal that
one fixed question cannot give. Kinds are drawn uniformly over kinds, not events, half from the
user's own future and half from kinds they will not show, so a rare behaviour is asked as often
as a common one without naming any task.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from qanchor.synthetic.events import display

FUTURE_QUERY = "What will this user do in the next 30 days?"
MAX_ITEMS = 5
DIVERSITY_DAMPING = 0.5

_PHRASES = {
    "bill": ("pay for {cat} ({n} {unit}, {total:.0f} in total)", "payment"),
    "mini": ("open {cat} mini-programs ({n} {unit})", "visit"),
    "spm": ("browse {cat} pages ({n} {unit})", "click"),
    "app": ("install {cat} apps ({n} {unit})", "app"),
    "search": ("search for {cat} ({n} {unit})", "search"),
}


#: What a question says a user would do with a kind, per modality ("{cat}": the kind's name).
_ACTIONS = {
    "bill": "pay for {cat}",
    "mini": "open {cat} mini-programs",
    "spm": "browse {cat} pages",
    "app": "install {cat} apps",
    "search": "search for {cat}",
}


def _phrase(modality: str, category: str, n: int, total: float, text: str = "") -> str:
    if category.startswith("task:"):  # a task marker (one event per positive user) is named by its text
        return text
    template, unit = _PHRASES[modality]
    plural = unit if n == 1 else (unit + "es" if unit.endswith("h") else unit + "s")
    return template.format(cat=display(category), n=n, unit=plural, total=total)


def _select(groups: pd.DataFrame) -> list[pd.Series]:
    """Greedy frequency x diversity selection over one user's (modality, category) groups."""
    chosen: list[pd.Series] = []
    remaining = list(groups.itertuples(index=False))
    used_mod: dict[str, int] = {}
    used_cat: dict[str, int] = {}
    while remaining and len(chosen) < MAX_ITEMS:
        def score(g) -> tuple[float, str, str]:
            damp = DIVERSITY_DAMPING ** (used_mod.get(g.modality, 0) + used_cat.get(g.category, 0))
            return (g.n * damp, g.modality, g.category)

        best = max(remaining, key=score)
        remaining.remove(best)
        chosen.append(best)
        used_mod[best.modality] = used_mod.get(best.modality, 0) + 1
        used_cat[best.category] = used_cat.get(best.category, 0) + 1
    return chosen


def summarise_future(user_ids: pd.Series, future_events: pd.DataFrame, query_time: pd.Timestamp,
                     scheduled: tuple[str, ...] = (), name_notable: bool = True) -> pd.DataFrame:
    """One D_future row per user: (user_id, query_time, query, answer).

    With `name_notable`, every task marker and every event of a `scheduled` category is named one
    by one after the selected behaviours; without it they compete for the summary's places by
    frequency like any other (modality, kind), as in a corpus written from logs alone."""
    notable_rows = ((future_events["category"].str.startswith("task:") | future_events["category"].isin(scheduled))
                    if name_notable else pd.Series(False, index=future_events.index))
    markers = future_events[notable_rows]
    regular = future_events[~notable_rows]
    groups = (
        regular.groupby(["user_id", "modality", "category"])
        .agg(n=("text", "size"), total=("amount", "sum"), text=("text", "first"))
        .reset_index()
    )
    by_user = dict(tuple(groups.groupby("user_id")))
    notable = markers.sort_values("event_time").groupby("user_id")["text"].agg(list).to_dict()
    answers = []
    for user_id in user_ids:
        phrases = [
            _phrase(g.modality, g.category, g.n, g.total, g.text)
            for g in (_select(by_user[user_id]) if user_id in by_user else [])
        ]
        phrases += [f"notably, {text}" for text in notable.get(user_id, [])]
        body = "; ".join(phrases) if phrases else "stay inactive"
        answers.append(f"Over the next 30 days this user is likely to {body}.")
    return pd.DataFrame({"user_id": list(user_ids), "query_time": query_time, "query": FUTURE_QUERY, "answer": answers})


def _kind_question(modality: str, category: str, text: str, days: int) -> str:
    if category.startswith("task:"):
        return f'Will this user\'s next {days} days include "{text}"?'
    return f"Will this user {_ACTIONS[modality].format(cat=display(category))} in the next {days} days?"


def _kind_answer(modality: str, category: str, text: str, n: int, total: float) -> str:
    if category.startswith("task:"):
        return f'Yes: "{text}" ({n} time{"" if n == 1 else "s"}).' if n else f'No, "{text}" is not likely.'
    if n:
        return f"Yes: {_phrase(modality, category, n, total)}."
    return f"No, this user is not likely to {_ACTIONS[modality].format(cat=display(category))}."


def future_kind_questions(rng: np.random.Generator, user_ids: pd.Series, future_events: pd.DataFrame,
                          query_time: pd.Timestamp, per_user: int, days: int) -> pd.DataFrame:
    """`per_user` D_future rows per user, each a yes/no question about one (modality, kind) of the
    future window, same columns as `summarise_future`. A kind is asked at most once per user;
    each question is a "yes" (a kind of the user's own future) with probability 1/2 while both
    kinds are left, the kind then drawn uniformly among the candidates."""
    if per_user <= 0:
        return pd.DataFrame(columns=["user_id", "query_time", "query", "answer"])
    groups = (future_events.groupby(["user_id", "modality", "category"])
              .agg(n=("text", "size"), total=("amount", "sum"), text=("text", "first")).reset_index())
    kinds = groups.drop_duplicates(["modality", "category"])[["modality", "category", "text"]]
    universe = sorted(kinds.itertuples(index=False, name=None))
    by_user = {u: {(g.modality, g.category): (g.n, g.total) for g in frame.itertuples(index=False)}
               for u, frame in groups.groupby("user_id")}
    rows = []
    for user_id in user_ids:
        own = by_user.get(user_id, {})
        yes = [k for k in universe if (k[0], k[1]) in own]
        no = [k for k in universe if (k[0], k[1]) not in own]
        for _ in range(min(per_user, len(universe))):
            pool = yes if yes and (not no or rng.random() < 0.5) else no
            modality, category, text = pool.pop(int(rng.integers(len(pool))))
            n, total = own.get((modality, category), (0, 0.0))
            rows.append((user_id, query_time, _kind_question(modality, category, text, days),
                         _kind_answer(modality, category, text, n, total)))
    return pd.DataFrame(rows, columns=["user_id", "query_time", "query", "answer"])
