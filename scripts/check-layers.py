#!/usr/bin/env python3
"""Fails when two modules of a crate import each other, directly or through others.

Cargo already refuses a cycle between crates. Inside a crate, the compiler allows any module to
use any other, so this script holds the layers: for every crate of the workspace it reads each
source file (comments and string literals removed), maps every `crate::a::b` and `super::b` path
to the module it names, and builds two graphs:

- between the top-level modules of the crate (`engine/src/io/` and `engine/src/jobs/` are two
  nodes; a file and its folder are one node);
- inside each folder, between its children (`backend/openai.rs` and `backend/sim.rs`).

Test code is left out: it composes the layers (a test module at the end of a file, which clippy's
`items_after_test_module` keeps last, and files declared `#[cfg(test)] mod name;`).

A cycle in either graph is printed with the files and lines that make it, and the exit status
is 1. `--graph` prints the top-level edges of each crate.

Usage: scripts/check-layers.py [--graph]
"""

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{")


def strip(text: str) -> str:
    """Source text without comments, string and char literals (newlines kept, so lines count)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    out.append("\n" if text[i] == "\n" else "")
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append("\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]) or text.startswith("'\\u{", i):
            j = text.find("'", i + 1)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


TEST_MOD_INLINE = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+\w+\s*\{")
TEST_MOD_FILE = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+(\w+)\s*;")


def without_tests(text: str) -> str:
    """`text` up to its test module, which is the last item of a file."""
    m = TEST_MOD_INLINE.search(text)
    return text[:m.start()] if m else text


def test_files(src: Path, files) -> set:
    """Files that are whole test modules (`#[cfg(test)] mod name;`)."""
    out = set()
    for f in files:
        here = f.parent if f.name in ("mod.rs", "lib.rs", "main.rs") else f.with_suffix("")
        for name in TEST_MOD_FILE.findall(f.read_text()):
            out |= {here / f"{name}.rs", here / name / "mod.rs"}
    return out


def module_of(src: Path, file: Path) -> list[str]:
    """The module path of `file` under the crate root `src`: `io/tasks.rs` -> ["io", "tasks"]."""
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return parts


def targets(module: list[str], text: str):
    """(line, target module path) for every path in `text` that names a module of the crate."""
    for regex in (PATH, USE_GROUP):
        for m in regex.finditer(text):
            segments = [s for s in m.group(2).split("::") if s]
            if m.group(1) == "crate":
                base = []
            else:
                base = module[:-1]
                while segments and segments[0] == "super":
                    base, segments = base[:-1], segments[1:]
            line = text.count("\n", 0, m.start()) + 1
            yield line, base + segments


def cycles(edges: dict) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def crate_roots(repo: Path):
    meta = json.loads(subprocess.check_output(
        ["cargo", "metadata", "--no-deps", "--format-version", "1"], cwd=repo))
    for pkg in meta["packages"]:
        for target in pkg["targets"]:
            if {"lib", "bin"} & set(target["kind"]):
                root = Path(target["src_path"])
                yield f'{pkg["name"]} ({target["kind"][0]})', root.parent, root


def main() -> int:
    repo = Path(__file__).resolve().parent.parent
    show = "--graph" in sys.argv
    failed = False
    for name, src, root in crate_roots(repo):
        top = defaultdict(lambda: defaultdict(list))    # a -> b -> [where]
        inner = defaultdict(lambda: defaultdict(list))  # (folder, a) -> (folder, b) -> [where]
        files = [root] + [f for f in sorted(src.rglob("*.rs")) if f != root]
        known = {tuple(module_of(src, f)) for f in files}
        tests = test_files(src, files)
        for file in files:
            if file in tests:
                continue
            module = module_of(src, file)
            if not module:
                continue
            text = strip(without_tests(file.read_text()))
            for line, target in targets(module, text):
                # The longest prefix of the target that is a module of the crate.
                while target and tuple(target) not in known:
                    target = target[:-1]
                if not target:
                    continue
                where = f"{file.relative_to(repo)}:{line}"
                if target[0] != module[0]:
                    top[module[0]][target[0]].append(where)
                # Siblings inside one folder.
                depth = 0
                while depth < min(len(module), len(target)) - 1 and module[depth] == target[depth]:
                    depth += 1
                if depth and module[:depth] == target[:depth] and module[depth] != target[depth]:
                    folder = "/".join(module[:depth])
                    inner[(folder, module[depth])][(folder, target[depth])].append(where)
        if show:
            print(f"{name}:")
            for a in sorted(top):
                print(f"  {a} -> {', '.join(sorted(top[a]))}")
        for comp in cycles(top):
            failed = True
            print(f"{name}: modules import each other: {' <-> '.join(comp)}")
            for a in comp:
                for b in comp:
                    for where in top[a].get(b, [])[:3]:
                        print(f"    {a} -> {b}  ({where})")
        for comp in cycles(inner):
            failed = True
            folder = comp[0][0]
            print(f"{name}: inside {folder}/: {' <-> '.join(c[1] for c in comp)}")
            for a in comp:
                for b in comp:
                    for where in inner[a].get(b, [])[:3]:
                        print(f"    {a[1]} -> {b[1]}  ({where})")
    if not failed:
        print("check-layers: no module imports another that imports it back, in any crate")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
