"""Embedding quality on the 10 downstream tasks: baselines, Q-Anchor, and the paper's ablations.

Every variant is pretrained from the same base config on the same dataset, then scored by
`qanchor evaluate`'s harness on the same held-out users (probe train / val / test), so rows are
comparable within one run:

  full                 the base config: the packaged spec's short event sequences plus [HIST_m]
                       window-long history tokens (one mean+max pooled token per modality)
  legacy               before the history view: the store's full event sequences (import the
                       dataset with longer `max_events` to compare), no history tokens
  no_history           full without the [HIST_m] tokens
  history_slots        full with 4 attention-slot [HIST_m] tokens per modality (history_slots 4)
  kinds                full plus each history modality's 24 most frequent kinds as tokens of their own
                       (history_kind_tokens 24)
  buckets              full plus each history modality's kinds hashed into 128 fixed buckets read by
                       an MLP into its [HIST_m] token (history_buckets 128); no_buckets: none (0)
  grouped              full with batches grouping each user under 4 questions (queries_per_user 4)
  by_question          full with batches grouping 16 users under each question (users_per_question 16);
                       any by_question_<users>, e.g. by_question_32: two questions per batch of 64
  history_q_<k>        full with each "When did this user last ..." example k times per epoch
                       (data.oversample), e.g. history_q_8; history_q_8_from_50 only in the second half
                       of the steps (data.oversample_from 0.5)
  future_q_<k>         full plus each yes/no question about one future behaviour ("Will this user ...",
                       the generator's --future-questions) k times per epoch, beside the base config's
                       oversampling, e.g. future_q_4
  uniform              full plus the uniformity term on the anchors (loss.uniformity_weight 0.5)
  readout              full with the <USER_EMB> state attending over the summary tokens (summary_readout)
  meaning              full with each query's frozen sentence embedding added to its <USER_EMB> input
                       through a small MLP (query_meaning), so unseen wording lands where its meaning does
  profile_values       full with each numeric profile field's value (age, income, credit limit, ...) read
                       beside its digit-masked text (model.profile_values)
  wide                 full with 512-dimensional embeddings instead of 128 (embed_dim 512)
  ntp_embedding        full with the NTP answer decoded from the embedding alone (loss.ntp_input embedding)
  numbers              full plus a head reading the answer's numbers back from the embedding (loss.number_weight 1)
  late_backbone        full with the backbone (or its LoRA adapters) at lr 0 for the first quarter of the steps
                       while the encoders and projection train (optim.backbone_frozen_steps)
  high_lr              full at lr 1e-3 (backbone 5e-4), the GPU config's rate before the seventh run
                       (the shipped configs use the reference code's 1e-4 on the GPU)
  slow_encoders        full with the user encoder at lr 1e-5 (near its random init) while the rest trains
  no_contrastive       NTP only (contrastive weight 0)
  no_ntp               contrastive only (NTP weight 0)
  no_summary_tokens    events only: no [USER] / [MOD_m] tokens in the prefix
  no_pretraining       random-init encoders + backbone, then prompt tuning
  data_10, data_25, data_50  pretraining on 10% / 25% / 50% of the train-split examples (any data_<percent>)
  tiny_4x256, tiny_8x512     the random-init backbone at 4 layers x 256 / 8 layers x 512 (2 x 128;
                       any tiny_<layers>x<width>)
  batch_256            full at 256 rows a step (255 in-batch negatives each); any batch_<rows>, e.g.
                       batch_64, the GPU config's size before the second scale run
  lr_3e-4, temp_0.1    full with every group's learning rate, or the contrastive temperature, set
                       (any lr_<rate>, temp_<temperature>): the issue's sweeps without a variant each
  backbone_lr_2e-5     full with only the backbone's (or its LoRA adapters') learning rate set, the
                       encoders and projection keeping the config's (any backbone_lr_<rate>)
  smollm2              the smollm2-135m backbone (with --smollm2; slow on CPU)

Variants combine with `+`: `by_question+uniform` applies both changes to the base config;
`no_pretraining` combines only with the parts that shape the model (`no_pretraining+readout`).

Baselines (LightGBM on recent aggregates and on window-long history, MiniLM text) do not depend
on the backbone: they are scored once per population (when a bundle is exported, on the machine
that has LightGBM and MiniLM) and shared by every variant's table. A prompt-token sweep runs on
the full variant, or on `--sweep-on VARIANT`; with `--variants ''` it tunes a model an earlier run
saved under OUT without scoring that variant again (what fits one device call). Each point's test
scores land in OUT/<variant>_prompt_<k>, so two points pair with `--compare OUT/full_prompt_1
--full-scores OUT/full_prompt_6 --method qanchor_prompt [--versus gbdt_history]`.

    python bench/quality.py --dataset data/demo/raw --repo data/demo/feature_store \
        [--variants full,no_contrastive,...] [--steps 150] [--tune-steps 150] [--sweep 1,2,4,6,8]

A GPU machine without Feast or MLflow (or the MiniLM weights) runs the same comparison from a
bundle: `--export-bundle DIR` writes the pretraining pool, the held-out examples, the evaluation
population and a text-embedding cache covering every event text and query in them; `--bundle DIR` then
pretrains with `training.pretrain.fit` and scores on whatever device torch finds. Event texts
travel as their digit-masked kinds (what the model embeds; amounts ride in numeric fields), so a
bundle of 15k users fits one device call. The bundle is a pickle: load only bundles you made.

Each variant's test-user scores land in OUT/<variant>/test_scores.pkl, so variants trained in
separate processes (two sharing one GPU) are still paired against full afterwards:

    python bench/quality.py --compare OUT_B/history_slots --full-scores OUT_A/full

Seed replicates pool: one folder per seed, in the same order as the full folders, and every
difference is the mean over seeds and tasks (users resampled jointly; seeds are not resampled):

    python bench/quality.py --compare OUT0/buckets,OUT1/buckets --full-scores OUT0/full OUT1/full
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import pickle
import re
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import device_name, emit  # noqa: E402

from qanchor.features import ModalityEvents, UserFeatures, text_key  # noqa: E402
from qanchor.modality_spec import ModalitySpec, load_spec  # noqa: E402
from qanchor.model import QAnchor  # noqa: E402
from qanchor.model.batch import collate_users  # noqa: E402
from qanchor.model.text_encoder import TextEmbeddingCache  # noqa: E402
from training.data import Example, build_examples  # noqa: E402
from training.distributed import init_distributed  # noqa: E402
from training.example_stream import InMemoryExamples  # noqa: E402
from training.evaluation.harness import (  # noqa: E402
    EvaluationSettings,
    evaluate,
    paired_difference,
    reliable_tasks,
    score_baselines,
    task_labels,
)
from training.evaluation.metrics import roc_auc  # noqa: E402
from training.evaluation.population import EvaluationPopulation, load_population  # noqa: E402
from training.evaluation.report import write_report  # noqa: E402
from training.pretrain import (  # noqa: E402
    CHECKPOINT_DIR,
    PretrainConfig,
    fit,
    latest_checkpoint,
    load_config,
    retrieval_batch_size,
    seed_everything,
)

VARIANTS = ("full", "legacy", "no_history", "history_slots", "kinds", "buckets", "grouped", "by_question",
            "uniform", "readout", "meaning", "wide", "ntp_embedding", "numbers", "late_backbone", "high_lr", "slow_encoders",
            "no_contrastive", "no_ntp", "no_summary_tokens", "no_pretraining", "data_10", "data_25", "data_50",
            "tiny_4x256", "tiny_8x512", "batch_256", "profile_values")
#: Known parts the default run leaves out: smollm2 is slow on a CPU, and no_buckets differs from
#: full only where the base config has buckets (the GPU config).
ON_REQUEST = ("smollm2", "no_buckets")
#: Parts that change the model's layout, not its training: the only ones `no_pretraining` takes
#: (with any `tiny_<layers>x<width>`).
MODEL_PARTS = {"no_history", "history_slots", "kinds", "buckets", "no_buckets", "readout", "meaning", "wide",
               "no_summary_tokens", "profile_values"}
_NUMBER = r"(?:\d+\.?\d*|\.\d+)(?:e-?\d+)?"
#: Parts that carry their value in the name (`data_25`, `tiny_4x256`, `batch_128`, `by_question_32`,
#: `history_q_8`, `lr_3e-4`, `backbone_lr_2e-5`, `temp_0.1`).
VALUE_PART = re.compile(
    rf"^(?:data_\d+|tiny_\d+x\d+|batch_\d+|by_question_\d+|history_q_\d+(?:_from_\d+)?|future_q_\d+|lr_{_NUMBER}|backbone_lr_{_NUMBER}|temp_{_NUMBER})$")

#: Kind tokens per history modality in the `kinds` variant: every kind of nine users in ten on the
#: 30k-user benchmark population (its bill stream: median 13 kinds, 90th percentile 18).
KIND_TOKENS = 24
#: The synthetic corpus's questions about window-long history (the refill and quarterly-plan
#: recency questions), which `history_q_<factor>` oversamples (data.oversample).
HISTORY_QUESTION = "When did this user last"
#: The synthetic corpus's yes/no questions about one behaviour of the next window, which
#: `future_q_<factor>` oversamples: the pretraining questions shaped most like a scenario query.
FUTURE_KIND_QUESTION = "Will this user"
#: Hash buckets per history modality in the `buckets` variant. The 100k-user population's bill
#: stream has 52 distinct kinds (a user: median 14); in 128 buckets at most 3 of them share one.
HISTORY_BUCKETS = 128


def train_examples(dataset: Path) -> int:
    train = set(pd.read_parquet(dataset / "splits").query("split == 'train'")["user_id"])
    return sum(pd.read_parquet(dataset / t, columns=["user_id"])["user_id"].isin(train).sum() for t in ("d_future", "d_uqa"))


def variant_config(base: PretrainConfig, variant: str, dataset: Path, repo: Path, steps: int, pool: int,
                   out: Path) -> PretrainConfig:
    """`pool` is the pretraining set (100%); data_10 / data_25 / data_50 draw that share of it. A variant joined
    by `+` (`by_question+uniform`) applies each part's change, in order."""
    cfg = base.model_dump()
    cfg["data"].update(dataset=dataset, feature_repo=repo, max_train_examples=pool)
    cfg["optim"]["steps"] = steps
    cfg["output_dir"] = out / "runs" / variant
    cfg["tracking"].update(uri=f"sqlite:///{out / 'mlruns.db'}", experiment="qanchor-quality-bench", register_model=False)
    for part in variant_parts(variant):
        if part in ("legacy", "no_history"):  # and what reads the history view with it
            cfg["model"].update(history_tokens=False, history_slots=0, history_kind_tokens=0, history_buckets=0)
        elif part == "no_buckets":
            cfg["model"]["history_buckets"] = 0
        elif part == "history_slots":
            cfg["model"]["history_slots"] = 4
        elif part == "kinds":
            cfg["model"]["history_kind_tokens"] = KIND_TOKENS
        elif part == "buckets":
            cfg["model"]["history_buckets"] = HISTORY_BUCKETS
        elif part == "grouped":
            cfg["data"]["queries_per_user"] = 4
        elif part == "by_question":
            cfg["data"]["users_per_question"] = 16
        elif part == "uniform":
            cfg["model"]["loss"]["uniformity_weight"] = 0.5
        elif part == "readout":
            cfg["model"]["summary_readout"] = True
        elif part == "meaning":
            cfg["model"]["query_meaning"] = True
        elif part == "profile_values":
            cfg["model"]["profile_values"] = True
        elif part == "wide":
            cfg["model"]["embed_dim"] = 512
        elif part == "ntp_embedding":
            cfg["model"]["loss"]["ntp_input"] = "embedding"
        elif part == "numbers":
            cfg["model"]["loss"]["number_weight"] = 1.0
        elif part == "late_backbone":
            cfg["optim"]["backbone_frozen_steps"] = steps // 4
        elif part == "high_lr":
            cfg["optim"].update(lr=1e-3, backbone_lr=5e-4)
        elif part == "slow_encoders":
            cfg["optim"]["encoder_lr"] = 1e-5
        elif part == "no_contrastive":
            cfg["model"]["loss"]["contrastive_weight"] = 0.0
        elif part == "no_ntp":
            cfg["model"]["loss"]["ntp_weight"] = 0.0
        elif part == "no_summary_tokens":
            cfg["model"]["summary_tokens"] = False
        elif part.startswith("data_"):
            cfg["data"]["max_train_examples"] = pool * int(part.removeprefix("data_")) // 100
        elif part.startswith("tiny_"):
            layers, hidden = part.removeprefix("tiny_").split("x")
            cfg["model"]["backbone"].update(num_hidden_layers=int(layers), hidden_size=int(hidden))
        elif part.startswith("history_q_"):
            factor, _, late = part.removeprefix("history_q_").partition("_from_")
            cfg["data"]["oversample"] = {HISTORY_QUESTION: int(factor)}
            if late:
                cfg["data"]["oversample_from"] = int(late) / 100
        elif part.startswith("future_q_"):
            cfg["data"]["oversample"] = {**cfg["data"]["oversample"], FUTURE_KIND_QUESTION: int(part.removeprefix("future_q_"))}
        elif part.startswith("by_question_"):
            cfg["data"]["users_per_question"] = int(part.removeprefix("by_question_"))
        elif part.startswith("batch_"):
            cfg["optim"]["batch_size"] = int(part.removeprefix("batch_"))
        elif part.startswith("backbone_lr_"):
            cfg["optim"]["backbone_lr"] = float(part.removeprefix("backbone_lr_"))
        elif part.startswith("lr_"):
            rate = float(part.removeprefix("lr_"))
            cfg["optim"].update(lr=rate, backbone_lr=rate)
        elif part.startswith("temp_"):
            cfg["model"]["loss"]["temperature"] = float(part.removeprefix("temp_"))
        elif part == "smollm2":
            cfg["model"]["backbone"]["name"] = "smollm2-135m"
        elif part not in ("full", "no_pretraining"):
            raise ValueError(f"unknown variant {part!r}")
    return PretrainConfig.model_validate(cfg)


def variant_parts(variant: str) -> list[str]:
    return variant.split("+")


def unknown_variants(variants: list[str]) -> list[str]:
    """Names `variant_config` cannot build; `no_pretraining` trains nothing, so it combines with
    the model-layout parts only."""
    known = {*VARIANTS, *ON_REQUEST}

    def shapes_model(part: str) -> bool:
        return part in MODEL_PARTS or part.startswith("tiny_")

    return sorted({v for v in variants if any(p not in known and not VALUE_PART.match(p) for p in variant_parts(v))
                   or ("no_pretraining" in variant_parts(v)
                       and not all(shapes_model(p) for p in set(variant_parts(v)) - {"no_pretraining"}))})


def with_paraphrases(population: EvaluationPopulation, overrides: list[str]) -> EvaluationPopulation:
    """The population with `TASK=QUERY` overrides of its tasks' paraphrases. Why: whether a task's
    facts are in the embedding at all, under the question pretraining taught them with, is a
    different question from whether the task's own wording reaches them."""
    if not overrides:
        return population
    queries: dict[str, str] = {}
    for override in overrides:
        task, _, query = override.partition("=")
        if not query.strip():
            raise ValueError(f"--paraphrase takes TASK=QUERY with a non-empty query, got {override!r}")
        if task in queries:
            raise ValueError(f"--paraphrase names task {task!r} twice")
        queries[task] = query
    unknown = sorted(set(queries) - set(population.tasks.names))
    if unknown:
        raise ValueError(f"--paraphrase names tasks {unknown} the population does not have")
    tasks = [t.model_copy(update={"paraphrase": queries.get(t.name, t.paraphrase)}) for t in population.tasks.tasks]
    return replace(population, tasks=population.tasks.model_copy(update={"tasks": tasks}))


def variant_spec(spec: ModalitySpec, variant: str) -> ModalitySpec:
    """The spec a variant's model reads: `legacy` the store's own; the others the packaged default's
    shorter event sequences (the model keeps the last events of each longer stored sequence)."""
    if "legacy" in variant_parts(variant):
        return spec
    default = {m.name: m.max_events for m in load_spec().event_modalities}
    return spec.model_copy(update={"modalities": tuple(
        m.model_copy(update={"max_events": min(m.max_events, default[m.name])}) if m.name in default else m
        for m in spec.modalities)})


@dataclass
class Bundle:
    """Everything a variant reads from Feast, so it can run where Feast is not installed."""

    spec: ModalitySpec
    train: list[Example]        # the pretraining pool (100%), shuffled
    val: list[Example]          # held-out retrieval examples
    population: EvaluationPopulation
    dataset: str
    #: `score_baselines` on the population, per method and task (None: score them in the run).
    baseline_scores: dict | None = None


def _kinds_only(user: UserFeatures, interned: dict[str, str]) -> UserFeatures:
    """The same user with each event text replaced by its kind, one shared string per kind."""
    def kind(text: str) -> str:
        key = text_key(text)
        return interned.setdefault(key, key)

    return replace(user, modalities={name: ModalityEvents(tuple(kind(t) for t in events.texts), events.times,
                                                          events.numeric)
                                     for name, events in user.modalities.items()},
                   history={name: replace(past, kinds=tuple(kind(k) for k in past.kinds))
                            for name, past in user.history.items()})


def bundle_queries(bundle: Bundle) -> list[str]:
    """Every question the bundle's examples ask and every query its tasks are scored with."""
    tasks = bundle.population.tasks
    asked = [e.query for e in bundle.train + bundle.val]
    scored = [tasks.generic_query, *(q for t in tasks.tasks for q in (t.query, t.paraphrase) if q)]
    return list(dict.fromkeys(asked + scored))


def export_bundle(folder: Path, bundle: Bundle) -> None:
    """The bundle, plus a text-embedding cache holding every event kind its users carry and every
    query it asks (a `query_meaning` model reads their sentence embeddings; the GPU node has no
    MiniLM weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    cache = TextEmbeddingCache()
    interned: dict[str, str] = {}
    compact: dict[int, UserFeatures] = {}

    def small(user: UserFeatures) -> UserFeatures:
        return compact.setdefault(id(user), _kinds_only(user, interned))

    bundle = replace(bundle, train=[replace(e, features=small(e.features)) for e in bundle.train],
                     val=[replace(e, features=small(e.features)) for e in bundle.val],
                     population=replace(bundle.population, users=[small(u) for u in bundle.population.users]))
    examples = bundle.train + bundle.val
    users = [e.features for e in examples] + bundle.population.users
    times = [e.reference_time for e in examples] + bundle.population.reference_times
    for start in range(0, len(users), 256):
        collate_users(users[start:start + 256], times[start:start + 256], bundle.spec, cache)
    cache.ids(bundle_queries(bundle))
    cache.save(folder / "text_cache.npz")
    with gzip.open(folder / "bundle.pkl.gz", "wb") as fh:
        pickle.dump(vars(bundle), fh)  # fields only: the class's module differs between script and import


def load_bundle(folder: Path) -> tuple[Bundle, TextEmbeddingCache]:
    with gzip.open(folder / "bundle.pkl.gz", "rb") as fh:
        bundle = Bundle(**pickle.load(fh))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return bundle, TextEmbeddingCache.load(folder / "text_cache.npz", device=device)


TRAINED_RECORD = "bench_trained_with.json"
#: Beside a run's checkpoints: the config and bundle they belong to, so only the same run resumes.
TRAINING_RECORD = "bench_training.json"


def bundle_fingerprint(folder: Path) -> str:
    """SHA-256 of the bundle file: a model trained on another bundle of the same dataset path is
    not the same model."""
    digest = hashlib.sha256()
    with (folder / "bundle.pkl.gz").open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pretrain_from_bundle(cfg: PretrainConfig, spec: ModalitySpec, bundle: Bundle, cache: TextEmbeddingCache,
                         reuse_from: str | None = None) -> QAnchor:
    """`pretrain` without Feast or MLflow: same seeds, same loop, the pool's leading share for data_*.

    The saved model carries a record of the config and bundle it was trained with, written after
    the weights, so a half-written folder never counts. With `reuse_from` (the bundle's
    fingerprint) a folder whose record matches is loaded instead of trained: a device call cut
    during evaluation re-runs only the evaluation on the same machine; one cut during training
    resumes from its last checkpoint (`checkpoint_every`) when that run's record matches, so a
    run longer than one call finishes over several calls to the same warm machine."""
    d = init_distributed()
    run = Path(cfg.output_dir)
    folder = run / "final"
    # Where a run writes is not part of what it trained: a copied run folder is reused too.
    record = {"config": cfg.model_dump(mode="json", exclude={"output_dir", "tracking"}), "bundle_sha256": reuse_from}
    if reuse_from is not None and (folder / TRAINED_RECORD).is_file():
        if json.loads((folder / TRAINED_RECORD).read_text()) == record:
            print(f"  reusing {folder} (trained with this config and bundle)", flush=True)
            return load_trained(folder, cache, d.device)
        print(f"  {folder} was trained with another config or bundle: training again", flush=True)
    # An old record must not vouch for weights this run is about to overwrite.
    (folder / TRAINED_RECORD).unlink(missing_ok=True)
    checkpoint = latest_checkpoint(run)
    same_run = (run / TRAINING_RECORD).is_file() and json.loads((run / TRAINING_RECORD).read_text()) == record
    if checkpoint is not None and reuse_from is not None and same_run:
        print(f"  resuming from {checkpoint}", flush=True)
    else:
        checkpoint = None
        shutil.rmtree(run / CHECKPOINT_DIR, ignore_errors=True)
        run.mkdir(parents=True, exist_ok=True)
        (run / TRAINING_RECORD).write_text(json.dumps(record))
    seed_everything(cfg.seed)
    model = QAnchor.build(spec, cfg.model, seed=cfg.seed)
    model.cache = cache
    train = bundle.train[:cfg.data.max_train_examples]
    accuracy = fit(model, InMemoryExamples(train), bundle.val, cfg, d, checkpoint=checkpoint)
    print(f"  retrieval accuracy {accuracy:.3f} (chance {1 / retrieval_batch_size(cfg, len(bundle.val)):.3f})", flush=True)
    folder = model.save_pretrained(folder)
    (folder / TRAINED_RECORD).write_text(json.dumps(record))
    return load_trained(folder, cache, d.device)


def load_trained(folder: Path, cache: TextEmbeddingCache, device: torch.device) -> QAnchor:
    """A saved variant, reading event texts through the bundle's embedding cache."""
    model = QAnchor.from_pretrained(folder, device=device)
    model.cache = cache
    return model


@dataclass
class TestScores:
    """What a paired comparison with a variant needs, saved beside its report (`test_scores.pkl`),
    so variants trained in separate processes (two on one GPU) can still be compared."""

    test_labels: dict
    test_scores: dict
    unreliable: list


def save_test_scores(folder: Path, result) -> None:
    with (folder / "test_scores.pkl").open("wb") as fh:
        pickle.dump(vars(TestScores(result.test_labels, result.test_scores, list(result.unreliable))), fh)


def load_test_scores(folder: Path) -> TestScores:
    path = folder / "test_scores.pkl"
    if not path.is_file():
        raise SystemExit(f"{folder}: no test_scores.pkl (bench/quality.py writes one per variant under --out)")
    with path.open("rb") as fh:
        return TestScores(**pickle.load(fh))


def replicate_keys(task: str, seeds: int) -> list[str]:
    """The keys one task has in `pool_seeds`' scores: the task itself, or one per seed."""
    return [task] if seeds == 1 else [f"{task}@{i}" for i in range(seeds)]


def pool_seeds(replicates: list[TestScores]) -> TestScores:
    """Seed replicates scored on the same test users as ONE set of scores whose tasks are (task,
    seed) pairs (`replicate_keys`). A paired bootstrap over them draws one resample of users for
    every seed, so its estimate is the mean over seeds and tasks: what a claim about a
    configuration, not about one run, needs. Its interval resamples users only, not seeds (two
    seeds are too few to resample): training noise shrinks with each seed averaged in, but is not
    in the interval; `--compare` of two seeds of one configuration measures it."""
    if len(replicates) == 1:
        return replicates[0]
    labels: dict = {}
    scores: dict[str, dict] = {}
    for i, replicate in enumerate(replicates):
        labels.update({f"{t}@{i}": y for t, y in replicate.test_labels.items()})
        for method, by_task in replicate.test_scores.items():
            scores.setdefault(method, {}).update({f"{t}@{i}": s for t, s in by_task.items()})
    return TestScores(labels, scores, list(replicates[0].unreliable))


def compare_saved(full_folders: list[Path], groups: list[list[Path]], resamples: int, tasks: list[str] | None = None,
                  versus: str | None = None, method: str = "qanchor_query") -> list[dict]:
    """`versus_full` over saved variants: they must have scored the same test users as `full`.
    With several `full_folders` (seed replicates) each group holds one folder of its variant per
    seed, in the same order, and every difference is pooled over the seeds (`pool_seeds`).
    With `versus` (a baseline method the saved scores hold, e.g. gbdt_history), each folder's
    `method` scores (the task query; qanchor_prompt for sweep points) are also paired against
    that baseline on the same users."""
    seeds = len(full_folders)

    def with_method(folder: Path) -> TestScores:
        scores = load_test_scores(folder)
        if method not in scores.test_scores:
            raise SystemExit(f"{folder} has no {method!r} scores; it has {sorted(scores.test_scores)}")
        return scores

    first = with_method(full_folders[0])
    full_labels = first.test_labels
    unknown = sorted(set(tasks or ()) - set(full_labels))
    if unknown:
        raise SystemExit(f"--tasks names {unknown}, which {full_folders[0]} did not score; it has {sorted(full_labels)}")

    def same_users(folder: Path) -> TestScores:
        scores = with_method(folder)
        if set(scores.test_labels) != set(full_labels) or any(
                len(y) != len(full_labels[t]) or (y != full_labels[t]).any() for t, y in scores.test_labels.items()):
            raise SystemExit(f"{folder} scored other test users than {full_folders[0]}: not comparable")
        return scores

    results = {"full": pool_seeds([first, *(same_users(f) for f in full_folders[1:])])}
    for group in groups:
        if len(group) != seeds:
            raise SystemExit(f"{','.join(map(str, group))}: {len(group)} folders for {seeds} --full-scores "
                             "(one per seed, in the same order)")
        results[",".join(f.name for f in group)] = pool_seeds([same_users(f) for f in group])
    tasks = reliable_tasks(tasks or list(full_labels), first.unreliable)
    rows = versus_full(results, resamples, tasks, seeds, method)
    if versus is not None:
        rows += versus_baseline(results, versus, resamples, tasks, seeds, method)
    return rows


def tasks_ahead(labels: dict, tasks: list[str], seeds: int, ours: dict, theirs: dict) -> int:
    """On how many tasks `ours` has the higher AUC, averaged over the seeds."""
    return sum(np.mean([roc_auc(labels[k], ours[k]) - roc_auc(labels[k], theirs[k]) for k in replicate_keys(t, seeds)])
               > 0 for t in tasks)


def versus_baseline(results: dict, method: str, resamples: int, tasks: list[str] | None = None,
                    seeds: int = 1, ours_method: str = "qanchor_query") -> list[dict]:
    """Each saved variant's `ours_method` scores (the task query) minus `method`, paired on the same
    test users, with the tasks it is ahead on: the issue targets' "above the best baseline on N of M tasks"."""
    out = []
    for variant, scores in results.items():
        if method not in scores.test_scores:
            raise SystemExit(f"{variant} has no {method!r} scores; it has {sorted(scores.test_scores)}")
        chosen = tasks or reliable_tasks(list(scores.test_labels), scores.unreliable)
        ours, theirs = scores.test_scores[ours_method], scores.test_scores[method]
        d = paired_difference(scores.test_labels, [k for t in chosen for k in replicate_keys(t, seeds)], ours, theirs,
                              resamples)
        out.append({**difference_row(variant, f"{ours_method} - {method}", d),
                    "ahead": f"{tasks_ahead(scores.test_labels, chosen, seeds, ours, theirs)} of {len(chosen)}"})
    return out


def versus_full(results: dict, resamples: int, tasks: list[str] | None = None, seeds: int = 1,
                method: str = "qanchor_query") -> list[dict]:
    """Each variant's AUC / KS under `method` (the task query) minus the full variant's, paired on
    the same test users, with the tasks whose own paired AUC interval lies wholly below (`worse`) or above (`better`)
    zero: a mean can hide one task a change breaks. With `seeds` > 1 the scores are `pool_seeds`'
    and every figure is over the seeds too."""
    full = results["full"]
    tasks = tasks or reliable_tasks(list(full.test_labels), full.unreliable)
    out = []
    for variant, result in results.items():
        if variant != "full":
            ours, theirs = result.test_scores[method], full.test_scores[method]
            d = paired_difference(full.test_labels, [k for t in tasks for k in replicate_keys(t, seeds)], ours, theirs,
                                  resamples)
            per_task = {t: paired_difference(full.test_labels, replicate_keys(t, seeds), ours, theirs, resamples)
                        for t in tasks}
            out.append({**difference_row(variant, f"{method} - full's", d),
                        "worse": " ".join(t for t, e in per_task.items() if e["auc_diff_high"] < 0) or "-",
                        "better": " ".join(t for t, e in per_task.items() if e["auc_diff_low"] > 0) or "-"})
    return out


def difference_row(variant: str, method: str, d: dict, seconds: float | None = None) -> dict:
    """A table row for a paired difference (`paired_difference`'s keys)."""
    return {"variant": variant, "method": method, "mean_auc": d["auc_diff"],
            "auc_95": f"[{d['auc_diff_low']:.3f}, {d['auc_diff_high']:.3f}]", "mean_ks": d["ks_diff"],
            "ks_95": f"[{d['ks_diff_low']:.3f}, {d['ks_diff_high']:.3f}]", "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, help="Dataset directory (`qanchor data generate` output).")
    parser.add_argument("--repo", type=Path, help="Feast repository of that dataset.")
    parser.add_argument("--bundle", type=Path, help="Run from a bundle instead of --dataset/--repo (no Feast, no MLflow).")
    parser.add_argument("--export-bundle", type=Path, help="Write a bundle for --bundle and stop.")
    parser.add_argument("--config", type=Path, default=Path("training/configs/pretrain_tiny.yaml"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--smollm2", action="store_true", help="Also pretrain and score the smollm2-135m backbone.")
    parser.add_argument("--steps", type=int, default=150, help="Pretraining steps per variant.")
    parser.add_argument("--seed", type=int, default=None, help="Override the config's seed (seed replicates).")
    parser.add_argument("--pretrain-examples", type=int, default=None,
                        help="The pretraining set (100%%). Default: one epoch of --steps, capped by the train split.")
    parser.add_argument("--tune-steps", type=int, default=150)
    parser.add_argument("--tune", choices=("default", "all", "none"), default="default",
                        help="Which variants get a tuned soft prompt (default: full, no_pretraining).")
    parser.add_argument("--sweep", default="1,2,4,6,8", help="Prompt-token counts on the full variant ('' to skip).")
    parser.add_argument("--sweep-on", default="full", metavar="VARIANT",
                        help="The variant the sweep tunes prompts on: trained in this run, or saved earlier at "
                             "OUT/runs/VARIANT/final (with --variants '' nothing is trained or scored before the sweep).")
    parser.add_argument("--sweep-tasks", default="mkt_travel_booking,eng_checkin_streak")
    parser.add_argument("--max-users", type=int, default=None, help="Evaluation users (held-out splits).")
    parser.add_argument("--pretrain-users", type=int, default=None,
                        help="Pretrain on this many train-split users (all their questions). Default: all.")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--no-prefix-probe", action="store_true", help="Skip the qanchor_prefix row (its probe is slow on a busy CPU).")
    parser.add_argument("--no-text-baseline", action="store_true",
                        help="Skip the MiniLM row (about an hour per 5,000 users on 2 CPU cores).")
    parser.add_argument("--questions", metavar="PREFIX[,PREFIX...]",
                        help="With --bundle: pretrain only on the pool's examples whose question starts with one "
                             "of these (e.g. 'When did this user last'): can the model learn a fact when it is "
                             "all it is asked? The evaluation is unchanged.")
    parser.add_argument("--paraphrase", action="append", default=[], metavar="TASK=QUERY",
                        help="Score TASK's qanchor_paraphrase row with QUERY, for every variant (repeatable): "
                             "e.g. the pretraining question whose answers state the facts the task needs.")
    parser.add_argument("--gbdt-seeds", type=int, default=1,
                        help="LightGBM fits averaged per baseline row when the baselines are scored (--dataset runs "
                             "and --export-bundle): 5 is the bagged baseline of bench/baseline_spread.py.")
    parser.add_argument("--out", type=Path, default=Path("reports/quality"))
    parser.add_argument("--reuse-trained", action="store_true",
                        help="With --bundle: evaluate OUT/runs/<variant>/final instead of pretraining when it was "
                             "trained with this very config and bundle (re-run a call cut during evaluation), "
                             "or resume that run's last checkpoint (a call cut during training).")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="Override the config's checkpoint_every (steps), so --reuse-trained can resume.")
    parser.add_argument("--results-name", help="bench/results/<name>.json (default: quality, or quality_compare "
                                                "with --compare, so a pairing never replaces a run's table)")
    parser.add_argument("--compare", nargs="+", metavar="VARIANT_DIR[,VARIANT_DIR...]",
                        help="Train nothing: pair saved variants (OUT/<variant> folders, e.g. trained in parallel "
                             "processes) with --full-scores, and write the difference table. With seed replicates, "
                             "one comma-separated folder per seed, in --full-scores' order: figures are pooled.")
    parser.add_argument("--full-scores", nargs="+", type=Path, metavar="FULL_DIR",
                        help="With --compare: the full variant's folder (OUT/full), one per seed replicate.")
    parser.add_argument("--versus", metavar="METHOD",
                        help="With --compare: also pair each folder's task query with this baseline (gbdt_history).")
    parser.add_argument("--tasks", help="With --compare: comma-separated tasks the means run over (default: all).")
    parser.add_argument("--method", default="qanchor_query",
                        help="With --compare: the scores paired (qanchor_prompt for the sweep points a run saves "
                             "under OUT/<variant>_prompt_<k>).")
    args = parser.parse_args()
    if args.compare:
        if args.full_scores is None:
            parser.error("--compare needs --full-scores OUT/full")
        tasks = [t for t in args.tasks.split(",") if t] if args.tasks else None
        groups = [[Path(f) for f in entry.split(",") if f] for entry in args.compare]
        rows = compare_saved(args.full_scores, groups, args.resamples, tasks, args.versus, args.method)
        emit(args.results_name or "quality_compare", rows,
             {"full": [str(f) for f in args.full_scores], "compared": args.compare, "tasks": tasks or "all"})
        return
    if (args.bundle is None) == (args.dataset is None or args.repo is None):
        parser.error("give either --dataset and --repo, or --bundle")
    if args.reuse_trained and args.bundle is None:
        parser.error("--reuse-trained needs --bundle: only a bundle names the data a saved model was trained on")
    if args.questions and args.bundle is None:
        parser.error("--questions filters a --bundle's pretraining pool")
    if args.gbdt_seeds < 1:
        parser.error("--gbdt-seeds must be at least 1")
    if args.bundle is not None and args.gbdt_seeds != 1:
        parser.error("--gbdt-seeds applies where the baselines are scored: a --bundle carries its own")
    if args.bundle is not None and args.export_bundle is not None:
        parser.error("--export-bundle reads --dataset/--repo; it cannot re-export a --bundle")
    variants = [v for v in args.variants.split(",") if v] + (["smollm2"] if args.smollm2 else [])
    if not variants and not args.sweep:
        parser.error("nothing to do: --variants '' scores no variant, so give a --sweep")
    saved_sweep_model = args.out / "runs" / args.sweep_on / "final"
    if args.sweep and args.sweep_on not in variants and not (saved_sweep_model / "model.safetensors").is_file():
        parser.error(f"--sweep-on {args.sweep_on}: not among --variants and no model saved at {saved_sweep_model}")
    unknown = unknown_variants(variants)
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {[*VARIANTS, *ON_REQUEST]}, or join several "
                     f"with '+' (no_pretraining only with {sorted(MODEL_PARTS)} or tiny_<layers>x<width>)")
    base = load_config(args.config)
    if args.seed is not None:
        base = base.model_copy(update={"seed": args.seed})
    if args.checkpoint_every is not None:
        base = PretrainConfig.model_validate({**base.model_dump(), "checkpoint_every": args.checkpoint_every})
    fingerprint = bundle_fingerprint(args.bundle) if args.reuse_trained else None
    if args.bundle is not None:
        bundle, cache = load_bundle(args.bundle)
        if args.questions:
            prefixes = tuple(p for p in args.questions.split(",") if p)
            bundle = replace(bundle, train=[e for e in bundle.train if e.query.startswith(prefixes)])
            if not bundle.train:
                parser.error(f"no pretraining example's question starts with any of {list(prefixes)}")
            print(f"pretraining on the {len(bundle.train)} examples whose question starts with {list(prefixes)}")
            # A model trained on one subset must never be reused for another of the same size.
            fingerprint = fingerprint and f"{fingerprint} questions={list(prefixes)}"
    else:
        from feature_repo.store import UserFeatureStore

        store = UserFeatureStore(args.repo)
        population = load_population(store, args.dataset, args.max_users)
        pool = min(train_examples(args.dataset), args.pretrain_examples or args.steps * base.optim.batch_size)
        cache = TextEmbeddingCache()
        labels = task_labels(population, population.tasks.names)
        start = time.perf_counter()
        bundle = Bundle(store.spec, build_examples(store, args.dataset, "train", base.data.future_ratio, pool, base.seed,
                                                   args.pretrain_users),
                        build_examples(store, args.dataset, "val", base.data.future_ratio, base.data.val_examples,
                                       base.seed + 1),
                        population, str(args.dataset),
                        score_baselines(store.spec, cache, population, labels, text=not args.no_text_baseline,
                                        gbdt_seeds=args.gbdt_seeds))
        print(f"baselines scored in {time.perf_counter() - start:.0f}s", flush=True)
        if args.export_bundle is not None:
            export_bundle(args.export_bundle, bundle)
            print(f"wrote {args.export_bundle}: {pool} pretraining examples, {len(population.users)} evaluation users")
            return
    population, pool, dataset = bundle.population, len(bundle.train), Path(bundle.dataset)
    try:
        population = with_paraphrases(population, args.paraphrase)
    except ValueError as err:
        parser.error(str(err))
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def record(variant: str, result, seconds: float) -> None:
        for s in result.summary:
            rows.append({"variant": variant, "method": s["method"], "mean_auc": s["mean_auc"],
                         "auc_95": f"[{s['mean_auc_low']:.3f}, {s['mean_auc_high']:.3f}]", "mean_ks": s["mean_ks"],
                         "ks_95": f"[{s['mean_ks_low']:.3f}, {s['mean_ks_high']:.3f}]", "seconds": seconds})
        rows.extend(difference_row(variant, f"{c['method']} - {c['versus']}", c, seconds) for c in result.comparisons)
        geometry[variant] = result.geometry

    def save_table(show: bool) -> None:
        """The results so far: written after each variant and sweep point, printed at the end."""
        emit(args.results_name or "quality", rows, {
            "dataset": str(dataset), "config": str(args.config), "device": device_name(),
            "from_bundle": args.bundle is not None, "geometry": geometry,
            "pretrain_steps": args.steps, "pretrain_examples": pool, "tune_steps": args.tune_steps,
            "users": {p: int((population.part == p).sum()) for p in ("train", "val", "test")}}, show=show)

    models: dict[str, QAnchor] = {}
    geometry: dict[str, dict] = {}
    results: dict[str, object] = {}
    device = init_distributed().device
    for variant in variants:
        start = time.perf_counter()
        spec = variant_spec(bundle.spec, variant)
        cfg = variant_config(base, variant, dataset, args.repo or Path("."), args.steps, pool, args.out)
        if "no_pretraining" in variant_parts(variant):
            model = QAnchor.build(spec, cfg.model, seed=base.seed)
            model.cache = cache
            model.network.to(device)
        else:
            model = pretrain_from_bundle(cfg, spec, bundle, cache, reuse_from=fingerprint)
        models[variant] = model
        settings = EvaluationSettings(baselines=bundle.baseline_scores is not None,
                                      prompt_tuning=args.tune == "all" or (args.tune == "default" and variant in ("full", "no_pretraining")),
                                      paraphrases=variant == "full" or bool(args.paraphrase),
                                      prefix_probe=not args.no_prefix_probe,
                                      tune_steps=args.tune_steps, resamples=args.resamples)
        result = evaluate(model, population, settings, baseline_scores=bundle.baseline_scores)
        write_report(result, args.out / variant, {"variant": variant, "steps": args.steps}, plots=variant == "full")
        save_test_scores(args.out / variant, result)
        record(variant, result, time.perf_counter() - start)
        results[variant] = result
        print(f"{variant}: done in {time.perf_counter() - start:.0f}s; geometry {result.geometry}", flush=True)
        save_table(show=False)

    if "full" in results:
        rows.extend(versus_full(results, args.resamples))

    sweep_tasks = [t for t in args.sweep_tasks.split(",") if t in bundle.population.tasks.names]
    for tokens in [int(t) for t in args.sweep.split(",") if t]:
        start = time.perf_counter()
        # the bundle's precomputed baselines cost nothing and give "+ prompt minus the best baseline"
        settings = EvaluationSettings(tasks=sweep_tasks, baselines=bundle.baseline_scores is not None,
                                      paraphrases=False, tokens=tokens, tune_steps=args.tune_steps,
                                      resamples=args.resamples)
        swept = models.get(args.sweep_on)
        if swept is None:
            swept = models[args.sweep_on] = load_trained(saved_sweep_model, cache, device)
        result = evaluate(swept, population, settings, baseline_scores=bundle.baseline_scores)
        point = args.out / f"{args.sweep_on}_prompt_{tokens}"
        point.mkdir(exist_ok=True)
        save_test_scores(point, result)
        record(f"{args.sweep_on}, {tokens} prompt tokens ({len(sweep_tasks)} tasks)", result, time.perf_counter() - start)
        tuned = next(s for s in result.summary if s["method"] == "qanchor_prompt")
        print(f"sweep: {tokens} prompt tokens, mean AUC {tuned['mean_auc']:.3f} [{tuned['mean_auc_low']:.3f}, "
              f"{tuned['mean_auc_high']:.3f}] over {len(sweep_tasks)} tasks", flush=True)
        rows[:] = [r for r in rows  # a sweep point's other rows repeat the variant's own
                   if not (r["variant"].startswith(f"{args.sweep_on}, {tokens} ")
                           and not r["method"].startswith(("qanchor_prompt", "oracle")))]
        save_table(show=False)
    save_table(show=True)


if __name__ == "__main__":
    main()
