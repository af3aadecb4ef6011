//! `tutti._tutti`: the native half of the Python module. The Python package (`python/tutti`)
//! wraps it: it turns pandas frames and lists of dicts into Arrow, draws the progress bar and
//! carries the docstrings users read; this half holds the engine, moves Arrow through the C
//! stream interface (the caller's buffers, not copies), and releases the GIL while work runs.
//!
//! - `engine`: `_Engine` (one engine and its async runtime) and `_Run` (one run's committed
//!   result batches, as an iterator).
//! - `client`: `_Client`, a connection to `tutti serve` over Arrow Flight.
//! - `vllm_rs`: the host of `vllm-rs` backends, which drive vllm-rs's engine through Python.
//! - `errors`: Rust errors as the package's exception classes (`tutti.TuttiError`, ...).

mod client;
mod engine;
mod errors;
mod vllm_rs;

use pyo3::prelude::*;

#[pymodule]
fn _tutti(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The engine's logs, on standard error, when asked for: `TUTTI_LOG=tutti_engine=debug`.
    if let Ok(filter) = std::env::var("TUTTI_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<engine::PyRun>()?;
    m.add_class::<client::PyClient>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("PROFILES", engine::profile_names())?;
    Ok(())
}
