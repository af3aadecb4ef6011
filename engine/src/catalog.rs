//! The tool catalog as the engine uses it: every (tool, alias) pair the orchestrator may emit, the
//! backend that serves it, what it is expected to cost, and how a task's preference shifts it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{BackendConfig, Config, MAX_PREFERENCE_WEIGHT};
use crate::ledger::Pricing;
use crate::task::Action;

/// The tool that ends an episode.
pub(crate) use crate::config::ANSWER_TOOL;

/// Prompt a tool's chosen model gets when the config gives none.
const DEFAULT_PROMPT: &str = "Problem: {problem}\n{context}";

/// One valid tool call: a tool and one alias of its `model` enum.
#[derive(Debug, Clone)]
pub(crate) struct CatalogAction {
    pub tool: usize,
    pub tool_name: Arc<str>,
    pub alias: Arc<str>,
    pub backend: usize,
    /// Dollars one call is expected to cost: the budget mask and the cost preference use it.
    pub expected_cost_usd: f64,
    /// Unscaled expected latency, for the latency preference.
    pub expected_latency_ms: f64,
}

#[derive(Debug, Clone)]
pub(crate) struct CatalogTool {
    pub name: Arc<str>,
    pub description: String,
    pub prompt: String,
    /// Indices into [`Catalog::actions`].
    pub actions: Vec<usize>,
    /// The backend that runs what the chosen model wrote (retrieval for a query, the sandbox for
    /// code); none when the model's reply is the observation.
    pub then: Option<usize>,
}

#[derive(Debug, Clone)]
pub(crate) struct CatalogBackend {
    pub name: Arc<str>,
    pub pricing: Pricing,
    /// The backend and alias that serve this backend's calls while its breaker is open.
    pub fallback: Option<(usize, Arc<str>)>,
}

/// Why an action does not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ResolveError {
    #[error("unknown tool `{tool}`; the tools are {known}")]
    UnknownTool { tool: String, known: String },
    #[error("tool `{tool}` has no model `{alias}`; its models are {known}")]
    UnknownAlias {
        tool: String,
        alias: String,
        known: String,
    },
}

/// A task's preference resolved against the catalog: one additive score per action.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Preference {
    pub bias: Vec<f32>,
}

#[derive(Debug)]
pub(crate) struct Catalog {
    pub tools: Vec<CatalogTool>,
    pub actions: Vec<CatalogAction>,
    pub backends: Vec<CatalogBackend>,
    /// The tool that ends an episode with an answer; absent only where an environment ends
    /// episodes instead (validated: the sim and native executors need it).
    pub answer_tool: Option<usize>,
    /// The judge's backend and alias, when answers are graded by a model.
    pub judge: Option<(usize, Arc<str>)>,
    tool_index: HashMap<String, usize>,
    /// Per tool: alias -> action.
    action_index: Vec<HashMap<String, usize>>,
    preference_scale: f64,
    /// The preference of a task that states none, shared by all of them.
    neutral: Arc<Preference>,
}

impl Catalog {
    /// Builds the catalog of a validated config.
    pub(crate) fn new(cfg: &Config) -> Catalog {
        let backends: Vec<CatalogBackend> = cfg
            .backends
            .iter()
            .map(|b| CatalogBackend {
                name: b.name.as_str().into(),
                pricing: pricing(b),
                fallback: None,
            })
            .collect();
        let backend_index: HashMap<&str, usize> = cfg
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.as_str(), i))
            .collect();
        let mut backends = backends;
        for (i, b) in cfg.backends.iter().enumerate() {
            backends[i].fallback = b.fallback.as_ref().map(|alias| {
                (
                    backend_index[cfg.aliases[alias].as_str()],
                    alias.as_str().into(),
                )
            });
        }
        let mut tools = Vec::new();
        let mut actions = Vec::new();
        let mut action_index = Vec::new();
        for (ti, t) in cfg.tools.iter().enumerate() {
            let name: Arc<str> = t.name.as_str().into();
            let mut ids = Vec::new();
            let mut by_alias = HashMap::new();
            for alias in &t.aliases {
                let bi = backend_index[cfg.aliases[alias].as_str()];
                let b = &cfg.backends[bi];
                let (cost, latency) = expectations(b, &t.name);
                by_alias.insert(alias.clone(), actions.len());
                ids.push(actions.len());
                actions.push(CatalogAction {
                    tool: ti,
                    tool_name: name.clone(),
                    alias: alias.as_str().into(),
                    backend: bi,
                    expected_cost_usd: cost,
                    expected_latency_ms: latency,
                });
            }
            action_index.push(by_alias);
            tools.push(CatalogTool {
                name,
                description: t.description.clone(),
                prompt: t
                    .prompt
                    .clone()
                    .unwrap_or_else(|| DEFAULT_PROMPT.to_string()),
                actions: ids,
                then: t.then.as_ref().map(|b| backend_index[b.as_str()]),
            });
        }
        let tool_index: HashMap<String, usize> = cfg
            .tools
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Catalog {
            answer_tool: tool_index.get(ANSWER_TOOL).copied(),
            judge: cfg.grading.judge.as_ref().map(|alias| {
                (
                    backend_index[cfg.aliases[alias].as_str()],
                    alias.as_str().into(),
                )
            }),
            tools,
            backends,
            tool_index,
            neutral: Arc::new(Preference {
                bias: vec![0.0; actions.len()],
            }),
            actions,
            action_index,
            preference_scale: cfg.orchestrator.preference_scale,
        }
    }

    /// The `answer` tool, for executors that end episodes with it (validated present for them).
    pub(crate) fn answer(&self) -> usize {
        self.answer_tool
            .expect("validated: this executor's catalog has an `answer` tool")
    }

    /// The catalog action an orchestrator's tool call names.
    pub(crate) fn resolve(&self, action: &Action) -> Result<usize, ResolveError> {
        let Some(&ti) = self.tool_index.get(&action.tool) else {
            return Err(ResolveError::UnknownTool {
                tool: action.tool.clone(),
                known: quoted(self.tools.iter().map(|t| &*t.name)),
            });
        };
        self.action_index[ti]
            .get(action.alias.as_str())
            .copied()
            .ok_or_else(|| ResolveError::UnknownAlias {
                tool: action.tool.clone(),
                alias: action.alias.clone(),
                known: quoted(
                    self.tools[ti]
                        .actions
                        .iter()
                        .map(|&a| &*self.actions[a].alias),
                ),
            })
    }

    /// Checks a task's preference keys: each must be an alias of the catalog, `cost` or `latency`.
    pub(crate) fn check_preference(&self, pref: &[(String, f64)]) -> Result<(), String> {
        for (key, w) in pref {
            if !(w.is_finite() && w.abs() <= MAX_PREFERENCE_WEIGHT) {
                return Err(format!(
                    "weight of `{key}` must be a finite number in [-{MAX_PREFERENCE_WEIGHT}, \
                     {MAX_PREFERENCE_WEIGHT}], found {w:?}"
                ));
            }
            if key != "cost" && key != "latency" && !self.actions.iter().any(|a| &*a.alias == key) {
                return Err(format!(
                    "unknown key `{key}`: expected an alias of the catalog, `cost` or `latency`"
                ));
            }
        }
        Ok(())
    }

    /// Resolves a preference into one score per action: `scale * weight` for the action's alias,
    /// minus `scale * weight` times the action's min-max normalised expected cost (for `cost`) and
    /// latency (for `latency`). Unknown keys are ignored here; [`Catalog::check_preference`] rejects
    /// them at input time.
    pub(crate) fn preference(&self, pref: &[(String, f64)]) -> Arc<Preference> {
        if pref.is_empty() {
            return self.neutral.clone();
        }
        let mut bias = vec![0f32; self.actions.len()];
        let scale = self.preference_scale;
        let cost = normalised(self.actions.iter().map(|a| a.expected_cost_usd));
        let latency = normalised(self.actions.iter().map(|a| a.expected_latency_ms));
        for (key, w) in pref {
            match key.as_str() {
                "cost" => bias
                    .iter_mut()
                    .zip(&cost)
                    .for_each(|(b, c)| *b -= (scale * w * c) as f32),
                "latency" => bias
                    .iter_mut()
                    .zip(&latency)
                    .for_each(|(b, l)| *b -= (scale * w * l) as f32),
                alias => {
                    for (b, a) in bias.iter_mut().zip(&self.actions) {
                        if &*a.alias == alias {
                            *b += (scale * w) as f32;
                        }
                    }
                }
            }
        }
        Arc::new(Preference { bias })
    }

    /// The cheapest expected call of any action: below it, a task can afford nothing more.
    pub(crate) fn cheapest_call_usd(&self) -> f64 {
        self.actions
            .iter()
            .map(|a| a.expected_cost_usd)
            .fold(f64::INFINITY, f64::min)
    }

    /// Builds the prompt the chosen model of a tool gets: the tool's template with `{problem}` and
    /// `{context}` filled in, in one pass.
    pub(crate) fn render_prompt(&self, tool: usize, problem: &str, context: &str) -> String {
        let template = &self.tools[tool].prompt;
        let mut out = String::with_capacity(template.len() + problem.len() + context.len());
        let mut rest = template.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let tail = &rest[open..];
            if let Some(r) = tail.strip_prefix("{problem}") {
                out.push_str(problem);
                rest = r;
            } else if let Some(r) = tail.strip_prefix("{context}") {
                out.push_str(context);
                rest = r;
            } else {
                out.push('{');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        out
    }
}

fn pricing(b: &BackendConfig) -> Pricing {
    Pricing {
        in_per_mtok: b.price_in_per_mtok,
        out_per_mtok: b.price_out_per_mtok,
        per_call: b.price_per_call,
        per_second: b.price_per_second,
    }
}

/// Expected (dollars, latency ms) of one call of `tool` on backend `b`.
fn expectations(b: &BackendConfig, tool: &str) -> (f64, f64) {
    let sim = b.sim();
    let latency = b.expected_latency_ms.unwrap_or_else(|| {
        sim.map_or(1000.0, |s| {
            s.tool_latency_ms.get(tool).unwrap_or(&s.latency_ms).p50
        })
    });
    let out = b
        .expected_output_tokens
        .map(f64::from)
        .unwrap_or_else(|| sim.map_or(300.0, |s| s.output_tokens.p50));
    let cost = pricing(b).cost(b.expected_input_tokens as u64, out as u64, latency / 1000.0);
    (cost, latency)
}

fn normalised(values: impl Iterator<Item = f64> + Clone) -> Vec<f64> {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.clone().fold(f64::NEG_INFINITY, f64::max);
    let span = hi - lo;
    values
        .map(|v| if span > 0.0 { (v - lo) / span } else { 0.0 })
        .collect()
}

fn quoted<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The catalog of the bundled simulated ToolOrchestra config, for tests.
#[cfg(test)]
pub(crate) fn sim_catalog() -> Catalog {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/toolorchestra-sim.toml");
    Catalog::new(&Config::load(&path).unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        sim_catalog()
    }

    #[test]
    fn resolves_tool_and_alias_pairs() {
        let c = catalog();
        let a = c
            .resolve(&Action {
                tool: "answer".into(),
                alias: "answer-math-2".into(),
            })
            .unwrap();
        assert_eq!(&*c.actions[a].alias, "answer-math-2");
        assert_eq!(&*c.backends[c.actions[a].backend].name, "qwen2.5-math-7b");
        let e = c
            .resolve(&Action {
                tool: "answer".into(),
                alias: "search-1".into(),
            })
            .unwrap_err();
        assert!(e.to_string().contains("has no model `search-1`"), "{e}");
        let e = c
            .resolve(&Action {
                tool: "browse".into(),
                alias: "x".into(),
            })
            .unwrap_err();
        assert!(e.to_string().contains("unknown tool `browse`"), "{e}");
    }

    #[test]
    fn prompts_fill_problem_and_context() {
        let c = catalog();
        let p = c.render_prompt(c.answer(), "What is {x}?", "Documents: a");
        assert_eq!(
            p,
            "Problem: What is {x}?\nDocuments: a\nAnswer the problem."
        );
    }

    #[test]
    fn expected_costs_follow_the_price_table() {
        let c = catalog();
        let cost = |alias: &str| {
            c.actions
                .iter()
                .find(|a| &*a.alias == alias)
                .unwrap()
                .expected_cost_usd
        };
        assert!(cost("answer-1") > cost("answer-2"));
        assert!(cost("answer-2") > cost("answer-math-2"));
        assert!(c.cheapest_call_usd() <= cost("answer-math-2"));
    }

    #[test]
    fn preference_biases_alias_and_penalises_cost() {
        let c = catalog();
        let p = c.preference(&[("answer-math-2".into(), 1.0), ("cost".into(), 1.0)]);
        let idx = |alias: &str| c.actions.iter().position(|a| &*a.alias == alias).unwrap();
        assert!(p.bias[idx("answer-math-2")] > 1.0);
        assert!(p.bias[idx("answer-1")] < p.bias[idx("answer-2")]);
        assert!(c.check_preference(&[("nope".into(), 1.0)]).is_err());
        assert!(c.check_preference(&[("latency".into(), 0.5)]).is_ok());
    }
}
