"""reports/gate.html: the gate's verdict as a page a reviewer looks at. One self-contained file
(plotly.js and the thumbnails are embedded), so it opens offline and can go with a review.

Beside the checks it shows what a table cannot: per-category top-1 of every model, the
confusion matrices of teacher and student, every variant's size against its latency, and the
test images on which teacher and student disagree, with both answers.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from html import escape

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from vgg2resnet.config import ReportParams
from vgg2resnet.data.images import UndecodableImage, decode
from vgg2resnet.gate.report import category_tables

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
.promote { color: #176317; } .reject { color: #a31515; } .fail { color: #a31515; font-weight: bold; }
.gallery { display: flex; flex-wrap: wrap; gap: 0.8em; }
figure { margin: 0; width: 11em; font-size: 0.8em; }
figure img { display: block; max-width: 100%; image-rendering: pixelated; border: 1px solid #ccc; }
"""


def disagreements(predictions: pd.DataFrame, student: str) -> dict[str, pd.DataFrame]:
    """Test images on which teacher and student answer differently, grouped by who was right."""
    differ = predictions[predictions["teacher"] != predictions[student]]
    teacher_right = differ["teacher"] == differ["label"]
    student_right = differ[student] == differ["label"]
    return {
        "student wrong, teacher right": differ[teacher_right],
        "teacher wrong, student right": differ[student_right],
        "both wrong": differ[~teacher_right & ~student_right],
    }


def gallery_counts(predictions: pd.DataFrame, student: str) -> dict[str, int]:
    groups = disagreements(predictions, student)
    return {
        "student": student,
        "test_images": len(predictions),
        "disagreements": sum(len(g) for g in groups.values()),
        **{name: len(group) for name, group in groups.items()},
    }


def render_html(
    result: dict,
    report: dict,
    predictions: pd.DataFrame | None,
    categories: list[str],
    image_bytes: Callable[[str], bytes] | None,
    settings: ReportParams,
) -> str:
    """The page; without evaluation results (the gate failed closed) only verdict and checks.
    `image_bytes` gives a test image's bytes by its path, for the gallery's thumbnails."""
    student = result.get("variant") or "pytorch_fp32"
    body = [_verdict(result)]
    if report and predictions is not None:
        body += [
            "<h2>Per-category top-1</h2>",
            _figure(_per_category(report, categories)),
            f"<h2>Confusion matrices: teacher and {escape(student)}</h2>",
            _figure(_confusion(predictions, student, categories)),
            "<h2>Size, latency and top-1 of every model</h2>",
            _figure(_tradeoff(report)),
            _gallery(predictions, student, categories, image_bytes, settings),
        ]
    body.append(_lineage(result["lineage"]))
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Promotion gate: "
        f"{escape(result['decision'])}</title><style>{STYLE}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>{''.join(body)}</body></html>\n"
    )


def _figure(figure: go.Figure) -> str:
    return figure.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    lines = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{lines}</table>"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _verdict(result: dict) -> str:
    decision = result["decision"]
    parts = [
        f"<h1 class='{decision}'>Promotion gate: {escape(decision.upper())}</h1>",
        f"<p>{escape(result['summary'])}</p>",
    ]
    if result.get("candidates"):
        rows = [
            [
                escape(variant),
                "yes" if c["promotable"] else "no",
                f"{c['top1']:.2f}%",
                f"{c['size_mb']:.1f}",
                f"{c['size_ratio']:.3f}x",
                f"{c['flops'] / 1e6:.1f}",
                f"{c['flops_ratio']:.3f}x",
                f"{c['cpu_latency_ms_p50']:.2f}",
                f"{c['fp32_agreement']:.1f}%",
                "<b>promoted</b>"
                if variant == result.get("variant")
                else ("pass" if c["passed"] else f"<span class='fail'>FAIL: {escape(', '.join(c['failed']))}</span>"),
            ]
            for variant, c in result["candidates"].items()
        ]
        parts += [
            "<h2>Candidates</h2>",
            _table(
                [
                    "variant",
                    "may be promoted",
                    "top-1",
                    "size MB",
                    "size vs teacher",
                    "MFLOPs",
                    "FLOPs vs teacher",
                    "CPU ms (batch 1)",
                    "agreement with its fp32 form",
                    "verdict",
                ],
                rows,
            ),
        ]
    rows = [
        [
            escape(c["name"]),
            _number(c["value"]),
            _number(c["threshold"]),
            "pass" if c["passed"] else "<span class='fail'>FAIL</span>",
            escape(c["reason"]),
        ]
        for c in result["checks"]
    ]
    parts += ["<h2>Checks</h2>", _table(["check", "value", "threshold", "result", "reason"], rows)]
    for table in category_tables(result):
        parts += [f"<h3>{escape(table['title'])}</h3><p>{escape(table['text'])}</p>", _escaped_table(*table["drops"])]
        if table["few_text"]:
            parts += [f"<p>{escape(table['few_text'])}</p>", _escaped_table(*table["few"])]
    return "".join(parts)


def _escaped_table(header: list[str], rows: list[list[str]]) -> str:
    return _table(header, [[escape(cell) for cell in row] for row in rows])


def _models(report: dict) -> dict[str, dict]:
    return {"teacher": report["teacher"], **report["candidates"]}


def _per_category(report: dict, categories: list[str]) -> go.Figure:
    figure = go.Figure(
        [
            go.Bar(name=name, x=categories, y=[m["per_category"][c] for c in categories])
            for name, m in _models(report).items()
        ]
    )
    return figure.update_layout(barmode="group", yaxis_title="top-1 %", yaxis_range=[0, 100], height=420)


def _confusion(predictions: pd.DataFrame, student: str, categories: list[str]) -> go.Figure:
    figure = make_subplots(rows=1, cols=2, subplot_titles=("teacher", student), horizontal_spacing=0.12)
    for column, model in enumerate(("teacher", student), start=1):
        counts = np.zeros((len(categories), len(categories)), dtype=int)
        np.add.at(counts, (predictions["label"].to_numpy(), predictions[model].to_numpy()), 1)
        figure.add_trace(
            go.Heatmap(
                z=counts,
                x=categories,
                y=categories,
                coloraxis="coloraxis",
                text=counts,
                texttemplate="%{text}",
                hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
            ),
            row=1,
            col=column,
        )
        figure.update_xaxes(title_text="predicted", row=1, col=column)
        figure.update_yaxes(title_text="true", autorange="reversed", row=1, col=column)
    return figure.update_layout(coloraxis={"colorscale": "Blues"}, height=480)


def _tradeoff(report: dict) -> go.Figure:
    models = _models(report)
    top1 = [m["top1"] for m in models.values()]
    figure = go.Figure(
        go.Scatter(
            x=[m["size_mb"] for m in models.values()],
            y=[m["cpu"]["latency_ms_p50"] for m in models.values()],
            mode="markers+text",
            text=list(models),
            textposition="top center",
            customdata=[[m["top1"], m["flops"] / 1e6] for m in models.values()],
            marker={
                "size": 16,
                "color": top1,
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": "top-1 %"},
            },
            hovertemplate="%{text}: %{x:.1f} MB, %{y:.2f} ms, %{customdata[1]:.1f} MFLOPs, "
            "top-1 %{customdata[0]:.2f}%<extra></extra>",
        )
    )
    return figure.update_layout(
        xaxis_title="size MB (log)",
        yaxis_title="CPU latency ms, batch 1 (log)",
        xaxis_type="log",
        yaxis_type="log",
        height=460,
    )


def _thumbnail(payload: bytes, size: int) -> str:
    try:
        image = decode(payload).convert("RGB")
    except (OSError, UndecodableImage):
        return ""  # the figure still names the file
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return f"<img alt='' src='data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


def _gallery(
    predictions: pd.DataFrame,
    student: str,
    categories: list[str],
    image_bytes: Callable[[str], bytes],
    settings: ReportParams,
) -> str:
    groups = disagreements(predictions, student)
    total = sum(len(g) for g in groups.values())
    budget = settings.max_gallery_images
    parts = [f"<h2>Test images on which teacher and {escape(student)} disagree: {total} of {len(predictions)}</h2>"]
    if total > budget:
        parts.append(f"<p>Showing the first {budget} (report.max_gallery_images).</p>")
    for name, group in groups.items():
        shown = group.head(budget)
        budget -= len(shown)
        parts.append(f"<h3>{escape(name)}: {len(group)}</h3><div class='gallery'>")
        for row in shown.itertuples(index=False):
            row = row._asdict()
            thumbnail = _thumbnail(image_bytes(row["path"]), settings.thumbnail_px)
            parts.append(
                f"<figure data-path='{escape(row['path'])}'>{thumbnail}"
                f"<figcaption>{escape(row['path'])}<br>true: <b>{escape(row['category'])}</b><br>"
                f"teacher: {escape(categories[row['teacher']])} ({100 * row['teacher_confidence']:.0f}%)<br>"
                f"student: {escape(categories[row[student]])} ({100 * row[f'{student}_confidence']:.0f}%)"
                "</figcaption></figure>"
            )
        parts.append("</div>")
    return "".join(parts)


def _lineage(lineage: dict) -> str:
    items = "".join(f"<li>{escape(key)}: <code>{escape(str(value))}</code></li>" for key, value in lineage.items())
    return f"<h2>Lineage</h2><ul>{items}</ul>"
