//! Helpers shared by the model tests.

use crate::{Model, Tokenizer};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Path of the reference Gemma 3 270M file (override with `TUTTI_GEMMA3_GGUF`).
pub(super) fn reference_path() -> PathBuf {
    std::env::var_os("TUTTI_GEMMA3_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/tutti/models/gemma-3-270m-Q4_K_M.gguf")
        })
}

/// The reference model and tokenizer, loaded once per test binary. When the file is missing:
/// off CI, `None` (and a note on stderr), so the suite passes without it; in CI (`CI` set), a
/// failure, since `.ci/run` installs it.
pub(super) fn reference() -> Option<&'static (Model, Tokenizer)> {
    static MODEL: OnceLock<Option<(Model, Tokenizer)>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = reference_path();
            if !path.exists() {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI must install the reference model {} (scripts/setup-model.sh)",
                    path.display()
                );
                eprintln!("skipping: reference model {} not found", path.display());
                return None;
            }
            Some(Model::load(&path).expect("loading the reference model"))
        })
        .as_ref()
}
