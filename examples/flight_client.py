"""A tutti job over Arrow Flight with pyarrow: submit tasks, follow progress, read results.

Start a server first (`tutti serve`), then:

    python3 examples/flight_client.py [grpc://127.0.0.1:50051]

With a token (`tutti serve --token-file F`), set TUTTI_TOKEN to the same value.
"""

import json
import os
import sys
import time

import pyarrow as pa
import pyarrow.flight as flight

server = sys.argv[1] if len(sys.argv) > 1 else "grpc://127.0.0.1:50051"
client = flight.FlightClient(server)
token = os.environ.get("TUTTI_TOKEN")
options = flight.FlightCallOptions(
    headers=[(b"authorization", f"Bearer {token}".encode())] if token else []
)

# 1. Submit: the descriptor's command is the job spec (JSON); the stream carries the tasks.
tasks = pa.table({
    "id": [f"t{i}" for i in range(100)],
    "prompt": [f"What is {i} + {i}?" for i in range(100)],
    "reference": [str(i + i) for i in range(100)],
})
spec = {"name": "example", "defaults": {"budget_usd": 0.5, "max_turns": 6}}
descriptor = flight.FlightDescriptor.for_command(json.dumps(spec))
writer, reader = client.do_put(descriptor, tasks.schema, options=options)
writer.write_table(tasks, max_chunksize=8192)  # keep each message well under the size limit
writer.done_writing()
ack = json.loads(reader.read().to_pybytes())  # sent once the tasks are durable on the server
writer.close()
job_id = ack["job_id"]
print("job", job_id, "accepted with", ack["tasks"], "tasks")

# 2. Follow it: FlightInfo.app_metadata holds state, progress and counts.
job = flight.FlightDescriptor.for_path("jobs", job_id)
while True:
    info = client.get_flight_info(job, options=options)
    status = json.loads(info.app_metadata)
    print(f"{status['state']}: {status['progress']:.0%} ({info.total_records} results)")
    if status["state"] != "running":
        break
    time.sleep(0.25)

# 3. Read the results (the endpoint's ticket streams every result written so far).
results = client.do_get(info.endpoints[0].ticket, options=options).read_all()
print(results.select(["id", "status", "answer", "correct"]).slice(0, 5))

# Job stats (the job's report: statuses, accuracy, latency, tokens, cost per alias and backend)
# and cancellation are actions; the body is the job id.
stats = json.loads(next(client.do_action(flight.Action("job-stats", job_id.encode()),
                                         options=options)).body.to_pybytes())
report = stats["report"]
print("cost $%.4f over %d calls; accuracy %s" % (report["cost_usd"], report["calls"], report["accuracy"]))
# client.do_action(flight.Action("cancel", job_id.encode()), options=options)
