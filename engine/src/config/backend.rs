//! `[[backends]]`: the keys every kind shares, and each kind's own keys in its own type.
//!
//! A backend table is read as [`BackendTable`] (every key of every kind, unknown keys refused by
//! serde with their line and column), then [`check_kind_keys`] refuses a key that belongs to
//! another kind (`index` on an `openai` backend) at the key's own line and column, and the table
//! becomes a [`BackendConfig`] whose [`BackendSettings`] hold only the kind's keys.

use std::path::PathBuf;

use serde::Deserialize;

use super::{defaults, BackendKind, CachePolicy, ConfigError, OpenAiApi, SimBackendConfig};

/// One `[[backends]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "BackendTable")]
pub struct BackendConfig {
    pub name: String,
    /// The kind and its own keys.
    pub settings: BackendSettings,
    pub price_in_per_mtok: f64,
    pub price_out_per_mtok: f64,
    pub price_per_call: f64,
    pub price_per_second: f64,
    pub max_concurrency: usize,
    pub max_batch: usize,
    pub max_wait_ms: u64,
    /// Consecutive failed calls that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker stays open before letting one probe call through.
    pub breaker_cooldown_ms: u64,
    /// Alias used while this backend is unavailable.
    pub fallback: Option<String>,
    pub cache: CachePolicy,
    pub cache_ttl_s: Option<f64>,
    /// Used to price an alias before calling it (budget masking, cost preference).
    pub expected_input_tokens: u32,
    pub expected_output_tokens: Option<u32>,
    pub expected_latency_ms: Option<f64>,
}

/// What a backend is, with the keys only that kind has.
#[derive(Debug, Clone)]
pub enum BackendSettings {
    Openai(OpenAiBackendConfig),
    Native(ModelBackendConfig),
    VllmRs(ModelBackendConfig),
    Python(PythonBackendConfig),
    Retrieval(RetrievalBackendConfig),
    Sim(SimBackendSettings),
    /// An OpenEnv environment: a WebSocket session per episode.
    Openenv(OpenEnvBackendConfig),
}

/// How a model writes one call: `openai`, `native`, `vllm-rs` and `sim` backends.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub temperature: f64,
    pub max_tokens: u32,
    /// Texts that end a completion, left out of the answer (OpenAI's `stop`).
    pub stop: Vec<String>,
}

impl Default for Generation {
    fn default() -> Self {
        Generation {
            temperature: defaults::temperature_zero(),
            max_tokens: defaults::max_tokens(),
            stop: Vec::new(),
        }
    }
}

/// An OpenAI-compatible server.
#[derive(Debug, Clone)]
pub struct OpenAiBackendConfig {
    pub endpoint: Option<String>,
    /// Name of an environment variable that, when set, overrides `endpoint`.
    pub endpoint_env: Option<String>,
    /// The model name sent in requests (the backend's name when absent).
    pub model: Option<String>,
    /// Name of the environment variable holding the API key (never the key itself).
    pub api_key_env: Option<String>,
    /// `chat` (one /v1/chat/completions request per call, sent concurrently) or `completions`
    /// (one /v1/completions request per batch, prompts rendered with `chat_template`).
    pub api: OpenAiApi,
    pub chat_template: Option<String>,
    pub generation: Generation,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub retries: u32,
    /// Delay before the first retry; doubled each time, with jitter, or what Retry-After says.
    pub retry_base_ms: u64,
}

/// An in-process model (`native`, `vllm-rs`).
#[derive(Debug, Clone)]
pub struct ModelBackendConfig {
    /// Path of the model file (relative to the config file; `~/` expanded).
    pub model: Option<String>,
    /// Used instead of the model file's chat template.
    pub chat_template: Option<String>,
    pub generation: Generation,
}

/// The code interpreter's sandbox.
#[derive(Debug, Clone)]
pub struct PythonBackendConfig {
    pub python: Option<String>,
    pub memory_mb: u64,
    pub max_output_bytes: usize,
    pub timeout_ms: Option<u64>,
}

/// A BM25 index built by `tutti index`.
#[derive(Debug, Clone)]
pub struct RetrievalBackendConfig {
    /// The index directory (relative to the config file).
    pub index: Option<PathBuf>,
    pub top_k: usize,
    pub passage_chars: usize,
}

/// A simulated model: a workload model for benchmarks.
#[derive(Debug, Clone)]
pub struct SimBackendSettings {
    /// Written into the simulated text (the backend's name when absent).
    pub model: Option<String>,
    pub generation: Generation,
    pub sim: SimBackendConfig,
}

/// An OpenEnv environment server.
#[derive(Debug, Clone)]
pub struct OpenEnvBackendConfig {
    pub endpoint: Option<String>,
    pub endpoint_env: Option<String>,
    pub timeout_ms: Option<u64>,
}

impl BackendConfig {
    pub(crate) fn kind(&self) -> BackendKind {
        match &self.settings {
            BackendSettings::Openai(_) => BackendKind::Openai,
            BackendSettings::Native(_) => BackendKind::Native,
            BackendSettings::VllmRs(_) => BackendKind::VllmRs,
            BackendSettings::Python(_) => BackendKind::Python,
            BackendSettings::Retrieval(_) => BackendKind::Retrieval,
            BackendSettings::Sim(_) => BackendKind::Sim,
            BackendSettings::Openenv(_) => BackendKind::Openenv,
        }
    }

    /// The model named in this backend's requests: its `model`, else its name.
    pub(crate) fn request_model(&self) -> &str {
        let model = match &self.settings {
            BackendSettings::Openai(o) => o.model.as_deref(),
            BackendSettings::Native(m) | BackendSettings::VllmRs(m) => m.model.as_deref(),
            BackendSettings::Sim(s) => s.model.as_deref(),
            _ => None,
        };
        model.unwrap_or(&self.name)
    }

    /// How the backend's model writes a call; the defaults for kinds that run no model.
    pub(crate) fn generation(&self) -> Generation {
        match &self.settings {
            BackendSettings::Openai(o) => o.generation.clone(),
            BackendSettings::Native(m) | BackendSettings::VllmRs(m) => m.generation.clone(),
            BackendSettings::Sim(s) => s.generation.clone(),
            _ => Generation::default(),
        }
    }

    /// The `sim` table of a simulated backend.
    pub(crate) fn sim(&self) -> Option<&SimBackendConfig> {
        match &self.settings {
            BackendSettings::Sim(s) => Some(&s.sim),
            _ => None,
        }
    }

    /// `endpoint` and `endpoint_env` of the kinds that reach a server.
    pub(crate) fn endpoint(&self) -> Option<(Option<&str>, Option<&str>)> {
        match &self.settings {
            BackendSettings::Openai(o) => Some((o.endpoint.as_deref(), o.endpoint_env.as_deref())),
            BackendSettings::Openenv(e) => Some((e.endpoint.as_deref(), e.endpoint_env.as_deref())),
            _ => None,
        }
    }
}

/// Keys every kind accepts.
const COMMON_KEYS: &[&str] = &[
    "name",
    "kind",
    "price_in_per_mtok",
    "price_out_per_mtok",
    "price_per_call",
    "price_per_second",
    "max_concurrency",
    "max_batch",
    "max_wait_ms",
    "breaker_failures",
    "breaker_cooldown_ms",
    "fallback",
    "cache",
    "cache_ttl_s",
    "expected_input_tokens",
    "expected_output_tokens",
    "expected_latency_ms",
];

const GENERATION_KEYS: &[&str] = &["temperature", "max_tokens", "stop"];

/// The keys a kind accepts beyond [`COMMON_KEYS`].
fn kind_keys(kind: BackendKind) -> Vec<&'static str> {
    let own: &[&str] = match kind {
        BackendKind::Openai => &[
            "endpoint",
            "endpoint_env",
            "model",
            "api_key_env",
            "api",
            "chat_template",
            "rpm",
            "tpm",
            "timeout_ms",
            "retries",
            "retry_base_ms",
        ],
        BackendKind::Native | BackendKind::VllmRs => &["model", "chat_template"],
        BackendKind::Python => &["python", "memory_mb", "max_output_bytes", "timeout_ms"],
        BackendKind::Retrieval => &["index", "top_k", "passage_chars"],
        BackendKind::Sim => &["model", "sim"],
        BackendKind::Openenv => &["endpoint", "endpoint_env", "timeout_ms"],
    };
    let generation: &[&str] = match kind {
        BackendKind::Openai | BackendKind::Native | BackendKind::VllmRs => GENERATION_KEYS,
        // A simulated model draws its output lengths up to `max_tokens`; it writes no stop text.
        BackendKind::Sim => &GENERATION_KEYS[..2],
        _ => &[],
    };
    own.iter().chain(generation).copied().collect()
}

const KINDS: [BackendKind; 7] = [
    BackendKind::Openai,
    BackendKind::Native,
    BackendKind::Python,
    BackendKind::Retrieval,
    BackendKind::Sim,
    BackendKind::Openenv,
    BackendKind::VllmRs,
];

/// Refuses, at the key's line and column, a key of a backend table that its kind does not have.
/// Keys no kind has are left to serde (`unknown field`), as are tables it cannot read.
pub(super) fn check_kind_keys(origin: &str, text: &str) -> Result<(), ConfigError> {
    let Ok(doc) = toml::de::DeTable::parse(text) else {
        return Ok(());
    };
    let Some(backends) = doc
        .get_ref()
        .iter()
        .find(|(k, _)| k.get_ref() == "backends")
        .and_then(|(_, v)| v.get_ref().as_array())
    else {
        return Ok(());
    };
    for (i, table) in backends.iter().enumerate() {
        let Some(table) = table.get_ref().as_table() else {
            continue;
        };
        let kind = table
            .iter()
            .find(|(k, _)| k.get_ref() == "kind")
            .and_then(|(_, v)| v.get_ref().as_str())
            .and_then(|s| KINDS.iter().copied().find(|k| k.as_str() == s));
        let Some(kind) = kind else { continue };
        let own = kind_keys(kind);
        for (key, _) in table.iter() {
            let key_name = key.get_ref().as_ref();
            if COMMON_KEYS.contains(&key_name) || own.contains(&key_name) {
                continue;
            }
            let owners: Vec<&str> = KINDS
                .iter()
                .filter(|k| kind_keys(**k).contains(&key_name))
                .map(|k| k.as_str())
                .collect();
            if owners.is_empty() {
                continue;
            }
            return Err(ConfigError::at(
                origin,
                text,
                key.span().start,
                &format!("backends[{i}].{key_name}"),
                format!(
                    "`{key_name}` is not a key of `{}` backends (it is one of {})",
                    kind.as_str(),
                    owners
                        .iter()
                        .map(|o| format!("`{o}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// A backend table as written: every key of every kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendTable {
    name: String,
    kind: BackendKind,
    endpoint: Option<String>,
    model: Option<String>,
    api_key_env: Option<String>,
    endpoint_env: Option<String>,
    #[serde(default)]
    api: OpenAiApi,
    chat_template: Option<String>,
    #[serde(default = "defaults::retry_base_ms")]
    retry_base_ms: u64,
    #[serde(default = "defaults::breaker_failures")]
    breaker_failures: u32,
    #[serde(default = "defaults::breaker_cooldown_ms")]
    breaker_cooldown_ms: u64,
    index: Option<PathBuf>,
    #[serde(default = "defaults::top_k")]
    top_k: usize,
    #[serde(default = "defaults::passage_chars")]
    passage_chars: usize,
    python: Option<String>,
    #[serde(default = "defaults::sandbox_memory_mb")]
    memory_mb: u64,
    #[serde(default = "defaults::sandbox_output_bytes")]
    max_output_bytes: usize,
    #[serde(default)]
    price_in_per_mtok: f64,
    #[serde(default)]
    price_out_per_mtok: f64,
    #[serde(default)]
    price_per_call: f64,
    #[serde(default)]
    price_per_second: f64,
    #[serde(default = "defaults::max_concurrency")]
    max_concurrency: usize,
    #[serde(default = "defaults::max_batch")]
    max_batch: usize,
    #[serde(default)]
    max_wait_ms: u64,
    rpm: Option<u32>,
    tpm: Option<u64>,
    timeout_ms: Option<u64>,
    #[serde(default)]
    retries: u32,
    fallback: Option<String>,
    #[serde(default)]
    cache: CachePolicy,
    cache_ttl_s: Option<f64>,
    #[serde(default = "defaults::temperature_zero")]
    temperature: f64,
    #[serde(default = "defaults::max_tokens")]
    max_tokens: u32,
    #[serde(default)]
    stop: Vec<String>,
    #[serde(default = "defaults::expected_input_tokens")]
    expected_input_tokens: u32,
    expected_output_tokens: Option<u32>,
    expected_latency_ms: Option<f64>,
    sim: Option<SimBackendConfig>,
}

impl TryFrom<BackendTable> for BackendConfig {
    type Error = String;

    fn try_from(t: BackendTable) -> Result<Self, String> {
        let generation = Generation {
            temperature: t.temperature,
            max_tokens: t.max_tokens,
            stop: t.stop,
        };
        let model = || ModelBackendConfig {
            model: t.model.clone(),
            chat_template: t.chat_template.clone(),
            generation: generation.clone(),
        };
        let settings = match t.kind {
            BackendKind::Openai => BackendSettings::Openai(OpenAiBackendConfig {
                endpoint: t.endpoint,
                endpoint_env: t.endpoint_env,
                model: t.model,
                api_key_env: t.api_key_env,
                api: t.api,
                chat_template: t.chat_template,
                generation,
                rpm: t.rpm,
                tpm: t.tpm,
                timeout_ms: t.timeout_ms,
                retries: t.retries,
                retry_base_ms: t.retry_base_ms,
            }),
            BackendKind::Native => BackendSettings::Native(model()),
            BackendKind::VllmRs => BackendSettings::VllmRs(model()),
            BackendKind::Python => BackendSettings::Python(PythonBackendConfig {
                python: t.python,
                memory_mb: t.memory_mb,
                max_output_bytes: t.max_output_bytes,
                timeout_ms: t.timeout_ms,
            }),
            BackendKind::Retrieval => BackendSettings::Retrieval(RetrievalBackendConfig {
                index: t.index,
                top_k: t.top_k,
                passage_chars: t.passage_chars,
            }),
            BackendKind::Sim => BackendSettings::Sim(SimBackendSettings {
                model: t.model,
                generation,
                sim: t
                    .sim
                    .ok_or("a backend of kind `sim` needs a [backends.sim] table")?,
            }),
            BackendKind::Openenv => BackendSettings::Openenv(OpenEnvBackendConfig {
                endpoint: t.endpoint,
                endpoint_env: t.endpoint_env,
                timeout_ms: t.timeout_ms,
            }),
        };
        Ok(BackendConfig {
            name: t.name,
            settings,
            price_in_per_mtok: t.price_in_per_mtok,
            price_out_per_mtok: t.price_out_per_mtok,
            price_per_call: t.price_per_call,
            price_per_second: t.price_per_second,
            max_concurrency: t.max_concurrency,
            max_batch: t.max_batch,
            max_wait_ms: t.max_wait_ms,
            breaker_failures: t.breaker_failures,
            breaker_cooldown_ms: t.breaker_cooldown_ms,
            fallback: t.fallback,
            cache: t.cache,
            cache_ttl_s: t.cache_ttl_s,
            expected_input_tokens: t.expected_input_tokens,
            expected_output_tokens: t.expected_output_tokens,
            expected_latency_ms: t.expected_latency_ms,
        })
    }
}

/// Every key of [`BackendTable`], by kind.
#[cfg(test)]
fn keys_by_kind() -> std::collections::BTreeMap<&'static str, Vec<&'static str>> {
    KINDS
        .iter()
        .map(|k| (k.as_str(), kind_keys(*k)))
        .chain([("(every kind)", COMMON_KEYS.to_vec())])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_reflection::{ContainerFormat, Tracer, TracerConfig};

    #[test]
    fn every_key_of_a_backend_table_belongs_to_some_kind_or_all() {
        let mut tracer = Tracer::new(TracerConfig::default());
        tracer.trace_simple_type::<BackendKind>().unwrap();
        tracer.trace_simple_type::<OpenAiApi>().unwrap();
        tracer.trace_simple_type::<CachePolicy>().unwrap();
        tracer.trace_simple_type::<BackendTable>().unwrap();
        let registry = tracer.registry().unwrap();
        let Some(ContainerFormat::Struct(fields)) = registry.get("BackendTable") else {
            panic!("BackendTable was not traced as a struct");
        };
        let known: Vec<&str> = keys_by_kind().into_values().flatten().collect();
        let orphans: Vec<&str> = fields
            .iter()
            .map(|f| f.name.as_str())
            .filter(|f| !known.contains(f))
            .collect();
        assert!(orphans.is_empty(), "keys of no kind: {orphans:?}");
        let stale: Vec<&&str> = known
            .iter()
            .filter(|k| !fields.iter().any(|f| f.name == **k))
            .collect();
        assert!(
            stale.is_empty(),
            "kinds list keys the table lacks: {stale:?}"
        );
    }
}
