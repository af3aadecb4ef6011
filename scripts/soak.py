#!/usr/bin/env python3
"""The soak (docs/soak.md): N simulated tasks through Arrow Flight into a real `tutti serve`,
killed with SIGKILL every K seconds and restarted on the same data directory, with its RSS
sampled every second; at the end every submitted id must be in the results exactly once.

    python3 scripts/soak.py --binary target/debug/tutti --config configs/control-plane.toml \
        [--tasks 1000000] [--job-size 10000] [--kill-every 30] [--out DIR]

Jobs are uploaded one after another, while the server is killed and restarted. An upload that
fails (the server died under it) is settled by listing the restarted server's jobs: a job of that
name exists only if the server made it durable, and then it must not be sent again; otherwise it
is sent again. An acknowledged job that is missing later is a loss. Kills go on until every job is
done; then each job's rows are read with DoGet and counted by id. Exit status 1 on any lost,
duplicated or unknown id, or a job not done.

Writes DIR/rss.csv (t_s, pid, rss_kb), DIR/server.log and DIR/summary.json.
"""
import argparse
import collections
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.flight as flight


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--binary", default="target/debug/tutti")
    p.add_argument("--config", default="configs/control-plane.toml")
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--job-size", type=int, default=10_000)
    p.add_argument("--kill-every", type=float, default=30.0, help="seconds of each server life")
    p.add_argument("--warm-up", type=float, default=5.0, help="seconds of each life left out of the RSS figures")
    p.add_argument("--idle", type=float, default=30.0, help="seconds the last server runs, unkilled, after the check")
    p.add_argument("--port", type=int, default=50071)
    p.add_argument("--out", default="/tmp/tutti-soak")
    p.add_argument("--nice", type=int, default=19)
    return p.parse_args()


class Server:
    """One `tutti serve` at a time on one data directory; kill -9 and restart on demand."""

    def __init__(self, args):
        self.args = args
        self.data = os.path.join(args.out, "data")
        self.log = open(os.path.join(args.out, "server.log"), "ab")
        self.proc = None
        self.lock = threading.Lock()
        self.lives = []  # (pid, started_s, up_s: seconds until it answered, or None)
        self.t0 = time.monotonic()

    def start(self):
        a = self.args
        cmd = ["nice", "-n", str(a.nice), a.binary, "serve", "--config", a.config,
               "--data-dir", self.data, "--listen", f"127.0.0.1:{a.port}"]
        self.log.write(f"\n=== start at {time.monotonic() - self.t0:.1f}s\n".encode())
        self.log.flush()
        with self.lock:
            self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
            started = time.monotonic()
        # Up once it answers a ListFlights.
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"tutti serve exited with {self.proc.returncode}: see {self.log.name}")
            try:
                list(client(a.port).list_flights())
                break
            except flight.FlightError:
                time.sleep(0.1)
        self.lives.append((self.proc.pid, started - self.t0, time.monotonic() - started))

    def pid(self):
        with self.lock:
            return self.proc.pid if self.proc else None

    def kill(self):
        with self.lock:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        with self.lock:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def client(port):
    return flight.FlightClient(f"grpc://127.0.0.1:{port}")


def sample_rss(server, path, stop):
    """VmRSS of the running server every second, as `t_s,pid,rss_kb`."""
    with open(path, "w") as f:
        f.write("t_s,pid,rss_kb\n")
        while not stop.is_set():
            pid = server.pid()
            try:
                with open(f"/proc/{pid}/status") as s:
                    rss = next(l for l in s if l.startswith("VmRSS:")).split()[1]
                f.write(f"{time.monotonic() - server.t0:.1f},{pid},{rss}\n")
                f.flush()
            except (OSError, StopIteration, TypeError):
                pass  # between two lives
            stop.wait(1.0)


def jobs_by_name(port):
    """name -> (job id, status) of every job the server knows; retried while it is down."""
    while True:
        try:
            out = {}
            for info in client(port).list_flights():
                status = json.loads(info.app_metadata)
                out[status["name"]] = (status["job_id"], status)
            return out
        except flight.FlightError:
            time.sleep(0.2)


def job_table(j, size):
    first = j * size
    ids = [f"s{first + i:07d}" for i in range(size)]
    return pa.table({
        "id": ids,
        "prompt": [f"What is {first + i} + {i}?" for i in range(size)],
        "reference": [str(first + 2 * i) for i in range(size)],
    })


def submit(port, name, table):
    """Uploads one job; its id once acknowledged, or raises."""
    spec = {"name": name, "overrides": {"trajectories": False}}
    descriptor = flight.FlightDescriptor.for_command(json.dumps(spec))
    writer, reader = client(port).do_put(descriptor, table.schema)
    writer.write_table(table, max_chunksize=8192)
    writer.done_writing()
    buf = reader.read()
    if buf is None:  # the stream ended without an ack: the server died under the upload
        raise ConnectionError("no acknowledgement")
    ack = json.loads(buf.to_pybytes())
    writer.close()
    assert ack["tasks"] == table.num_rows, ack
    return ack["job_id"]


def submitter(args, counts, acked, failed):
    """Sends every job once; a failed upload is settled by the restarted server's job list."""
    try:
        send_all(args, counts, acked)
    except BaseException as e:  # noqa: BLE001 - reported by main, which stops the soak
        failed.append(repr(e))
        raise


def send_all(args, counts, acked):
    n_jobs = -(-args.tasks // args.job_size)
    for j in range(n_jobs):
        size = min(args.job_size, args.tasks - j * args.job_size)
        table = job_table(j, args.job_size).slice(0, size)
        name = f"soak-{j:04d}"
        while True:
            try:
                acked[name] = submit(args.port, name, table)
                counts["acked"] += 1
                break
            except (flight.FlightError, OSError) as e:
                counts["upload_failures"] += 1
                time.sleep(0.5)
                known = jobs_by_name(args.port)
                if name in known:  # durable before the ack was lost: never send it twice
                    acked[name] = known[name][0]
                    counts["durable_without_ack"] += 1
                    break
        counts["submitted_tasks"] += size


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    if os.path.exists(os.path.join(args.out, "data")):
        raise SystemExit(f"{args.out}/data exists: give a fresh --out")
    n_jobs = -(-args.tasks // args.job_size)
    server = Server(args)
    t0 = server.t0
    server.start()
    stop_rss = threading.Event()
    rss_path = os.path.join(args.out, "rss.csv")
    sampler = threading.Thread(target=sample_rss, args=(server, rss_path, stop_rss), daemon=True)
    sampler.start()

    counts = collections.Counter()
    acked = {}
    failed = []
    sub = threading.Thread(target=submitter, args=(args, counts, acked, failed), daemon=True)
    sub.start()

    kills = 0
    last_report = 0.0
    while True:
        life_start = time.monotonic()
        done = False
        while time.monotonic() - life_start < args.kill_every:
            time.sleep(1.0)
            now = time.monotonic() - t0
            if now - last_report >= 60:
                last_report = now
                print(f"[{now:7.0f}s] kills {kills}, jobs acked {len(acked)}/{n_jobs}, "
                      f"upload failures {counts['upload_failures']}", flush=True)
            if failed:
                server.stop()
                raise SystemExit(f"the submitter failed: {failed[0]}")
            if not sub.is_alive():
                known = jobs_by_name(args.port)
                if len(known) >= n_jobs and all(s["state"] != "running" for _, s in known.values()):
                    done = True
                    break
        if done:
            break
        server.kill()
        kills += 1
        server.start()
    wall = time.monotonic() - t0

    # The check: every acknowledged job known and done; every id exactly once.
    known = jobs_by_name(args.port)
    problems = []
    for name, job_id in sorted(acked.items()):
        if name not in known:
            problems.append(f"acknowledged job {name} ({job_id}) is lost")
        elif known[name][1]["state"] != "done":
            problems.append(f"job {name} is {known[name][1]['state']}")
    if len(known) != len(acked):
        problems.append(f"the server has {len(known)} jobs; {len(acked)} were submitted")
    seen = collections.Counter()
    statuses = collections.Counter()
    c = client(args.port)
    for name, (job_id, _) in sorted(known.items()):
        info = c.get_flight_info(flight.FlightDescriptor.for_path("jobs", job_id))
        for endpoint in info.endpoints:
            t = c.do_get(endpoint.ticket).read_all()
            seen.update(t.column("id").to_pylist())
            statuses.update(t.column("status").to_pylist())
    expected = {f"s{i:07d}" for i in range(args.tasks)}
    missing = [i for i in expected if seen[i] == 0]
    duplicated = [i for i, n in seen.items() if n > 1]
    unknown = [i for i in seen if i not in expected]
    for what, ids in (("missing", missing), ("duplicated", duplicated), ("unknown", unknown)):
        if ids:
            problems.append(f"{len(ids)} ids {what}, e.g. {sorted(ids)[:5]}")

    # The last server, left alone, for an idle RSS figure.
    time.sleep(args.idle)
    stop_rss.set()
    sampler.join()
    server.stop()

    rss = collections.defaultdict(list)
    with open(rss_path) as f:
        next(f)
        for line in f:
            t, pid, kb = line.split(",")
            rss[int(pid)].append((float(t), int(kb)))
    lives = []
    for pid, started, up in server.lives:
        samples = [kb for t, kb in rss.get(pid, []) if t >= started + up + args.warm_up]
        if samples:
            lives.append({"pid": pid, "start_s": round(started, 1), "up_s": round(up, 2),
                          "min_mb": min(samples) / 1024, "median_mb": statistics.median(samples) / 1024,
                          "max_mb": max(samples) / 1024, "samples": len(samples)})
    summary = {
        "tasks": args.tasks, "jobs": n_jobs, "rows_read": sum(seen.values()),
        "distinct_ids": len(seen), "missing": len(missing), "duplicated": len(duplicated),
        "unknown": len(unknown), "statuses": dict(statuses), "kills": kills,
        "upload_failures": counts["upload_failures"],
        "durable_without_ack": counts["durable_without_ack"], "wall_s": round(wall, 1),
        "restart_to_serving_s": {
            "median": round(statistics.median(u for _, _, u in server.lives), 2),
            "max": round(max(u for _, _, u in server.lives), 2)},
        "lives": lives, "problems": problems, "rss_csv": rss_path,
    }
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)

    print(f"tasks {args.tasks} in {n_jobs} jobs; rows read {summary['rows_read']}, distinct ids "
          f"{len(seen)}; missing {len(missing)}, duplicated {len(duplicated)}, unknown {len(unknown)}")
    print(f"statuses {dict(statuses)}")
    print(f"kills {kills}; uploads failed {counts['upload_failures']} (durable without an ack: "
          f"{counts['durable_without_ack']}); wall {wall:.0f} s; restart to serving "
          f"median {summary['restart_to_serving_s']['median']} s, max {summary['restart_to_serving_s']['max']} s")
    print(f"RSS after {args.warm_up:.0f} s of warm-up, per server life (MB: min / median / max):")
    shown = lives if len(lives) <= 12 else lives[:4] + lives[len(lives) // 2 - 2:len(lives) // 2 + 2] + lives[-4:]
    for life in shown:
        print(f"  start {life['start_s']:7.1f} s  pid {life['pid']:>7}  {life['min_mb']:7.1f} / "
              f"{life['median_mb']:7.1f} / {life['max_mb']:7.1f}")
    print(f"RSS samples: {rss_path}")
    for p in problems:
        print("PROBLEM:", p)
    print("every id exactly once" if not problems else "FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
