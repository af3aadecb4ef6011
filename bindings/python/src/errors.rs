//! Errors as the Python package's exceptions. The classes live in `tutti/_errors.py` (so that
//! `TaskError` can be both a `TuttiError` and a `ValueError`); they are looked up when raised.

use pyo3::prelude::*;
use tutti_engine::io::{InputError, Position};

/// An exception of class `class` (in `tutti._errors`) built from `args`.
fn raise<'py, A>(py: Python<'py>, class: &str, args: A) -> PyErr
where
    A: pyo3::call::PyCallArgs<'py>,
{
    let made = py
        .import("tutti._errors")
        .and_then(|m| m.getattr(class))
        .and_then(|c| c.call1(args));
    match made {
        Ok(exception) => PyErr::from_value(exception),
        Err(e) => e,
    }
}

/// `tutti.TuttiError(message)`: the engine could not do what was asked (a config it cannot
/// build, a server it cannot reach, a run that stopped on an error).
pub(crate) fn tutti_error(py: Python<'_>, message: impl Into<String>) -> PyErr {
    raise(py, "TuttiError", (message.into(),))
}

/// `tutti.ConfigError(message)`: the config is invalid; the message names the key, and the
/// file, line and column where there is a file.
pub(crate) fn config_error(py: Python<'_>, message: impl Into<String>) -> PyErr {
    raise(py, "ConfigError", (message.into(),))
}

/// `tutti.TaskError(message, input, row, column)`: a task was refused, with the same message
/// as the command line's (input, row or line, column).
pub(crate) fn task_error(py: Python<'_>, e: &InputError) -> PyErr {
    let (input, row, line) = match e.location() {
        Some(at) => match at.position {
            Position::Row(row) => (Some(at.input.clone()), Some(row), None),
            Position::Line { line, .. } => (Some(at.input.clone()), None, Some(line)),
        },
        None => (None, None, None),
    };
    raise(
        py,
        "TaskError",
        (
            e.to_string(),
            input,
            row,
            line,
            e.field().map(str::to_string),
        ),
    )
}
