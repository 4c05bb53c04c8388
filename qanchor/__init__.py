"""Q-Anchor: scenario-adaptive user embeddings from a decoder LLM.

The core library holds configs, modality specs, data generation and (later) the model; it
performs no I/O to Feast, MLflow or BentoML, which live in the packages that own them.
"""

__version__ = "0.1.0"
