//! The policy head (`tutti_model::head`) over a real catalog: every call spellable and resolving
//! to its action, random logits always ending in a valid affordable call, preference and budget
//! shaping, function calls under their JSON schemas.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rand::Rng;
use tutti_model::head::Sampling;
use tutti_model::head::*;
use tutti_model::Tokenizer;

use super::catalog_grammar;
use crate::catalog::sim_catalog;
use crate::catalog::{Catalog, Preference};
use crate::task::Action;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tutti_model::testing::{tiny_model, TinyConfig};

fn setup() -> (Catalog, Tokenizer, Arc<CallGrammar>) {
    let cfg = TinyConfig {
        tool_tokens: true,
        ..TinyConfig::qwen3()
    };
    let (_, tok) = tiny_model(&cfg).unwrap();
    let catalog = sim_catalog();
    let grammar = Arc::new(catalog_grammar(&catalog, &tok));
    (catalog, tok, grammar)
}

/// Drives a head with random logits until its call is complete; returns the action and
/// the text of the tokens it chose.
fn drive(
    head: &mut CallHead,
    tok: &Tokenizer,
    rng: &mut SmallRng,
    s: &Sampling,
) -> (usize, String) {
    let text = drive_text(head, tok, rng, s, 400);
    (head.chosen().expect("a catalog action"), text)
}

/// Drives a head with random logits until its call is complete, `limit` tokens at most;
/// returns the text of the tokens it chose.
fn drive_text(
    head: &mut CallHead,
    tok: &Tokenizer,
    rng: &mut SmallRng,
    s: &Sampling,
    limit: usize,
) -> String {
    let mut tokens = Vec::new();
    let row = |rng: &mut SmallRng| -> Vec<f32> {
        (0..tok.vocab_size())
            .map(|_| rng.random::<f32>() * 4.0)
            .collect()
    };
    for _ in 0..limit {
        let t = match head.rows() {
            Next::Only(ids) => {
                let mut l: Vec<f32> = ids.iter().map(|_| rng.random::<f32>() * 4.0).collect();
                head.choose_call(&mut l, s, rng)
            }
            Next::Masked => head.choose_call(&mut row(rng), s, rng),
            Next::Free => head.choose_free(&mut row(rng), s, rng, tok),
        }
        .unwrap_or_else(|| panic!("a token: {:?}", head.failure()));
        tokens.push(t);
        if head.done() {
            return tok.decode(&tokens, false);
        }
    }
    panic!(
        "no call after {limit} tokens: {:?}",
        tok.decode(&tokens, false)
    );
}

#[test]
fn every_call_is_spellable_and_resolves_to_its_action() {
    let (catalog, _, grammar) = setup();
    assert!(grammar.spellable());
    for a in 0..catalog.actions.len() {
        let text = String::from_utf8(grammar.call(a).to_vec()).unwrap();
        let action = Action::parse_hermes(&text).unwrap();
        assert_eq!(catalog.resolve(&action), Ok(a), "{text}");
    }
}

#[test]
fn random_logits_always_end_in_a_valid_affordable_call() {
    let (catalog, tok, grammar) = setup();
    let none = catalog.preference(&[]);
    let max_cost = catalog
        .actions
        .iter()
        .map(|a| a.expected_cost_usd)
        .fold(0.0, f64::max);
    let mut rng = SmallRng::seed_from_u64(3);
    for i in 0..300 {
        let remaining = max_cost * (i % 7) as f64 / 6.0;
        let s = Sampling {
            temperature: [0.0, 1.0][i % 2],
            ..Sampling::GREEDY
        };
        let policy = Arc::new(CallPolicy::new(
            grammar.clone(),
            &none.bias,
            remaining,
            i % 5,
        ));
        let mut head = CallHead::new(policy.clone());
        let (a, text) = drive(&mut head, &tok, &mut rng, &s);
        let action = Action::parse_hermes(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(catalog.resolve(&action), Ok(a));
        if policy.forced() {
            assert_eq!(a, crate::policy::cheapest_answer(&catalog));
        } else {
            assert!(catalog.actions[a].expected_cost_usd <= remaining, "{text}");
        }
    }
}

#[test]
fn nothing_affordable_forces_the_cheapest_answer_from_the_first_token() {
    let (catalog, tok, grammar) = setup();
    let policy = Arc::new(CallPolicy::new(
        grammar,
        &catalog.preference(&[]).bias,
        0.0,
        16,
    ));
    assert!(policy.forced());
    let mut head = CallHead::new(policy);
    assert!(
        matches!(head.rows(), Next::Only(_)),
        "no free text when forced"
    );
    let mut rng = SmallRng::seed_from_u64(1);
    let (a, text) = drive(&mut head, &tok, &mut rng, &Sampling::GREEDY);
    assert_eq!(a, crate::policy::cheapest_answer(&catalog));
    assert!(text.starts_with(OPEN), "{text}");
}

#[test]
fn a_preference_raises_its_alias_share() {
    let (catalog, tok, grammar) = setup();
    let share = |pref: &Arc<Preference>| {
        let mut rng = SmallRng::seed_from_u64(9);
        let s = Sampling {
            temperature: 1.0,
            ..Sampling::GREEDY
        };
        let n = 400;
        let hits = (0..n)
            .filter(|_| {
                let policy = CallPolicy::new(grammar.clone(), &pref.bias, f64::INFINITY, 0);
                let mut head = CallHead::new(Arc::new(policy));
                let (a, _) = drive(&mut head, &tok, &mut rng, &s);
                &*catalog.actions[a].alias == "search-3"
            })
            .count();
        hits as f64 / n as f64
    };
    let base = share(&catalog.preference(&[]));
    let liked = share(&catalog.preference(&[("search-3".into(), 1.0)]));
    assert!(liked > base + 0.1, "base {base}, with preference {liked}");
}

#[test]
fn the_model_opening_a_call_switches_to_the_grammar() {
    let (_, tok, grammar) = setup();
    let catalog = sim_catalog();
    let policy = Arc::new(CallPolicy::new(
        grammar,
        &catalog.preference(&[]).bias,
        1.0,
        50,
    ));
    let mut head = CallHead::new(policy);
    assert_eq!(head.rows(), Next::Free);
    let open = tok
        .token_id(OPEN)
        .expect("the tiny vocabulary has <tool_call>");
    let mut logits = vec![0f32; tok.vocab_size()];
    logits[open as usize] = 10.0;
    let mut rng = SmallRng::seed_from_u64(1);
    let t = head.choose_free(&mut logits, &Sampling::GREEDY, &mut rng, &tok);
    assert_eq!(t, Some(open));
    assert!(head.in_call());
    let Next::Only(ids) = head.rows() else {
        panic!("under the grammar")
    };
    let ids = ids.to_vec();
    let texts: Vec<String> = ids.iter().map(|&i| tok.decode(&[i], false)).collect();
    assert!(
        texts.iter().all(|t| "{\"name\": ".starts_with(t.as_str())),
        "{texts:?}"
    );
    // An end-of-generation token opens the call instead of ending the turn.
    let mut head = CallHead::new(Arc::new(CallPolicy::new(
        Arc::new(catalog_grammar(&catalog, &tok)),
        &catalog.preference(&[]).bias,
        1.0,
        50,
    )));
    let mut logits = vec![0f32; tok.vocab_size()];
    logits[tok.eos_id().unwrap() as usize] = 10.0;
    let t = head
        .choose_free(&mut logits, &Sampling::GREEDY, &mut rng, &tok)
        .unwrap();
    assert!(head.in_call());
    assert!(OPEN.starts_with(&tok.decode(&[t], false)));
}

/// The τ² mock domain's tools, as its environment sends them (pydantic's schemas: a
/// `null` default on a string, no `additionalProperties`).
fn mock_tools() -> Vec<serde_json::Value> {
    serde_json::from_str(
        r#"[
        {"name": "create_task", "parameters": {"properties": {
            "user_id": {"description": "The ID of the user", "title": "User Id", "type": "string"},
            "title": {"title": "Title", "type": "string"},
            "description": {"default": null, "title": "Description", "type": "string"}},
            "required": ["user_id", "title"], "title": "parameters", "type": "object"}},
        {"name": "get_users", "parameters": {"properties": {}, "title": "parameters", "type": "object"}},
        {"name": "update_task_status", "parameters": {"properties": {
            "task_id": {"type": "string"},
            "status": {"enum": ["pending", "completed"], "type": "string"},
            "count": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": ["task_id", "status"], "type": "object"}},
        {"name": "respond", "parameters": {"type": "object",
            "properties": {"content": {"type": "string"}}, "required": ["content"]}}
    ]"#,
    )
    .unwrap()
}

#[test]
fn random_logits_always_write_a_function_call_that_its_schema_accepts() {
    use tutti_model::head::functions::{FunctionLimits, Vocabulary};
    let (_, tok, _) = setup();
    let tools = mock_tools();
    let limits = FunctionLimits {
        max_call_tokens: 256,
        max_string_chars: 12,
    };
    let grammar = Arc::new(
        Vocabulary::new(&tok)
            .unwrap()
            .functions(&tools, limits)
            .unwrap(),
    );
    let validators: HashMap<&str, jsonschema::Validator> = tools
        .iter()
        .map(|t| {
            let v = jsonschema::validator_for(&t["parameters"]).unwrap();
            (t["name"].as_str().unwrap(), v)
        })
        .collect();
    let mut rng = SmallRng::seed_from_u64(5);
    let mut seen = HashSet::new();
    for i in 0..300 {
        let s = Sampling {
            temperature: [0.0, 1.0][i % 2],
            ..Sampling::GREEDY
        };
        let policy = Arc::new(CallPolicy::functions(grammar.clone(), i % 4));
        let mut head = CallHead::new(policy.clone());
        let text = drive_text(&mut head, &tok, &mut rng, &s, policy.max_tokens());
        let call = tutti_model::hermes::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let args = serde_json::Value::Object(call.arguments.clone());
        let v = &validators[call.name.as_str()];
        assert!(v.is_valid(&args), "{text}");
        assert!(text.ends_with(CLOSE), "the turn ends with its call: {text}");
        seen.insert(call.name);
    }
    assert_eq!(seen.len(), tools.len(), "every tool gets called: {seen:?}");
}

#[test]
fn a_function_call_opened_in_free_text_continues_under_its_grammar() {
    use tutti_model::head::functions::{FunctionLimits, Vocabulary};
    let (_, tok, _) = setup();
    let limits = FunctionLimits {
        max_call_tokens: 256,
        max_string_chars: 12,
    };
    let grammar = Vocabulary::new(&tok)
        .unwrap()
        .functions(&mock_tools(), limits)
        .unwrap();
    let mut head = CallHead::new(Arc::new(CallPolicy::functions(Arc::new(grammar), 50)));
    assert_eq!(head.rows(), Next::Free);
    let open = tok.token_id(OPEN).unwrap();
    let mut logits = vec![0f32; tok.vocab_size()];
    logits[open as usize] = 10.0;
    let mut rng = SmallRng::seed_from_u64(1);
    let t = head.choose_free(&mut logits, &Sampling::GREEDY, &mut rng, &tok);
    assert_eq!(t, Some(open));
    let Next::Only(ids) = head.rows() else {
        panic!("under the grammar")
    };
    let texts: Vec<String> = ids.iter().map(|&i| tok.decode(&[i], false)).collect();
    assert_eq!(texts, ["{"], "the call's JSON starts");
}
