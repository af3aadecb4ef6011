#!/usr/bin/env bash
# Long fuzzing runs (docs/fuzzing.md): builds the cargo fuzz targets of fuzz/ on nightly, runs
# each for SECONDS (default 3600) at once, merges the inputs that add coverage back into
# fuzz/corpus/<target>/ (minimized by libFuzzer's merge), and prints each target's figures.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      (default: every target)
#
# Logs and the inputs found go to $FUZZ_LOGS (default /tmp/fuzz-logs); crashing inputs to
# fuzz/artifacts/<target>/ (not committed: copy one to fuzz/regressions/<target>/ to keep it, and
# the stable test engine/tests/fuzz_corpus.rs replays it from then on).
#
# Choices: no sanitizer (`-s none`): the code is safe Rust, so AddressSanitizer would mostly add
# a 2-3x slowdown and a longer build; the coverage instrumentation libFuzzer needs is kept. cargo
# fuzz's default build: optimized, with debug assertions and overflow checks (an overflow found
# may wrap silently in a release binary rather than panic). Fork mode with
# crashes, OOMs and timeouts ignored, so one crash does not end an hour's run: each is saved and
# the run goes on. Everything runs under `nice -n 19`.
set -euo pipefail

secs=${1:-3600}
shift || true
all=(hermes config tasks_jsonl tasks_parquet tasks_arrow_ipc job_spec)
[ "$#" -gt 0 ] && targets=("$@") || targets=("${all[@]}")
logs=${FUZZ_LOGS:-/tmp/fuzz-logs}
flags=(--sanitizer none)

cd "$(dirname "$0")/../fuzz"
mkdir -p "$logs"
nice -n 19 cargo +nightly fuzz build "${flags[@]}"

for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t" "$logs/$t.new"
    # New inputs go to a scratch directory (the first corpus given); the committed corpus is read.
    nice -n 19 cargo +nightly fuzz run "${flags[@]}" "$t" "$logs/$t.new" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=30 \
        -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 \
        >"$logs/$t.log" 2>&1 &
done
wait

for t in "${targets[@]}"; do
    # The committed corpus and the new inputs, minimized together into a fresh directory: the
    # smallest inputs that cover every edge (`-use_counters=0`: edges, not hit counts, so the
    # corpus stays a few hundred files), which then replaces fuzz/corpus/<target>/.
    rm -rf "$logs/$t.min" && mkdir -p "$logs/$t.min"
    if nice -n 19 cargo +nightly fuzz run "${flags[@]}" "$t" "$logs/$t.min" "corpus/$t" \
        "$logs/$t.new" -- -merge=1 -use_counters=0 -rss_limit_mb=2048 -timeout=30 \
        >"$logs/$t.merge.log" 2>&1 && [ -n "$(ls "$logs/$t.min")" ]; then
        rm -rf "corpus/$t" && cp -r "$logs/$t.min" "corpus/$t"
    else
        echo "$t: the merge failed, corpus left as it was: see $logs/$t.merge.log" >&2
    fi
done

python3 - "$logs" "$secs" "${targets[@]}" <<'PY'
import os, re, sys
logs, secs, targets = sys.argv[1], sys.argv[2], sys.argv[3:]
line = re.compile(r"#(\d+): cov: (\d+) ft: (\d+) corp: (\d+) exec/s:? (\d+) "
                  r"oom/timeout/crash: (\d+)/(\d+)/(\d+) time: (\d+)s")
print(f"{'target':16} {'time':>6} {'execs':>11} {'exec/s':>7} {'cov':>6} {'ft':>7} "
      f"{'corpus':>7} {'crash':>6} {'oom':>4} {'tmout':>5} {'saved':>5}")
for t in targets:
    with open(os.path.join(logs, f"{t}.log"), errors="replace") as f:
        found = line.findall(f.read())
    corpus = len(os.listdir(os.path.join("corpus", t)))
    saved = len(os.listdir(os.path.join("artifacts", t)))
    if not found:
        print(f"{t:16} no figures: see {logs}/{t}.log")
        continue
    execs, cov, ft, _, _, oom, tmout, crash, time = map(int, found[-1])
    rate = execs // max(time, 1)
    print(f"{t:16} {time:>5}s {execs:>11} {rate:>7} {cov:>6} {ft:>7} {corpus:>7} "
          f"{crash:>6} {oom:>4} {tmout:>5} {saved:>5}")
print("corpus: files in fuzz/corpus/<target> after the merge; saved: files in "
      "fuzz/artifacts/<target> (crashes, OOMs, timeouts)")
PY
