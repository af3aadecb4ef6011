//! The native policy head's grammar for function calls: calls whose arguments follow JSON
//! schemas (an environment's tools) are valid by construction.
//!
//! [llguidance](https://github.com/guidance-ai/llguidance), the constrained-decoding library
//! llama.cpp and vLLM use, compiles one Lark grammar per tool list,
//! `"<tool_call>" ( "{\"name\": \"T\", \"arguments\": " %json{schema of T} "}" | … ) "</tool_call>"`,
//! in Hermes' one spelling (`crate::hermes::call_text`: no free whitespace, `": "` and `", "`),
//! and gives the set of tokens that may come next at every step. Where that set is small (tool
//! names, enums, punctuation) only its rows of the output projection are computed.
//!
//! So that every call can close within its token allowance, the grammar's copy of each schema
//! bounds strings to [`FunctionLimits::max_string_chars`] and admits no properties beyond the
//! declared ones (OpenAI's strict mode does the same); the schema itself, as the environment
//! sent it, still checks the call when the episode makes it.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};

use crate::hermes::{CLOSE, OPEN};
use crate::Tokenizer;

/// How long a function call may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionLimits {
    /// Tokens from `<tool_call>` to `</tool_call>`.
    pub max_call_tokens: usize,
    /// The longest string the grammar admits in the arguments.
    pub max_string_chars: u64,
}

/// A tokenizer's vocabulary as llguidance sees it, built once per native executor: every
/// token's bytes, with control tokens marked special so that text never matches them.
pub struct Vocabulary {
    factory: ParserFactory,
}

impl Vocabulary {
    pub fn new(tokenizer: &Tokenizer) -> Result<Vocabulary, String> {
        let words: Vec<Vec<u8>> = (0..tokenizer.vocab_size() as u32)
            .map(|id| {
                let text = tokenizer.token_to_piece(id, false);
                if !text.is_empty() {
                    return text;
                }
                let special = tokenizer.token_to_piece(id, true);
                if special.is_empty() {
                    return special;
                }
                let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                marked.extend(special);
                marked
            })
            .collect();
        let eos = tokenizer.eos_id().unwrap_or(0);
        let info = TokRxInfo::new(words.len() as u32, eos);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, &words)));
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| format!("the call grammar's view of the vocabulary: {e}"))?;
        factory.quiet();
        Ok(Vocabulary { factory })
    }

    /// The grammar of one call of any of `functions` (OpenAI definitions: `name`,
    /// `parameters`). A schema llguidance cannot compile admits any object of that tool's
    /// declared properties instead (logged); the episode's own check still applies.
    pub fn functions(
        &self,
        functions: &[Value],
        limits: FunctionLimits,
    ) -> Result<FunctionGrammar, String> {
        let mut schemas: Vec<(String, Value)> = functions
            .iter()
            .filter_map(|f| {
                let name = f.get("name")?.as_str()?;
                let schema = f
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                Some((name.to_string(), bounded(schema, limits.max_string_chars)))
            })
            .collect();
        if schemas.is_empty() {
            return Err("no function to call".into());
        }
        // The whole list compiles in one go; only when it does not is each tool tried alone,
        // to find the schemas to replace.
        let template = match self.compile(&lark(&schemas)) {
            Ok(m) => m,
            Err(_) => {
                for (name, schema) in &mut schemas {
                    let alone = lark(std::slice::from_ref(&(name.clone(), schema.clone())));
                    if let Err(e) = self.compile(&alone) {
                        tracing::warn!(
                            "the call grammar cannot hold the schema of `{name}` ({e}); its \
                             arguments are constrained to a JSON object only"
                        );
                        *schema = bounded(json!({"type": "object"}), limits.max_string_chars);
                    }
                }
                self.compile(&lark(&schemas))?
            }
        };
        Ok(FunctionGrammar {
            template,
            limits,
            tools: schemas.len(),
        })
    }

    fn compile(&self, grammar: &str) -> Result<Matcher, String> {
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_lark(grammar.to_string()))
            .map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(e) => Err(e),
            None => Ok(matcher),
        }
    }
}

/// The Lark grammar of a call of one of `schemas`.
fn lark(schemas: &[(String, Value)]) -> String {
    let lit = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let mut out = format!("start: {} call {}\ncall: ", lit(OPEN), lit(CLOSE));
    let alternatives: Vec<String> = (0..schemas.len()).map(|i| format!("f{i}")).collect();
    out.push_str(&alternatives.join(" | "));
    out.push('\n');
    for (i, (name, schema)) in schemas.iter().enumerate() {
        let head = format!("{{\"name\": {}, \"arguments\": ", lit(name));
        out.push_str(&format!(
            "f{i}: {} %json {} {}\n",
            lit(&head),
            schema,
            lit("}")
        ));
    }
    out
}

/// The grammar's copy of a schema: Hermes spacing, strings bounded, objects closed.
fn bounded(mut schema: Value, max_string_chars: u64) -> Value {
    /// Walks a schema through the keywords that hold schemas, never into `enum`, `const` or
    /// `default` values, nor mistaking a property named `type` for the keyword.
    fn walk(v: &mut Value, max: u64) {
        let Value::Object(m) = v else { return };
        let has_type = |m: &serde_json::Map<String, Value>, t: &str| match m.get("type") {
            Some(Value::String(s)) => s == t,
            Some(Value::Array(ts)) => ts.iter().any(|x| x == t),
            _ => false,
        };
        if has_type(m, "string") {
            let own = m.get("maxLength").and_then(Value::as_u64);
            m.insert("maxLength".into(), json!(own.map_or(max, |o| o.min(max))));
        }
        if (has_type(m, "object") || m.contains_key("properties"))
            && !m.contains_key("additionalProperties")
        {
            m.insert("additionalProperties".into(), json!(false));
        }
        for (key, sub) in m.iter_mut() {
            match key.as_str() {
                "properties" | "$defs" | "definitions" | "patternProperties" => {
                    if let Value::Object(named) = sub {
                        named.values_mut().for_each(|x| walk(x, max));
                    }
                }
                "anyOf" | "allOf" | "oneOf" | "prefixItems" => {
                    if let Value::Array(xs) = sub {
                        xs.iter_mut().for_each(|x| walk(x, max));
                    }
                }
                "items" | "additionalProperties" | "not" | "contains" | "then" | "else" | "if" => {
                    match sub {
                        Value::Array(xs) => xs.iter_mut().for_each(|x| walk(x, max)),
                        other => walk(other, max),
                    }
                }
                _ => {}
            }
        }
    }
    walk(&mut schema, max_string_chars);
    if let Value::Object(m) = &mut schema {
        m.insert(
            "x-guidance".into(),
            json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
                "lenient": true,
            }),
        );
    }
    schema
}

/// The compiled call grammar of one tool list; each turn starts from a copy of its matcher.
pub struct FunctionGrammar {
    template: Matcher,
    limits: FunctionLimits,
    tools: usize,
}

impl std::fmt::Debug for FunctionGrammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionGrammar")
            .field("tools", &self.tools)
            .field("limits", &self.limits)
            .finish()
    }
}

impl FunctionGrammar {
    /// A matcher at the start of a call (before `<tool_call>`).
    pub(crate) fn matcher(&self) -> Matcher {
        self.template.deep_clone()
    }

    pub(crate) fn limits(&self) -> FunctionLimits {
        self.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_schemas_cap_strings_close_objects_and_keep_the_rest() {
        let schema = json!({
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "note": {"type": ["string", "null"], "maxLength": 3},
                "items": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "string"}}}},
                "open": {"type": "object", "additionalProperties": true},
                "type": {"enum": [{"type": "string"}]},
            },
        });
        let b = bounded(schema, 10);
        assert_eq!(b["properties"]["id"]["maxLength"], 10);
        assert_eq!(b["properties"]["note"]["maxLength"], 3);
        assert_eq!(b["additionalProperties"], false);
        assert_eq!(
            b["properties"]["items"]["items"]["additionalProperties"],
            false
        );
        assert_eq!(
            b["properties"]["items"]["items"]["properties"]["x"]["maxLength"],
            10
        );
        assert_eq!(b["properties"]["open"]["additionalProperties"], true);
        assert_eq!(b["x-guidance"]["item_separator"], ", ");
        // A property named `type` is a property; enum values are values.
        assert_eq!(
            b["properties"]["type"],
            json!({"enum": [{"type": "string"}]})
        );
        assert!(b["properties"].get("additionalProperties").is_none());
    }
}
