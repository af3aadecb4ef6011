#!/usr/bin/env python3
"""Counts the public API of each library crate of the workspace, from rustdoc's JSON output.

What counts is what a user of the crate can name: every item rustdoc documents without
`--document-private-items` (so reachable from the crate root), by kind. Functions include
methods in inherent and trait impls of the crate's own types; re-exports count where they
point, once. Needs the nightly toolchain (rustdoc's JSON output is unstable).

Usage: scripts/public-api.py [--target-dir DIR] [--list] [CRATE...]
"""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

KINDS = ["module", "struct", "enum", "variant", "struct_field", "trait", "function",
         "constant", "static", "type_alias", "macro", "assoc_const", "assoc_type"]


def kind_of(item):
    inner = item.get("inner") or {}
    return next(iter(inner), "?") if isinstance(inner, dict) else str(inner)


def count(repo: Path, crate: str, target: Path, show: bool):
    subprocess.run(
        ["cargo", "+nightly", "rustdoc", "-q", "-p", crate, "--lib", "--target-dir", str(target),
         "--", "-Z", "unstable-options", "--output-format", "json"],
        cwd=repo, check=True)
    doc = json.loads((target / "doc" / f"{crate.replace('-', '_')}.json").read_text())
    index = doc["index"]
    kinds = Counter()
    names = []
    for item in index.values():
        if item.get("crate_id") != 0 or item.get("visibility") != "public":
            continue
        kind = kind_of(item)
        if kind in ("impl", "use"):
            continue
        kinds[kind] += 1
        if show and item.get("name"):
            path = doc["paths"].get(str(item["id"]), {}).get("path")
            names.append(f'{kind:12} {"::".join(path) if path else item["name"]}')
    return kinds, sorted(names)


def main():
    args = sys.argv[1:]
    repo = Path(__file__).resolve().parent.parent
    target = repo / "target" / "public-api"
    if "--target-dir" in args:
        i = args.index("--target-dir")
        target = Path(args[i + 1]).resolve()
        del args[i:i + 2]
    show = "--list" in args
    args = [a for a in args if a != "--list"]
    meta = json.loads(subprocess.check_output(
        ["cargo", "metadata", "--no-deps", "--format-version", "1"], cwd=repo))
    crates = args or [p["name"] for p in meta["packages"]
                      if any("lib" in t["kind"] for t in p["targets"])]
    grand = 0
    for crate in crates:
        kinds, names = count(repo, crate, target, show)
        items = sum(v for k, v in kinds.items() if k not in ("struct_field", "variant"))
        total = sum(kinds.values())
        grand += total
        detail = ", ".join(f"{k} {kinds[k]}" for k in KINDS if kinds[k])
        print(f"{crate}: {total} public items ({items} without fields and variants): {detail}")
        for n in names:
            print(f"    {n}")
    print(f"all crates: {grand}")


if __name__ == "__main__":
    main()
