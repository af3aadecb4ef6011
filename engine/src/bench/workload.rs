//! SIMULATION input. Seeded ToolOrchestra-shaped workloads for the benchmarks.
//!
//! Tasks are one-line arithmetic problems with a reference answer (the one kind of problem the
//! simulated models can solve), some with a preference vector and some with a budget. A
//! configurable share of tasks repeats an earlier task exactly, as rollouts of the same problem
//! do in RL training or evaluation with several samples: their contexts and therefore all their
//! sub-queries repeat too, which is what the result cache and single-flight are for.

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::catalog::Catalog;
use crate::task::Task;

/// What to generate.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub tasks: usize,
    pub seed: u64,
    /// Share of tasks that repeat an earlier task exactly, in [0, 1).
    pub repeat_share: f64,
    /// Share of tasks with a preference vector.
    pub preference_share: f64,
    /// Share of tasks with a budget.
    pub budget_share: f64,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            tasks: 10_000,
            seed: 1,
            repeat_share: 0.0,
            preference_share: 0.3,
            budget_share: 0.3,
        }
    }
}

/// Generates the workload; the same spec always gives the same tasks.
pub(crate) fn generate_for(spec: &WorkloadSpec, catalog: &Catalog) -> Vec<Task> {
    let mut rng = SmallRng::seed_from_u64(spec.seed);
    let n = spec.tasks;
    let repeats = ((n as f64) * spec.repeat_share.clamp(0.0, 0.99)).round() as usize;
    // Which positions repeat an earlier task: never the first, exactly `repeats` of them.
    let mut is_repeat = vec![false; n];
    if n > 1 {
        let mut positions: Vec<usize> = (1..n).collect();
        positions.shuffle(&mut rng);
        for &p in positions.iter().take(repeats.min(n - 1)) {
            is_repeat[p] = true;
        }
    }
    let aliases: Vec<&str> = catalog.actions.iter().map(|a| &*a.alias).collect();
    let mut tasks: Vec<Task> = Vec::with_capacity(n);
    let mut originals: Vec<usize> = Vec::new();
    for (i, repeat) in is_repeat.into_iter().enumerate() {
        let id = format!("t{i:07}");
        if repeat && !originals.is_empty() {
            let src = &tasks[originals[rng.random_range(0..originals.len())]];
            tasks.push(Task {
                id,
                metadata: Some(format!("repeat of {}", src.id)),
                ..src.clone()
            });
            continue;
        }
        let a: i64 = rng.random_range(2..1000);
        let b: i64 = rng.random_range(2..1000);
        let (op, value) = match rng.random_range(0..3) {
            0 => ("+", a + b),
            1 => ("-", a - b),
            _ => ("*", a * b),
        };
        let mut preference = Vec::new();
        if rng.random::<f64>() < spec.preference_share {
            match rng.random_range(0..3) {
                0 => preference.push(("cost".to_string(), rng.random_range(0.5..1.5))),
                1 => preference.push(("latency".to_string(), rng.random_range(0.5..1.5))),
                _ => preference.push((
                    aliases[rng.random_range(0..aliases.len())].to_string(),
                    rng.random_range(0.5..1.5),
                )),
            }
        }
        let budget_usd =
            (rng.random::<f64>() < spec.budget_share).then(|| rng.random_range(0.002..0.05));
        originals.push(i);
        tasks.push(Task {
            id,
            prompt: format!("What is {a} {op} {b}?"),
            preference,
            budget_usd,
            max_turns: None,
            reference: Some(value.to_string()),
            metadata: None,
            ..Default::default()
        });
    }
    tasks
}

/// A seeded sample of `k` tasks of a workload, in workload order.
pub fn sample(tasks: &[Task], k: usize, seed: u64) -> Vec<Task> {
    let mut idx: Vec<usize> = (0..tasks.len()).collect();
    idx.shuffle(&mut SmallRng::seed_from_u64(seed ^ 0x5a5a));
    idx.truncate(k);
    idx.sort_unstable();
    idx.into_iter().map(|i| tasks[i].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_spec_same_tasks_and_exact_repeat_share() {
        let c = crate::catalog::sim_catalog();
        let spec = WorkloadSpec {
            tasks: 1000,
            repeat_share: 0.3,
            ..Default::default()
        };
        let a = generate_for(&spec, &c);
        assert_eq!(a, generate_for(&spec, &c));
        let repeats = a.iter().filter(|t| t.metadata.is_some()).count();
        assert_eq!(repeats, 300);
        let distinct: std::collections::HashSet<&str> =
            a.iter().map(|t| t.prompt.as_str()).collect();
        assert!(distinct.len() <= 700);
        for t in &a {
            c.check_preference(&t.preference).unwrap();
        }
    }

    #[test]
    fn sample_is_seeded_and_a_subset() {
        let c = crate::catalog::sim_catalog();
        let tasks = generate_for(
            &WorkloadSpec {
                tasks: 100,
                ..Default::default()
            },
            &c,
        );
        let s = sample(&tasks, 10, 3);
        assert_eq!(s.len(), 10);
        assert_eq!(s, sample(&tasks, 10, 3));
        assert!(s.iter().all(|t| tasks.contains(t)));
    }
}
