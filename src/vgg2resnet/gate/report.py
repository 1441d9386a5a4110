"""The gate report as Markdown, for a reviewer (and for Prefect's markdown artifact)."""

from __future__ import annotations


def render_markdown(report: dict) -> str:
    decision = report["decision"]
    lines = [
        f"# Promotion gate: **{decision.upper()}**",
        "",
        report["summary"],
        "",
        "| check | value | threshold | result | reason |",
        "|---|---|---|---|---|",
    ]
    for check in report["checks"]:
        value = "n/a" if check["value"] is None else f"{check['value']:.4g}"
        threshold = "n/a" if check["threshold"] is None else f"{check['threshold']:.4g}"
        lines.append(f"| {check['name']} | {value} | {threshold} | {'pass' if check['passed'] else 'FAIL'} "
                     f"| {check['reason']} |")
    lines += ["", "## Lineage", ""]
    lines += [f"- {key}: `{value}`" for key, value in report["lineage"].items()]
    if report.get("promoted_tag"):
        lines += ["", f"Promoted as `{report['promoted_tag']}`."]
    return "\n".join(lines) + "\n"
