//! What serde cannot check: every value's range, and the references between sections. Each error
//! names the file, the line and column of the offending key, and the key's path.
//!
//! The bounds are wide enough for any real deployment and narrow enough that nothing computed
//! from them overflows: a duration stays a `Duration`, a score stays a finite `f32`, a cost stays
//! a finite `f64`.

use std::collections::HashSet;

use super::locate::KeyPath;
use super::{
    check_endpoint, BackendKind, BackendSettings, Config, ConfigError, Dist, EnvironmentConfig,
    ExecutorKind, Generation, Source, ANSWER_TOOL, HTTP, HTTP_OR_WS,
};

/// The longest timeout, wait, cooldown or backoff in milliseconds: a day.
const MAX_MS: u64 = 86_400_000;
/// The largest median or 99th percentile of a distribution, and the largest simulated step cost
/// in milliseconds (about 11 days, before `time_scale`).
const MAX_DIST: f64 = 1e9;
/// The largest `time_scale`: simulated time at most a thousand times slower than configured.
const MAX_TIME_SCALE: f64 = 1e3;
/// The largest price of any unit, in dollars.
const MAX_PRICE: f64 = 1e6;
/// The largest `preference_scale`; with weights bounded by
/// [`MAX_PREFERENCE_WEIGHT`](super::MAX_PREFERENCE_WEIGHT) a bias stays far inside `f32`.
const MAX_PREFERENCE_SCALE: f64 = 100.0;
/// The largest sampling temperature, and the smallest above 0 (0 is greedy): far below it a
/// temperature is greedy in all but name, and near `f32`'s smallest numbers `1 / temperature`
/// overflows the head's logits.
const MAX_TEMPERATURE: f64 = 100.0;
const MIN_TEMPERATURE: f64 = 1e-3;
/// The largest magnitude of a simulated tool score.
const MAX_LOGIT: f64 = 1e4;
/// The most tasks live, sequences in a step, batches in flight or calls in a batch.
const MAX_COUNT: usize = 1 << 20;
/// The longest `cache_ttl_s`: ten years.
const MAX_TTL_S: f64 = 3.2e8;
/// The most retries of one request.
const MAX_RETRIES: u32 = 100;
/// The most address space of a sandboxed process, in MiB (1 TiB).
const MAX_MEMORY_MB: u64 = 1 << 20;

/// `Err` with the message a range error shows: what was expected, what was found.
fn expect(
    ok: bool,
    expected: impl FnOnce() -> String,
    found: impl std::fmt::Display,
) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("expected {}, found {found}", expected()))
    }
}

fn finite_in(v: f64, lo: f64, hi: f64) -> Result<(), String> {
    expect(
        v.is_finite() && (lo..=hi).contains(&v),
        || format!("a finite number in [{lo}, {hi}]"),
        format!("{v:?}"),
    )
}

fn count_in(v: u64, lo: u64, hi: u64) -> Result<(), String> {
    expect(
        (lo..=hi).contains(&v),
        || format!("an integer in [{lo}, {hi}]"),
        v,
    )
}

fn price(v: f64) -> Result<(), String> {
    expect(
        v.is_finite() && (0.0..=MAX_PRICE).contains(&v),
        || format!("a price of 0 or more, at most {MAX_PRICE}"),
        format!("{v:?}"),
    )
}

fn temperature(t: f64) -> Result<(), String> {
    expect(
        t == 0.0 || (MIN_TEMPERATURE..=MAX_TEMPERATURE).contains(&t),
        || format!("0 (greedy) or a number in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]"),
        format!("{t:?}"),
    )
}

fn not_empty(s: &str) -> Result<(), String> {
    expect(!s.is_empty(), || "a non-empty string".into(), "\"\"")
}

/// The name of an environment variable: not empty, no `=` and no NUL.
fn variable_name(s: &str) -> Result<(), String> {
    expect(
        !s.is_empty() && !s.contains(['=', '\0']),
        || "the name of an environment variable".into(),
        format!("{s:?}"),
    )
}

fn dist(d: Dist) -> Result<(), String> {
    expect(
        d.p50 > 0.0 && d.p99 >= d.p50 && d.p99 <= MAX_DIST,
        || format!("0 < p50 <= p99 <= {MAX_DIST:e}"),
        format!("p50 = {:?}, p99 = {:?}", d.p50, d.p99),
    )
}

impl Config {
    /// Checks what serde cannot: ranges, references between sections, required sub-tables.
    pub(crate) fn validate(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        self.validate_orchestrator(src)?;
        let at = |path: KeyPath| move |message: String| src.error(path, message);
        let scale = self.simulation.time_scale;
        finite_in(scale, 0.0, MAX_TIME_SCALE).map_err(at("simulation.time_scale".into()))?;
        let c = &self.cache;
        count_in(c.max_entries as u64, 1, u64::MAX).map_err(at("cache.max_entries".into()))?;
        for (i, _) in self.backends.iter().enumerate() {
            self.validate_backend(src, i)?;
        }
        self.validate_references(src)
    }

    fn validate_orchestrator(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        let at = |path: &str| {
            let path = KeyPath::from("orchestrator").keys(path);
            move |message: String| src.error(path, message)
        };
        let o = &self.orchestrator;
        let max_count = MAX_COUNT as u64;
        count_in(o.max_turns.into(), 1, u32::MAX.into()).map_err(at("max_turns"))?;
        count_in(o.max_live_tasks as u64, 1, max_count).map_err(at("max_live_tasks"))?;
        count_in(o.max_seqs as u64, 1, max_count).map_err(at("max_seqs"))?;
        expect(
            o.max_batched_tokens >= o.max_seqs,
            || {
                format!(
                    "at least max_seqs ({}) so every decoding sequence fits a step",
                    o.max_seqs
                )
            },
            o.max_batched_tokens,
        )
        .map_err(at("max_batched_tokens"))?;
        if let Some(bytes) = o.kv_cache_bytes {
            count_in(bytes, 1, u64::MAX).map_err(at("kv_cache_bytes"))?;
        }
        temperature(o.temperature).map_err(at("temperature"))?;
        expect(
            o.top_p > 0.0 && o.top_p <= 1.0,
            || "a value in (0, 1]".into(),
            o.top_p,
        )
        .map_err(at("top_p"))?;
        count_in(o.max_malformed_calls.into(), 1, u32::MAX.into())
            .map_err(at("max_malformed_calls"))?;
        if let Some(b) = o.default_budget_usd {
            expect(
                b.is_finite() && b >= 0.0,
                || "a finite budget of 0 or more".into(),
                format!("{b:?}"),
            )
            .map_err(at("default_budget_usd"))?;
        }
        finite_in(o.preference_scale, 0.0, MAX_PREFERENCE_SCALE).map_err(at("preference_scale"))?;
        price(o.price_in_per_mtok).map_err(at("price_in_per_mtok"))?;
        price(o.price_out_per_mtok).map_err(at("price_out_per_mtok"))?;
        count_in(o.prompt_part_tokens.into(), 1, u32::MAX.into())
            .map_err(at("prompt_part_tokens"))?;
        count_in(o.max_tokens.into(), 1, u32::MAX.into()).map_err(at("max_tokens"))?;
        if let Some(ms) = o.timeout_ms {
            count_in(ms, 1, MAX_MS).map_err(at("timeout_ms"))?;
        }
        count_in(o.retries.into(), 0, MAX_RETRIES.into()).map_err(at("retries"))?;
        for (key, name) in [
            ("endpoint_env", &o.endpoint_env),
            ("api_key_env", &o.api_key_env),
        ] {
            if let Some(name) = name {
                variable_name(name).map_err(at(key))?;
            }
        }
        if let Some(model) = &o.model {
            not_empty(model).map_err(at("model"))?;
        }
        match o.executor {
            ExecutorKind::Sim => {
                let Some(sim) = &o.sim else {
                    return Err(src.error(
                        "orchestrator.sim",
                        "the sim executor needs an [orchestrator.sim] table",
                    ));
                };
                let at = |path: &str| {
                    let path = KeyPath::from("orchestrator.sim").key(path);
                    move |message: String| src.error(path, message)
                };
                for (key, ms) in [
                    ("base_ms", sim.base_ms),
                    ("per_seq_ms", sim.per_seq_ms),
                    ("per_prefill_token_ms", sim.per_prefill_token_ms),
                ] {
                    finite_in(ms, 0.0, MAX_DIST).map_err(at(key))?;
                }
                dist(sim.output_tokens).map_err(at("output_tokens"))?;
                for (tool, logit) in &sim.tool_logits {
                    let path = KeyPath::from("orchestrator.sim.tool_logits").key(tool);
                    finite_in(*logit, -MAX_LOGIT, MAX_LOGIT)
                        .map_err(|m| src.error(path.clone(), m))?;
                    if !self.tools.iter().any(|t| &t.name == tool) {
                        return Err(src.error(path, format!("no tool named `{tool}` in [[tools]]")));
                    }
                }
                finite_in(sim.answer_logit_per_turn, -MAX_LOGIT, MAX_LOGIT)
                    .map_err(at("answer_logit_per_turn"))?;
                finite_in(sim.malformed_rate, 0.0, 1.0).map_err(at("malformed_rate"))?;
            }
            ExecutorKind::Native if o.model.is_none() => {
                return Err(src.error(
                    "orchestrator.model",
                    "the native executor needs the path of a GGUF model file",
                ));
            }
            ExecutorKind::Openai => {
                if let Some(url) = &o.endpoint {
                    check_endpoint(url, HTTP).map_err(at("endpoint"))?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The ranges of the keys of backend `i`, common and of its kind.
    fn validate_backend(&self, src: &Source<'_>, i: usize) -> Result<(), ConfigError> {
        let b = &self.backends[i];
        let base = KeyPath::from("backends").index(i);
        let at = |key: &str| {
            let path = base.keys(key);
            move |message: String| src.error(path, message)
        };
        let max_count = MAX_COUNT as u64;
        not_empty(&b.name).map_err(at("name"))?;
        count_in(b.max_batch as u64, 1, max_count).map_err(at("max_batch"))?;
        count_in(b.max_concurrency as u64, 1, max_count).map_err(at("max_concurrency"))?;
        count_in(b.max_wait_ms, 0, MAX_MS).map_err(at("max_wait_ms"))?;
        count_in(b.breaker_cooldown_ms, 0, MAX_MS).map_err(at("breaker_cooldown_ms"))?;
        for (key, v) in [
            ("price_in_per_mtok", b.price_in_per_mtok),
            ("price_out_per_mtok", b.price_out_per_mtok),
            ("price_per_call", b.price_per_call),
            ("price_per_second", b.price_per_second),
        ] {
            price(v).map_err(at(key))?;
        }
        if let Some(ttl) = b.cache_ttl_s {
            expect(
                ttl > 0.0 && ttl <= MAX_TTL_S,
                || format!("a number of seconds above 0, at most {MAX_TTL_S:e}"),
                format!("{ttl:?}"),
            )
            .map_err(at("cache_ttl_s"))?;
        }
        if let Some(ms) = b.expected_latency_ms {
            finite_in(ms, 0.0, MAX_MS as f64).map_err(at("expected_latency_ms"))?;
        }
        if let Some((Some(url), _)) = b.endpoint() {
            let schemes = match b.kind() {
                BackendKind::Openai => HTTP,
                _ => HTTP_OR_WS,
            };
            check_endpoint(url, schemes).map_err(at("endpoint"))?;
        }
        if let Some((_, Some(name))) = b.endpoint() {
            variable_name(name).map_err(at("endpoint_env"))?;
        }
        let generation = |g: &Generation| -> Result<(), ConfigError> {
            temperature(g.temperature).map_err(at("temperature"))?;
            count_in(g.max_tokens.into(), 1, u32::MAX.into()).map_err(at("max_tokens"))?;
            for (j, stop) in g.stop.iter().enumerate() {
                let path = base.key("stop").index(j);
                not_empty(stop).map_err(|m| src.error(path, m))?;
            }
            Ok(())
        };
        match &b.settings {
            BackendSettings::Openai(o) => {
                generation(&o.generation)?;
                if let Some(ms) = o.timeout_ms {
                    count_in(ms, 1, MAX_MS).map_err(at("timeout_ms"))?;
                }
                count_in(o.retries.into(), 0, MAX_RETRIES.into()).map_err(at("retries"))?;
                count_in(o.retry_base_ms, 0, MAX_MS).map_err(at("retry_base_ms"))?;
                if let Some(name) = &o.api_key_env {
                    variable_name(name).map_err(at("api_key_env"))?;
                }
                if let Some(model) = &o.model {
                    not_empty(model).map_err(at("model"))?;
                }
            }
            BackendSettings::Native(m) | BackendSettings::VllmRs(m) => generation(&m.generation)?,
            BackendSettings::Python(p) => {
                if let Some(python) = &p.python {
                    not_empty(python).map_err(at("python"))?;
                }
                count_in(p.memory_mb, 1, MAX_MEMORY_MB).map_err(at("memory_mb"))?;
                count_in(p.max_output_bytes as u64, 1, 1 << 30).map_err(at("max_output_bytes"))?;
                if let Some(ms) = p.timeout_ms {
                    count_in(ms, 1, MAX_MS).map_err(at("timeout_ms"))?;
                }
            }
            BackendSettings::Retrieval(r) => {
                if r.index.is_none() {
                    return Err(src.error(
                        base,
                        "a `retrieval` backend needs `index`, the directory `tutti index` built",
                    ));
                }
                count_in(r.top_k as u64, 1, 1000).map_err(at("top_k"))?;
                count_in(r.passage_chars as u64, 1, 1 << 20).map_err(at("passage_chars"))?;
            }
            BackendSettings::Sim(s) => {
                generation(&s.generation)?;
                let sim = &s.sim;
                dist(sim.latency_ms).map_err(at("sim.latency_ms"))?;
                dist(sim.output_tokens).map_err(at("sim.output_tokens"))?;
                for (tool, d) in &sim.tool_latency_ms {
                    let path = base.key("sim").key("tool_latency_ms").key(tool);
                    dist(*d).map_err(|m| src.error(path, m))?;
                }
                finite_in(sim.accuracy, 0.0, 1.0).map_err(at("sim.accuracy"))?;
            }
            BackendSettings::Openenv(e) => {
                if let Some(ms) = e.timeout_ms {
                    count_in(ms, 1, MAX_MS).map_err(at("timeout_ms"))?;
                }
            }
        }
        Ok(())
    }

    /// Names that must exist elsewhere: backends of aliases and tools, aliases of tools, the
    /// judge and fallbacks, the answer tool.
    fn validate_references(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        let mut backend_names = HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            if !backend_names.insert(b.name.as_str()) {
                return Err(src.error(
                    KeyPath::from("backends").index(i).key("name"),
                    format!("backend `{}` is defined twice", b.name),
                ));
            }
        }
        let aliases = KeyPath::from("aliases");
        for (alias, backend) in &self.aliases {
            let path = aliases.key(alias);
            if !backend_names.contains(backend.as_str()) {
                return Err(src.error(
                    path,
                    format!("no backend named `{backend}` in [[backends]]"),
                ));
            }
            if self
                .backends
                .iter()
                .any(|b| &b.name == backend && b.kind() == BackendKind::Openenv)
            {
                return Err(src.error(
                    path,
                    format!(
                        "backend `{backend}` is an environment: it serves the function tools of \
                         [environment], not aliases"
                    ),
                ));
            }
        }
        for (i, b) in self.backends.iter().enumerate() {
            if let Some(fb) = &b.fallback {
                if !self.aliases.contains_key(fb) {
                    return Err(src.error(
                        KeyPath::from("backends").index(i).key("fallback"),
                        format!("no alias `{fb}` in [aliases]"),
                    ));
                }
            }
        }
        let mut tool_names = HashSet::new();
        for (i, t) in self.tools.iter().enumerate() {
            let tool = KeyPath::from("tools").index(i);
            not_empty(&t.name).map_err(|m| src.error(tool.key("name"), m))?;
            if !tool_names.insert(t.name.as_str()) {
                return Err(src.error(
                    tool.key("name"),
                    format!("tool `{}` is defined twice", t.name),
                ));
            }
            if let Some(then) = &t.then {
                if !backend_names.contains(then.as_str()) {
                    return Err(src.error(
                        tool.key("then"),
                        format!("no backend named `{then}` in [[backends]]"),
                    ));
                }
            }
            if t.aliases.is_empty() {
                return Err(src.error(tool.key("aliases"), "expected at least one alias"));
            }
            for (j, a) in t.aliases.iter().enumerate() {
                if !self.aliases.contains_key(a) {
                    return Err(src.error(
                        tool.key("aliases").index(j),
                        format!("no alias `{a}` in [aliases]"),
                    ));
                }
            }
        }
        if let Some(judge) = &self.grading.judge {
            if !self.aliases.contains_key(judge) {
                return Err(src.error("grading.judge", format!("no alias `{judge}` in [aliases]")));
            }
        }
        match &self.environment {
            None if !tool_names.contains(ANSWER_TOOL) => {
                return Err(src.error(
                    "tools",
                    "expected a tool named `answer`: it is how an episode ends",
                ));
            }
            None => {}
            Some(e) => self.validate_environment(src, e, &tool_names)?,
        }
        Ok(())
    }

    fn validate_environment(
        &self,
        src: &Source<'_>,
        e: &EnvironmentConfig,
        tool_names: &HashSet<&str>,
    ) -> Result<(), ConfigError> {
        match self.backends.iter().find(|b| b.name == e.backend) {
            None => {
                return Err(src.error(
                    "environment.backend",
                    format!("no backend named `{}` in [[backends]]", e.backend),
                ))
            }
            Some(b) if b.kind() != BackendKind::Openenv => {
                return Err(src.error(
                    "environment.backend",
                    format!("backend `{}` is not of kind `openenv`", e.backend),
                ))
            }
            Some(_) => {}
        }
        not_empty(&e.user_tool).map_err(|m| src.error("environment.user_tool", m))?;
        if tool_names.contains(e.user_tool.as_str()) {
            return Err(src.error(
                "environment.user_tool",
                format!("`{}` is also a tool in [[tools]]", e.user_tool),
            ));
        }
        if let Some(alias) = &e.user_alias {
            if !self.aliases.contains_key(alias) {
                return Err(src.error(
                    "environment.user_alias",
                    format!("no alias `{alias}` in [aliases]"),
                ));
            }
        }
        count_in(e.max_call_tokens.into(), 1, u32::MAX.into())
            .map_err(|m| src.error("environment.max_call_tokens", m))?;
        count_in(e.max_string_chars.into(), 1, u32::MAX.into())
            .map_err(|m| src.error("environment.max_string_chars", m))?;
        match self.orchestrator.executor {
            ExecutorKind::Replay | ExecutorKind::Openai | ExecutorKind::Native => Ok(()),
            ExecutorKind::Sim => Err(src.error(
                "orchestrator.executor",
                "an [environment] runs with the `native`, `openai` or `replay` executor; the \
                 `sim` executor models catalog calls only",
            )),
        }
    }
}
