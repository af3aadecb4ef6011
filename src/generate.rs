//! `tutti generate`: raw completion with an in-process GGUF model (a smoke and parity check).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use tutti_model::{argmax_rows, Model, SeqStep};

#[derive(Args)]
pub struct GenerateArgs {
    /// The GGUF model file.
    #[arg(long)]
    model: PathBuf,
    /// The prompt, used raw: BOS as the model expects, no chat template.
    #[arg(long)]
    prompt: String,
    /// New tokens to generate at most (fewer when the model ends the text).
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Pick the most likely token at every step (the only decoding offered so far).
    #[arg(long)]
    greedy: bool,
}

pub fn main(args: GenerateArgs) -> Result<ExitCode> {
    if !args.greedy {
        eprintln!("tutti: sampling is not offered yet; decoding greedily");
    }
    let (model, tok) = Model::load(&args.model)
        .with_context(|| format!("cannot load {}", args.model.display()))?;
    let prompt = tok.encode(&args.prompt, true, false);
    let mut cache = model.new_cache();
    let mut next = prompt.clone();
    let mut generated = Vec::new();
    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    let mut printed = 0;
    for _ in 0..args.max_tokens {
        let step = model.step(
            &mut [SeqStep {
                tokens: &next,
                cache: &mut cache,
            }],
            false,
        )?;
        let id = argmax_rows(&step.last)?[0];
        if tok.is_eog(id) {
            break;
        }
        generated.push(id);
        // Print what decodes completely so far (a character may span several tokens).
        let text = tok.decode(&generated, false);
        let end = text.trim_end_matches('\u{fffd}').len();
        write!(out, "{}", &text[printed.min(end)..end])?;
        out.flush()?;
        printed = end;
        next = vec![id];
    }
    let text = tok.decode(&generated, false);
    writeln!(out, "{}", &text[printed.min(text.len())..])?;
    out.flush()?;
    eprintln!(
        "tutti: prompt {} tokens {:?}; {} new tokens in {:.2} s",
        prompt.len(),
        prompt,
        generated.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
