//! The result cache: repeated tool calls are answered without a billed call.
//!
//! Two tiers. Memory: an LRU bounded by entries and by bytes. Disk (optional): a redb database, so
//! a re-run of the same job finds the results of the first run. Which calls may be cached is the
//! backend's policy (`off`, `deterministic`, `always`, see [`crate::config::CachePolicy`]); the
//! [`crate::coalesce::Coalescer`] decides, this module stores. Entries carry an expiry time; an
//! expired entry is a miss and is dropped.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lru::LruCache;
use parking_lot::Mutex;
use redb::{ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::backend::{CacheKey, Response};
use crate::config::CacheConfig;

const TABLE: TableDefinition<u128, &[u8]> = TableDefinition::new("results");
/// Bytes an entry costs beyond its text (key, struct, LRU node, Arc).
const ENTRY_OVERHEAD: usize = 112;
/// How many pending disk writes the writer thread commits in one transaction at most.
const DISK_BATCH: usize = 4096;

/// A cached answer and what the call cost when it was billed.
#[derive(Debug, Clone)]
pub struct CachedResult {
    pub response: Arc<Response>,
    pub cost_usd: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache database {path}: {message}")]
    Open { path: String, message: String },
}

/// Counters of cache use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub disk_hits: u64,
    pub evictions: u64,
    pub entries: u64,
    pub bytes: u64,
}

struct Entry {
    value: CachedResult,
    expires: Option<SystemTime>,
    size: usize,
}

struct MemTier {
    lru: LruCache<CacheKey, Entry>,
    bytes: usize,
    max_bytes: usize,
    evictions: u64,
}

impl MemTier {
    fn insert(&mut self, key: CacheKey, entry: Entry) {
        self.bytes += entry.size;
        if let Some((_, old)) = self.lru.push(key, entry) {
            // Either the same key replaced, or the least recent entry pushed out by the count bound.
            self.bytes -= old.size;
            self.evictions += 1;
        }
        while self.bytes > self.max_bytes {
            match self.lru.pop_lru() {
                Some((_, old)) => {
                    self.bytes -= old.size;
                    self.evictions += 1;
                }
                None => break,
            }
        }
    }
}

/// The on-disk form of an entry.
#[derive(Serialize, Deserialize)]
struct DiskEntry {
    text: String,
    input_tokens: u64,
    output_tokens: u64,
    billed_seconds: f64,
    cost_usd: f64,
    /// Unix seconds; none = never expires.
    expires: Option<f64>,
}

struct DiskTier {
    db: Arc<redb::Database>,
    writes: Option<crossbeam_channel::Sender<DiskWrite>>,
    writer: Option<JoinHandle<()>>,
}

enum DiskWrite {
    Put(CacheKey, Vec<u8>),
    Flush(crossbeam_channel::Sender<()>),
}

pub struct ResultCache {
    mem: Mutex<MemTier>,
    disk: Option<DiskTier>,
    hits: AtomicU64,
    misses: AtomicU64,
    disk_hits: AtomicU64,
}

impl ResultCache {
    /// A cache as configured: memory always, disk when `cfg.path` is set.
    pub fn new(cfg: &CacheConfig) -> Result<ResultCache, CacheError> {
        let disk = match &cfg.path {
            Some(dir) => Some(DiskTier::open(dir)?),
            None => None,
        };
        Ok(ResultCache {
            mem: Mutex::new(MemTier {
                lru: LruCache::new(NonZeroUsize::new(cfg.max_entries.max(1)).expect("max(1)")),
                bytes: 0,
                max_bytes: cfg.max_bytes,
                evictions: 0,
            }),
            disk,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            disk_hits: AtomicU64::new(0),
        })
    }

    pub fn get(&self, key: CacheKey) -> Option<CachedResult> {
        self.get_at(key, SystemTime::now())
    }

    /// Looks a key up as of `now`: memory first, then disk (a disk hit is promoted to memory).
    pub(crate) fn get_at(&self, key: CacheKey, now: SystemTime) -> Option<CachedResult> {
        if let Some(v) = self.mem_get(key, now) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Some(v);
        }
        if let Some((value, expires)) = self.disk.as_ref().and_then(|d| d.get(key, now)) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.disk_hits.fetch_add(1, Ordering::Relaxed);
            let size = entry_size(&value);
            self.mem.lock().insert(
                key,
                Entry {
                    value: value.clone(),
                    expires,
                    size,
                },
            );
            return Some(value);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Looks again, in memory only, for a key whose [`ResultCache::get`] missed a moment ago: the
    /// coalescer asks before it sends a call, as an identical call may have been answered (and its
    /// answer put here, in memory at once) in between. The disk was searched by that first look. A
    /// hit turns the first look's miss into a hit in the counts; a miss counts nothing more.
    pub(crate) fn get_again(&self, key: CacheKey) -> Option<CachedResult> {
        let v = self.mem_get(key, SystemTime::now())?;
        self.misses.fetch_sub(1, Ordering::Relaxed);
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(v)
    }

    /// The memory tier's entry for `key` as of `now`; an expired entry is dropped. Counts nothing.
    fn mem_get(&self, key: CacheKey, now: SystemTime) -> Option<CachedResult> {
        let mut mem = self.mem.lock();
        match mem.lru.get(&key) {
            Some(e) if e.expires.is_none_or(|t| t > now) => return Some(e.value.clone()),
            Some(_) => {}
            None => return None,
        }
        if let Some(old) = mem.lru.pop(&key) {
            mem.bytes -= old.size;
        }
        None
    }

    pub fn put(&self, key: CacheKey, value: CachedResult, ttl: Option<Duration>) {
        self.put_at(key, value, ttl, SystemTime::now())
    }

    /// Stores a result that expires `ttl` after `now` (never without a ttl), in both tiers.
    pub(crate) fn put_at(
        &self,
        key: CacheKey,
        value: CachedResult,
        ttl: Option<Duration>,
        now: SystemTime,
    ) {
        let expires = ttl.map(|t| now + t);
        if let Some(disk) = &self.disk {
            disk.put(key, &value, expires);
        }
        let size = entry_size(&value);
        self.mem.lock().insert(
            key,
            Entry {
                value,
                expires,
                size,
            },
        );
    }

    /// Waits until every put so far is committed to disk.
    pub(crate) fn flush(&self) {
        if let Some(d) = &self.disk {
            d.flush();
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let mem = self.mem.lock();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            disk_hits: self.disk_hits.load(Ordering::Relaxed),
            evictions: mem.evictions,
            entries: mem.lru.len() as u64,
            bytes: mem.bytes as u64,
        }
    }
}

fn entry_size(v: &CachedResult) -> usize {
    v.response.text.len() + ENTRY_OVERHEAD
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl DiskTier {
    fn open(dir: &Path) -> Result<DiskTier, CacheError> {
        let err = |e: &dyn std::fmt::Display| CacheError::Open {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        let db = redb::Database::create(dir.join("results.redb")).map_err(|e| err(&e))?;
        let tx = db.begin_write().map_err(|e| err(&e))?;
        tx.open_table(TABLE).map_err(|e| err(&e))?;
        tx.commit().map_err(|e| err(&e))?;
        let db = Arc::new(db);
        let (writes, rx) = crossbeam_channel::unbounded();
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("tutti-cache-writer".into())
            .spawn(move || disk_writer(&writer_db, rx))
            .map_err(|e| err(&e))?;
        Ok(DiskTier {
            db,
            writes: Some(writes),
            writer: Some(writer),
        })
    }

    fn get(&self, key: CacheKey, now: SystemTime) -> Option<(CachedResult, Option<SystemTime>)> {
        let tx = self.db.begin_read().ok()?;
        let table = tx.open_table(TABLE).ok()?;
        let raw = table.get(key.0).ok()??;
        let e: DiskEntry = serde_json::from_slice(raw.value()).ok()?;
        if e.expires.is_some_and(|t| t <= unix(now)) {
            return None;
        }
        // A time no clock reaches (a damaged entry: NaN, 1e300) makes the entry unusable.
        let expires = match e.expires {
            Some(s) => Some(UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(s).ok()?)?),
            None => None,
        };
        let response = Response {
            text: e.text,
            input_tokens: e.input_tokens,
            output_tokens: e.output_tokens,
            billed_seconds: e.billed_seconds,
        };
        Some((
            CachedResult {
                response: Arc::new(response),
                cost_usd: e.cost_usd,
            },
            expires,
        ))
    }

    fn put(&self, key: CacheKey, v: &CachedResult, expires: Option<SystemTime>) {
        let e = DiskEntry {
            text: v.response.text.clone(),
            input_tokens: v.response.input_tokens,
            output_tokens: v.response.output_tokens,
            billed_seconds: v.response.billed_seconds,
            cost_usd: v.cost_usd,
            expires: expires.map(unix),
        };
        let bytes = serde_json::to_vec(&e).expect("plain struct serialises");
        if let Some(w) = &self.writes {
            let _ = w.send(DiskWrite::Put(key, bytes));
        }
    }

    fn flush(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if let Some(w) = &self.writes {
            if w.send(DiskWrite::Flush(tx)).is_ok() {
                let _ = rx.recv();
            }
        }
    }
}

impl Drop for DiskTier {
    fn drop(&mut self) {
        self.writes.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Commits queued writes in batches: one transaction (one fsync) per batch rather than per put.
fn disk_writer(db: &redb::Database, rx: crossbeam_channel::Receiver<DiskWrite>) {
    let mut puts = Vec::new();
    let mut flushes = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(w) = next {
            match w {
                DiskWrite::Put(k, v) => puts.push((k, v)),
                DiskWrite::Flush(done) => flushes.push(done),
            }
            next = if puts.len() < DISK_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if !puts.is_empty() {
            let result = (|| -> Result<(), redb::Error> {
                let tx = db.begin_write()?;
                {
                    let mut table = tx.open_table(TABLE)?;
                    for (k, v) in &puts {
                        table.insert(k.0, v.as_slice())?;
                    }
                }
                tx.commit()?;
                Ok(())
            })();
            if let Err(e) = result {
                tracing::warn!(target: "tutti::cache", error = %e, "persistent cache write failed");
            }
            puts.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(text: &str, cost: f64) -> CachedResult {
        CachedResult {
            response: Arc::new(Response {
                text: text.into(),
                input_tokens: 10,
                output_tokens: 5,
                billed_seconds: 0.0,
            }),
            cost_usd: cost,
        }
    }

    fn k(name: &str) -> CacheKey {
        CacheKey(xxhash_rust::xxh3::xxh3_128(name.as_bytes()))
    }

    fn cache(entries: usize, bytes: usize) -> ResultCache {
        ResultCache::new(&CacheConfig {
            max_entries: entries,
            max_bytes: bytes,
            path: None,
        })
        .unwrap()
    }

    #[test]
    fn hit_after_put_and_counts() {
        let c = cache(10, 1 << 20);
        assert!(c.get(k("k")).is_none());
        c.put(k("k"), result("v", 0.5), None);
        let hit = c.get(k("k")).unwrap();
        assert_eq!(hit.response.text, "v");
        assert_eq!(hit.cost_usd, 0.5);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.entries), (1, 1, 1));
    }

    #[test]
    fn a_second_look_finds_what_was_put_since_and_counts_one_lookup() {
        let c = cache(10, 1 << 20);
        assert!(c.get(k("k")).is_none());
        assert!(c.get_again(k("k")).is_none());
        assert_eq!((c.stats().hits, c.stats().misses), (0, 1));
        c.put(k("k"), result("v", 0.5), None);
        assert_eq!(c.get_again(k("k")).unwrap().response.text, "v");
        assert_eq!((c.stats().hits, c.stats().misses), (1, 0));
    }

    #[test]
    fn evicts_least_recent_when_over_bytes() {
        let text = "x".repeat(1000);
        // Room for two entries of ~1,100 bytes, not three.
        let c = cache(100, 2 * (1000 + ENTRY_OVERHEAD) + 10);
        c.put(k("a"), result(&text, 1.0), None);
        c.put(k("b"), result(&text, 1.0), None);
        assert!(c.get(k("a")).is_some()); // a is now the most recent
        c.put(k("c"), result(&text, 1.0), None);
        assert!(c.get(k("b")).is_none(), "b was least recent and must go");
        assert!(c.get(k("a")).is_some());
        assert!(c.get(k("c")).is_some());
        let s = c.stats();
        assert_eq!(s.entries, 2);
        assert!(s.bytes <= 2 * (1000 + ENTRY_OVERHEAD) as u64 + 10);
        assert_eq!(s.evictions, 1);
    }

    #[test]
    fn evicts_by_entry_count() {
        let c = cache(2, 1 << 20);
        for name in ["a", "b", "c"] {
            c.put(k(name), result("v", 1.0), None);
        }
        assert!(c.get(k("a")).is_none());
        assert_eq!(c.stats().entries, 2);
    }

    #[test]
    fn entry_larger_than_the_byte_bound_is_not_kept() {
        let c = cache(10, 50);
        c.put(k("k"), result(&"x".repeat(100), 1.0), None);
        assert!(c.get(k("k")).is_none());
        assert_eq!(c.stats().bytes, 0);
    }

    #[test]
    fn expires_after_ttl() {
        let c = cache(10, 1 << 20);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        c.put_at(k("k"), result("v", 1.0), Some(Duration::from_secs(60)), t0);
        assert!(c.get_at(k("k"), t0 + Duration::from_secs(59)).is_some());
        assert!(c.get_at(k("k"), t0 + Duration::from_secs(60)).is_none());
        assert_eq!(c.stats().entries, 0, "expired entry is dropped");
    }

    #[test]
    fn disk_tier_survives_a_restart_and_honours_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = CacheConfig {
            max_entries: 10,
            max_bytes: 1 << 20,
            path: Some(dir.path().into()),
        };
        let t0 = SystemTime::now();
        {
            let c = ResultCache::new(&cfg).unwrap();
            c.put_at(k("keep"), result("kept", 0.25), None, t0);
            c.put_at(
                k("short"),
                result("gone", 0.25),
                Some(Duration::from_secs(5)),
                t0,
            );
            c.flush();
        }
        let c = ResultCache::new(&cfg).unwrap();
        let hit = c.get_at(k("keep"), t0).unwrap();
        assert_eq!(hit.response.text, "kept");
        assert_eq!(hit.cost_usd, 0.25);
        assert_eq!(c.stats().disk_hits, 1);
        assert!(c.get_at(k("short"), t0 + Duration::from_secs(1)).is_some());
        assert!(c.get_at(k("short"), t0 + Duration::from_secs(6)).is_none());
    }
}
