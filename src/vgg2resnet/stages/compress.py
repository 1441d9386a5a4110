"""Stage `compress`: the distilled student as an fp32 ONNX graph and as an int8 one, each
checked (vgg2resnet.compress.export says how).

    vgg2resnet compress          # or: dvc repro compress
"""

from __future__ import annotations

from vgg2resnet.artifacts import Artifacts
from vgg2resnet.compress.export import export_forms
from vgg2resnet.config import Params
from vgg2resnet.data.categories import data_categories
from vgg2resnet.models.builders import count_flops, count_parameters
from vgg2resnet.models.checkpoint import load_model, read_meta

FORMS = ("onnx_fp32", "onnx_int8")


def run(params: Params) -> dict:
    categories = data_categories(params)
    layout = Artifacts(params)
    source = layout.student("pytorch_fp32")
    model, meta = load_model(source, categories)
    parities = export_forms(
        params,
        model,
        read_meta(source),
        {v: layout.student(v) for v in FORMS},
        categories,
        flops=count_flops(model, meta["preprocessing"]["image_size"]),
        parameters=count_parameters(model),
    )
    return {**parities, "size_mb": {v: layout.student(v).stat().st_size / 1e6 for v in ("pytorch_fp32", *FORMS)}}
