//! Per-sequence key/value cache.
//!
//! Each layer keeps one key and one value buffer of shape `(n_kv_heads, capacity, head_dim)`
//! that grows by doubling (or to an exact size set with [`KvCache::reserve`]); new positions
//! are written in place with `slice_set`, so a decode step costs O(new tokens) rather than a
//! copy of the whole cache. Truncation only moves the length back (the engine can evict and
//! recompute a suffix); [`KvCache::clear`] frees memory.
//!
//! A cache may start from a shared, frozen *prefix* ([`KvCache::with_prefix`]): positions
//! `0..prefix.len()` are read from the prefix's buffers, which every sequence built on it shares
//! by reference, and only the positions after it live in this cache's own buffers.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

/// Smallest number of positions allocated per layer.
const MIN_CAPACITY: usize = 64;

/// One layer's key and value buffers.
#[derive(Debug)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
}

/// One buffer pair of a layer, holding positions from `start` on; see [`KvCache::segments`].
pub(crate) struct Segment<'a> {
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub start: usize,
}

/// The key/value cache of one sequence across all layers.
///
/// Not `Clone`: the buffers are written in place, so a shallow copy would alias; use
/// `KvCache::fork` for an independent copy (e.g. to share a prompt prefix).
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    n_kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    device: Device,
    /// Positions stored in every layer, the shared prefix's included.
    len: usize,
    /// The shared prefix this cache continues, if any: positions `0..prefix.len()`.
    prefix: Option<Arc<KvCache>>,
    /// Positions written so far by the step in progress, per layer.
    pending: Vec<usize>,
}

impl KvCache {
    /// An empty cache for a model with the given geometry.
    pub(crate) fn new(
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
            prefix: None,
            pending: vec![0; n_layers],
        }
    }

    /// An empty cache that continues `prefix`: its positions are read from the prefix's buffers
    /// (shared by reference, never copied) and new ones are appended after them.
    pub fn with_prefix(prefix: Arc<KvCache>) -> Self {
        let mut c = Self::new(
            prefix.layers.len(),
            prefix.n_kv_heads,
            prefix.head_dim,
            prefix.dtype,
            &prefix.device,
        );
        c.len = prefix.len;
        c.prefix = Some(prefix);
        c
    }

    /// Positions read from the shared prefix (0 without one).
    pub(crate) fn prefix_len(&self) -> usize {
        self.prefix.as_ref().map_or(0, |p| p.len)
    }

    /// Number of cached positions (the position the next token gets).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes allocated by this cache's own buffers (capacity, not just the used part; a shared
    /// prefix is not counted).
    pub(crate) fn size_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|l| (l.k.elem_count() + l.v.elem_count()) * l.k.dtype().size_in_bytes())
            .sum()
    }

    /// Bytes taken by the cached positions of this cache's own buffers.
    #[cfg(test)]
    pub(crate) fn used_bytes(&self) -> usize {
        (self.len - self.prefix_len()) * self.bytes_per_position()
    }

    /// Bytes one cached position takes across all layers (keys and values).
    pub(crate) fn bytes_per_position(&self) -> usize {
        2 * self.layers.len() * self.n_kv_heads * self.head_dim * self.dtype.size_in_bytes()
    }

    /// Forgets every position after the first `len` (no-op when already shorter). Cutting into
    /// a shared prefix drops the prefix and every position: the cache starts over empty.
    pub(crate) fn truncate(&mut self, len: usize) {
        if len < self.prefix_len() {
            self.clear();
        } else {
            self.len = self.len.min(len);
        }
    }

    /// Forgets every position (and the shared prefix) and frees the buffers.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
        self.prefix = None;
        self.layers.iter_mut().for_each(|l| *l = None);
    }

    /// Sizes the own buffers to hold exactly `positions` positions in all (the prefix
    /// included), so that appending up to that many allocates nothing more. Never drops cached
    /// positions: the capacity is at least what is cached.
    pub(crate) fn reserve_exact(&mut self, positions: usize) -> Result<()> {
        let own = positions.max(self.len) - self.prefix_len();
        self.resize_own(own)
    }

    /// Reallocates the own buffers to fit exactly the cached positions, returning memory.
    pub(crate) fn shrink_to_fit(&mut self) -> Result<()> {
        self.resize_own(self.len - self.prefix_len())
    }

    /// Reallocates every layer's own buffers to `cap` positions (at least the cached ones),
    /// keeping what is cached.
    fn resize_own(&mut self, cap: usize) -> Result<()> {
        let own = self.len - self.prefix_len();
        let cap = cap.max(own);
        let shape = (self.n_kv_heads, cap, self.head_dim);
        for layer in self.layers.iter_mut() {
            if cap == 0 {
                *layer = None;
                continue;
            }
            if layer.as_ref().is_some_and(|l| l.k.dim(1).ok() == Some(cap)) {
                continue;
            }
            let nk = Tensor::zeros(shape, self.dtype, &self.device)?;
            let nv = Tensor::zeros(shape, self.dtype, &self.device)?;
            if let (Some(old), true) = (layer.as_ref(), own > 0) {
                nk.slice_set(&old.k.narrow(1, 0, own)?.contiguous()?, 1, 0)?;
                nv.slice_set(&old.v.narrow(1, 0, own)?.contiguous()?, 1, 0)?;
            }
            *layer = Some(LayerKv { k: nk, v: nv });
        }
        Ok(())
    }

    /// An independent deep copy of the cached positions (a shared prefix stays shared).
    #[cfg(test)]
    pub(crate) fn fork(&self) -> Result<Self> {
        let own = self.len - self.prefix_len();
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            layers.push(match layer {
                Some(l) if own > 0 => Some(LayerKv {
                    k: l.k.narrow(1, 0, own)?.contiguous()?,
                    v: l.v.narrow(1, 0, own)?.contiguous()?,
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
            prefix: self.prefix.clone(),
            pending: vec![0; self.pending.len()],
        })
    }

    /// Appends `k`/`v` of shape `(n_kv_heads, n_new, head_dim)` to `layer`, at positions
    /// `len..len + n_new`. The cache length advances once [`KvCache::commit`] is called after
    /// the last layer.
    pub(crate) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let n_new = k.dim(1)?;
        let own = self.len - self.prefix_len();
        let total = own + n_new;
        let cap = self.layers[layer]
            .as_ref()
            .map_or(0, |l| l.k.dim(1).unwrap_or(0));
        if total > cap {
            let new_cap = total.max(2 * cap).max(MIN_CAPACITY);
            let shape = (self.n_kv_heads, new_cap, self.head_dim);
            let nk = Tensor::zeros(shape, self.dtype, &self.device)?;
            let nv = Tensor::zeros(shape, self.dtype, &self.device)?;
            if let Some(old) = &self.layers[layer] {
                if own > 0 {
                    nk.slice_set(&old.k.narrow(1, 0, own)?.contiguous()?, 1, 0)?;
                    nv.slice_set(&old.v.narrow(1, 0, own)?.contiguous()?, 1, 0)?;
                }
            }
            self.layers[layer] = Some(LayerKv { k: nk, v: nv });
        }
        let l = self.layers[layer].as_ref().expect("allocated above");
        l.k.slice_set(&k.to_dtype(self.dtype)?.contiguous()?, 1, own)?;
        l.v.slice_set(&v.to_dtype(self.dtype)?.contiguous()?, 1, own)?;
        self.pending[layer] = n_new;
        Ok(())
    }

    /// The key and value buffers of `layer` as segments in position order: the shared
    /// prefix's (if any), then this cache's own. Each buffer is `(n_kv_heads, capacity,
    /// head_dim)`; a segment holds positions `start..start + capacity`, of which only those
    /// below `len` (plus the ones appended by the current step) are valid.
    pub(crate) fn segments(&self, layer: usize) -> Vec<Segment<'_>> {
        let mut out = Vec::with_capacity(2);
        if let Some(p) = &self.prefix {
            if let Some(l) = &p.layers[layer] {
                out.push(Segment {
                    k: &l.k,
                    v: &l.v,
                    start: 0,
                });
            }
        }
        if let Some(l) = &self.layers[layer] {
            out.push(Segment {
                k: &l.k,
                v: &l.v,
                start: self.prefix_len(),
            });
        }
        out
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
