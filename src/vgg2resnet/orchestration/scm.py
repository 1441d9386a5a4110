"""The few git commands the flows run, with git's own message in the error when one fails."""

from __future__ import annotations

import subprocess
from pathlib import Path

from vgg2resnet.errors import UserError


def git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"git {' '.join(args)} failed in {root}: {result.stderr.strip()}")
    return result.stdout.strip()


def is_ignored(root: Path, path: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 0
