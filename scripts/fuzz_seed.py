#!/usr/bin/env python3
"""Seeds fuzz/corpus/<target>/ from real inputs in the repository (docs/fuzzing.md).

hermes: the Hermes calls written in the Rust sources' raw strings, and replies built around them;
config: configs/*.toml and the TOML blocks of docs/config.md; tasks_jsonl: examples/*.jsonl, each
line alone, OpenAI batch lines; tasks_parquet / tasks_arrow_ipc: the same tasks written by pyarrow
(several types, compressions, extra columns); job_spec: the specs of the tests and examples.
Files are named by their SHA-1, as libFuzzer names them; running it again adds nothing twice.
Needs pyarrow.
"""
import glob
import hashlib
import io
import json
import os
import re
import sys

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def rust_sources():
    for pattern in ("engine/src/**/*.rs", "model/src/**/*.rs", "src/*.rs", "tests/*.rs"):
        for path in glob.glob(os.path.join(ROOT, pattern), recursive=True):
            with open(path, encoding="utf-8") as f:
                yield f.read()


def hermes():
    raw = re.compile(r'r(#+)"(.*?)"\1', re.S)
    seen = set()
    for text in rust_sources():
        for m in raw.finditer(text):
            s = m.group(2)
            if "<tool_call>" in s and s not in seen:
                seen.add(s)
                put("hermes", s)
    for s in [
        "I will answer now.",
        "<tool_call>",
        "<tool_call></tool_call>",
        "Thinking...\n<tool_call>\n{\"name\": \"search\", \"arguments\": {\"model\": \"search-1\"}}\n</tool_call>",
        "<tool_call>{\"name\": \"respond\", \"arguments\": {\"content\": \"héllo \\u00e9 \\ud83d\\ude00\"}}</tool_call>",
        "<tool_call>{\"name\": \"t\", \"arguments\": {\"x\": [1, 2.5, -0.0, 1e300, null, true, {\"y\": {}}]}}</tool_call>",
        "<tool_call>{\"name\": \"t\", \"arguments\": null}</tool_call><tool_call>{\"name\": \"u\"}</tool_call>",
    ]:
        put("hermes", s)


def config():
    for path in glob.glob(os.path.join(ROOT, "configs", "*.toml")):
        with open(path, "rb") as f:
            put("config", f.read())
    with open(os.path.join(ROOT, "docs", "config.md"), encoding="utf-8") as f:
        for block in re.findall(r"```toml\n(.*?)```", f.read(), re.S):
            put("config", block)


def task_lines():
    lines = []
    for path in glob.glob(os.path.join(ROOT, "examples", "*.jsonl")):
        with open(path, encoding="utf-8") as f:
            lines += [l for l in f.read().splitlines() if l.strip()]
    lines += [
        '{"id": 7, "prompt": "p", "max_turns": 3, "budget_usd": 0.5, "extra": [1, {"a": null}]}',
        '{"id": "e", "prompt": "p", "env": {"task_id": "0"}, "user": {"scenario": "s"}, '
        '"replay": [{"name": "respond", "arguments": {"content": "hi"}}]}',
        '{"id": "r", "prompt": "p", "replay": ["<tool_call>{\\"name\\": \\"done\\", \\"arguments\\": {}}</tool_call>"]}',
    ]
    return lines


def tasks_jsonl(lines):
    for path in glob.glob(os.path.join(ROOT, "examples", "*.jsonl")):
        with open(path, "rb") as f:
            put("tasks_jsonl", f.read())
    for line in lines:
        put("tasks_jsonl", line + "\n")
    batch = [
        '{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": '
        '{"model": "m", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}}',
        '{"custom_id": 7, "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}',
    ]
    put("tasks_jsonl", "\n".join(batch) + "\n")
    put("tasks_jsonl", batch[0] + "\n")


def tables(lines):
    """Tables of tasks in the shapes clients write: plain, typed, preference as a map."""
    rows = [json.loads(l) for l in lines if l.startswith('{"id": "ex-')][:8]
    base = {
        "id": [r["id"] for r in rows],
        "prompt": [r["prompt"] for r in rows],
        "reference": [r.get("reference") for r in rows],
    }
    yield pa.table(base)
    yield pa.table({"id": pa.array(range(3), pa.int64()), "prompt": ["a", "b", "c"]})
    yield pa.table(
        {
            "id": ["a", "b"],
            "prompt": pa.array(["x", "y"], pa.large_string()),
            "budget_usd": pa.array([0.5, None], pa.float32()),
            "max_turns": pa.array([3, None], pa.int32()),
            "preference": pa.array(
                [[("cost", 1.0)], None], pa.map_(pa.string(), pa.float64())
            ),
            "metadata": ['{"k": 1}', None],
            "note": ["kept", "aside"],
        }
    )
    yield pa.table(
        {
            "id": ["e"],
            "prompt": ["p"],
            "env": ['{"task_id": "0"}'],
            "user": ['{"scenario": "s"}'],
            "replay": ['[{"name": "respond", "arguments": {"content": "hi"}}]'],
        }
    )
    yield pa.table({"id": pa.array(["a", "a"], pa.dictionary(pa.int8(), pa.string())), "prompt": ["x", "y"]})


def binary(lines):
    for i, t in enumerate(tables(lines)):
        for compression in ("snappy", "none"):
            out = io.BytesIO()
            pq.write_table(t, out, compression=compression, row_group_size=max(1, t.num_rows // 2))
            put("tasks_parquet", out.getvalue())
        out = io.BytesIO()
        with ipc.new_stream(out, t.schema) as w:
            for b in t.to_batches(max_chunksize=max(1, t.num_rows // 2)):
                w.write_batch(b)
        put("tasks_arrow_ipc", out.getvalue())


def job_spec():
    for s in [
        "",
        "{}",
        '{"name": "example", "defaults": {"budget_usd": 0.5, "max_turns": 6}}',
        '{"name": "n", "defaults": {"preference": {"cost": 1.0, "search-1": 0.5}}, '
        '"overrides": {"trajectories": false}}',
        '{"defaults": {"max_turns": 0}}',
        '{"backends": []}',
        '{"overrides": {"price_per_call": 0}}',
        "not json",
    ]:
        put("job_spec", s)


def main():
    hermes()
    config()
    lines = task_lines()
    tasks_jsonl(lines)
    binary(lines)
    job_spec()
    for t in sorted(os.listdir(CORPUS)):
        print(t, len(os.listdir(os.path.join(CORPUS, t))))


if __name__ == "__main__":
    sys.exit(main())
