"""Repository hygiene: ruff passes and the public API is what the docs promise."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import tether
from helpers.util import unavailable

ROOT = Path(__file__).resolve().parent.parent

# names the engine issue promises; docs, notebooks and other tests rely on them
PROMISED = {
    "pipeline",
    "Run",
    "runs",
    "get_run",
    "configure",
    "Status",
    "Progress",
    "RunNotFound",
    "RunFailed",
    "RunCancelled",
    "RunInterrupted",
    "ParamsError",
    "StoreError",
    "KeyConflict",
    "TetherError",
}


def test_ruff_check_passes():
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "src", "tests", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_is_applied():
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "src", "tests", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_strict_passes():
    """`mypy --strict` over src/tether, configured in pyproject.toml ([tool.mypy]): tether's own
    code is fully typed; only third-party modules without type information are read as Any."""
    out = subprocess.run(
        [sys.executable, "-m", "mypy"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-8000:] + out.stderr[-2000:]


def test_all_names_are_importable():
    assert set(tether.__all__) >= PROMISED
    assert len(set(tether.__all__)) == len(tether.__all__)
    for name in tether.__all__:
        assert getattr(tether, name) is not None, name
    # `from tether import *` in a fresh interpreter binds exactly __all__
    code = (
        "import tether\nns = {}\nexec('from tether import *', ns)\n"
        "missing = set(tether.__all__) - set(ns)\nassert not missing, missing\nprint('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("module", ["tether.errors", "tether.model"])
def test_submodule_all_names_are_importable(module):
    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ names {name!r}, which it does not define"


def test_errors_are_the_same_objects_and_typed():
    import tether.errors as errors

    for name in errors.__all__:
        assert getattr(tether, name) is getattr(errors, name)
        assert issubclass(getattr(errors, name), tether.TetherError)
    assert issubclass(tether.RunNotFound, LookupError)
    assert issubclass(tether.ParamsError, TypeError)
    for cls in (tether.RunFailed, tether.RunCancelled, tether.RunInterrupted):
        assert issubclass(cls, tether.RunError)


def test_the_version_is_written_once():
    """pyproject.toml reads the version from tether/__init__.py (hatch's dynamic version)."""
    import importlib.metadata

    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and "\nversion = " not in pyproject
    try:
        installed = importlib.metadata.version("tether")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tether is not installed (the test command installs it with pip install -e)")
    assert installed == tether.__version__


BIOME = "@biomejs/biome@2.6.8"  # the version biome.json's $schema names


def test_biome_lints_the_widgets_javascript():
    """The widgets' JS (src/tether/widget/static/*.js) passes biome's recommended rules plus
    undeclared and unused variables (biome.json), warnings included. Needs node's npx (biome
    comes from the npm registry): skipped without it, failing under CI=true."""
    import shutil

    npx = shutil.which("npx")
    if npx is None:
        unavailable(
            "npx is missing: install node and npm to lint the widgets' JavaScript",
            "npx is missing under CI=true: install Debian's nodejs and npm (see .ci/run)",
        )
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "src/tether/widget/static").glob("*.js"))
    out = subprocess.run(
        [npx, "--yes", BIOME, "lint", "--error-on-warnings", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert f"Checked {len(files)} files" in out.stdout + out.stderr
