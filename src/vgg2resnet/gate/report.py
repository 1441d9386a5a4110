"""The gate's words: each candidate's row and the one-paragraph summary of the decision, the
report as Markdown for a reviewer (and for Prefect's markdown artifact), and the per-category
tables that the Markdown and the page (`gate.html`) both show."""

from __future__ import annotations

from vgg2resnet.config import GateParams
from vgg2resnet.gate.policy import Check

MAX_ROWS = 20  # gate.json lists every category; the reports show the first ones


def category_tables(result: dict) -> list[dict]:
    """For each category_drop check in the result: a title, a sentence, and tables (header, rows)
    of the failing or largest drops and of the categories with too few test images to judge."""
    tables = []
    for check in result["checks"]:
        details = check.get("details")
        if not check["name"].endswith("category_drop") or not details:
            continue
        shown = details["failed"] or details["largest_drops"]
        drops = [
            [
                r["category"],
                str(r["test_images"]),
                f"{r['drop_pt']:.1f}",
                f"{r['interval_pt'][0]:.1f} to {r['interval_pt'][1]:.1f}",
                f"{r['p_value']:.2g}",
                f"{r['p_holm']:.2g}",
            ]
            for r in shown
        ]
        short = details["too_few_images"]
        few = [
            [
                r["category"],
                str(r["test_images"]),
                f"{r['teacher_top1']:.1f}%",
                "cannot drop that far" if r["needed"] is None else str(r["needed"]),
            ]
            for r in short[:MAX_ROWS]
        ]
        tables.append(
            {
                "title": f"Per-category drops ({check['name']})",
                "text": (
                    f"{details['method']}, over {details['categories']} categories at {details['confidence']:.0%} "
                    f"confidence. {'Failing' if details['failed'] else 'No category fails; the largest observed'} "
                    "drops (student below teacher, in points; intervals hold for all categories at once):"
                ),
                "drops": (["category", "test images", "drop", "interval", "p", "Holm p"], drops),
                "few_text": (
                    f"{len(short)} categories have too few test images to judge: even losing every image "
                    "the teacher gets right there could not be told from chance"
                    + (f" (the first {MAX_ROWS} shown; gate.json lists all)" if len(short) > MAX_ROWS else "")
                    + "."
                )
                if short
                else "",
                "few": (["category", "test images", "teacher top-1", "test images needed"], few),
            }
        )
    return tables


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
            lines.append(
                f"| {variant} | {'yes' if c['promotable'] else 'no'} | {c['top1']:.2f}% "
                f"| {c['size_mb']:.1f} | {c['size_ratio']:.3f}x | {c['flops'] / 1e6:.1f} "
                f"| {c['flops_ratio']:.3f}x | {c['cpu_latency_ms_p50']:.2f} "
                f"| {c['fp32_agreement']:.1f}% | {verdict} |"
            )
        lines += ["", f"## Checks of {report.get('variant') or 'every promotable variant'}", ""]
    lines += [
        "| check | value | threshold | result | reason |",
        "|---|---|---|---|---|",
    ]
    for check in report["checks"]:
        value = "n/a" if check["value"] is None else f"{check['value']:.4g}"
        threshold = "n/a" if check["threshold"] is None else f"{check['threshold']:.4g}"
        lines.append(
            f"| {check['name']} | {value} | {threshold} | {'pass' if check['passed'] else 'FAIL'} | {check['reason']} |"
        )
    for table in category_tables(report):
        lines += ["", f"## {table['title']}", "", table["text"], "", *_markdown_table(*table["drops"])]
        if table["few_text"]:
            lines += ["", table["few_text"], "", *_markdown_table(*table["few"])]
    lines += ["", "## Lineage", ""]
    lines += [f"- {key}: `{value}`" for key, value in report["lineage"].items()]
    return "\n".join(lines) + "\n"


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def candidate_row(variant: str, evaluated: dict, checks: list[Check], gate: GateParams) -> dict:
    """One row of the side-by-side table in the report."""
    return {
        "passed": all(c.passed for c in checks),
        "promotable": variant in gate.variants,
        "failed": [c.name for c in checks if not c.passed],
        "top1": evaluated["top1"],
        "size_mb": evaluated["size_mb"],
        "size_ratio": evaluated["size_ratio"],
        "flops": evaluated["flops"],
        "flops_ratio": evaluated["flops_ratio"],
        "cpu_latency_ms_p50": evaluated["cpu"]["latency_ms_p50"],
        "cpu_throughput_img_s": evaluated["cpu"]["throughput_img_s"],
        "fp32_agreement": evaluated["fp32_agreement"],
        "checks": [c.as_dict() for c in checks],
    }


def summary(report: dict, chosen: str | None, candidates: dict, failed: list[Check]) -> str:
    if not report:
        return "The gate could not read consistent evaluation results and failed closed."
    teacher = report["teacher"]
    shown = report["candidates"][chosen or "pytorch_fp32"]
    head = (
        f"Student ({chosen or 'pytorch_fp32'}) top-1 {shown['top1']:.2f}% vs teacher {teacher['top1']:.2f}% "
        f"on {report['images']} test images; size {shown['size_mb']:.1f} MB vs "
        f"{teacher['size_mb']:.1f} MB ({shown['size_ratio']:.3f}x)."
    )
    if shown["top1"] > teacher["top1"]:
        head += " The student beats the teacher."
    if chosen:
        others = [v for v, c in candidates.items() if c["passed"] and v != chosen]
        return (
            head
            + f" All checks passed; promoting {chosen}"
            + (f" (also passed: {', '.join(others)})." if others else ".")
        )
    return head + f" No promotable variant passed. Failed: {', '.join(c.name for c in failed)}."
