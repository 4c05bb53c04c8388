"""The query files the GPU runs pass as `--paraphrase` (bench/queries/) ask, word for word, the
questions the generator puts into the pretraining corpus: they are documented as "the exact
pretraining question", so a change to the generator's wording must show up here, not as a
silently weaker row in docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from qanchor.synthetic.generator import GeneratorConfig, generate_chunk
from qanchor.synthetic.tasks import TASK_NAMES

QUERIES = Path(__file__).resolve().parents[1] / "bench" / "queries"


def overrides(name: str) -> dict[str, str]:
    lines = [line for line in (QUERIES / name).read_text().splitlines() if line and not line.startswith("#")]
    pairs = [line.split("=", 1) for line in lines]
    assert all(len(pair) == 2 and pair[1] for pair in pairs), f"{name} holds a line that is not TASK=QUERY"
    assert len({task for task, _ in pairs}) == len(pairs), f"{name} names a task twice (--paraphrase refuses that)"
    return dict(pairs)


@pytest.fixture(scope="module")
def corpus():
    return generate_chunk(GeneratorConfig(users=400, seed=11, future_questions_per_user=16, uqa_per_user=13), 0, 0, 400)


def test_kind_questions_name_every_task_once_with_its_pretraining_question(corpus):
    queries = overrides("kind_questions.txt")
    assert sorted(queries) == sorted(TASK_NAMES)
    asked = set(corpus.d_future["query"])
    assert {task: query for task, query in queries.items() if query not in asked} == {}


def test_habit_kind_questions_are_the_kind_questions_of_the_two_habit_tasks():
    habits = {"mkt_refill_repeat", "mkt_plan_renewal"}
    kinds = overrides("kind_questions.txt")
    assert overrides("habit_kind_questions.txt") == {task: kinds[task] for task in habits}


def test_recency_questions_are_the_corpus_recency_questions(corpus):
    queries = overrides("recency_questions.txt")
    assert set(queries) == {"mkt_refill_repeat", "mkt_plan_renewal"}
    assert set(queries.values()) <= set(corpus.d_uqa["question"])
