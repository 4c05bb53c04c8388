"""Synthetic UserU data: latent traits -> 90 days of multi-source events -> future window,
with D_future, D_uqa and 10 labelled downstream tasks. See docs/data.md for the story."""
