"""The gate report as Markdown, for a reviewer (and for Prefect's markdown artifact)."""

from __future__ import annotations


def render_markdown(report: dict) -> str:
    decision = report["decision"]
    lines = [
        f"# Promotion gate: **{decision.upper()}**",
        "",
        report["summary"],
        "",
    ]
    if report.get("candidates"):
        lines += [
            "## Candidates",
            "",
            "| variant | may be promoted | top-1 | size MB | size vs teacher | MFLOPs | FLOPs vs teacher "
            "| CPU ms (batch 1) | agreement with its fp32 form | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for variant, c in report["candidates"].items():
            verdict = "pass" if c["passed"] else "FAIL: " + ", ".join(c["failed"])
            if variant == report.get("variant"):
                verdict = "**promoted**"
            lines.append(f"| {variant} | {'yes' if c['promotable'] else 'no'} | {c['top1']:.2f}% "
                         f"| {c['size_mb']:.1f} | {c['size_ratio']:.3f}x | {c['flops'] / 1e6:.1f} "
                         f"| {c['flops_ratio']:.3f}x | {c['cpu_latency_ms_p50']:.2f} "
                         f"| {c['fp32_agreement']:.1f}% | {verdict} |")
        lines += ["", f"## Checks of {report.get('variant') or 'every promotable variant'}", ""]
    lines += [
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
    return "\n".join(lines) + "\n"
