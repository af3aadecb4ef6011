"""Replay τ² gold calls through serve.py over WebSockets and compare with gold.py.

    python3 envs/tau2/client_check.py [--domain retail] [--limit 20] [--gold GOLD.json]

Starts serve.py on a free port, opens one WebSocket per task (all in parallel),
replays tasks.py --replay, checks each reward equals gold.py's, then checks that
GET /sessions reports no open session. Prints a JSON summary; exits 1 on a mismatch.
--limit 0 means every task.
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.request

from websockets.asyncio.client import connect

HERE = os.path.dirname(os.path.abspath(__file__))
STEP_TIMEOUT = 120  # seconds for one reply; a reset or an evaluation queues behind others


async def run(cmd: list[str], timeout: float) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, *cmd)
    try:
        rc = await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        raise RuntimeError(f"timed out: {cmd}")
    if rc != 0:
        raise RuntimeError(f"exit {rc}: {cmd}")


async def start_server(domain: str, timeout: float):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, os.path.join(HERE, "serve.py"),
        "--domain", domain, "--listen", "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout)).decode().strip()
    except asyncio.TimeoutError:
        line = "(timed out)"
    if not line.startswith("listening on "):
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


async def roundtrip(ws, msg: dict) -> dict:
    await ws.send(json.dumps(msg))
    reply = json.loads(await asyncio.wait_for(ws.recv(), STEP_TIMEOUT))
    if reply.get("type") != "observation":
        raise RuntimeError(f"{msg} -> {reply}")
    return reply["data"]


async def replay(url: str, task: dict) -> dict:
    """One episode on its own WebSocket. Returns reward and counts."""
    ws_url = url.replace("http://", "ws://") + "/ws"
    tool_errors = 0
    async with connect(ws_url, open_timeout=30, close_timeout=10, max_size=None) as ws:
        first = await roundtrip(ws, {"type": "reset", "data": {"task_id": task["env"]["task_id"]}})
        obs = first["observation"]
        names = [t["name"] for t in obs["tools"]]
        assert obs["task_id"] == task["env"]["task_id"] and "done" in names and obs["policy"], obs
        for call in task["replay"]:
            if call["name"] == "respond":
                step = {"type": "message", "role": "assistant",
                        "content": call["arguments"]["content"]}
            else:
                step = {"type": "call_tool", "tool_name": call["name"],
                        "arguments": call["arguments"]}
                if "requestor" in call:
                    step["requestor"] = call["requestor"]
            data = await roundtrip(ws, {"type": "step", "data": step})
            if call["name"] == "done":
                assert data["done"] and data["observation"]["termination"] == "agent_stop", data
                await ws.send(json.dumps({"type": "close"}))
                return {"reward": data["reward"], "tool_errors": tool_errors}
            assert not data["done"], data
            if step["type"] == "call_tool" and data["observation"]["error"] is not None:
                tool_errors += 1
    raise RuntimeError(f"{task['id']}: replay has no done")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domain", default="retail")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--gold", help="gold.py output to compare with (default: run gold.py)")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="tau2-check-")
    tasks_path = os.path.join(tmp, "tasks.jsonl")
    gold_path = args.gold or os.path.join(tmp, "gold.json")
    limit = ["--limit", str(args.limit)]

    t0 = time.time()
    server_task = asyncio.create_task(start_server(args.domain, 120))
    prep = [run([os.path.join(HERE, "tasks.py"), "--domain", args.domain, "--replay",
                 *limit, "-o", tasks_path], 120)]
    if not args.gold:
        prep.append(run([os.path.join(HERE, "gold.py"), "--domain", args.domain, *limit,
                         "-o", gold_path], 900))
    server, url = await server_task
    server_start_s = time.time() - t0
    try:
        await asyncio.gather(*prep)
        with open(tasks_path) as f:
            tasks = [json.loads(line) for line in f]
        with open(gold_path) as f:
            gold = json.load(f)

        t1 = time.time()
        results = await asyncio.gather(
            *(replay(url, t) for t in tasks), return_exceptions=True
        )
        replay_s = time.time() - t1

        failures = []
        matched = 0
        full = 0
        tool_errors = 0
        for task, res in zip(tasks, results):
            if isinstance(res, BaseException):
                failures.append(f"{task['id']}: {type(res).__name__}: {res}")
                continue
            tool_errors += res["tool_errors"]
            full += res["reward"] == 1.0
            matched += res["reward"] == gold.get(task["id"])
            if res["reward"] != gold.get(task["id"]):
                failures.append(f"{task['id']}: reward {res['reward']} != gold {gold.get(task['id'])}")

        # Sessions close on the server a moment after the sockets do.
        deadline = time.time() + 10
        while True:
            sessions = get_json(url + "/sessions")
            settled = sessions["active"] == 0 and sessions["closed"] == sessions["opened"]
            if settled or time.time() > deadline:
                break
            await asyncio.sleep(0.1)
        if sessions["active"] != 0:
            failures.append(f"sessions left open: {sessions}")
        if sessions["opened"] != len(tasks) or sessions["closed"] != len(tasks):
            failures.append(f"expected {len(tasks)} sessions opened and closed: {sessions}")

        summary = {
            "domain": args.domain,
            "tasks": len(tasks),
            "match_gold": matched,
            "reward_1": full,
            "tool_errors": tool_errors,
            "sessions": sessions,
            "server_start_s": round(server_start_s, 2),
            "replay_s": round(replay_s, 2),
            "ok": not failures,
        }
        print(json.dumps(summary))
        for line in failures[:20]:
            print("  " + line)
        return 0 if not failures else 1
    finally:
        server.terminate()
        try:
            await asyncio.wait_for(server.wait(), 15)
        except asyncio.TimeoutError:
            server.kill()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
