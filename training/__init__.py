"""Pretraining, scenario prompt tuning, evaluation and MLflow logging/registry (see DESIGN.md)."""
