"""The docs cannot drift: docs/cli.md is what the parser says, and every geoseg command line in README.md
and docs/ parses with geoseg's own parser (a flag that does not exist fails here)."""

from __future__ import annotations

import pathlib
import re
import runpy
import shlex

import pytest

from geoseg.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_cli_reference_is_generated_from_the_parser():
    render = runpy.run_path(str(ROOT / "scripts" / "cli_docs.py"))["render"]
    assert (ROOT / "docs" / "cli.md").read_text() == render(), "docs/cli.md is stale: run python scripts/cli_docs.py"


def _command_lines(path: pathlib.Path) -> list[tuple[str, bool]]:
    """``(command line, whole)``: the geoseg command lines of fenced code blocks (continuation lines
    joined; ``whole``: a runnable line, not a synopsis with [options] | choices ...) and of inline code."""
    out, fence, pending = [], False, ""
    for line in path.read_text().splitlines():
        if line.strip().startswith("```"):
            fence = not fence
            continue
        if fence:
            text = pending + line.strip()
            if text.endswith("\\"):
                pending = text[:-1] + " "
                continue
            pending = ""
            text = text.split("  #")[0].strip()
            text = re.sub(r"^(\$ |python -m )", "", text)
            if text.startswith("geoseg "):
                out.append((text, not re.search(r"[\[\]|<>]|\.\.\.|\{", text)))
        else:
            out += [(m, False) for m in re.findall(r"`(geoseg [a-z]+[^`]*)`", line)]
    return out


def _flags_of(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_command_line_in_the_docs_parses(path):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    lines = _command_lines(path)
    for text, whole in lines:
        args = shlex.split(text)[1:]
        if not args or args[0].startswith("-"):
            continue
        assert args[0] in sub, f"{path.name}: unknown command in {text!r}"
        if whole:
            try:
                ns = parser.parse_args(args)
            except SystemExit:
                pytest.fail(f"{path.name}: does not parse: {text}")
            if args[0] == "submit" and ns.job_args:  # the command it submits parses too
                inner = ns.job_args[1:] if ns.job_args[0] == "--" else ns.job_args
                try:
                    parser.parse_args(inner)
                except SystemExit:
                    pytest.fail(f"{path.name}: the submitted command does not parse: {text}")
        else:  # a synopsis or a fragment: every flag it names exists
            flags = _flags_of(sub[args[0]]) | _flags_of(parser)
            if args[0] == "submit" and "--" in args:
                inner = args[args.index("--") + 1:]
                flags |= _flags_of(sub[inner[0]]) if inner and inner[0] in sub else set()
            for token in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text):
                assert token in flags, f"{path.name}: {token} is no flag of geoseg {args[0]}: {text}"
    if path.name in ("README.md", "guide.md", "cli.md"):
        assert lines, f"{path.name} names no command line"
