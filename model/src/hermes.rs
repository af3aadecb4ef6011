//! The Hermes tool-call protocol, in one place: the tags, the text of a call, parsing a reply, the
//! tool list of a system prompt and the GBNF grammar a server is given.
//!
//! Every call tutti writes or constrains has one spelling:
//! `<tool_call>{"name": "T", "arguments": {"k": "v", "n": 1}}</tool_call>` — `name` first, `": "`
//! after each key and `", "` between members, arguments in the order given. The native policy
//! head, the `openai` executor's grammar, the prompts and the replayed calls all use
//! `call_text`; [`parse`] reads that and any other valid JSON of the same shape.

use std::io;

use serde_json::ser::{Formatter, Serializer};
use serde_json::Value;

/// Opens a Hermes call.
pub const OPEN: &str = "<tool_call>";
/// Closes a Hermes call; a turn under a grammar ends with it.
pub const CLOSE: &str = "</tool_call>";

/// A parsed tool call: the function's name and its arguments (a JSON object).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: serde_json::Map<String, Value>,
}

/// Why a reply holds no usable call. Shown to the orchestrator as an error observation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no <tool_call> found in the reply")]
    Missing,
    #[error("<tool_call> is not closed by </tool_call>")]
    Unclosed,
    #[error("the tool call is not valid JSON: {0}")]
    Json(String),
    #[error("the tool call has no string field `name`")]
    NoName,
    #[error("the tool call's `arguments` is not a JSON object")]
    NotAnObject,
    #[error("the tool call's `arguments` has no string field `model`")]
    NoModel,
}

/// Writes JSON with a space after `:` and `,`, the spacing of [`call_text`].
struct Spaced;

/// `", "` before every member but the first.
fn separator<W: ?Sized + io::Write>(w: &mut W, first: bool) -> io::Result<()> {
    if first {
        Ok(())
    } else {
        w.write_all(b", ")
    }
}

impl Formatter for Spaced {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        separator(w, first)
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        separator(w, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// `value` as JSON in the spacing of [`call_text`].
pub(crate) fn spaced_json(value: &Value) -> String {
    let mut out = Vec::new();
    let mut ser = Serializer::with_formatter(&mut out, Spaced);
    serde::Serialize::serialize(value, &mut ser).expect("a JSON value serializes");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// The one spelling of a call of `name` with `arguments` (a JSON object).
pub(crate) fn call_text(name: &str, arguments: &Value) -> String {
    let name = serde_json::to_string(name).expect("a string serializes");
    format!(
        "{OPEN}{{\"name\": {name}, \"arguments\": {}}}{CLOSE}",
        spaced_json(arguments)
    )
}

/// The call of a ToolOrchestra tool, whose one argument `model` is an alias.
pub fn model_call_text(tool: &str, alias: &str) -> String {
    call_text(tool, &serde_json::json!({ "model": alias }))
}

/// Parses the first call in a reply. `arguments` may be absent (no arguments) or a JSON string
/// holding the object, as some servers emit it. The call is the JSON object right after
/// `<tool_call>`, closed by the `</tool_call>` that follows it, so a string argument may hold
/// either tag.
pub fn parse(text: &str) -> Result<ToolCall, ParseError> {
    let start = text.find(OPEN).ok_or(ParseError::Missing)? + OPEN.len();
    let rest = &text[start..];
    if !rest.contains(CLOSE) {
        return Err(ParseError::Unclosed);
    }
    let mut values =
        serde_json::Deserializer::from_str(rest).into_iter::<serde_json::Map<String, Value>>();
    let call = match values.next() {
        Some(Ok(call)) => call,
        Some(Err(e)) => return Err(ParseError::Json(e.to_string())),
        None => return Err(ParseError::Json("no JSON object after <tool_call>".into())),
    };
    if !rest[values.byte_offset()..].trim_start().starts_with(CLOSE) {
        return Err(ParseError::Unclosed);
    }
    from_object(call)
}

/// A call given as a JSON object `{"name": …, "arguments": …}` (a recorded call, or a server's
/// structured `function`).
pub fn from_object(mut call: serde_json::Map<String, Value>) -> Result<ToolCall, ParseError> {
    let name = match call.remove("name") {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => return Err(ParseError::NoName),
    };
    let arguments = match call.remove("arguments") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => m,
        Some(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(ParseError::NotAnObject),
            Err(e) => return Err(ParseError::Json(e.to_string())),
        },
        Some(_) => return Err(ParseError::NotAnObject),
    };
    Ok(ToolCall { name, arguments })
}

impl ToolCall {
    /// The call in its one spelling.
    pub fn text(&self) -> String {
        call_text(&self.name, &Value::Object(self.arguments.clone()))
    }
}

/// The tool list of a system prompt: OpenAI function definitions (`name`, `description`,
/// `parameters`), one per line, inside `<tools></tools>`, then how to call one.
pub fn tools_prompt(functions: &[Value]) -> String {
    let lines: Vec<String> = functions.iter().map(Value::to_string).collect();
    format!(
        "You may call one function to assist with the problem. The functions are given in \
         <tools></tools> tags:\n<tools>\n{}\n</tools>\n\n\
         Reply with one function call as JSON within {OPEN}{CLOSE} tags:\n\
         {OPEN}{{\"name\": <function-name>, \"arguments\": <args-json-object>}}{CLOSE}",
        lines.join("\n")
    )
}

/// A GBNF grammar (llama.cpp's `grammar` field) admitting exactly the given call texts.
pub fn gbnf(calls: impl IntoIterator<Item = String>) -> String {
    let lit = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let alternatives: Vec<String> = calls.into_iter().map(|c| lit(&c)).collect();
    format!("root ::= {}\n", alternatives.join(" | "))
}

/// A GBNF grammar admitting one call of any of `names` with any JSON object as its arguments (the
/// arguments' schemas are checked when the call is made; llama.cpp's JSON grammar).
pub fn gbnf_functions<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let lit = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let names: Vec<String> = names
        .into_iter()
        .map(|n| lit(&serde_json::to_string(n).expect("a string serializes")))
        .collect();
    format!(
        "root ::= {open} name {args} object {close}\n\
         name ::= {names}\n\
         object ::= \"{{\" ws ( string \":\" ws value ( \",\" ws string \":\" ws value )* )? \"}}\"\n\
         value ::= ( object | array | string | number | \"true\" | \"false\" | \"null\" ) ws\n\
         array ::= \"[\" ws ( value ( \",\" ws value )* )? \"]\"\n\
         string ::= \"\\\"\" ( [^\"\\\\\\x7F\\x00-\\x1F] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{{4}} ) )* \"\\\"\" ws\n\
         number ::= \"-\"? ( [0-9] | [1-9] [0-9]{{0,15}} ) ( \".\" [0-9]+ )? ( [eE] [-+]? [0-9]{{1,4}} )?\n\
         ws ::= | \" \" | \"\\n\" [ \\t]{{0,20}}\n",
        open = lit(&format!("{OPEN}{{\"name\": ")),
        args = lit(", \"arguments\": "),
        close = lit(&format!("}}{CLOSE}")),
        names = names.join(" | "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_spelling_with_name_first_and_spaces() {
        assert_eq!(
            model_call_text("answer", "answer-1"),
            r#"<tool_call>{"name": "answer", "arguments": {"model": "answer-1"}}</tool_call>"#
        );
        let args = json!({"order_id": "#W1", "item_ids": ["a", "b"], "n": 2});
        assert_eq!(
            call_text("exchange", &args),
            r##"<tool_call>{"name": "exchange", "arguments": {"order_id": "#W1", "item_ids": ["a", "b"], "n": 2}}</tool_call>"##
        );
    }

    #[test]
    fn parse_reads_what_call_text_writes_and_other_spellings() {
        let args = json!({"user_id": "u\"1", "deep": {"x": [1, {"y": null}]}});
        let text = format!("thinking… {} trailing", call_text("find", &args));
        let call = parse(&text).unwrap();
        assert_eq!(call.name, "find");
        assert_eq!(Value::Object(call.arguments.clone()), args);
        assert_eq!(call.text(), call_text("find", &args));
        // Keys in another order, no spaces, arguments as a string, or none at all.
        let call = parse(r#"<tool_call>{"arguments":"{\"model\":\"m\"}","name":"t"}</tool_call>"#)
            .unwrap();
        assert_eq!(call.arguments["model"], "m");
        assert!(parse(r#"<tool_call>{"name": "done"}</tool_call>"#)
            .unwrap()
            .arguments
            .is_empty());
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        assert_eq!(parse("hello"), Err(ParseError::Missing));
        assert_eq!(parse("<tool_call>{"), Err(ParseError::Unclosed));
        assert_eq!(
            parse(r#"<tool_call>{"name": "t"} and more</tool_call>"#),
            Err(ParseError::Unclosed)
        );
        // Either tag inside a string argument is text, not the end of the call.
        let call = parse(
            r#"note <tool_call> {"name": "say", "arguments": {"s": "a</tool_call>b<tool_call>"}}
            </tool_call> after"#,
        )
        .unwrap();
        assert_eq!(call.arguments["s"], "a</tool_call>b<tool_call>");
        assert!(matches!(
            parse("<tool_call>{]</tool_call>"),
            Err(ParseError::Json(_))
        ));
        assert_eq!(
            parse(r#"<tool_call>{"name": 3}</tool_call>"#),
            Err(ParseError::NoName)
        );
        assert_eq!(
            parse(r#"<tool_call>{"name": "t", "arguments": [1]}</tool_call>"#),
            Err(ParseError::NotAnObject)
        );
    }

    #[test]
    fn gbnf_admits_the_call_texts_verbatim() {
        let g = gbnf([
            model_call_text("answer", "a-1"),
            model_call_text("search", "s"),
        ]);
        assert_eq!(
            g,
            r#"root ::= "<tool_call>{\"name\": \"answer\", \"arguments\": {\"model\": \"a-1\"}}</tool_call>" | "<tool_call>{\"name\": \"search\", \"arguments\": {\"model\": \"s\"}}</tool_call>""#
                .to_string()
                + "\n"
        );
    }
}
