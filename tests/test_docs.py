"""The user guide covers the whole public surface, and builds without a warning.

- every name in ``tether.__all__`` is mentioned as ``tether.<name>`` somewhere in docs/;
- every CLI subcommand has its section in docs/cli.md, and every option and argument of it appears
  there (options shared by all subcommands, like ``--db``, anywhere in that page);
- ``mkdocs build --strict`` succeeds (broken links, missing anchors and pages left out of the nav
  are errors, see mkdocs.yml).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tether
from tether.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CLI_PAGE = DOCS / "cli.md"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("tether.cli.build_parser() has no subcommands")


def _words(action: argparse.Action) -> str:
    """How the docs spell an argument: its longest option string, or a positional's metavar."""
    if action.option_strings:
        return max(action.option_strings, key=len)
    return str(action.metavar or action.dest)


def _arguments() -> list[tuple[str, str]]:
    per_command = {
        name: {_words(a) for a in sub._actions if not isinstance(a, argparse._HelpAction)}
        for name, sub in _subcommands().items()
    }
    return sorted((name, word) for name, words in per_command.items() for word in words)


def _shared_options() -> set[str]:
    sets = [{_words(a) for a in sub._actions if a.option_strings} for sub in _subcommands().values()]
    return set.intersection(*sets)


def _docs_text() -> str:
    pages = sorted(DOCS.glob("*.md"))
    assert pages, f"no documentation pages in {DOCS}"
    return "\n".join(page.read_text(encoding="utf-8") for page in pages)


def _section(text: str, command: str) -> str:
    """The part of cli.md under the heading of ``tether <command>``."""
    heading = f"## `tether {command}`"
    assert heading in text, f"docs/cli.md has no section {heading!r}"
    rest = text.split(heading, 1)[1]
    return rest.split("\n## ", 1)[0]


@pytest.mark.parametrize("name", sorted(tether.__all__))
def test_every_public_name_is_documented(name: str) -> None:
    assert re.search(rf"\btether\.{re.escape(name)}\b", _docs_text()), (
        f"tether.{name} is public (in tether.__all__) but docs/ never mentions `tether.{name}`; "
        "describe it, e.g. in docs/api.md"
    )


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_cli_command_has_a_section(command: str) -> None:
    text = CLI_PAGE.read_text(encoding="utf-8")
    assert _section(text, command).strip()


@pytest.mark.parametrize(("command", "word"), _arguments())
def test_every_cli_argument_is_documented(command: str, word: str) -> None:
    text = CLI_PAGE.read_text(encoding="utf-8")
    where = text if word in _shared_options() else _section(text, command)
    assert word.lower() in where.lower(), (
        f"`tether {command}` takes {word}, but docs/cli.md does not mention it "
        f"{'anywhere' if where is text else 'in its section'}"
    )


def test_mkdocs_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is in the test extra: pip install -e '.[test]'")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}{proc.stderr}"
    assert (tmp_path / "site" / "index.html").exists()
