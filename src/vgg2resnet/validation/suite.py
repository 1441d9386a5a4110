"""The Great Expectations suites over the manifest, run through one checkpoint with Data Docs.

Each expectation carries `meta.check` (a stable name users refer to in
`validation.severity`) and `meta.severity` ('fail' stops the pipeline, 'warn' only reports).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vgg2resnet.config import UserError, ValidationParams
from vgg2resnet.data.policy import InputPolicy

MAX_LISTED = 20  # offending files named in a message; the rest are counted
DEFAULT_SEVERITY = {
    "not_null": "fail",
    "categories": "fail",
    "min_train_images": "fail",
    "val_and_test_coverage": "fail",
    "imbalance": "fail",
    "decodes": "fail",
    "dimensions": "fail",
    "modes": "fail",
    "aspect_ratio": "fail",
    "leakage": "fail",
    "within_split_duplicates": "warn",
    "near_duplicates": "warn",
    "skipped_undecodable": "warn",
}


@dataclass
class CheckResult:
    check: str
    severity: str
    success: bool
    expectation: str
    observed: Any
    offending: list[str]
    offending_count: int


def severities(params: ValidationParams) -> dict[str, str]:
    unknown = set(params.severity) - set(DEFAULT_SEVERITY)
    if unknown:
        raise UserError(
            f"params.yaml validation.severity: unknown check(s) {sorted(unknown)}; "
            f"choose from {sorted(DEFAULT_SEVERITY)}"
        )
    return {**DEFAULT_SEVERITY, **params.severity}


def _meta(params: ValidationParams):
    """The `meta` of an expectation: its check name and that check's severity."""
    level = severities(params)
    return lambda check: {"check": check, "severity": level[check]}


def manifest_expectations(params: ValidationParams, expected: list[str]) -> list:
    import great_expectations.expectations as gxe

    meta, policy = _meta(params), InputPolicy.of(params)  # the rules the service applies to uploads
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="path", meta=meta("not_null")),
        gxe.ExpectColumnValuesToNotBeNull(column="category", meta=meta("not_null")),
        gxe.ExpectColumnDistinctValuesToEqualSet(column="category", value_set=expected, meta=meta("categories")),
        gxe.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True], meta=meta("decodes")),
        gxe.ExpectColumnValuesToBeBetween(
            column="width", min_value=policy.min_side, max_value=policy.max_side, meta=meta("dimensions")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="height", min_value=policy.min_side, max_value=policy.max_side, meta=meta("dimensions")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="aspect_ratio", max_value=policy.max_aspect_ratio, meta=meta("aspect_ratio")
        ),
        gxe.ExpectColumnValuesToBeInSet(column="mode", value_set=sorted(policy.allowed_modes), meta=meta("modes")),
        gxe.ExpectColumnValuesToBeInSet(column="duplicate_across_splits", value_set=[False], meta=meta("leakage")),
        gxe.ExpectColumnValuesToBeInSet(
            column="duplicate_within_split", value_set=[False], meta=meta("within_split_duplicates")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="near_duplicate_across_splits", value_set=[False], meta=meta("near_duplicates")
        ),
    ]


def skipped_expectations(params: ValidationParams) -> list:
    """Files that prepare left out (data.on_undecodable: skip), listed by their path in the user's folder."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True], meta=_meta(params)("skipped_undecodable"))
    ]


def count_expectations(params: ValidationParams) -> list:
    import great_expectations.expectations as gxe

    meta = _meta(params)
    return [
        gxe.ExpectColumnValuesToBeBetween(
            column="train", min_value=params.min_images_per_category, meta=meta("min_train_images")
        ),
        gxe.ExpectColumnValuesToBeBetween(column="val", min_value=1, meta=meta("val_and_test_coverage")),
        gxe.ExpectColumnValuesToBeBetween(column="test", min_value=1, meta=meta("val_and_test_coverage")),
        gxe.ExpectColumnValuesToBeBetween(
            column="ratio_to_smallest", max_value=params.max_imbalance_ratio, meta=meta("imbalance")
        ),
    ]


def run_checkpoint(tables: dict[str, tuple[pd.DataFrame, str, list]], docs_dir: Path) -> list[dict]:
    """Validate each named table (frame, index column, expectations); return GX's result dicts."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX 1.24 logs a traceback while rendering a failed distinct-values expectation (its result
    # has no unexpected_percent); the page still renders, so keep that noise out of the output.
    logging.getLogger(
        "great_expectations.render.renderer.content_block.validation_results_table_content_block"
    ).setLevel(logging.CRITICAL)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.add_data_docs_site(
        site_name="local_docs",
        site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
        },
    )
    source = context.data_sources.add_pandas("pandas")
    results = []
    for name, (frame, index_column, expectations) in tables.items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=name,
                validation_definitions=[definition],
                # Only our site: the ephemeral context's default one would be built in a temp dir
                # that nothing removes.
                actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["local_docs"])],
                result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [index_column]},
            )
        )
        outcome = checkpoint.run(batch_parameters={"dataframe": frame})
        results.extend(r.to_json_dict() for r in outcome.run_results.values())
    return results


def summarise(results: list[dict]) -> list[CheckResult]:
    """Flatten GX results into one CheckResult per expectation, naming what failed."""
    checks = []
    for run in results:
        for item in run["results"]:
            config = item["expectation_config"]
            result = item.get("result", {})
            # Rows of unexpected_index_list hold the index column (path or category) and the value.
            offending = [
                str(row.get("path", row.get("category"))) for row in result.get("unexpected_index_list") or []
            ] or [str(v) for v in result.get("partial_unexpected_list") or []]
            observed = result.get("observed_value", result.get("unexpected_count"))
            checks.append(
                CheckResult(
                    check=config["meta"]["check"],
                    severity=config["meta"]["severity"],
                    success=bool(item["success"]),
                    expectation=config["type"],
                    observed=observed,
                    offending=sorted(set(offending)),
                    offending_count=int(result.get("unexpected_count") or 0),
                )
            )
    return checks


def describe(check: CheckResult, expected: list[str], found: list[str]) -> str:
    """One line a user reads: what the check wanted and which files (or categories) broke it."""
    if check.check == "categories":
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        return f"categories differ from the expected ones: missing {missing}, extra {extra}"
    names = check.offending[:MAX_LISTED]
    more = f" and {check.offending_count - len(names)} more" if check.offending_count > len(names) else ""
    if check.check == "skipped_undecodable":
        return (
            f"{check.offending_count} file(s) left out because they do not decode "
            f"(data.on_undecodable: skip): {', '.join(names)}{more}"
        )
    return f"{check.expectation} ({check.offending_count} offending): {', '.join(names)}{more}"
