//! What a new user hits in the first hour (issue 14), each reproduced with the real `tutti`
//! binary: an unreachable server stops the run before any task, with the OS's words; failed tasks
//! make the exit status non-zero and `--retry failed` re-runs exactly those; `--dry-run`,
//! `--limit` and `-` (stdin); an output format tutti does not write is refused; what pyarrow
//! makes of a list of dicts, extra columns passed through, and OpenAI batch JSON Lines in and out.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{pyarrow, run, sim_config, tutti, tutti_run, write_tasks};
use tutti_engine::io::read_results;
use tutti_engine::Status;

/// A loopback port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The simulated catalog with every expert alias on one `openai` backend at `endpoint`.
fn openai_config(dir: &Path, endpoint: &str) -> PathBuf {
    let text = format!(
        r#"
[orchestrator]
executor = "sim"
max_turns = 4

[orchestrator.sim]
output_tokens = {{ p50 = 10, p99 = 10 }}

[[backends]]
name = "local"
kind = "openai"
endpoint = "{endpoint}"
model = "gemma-3-270m"

[aliases]
small = "local"

[[tools]]
name = "answer"
aliases = ["small"]
"#
    );
    let path = dir.join("openai.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The simulated catalog where every orchestrator call is malformed (`rate` 1) or none is (0):
/// with 1, every task fails after `max_malformed_calls` in a row.
fn malformed_config(dir: &Path, rate: f64) -> PathBuf {
    let base = sim_config(dir, 0.0, 64);
    let text = std::fs::read_to_string(&base).unwrap();
    let rate_line = format!("malformed_rate = {rate}");
    let text = text.replace("malformed_rate = 0.005", &rate_line);
    assert!(text.contains(&rate_line));
    let path = dir.join(format!("malformed-{rate}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn an_unreachable_server_stops_the_run_before_any_task_with_the_os_words() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("t.jsonl");
    write_tasks(&tasks, 50);
    let out = dir.path().join("mine.parquet");
    let config = openai_config(
        dir.path(),
        &format!("http://127.0.0.1:{}/v1", closed_port()),
    );

    let (o, err) = run(&mut tutti_run(&tasks, &out, &config));
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("Connection refused"), "{err}");
    assert!(
        err.contains("backend `local` (openai, http://127.0.0.1:"),
        "{err}"
    );
    assert!(err.contains("/v1/models"), "{err}");
    assert!(err.contains("no task was run"), "{err}");
    // Nothing was started, so nothing blocks the next run.
    assert!(!out.exists());
    assert!(!dir.path().join("mine.parquet.parts").exists());
}

#[test]
fn an_endpoint_without_a_scheme_is_refused_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("t.jsonl");
    write_tasks(&tasks, 1);
    let config = openai_config(dir.path(), "127.0.0.1:9");
    let (o, err) = run(&mut tutti_run(
        &tasks,
        &dir.path().join("o.parquet"),
        &config,
    ));
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("backends[0].endpoint"), "{err}");
    assert!(
        err.contains("it has no scheme (write http://127.0.0.1:9)"),
        "{err}"
    );
}

#[test]
fn failed_tasks_fail_the_exit_status_and_retry_failed_reruns_exactly_them() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("t.jsonl");
    write_tasks(&tasks, 40);
    let out = dir.path().join("out.parquet");

    // Every orchestrator reply is malformed: every task fails, and says why.
    let broken = malformed_config(dir.path(), 1.0);
    let (o, err) = run(&mut tutti_run(&tasks, &out, &broken));
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(" × 3 malformed tool calls in a row"), "{err}");
    assert!(err.contains("statuses   failed 40"), "{err}");
    assert!(err.contains("--retry failed"), "{err}");
    let rows = read_results(&out).unwrap();
    assert_eq!(rows.len(), 40);
    assert!(rows.iter().all(|r| r.status == Status::Failed));
    // A task that did not answer is not graded.
    assert!(rows.iter().all(|r| r.correct.is_none()), "{rows:?}");

    // --resume alone counts them as done.
    let fixed = malformed_config(dir.path(), 0.0);
    let (o, err) = run(tutti_run(&tasks, &out, &fixed).arg("--resume"));
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("(0 run now, 40 already done)"), "{err}");

    // --retry failed runs those again; their rows are replaced, one row per id.
    let (o, err) = run(tutti_run(&tasks, &out, &fixed).args(["--retry", "failed"]));
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("(40 run now, 0 already done)"), "{err}");
    let rows = read_results(&out).unwrap();
    let mut ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((rows.len(), ids.len()), (40, 40));
    assert!(rows.iter().all(|r| r.status != Status::Failed), "{rows:?}");

    let (o, err) = run(tutti_run(&tasks, &out, &fixed).args(["--retry", "failed,lost"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("--retry: unknown status `lost`; expected some of answered, max_turns"),
        "{err}"
    );
}

#[test]
fn dry_run_checks_everything_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("t.jsonl");
    write_tasks(&tasks, 30);
    let out = dir.path().join("out.parquet");
    let config = sim_config(dir.path(), 0.0, 64);
    let (o, err) = run(tutti_run(&tasks, &out, &config).arg("--dry-run"));
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("dry run: the config and 30 tasks are valid; 30 would run now"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "the tasks and the config"
    );
    assert!(!out.exists());
}

#[test]
fn limit_and_stdin_and_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("t.jsonl");
    write_tasks(&tasks, 30);
    let out = dir.path().join("out.parquet");
    let config = sim_config(dir.path(), 0.0, 64);
    let mut child = tutti()
        .args(["run", "-", "-q", "--limit", "7", "-o"])
        .arg(&out)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let text = std::fs::read(&tasks).unwrap();
    child.stdin.take().unwrap().write_all(&text).unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(err, "", "-q prints nothing when all is well");
    let rows = read_results(&out).unwrap();
    let mut ids: Vec<String> = rows.into_iter().map(|r| r.id).collect();
    ids.sort();
    let first: Vec<String> = {
        let mut v: Vec<String> = (0..7).map(|i| format!("task-{i}")).collect();
        v.sort();
        v
    };
    assert_eq!(ids, first);
}

#[test]
fn an_output_format_tutti_does_not_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("t.jsonl");
    write_tasks(&tasks, 1);
    let config = sim_config(dir.path(), 0.0, 64);
    let out = dir.path().join("x.csv");
    let (o, err) = run(&mut tutti_run(&tasks, &out, &config));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains(
            "x.csv: tutti writes Parquet (.parquet) and JSON Lines (.jsonl, .ndjson); `.csv` is \
             neither"
        ),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn the_summary_reports_accuracy_throughput_latency_tokens_and_cost() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("t.jsonl");
    write_tasks(&tasks, 20);
    let out = dir.path().join("out.parquet");
    let config = sim_config(dir.path(), 0.0, 64);
    let (o, err) = run(&mut tutti_run(&tasks, &out, &config));
    assert_eq!(o.status.code(), Some(0), "{err}");
    for label in ["tasks", "accuracy", "latency", "tokens", "calls", "cost"] {
        assert!(
            err.lines().any(|l| l.trim_start().starts_with(label)),
            "no `{label}` line in:\n{err}"
        );
    }
    assert!(!err.contains(": ;"), "{err}");
    // The orchestrator's share of each task's cost is a column of its own.
    for r in read_results(&out).unwrap() {
        let calls: f64 = r.calls.iter().map(|c| c.cost_usd).sum();
        assert!(
            (r.cost_usd - calls - r.orchestrator_cost_usd).abs() < 1e-9,
            "{r:?}"
        );
        assert!(r.orchestrator_cost_usd > 0.0, "{r:?}");
    }
}

#[test]
fn a_missing_task_file_is_named_once_with_the_os_reason_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = sim_config(dir.path(), 0.0, 64);
    let missing = dir.path().join("nope.jsonl");
    let (o, err) = run(&mut tutti_run(
        &missing,
        &dir.path().join("o.parquet"),
        &config,
    ));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the OS's reason is said once: {err}"
    );
    assert!(err.contains("nope.jsonl"), "{err}");
}

#[test]
fn a_table_pyarrow_makes_from_a_list_of_dicts_is_accepted() {
    if !pyarrow() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("t.parquet");
    // Integer ids, and preference dicts (pyarrow infers a struct, with nulls where a dict lacks
    // a key), as a user's first `pa.Table.from_pylist` gives them.
    let script = r#"
import sys
import pyarrow as pa, pyarrow.parquet as pq
rows = [{"id": i, "prompt": f"What is {i} + 1?", "reference": str(i + 1),
         "preference": {"cost": 1.0} if i % 2 else {"latency": 0.5, "cost": -0.25}}
        for i in range(12)]
table = pa.Table.from_pylist(rows)
assert pa.types.is_struct(table.schema.field("preference").type), table.schema
assert pa.types.is_integer(table.schema.field("id").type), table.schema
pq.write_table(table, sys.argv[1])
"#;
    python(script, &[&tasks]);
    let out = dir.path().join("out.parquet");
    let config = sim_config(dir.path(), 0.0, 64);
    let (o, err) = run(&mut tutti_run(&tasks, &out, &config));
    assert_eq!(o.status.code(), Some(0), "{err}");
    let mut ids: Vec<u32> = read_results(&out)
        .unwrap()
        .iter()
        .map(|r| r.id.parse().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (0..12).collect::<Vec<_>>());
}

/// Runs a Python script with pyarrow, with `args`; fails the test with its stderr.
fn python(script: &str, args: &[&Path]) -> String {
    let o = std::process::Command::new("python3")
        .args(["-c", script])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn extra_columns_pass_through_with_the_input_index_as_pyarrow_users_expect() {
    if !pyarrow() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("t.parquet");
    python(
        r#"
import sys
import pyarrow as pa, pyarrow.parquet as pq
rows = [{"id": f"q{i}", "prompt": f"What is {i} + 1?", "category": ["easy", "hard"][i % 2],
         "difficulty": i, "budget": 1.0} for i in range(16)]
pq.write_table(pa.Table.from_pylist(rows), sys.argv[1])
"#,
        &[&tasks],
    );
    let config = sim_config(dir.path(), 0.0, 64);
    for name in ["out.parquet", "out.jsonl"] {
        let out = dir.path().join(name);
        let (o, err) = run(&mut tutti_run(&tasks, &out, &config));
        assert_eq!(o.status.code(), Some(0), "{err}");
        assert!(
            err.contains(
                "passing these input columns through to the results: category, difficulty, \
                 budget (did you mean `budget_usd`?)"
            ),
            "{err}"
        );
        // What a pyarrow user does next: read, put in input order, use the columns they gave.
        let said = python(
            r#"
import sys, json
import pyarrow as pa, pyarrow.parquet as pq, pyarrow.json as pj
path = sys.argv[1]
t = pq.read_table(path) if path.endswith(".parquet") else pj.read_json(path)
t = t.sort_by("input_index")
assert t.column("id").to_pylist() == [f"q{i}" for i in range(16)], t.column("id")
assert t.column("category").to_pylist() == [["easy", "hard"][i % 2] for i in range(16)]
assert t.column("difficulty").to_pylist() == list(range(16))
traj = t.schema.field("trajectory").type
assert pa.types.is_list(traj) and pa.types.is_struct(traj.value_type), traj
first = t.column("trajectory")[0].as_py()
assert first[0]["role"] == "user" and "What is 0 + 1?" in first[0]["content"], first
print(t.num_rows)
"#,
            &[&out],
        );
        assert_eq!(said.trim(), "16", "{name}");
    }
}

#[test]
fn openai_batch_jsonl_in_gives_one_output_line_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("batch.jsonl");
    let mut text = String::new();
    for i in 0..12 {
        text.push_str(&format!(
            "{{\"custom_id\": \"request-{i}\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\", \
             \"body\": {{\"model\": \"any\", \"messages\": [{{\"role\": \"system\", \"content\": \"Be brief.\"}}, \
             {{\"role\": \"user\", \"content\": \"What is {i} + 1?\"}}]}}}}\n"
        ));
    }
    std::fs::write(&tasks, text).unwrap();
    let out = dir.path().join("out.jsonl");
    let config = sim_config(dir.path(), 0.0, 64);
    let (o, err) = run(&mut tutti_run(&tasks, &out, &config));
    assert_eq!(o.status.code(), Some(0), "{err}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    ids.sort_by_key(|id| id[8..].parse::<u32>().unwrap());
    let want: Vec<String> = (0..12).map(|i| format!("request-{i}")).collect();
    assert_eq!(ids, want);
    for line in &lines {
        match line["error"].is_null() {
            true => {
                let body = &line["response"]["body"];
                assert_eq!(line["response"]["status_code"], 200, "{line}");
                assert_eq!(body["object"], "chat.completion");
                assert!(
                    body["choices"][0]["message"]["content"].is_string(),
                    "{line}"
                );
            }
            false => {
                assert!(line["response"].is_null(), "{line}");
                assert!(line["error"]["code"].is_string(), "{line}");
            }
        }
    }
    // The same file resumes: nothing is left to run, and every line is kept.
    let (o, err) = run(tutti_run(&tasks, &out, &config).arg("--resume"));
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("(0 run now, 12 already done)"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 12);
}

#[test]
fn a_vllm_rs_backend_is_refused_at_start_up_by_the_command_which_hosts_no_python() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("t.jsonl");
    write_tasks(&tasks, 2);
    // The simulated catalog with its `gpt-5` backend on vllm-rs instead.
    let text = std::fs::read_to_string(sim_config(dir.path(), 0.001, 16)).unwrap();
    let gpt5 = "name = \"gpt-5\"\nkind = \"sim\"\nmodel = \"gpt-5\"";
    assert!(text.contains(gpt5));
    let text = text.replace(
        gpt5,
        "name = \"gpt-5\"\nkind = \"vllm-rs\"\nmodel = \"/models/gpt\"",
    );
    let (head, tail) = text.split_once("name = \"gpt-5\"").unwrap();
    // Its `[backends.sim]` table belongs to the sim kind: drop it.
    let (sim_table, rest) = tail.split_once("\n[[backends]]").unwrap();
    let kept: String = sim_table
        .split("[backends.sim]")
        .next()
        .unwrap()
        .to_string();
    let config = dir.path().join("vllm-rs.toml");
    std::fs::write(
        &config,
        format!("{head}name = \"gpt-5\"{kept}\n[[backends]]{rest}"),
    )
    .unwrap();

    let out = dir.path().join("o.parquet");
    let (o, err) = run(&mut tutti_run(&tasks, &out, &config));
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("backend `gpt-5`"), "{err}");
    assert!(
        err.contains("this process hosts no Python interpreter")
            && err.contains("tutti.Engine(config)"),
        "{err}"
    );
    assert!(!out.exists());
}
