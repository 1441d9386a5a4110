"""What the service checks before it serves anything, and how it refuses to start.

A BentoML worker whose service fails to start is started again by BentoML's process manager,
over and over, while the server as a whole never becomes ready and never exits. A refusal
here stops the whole server instead, with the reason in its log, so a user or an
orchestrator sees it at once.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any, NoReturn

from vgg2resnet.config import ServingParams, UserError
from vgg2resnet.integrity import damage
from vgg2resnet.serving.auth import check_exposure, listening_host, service_token

log = logging.getLogger("vgg2resnet.service")
REFUSAL = "the service will not start: "  # how the server's log begins the reason


def startup_checks(serving: ServingParams, tag: str, folder: Path, metadata: dict[str, Any]) -> None:
    """The token its setting names is set; it is not open to the network without one; the
    model's files are the ones saved with the version."""
    service_token(serving)
    check_exposure(serving, listening_host())
    problem = damage(folder, metadata)
    if problem is not None:  # a version a crash left incomplete is never served
        raise UserError(
            f"{tag} is incomplete ({problem}): serve another version (--arg model_tag=...) or run "
            "`vgg2resnet package` to promote the model again"
        )


def refuse_to_start(error: UserError) -> NoReturn:
    """Log why, and stop the server this worker belongs to (its parent process)."""
    log.error("%s%s", REFUSAL, error)
    os.kill(os.getppid(), signal.SIGTERM)
    raise SystemExit(2)
