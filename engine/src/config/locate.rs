//! Where a key is written in a config's text, so that the errors found after parsing (a value out
//! of range, a reference to a backend or alias that does not exist) name the line and column of
//! the offending key, as serde's own errors do.

use std::fmt;

use toml::de::{DeTable, DeValue};

/// A key's path in the document, shown as users write it: `backends[0].sim.latency_ms`,
/// `aliases."a.b"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(Vec<Step>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

impl KeyPath {
    /// The path one key deeper. Any text is a key here (an alias may hold a dot).
    pub(crate) fn key(&self, key: &str) -> KeyPath {
        let mut next = self.clone();
        next.0.push(Step::Key(key.to_string()));
        next
    }

    /// The path followed by a literal path written in code: `backends[0]` then `sim.latency_ms`.
    pub(crate) fn keys(&self, literal: &str) -> KeyPath {
        let mut next = self.clone();
        next.0.extend(KeyPath::from(literal).0);
        next
    }

    /// The path of element `i` of the array at this path.
    pub(crate) fn index(&self, i: usize) -> KeyPath {
        let mut next = self.clone();
        next.0.push(Step::Index(i));
        next
    }
}

/// A path written in code as it reads in an error: `orchestrator.max_seqs`, `backends[2].rpm`.
/// Only for literal paths: a name from the config (which may hold a dot) goes through
/// [`KeyPath::key`].
impl From<&str> for KeyPath {
    fn from(path: &str) -> KeyPath {
        let mut steps = Vec::new();
        for part in path.split('.') {
            let (key, indexes) = part
                .split_once('[')
                .map_or((part, ""), |(k, rest)| (k, rest));
            steps.push(Step::Key(key.to_string()));
            for index in indexes.split('[') {
                if let Ok(i) = index.trim_end_matches(']').parse() {
                    steps.push(Step::Index(i));
                }
            }
        }
        KeyPath(steps)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, step) in self.0.iter().enumerate() {
            match step {
                Step::Index(i) => write!(f, "[{i}]")?,
                Step::Key(k) => {
                    if n > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The byte offset where `path` is written in `doc`: its key, or, for a key the config leaves
/// out (its default is what is wrong), the nearest enclosing key or table that is written.
pub(super) fn offset(doc: &DeTable<'_>, path: &KeyPath) -> Option<usize> {
    let mut found = None;
    let mut table = Some(doc);
    let mut array = None;
    for step in &path.0 {
        let value: &toml::Spanned<DeValue<'_>> = match step {
            Step::Key(k) => {
                let Some((key, value)) = table.and_then(|t| {
                    t.iter()
                        .find(|(key, _)| key.get_ref().as_ref() == k.as_str())
                }) else {
                    break;
                };
                found = Some(key.span().start);
                value
            }
            Step::Index(i) => {
                let Some(value) = array.and_then(|a: &toml::de::DeArray<'_>| a.get(*i)) else {
                    break;
                };
                // An element of an array of tables has no key; its span starts at its first key.
                let span = value.span();
                if span.start < span.end {
                    found = Some(span.start);
                }
                value
            }
        };
        table = value.get_ref().as_table();
        array = value.get_ref().as_array();
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(text: &str, path: &str) -> usize {
        let doc = DeTable::parse(text).unwrap();
        let at = offset(doc.get_ref(), &KeyPath::from(path)).expect("located");
        text[..at].matches('\n').count() + 1
    }

    #[test]
    fn a_written_key_is_found_at_its_line() {
        let text = "[orchestrator]\nexecutor = \"sim\"\nmax_seqs = 0\n\n[[backends]]\nname = \
                    \"a\"\n\n[[backends]]\nname = \"b\"\nmax_concurrency = 0\n[backends.sim]\n\
                    latency_ms = { p50 = 1, p99 = 2 }\n";
        assert_eq!(line_of(text, "orchestrator.max_seqs"), 3);
        assert_eq!(line_of(text, "backends[1].max_concurrency"), 10);
        assert_eq!(line_of(text, "backends[1].sim.latency_ms"), 12);
        assert_eq!(line_of(text, "backends[0].name"), 6);
    }

    #[test]
    fn a_key_left_out_is_found_at_its_table() {
        let text = "[orchestrator]\nexecutor = \"sim\"\n";
        assert_eq!(line_of(text, "orchestrator.max_batched_tokens"), 1);
    }

    #[test]
    fn paths_read_as_written() {
        assert_eq!(
            KeyPath::from("backends[3].sim.latency_ms").to_string(),
            "backends[3].sim.latency_ms"
        );
        assert_eq!(
            KeyPath::from("aliases").key("a.b").to_string(),
            "aliases.\"a.b\""
        );
        assert_eq!(
            KeyPath::from("tools")
                .index(0)
                .key("aliases")
                .index(2)
                .to_string(),
            "tools[0].aliases[2]"
        );
    }
}
