"""The Great Expectations half of a drift check: one suite per table, run as one Checkpoint.

Suites come from the reference (`monitoring.reference`): per numeric feature GE's own
distribution expectations (KL divergence from the reference histogram, median and 90th
percentile bounds, mean and standard-deviation bounds) and a null-share bound; per categorical profile field the KL
divergence from its reference shares. The Checkpoint's `UpdateDataDocsAction` renders GE's Data
Docs into the check's folder, so the same run gives the pass/fail and the pages a person reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no usage telemetry: no network at run time

import great_expectations as gx  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402
from great_expectations.expectations import ExpectColumnQuantileValuesToBeBetween  # noqa: E402

from monitoring.drift_config import DriftThresholds  # noqa: E402
from monitoring.reference import QUANTILES, Reference  # noqa: E402

E = gx.expectations
#: Reference mass GE's KL divergence reserves for values outside the reference range; without it
#: one value past the reference maximum makes the divergence infinite.
TAIL_WEIGHT_HOLDOUT = 0.01
DATA_DOCS_SITE = "drift"


class ExpectColumnQuantilesWithinReference(ExpectColumnQuantileValuesToBeBetween):
    """GE's quantile expectation with a plain-bool result.

    GE 1.24's `ExpectColumnQuantileValuesToBeBetween` returns numpy booleans in `success`, which
    its own validation-result store then fails to serialize ("Object of type bool is not JSON
    serializable") as soon as the suite runs in a Checkpoint; the checks are otherwise GE's.
    """

    def _validate(self, metrics, runtime_configuration=None, execution_engine=None):
        result = super()._validate(metrics, runtime_configuration, execution_engine)
        details = result["result"]["details"]
        details["success_details"] = [bool(s) for s in details["success_details"]]
        return {**result, "success": bool(result["success"])}


@dataclass(frozen=True)
class SuiteFailure:
    """One failed GE expectation, tied to the drift feature it guards."""

    feature: str
    expectation: str
    observed: str


def _slack(value: float, std: float, change: float, integer: bool) -> float:
    slack = max(change * abs(value), change * std)
    return max(slack, 1.0) if integer else slack


def _numeric_expectations(reference: Reference, feature: str, thresholds: DriftThresholds) -> list:
    ref = reference.numeric[feature]
    sample = reference.samples.get(feature, np.array([]))
    integer = bool(len(sample)) and bool(np.all(np.mod(sample, 1) == 0))
    meta = {"feature": feature}
    expectations = [E.ExpectColumnValuesToNotBeNull(
        column=ref.column, mostly=max(0.0, 1 - ref.null_share - thresholds.null_share_increase), meta=meta)]
    if ref.count == 0:
        return expectations
    bins = np.unique(np.quantile(sample, np.linspace(0, 1, 11))) if len(sample) else np.array([])
    if len(bins) >= 2:
        weights = np.histogram(sample, bins)[0] / len(sample)
        expectations.append(E.ExpectColumnKLDivergenceToBeLessThan(
            column=ref.column, partition_object={"bins": bins.tolist(), "weights": weights.tolist()},
            threshold=thresholds.kl, tail_weight_holdout=TAIL_WEIGHT_HOLDOUT, meta=meta))
    ranges = []
    for q in QUANTILES:
        value = ref.quantiles[str(q)]
        slack = _slack(value, ref.std, thresholds.quantile_change, integer)
        ranges.append([value - slack, value + slack])
    expectations.append(ExpectColumnQuantilesWithinReference(
        column=ref.column, quantile_ranges={"quantiles": list(QUANTILES), "value_ranges": ranges}, meta=meta))
    slack = _slack(ref.mean, ref.std, thresholds.mean_change, False)
    expectations.append(E.ExpectColumnMeanToBeBetween(column=ref.column, min_value=ref.mean - slack,
                                                      max_value=ref.mean + slack, meta=meta))
    if ref.std > 0:
        expectations.append(E.ExpectColumnStdevToBeBetween(column=ref.column, min_value=ref.std * (1 - thresholds.stdev_change),
                                                           max_value=ref.std * (1 + thresholds.stdev_change), meta=meta))
    return expectations


def _categorical_expectations(reference: Reference, feature: str, thresholds: DriftThresholds) -> list:
    ref = reference.categorical[feature]
    column = feature.split(".", 1)[1]
    return [E.ExpectColumnKLDivergenceToBeLessThan(
        column=column, partition_object={"values": ref.categories, "weights": ref.shares},
        threshold=thresholds.kl, meta={"feature": feature})]


def build_suites(reference: Reference, thresholds: DriftThresholds) -> dict[str, gx.ExpectationSuite]:
    """table -> its suite (numeric features everywhere; categorical fields of the profile table)."""
    by_table: dict[str, list] = {}
    for feature, ref in reference.numeric.items():
        by_table.setdefault(ref.table, []).extend(_numeric_expectations(reference, feature, thresholds))
    for feature in reference.categorical:
        if feature.startswith("profile."):
            by_table.setdefault("profile", []).extend(_categorical_expectations(reference, feature, thresholds))
    return {table: gx.ExpectationSuite(name=f"drift_{table}", expectations=expectations)
            for table, expectations in by_table.items()}


def suite_documents(suites: dict[str, gx.ExpectationSuite]) -> dict[str, dict]:
    return {table: suite.to_json_dict() for table, suite in suites.items()}


def _observed(result) -> str:
    value = result.result.get("observed_value")
    if isinstance(value, dict) and "values" in value:
        value = dict(zip(value.get("quantiles", []), np.round(value["values"], 4).tolist()))
    elif isinstance(value, float):
        value = round(value, 4)
    if value is None and "unexpected_percent" in result.result:
        value = f"{result.result['unexpected_percent']:.1f}% null"
    return str(value)


def run_checkpoint(suites: dict[str, gx.ExpectationSuite], tables: dict[str, pd.DataFrame],
                   docs_dir: Path | None) -> tuple[list[SuiteFailure], int]:
    """Validate every table against its suite in one Checkpoint; Data Docs into `docs_dir`.

    Returns the failures and the number of expectations evaluated."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    actions = []
    if docs_dir is not None:
        context.add_data_docs_site(DATA_DOCS_SITE, {
            "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)}})
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DATA_DOCS_SITE]))
    source = context.data_sources.add_pandas("snapshot")
    definitions = []
    for table, suite in suites.items():
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
        definitions.append(context.validation_definitions.add(gx.ValidationDefinition(
            name=f"drift_{table}", data=batch, suite=context.suites.add(suite))))
    failures, evaluated = [], 0
    for definition in definitions:  # one Checkpoint per table: each batch gets its own dataframe
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"daily_{definition.name}", validation_definitions=[definition], actions=actions,
            result_format="SUMMARY"))
        table = definition.name.removeprefix("drift_")
        result = checkpoint.run(batch_parameters={"dataframe": tables[table]})
        for run in result.run_results.values():
            for r in run.results:
                evaluated += 1
                if not r.success:
                    failures.append(SuiteFailure(r.expectation_config.meta.get("feature", table),
                                                 r.expectation_config.type, _observed(r)))
    return failures, evaluated
