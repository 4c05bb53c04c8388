"""Data quality and drift: Great Expectations suites, drift statistics, reports, metrics."""
