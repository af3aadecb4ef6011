//! Per-sequence key/value cache.
//!
//! Each layer keeps one key and one value buffer of shape `(n_kv_heads, capacity, head_dim)`
//! that grows by doubling; new positions are written in place with `slice_set`, so a decode
//! step costs O(new tokens) rather than a copy of the whole cache. Truncation only moves the
//! length back (the engine can evict and recompute a suffix); [`KvCache::clear`] frees memory.

use candle_core::{DType, Device, Result, Tensor};

/// Smallest number of positions allocated per layer.
const MIN_CAPACITY: usize = 64;

/// One layer's key and value buffers.
#[derive(Debug)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
}

/// The key/value cache of one sequence across all layers.
///
/// Not `Clone`: the buffers are written in place, so a shallow copy would alias; use
/// [`KvCache::fork`] for an independent copy (e.g. to share a prompt prefix).
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    n_kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    device: Device,
    /// Positions stored in every layer.
    len: usize,
    /// Positions written so far by the step in progress, per layer.
    pending: Vec<usize>,
}

impl KvCache {
    /// An empty cache for a model with the given geometry.
    pub fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            layers: (0..n_layers).map(|_| None).collect(),
            n_kv_heads,
            head_dim,
            dtype,
            device: device.clone(),
            len: 0,
            pending: vec![0; n_layers],
        }
    }

    /// Number of cached positions (the position the next token gets).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated by the buffers (capacity, not just the used part).
    pub fn size_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|l| (l.k.elem_count() + l.v.elem_count()) * l.k.dtype().size_in_bytes())
            .sum()
    }

    /// Bytes taken by the cached positions alone.
    pub fn used_bytes(&self) -> usize {
        self.len * self.bytes_per_position()
    }

    /// Bytes one cached position takes across all layers (keys and values).
    pub fn bytes_per_position(&self) -> usize {
        2 * self.layers.len() * self.n_kv_heads * self.head_dim * self.dtype.size_in_bytes()
    }

    /// Forgets every position after the first `len` (no-op when already shorter).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Forgets every position and frees the buffers.
    pub fn clear(&mut self) {
        self.len = 0;
        self.layers.iter_mut().for_each(|l| *l = None);
    }

    /// Reallocates the buffers to fit exactly the cached positions, returning memory.
    pub fn shrink_to_fit(&mut self) -> Result<()> {
        let len = self.len;
        for layer in self.layers.iter_mut() {
            if len == 0 {
                *layer = None;
            } else if let Some(l) = layer {
                l.k = l.k.narrow(1, 0, len)?.contiguous()?;
                l.v = l.v.narrow(1, 0, len)?.contiguous()?;
            }
        }
        Ok(())
    }

    /// An independent deep copy of the cached positions.
    pub fn fork(&self) -> Result<Self> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            layers.push(match layer {
                Some(l) if self.len > 0 => Some(LayerKv {
                    k: l.k.narrow(1, 0, self.len)?.contiguous()?,
                    v: l.v.narrow(1, 0, self.len)?.contiguous()?,
                }),
                _ => None,
            });
        }
        Ok(Self {
            layers,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            dtype: self.dtype,
            device: self.device.clone(),
            len: self.len,
            pending: vec![0; self.pending.len()],
        })
    }

    /// Appends `k`/`v` of shape `(n_kv_heads, n_new, head_dim)` to `layer` and returns views of
    /// all its keys and values (cached then new), each `(n_kv_heads, len + n_new, head_dim)`.
    ///
    /// The cache length advances once [`KvCache::commit`] is called after the last layer.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let n_new = k.dim(1)?;
        let total = self.len + n_new;
        let cap = self.layers[layer]
            .as_ref()
            .map_or(0, |l| l.k.dim(1).unwrap_or(0));
        if total > cap {
            let new_cap = total.max(2 * cap).max(MIN_CAPACITY);
            let shape = (self.n_kv_heads, new_cap, self.head_dim);
            let nk = Tensor::zeros(shape, self.dtype, &self.device)?;
            let nv = Tensor::zeros(shape, self.dtype, &self.device)?;
            if let Some(old) = &self.layers[layer] {
                if self.len > 0 {
                    nk.slice_set(&old.k.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                    nv.slice_set(&old.v.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                }
            }
            self.layers[layer] = Some(LayerKv { k: nk, v: nv });
        }
        let l = self.layers[layer].as_ref().expect("allocated above");
        l.k.slice_set(&k.to_dtype(self.dtype)?.contiguous()?, 1, self.len)?;
        l.v.slice_set(&v.to_dtype(self.dtype)?.contiguous()?, 1, self.len)?;
        self.pending[layer] = n_new;
        Ok((l.k.narrow(1, 0, total)?, l.v.narrow(1, 0, total)?))
    }

    /// The whole key and value buffers of `layer`, each `(n_kv_heads, capacity, head_dim)`
    /// (only the first `len` positions plus those appended by the current step are valid).
    pub(crate) fn buffers(&self, layer: usize) -> Option<(&Tensor, &Tensor)> {
        self.layers[layer].as_ref().map(|l| (&l.k, &l.v))
    }

    /// Makes the positions appended by the finished step part of the cache.
    pub(crate) fn commit(&mut self) {
        let n = self.pending.iter().copied().max().unwrap_or(0);
        self.len += n;
        self.pending.iter_mut().for_each(|p| *p = 0);
    }

    /// Drops the positions appended by a step that failed part-way.
    pub(crate) fn rollback(&mut self) {
        self.pending.iter_mut().for_each(|p| *p = 0);
    }
}
