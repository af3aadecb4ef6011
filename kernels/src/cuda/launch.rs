//! Typed launches: each method checks the buffers' lengths against the shapes it is given, then
//! launches one kernel of `kernels/cuda/` with the argument list its signature declares.

use cudarc::driver::{CudaSlice, LaunchArgs, LaunchConfig, PushKernelArg};

use super::{Gpu, GpuError};

/// A weight matrix on the device, `rows x dim`, row-major: the output projection (or the
/// embedding table) in one of the layouts the projections read.
#[derive(Debug)]
pub enum Weights {
    /// bf16 bits.
    Bf16(CudaSlice<u16>),
    /// f16 bits.
    F16(CudaSlice<u16>),
    /// GGUF Q8_0 blocks: per 32 elements, an f16 scale and 32 signed quants (34 bytes).
    Q8_0(CudaSlice<u8>),
}

impl Weights {
    /// Bytes of one row of `dim` elements.
    pub fn row_bytes(&self, dim: usize) -> usize {
        match self {
            Weights::Bf16(_) | Weights::F16(_) => dim * 2,
            Weights::Q8_0(_) => dim / 32 * 34,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Weights::Bf16(w) | Weights::F16(w) => w.len() * 2,
            Weights::Q8_0(w) => w.len(),
        }
    }

    fn check(&self, rows: usize, dim: usize) -> Result<(), GpuError> {
        let align = match self {
            Weights::Q8_0(_) => 32,
            _ => 8,
        };
        if dim == 0 || !dim.is_multiple_of(align) {
            return Err(shape(format!(
                "a row of {dim} elements: these weights need a multiple of {align}"
            )));
        }
        if self.bytes() < rows * self.row_bytes(dim) {
            return Err(shape(format!(
                "weights of {} bytes hold fewer than {rows} rows of {dim}",
                self.bytes()
            )));
        }
        Ok(())
    }
}

/// The shapes of one attention launch (see `paged_attention` in `forward.cu`).
#[derive(Debug, Clone, Copy)]
pub struct Attention {
    pub tokens: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    /// Blocks per row of the block table.
    pub max_blocks: usize,
    pub scale: f32,
    /// Sliding window in positions; 0 for none.
    pub window: usize,
}

fn shape(message: String) -> GpuError {
    GpuError::Shape(message)
}

fn need<T>(what: &str, buf: &CudaSlice<T>, len: usize) -> Result<(), GpuError> {
    if buf.len() < len {
        return Err(shape(format!(
            "{what}: {} elements, the launch reads {len}",
            buf.len()
        )));
    }
    Ok(())
}

fn int(what: &str, n: usize) -> Result<i32, GpuError> {
    i32::try_from(n).map_err(|_| shape(format!("{what} = {n} does not fit a kernel's int")))
}

fn blocks(n: usize, per_block: usize) -> u32 {
    n.div_ceil(per_block).max(1) as u32
}

fn config(grid: (u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0, grid.1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Warps per block of the projection kernels (one output per warp).
const WARPS_PER_BLOCK: usize = 8;

/// Launches an elementwise kernel, one thread per element: `args` holds every argument but the
/// last, the element count `n`, which is pushed here.
///
/// # Safety
/// `args` must be the kernel's arguments before `n`, with buffers of at least `n` elements.
unsafe fn launch_elementwise(args: LaunchArgs<'_>, n: usize) -> Result<(), GpuError> {
    let n_i = int("n", n)?;
    // Shortens the builder's lifetime to this call's, so that it can take `n_i`.
    let mut args: LaunchArgs<'_> = args;
    args.arg(&n_i);
    // SAFETY: the caller's arguments, then `n`.
    unsafe { args.launch(config((blocks(n, 256), 1), 256)) }?;
    Ok(())
}

impl Gpu {
    /// `y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * (w + w_offset)` for `rows` rows of `dim`.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
        w_offset: f32,
    ) -> Result<(), GpuError> {
        need("rms_norm x", x, rows * dim)?;
        need("rms_norm y", y, rows * dim)?;
        need("rms_norm w", w, dim)?;
        let d = int("dim", dim)?;
        let f = self.function("rms_norm");
        // SAFETY: the arguments are those of `rms_norm` in policy_head.cu, lengths checked above.
        unsafe {
            self.stream
                .launch_builder(f)
                .arg(x)
                .arg(w)
                .arg(y)
                .arg(&d)
                .arg(&eps)
                .arg(&w_offset)
                .launch(config((rows as u32, 1), 256))?;
        }
        Ok(())
    }

    /// `out[k] = h[seq_of[k]] . W[rows[k]]` for the `n` entries of `rows`: the gathered rows of
    /// every sequence in one launch. `h` is `[sequences][dim]`.
    #[allow(clippy::too_many_arguments)]
    pub fn gather_logits(
        &self,
        h: &CudaSlice<f32>,
        w: &Weights,
        w_rows: usize,
        rows: &CudaSlice<u32>,
        seq_of: &CudaSlice<u32>,
        out: &mut CudaSlice<f32>,
        n: usize,
        dim: usize,
    ) -> Result<(), GpuError> {
        w.check(w_rows, dim)?;
        need("gather_logits rows", rows, n)?;
        need("gather_logits seq_of", seq_of, n)?;
        need("gather_logits out", out, n)?;
        let (n_i, d) = (int("n", n)?, int("dim", dim)?);
        let cfg = config(
            (blocks(n, WARPS_PER_BLOCK), 1),
            (WARPS_PER_BLOCK * 32) as u32,
        );
        let name = match w {
            Weights::Bf16(_) => "gather_logits_bf16",
            Weights::F16(_) => "gather_logits_f16",
            Weights::Q8_0(_) => "gather_logits_q8_0",
        };
        let f = self.function(name);
        let mut b = self.stream.launch_builder(f);
        b.arg(h);
        match w {
            Weights::Bf16(w) | Weights::F16(w) => b.arg(w),
            Weights::Q8_0(w) => b.arg(w),
        };
        b.arg(rows).arg(seq_of).arg(out).arg(&n_i).arg(&d);
        // SAFETY: the arguments are those of the gather kernels; the row indices are the
        // caller's, each below `w_rows` (the kernel does not check them).
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// Every row: `out[s * w_rows + r] = h[s] . W[r]` for `sequences` rows of `h`.
    pub fn logits(
        &self,
        h: &CudaSlice<f32>,
        w: &Weights,
        w_rows: usize,
        out: &mut CudaSlice<f32>,
        sequences: usize,
        dim: usize,
    ) -> Result<(), GpuError> {
        w.check(w_rows, dim)?;
        need("logits h", h, sequences * dim)?;
        need("logits out", out, sequences * w_rows)?;
        let (r, d) = (int("rows", w_rows)?, int("dim", dim)?);
        let cfg = config(
            (blocks(w_rows, WARPS_PER_BLOCK), sequences as u32),
            (WARPS_PER_BLOCK * 32) as u32,
        );
        let name = match w {
            Weights::Bf16(_) => "logits_bf16",
            Weights::F16(_) => "logits_f16",
            Weights::Q8_0(_) => "logits_q8_0",
        };
        let f = self.function(name);
        let mut b = self.stream.launch_builder(f);
        b.arg(h);
        match w {
            Weights::Bf16(w) | Weights::F16(w) => b.arg(w),
            Weights::Q8_0(w) => b.arg(w),
        };
        b.arg(out).arg(&r).arg(&d);
        // SAFETY: the arguments are those of the dense projection kernels, lengths checked.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// One decision per sequence over its gathered logits `logits[offsets[s]..offsets[s + 1]]`
    /// with `bias` added (see `head_choose`): `chosen[s]` is the index within the sequence's rows,
    /// or -1. `offsets` has `n_seq + 1` entries, the last being the length of `logits`.
    #[allow(clippy::too_many_arguments)]
    pub fn head_choose(
        &self,
        logits: &mut CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        offsets: &CudaSlice<u32>,
        temperature: &CudaSlice<f32>,
        uniforms: &CudaSlice<f32>,
        chosen: &mut CudaSlice<i32>,
        n_seq: usize,
    ) -> Result<(), GpuError> {
        need("head_choose offsets", offsets, n_seq + 1)?;
        need("head_choose temperature", temperature, n_seq)?;
        need("head_choose uniforms", uniforms, n_seq)?;
        need("head_choose chosen", chosen, n_seq)?;
        if bias.len() < logits.len() {
            return Err(shape(format!(
                "head_choose: {} biases for {} logits",
                bias.len(),
                logits.len()
            )));
        }
        let n = int("sequences", n_seq)?;
        let f = self.function("head_choose");
        // SAFETY: the arguments are those of `head_choose`; the offsets are the caller's, ending
        // within `logits` (the kernel does not check them).
        unsafe {
            self.stream
                .launch_builder(f)
                .arg(logits)
                .arg(bias)
                .arg(offsets)
                .arg(temperature)
                .arg(uniforms)
                .arg(chosen)
                .arg(&n)
                .launch(config((blocks(n_seq, 64), 1), 64))?;
        }
        Ok(())
    }

    /// Samples one token per row of whole-vocabulary logits (`[n_seq][vocab]`, overwritten with
    /// probabilities) with each sequence's temperature, top-k, top-p and uniform number.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_full(
        &self,
        logits: &mut CudaSlice<f32>,
        vocab: usize,
        temperature: &CudaSlice<f32>,
        top_k: &CudaSlice<i32>,
        top_p: &CudaSlice<f32>,
        uniforms: &CudaSlice<f32>,
        chosen: &mut CudaSlice<i32>,
        n_seq: usize,
    ) -> Result<(), GpuError> {
        need("sample_full logits", logits, n_seq * vocab)?;
        for (what, len) in [
            ("temperature", temperature.len()),
            ("top_p", top_p.len()),
            ("uniforms", uniforms.len()),
        ] {
            if len < n_seq {
                return Err(shape(format!("sample_full {what}: {len} for {n_seq} rows")));
            }
        }
        need("sample_full top_k", top_k, n_seq)?;
        need("sample_full chosen", chosen, n_seq)?;
        let v = int("vocab", vocab)?;
        let f = self.function("sample_full");
        // SAFETY: the arguments are those of `sample_full`, lengths checked.
        unsafe {
            self.stream
                .launch_builder(f)
                .arg(logits)
                .arg(&v)
                .arg(temperature)
                .arg(top_k)
                .arg(top_p)
                .arg(uniforms)
                .arg(chosen)
                .launch(config((n_seq as u32, 1), 1024))?;
        }
        Ok(())
    }

    /// `out[t] = table[tokens[t]] * scale` for bf16 tables of `dim` columns.
    pub fn embed(
        &self,
        tokens: &CudaSlice<u32>,
        table: &CudaSlice<u16>,
        out: &mut CudaSlice<f32>,
        dim: usize,
        scale: f32,
    ) -> Result<(), GpuError> {
        let n = tokens.len();
        need("embed out", out, n * dim)?;
        let d = int("dim", dim)?;
        let f = self.function("embed_bf16");
        // SAFETY: the arguments are those of `embed_bf16`; token ids are the caller's, each below
        // the table's rows.
        unsafe {
            self.stream
                .launch_builder(f)
                .arg(tokens)
                .arg(table)
                .arg(out)
                .arg(&d)
                .arg(&scale)
                .launch(config((n as u32, 1), 256))?;
        }
        Ok(())
    }

    /// NeoX rotary embedding in place on `x: [tokens][heads][head_dim]`, with `[position][head_dim
    /// / 2]` cos/sin tables.
    pub fn rope(
        &self,
        x: &mut CudaSlice<f32>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        positions: &CudaSlice<i32>,
        heads: usize,
        head_dim: usize,
    ) -> Result<(), GpuError> {
        let n = positions.len();
        need("rope x", x, n * heads * head_dim)?;
        let (h, d) = (int("heads", heads)?, int("head_dim", head_dim)?);
        let f = self.function("rope_neox");
        // SAFETY: the arguments are those of `rope_neox`; positions are below the tables' rows.
        unsafe {
            self.stream
                .launch_builder(f)
                .arg(x)
                .arg(cos)
                .arg(sin)
                .arg(positions)
                .arg(&h)
                .arg(&d)
                .launch(config((n as u32, 1), 256))?;
        }
        Ok(())
    }

    /// `out = act(gate) * up` elementwise: SiLU (qwen3) or, with `gelu`, tanh-GELU (gemma3).
    pub fn gated(
        &self,
        gate: &CudaSlice<f32>,
        up: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        n: usize,
        gelu: bool,
    ) -> Result<(), GpuError> {
        need("gated gate", gate, n)?;
        need("gated up", up, n)?;
        need("gated out", out, n)?;
        let mut args =
            self.stream
                .launch_builder(self.function(if gelu { "gelu_mul" } else { "silu_mul" }));
        args.arg(gate).arg(up).arg(out);
        // SAFETY: the arguments of `silu_mul` / `gelu_mul` before `n`, lengths checked.
        unsafe { launch_elementwise(args, n) }
    }

    /// `x += y` over `n` elements.
    pub fn add(
        &self,
        x: &mut CudaSlice<f32>,
        y: &CudaSlice<f32>,
        n: usize,
    ) -> Result<(), GpuError> {
        need("add x", x, n)?;
        need("add y", y, n)?;
        let mut args = self.stream.launch_builder(self.function("add_inplace"));
        args.arg(x).arg(y);
        // SAFETY: the arguments of `add_inplace` before `n`, lengths checked.
        unsafe { launch_elementwise(args, n) }
    }

    /// `y = bf16(x)` over `n` elements (round to nearest even).
    pub fn to_bf16(
        &self,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<u16>,
        n: usize,
    ) -> Result<(), GpuError> {
        need("to_bf16 x", x, n)?;
        need("to_bf16 y", y, n)?;
        let mut args = self
            .stream
            .launch_builder(self.function("f32_to_bf16_rows"));
        args.arg(x).arg(y);
        // SAFETY: the arguments of `f32_to_bf16_rows` before `n`, lengths checked.
        unsafe { launch_elementwise(args, n) }
    }

    /// Stores each token's keys and values (`[tokens][kv_dim]`) into its slot of the bf16 caches
    /// (`[slot][kv_dim]`).
    pub fn kv_store(
        &self,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        k_cache: &mut CudaSlice<u16>,
        v_cache: &mut CudaSlice<u16>,
        slots: &CudaSlice<i32>,
        kv_dim: usize,
    ) -> Result<(), GpuError> {
        let n = slots.len();
        need("kv_store k", k, n * kv_dim)?;
        need("kv_store v", v, n * kv_dim)?;
        let d = int("kv_dim", kv_dim)?;
        let f = self.function("kv_store");
        // SAFETY: the arguments are those of `kv_store`; slots are the caller's, each below the
        // caches' slot count.
        unsafe {
            self.stream
                .launch_builder(f)
                .arg(k)
                .arg(v)
                .arg(k_cache)
                .arg(v_cache)
                .arg(slots)
                .arg(&d)
                .launch(config((n as u32, 1), 256))?;
        }
        Ok(())
    }

    /// Attention of each query token over its sequence's paged KV (see `paged_attention`).
    #[allow(clippy::too_many_arguments)]
    pub fn paged_attention(
        &self,
        q: &CudaSlice<f32>,
        k_cache: &CudaSlice<u16>,
        v_cache: &CudaSlice<u16>,
        block_tables: &CudaSlice<i32>,
        q_seq: &CudaSlice<i32>,
        q_len: &CudaSlice<i32>,
        out: &mut CudaSlice<f32>,
        a: Attention,
    ) -> Result<(), GpuError> {
        if a.head_dim == 0 || !a.head_dim.is_multiple_of(32) || a.head_dim > 256 {
            return Err(shape(format!(
                "paged_attention: head_dim {} (a multiple of 32, at most 256)",
                a.head_dim
            )));
        }
        if a.kv_heads == 0 || !a.heads.is_multiple_of(a.kv_heads) {
            return Err(shape(format!(
                "paged_attention: {} heads over {} KV heads",
                a.heads, a.kv_heads
            )));
        }
        need("paged_attention q", q, a.tokens * a.heads * a.head_dim)?;
        need("paged_attention out", out, a.tokens * a.heads * a.head_dim)?;
        need("paged_attention q_seq", q_seq, a.tokens)?;
        need("paged_attention q_len", q_len, a.tokens)?;
        let ints = [
            int("max_blocks", a.max_blocks)?,
            int("heads", a.heads)?,
            int("kv_heads", a.kv_heads)?,
            int("head_dim", a.head_dim)?,
            int("block_size", a.block_size)?,
            int("window", a.window)?,
        ];
        let f = self.function("paged_attention");
        // SAFETY: the arguments are those of `paged_attention`; block tables and lengths are
        // the caller's, naming blocks within the caches.
        unsafe {
            self.stream
                .launch_builder(f)
                .arg(q)
                .arg(k_cache)
                .arg(v_cache)
                .arg(block_tables)
                .arg(&ints[0])
                .arg(q_seq)
                .arg(q_len)
                .arg(out)
                .arg(&ints[1])
                .arg(&ints[2])
                .arg(&ints[3])
                .arg(&ints[4])
                .arg(&a.scale)
                .arg(&ints[5])
                .launch(config((a.tokens as u32, a.heads as u32), 128))?;
        }
        Ok(())
    }
}
