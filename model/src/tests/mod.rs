//! The model against references: random-weight models built in memory (batched steps equal
//! one-at-a-time steps, GGUF and tokenizer round trips, the runtime's scheduling), and the
//! reference Gemma 3 file (logits and greedy text against llama.cpp's), when it is installed.

mod common;
mod model_parity;
mod model_reference;
mod model_tokenizer;
mod native_runtime;
