//! The policy head's action selection over the tool catalog.
//!
//! Scores one entry per catalog action (a tool and one of its aliases), then shapes them with the
//! task's preference (an additive bias per action, from [`crate::catalog::Catalog::preference`])
//! and its remaining budget (actions expected to cost more than what is left are masked), and
//! samples with the CPU kernels. The native model's grammar-constrained head (a later issue)
//! produces its base scores from the model; the sim executor from its config.

use tutti_kernels::{sample_index, softmax_inplace};

use crate::catalog::{Catalog, Preference};

/// Writes the shaped score of every catalog action into `out`.
/// `tool_scores[t]` is the base score of tool `t` (each alias of a tool starts from it).
pub(crate) fn shape_scores(
    catalog: &Catalog,
    tool_scores: &[f32],
    preference: &Preference,
    remaining_usd: f64,
    out: &mut Vec<f32>,
) {
    out.clear();
    out.extend(
        catalog
            .actions
            .iter()
            .zip(&preference.bias)
            .map(|(a, bias)| {
                if a.expected_cost_usd > remaining_usd {
                    f32::NEG_INFINITY
                } else {
                    tool_scores[a.tool] + bias
                }
            }),
    );
}

/// Samples an action from shaped scores (overwritten with probabilities) given a uniform `u` in
/// [0, 1). When every action is masked, falls back to the cheapest `answer`: an episode that can
/// afford nothing more must still end with an answer.
pub(crate) fn choose(catalog: &Catalog, scores: &mut [f32], u: f32) -> usize {
    softmax_inplace(scores);
    sample_index(scores, u).unwrap_or_else(|| cheapest_answer(catalog))
}

/// The `answer` action with the lowest expected cost.
pub(crate) fn cheapest_answer(catalog: &Catalog) -> usize {
    catalog.tools[catalog.answer()]
        .actions
        .iter()
        .copied()
        .min_by(|&a, &b| {
            catalog.actions[a]
                .expected_cost_usd
                .total_cmp(&catalog.actions[b].expected_cost_usd)
        })
        .expect("validated: the answer tool has at least one alias")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(c: &Catalog, pref: &Preference, remaining: f64, alias: &str) -> f64 {
        let tools = vec![0.0f32; c.tools.len()];
        let mut scores = Vec::new();
        let n = 4000;
        let hits = (0..n)
            .filter(|i| {
                shape_scores(c, &tools, pref, remaining, &mut scores);
                let a = choose(c, &mut scores, (*i as f32 + 0.5) / n as f32);
                &*c.actions[a].alias == alias
            })
            .count();
        hits as f64 / n as f64
    }

    #[test]
    fn preference_raises_an_alias_share() {
        let c = crate::catalog::sim_catalog();
        let none = c.preference(&[]);
        let liked = c.preference(&[("answer-math-2".into(), 1.0)]);
        let base = share(&c, &none, f64::INFINITY, "answer-math-2");
        let pref = share(&c, &liked, f64::INFINITY, "answer-math-2");
        assert!(pref > base * 3.0, "base {base}, with preference {pref}");
    }

    #[test]
    fn unaffordable_actions_are_never_chosen() {
        let c = crate::catalog::sim_catalog();
        let none = c.preference(&[]);
        let budget = c
            .actions
            .iter()
            .map(|a| a.expected_cost_usd)
            .fold(0.0, f64::max)
            / 3.0;
        let tools = vec![0.0f32; c.tools.len()];
        let mut scores = Vec::new();
        for i in 0..1000 {
            shape_scores(&c, &tools, &none, budget, &mut scores);
            let a = choose(&c, &mut scores, i as f32 / 1000.0);
            assert!(c.actions[a].expected_cost_usd <= budget);
        }
    }

    #[test]
    fn nothing_affordable_forces_the_cheapest_answer() {
        let c = crate::catalog::sim_catalog();
        let tools = vec![0.0f32; c.tools.len()];
        let mut scores = Vec::new();
        shape_scores(&c, &tools, &c.preference(&[]), 0.0, &mut scores);
        let a = choose(&c, &mut scores, 0.5);
        assert_eq!(a, cheapest_answer(&c));
        assert_eq!(&*c.actions[a].tool_name, "answer");
    }
}
