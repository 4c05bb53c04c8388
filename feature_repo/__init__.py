"""The Feast boundary of Q-Anchor: repository definitions, data import and a thin store adapter.

Nothing outside this package talks to Feast; the rest of the project sees `UserFeatureStore`
and plain `qanchor.features.UserFeatures` values.
"""
