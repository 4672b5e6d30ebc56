"""docs/cli.md from geoseg's own argument parser, so the reference cannot drift from the code.

    python scripts/cli_docs.py           # write docs/cli.md
    python scripts/cli_docs.py --check   # exit 1 when docs/cli.md is stale (tests/test_docs.py does this)
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "docs", "cli.md")


def render() -> str:
    """The whole reference: every command's help, formatted at a fixed width."""
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: fixed, so the file is the same everywhere
    sys.path.insert(0, ROOT)
    from geoseg.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    parts = ["# Command-line reference\n",
             "Generated from geoseg's argument parser by `python scripts/cli_docs.py` (a test fails when this",
             "file is stale). Every command also takes `--verbose`, `--debug` and `--dashboard`; every path may",
             "be a local path or an `s3://` URL. What each command does: [guide.md](guide.md).\n",
             "```", parser.format_help().rstrip(), "```\n"]
    for name in COMMANDS:
        p = sub.choices[name]
        parts += [f"## geoseg {name}\n", "```", p.format_help().rstrip(), "```\n"]
    return "\n".join(parts)


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        with open(OUT) as f:
            stale = f.read() != text
        if stale:
            print("docs/cli.md is stale: run python scripts/cli_docs.py", file=sys.stderr)
        return int(stale)
    with open(OUT, "w") as f:
        f.write(text)
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
