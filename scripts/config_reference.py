#!/usr/bin/env python3
"""docs/configuration.md from the server's own `--help`, so the reference
cannot drift from the flags: every flag, its environment variable, its
default and its meaning.

    python3 scripts/config_reference.py            # write the file
    python3 scripts/config_reference.py --check    # fail when it is stale (CI)

The server binary is target/debug/server (built by the tests), or the path
given with --server.
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "configuration.md"

HEADER = """# Configuration reference

Every flag of the server, generated from `server --help` by
`scripts/config_reference.py` (CI fails when this file and the flags
differ). Each flag can also be set by its environment variable; a flag
given on the command line wins.

| flag | environment | default | meaning |
|---|---|---|---|
"""


def flags(help_text):
    """(flag, env, default, meaning) for each option in clap's long help."""
    entries = []
    current = None
    for line in help_text.splitlines():
        m = re.match(r"^\s{2,6}(-\w, )?(--[\w-]+)( <[^>]+>)?\s*$", line)
        if m:
            current = {"flag": m.group(2) + (m.group(3) or ""), "text": []}
            entries.append(current)
        elif current is not None and line.startswith(" " * 10):
            current["text"].append(line.strip())
        elif line.strip() == "":
            continue
    out = []
    for e in entries:
        text = " ".join(e["text"])
        env = re.search(r"\[env: ([A-Z0-9_]+)=?[^\]]*\]", text)
        default = re.search(r"\[default: ([^\]]*)\]", text)
        meaning = re.sub(r"\s*\[(env|default|possible values): [^\]]*\]", "", text).strip()
        out.append((
            e["flag"],
            env.group(1) if env else "",
            default.group(1) if default else "",
            meaning,
        ))
    return out


def cell(s):
    return s.replace("|", "\\|")


def render(help_text):
    rows = []
    for flag, env, default, meaning in flags(help_text):
        rows.append(
            f"| `{cell(flag)}` | {'`' + env + '`' if env else ''} | "
            f"{'`' + cell(default) + '`' if default else ''} | {cell(meaning)} |"
        )
    return HEADER + "\n".join(rows) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--check", action="store_true")
    p.add_argument("--server", default=str(ROOT / "target" / "debug" / "server"))
    args = p.parse_args()
    help_text = subprocess.run(
        [args.server, "--help"], check=True, capture_output=True, text=True
    ).stdout
    text = render(help_text)
    if len(flags(help_text)) < 10:
        sys.exit("config_reference: fewer than 10 flags found in --help; the parser no longer reads it")
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            sys.exit(
                f"{OUT.relative_to(ROOT)} does not match `server --help`: "
                "run python3 scripts/config_reference.py and commit it"
            )
        print(f"{OUT.relative_to(ROOT)} matches `server --help` ({len(flags(help_text))} flags)")
        return
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(flags(help_text))} flags)")


if __name__ == "__main__":
    main()
