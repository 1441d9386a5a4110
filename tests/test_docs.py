"""Every setting of params.yaml is documented once, on the page of its concern.

Each page of docs/ ends with a `## Settings` section. The rows of its table,
`| `section.key` | `default` | meaning |`, name the settings that page owns. A setting is every
key path of params.yaml whose value is not a non-empty mapping (`validation.severity: {}` and
a list are one setting each). Each must be owned by exactly one page, with the default that
params.yaml gives it, and no page may own a key that params.yaml lacks. A setting named
anywhere else (in prose, or in another setting's meaning) is a mention, and does not count.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from .conftest import ROOT

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
SETTINGS = "## Settings"
FENCE = re.compile(r"^\s*(```|~~~)")
KEY_CELL = re.compile(r"^`([A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)+)`$")


def leaves(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Every setting of a params tree by its dotted key, with its value."""
    found: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            found.update(leaves(value, f"{prefix}{key}."))
        else:
            found[f"{prefix}{key}"] = value
    return found


PARAMS = leaves(yaml.safe_load((ROOT / "params.yaml").read_text()))


def sections(text: str) -> list[tuple[str, list[str]]]:
    """The page's `## ` sections in order, each with its lines up to the next one; lines in a
    fenced code block are neither headings nor part of a section."""
    found: list[tuple[str, list[str]]] = []
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and line.startswith("## "):
            found.append((line.rstrip(), []))
        elif not fenced and found:
            found[-1][1].append(line)
    return found


class Row(NamedTuple):
    page: str
    key: str
    default: str
    meaning: str


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def settings_rows(page: Path) -> list[Row]:
    """The settings the page's `## Settings` section owns: its table rows that start with a key.
    A row whose first cell holds anything else in backticks is an error, not skipped."""
    rows = []
    for heading, lines in sections(page.read_text()):
        if heading != SETTINGS:
            continue
        for line in lines:
            if not line.lstrip().startswith("|"):
                continue
            cells = _cells(line)
            if not cells or "`" not in cells[0]:
                continue  # the header and the separator
            match = KEY_CELL.match(cells[0])
            assert match, f"{page.name}: a row of {SETTINGS} must start with one setting in backticks: {line}"
            assert len(cells) == 3, f"{page.name}: {match.group(1)}: expected | setting | default | meaning |"
            rows.append(Row(page.name, match.group(1), cells[1], cells[2]))
    return rows


ROWS = [row for page in PAGES for row in settings_rows(page)]


def _written(value: Any) -> str:
    """A value as params.yaml writes it, on one line."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def test_there_are_pages_and_settings():
    assert PAGES, f"no pages in {DOCS}"
    assert PARAMS, "params.yaml has no settings"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_each_page_ends_with_its_settings(page: Path):
    headings = [heading for heading, _ in sections(page.read_text())]
    assert headings and headings[-1] == SETTINGS, (
        f"{page.name}: its last '## ' section must be '{SETTINGS}' (its sections: {headings}); "
        "a page that owns no setting says so there"
    )


def test_every_setting_is_documented_on_exactly_one_page():
    owners: dict[str, list[str]] = defaultdict(list)
    for row in ROWS:
        owners[row.key].append(row.page)
    missing = [f"{key}: on no page's {SETTINGS}" for key in PARAMS if not owners[key]]
    twice = [
        f"{key}: on {len(pages)} pages' {SETTINGS}: {', '.join(pages)}"
        for key, pages in owners.items()
        if key in PARAMS and len(pages) > 1
    ]
    assert not missing + twice, "\n".join(missing + twice)


def test_no_page_documents_a_setting_that_params_yaml_lacks():
    stale = [f"{row.key}: on {row.page}'s {SETTINGS}, not in params.yaml" for row in ROWS if row.key not in PARAMS]
    assert not stale, "\n".join(stale)


def test_each_documented_default_is_the_one_in_params_yaml():
    """Written as params.yaml writes it (`null`, `true`, `24.0`, `[RGB, L]`), in backticks."""
    wrong = []
    for row in ROWS:
        if row.key not in PARAMS:
            continue  # reported as stale
        text = row.default.removeprefix("`").removesuffix("`")
        try:
            documented = yaml.safe_load(text)
        except yaml.YAMLError:
            documented = text
        if _written(documented) != _written(PARAMS[row.key]):
            wrong.append(f"{row.key}: {row.page} says {row.default}, params.yaml has {_written(PARAMS[row.key])}")
        if not row.meaning:
            wrong.append(f"{row.key}: {row.page} gives no meaning")
    assert not wrong, "\n".join(wrong)
