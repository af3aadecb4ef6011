//! The job spec a client sends with its tasks (the DoPut descriptor's CMD, as JSON), and the
//! job's manifest on disk.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::task::Task;

/// What a client may say about a job. Unknown keys are refused by name: backends, prices and
/// limits belong to the server's config, not to a client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobSpec {
    /// A label for listings; need not be unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Values for tasks that leave them out.
    #[serde(default)]
    pub defaults: TaskDefaults,
    /// Per-job choices that are safe to take from a client.
    #[serde(default)]
    pub overrides: Overrides,
}

/// Defaults for the optional task fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TaskDefaults {
    /// Weight per alias (or `cost` / `latency`), for tasks without a preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<BTreeMap<String, f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<i32>,
}

/// Per-job settings a client may choose.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Overrides {
    /// Keep each episode's messages (`trajectory`) in its result row; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trajectories: Option<bool>,
}

/// The largest job spec (the descriptor's cmd) a server reads, in bytes.
pub(crate) const MAX_SPEC_BYTES: usize = 64 << 10;
/// The longest job name, in bytes: a name comes back in every listing.
pub(crate) const MAX_NAME_BYTES: usize = 256;

impl JobSpec {
    /// Parses a spec; an empty body is the empty spec. The error says what is wrong and where.
    pub(crate) fn parse(cmd: &[u8]) -> Result<JobSpec, String> {
        if cmd.len() > MAX_SPEC_BYTES {
            return Err(format!(
                "job spec (the descriptor's cmd) is {} bytes; the server takes at most \
                 {MAX_SPEC_BYTES}",
                cmd.len()
            ));
        }
        if cmd.iter().all(u8::is_ascii_whitespace) {
            return Ok(JobSpec::default());
        }
        // serde's derive takes a JSON array as the struct's fields in order: only an object is
        // a spec.
        let first = cmd.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(
                "job spec (the descriptor's cmd) must be a JSON object ({\"name\": ..., \
                 \"defaults\": {...}, \"overrides\": {...}}), not an array or a scalar"
                    .to_string(),
            );
        }
        let de = &mut serde_json::Deserializer::from_slice(cmd);
        let spec: JobSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.classify() != serde_json::error::Category::Data || path == "." {
                format!("job spec (the descriptor's cmd) is not a valid JSON object: {inner}")
            } else {
                format!("job spec (the descriptor's cmd): key `{path}`: {inner}")
            }
        })?;
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(name) = &self.name {
            if name.len() > MAX_NAME_BYTES {
                return Err(format!(
                    "job spec: key `name`: the name is {} bytes; the server takes at most \
                     {MAX_NAME_BYTES}",
                    name.len()
                ));
            }
        }
        let d = &self.defaults;
        if let Some(b) = d.budget_usd {
            if !(b.is_finite() && b >= 0.0) {
                return Err(format!(
                    "job spec: key `defaults.budget_usd`: expected a non-negative number, found {b}"
                ));
            }
        }
        if let Some(t) = d.max_turns {
            if t < 1 {
                return Err(format!(
                    "job spec: key `defaults.max_turns`: expected at least 1, found {t}"
                ));
            }
        }
        Ok(())
    }

    /// Checks the default preference against the catalog.
    pub(crate) fn check(&self, catalog: &Catalog) -> Result<(), String> {
        if let Some(p) = &self.defaults.preference {
            let pref: Vec<(String, f64)> = p.iter().map(|(k, v)| (k.clone(), *v)).collect();
            catalog
                .check_preference(&pref)
                .map_err(|e| format!("job spec: key `defaults.preference`: {e}"))?;
        }
        Ok(())
    }

    /// Fills the fields a task leaves out from the defaults.
    pub(crate) fn apply(&self, task: &mut Task) {
        let d = &self.defaults;
        if task.preference.is_empty() {
            if let Some(p) = &d.preference {
                task.preference = p.iter().map(|(k, v)| (k.clone(), *v)).collect();
            }
        }
        task.budget_usd = task.budget_usd.or(d.budget_usd);
        task.max_turns = task.max_turns.or(d.max_turns);
    }

    pub(crate) fn keep_trajectories(&self) -> bool {
        self.overrides.trajectories.unwrap_or(true)
    }
}

/// Checks a job spec (a DoPut descriptor's CMD) as the server reads it, without a server: the
/// error is the one an upload with this spec gets. (The `job_spec` fuzz target of `fuzz/` calls
/// it.)
pub fn check_job_spec(cmd: &[u8]) -> Result<(), String> {
    JobSpec::parse(cmd).map(drop)
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Tasks are being run (or wait to be, after a restart).
    Running,
    /// Every task has its result.
    Done,
    /// Cancelled, and every task has its result (`cancelled` for those that had not ended).
    Cancelled,
}

impl JobState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// A job's durable record, `manifest.json` in its directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub id: String,
    pub spec: JobSpec,
    /// Accepted tasks.
    pub tasks: u64,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When the job ended (done or cancelled); absent while it runs, and in manifests written
    /// before this field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    pub state: JobState,
    /// Set when a cancel is accepted, before the rows are all written: a server restarted in
    /// between finishes the job as cancelled instead of running its tasks.
    pub cancel_requested: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_body_is_the_empty_spec() {
        assert_eq!(JobSpec::parse(b"").unwrap(), JobSpec::default());
        assert_eq!(JobSpec::parse(b"  ").unwrap(), JobSpec::default());
        assert_eq!(JobSpec::parse(b"{}").unwrap(), JobSpec::default());
    }

    #[test]
    fn a_full_spec_parses() {
        let spec = JobSpec::parse(
            br#"{"name": "nightly", "defaults": {"preference": {"cost": 1.0}, "budget_usd": 0.5,
                 "max_turns": 4}, "overrides": {"trajectories": false}}"#,
        )
        .unwrap();
        assert_eq!(spec.name.as_deref(), Some("nightly"));
        assert_eq!(spec.defaults.budget_usd, Some(0.5));
        assert!(!spec.keep_trajectories());
        let mut task = Task {
            id: "a".into(),
            prompt: "p".into(),
            preference: Vec::new(),
            budget_usd: Some(2.0),
            max_turns: None,
            reference: None,
            metadata: None,
            ..Default::default()
        };
        spec.apply(&mut task);
        assert_eq!(task.budget_usd, Some(2.0), "a task's own value wins");
        assert_eq!(task.max_turns, Some(4));
        assert_eq!(task.preference, vec![("cost".to_string(), 1.0)]);
    }

    #[test]
    fn errors_name_the_key() {
        let e = JobSpec::parse(b"{not json").unwrap_err();
        assert!(e.contains("not a valid JSON object"), "{e}");
        let e = JobSpec::parse(br#"{"backends": []}"#).unwrap_err();
        assert!(e.contains("unknown field `backends`"), "{e}");
        let e = JobSpec::parse(br#"{"defaults": {"budget_usd": "x"}}"#).unwrap_err();
        assert!(e.contains("`defaults.budget_usd`"), "{e}");
        let e = JobSpec::parse(br#"{"defaults": {"max_turns": 0}}"#).unwrap_err();
        assert!(e.contains("`defaults.max_turns`"), "{e}");
        let e = JobSpec::parse(br#"{"overrides": {"price_per_call": 0}}"#).unwrap_err();
        assert!(e.contains("unknown field `price_per_call`"), "{e}");
    }

    #[test]
    fn an_array_is_not_a_spec_though_serde_would_take_it_as_fields() {
        let e = JobSpec::parse(br#" ["nightly", {}, {}]"#).unwrap_err();
        assert!(e.contains("must be a JSON object"), "{e}");
        assert!(JobSpec::parse(b"3").is_err());
    }

    #[test]
    fn a_long_name_and_a_big_spec_are_refused_naming_the_limit() {
        let name = "n".repeat(MAX_NAME_BYTES + 1);
        let e = JobSpec::parse(format!(r#"{{"name": "{name}"}}"#).as_bytes()).unwrap_err();
        assert!(e.contains("key `name`") && e.contains("at most 256"), "{e}");
        let ok = "n".repeat(MAX_NAME_BYTES);
        assert!(JobSpec::parse(format!(r#"{{"name": "{ok}"}}"#).as_bytes()).is_ok());
        let big = format!(r#"{{"name": "x"{}}}"#, " ".repeat(MAX_SPEC_BYTES));
        let e = JobSpec::parse(big.as_bytes()).unwrap_err();
        assert!(e.contains("at most 65536"), "{e}");
    }
}
