"""`qanchor evaluate`: frozen-embedding probes on the downstream tasks against strong baselines."""
