//! Error text for people: an error and its causes on one line, each cause said once.

use std::error::Error;

/// `e` and its chain of sources joined by `": "`, leaving out a cause whose text the line already
/// holds (an error that prints its source and also returns it from `source()` would otherwise say
/// it twice: `No such file or directory (os error 2): No such file or directory (os error 2)`).
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !said.is_empty() && !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct Read {
        path: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("the job failed")]
    struct Outer(#[source] Read);

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let e = Read {
            path: "tasks.jsonl",
            source: std::io::Error::from_raw_os_error(2),
        };
        assert_eq!(
            chain(&e),
            "cannot read tasks.jsonl: No such file or directory (os error 2)"
        );
        let outer = Outer(e);
        assert_eq!(
            chain(&outer),
            "the job failed: cannot read tasks.jsonl: No such file or directory (os error 2)"
        );
    }
}
