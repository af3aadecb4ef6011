//! The TOML configuration: what the orchestrator is, which tools it sees, which backends serve the
//! aliases, and the cache. Every error names the file, the key and what was expected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod backend;
mod locate;
mod validate;
pub use backend::*;
use locate::KeyPath;

/// A configuration error: where (file, key, line and column when known) and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{origin}{location}: {message}")]
pub struct ConfigError {
    origin: String,
    location: String,
    message: String,
}

impl ConfigError {
    /// An error at byte `offset` of `text`: its line and column, then the key.
    fn at(origin: &str, text: &str, offset: usize, key: &str, message: String) -> Self {
        ConfigError {
            origin: origin.to_string(),
            location: format!("{}: key `{key}`", line_col(text, offset)),
            message,
        }
    }
}

/// A config's text and where it came from: what an error found after parsing needs to name the
/// file, the line and column, and the key.
pub(crate) struct Source<'a> {
    origin: &'a str,
    text: &'a str,
    doc: Option<toml::Spanned<toml::de::DeTable<'a>>>,
}

impl<'a> Source<'a> {
    fn new(origin: &'a str, text: &'a str) -> Source<'a> {
        Source {
            origin,
            text,
            doc: toml::de::DeTable::parse(text).ok(),
        }
    }

    /// An error at the key `path`: its line and column when it is written, else those of the
    /// nearest enclosing key (its default is what is wrong).
    pub(crate) fn error(
        &self,
        path: impl Into<KeyPath>,
        message: impl Into<String>,
    ) -> ConfigError {
        let path = path.into();
        let at = self
            .doc
            .as_ref()
            .and_then(|d| locate::offset(d.get_ref(), &path))
            .map_or_else(String::new, |offset| line_col(self.text, offset));
        ConfigError {
            origin: self.origin.to_string(),
            location: format!("{at}: key `{path}`"),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub orchestrator: OrchestratorConfig,
    #[serde(default)]
    pub simulation: SimulationConfig,
    #[serde(default)]
    pub tools: Vec<ToolConfig>,
    /// alias -> backend name.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    pub backends: Vec<BackendConfig>,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub grading: GradingConfig,
    /// A stateful environment (an `openenv` backend) with one session per episode: its function
    /// tools join the catalog's, and its `done` ends the episode with a reward.
    pub environment: Option<EnvironmentConfig>,
}

/// The environment of every episode, and the simulated user the orchestrator talks to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentConfig {
    /// A backend of kind `openenv`.
    pub backend: String,
    /// The function through which the orchestrator talks to the user: one string argument,
    /// `content`.
    #[serde(default = "defaults::user_tool")]
    pub user_tool: String,
    /// The alias whose model plays the user, prompted with the task's `user` scenario and the
    /// conversation. Without one, messages to the user are recorded and get no reply (replays).
    pub user_alias: Option<String>,
    /// What the user's model is told; `{scenario}` and `{conversation}` are filled in.
    pub user_prompt: Option<String>,
    /// Send the conversation's text messages to the environment as `message` steps (it scores
    /// them and may end the episode on the user's stop signal).
    #[serde(default = "defaults::yes")]
    pub record_messages: bool,
    /// Native executor: tokens a function call may take, `<tool_call>` to `</tool_call>`, on top
    /// of `orchestrator.max_tokens` of free text.
    #[serde(default = "defaults::max_call_tokens")]
    pub max_call_tokens: u32,
    /// Native executor: the longest string argument its call grammar admits (a schema's own
    /// `maxLength` wins when smaller), so that every call can close within `max_call_tokens`.
    #[serde(default = "defaults::max_string_chars")]
    pub max_string_chars: u32,
}

/// How answers are graded against a task's reference.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GradingConfig {
    /// An alias whose model judges whether an answer matches the reference (as ToolOrchestra
    /// grades with GPT-5), billed like any call. Without one: normalised exact match.
    pub judge: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    Native,
    Openai,
    Sim,
    /// Plays the calls recorded in each task (its `replay` column).
    Replay,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrchestratorConfig {
    pub executor: ExecutorKind,
    /// Model file (native) or model name (openai).
    pub model: Option<String>,
    pub endpoint: Option<String>,
    #[serde(default = "defaults::max_turns")]
    pub max_turns: u32,
    /// Episodes running at once; further tasks wait for a slot.
    #[serde(default = "defaults::max_live_tasks")]
    pub max_live_tasks: usize,
    /// Sequences in one batched decode step.
    #[serde(default = "defaults::max_seqs")]
    pub max_seqs: usize,
    /// Tokens (decode tokens plus prefill chunks) in one batched step.
    #[serde(default = "defaults::max_batched_tokens")]
    pub max_batched_tokens: usize,
    pub kv_cache_bytes: Option<u64>,
    #[serde(default = "defaults::one")]
    pub temperature: f64,
    #[serde(default = "defaults::one")]
    pub top_p: f64,
    #[serde(default)]
    pub top_k: usize,
    /// Malformed or unresolvable tool calls in a row before the task fails.
    #[serde(default = "defaults::max_malformed_calls")]
    pub max_malformed_calls: u32,
    /// Budget of a task that brings none; unlimited when absent.
    pub default_budget_usd: Option<f64>,
    /// How strongly a task's preference weights shift the action scores (logit units per unit weight).
    #[serde(default = "defaults::preference_scale")]
    pub preference_scale: f64,
    /// The price of the orchestrator's own tokens.
    #[serde(default)]
    pub price_in_per_mtok: f64,
    #[serde(default)]
    pub price_out_per_mtok: f64,
    /// Cost model and behaviour of the `sim` executor.
    pub sim: Option<SimExecutorConfig>,
    /// `openai` executor: how to reach the server (as for `openai` backends).
    pub endpoint_env: Option<String>,
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub api: OpenAiApi,
    pub chat_template: Option<String>,
    /// Send the server a GBNF grammar that admits exactly one valid tool call of the catalog
    /// (llama.cpp's `grammar` field), so every call a small model emits parses.
    #[serde(default)]
    pub grammar: bool,
    /// `history` (the conversation grows turn by turn; the server's KV prefix stays reusable) or
    /// `toolorchestra` (the prompt Orchestrator-8B was trained on, rebuilt every turn).
    #[serde(default)]
    pub prompt_strategy: PromptStrategy,
    /// Tokens each part (documents, code, attempts) of a `toolorchestra` prompt keeps.
    #[serde(default = "defaults::prompt_part_tokens")]
    pub prompt_part_tokens: u32,
    /// Tokens the orchestrator may write per turn.
    #[serde(default = "defaults::orchestrator_max_tokens")]
    pub max_tokens: u32,
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub retries: u32,
}

/// The `sim` executor: a workload model of an orchestrator for benchmarks, not a model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimExecutorConfig {
    /// Step time = base_ms + per_seq_ms * batch size + per_prefill_token_ms * prefill tokens.
    #[serde(default)]
    pub base_ms: f64,
    #[serde(default)]
    pub per_seq_ms: f64,
    #[serde(default)]
    pub per_prefill_token_ms: f64,
    /// Tokens the orchestrator decodes per turn.
    pub output_tokens: Dist,
    /// Base score of each tool before preference and budget shaping.
    #[serde(default)]
    pub tool_logits: BTreeMap<String, f64>,
    /// Added to the `answer` tool's score per turn already taken, so episodes end.
    #[serde(default = "defaults::answer_logit_per_turn")]
    pub answer_logit_per_turn: f64,
    /// Share of turns whose tool call is emitted malformed.
    #[serde(default)]
    pub malformed_rate: f64,
}

/// Shared settings of every simulated part.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulationConfig {
    #[serde(default)]
    pub seed: u64,
    /// Multiplies every simulated duration: 0.001 turns ToolOrchestra's 22 s into 22 ms.
    #[serde(default = "defaults::one")]
    pub time_scale: f64,
}

impl Default for SimulationConfig {
    fn default() -> Self {
        SimulationConfig {
            seed: 0,
            time_scale: 1.0,
        }
    }
}

/// A distribution given by its median and 99th percentile (lognormal; fixed when they are equal).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dist {
    pub p50: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The values of the tool's `model` argument.
    pub aliases: Vec<String>,
    /// Prompt sent to the chosen model; `{problem}` and `{context}` are filled in.
    pub prompt: Option<String>,
    /// A backend (`retrieval` or `python`) that runs what the chosen model wrote: its query, or
    /// its code. The observation is that backend's answer. Without it, the model's reply is the
    /// observation.
    pub then: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    Openai,
    Native,
    Python,
    Retrieval,
    Sim,
    VllmRs,
    /// An OpenEnv environment: a WebSocket session per episode (`endpoint`: its base URL).
    Openenv,
}

impl BackendKind {
    /// The kind as a config writes it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BackendKind::Openai => "openai",
            BackendKind::Native => "native",
            BackendKind::Python => "python",
            BackendKind::Retrieval => "retrieval",
            BackendKind::Sim => "sim",
            BackendKind::VllmRs => "vllm-rs",
            BackendKind::Openenv => "openenv",
        }
    }
}

/// How the `openai` executor builds its prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PromptStrategy {
    #[default]
    History,
    Toolorchestra,
}

/// How an `openai` backend sends its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OpenAiApi {
    #[default]
    Chat,
    Completions,
}

/// Which results of a backend may be cached (and which identical in-flight calls may be collapsed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CachePolicy {
    Off,
    /// Only requests whose result is a function of the request (e.g. temperature 0).
    #[default]
    Deterministic,
    Always,
}

/// A simulated backend: a workload model for benchmarks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimBackendConfig {
    /// Latency of a call, before `time_scale`.
    pub latency_ms: Dist,
    /// Per-tool latency, where a model is slower at one tool than another.
    #[serde(default)]
    pub tool_latency_ms: BTreeMap<String, Dist>,
    pub output_tokens: Dist,
    /// Probability that an `answer` is right.
    #[serde(default = "defaults::one")]
    pub accuracy: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default = "defaults::cache_entries")]
    pub max_entries: usize,
    #[serde(default = "defaults::cache_bytes")]
    pub max_bytes: usize,
    /// Directory of the persistent tier; memory only when absent. Relative to the config file.
    pub path: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: defaults::cache_entries(),
            max_bytes: defaults::cache_bytes(),
            path: None,
        }
    }
}

mod defaults {
    pub(super) fn max_call_tokens() -> u32 {
        1024
    }
    pub(super) fn max_string_chars() -> u32 {
        512
    }
    pub(super) fn user_tool() -> String {
        "respond".into()
    }
    pub(super) fn yes() -> bool {
        true
    }
    pub(super) fn max_turns() -> u32 {
        8
    }
    pub(super) fn max_live_tasks() -> usize {
        1024
    }
    pub(super) fn max_seqs() -> usize {
        256
    }
    pub(super) fn max_batched_tokens() -> usize {
        8192
    }
    pub(super) fn one() -> f64 {
        1.0
    }
    pub(super) fn temperature_zero() -> f64 {
        0.0
    }
    pub(super) fn max_malformed_calls() -> u32 {
        3
    }
    pub(super) fn preference_scale() -> f64 {
        2.0
    }
    pub(super) fn answer_logit_per_turn() -> f64 {
        0.7
    }
    pub(super) fn max_concurrency() -> usize {
        64
    }
    pub(super) fn max_batch() -> usize {
        8
    }
    pub(super) fn max_tokens() -> u32 {
        1024
    }
    pub(super) fn expected_input_tokens() -> u32 {
        1000
    }
    pub(super) fn prompt_part_tokens() -> u32 {
        1000
    }
    pub(super) fn orchestrator_max_tokens() -> u32 {
        512
    }
    pub(super) fn retry_base_ms() -> u64 {
        200
    }
    pub(super) fn breaker_failures() -> u32 {
        5
    }
    pub(super) fn breaker_cooldown_ms() -> u64 {
        5000
    }
    pub(super) fn top_k() -> usize {
        3
    }
    pub(super) fn passage_chars() -> usize {
        800
    }
    pub(super) fn sandbox_memory_mb() -> u64 {
        1024
    }
    pub(super) fn sandbox_output_bytes() -> usize {
        64 << 10
    }
    pub(super) fn cache_entries() -> usize {
        200_000
    }
    pub(super) fn cache_bytes() -> usize {
        256 << 20
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            location: String::new(),
            message: format!("cannot read the config: {e}"),
        })?;
        let mut cfg = Config::parse(&text, &origin)?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(p) = &cfg.cache.path {
            if p.is_relative() {
                cfg.cache.path = Some(base.join(p));
            }
        }
        for b in &mut cfg.backends {
            if let BackendSettings::Retrieval(r) = &mut b.settings {
                if let Some(p) = &r.index {
                    if p.is_relative() {
                        r.index = Some(base.join(p));
                    }
                }
            }
        }
        // Model files of in-process models are relative to the config too.
        let relative = |m: &mut Option<String>| {
            if let Some(p) = m.as_deref() {
                if Path::new(p).is_relative() {
                    *m = Some(base.join(p).to_string_lossy().into_owned());
                }
            }
        };
        if cfg.orchestrator.executor == ExecutorKind::Native {
            relative(&mut cfg.orchestrator.model);
        }
        for b in &mut cfg.backends {
            if let BackendSettings::Native(m) = &mut b.settings {
                relative(&mut m.model);
            }
        }
        Ok(cfg)
    }

    /// Expands a leading `~/` in the model paths of in-process models to `$HOME`.
    fn expand_home(&mut self) {
        let Some(home) = std::env::var_os("HOME") else {
            return;
        };
        let expand = |m: &mut Option<String>| {
            if let Some(rest) = m.as_deref().and_then(|p| p.strip_prefix("~/")) {
                *m = Some(Path::new(&home).join(rest).to_string_lossy().into_owned());
            }
        };
        if self.orchestrator.executor == ExecutorKind::Native {
            expand(&mut self.orchestrator.model);
        }
        for b in &mut self.backends {
            if let BackendSettings::Native(m) = &mut b.settings {
                expand(&mut m.model);
            }
        }
    }

    /// Parses and validates config text; `origin` names it in errors (a path, or `<profile x>`).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        check_kind_keys(origin, text)?;
        let de = toml::Deserializer::parse(text).map_err(|e| toml_error(origin, text, "", &e))?;
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            toml_error(origin, text, &path, e.inner())
        })?;
        cfg.validate(&Source::new(origin, text))?;
        cfg.expand_home();
        Ok(cfg)
    }
}

/// The schemes an OpenAI-compatible server's base URL may have.
pub(crate) const HTTP: &[&str] = &["http", "https"];
/// The schemes an OpenEnv server's base URL may have (its sessions are WebSockets).
pub(crate) const HTTP_OR_WS: &[&str] = &["http", "https", "ws", "wss"];

/// The bundled configs: name -> text. `default` is what `tutti run` uses without `--config`; the
/// others are benchmark profiles.
pub const PROFILES: &[(&str, &str)] = &[
    ("default", include_str!("../../../configs/default.toml")),
    (
        "toolorchestra-sim",
        include_str!("../../../configs/toolorchestra-sim.toml"),
    ),
    (
        "control-plane",
        include_str!("../../../configs/control-plane.toml"),
    ),
];

/// The config of a bundled profile.
pub fn bundled(name: &str) -> Option<Config> {
    PROFILES.iter().find(|(n, _)| *n == name).map(|(n, text)| {
        Config::parse(text, &format!("<profile {n}>")).expect("bundled profiles are valid")
    })
}

/// The largest magnitude of a task's preference weight: times `preference_scale` (at most 100)
/// it stays a finite score, far from the limits of the `f32` the policy heads add it to.
pub const MAX_PREFERENCE_WEIGHT: f64 = 1000.0;

/// The tool that ends an episode with its answer.
pub(crate) const ANSWER_TOOL: &str = "answer";

/// Checks that `url` is an absolute URL with a host and one of `schemes`; the message says what
/// to write instead (`127.0.0.1:8080/v1` is not a URL: it needs `http://`).
pub(crate) fn check_endpoint(url: &str, schemes: &[&str]) -> Result<(), String> {
    let expected = || {
        let names: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
        format!(
            "expected a {} URL such as {}://127.0.0.1:8080/v1, found `{url}`",
            names.join(" or "),
            schemes[0]
        )
    };
    if !url.contains("://") {
        let guess = format!("{}://{url}", schemes[0]);
        return Err(match reqwest::Url::parse(&guess) {
            Ok(u) if u.host().is_some() => {
                format!("{}: it has no scheme (write {guess})", expected())
            }
            _ => format!("{}: it is not a URL", expected()),
        });
    }
    match reqwest::Url::parse(url) {
        Ok(u) if schemes.contains(&u.scheme()) && u.host().is_some() => Ok(()),
        Ok(_) => Err(expected()),
        Err(e) => Err(format!("{}: {e}", expected())),
    }
}

/// `:line:col` of byte `offset` of `text`, both counted from 1.
fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!(":{line}:{col}")
}

fn toml_error(origin: &str, text: &str, path: &str, e: &toml::de::Error) -> ConfigError {
    let mut location = String::new();
    if let Some(span) = e.span() {
        location.push_str(&line_col(text, span.start));
    }
    if !path.is_empty() && path != "." {
        location.push_str(&format!(": key `{path}`"));
    }
    ConfigError {
        origin: origin.to_string(),
        location,
        message: e.message().trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const MINIMAL: &str = r#"
[orchestrator]
executor = "sim"
[orchestrator.sim]
output_tokens = { p50 = 10, p99 = 10 }

[[tools]]
name = "answer"
aliases = ["a-1"]

[aliases]
a-1 = "m"

[[backends]]
name = "m"
kind = "sim"
[backends.sim]
latency_ms = { p50 = 1, p99 = 2 }
output_tokens = { p50 = 5, p99 = 9 }
"#;

    #[test]
    fn minimal_config_parses_with_defaults() {
        let cfg = Config::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(cfg.orchestrator.max_turns, 8);
        assert_eq!(cfg.backends[0].cache, CachePolicy::Deterministic);
        assert_eq!(cfg.simulation.time_scale, 1.0);
    }

    #[test]
    fn a_key_of_another_kind_is_refused_at_its_line_and_column() {
        let text = r#"
[orchestrator]
executor = "sim"
[orchestrator.sim]
output_tokens = { p50 = 10, p99 = 10 }

[[tools]]
name = "answer"
aliases = ["a-1"]

[aliases]
a-1 = "m"

[[backends]]
name = "m"
kind = "openai"
endpoint = "http://127.0.0.1:8000/v1"
  top_k = 5
"#;
        let e = Config::parse(text, "t.toml").unwrap_err().to_string();
        assert_eq!(
            e,
            "t.toml:18:3: key `backends[0].top_k`: `top_k` is not a key of `openai` backends \
             (it is one of `retrieval`)"
        );
        // The same key on its own kind is accepted.
        let ok = text
            .replace("kind = \"openai\"", "kind = \"retrieval\"")
            .replace("endpoint = \"http://127.0.0.1:8000/v1\"", "index = \"idx\"");
        let cfg = Config::parse(&ok, "t.toml").unwrap();
        let BackendSettings::Retrieval(r) = &cfg.backends[0].settings else {
            panic!("a retrieval backend");
        };
        assert_eq!(r.top_k, 5);
    }

    #[test]
    fn a_sim_backend_without_its_table_is_refused_at_the_table() {
        let text = MINIMAL.replace("[backends.sim]", "[backends.unused]");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:"), "{e}");
        let cut = MINIMAL.find("[backends.sim]").unwrap();
        let e2 = Config::parse(&MINIMAL[..cut], "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e2.contains("key `backends[0]`") && e2.contains("needs a [backends.sim] table"),
            "{e2}"
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = MINIMAL.replace("kind = \"sim\"", "kind = \"sim\"\nmax_batchh = 3");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:"), "{e}");
        assert!(e.contains("max_batchh"), "{e}");
        assert!(e.contains("backends[0]"), "{e}");
        assert!(e.contains(":17:1:"), "line and column missing: {e}");
    }

    #[test]
    fn wrong_type_names_key_and_expectation() {
        let text = MINIMAL.replace(
            "executor = \"sim\"",
            "executor = \"sim\"\nmax_turns = \"many\"",
        );
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("orchestrator.max_turns"), "{e}");
        assert!(e.contains("expected"), "{e}");
    }

    #[test]
    fn bad_enum_value_lists_the_choices() {
        let text = MINIMAL.replace("kind = \"sim\"", "kind = \"grpc\"");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("backends[0].kind"), "{e}");
        assert!(e.contains("openai"), "{e}");
    }

    #[test]
    fn dangling_alias_is_reported_at_its_key() {
        let text = MINIMAL.replace("a-1 = \"m\"", "a-1 = \"nope\"");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert_eq!(
            e,
            "t.toml:12:1: key `aliases.a-1`: no backend named `nope` in [[backends]]"
        );
    }

    #[test]
    fn tool_alias_must_exist() {
        let text = MINIMAL.replace("aliases = [\"a-1\"]", "aliases = [\"a-1\", \"a-2\"]");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            e.contains("tools[0].aliases[1]") && e.contains("a-2"),
            "{e}"
        );
    }

    /// `MINIMAL` with `line` inserted after the first line that is `after` (or appended), parsed:
    /// the error must name the inserted line (its last line when it has several) and `key`.
    fn refused_at(after: Option<&str>, line: &str, key: &str) -> String {
        let text = match after {
            Some(a) => MINIMAL.replacen(&format!("{a}\n"), &format!("{a}\n{line}\n"), 1),
            None => format!("{MINIMAL}{line}\n"),
        };
        assert_ne!(text, MINIMAL, "{after:?} is a line of MINIMAL");
        let last = line.lines().last().unwrap();
        let at = text.find(&format!("\n{last}\n")).unwrap() + 1;
        let line_no = text[..at].matches('\n').count() + 1;
        let e = Config::parse(&text, "t.toml")
            .err()
            .unwrap_or_else(|| panic!("`{line}` was accepted"))
            .to_string();
        let (place, rest) = e.split_once(": key ").unwrap_or_else(|| panic!("{e}"));
        assert!(
            place.starts_with(&format!("t.toml:{line_no}:"))
                && rest.starts_with(&format!("`{key}`: ")),
            "`{line}` should be refused at line {line_no}, key `{key}`: {e}"
        );
        e
    }

    /// The values a hostile probe found accepted (issue 19, B5), each refused at its own line and
    /// key, and the two cross-reference errors that named the wrong key.
    #[test]
    fn values_that_validated_but_misbehaved_are_refused_at_their_line_and_key() {
        let orchestrator = Some("executor = \"sim\"");
        let backend = Some("kind = \"sim\"");
        let cases: &[(Option<&str>, &str, &str)] = &[
            (
                None,
                "[simulation]\ntime_scale = 1e300",
                "simulation.time_scale",
            ),
            (
                orchestrator,
                "price_in_per_mtok = -1.0",
                "orchestrator.price_in_per_mtok",
            ),
            (
                orchestrator,
                "default_budget_usd = -1",
                "orchestrator.default_budget_usd",
            ),
            (orchestrator, "temperature = -1", "orchestrator.temperature"),
            (
                orchestrator,
                "temperature = 1e-30",
                "orchestrator.temperature",
            ),
            (
                orchestrator,
                "preference_scale = -1e300",
                "orchestrator.preference_scale",
            ),
            (orchestrator, "max_seqs = 0", "orchestrator.max_seqs"),
            (
                orchestrator,
                "max_live_tasks = 0",
                "orchestrator.max_live_tasks",
            ),
            (
                orchestrator,
                "max_malformed_calls = 0",
                "orchestrator.max_malformed_calls",
            ),
            (orchestrator, "timeout_ms = 0", "orchestrator.timeout_ms"),
            (
                Some("[orchestrator.sim]"),
                "base_ms = 1e300",
                "orchestrator.sim.base_ms",
            ),
            (
                backend,
                "max_concurrency = 0",
                "backends[0].max_concurrency",
            ),
            (backend, "max_batch = 0", "backends[0].max_batch"),
            (
                backend,
                "price_per_call = -0.5",
                "backends[0].price_per_call",
            ),
            (backend, "temperature = -1", "backends[0].temperature"),
            (backend, "cache_ttl_s = 1e300", "backends[0].cache_ttl_s"),
            (
                backend,
                "max_wait_ms = 100000000000",
                "backends[0].max_wait_ms",
            ),
            (
                backend,
                "expected_latency_ms = -1",
                "backends[0].expected_latency_ms",
            ),
            (
                Some("[backends.sim]"),
                "accuracy = 2",
                "backends[0].sim.accuracy",
            ),
            (
                None,
                "[[backends]]\nname = \"py\"\nkind = \"python\"\nmemory_mb = 0",
                "backends[1].memory_mb",
            ),
            (
                None,
                "[[backends]]\nname = \"py\"\nkind = \"python\"\ntimeout_ms = 0",
                "backends[1].timeout_ms",
            ),
            (
                None,
                "[[backends]]\nname = \"py\"\nkind = \"python\"\nmax_output_bytes = 0",
                "backends[1].max_output_bytes",
            ),
            (
                None,
                "[[backends]]\nname = \"o\"\nkind = \"openai\"\nendpoint = \"not a url\"",
                "backends[1].endpoint",
            ),
            (
                None,
                "[[backends]]\nname = \"o\"\nkind = \"openai\"\nstop = [\"\"]",
                "backends[1].stop[0]",
            ),
        ];
        for (after, line, key) in cases {
            refused_at(*after, line, key);
        }
        let e = refused_at(
            None,
            "[[backends]]\nname = \"o\"\nkind = \"openai\"\nendpoint = \"not a url\"",
            "backends[1].endpoint",
        );
        assert!(e.contains("it is not a URL"), "{e}");
    }

    #[test]
    fn a_distribution_too_wide_for_a_duration_is_refused() {
        let text = MINIMAL.replace("p50 = 1, p99 = 2", "p50 = 1, p99 = 1e300");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("t.toml:18:1: key `backends[0].sim.latency_ms`: expected 0 < p50"),
            "{e}"
        );
    }

    #[test]
    fn a_cross_reference_names_the_key_that_refers_at_its_line() {
        let text = MINIMAL.replace(
            "aliases = [\"a-1\"]",
            "aliases = [\"a-1\"]\nthen = \"nope\"",
        );
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert_eq!(
            e,
            "t.toml:10:1: key `tools[0].then`: no backend named `nope` in [[backends]]"
        );
    }

    #[test]
    fn bad_distribution_is_rejected() {
        let text = MINIMAL.replace("p50 = 1, p99 = 2", "p50 = 3, p99 = 2");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("backends[0].sim.latency_ms"), "{e}");
    }

    #[test]
    fn bundled_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 3);
    }
}
