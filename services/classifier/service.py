"""The vgg2resnet classifier as a BentoML service.

    bentoml serve services.classifier.service:Classifier --host 127.0.0.1                       # this machine
    bentoml serve services.classifier.service:Classifier --host 127.0.0.1 --arg model_tag=TAG   # pin a version

The endpoints are declared here; the rest lives in vgg2resnet.serving: decoding of untrusted
uploads (uploads), one error shape for every 4xx/5xx (errors), the optional bearer token (auth), and
the model with its preprocessing, read from the model's metadata, and its drift features
(classifier).
"""

from __future__ import annotations

import datetime
import logging
import os
import random
import uuid
from pathlib import Path
from typing import Annotated

import bentoml
from bentoml.validators import ContentType
from PIL import Image
from pydantic import BaseModel, Field

from vgg2resnet.config import UserError, load_params
from vgg2resnet.data.policy import InputPolicy
from vgg2resnet.serving.auth import BearerToken
from vgg2resnet.serving.classifier import Predictor
from vgg2resnet.serving.errors import ErrorShape
from vgg2resnet.serving.limits import BodyLimit, RequestLimits, model_input_size
from vgg2resnet.serving.startup import refuse_to_start, startup_checks
from vgg2resnet.serving.uploads import Uploads, image_file

_ALL = load_params(os.environ.get("VGG2RESNET_PARAMS", "params.yaml"))
PARAMS, RETAIN = _ALL.serving, _ALL.monitoring
MONITOR = "vgg2resnet_classifier"
log = logging.getLogger("vgg2resnet.service")


class Args(BaseModel):
    model_tag: str = f"{PARAMS.model_name}:latest"  # `name:latest` is the newest promoted version


class Ranked(BaseModel):
    category: str
    probability: float


class Prediction(BaseModel):
    category: str
    confidence: float
    top_k: list[Ranked]
    model_tag: str


# A declared content type spares BentoML deriving it from the JSON schema on every response.
Json = ContentType("application/json")

args = bentoml.use_arguments(Args)


# What a request may cost follows the input size of the model served (vgg2resnet.serving.limits).
LIMITS = RequestLimits.of(PARAMS, model_input_size(bentoml.models.get(args.model_tag).info.metadata))

# Declared as files (the OpenAPI schema and multipart parsing follow the type); each is checked
# against the input policy that validation applies to the training images, and decoded while
# the request is parsed, so the endpoint receives PIL images.
ImageFile = image_file(InputPolicy.of(_ALL.validation))
ImageFiles = Annotated[list[ImageFile], Field(min_length=1, max_length=PARAMS.max_batch_size)]


class Budgeted(Uploads):
    limits = LIMITS


class OneImage(Budgeted):
    image: ImageFile


class Images(Budgeted):
    images: ImageFiles


@bentoml.service(traffic={"timeout": PARAMS.timeout_s, "max_concurrency": PARAMS.max_concurrency}, workers=1)
class Classifier:
    model_ref = bentoml.models.BentoModel(args.model_tag)

    def __init__(self) -> None:
        self.tag = str(self.model_ref.tag)
        try:  # a token named but unset, an open bind without one, a damaged model: the server stops
            startup_checks(PARAMS, self.tag, Path(self.model_ref.path), self.model_ref.info.metadata)
        except UserError as error:
            refuse_to_start(error)
        self.predictor = Predictor(Path(self.model_ref.path))

    def _predict(self, images: list[Image.Image]) -> list[Prediction]:
        results = self.predictor.predict(images, PARAMS.top_k)
        self._log(results, images)
        return [
            Prediction(
                category=r["category"],
                confidence=r["confidence"],
                top_k=[Ranked(**t) for t in r["top_k"]],
                model_tag=self.tag,
            )
            for r in results
        ]

    def _log(self, results: list[dict], images: list) -> None:
        """One monitoring record per prediction; a logging failure never fails the request.
        With monitoring.retain_fraction > 0, that share of images is kept for the teacher check."""
        try:
            for result, image in zip(results, images):
                kept = ""
                if RETAIN.retain_fraction and random.random() < RETAIN.retain_fraction:
                    RETAIN.retained_dir.mkdir(parents=True, exist_ok=True)
                    kept = f"{uuid.uuid4().hex}.png"
                    image.save(RETAIN.retained_dir / kept)
                with bentoml.monitor(MONITOR) as monitor:
                    monitor.log(
                        datetime.datetime.now(datetime.UTC).isoformat(),
                        name="logged_at",
                        role="feature",
                        data_type="categorical",
                    )
                    monitor.log(self.tag, name="model_tag", role="feature", data_type="categorical")
                    monitor.log(kept, name="retained_image", role="feature", data_type="categorical")
                    for name, value in result["features"].items():
                        monitor.log(value, name=name, role="feature", data_type="numerical")
                    monitor.log(result["category"], name="prediction", role="prediction", data_type="categorical")
                    monitor.log(result["confidence"], name="confidence", role="prediction", data_type="numerical")
        except Exception:  # monitoring is best effort by design
            log.exception("inference logging failed; the prediction was still returned")

    @bentoml.api(input_spec=OneImage)
    def classify(self, image: ImageFile) -> Annotated[Prediction, Json]:
        """Classify one uploaded image (multipart field `image`)."""
        return self._predict([image])[0]

    @bentoml.api(
        input_spec=Images, batchable=True, max_batch_size=PARAMS.max_batch_size, max_latency_ms=PARAMS.max_latency_ms
    )
    def classify_batch(self, images: ImageFiles) -> Annotated[list[Prediction], Json]:
        """Classify images (multipart field `images`, repeated, at most serving.max_batch_size);
        concurrent requests are batched adaptively."""
        return self._predict(images)


ENDPOINTS = [api.route for api in Classifier.apis.values()]
SECURED = PARAMS.auth_token_env is not None
# Added first, so outermost: the 401 and 413 below are answered in the error shape too; the
# token is checked before the body is read.
Classifier.add_asgi_middleware(ErrorShape, endpoints=ENDPOINTS, secured=SECURED)
if SECURED:
    Classifier.add_asgi_middleware(BearerToken, serving=PARAMS)
Classifier.add_asgi_middleware(BodyLimit, endpoints=ENDPOINTS, limits=LIMITS)
