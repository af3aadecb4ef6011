"""τ² tasks as tutti tasks, one JSON object per line.

    python3 envs/tau2/tasks.py --domain retail [--replay] [--limit N] -o TASKS.jsonl

Each line: {"id": "<domain>-<task id>", "prompt", "env": {"task_id"}, "user", "metadata": "<domain>"}.
With --replay also "replay": the gold calls (user-side ones carry "requestor": "user"),
one `respond` with the communicate_info strings, then `done`.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from episode import domain_info, gold_calls, load_tasks, user_scenario  # noqa: E402

PROMPT = """You are a customer service agent for the {domain} domain. Follow the policy below.
You talk to the user only through the `respond` tool: whatever you pass to it is sent to the user,
and their reply comes back as its result. Use the other tools to look things up and act.
When the conversation is finished, call `done`.

<policy>
{policy}
</policy>"""


def task_lines(domain: str, replay: bool, limit: int = 0):
    policy, _ = domain_info(domain)
    prompt = PROMPT.format(domain=domain, policy=policy.strip())
    tasks = list(load_tasks(domain).values())
    if limit:
        tasks = tasks[:limit]
    for task in tasks:
        line = {
            "id": f"{domain}-{task.id}",
            "prompt": prompt,
            "env": {"task_id": task.id},
            "user": user_scenario(task),
            "metadata": domain,
        }
        if replay:
            line["replay"] = gold_calls(task)
        yield line


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domain", required=True)
    ap.add_argument("--replay", action="store_true", help="add the gold calls to each line")
    ap.add_argument("--limit", type=int, default=0, help="only the first N tasks")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    n = 0
    with open(args.output, "w") as f:
        for line in task_lines(args.domain, args.replay, args.limit):
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
            n += 1
    print(f"{n} {args.domain} tasks -> {args.output}")


if __name__ == "__main__":
    main()
