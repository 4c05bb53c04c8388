"""Feast definitions of the Q-Anchor feature repository (read by `feast apply`).

The objects are derived from the modality spec that the feature data was imported with
(`qanchor.json` -> data dir -> manifest.json), so a team with its own modalities gets its own
views without editing this file:

- `user`: the entity every view is keyed by (join key `user_id`).
- `<modality>_events`: one view per event modality; the user's last-window sequence as list
  features (`texts`, `event_times`, one list per numeric field) and `n_events`.
- `profile`: the tabular modality, one scalar feature per profile field.
- `userU`: the feature service naming every feature the encoder reads.
- `qanchor_backbone_v<N>`: per registered backbone version, exactly the views it reads, with a
  `LoggingConfig` so the service's served rows land in `feature_logs/` (training/serving skew).
- `user_embedding` (+ push source `user_embedding_push`): scenario vectors written back by
  `qanchor score-batch`, one Array(Float32) column per scenario.
"""

from pathlib import Path

from feature_repo.objects import RepoSettings, build_definitions

# Module-level names are what Feast's repo parser registers, hence the globals() update.
globals().update(build_definitions(RepoSettings.load(Path(__file__).resolve().parent)))
