//! The durable store: persistent sessions and retained messages in one
//! [redb](https://docs.rs/redb) file under the data directory (DESIGN §5), so that nothing
//! acknowledged is lost across a crash.
//!
//! ```text
//!  broker ── WriteBatch ──► GroupCommitter::enqueue ──► one write transaction per group,
//!  (put_meta,               (in call order; batches       one fsync (redb Durability::Immediate)
//!   append_queued,           within group_commit_ms)      ──► every commit of the group resolves
//!   mark_inflight, ...)                                         ──► broker releases what waited
//!
//!  start ── Store::open(data_dir) ──► Store::recover(now) ──► sessions, retained, wills
//!           lock, schema version,      expired dropped (and
//!           integrity check            removed from the file)
//! ```
//!
//! - [`Store`]: the file. [`Store::open`] takes the file's lock (a second broker on the same
//!   data directory gets [`StoreError::Locked`]), checks the schema version
//!   ([`StoreError::SchemaVersion`]) and, by default, every page checksum
//!   ([`StoreError::Corrupt`]); every error names the file and says what to do.
//!   [`Store::commit`] applies a [`WriteBatch`] in one transaction; it blocks on the fsync,
//!   so async code goes through the [`GroupCommitter`].
//! - [`WriteBatch`]: changes encoded up front (messages as MQTT 5 PUBLISH packets by the
//!   protocol codec, the rest in a small versioned framing: see `encoding.rs`), committed
//!   together, in order.
//! - [`GroupCommitter`]: a tokio task that merges the batches enqueued within one window
//!   into one durable commit, in the order they were enqueued, and resolves each when its
//!   batch is on disk.
//! - [`Store::recover`]: what a restarted broker resumes, with times converted from the
//!   wall clock back to `Instant`s against a [`Now`].
//! - [`Store::usage`]: file size and live bytes, for the broker's `max_store_bytes` policy.
//!
//! The store holds data, not policy: which sessions are persistent, when to write them,
//! queue limits and what to do when the store is full belong to the broker.
//!
//! Durability of a commit is one of [`Durability`]: `Sync` and `Group` fsync before the
//! commit returns (they differ in how the broker batches: one commit per acknowledgement,
//! or one per group); `None` commits to memory only.
//!
//! # How the broker uses it
//!
//! Only persistent sessions (clean start false or session expiry > 0) and QoS 1/2 messages
//! are written; QoS 0 and clean sessions never touch the store. In `none` mode the broker
//! need not build batches at all.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use twinmq::broker::retained::RetainedMessage;
//! use twinmq::protocol::{Delivery, PacketId, Properties, QoS, SessionState, TopicName};
//! use twinmq::store::{
//!     Durability, GroupCommitConfig, GroupCommitter, Now, SessionMeta, Store, StoreOptions,
//!     WriteBatch,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let data_dir = std::env::temp_dir().join(format!("twinmq-store-doc-{}", std::process::id()));
//! # let runtime = tokio::runtime::Runtime::new()?;
//! # runtime.block_on(async {
//! // (d) Start-up: open (fails with a clear error if locked, damaged or another schema),
//! // recover, then start the committer.
//! let store = Arc::new(Store::open(&data_dir, StoreOptions::default())?);
//! let recovered = store.recover(Now::from_clocks())?;
//! for session in recovered.sessions {
//!     // SessionState::restore(session.state); re-add session.subscriptions to the index;
//!     // expire it at session.expires_at; schedule session.will (due at will.due).
//!     let _state = SessionState::restore(session.state);
//! }
//! for _message in recovered.retained { /* retained_store.set(message) */ }
//! for _will in recovered.wills_of_expired_sessions { /* publish _will.will now */ }
//! let config = GroupCommitConfig::new(Durability::Group, Duration::from_millis(2));
//! let (committer, _task) = GroupCommitter::spawn(Arc::clone(&store), config);
//!
//! // (b) A persistent session connects (offline_since: None), changes its subscriptions,
//! // or goes offline (with when it left and its pending will): its meta, not its messages.
//! let now = Now::from_clocks();
//! let mut batch = WriteBatch::new(now);
//! batch.put_meta("sensor-7", &SessionMeta {
//!     expiry_interval: 3600,
//!     offline_since: Some(now.instant),
//!     subscriptions: Vec::new(),
//!     will: None,
//! })?;
//! committer.submit(batch).await?;
//! // A clean start, or a session that ended: `batch.delete_session("sensor-7")`.
//!
//! // (a) An inbound QoS 1/2 PUBLISH: every copy for a persistent session, under the row
//! // id the broker gave it, the retained change (set, or cleared by an empty payload) and
//! // a persistent publisher's QoS 2 packet id, in one batch; the PUBACK (QoS 1) or PUBREC
//! // (QoS 2) leaves when it is committed.
//! let topic = TopicName::new("plant/line-4/temperature")?;
//! let delivery = Delivery {
//!     topic: topic.clone(),
//!     payload: Bytes::from_static(b"21.5"),
//!     qos: QoS::ExactlyOnce,
//!     retain: false,
//!     properties: Arc::new(Properties::default()),
//!     subscription_ids: Vec::new(),
//!     shared: None,
//!     expires_at: None,
//!     row: Some(0),
//! };
//! let now = Now::from_clocks();
//! let mut batch = WriteBatch::new(now);
//! batch.append_queued("sensor-7", &delivery)?;
//! batch.put_retained(&RetainedMessage::new(
//!     topic.clone(),
//!     Bytes::from_static(b"21.5"),
//!     QoS::AtLeastOnce,
//!     Properties::default(),
//!     now.instant,
//! ))?;
//! batch.put_inbound("publisher-1", PacketId::MIN);
//! committer.enqueue(batch).await?; // durable: release the PUBREC now
//!
//! // (c) The copy's flow, step by step: its QoS 2 PUBLISH leaves once its packet id is
//! // recorded, its PUBREL once the PUBREC is; when it ends, the row goes without an fsync
//! // of its own. The publisher's PUBCOMP leaves once its id is forgotten.
//! let id = PacketId::new(7).ok_or("packet id")?;
//! let mut batch = WriteBatch::new(Now::from_clocks());
//! batch.mark_inflight("sensor-7", 0, id, false);
//! committer.enqueue(batch).await?;
//! let mut batch = WriteBatch::new(Now::from_clocks());
//! batch.mark_inflight("sensor-7", 0, id, true);
//! batch.delete_inbound("publisher-1", PacketId::MIN);
//! committer.enqueue(batch).await?;
//! let mut batch = WriteBatch::new(Now::from_clocks());
//! batch.delete_row("sensor-7", 0);
//! committer.enqueue_lazy(batch).await?;
//!
//! let mut batch = WriteBatch::new(Now::from_clocks());
//! batch.delete_retained(&topic);
//! committer.submit(batch).await?;
//! # drop((committer, store));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # let _ = std::fs::remove_dir_all(&data_dir);
//! # Ok(())
//! # }
//! ```

mod batch;
mod encoding;
mod error;
mod group;
mod record;
mod recover;
mod tables;

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, TableError};

pub use batch::WriteBatch;
pub use error::{RecordError, StoreError};
pub use group::{Commit, CommitterTask, GroupCommitConfig, GroupCommitter};
pub use record::{
    ExpiredSessionWill, Now, PendingWill, Recovered, RecoveredSession, RecoveryReport, SessionMeta,
    SessionRecord, StoredSubscription, NEVER_EXPIRES,
};

use tables::{Tables, META, SCHEMA_VERSION_KEY};

/// The version of the table layout and record formats this build reads and writes.
/// Version 2: message rows keyed by the broker's row ids, inbound QoS 2 ids in a table of
/// their own (written step by step while a session is connected).
pub const SCHEMA_VERSION: u32 = 2;

/// The store's file name inside the data directory.
pub const FILE_NAME: &str = "twinmq.redb";

/// How to open the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Memory the storage engine may use to cache pages, in bytes.
    pub cache_bytes: usize,
    /// Verify the checksum of every page when opening, so a damaged file is refused with
    /// [`StoreError::Corrupt`]. Reads the whole file once; without it a file damaged
    /// outside redb may be trusted (redb documents that its open may then panic, which the
    /// store catches and reports as corruption, but a damaged page could go unnoticed).
    /// After a crash the engine runs this check and repair regardless.
    pub verify_on_open: bool,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            cache_bytes: 64 * 1024 * 1024,
            verify_on_open: true,
        }
    }
}

/// When a commit is on disk. Mirrors `storage.durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync before the commit returns (redb `Durability::Immediate`); the broker commits
    /// once per acknowledgement.
    Sync,
    /// fsync before the commit returns, as `Sync`; the broker lets the [`GroupCommitter`]
    /// merge the batches of one window into one commit.
    #[default]
    Group,
    /// Memory only (redb `Durability::None`): visible to later reads, lost on a crash
    /// unless a later durable commit follows. For benchmarks. A [`GroupCommitter`] with
    /// this durability does not touch the store at all.
    None,
}

/// How much the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUsage {
    /// Size of the file: live data, page overhead and free pages (the file does not shrink
    /// when data is removed; freed pages are reused).
    pub file_bytes: u64,
    /// Bytes of keys and values in the data tables: what a `max_store_bytes` limit should
    /// be checked against, together with [`WriteBatch::encoded_bytes`].
    pub live_bytes: u64,
}

/// Counters since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Write transactions committed.
    pub commits: u64,
    /// Of those, committed with an fsync.
    pub durable_commits: u64,
    /// Batches committed (a group commit holds several).
    pub batches: u64,
}

/// The open store file. `Sync`: share it in an `Arc`; writes are serialised by the
/// storage engine, reads never wait for them.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
    live_bytes: AtomicU64,
    commits: AtomicU64,
    durable_commits: AtomicU64,
    batches: AtomicU64,
}

impl Store {
    /// Opens (creating if needed) `dir/twinmq.redb`, creating `dir` if it does not exist.
    ///
    /// Errors: [`StoreError::Locked`] if another `Store`, in this process or another,
    /// has the file open; [`StoreError::SchemaVersion`] if it was written with another
    /// schema; [`StoreError::Corrupt`] if it is damaged or not a twinmq store;
    /// [`StoreError::Io`] if it cannot be read or created. Never panics on file content.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(dir, "create the data directory of", e))?;
        let path = dir.join(FILE_NAME);
        let store = guard_panics(&path, "opening", || Store::open_file(&path, &options))?;
        tracing::debug!(
            path = %store.path.display(),
            live_bytes = store.live_bytes.load(Ordering::Relaxed),
            "store opened"
        );
        Ok(store)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the file and releases its lock, reporting an error that dropping the store
    /// would ignore.
    pub fn close(self) -> Result<(), StoreError> {
        let Store { db, path, .. } = self;
        db.close()
            .map_err(|e| StoreError::from_redb(&path, "close", e.into()))
    }

    /// Applies `batch` in one write transaction. Blocks until the commit returns, after the
    /// fsync unless `durability` is [`Durability::None`]; call it from a blocking context
    /// (or use a [`GroupCommitter`]). On error nothing of the batch is applied.
    pub fn commit(&self, batch: WriteBatch, durability: Durability) -> Result<(), StoreError> {
        self.commit_batches(std::slice::from_ref(&batch), durability != Durability::None)
    }

    /// [`StoreUsage::live_bytes`] alone, without a system call (the publish path checks it).
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes.load(Ordering::Relaxed)
    }

    /// File size and live bytes. The live bytes are kept up to date by every commit, so
    /// this costs one `stat` of the file.
    pub fn usage(&self) -> Result<StoreUsage, StoreError> {
        let file_bytes = std::fs::metadata(&self.path)
            .map_err(|e| StoreError::io(&self.path, "read the size of", e))?
            .len();
        Ok(StoreUsage {
            file_bytes,
            live_bytes: self.live_bytes.load(Ordering::Relaxed),
        })
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.commits.load(Ordering::Relaxed),
            durable_commits: self.durable_commits.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
        }
    }

    /// Applies `batches` in order, in one write transaction.
    pub(crate) fn commit_batches(
        &self,
        batches: &[WriteBatch],
        durable: bool,
    ) -> Result<(), StoreError> {
        // An empty durable commit still fsyncs: it makes earlier non-durable ones durable
        // (what `GroupCommitter::flush` asks for).
        if !durable && batches.iter().all(WriteBatch::is_empty) {
            return Ok(());
        }
        let path = &self.path;
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| StoreError::from_redb(path, "begin a write to", e.into()))?;
        let durability = if durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        txn.set_durability(durability)
            .map_err(|e| StoreError::from_redb(path, "set the durability of", e.into()))?;
        let mut delta = 0i64;
        {
            let mut tables =
                Tables::open(&txn).map_err(|e| StoreError::from_redb(path, "write", e))?;
            for op in batches.iter().flat_map(WriteBatch::ops) {
                delta += tables
                    .apply(op)
                    .map_err(|e| StoreError::from_redb(path, "write", e))?;
            }
        }
        txn.commit()
            .map_err(|e| StoreError::from_redb(path, "commit to", e.into()))?;
        self.add_live_bytes(delta);
        self.count_commit(durable, batches.len());
        Ok(())
    }

    pub(crate) fn count_commit(&self, durable: bool, batches: usize) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        if durable {
            self.durable_commits.fetch_add(1, Ordering::Relaxed);
        }
        self.batches.fetch_add(batches as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_live_bytes(&self, delta: i64) {
        let _ = self
            .live_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |live| {
                Some(live.saturating_add_signed(delta))
            });
    }

    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    fn open_file(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(options.cache_bytes)
            .set_check_integrity_on_open(options.verify_on_open)
            .create(path)
            .map_err(|e| StoreError::from_redb(path, "open", e.into()))?;
        check_schema(&db, path)?;
        let txn = db
            .begin_read()
            .map_err(|e| StoreError::from_redb(path, "read", e.into()))?;
        let live_bytes =
            tables::live_bytes(&txn).map_err(|e| StoreError::from_redb(path, "read", e))?;
        drop(txn);
        Ok(Store {
            db,
            path: path.to_path_buf(),
            live_bytes: AtomicU64::new(live_bytes),
            commits: AtomicU64::new(0),
            durable_commits: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        })
    }
}

/// Checks the schema version of an opened file; a new, empty file gets this build's
/// version and empty tables.
fn check_schema(db: &Database, path: &Path) -> Result<(), StoreError> {
    let redb_err = |e: redb::Error| StoreError::from_redb(path, "read", e);
    let txn = db
        .begin_write()
        .map_err(|e| StoreError::from_redb(path, "begin a write to", e.into()))?;
    let existing: Vec<String> = txn
        .list_tables()
        .map_err(|e| redb_err(e.into()))?
        .map(|t| redb::TableHandle::name(&t).to_string())
        .collect();
    let found = {
        let meta = txn
            .open_table(META)
            .map_err(|e| table_error(path, redb::TableHandle::name(&META).to_string(), e))?;
        let version = meta
            .get(SCHEMA_VERSION_KEY)
            .map_err(|e| redb_err(e.into()))?;
        version.map(|v| v.value())
    };
    match found {
        Some(found) if found == u64::from(SCHEMA_VERSION) => {
            // Opening the data tables checks their key and value types.
            Tables::open(&txn).map_err(|e| match e {
                redb::Error::Io(_) => redb_err(e),
                other => StoreError::corrupt(path, format!("unexpected table layout: {other}")),
            })?;
            txn.abort().map_err(|e| redb_err(e.into()))
        }
        Some(found) => Err(StoreError::SchemaVersion {
            path: path.to_path_buf(),
            found: u32::try_from(found).unwrap_or(u32::MAX),
            expected: SCHEMA_VERSION,
        }),
        None if !existing.is_empty() => Err(StoreError::corrupt(
            path,
            format!(
                "it holds tables ({}) but no schema version: it is not a twinmq store",
                existing.join(", ")
            ),
        )),
        None => {
            {
                let mut meta = txn.open_table(META).map_err(|e| {
                    table_error(path, redb::TableHandle::name(&META).to_string(), e)
                })?;
                meta.insert(SCHEMA_VERSION_KEY, u64::from(SCHEMA_VERSION))
                    .map_err(|e| redb_err(e.into()))?;
            }
            Tables::open(&txn).map_err(redb_err)?;
            txn.commit()
                .map_err(|e| StoreError::from_redb(path, "initialise", e.into()))
        }
    }
}

/// A table that exists with other types is a file we did not write.
fn table_error(path: &Path, table: String, e: TableError) -> StoreError {
    match e {
        TableError::Storage(e) => StoreError::from_redb(path, "read", e.into()),
        other => StoreError::corrupt(path, format!("table {table}: {other}")),
    }
}

/// Runs `f`, turning a panic of the storage engine (redb may panic on a file damaged
/// outside it) into [`StoreError::Corrupt`].
pub(crate) fn guard_panics<T>(
    path: &Path,
    doing: &str,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_string());
            Err(StoreError::corrupt(
                path,
                format!("the storage engine failed while {doing} it: {message}"),
            ))
        }
    }
}
