//! `docs/config.md` documents every key the config accepts: each field and each enum value of the
//! config types, as serde-reflection traces their deserialization, appears in the document inside
//! backticks (`max_turns`, `[orchestrator]`, `kind = "openai"`). A key added to a config type
//! without its line in the reference fails here.

use std::collections::BTreeSet;

use serde_reflection::{ContainerFormat, Tracer, TracerConfig};
use tutti_engine::config::{
    BackendKind, CachePolicy, Config, ExecutorKind, OpenAiApi, PromptStrategy,
};

/// Every word (letters, digits, `_`, `-`) inside a backtick span of `text`.
fn words_in_code(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .flat_map(|span| {
            span.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_config_reference_names_every_key_and_value() {
    let mut tracer = Tracer::new(TracerConfig::default());
    // Enums first, so the structs that hold them trace every variant.
    tracer.trace_simple_type::<ExecutorKind>().unwrap();
    tracer.trace_simple_type::<BackendKind>().unwrap();
    tracer.trace_simple_type::<PromptStrategy>().unwrap();
    tracer.trace_simple_type::<OpenAiApi>().unwrap();
    tracer.trace_simple_type::<CachePolicy>().unwrap();
    tracer.trace_simple_type::<Config>().unwrap();
    let registry = tracer.registry().unwrap();

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md");
    let doc = std::fs::read_to_string(path).expect("docs/config.md exists");
    let documented = words_in_code(&doc);

    let mut keys = Vec::new();
    for (container, format) in &registry {
        match format {
            ContainerFormat::Struct(fields) => {
                keys.extend(fields.iter().map(|f| (container.clone(), f.name.clone())))
            }
            ContainerFormat::Enum(variants) => keys.extend(
                variants
                    .values()
                    .map(|v| (container.clone(), v.name.clone())),
            ),
            _ => {}
        }
    }
    // The traced types: the config, its sections and backend kinds, and the enums.
    assert!(
        registry.len() >= 15 && keys.len() >= 100,
        "traced only {} containers and {} keys",
        registry.len(),
        keys.len()
    );
    let missing: Vec<String> = keys
        .iter()
        .filter(|(_, key)| !documented.contains(key))
        .map(|(container, key)| format!("{container}.{key}"))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/config.md does not name these keys or values in backticks: {missing:?}"
    );
}
