"""`QAnchor`: the user-facing model object (build, save, load, embed).

    model = QAnchor.from_pretrained("runs/pretrain/final")   # or training.registry.load_model("champion")
    vectors = model.embed(user_features, ["will this user repay late?", "likes travel deals?"])

A saved model is a directory: `qanchor.json` (settings + modality spec), `backbone/` (LM config),
`tokenizer/` (with the special tokens) and `model.safetensors` (every weight, frozen or not).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from qanchor.features import UserFeatures
from qanchor.modality_spec import FeatureSchemaError, ModalitySpec, parse_spec, spec_differences
from qanchor.model.backbone import backbone_from_saved, load_backbone
from qanchor.model.batch import ModalityBatch, collate_users
from qanchor.model.config import ModelSettings
from qanchor.model.modeling import QAnchorModel
from qanchor.model.text_encoder import TextEmbeddingCache
from qanchor.scenario import LoadedScenario, ScenarioMismatchError

FORMAT_VERSION = 1


class QAnchor:
    def __init__(self, network: QAnchorModel, cache: TextEmbeddingCache, registry_version: str | None = None):
        self.network = network
        self.cache = cache
        #: The `qanchor-backbone` version this model was loaded as; scenarios must match it.
        self.registry_version = registry_version

    @property
    def spec(self) -> ModalitySpec:
        return self.network.spec

    @property
    def settings(self) -> ModelSettings:
        return self.network.settings

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @classmethod
    def build(cls, spec: ModalitySpec, settings: ModelSettings, seed: int = 0) -> QAnchor:
        """A fresh model: backbone from its preset, encoders randomly initialised (seeded)."""
        backbone = load_backbone(settings.backbone, spec.names, seed=seed)
        torch.manual_seed(seed)
        return cls(QAnchorModel(spec, settings, backbone), TextEmbeddingCache())

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "qanchor.json").write_text(json.dumps({
            "format": FORMAT_VERSION,
            "settings": json.loads(self.settings.model_dump_json()),
            "spec": json.loads(self.spec.model_dump_json()),
        }, indent=2))
        self.network.backbone.tokenizer.save_pretrained(folder / "tokenizer")
        self.network.lm.config.save_pretrained(folder / "backbone")
        save_model(self.network, str(folder / "model.safetensors"))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu",
                        registry_version: str | None = None) -> QAnchor:
        """Load a saved model folder; `registry_version` says which `qanchor-backbone` version it is
        (`training.registry.load_model` sets it), so scenarios tuned on another version are refused."""
        folder = Path(folder)
        meta_path = folder / "qanchor.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder} is not a saved Q-Anchor model (qanchor.json missing)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{folder}: unsupported model format {meta.get('format')!r}")
        # Models saved before the history view (or its slots) existed keep the layout they were trained with.
        settings = ModelSettings.model_validate({"history_tokens": False, "history_slots": 0, **meta["settings"]})
        spec = parse_spec(meta["spec"], str(meta_path))
        network = QAnchorModel(spec, settings, backbone_from_saved(folder / "backbone", folder / "tokenizer", settings.backbone, spec.names))
        load_model(network, str(folder / "model.safetensors"))
        return cls(network.to(device).eval(), TextEmbeddingCache(device=str(device)), registry_version)

    def check_scenario(self, scenario: LoadedScenario) -> None:
        """Refuse a scenario tuned on another backbone version: its prompt means nothing here."""
        if self.registry_version is None:
            raise ScenarioMismatchError(f"scenario {scenario.name!r} is registered for backbone "
                                        f"v{scenario.backbone_version}; load the backbone through the registry "
                                        "(training.registry.load_model) or with from_pretrained(registry_version=)")
        if scenario.backbone_version != self.registry_version:
            raise ScenarioMismatchError(f"scenario {scenario.name!r} was tuned on backbone v{scenario.backbone_version}, "
                                        f"this model is v{self.registry_version}")

    def check_features(self, spec: ModalitySpec) -> None:
        """Refuse to read features whose modality spec differs from the one this model was trained on."""
        problems = spec_differences(self.spec, spec)
        if problems:
            raise FeatureSchemaError(f"the model was trained on modality spec {self.spec.fingerprint()} but the "
                                     f"feature store serves spec {spec.fingerprint()}: " + "; ".join(problems))

    @torch.no_grad()
    def embed(self, users: UserFeatures | list[UserFeatures], queries: list[str] | None = None,
              reference_time: int | None = None, batch_size: int = 32,
              scenario: LoadedScenario | None = None) -> np.ndarray:
        """Embeddings [n_users, n_queries, embed_dim] (L2-normalised), one per (user, query).

        With `scenario`, the query is the scenario's and its soft prompt sits between the user
        prefix and the query: [n_users, 1, embed_dim].
        """
        users = [users] if isinstance(users, UserFeatures) else list(users)
        soft_prompt = None
        if scenario is not None:
            if queries:
                raise ValueError("give either queries or a scenario, not both")
            self.check_scenario(scenario)
            queries = [scenario.query]
            if scenario.prompt is not None and scenario.prompt.prompt is not None:
                soft_prompt = scenario.prompt.prompt.to(self.device)
        if not queries:
            raise ValueError("give at least one query")
        ref = int(reference_time if reference_time is not None else time.time())
        self.network.eval()
        out = np.zeros((len(users), len(queries), self.settings.embed_dim), dtype=np.float32)
        per_chunk = max(1, batch_size // len(queries))
        for start in range(0, len(users), per_chunk):
            chunk = users[start:start + per_chunk]
            vectors = self.anchor_embeddings(chunk, [ref] * len(chunk), queries, soft_prompt=soft_prompt)
            out[start:start + len(chunk)] = vectors.reshape(len(chunk), len(queries), -1).cpu().numpy()
        return out

    def collate(self, users: list[UserFeatures], reference_times: list[int]) -> tuple[dict[str, ModalityBatch], torch.Tensor]:
        """The users' tensors on the model's device and the text-embedding table they index, taken
        after collating (which adds the users' new texts to the cache)."""
        batch = {k: v.to(self.device) for k, v in collate_users(users, reference_times, self.spec, self.cache).items()}
        return batch, self.cache.table(self.device)

    def query_rows(self, queries: list[str]) -> torch.Tensor | None:
        """Each query's row in the text table (encoded once per unique query), for a model that
        reads the queries' sentence embeddings (`query_meaning`); None for one that does not."""
        if self.network.query_meaning is None:
            return None
        return torch.tensor(self.cache.ids(queries), device=self.device)

    def anchor_embeddings(self, users: list[UserFeatures], reference_times: list[int], queries: list[str],
                          soft_prompt: torch.Tensor | None = None, paired: bool = False) -> torch.Tensor:
        """Anchor-tower embeddings, differentiable (callers choose no_grad).

        `paired=False`: every user with every query, each prefix encoded once, rows user-major
        [n_users * n_queries, D]. `paired=True`: `queries[i]` belongs to `users[i]`, [n_users, D].
        """
        net = self.network
        batch, _ = self.collate(users, reference_times)
        rows = self.query_rows(queries)
        table = self.cache.table(self.device)
        prefixes = net.prefix_embeddings(batch, table)
        suffixes = net.suffix_ids(queries)
        if not paired:
            prefixes, suffixes = prefixes.repeat(len(queries)), suffixes * len(users)
            rows = None if rows is None else rows.repeat(len(users))
        meanings = net.query_meanings(rows, table)
        vectors, _ = net.anchor_forward(net.pack(prefixes, suffixes, soft_prompt=soft_prompt, meanings=meanings))
        return vectors

    def score(self, users: UserFeatures | list[UserFeatures], scenario: LoadedScenario,
              reference_time: int | None = None) -> np.ndarray:
        """Class probabilities [n_users, n_classes] from a tuned scenario's prototypes."""
        if scenario.prompt is None:
            raise ValueError(f"scenario {scenario.name!r} is query-only: it has no prototypes to score with")
        vectors = torch.from_numpy(self.embed(users, reference_time=reference_time, scenario=scenario)[:, 0])
        with torch.no_grad():
            return scenario.prompt.probabilities(vectors, scenario.temperature).numpy()

