"""Durations as every display writes them (tether._text.duration): one function, four named
styles, and the browser's copies of the clock style (the panel's and the web app's JS) equal to
it."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tether._text import duration
from tether.view.render import fmt_duration

STATIC = Path(__file__).resolve().parents[1] / "src" / "tether"
SECONDS = [0, 0.4, 3, 59.9, 60, 185, 599.99, 3599.9, 3600, 3723.5, 2 * 86400 + 5, -3, -0.4]


def test_each_style_writes_a_duration_its_way() -> None:
    assert [duration(s) for s in (0.4, 3, 185, 3723.5)] == ["0:00", "0:03", "3:05", "1:02:03"]
    assert [duration(s, "compact") for s in (4.25, 185, 3723.5)] == ["4.2s", "3m05s", "1h02m"]
    assert [duration(s, "seconds") for s in (8.4, 0.6, -2)] == ["8 s", "1 s", "0 s"]  # a wait over: 0
    assert [duration(s, "setting") for s in (0.5, 90, 1e-3)] == ["0.5 s", "90 s", "0.001 s"]
    assert {duration(None, style) for style in ("clock", "compact", "seconds", "setting")} == {"-"}
    assert duration(-3) == "0:00"  # a clock skew, as the browser shows it
    assert fmt_duration(185) == "3:05"  # the views' name for the clock style


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is missing under CI=true: install Debian's nodejs (see .ci/run)")
        pytest.skip("node is missing: install it to compare the browser's durations")
    return node


@pytest.mark.parametrize("module", ["widget/static/common.js", "serve/static/common.js"])
def test_the_browsers_clock_style_is_pythons(module: str) -> None:
    """fmtDuration of the panel and dashboard (widget) and of `tether serve`'s pages writes what
    Python's clock style writes, the panel's static fallback and `tether watch` included. Not
    known: Python and the web app write ``-``, the widgets ``""`` (their callers hide it)."""
    source = base64.b64encode((STATIC / module).read_bytes()).decode()
    script = (
        f"const m = await import('data:text/javascript;base64,{source}');"
        f"console.log(JSON.stringify({json.dumps(SECONDS)}.map((s) => m.fmtDuration(s))));"
        "console.log(JSON.stringify(m.fmtDuration(null)));"
    )
    out = subprocess.run(
        [_node(), "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    written, unknown = out.stdout.splitlines()
    assert json.loads(written) == [duration(s) for s in SECONDS]
    assert json.loads(unknown) == ("" if module.startswith("widget") else "-")
