#!/usr/bin/env python3
"""Checks the shape of the code and prints its figures (CI runs it).

- No source file over 500 lines in a library crate, over 400 in `server`.
- No function over 80 lines outside tests and benches.
- No import cycle between the top-level modules of a crate, nor between
  the sibling modules of a folder module (`use crate::…`, `crate::…::`
  paths and `super::` paths are the edges).
- Every module a crate root declares is named on the crate's front page
  (its `//!` docs), so `cargo doc` lists every module.

Usage: scripts/structure.py [--quiet]   (exit status 1 when a rule fails)
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = {
    # crate dir: largest file allowed
    "prefetch": 500,
    "prefetch-pg": 500,
    "prefetch-cdc": 500,
    "prefetch-pipeline": 500,
    "app": 500,
    "frontend": 500,
    "server": 400,
}
MAX_FN = 80

FN_RE = re.compile(
    r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:default\s+)?(?:const\s+)?(?:async\s+)?"
    r"(?:unsafe\s+)?(?:extern\s+\"[^\"]*\"\s+)?fn\s+(\w+)"
)
MOD_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;")


def strip_code(line):
    """The line without comments, string and char literals (roughly)."""
    out, i, n = [], 0, len(line)
    while i < n:
        c = line[i]
        if line.startswith("//", i):
            break
        if c == '"':
            j = i + 1
            while j < n and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            out.append('""')
            i = j + 1
            continue
        if c == "'" and i + 2 < n and (line[i + 2] == "'" or line[i + 1] == "\\"):
            j = line.find("'", i + 2)
            out.append("''")
            i = (j + 1) if j > 0 else n
            continue
        out.append(c)
        i += 1
    return "".join(out)


def sources(crate):
    src = os.path.join(ROOT, crate, "src")
    for base, _, files in os.walk(src):
        for f in sorted(files):
            if f.endswith(".rs"):
                yield os.path.join(base, f)


def module_path(crate, path):
    """`a::b` for src/a/b.rs or src/a/b/mod.rs; '' for the crate root."""
    rel = os.path.relpath(path, os.path.join(ROOT, crate, "src"))[:-3]
    parts = rel.split(os.sep)
    if parts[-1] == "mod":
        parts = parts[:-1]
    if parts in (["lib"], ["main"]):
        return ""
    return "::".join(parts)


def test_ranges(lines):
    """Line ranges of `#[cfg(test)]` items (their whole brace block)."""
    ranges, i = [], 0
    while i < len(lines):
        if lines[i].strip().startswith("#[cfg(test)]"):
            start, depth, seen = i, 0, False
            j = i + 1
            while j < len(lines):
                code = strip_code(lines[j])
                depth += code.count("{") - code.count("}")
                seen = seen or "{" in code
                if seen and depth <= 0:
                    break
                if not seen and code.rstrip().endswith(";"):
                    break
                j += 1
            ranges.append((start, j))
            i = j + 1
        else:
            i += 1
    return ranges


def functions(lines, skip):
    """(name, first line, length) of every fn body outside `skip`."""
    out = []
    for i, line in enumerate(lines):
        if any(a <= i <= b for a, b in skip):
            continue
        m = FN_RE.match(line)
        if not m:
            continue
        depth, seen, j = 0, False, i
        while j < len(lines):
            code = strip_code(lines[j])
            if not seen and ";" in code and "{" not in code:
                break  # a declaration without a body
            depth += code.count("{") - code.count("}")
            seen = seen or "{" in code
            if seen and depth <= 0:
                out.append((m.group(1), i + 1, j - i + 1))
                break
            j += 1
    return out


def imports(crate, mod, text):
    """Modules of the same crate that `mod` (a::b) refers to."""
    refs = set()
    code = "\n".join(strip_code(l) for l in text.splitlines() if not l.strip().startswith("//"))
    # `use crate::{a, b::c}` groups and plain `crate::a::…` paths.
    for m in re.finditer(r"crate::\{([^}]*)\}", code):
        for part in m.group(1).split(","):
            name = part.strip().split("::")[0].strip()
            if name and name != "self":
                refs.add(name)
    for m in re.finditer(r"crate::(\w+)(?:::(\w+))?", code):
        first, second = m.group(1), m.group(2)
        refs.add(first + ("::" + second if second else ""))
    parent = mod.rsplit("::", 1)[0] if "::" in mod else ""
    for m in re.finditer(r"\bsuper::(\w+)", code):
        refs.add((parent + "::" if parent else "") + m.group(1))
    return refs


def cycles(graph):
    """Every elementary cycle found by a depth-first search (one per back edge)."""
    found, state, stack = [], {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m in graph and state.get(m) is None:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if state.get(n) is None:
            visit(n)
    return found


def check(quiet):
    failures, figures = [], []
    all_fns = []
    for crate, limit in CRATES.items():
        if not os.path.isdir(os.path.join(ROOT, crate, "src")):
            continue
        files, mods = [], {}
        for path in sources(crate):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            lines = text.splitlines()
            rel = os.path.relpath(path, ROOT)
            files.append((len(lines), rel))
            if len(lines) > limit:
                failures.append(f"{rel}: {len(lines)} lines (at most {limit} in {crate})")
            skip = test_ranges(lines)
            for name, line, length in functions(lines, skip):
                all_fns.append((length, f"{rel}:{line} {name}"))
                if length > MAX_FN:
                    failures.append(f"{rel}:{line}: fn {name} is {length} lines (at most {MAX_FN})")
            mod = module_path(crate, path)
            test_free = "\n".join(
                l for i, l in enumerate(lines) if not any(a <= i <= b for a, b in skip)
            )
            mods[mod] = (imports(crate, mod, test_free), lines)
        # Top-level modules: edges between first path segments.
        top = {}
        for mod, (refs, _) in mods.items():
            if not mod:
                continue
            head = mod.split("::")[0]
            for r in refs:
                target = r.split("::")[0]
                if target != head and target in {m.split("::")[0] for m in mods if m}:
                    top.setdefault(head, set()).add(target)
            top.setdefault(head, set())
        for c in cycles(top):
            failures.append(f"{crate}: import cycle between modules: {' -> '.join(c)}")
        # Siblings inside each folder module.
        folders = {m.rsplit("::", 1)[0] for m in mods if "::" in m}
        for folder in sorted(folders):
            children = {m for m in mods if m.startswith(folder + "::") and m.count("::") == folder.count("::") + 1}
            graph = {}
            for child in children:
                graph[child] = set()
                for r in mods[child][0]:
                    for other in children:
                        if other != child and (r == other or r.startswith(other + "::")):
                            graph[child].add(other)
            for c in cycles(graph):
                failures.append(f"{crate}: import cycle inside {folder}: {' -> '.join(c)}")
        # The front page names every module the root declares.
        root = os.path.join(ROOT, crate, "src", "lib.rs")
        if os.path.exists(root):
            with open(root, encoding="utf-8") as f:
                root_lines = f.read().splitlines()
            doc = "\n".join(l for l in root_lines if l.startswith("//!"))
            for l in root_lines:
                m = MOD_RE.match(l)
                if m and f"`{m.group(1)}`" not in doc:
                    failures.append(f"{crate}/src/lib.rs: module `{m.group(1)}` is not on the crate's front page")
        files.sort(reverse=True)
        figures.append(
            f"{crate:18} {len(files):3} files, {sum(n for n, _ in files):6} lines, largest {files[0][0]} ({files[0][1]})"
        )
    all_fns.sort(reverse=True)
    if not quiet:
        print("== structure")
        for f in figures:
            print("  " + f)
        print(f"  longest functions (at most {MAX_FN} lines outside tests):")
        for length, where in all_fns[:5]:
            print(f"    {length:4}  {where}")
    for f in failures:
        print("FAIL " + f)
    if not quiet:
        print(f"  {len(failures)} rule(s) broken")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(check("--quiet" in sys.argv))
