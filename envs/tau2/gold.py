"""τ²'s own score of a plain gold replay, without tutti or a server.

    python3 envs/tau2/gold.py --domain retail -o GOLD.json [--limit N]

For each task: fresh environment, gold actions in order, one message with the
communicate_info strings, `done`, then evaluate_simulation(ALL). Writes
{"<domain>-<task id>": reward} (null where τ² raised) and prints a summary.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from episode import Episode, TerminationReason, gold_calls, load_tasks, tune_gc  # noqa: E402


def replay(domain: str, task_id: str) -> float:
    ep = Episode(domain, task_id)
    for call in gold_calls(ep.task):
        if call["name"] == "done":
            return ep.finish(TerminationReason.AGENT_STOP).reward
        if call["name"] == "respond":
            ep.say("assistant", call["arguments"]["content"])
        else:
            ep.call_tool(call["name"], call["arguments"], call.get("requestor", "assistant"))
    raise AssertionError("gold calls end with done")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domain", required=True)
    ap.add_argument("--limit", type=int, default=0, help="only the first N tasks")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()

    t0 = time.time()
    tune_gc()
    ids = list(load_tasks(args.domain))
    if args.limit:
        ids = ids[: args.limit]
    rewards = {}
    for task_id in ids:
        key = f"{args.domain}-{task_id}"
        try:
            rewards[key] = replay(args.domain, task_id)
        except Exception as e:  # τ² itself refused to score this task
            print(f"{key}: error: {e}", file=sys.stderr)
            rewards[key] = None
    with open(args.output, "w") as f:
        json.dump(rewards, f, indent=1)
    full = sum(1 for r in rewards.values() if r == 1.0)
    errors = sum(1 for r in rewards.values() if r is None)
    print(
        f"{args.domain}: {full}/{len(rewards)} tasks at 1.0, {errors} errors, "
        f"{time.time() - t0:.1f}s"
    )
    for key, r in [kv for kv in rewards.items() if kv[1] != 1.0][:20]:
        print(f"  {key}: {r}")


if __name__ == "__main__":
    main()
