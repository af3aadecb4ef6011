"""Round trip through a running tutti server with pyarrow.flight, as a Python user would do it.

    python3 flight_round_trip.py URL TOKEN N

Submits N tasks, polls FlightInfo until progress reaches 1.0, reads the results with DoGet and
checks that every id comes back exactly once in the result schema. Also checks that a wrong token
is refused as unauthenticated. Prints one JSON summary line; exits non-zero on any failure.
"""

import json
import sys
import time

import pyarrow as pa
import pyarrow.flight as flight

url, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = flight.FlightClient(url)
auth = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])

# A wrong token is refused before anything happens.
bad = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer not-the-token")])
try:
    list(client.list_flights(options=bad))
    sys.exit("a wrong token was accepted")
except flight.FlightUnauthenticatedError as e:
    assert "wrong bearer token" in str(e), e

ids = [f"py-{i}" for i in range(n)]
tasks = pa.table({
    "id": ids,
    "prompt": [f"What is {i % 97} + {i % 89}?" for i in range(n)],
    "reference": [str(i % 97 + i % 89) for i in range(n)],
    "metadata": [json.dumps({"i": i}) for i in range(n)],
})
descriptor = flight.FlightDescriptor.for_command(json.dumps({"name": "pyarrow round trip"}))
t0 = time.time()
writer, reader = client.do_put(descriptor, tasks.schema, options=auth)
writer.write_table(tasks, max_chunksize=2048)
writer.done_writing()
ack = json.loads(reader.read().to_pybytes())
writer.close()
job_id = ack["job_id"]
assert ack["tasks"] == n, ack

path = flight.FlightDescriptor.for_path("jobs", job_id)
seen_progress = []
while True:
    info = client.get_flight_info(path, options=auth)
    status = json.loads(info.app_metadata)
    seen_progress.append(status["progress"])
    assert info.total_records == status["rows"], (info.total_records, status)
    if status["progress"] >= 1.0:
        break
    assert status["state"] == "running", status
    time.sleep(0.1)
assert seen_progress == sorted(seen_progress), "progress went backwards"
# Progress reaches 1.0 when the last row is durable; the state follows a moment later.
while status["state"] == "running":
    time.sleep(0.05)
    status = json.loads(client.get_flight_info(path, options=auth).app_metadata)
assert status["state"] == "done", status
assert sum(status["counts"].values()) == n, status

table = client.do_get(info.endpoints[0].ticket, options=auth).read_all()
expected = {
    "id": pa.string(), "status": pa.string(), "answer": pa.string(), "correct": pa.bool_(),
    "turns": pa.int32(), "cost_usd": pa.float64(), "latency_ms": pa.int64(),
    "orchestrator_tokens": pa.int64(), "error": pa.string(), "metadata": pa.string(),
}
for name, kind in expected.items():
    assert table.schema.field(name).type == kind, (name, table.schema.field(name).type)
calls = table.schema.field("calls").type
assert pa.types.is_list(calls) and pa.types.is_struct(calls.value_type), calls
trajectory = table.schema.field("trajectory").type
assert pa.types.is_list(trajectory), trajectory
assert [f.name for f in trajectory.value_type] == ["role", "content", "tokens"], trajectory
assert table.num_rows == n, table.num_rows
got = table.column("id").to_pylist()
assert len(set(got)) == n and set(got) == set(ids), "ids differ"
meta = dict(zip(got, table.column("metadata").to_pylist()))
assert json.loads(meta["py-7"]) == {"i": 7}, meta["py-7"]

jobs = [json.loads(i.app_metadata)["job_id"] for i in client.list_flights(options=auth)]
assert job_id in jobs, jobs
actions = {a.type for a in client.list_actions(options=auth)}
assert {"cancel", "job-stats", "CancelFlightInfo"} <= actions, actions
stats = json.loads(next(client.do_action(flight.Action("job-stats", job_id.encode()),
                                         options=auth)).body.to_pybytes())
assert stats["report"]["tasks"] == n, stats["report"]

print(json.dumps({"job_id": job_id, "rows": table.num_rows, "statuses": status["counts"],
                  "polls": len(seen_progress), "seconds": round(time.time() - t0, 2)}))
