#!/usr/bin/env python3
"""Builds the retrieval corpus of Python standard-library documentation.

Reads the docstrings of the LOCAL Python installation (no network) and writes one JSON Lines
document per module and one per public top-level function or class, in the form that
`tutti_engine::backend::retrieval::RetrievalIndex::build` reads:

    {"id": "json.dumps", "title": "json.dumps", "text": "json.dumps(obj, *, ...)\n\nSerialize ..."}

Which modules: every name in `sys.stdlib_module_names` and the public submodules of packages,
except private (`_x`), test, GUI/demo and platform-specific modules, and any module that fails to
import, warns on import (the deprecated PEP 594 modules) or prints on import. Which objects: the
names in a module's `__all__`, else its public names defined in that module; an object exported
by several modules (``asyncio.gather`` is ``asyncio.tasks.gather``) is emitted once, under its
shortest path. A class's text ends with a one-line summary of each of its own public methods, so
that ``datetime.datetime`` answers "current date and time" through ``now``.

The output is deterministic for a given installation: modules and documents are sorted, memory
addresses are scrubbed from signatures and the script re-executes itself with a fixed hash seed.

Usage: python3 scripts/extract_python_docs.py [OUT]   (default examples/corpus/python-stdlib.jsonl)
"""

import contextlib
import importlib
import inspect
import io
import json
import os
import pkgutil
import re
import sys
import warnings
from pathlib import Path

# Set iteration order (and so the repr of a set-valued default) depends on the hash seed.
if os.environ.get("PYTHONHASHSEED") != "0":
    env = dict(os.environ, PYTHONHASHSEED="0")
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "examples" / "corpus" / "python-stdlib.jsonl"

# Never imported: side effects (a browser, a printout, a Tk window, terminal state), test suites,
# bundled tools whose modules are not an API, codec tables, and platform modules absent here.
SKIP_TOP = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "readline",
    "pydoc_data", "lib2to3", "distutils", "ensurepip", "encodings",
    "msvcrt", "winreg", "winsound", "nt", "msilib", "ntpath", "nturl2path",
}
SKIP_PARTS = {"test", "tests", "idle_test"}
# Modules that are not packages but whose submodule is the documented API.
EXTRA_MODULES = ["os.path"]

MAX_TEXT_CHARS = 4000
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def is_public(dotted):
    return all(not part.startswith("_") and part not in SKIP_PARTS for part in dotted.split("."))


def quiet_import(name):
    """Imports `name`, or returns None if it fails, warns or writes anything while importing."""
    out = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            warnings.simplefilter("error")
            module = importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - SystemExit and friends count as "fails to import"
        return None
    return None if out.getvalue() else module


def module_names():
    """All public stdlib module names to document, sorted."""
    names = set()
    for top in sorted(sys.stdlib_module_names):
        if top in SKIP_TOP or not is_public(top):
            continue
        module = quiet_import(top)
        if module is None:
            continue
        names.add(top)
        if hasattr(module, "__path__"):
            for info in pkgutil.walk_packages(module.__path__, top + ".", onerror=lambda _: None):
                if is_public(info.name) and quiet_import(info.name) is not None:
                    names.add(info.name)
    names.update(n for n in EXTRA_MODULES if quiet_import(n) is not None)
    return sorted(names)


def own_doc(obj):
    """The object's own docstring, cleaned, or "" (a class does not inherit its base's)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def signature(path, obj):
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return path
    return path + ADDRESS.sub("", sig)


def method_summary(cls):
    lines = []
    for name in sorted(cls.__dict__):
        if name.startswith("_"):
            continue
        attr = cls.__dict__[name]
        func = attr.__func__ if isinstance(attr, (classmethod, staticmethod)) else attr
        if not callable(func):
            continue
        doc = own_doc(func)
        if doc:
            lines.append(f"  {name}: {doc.splitlines()[0]}")
    return "\n\nMethods:\n" + "\n".join(lines) if lines else ""


def truncate(text):
    if len(text) <= MAX_TEXT_CHARS:
        return text
    return text[: MAX_TEXT_CHARS - 1].rstrip() + "…"


def defined_in(name, origin):
    """Whether an object whose `__module__` is `origin` belongs to module `name`: defined there, or
    in a private implementation module (`sqlite3.connect` comes from `_sqlite3`)."""
    return isinstance(origin, str) and (origin == name or origin.rsplit(".", 1)[-1].startswith("_"))


def public_objects(name, module):
    """(name, object) for the module's documented top-level functions and classes."""
    exported = getattr(module, "__all__", None)
    if isinstance(exported, (list, tuple)):
        names = [n for n in exported if isinstance(n, str) and not n.startswith("_")]
    else:
        names = [
            n for n, v in vars(module).items()
            if not n.startswith("_") and defined_in(name, getattr(v, "__module__", None))
        ]
    for attr in sorted(set(names)):
        obj = getattr(module, attr, None)
        if (inspect.isclass(obj) or inspect.isroutine(obj)) and own_doc(obj):
            yield attr, obj


def path_rank(path):
    # Shortest first: `asyncio.gather` over `asyncio.tasks.gather`, `os.path.join` over
    # `posixpath.join`.
    return (len(path), path)


def main():
    out_path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    documents = {}
    best_path = {}  # id(object) -> (path, object): the object's shortest public path
    for name in module_names():
        module = sys.modules[name]
        doc = own_doc(module)
        if doc:
            documents[name] = doc
        for attr, obj in public_objects(name, module):
            path = f"{name}.{attr}"
            seen = best_path.get(id(obj))
            if seen is None or path_rank(path) < path_rank(seen[0]):
                best_path[id(obj)] = (path, obj)

    for path, obj in best_path.values():
        text = signature(path, obj) + "\n\n" + own_doc(obj)
        if inspect.isclass(obj):
            text += method_summary(obj)
        documents[path] = text

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8", newline="\n") as f:
        for doc_id in sorted(documents):
            record = {"id": doc_id, "title": doc_id, "text": truncate(documents[doc_id])}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{len(documents)} documents, {out_path.stat().st_size / 1e6:.2f} MB -> {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
