"""Every benchmark imports: they run by hand, so a renamed or moved name they use would
otherwise go unnoticed until someone measures."""

import subprocess
import sys

from .conftest import ROOT

IMPORT_ALL = """
import importlib, pathlib, sys
folder = pathlib.Path(sys.argv[1])
sys.path.insert(0, str(folder))
for path in sorted(folder.glob("*.py")):
    importlib.import_module(path.stem)
print("imported", len(list(folder.glob("*.py"))))
"""


def test_every_benchmark_imports():
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, str(ROOT / "benchmarks")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["imported", str(len(list((ROOT / "benchmarks").glob("*.py"))))]
