//! [`GroupCommitter`]: many batches, one fsync.
//!
//! ```text
//!  submit(b1) ─┐                 window (group_commit)           spawn_blocking
//!  submit(b2) ─┼─► channel ─► first batch ──── collect ────► commit b1+b2+b3 ──► fsync
//!  submit(b3) ─┘                opens a window     more                 │
//!                                                                       ▼
//!                                         every submit of the group resolves with the result
//! ```
//!
//! A window opens when a batch arrives and collects whatever else arrives before it closes
//! (or until `max_batches`); then one write transaction applies them all, in submission
//! order, and commits with an fsync. Batches that arrive during that fsync form the next
//! group, so even a zero window groups under load while adding no delay when idle.
//!
//! Failure is shared: if the group's commit fails, nothing of it is applied and every
//! submit of the group gets the error (after an I/O error the engine refuses further
//! commits until the store is reopened, so the broker should treat it as fatal).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::batch::WriteBatch;
use super::{Durability, Store, StoreError};

/// How the committer groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitConfig {
    /// `Sync` or `Group` commit durably; `None` makes every submit a no-op.
    pub durability: Durability,
    /// How long a group stays open after its first batch (`storage.group_commit_ms`).
    /// Zero takes only what is already waiting.
    pub window: Duration,
    /// Most batches in one group; a full group commits without waiting out the window.
    pub max_batches: usize,
}

impl GroupCommitConfig {
    /// `Group` (and `None`) take `window`; `Sync` gives every durable batch a commit of its
    /// own, never shared or waited for (an acknowledgement waits for its own fsync).
    pub fn new(durability: Durability, window: Duration) -> GroupCommitConfig {
        match durability {
            Durability::Sync => GroupCommitConfig {
                durability,
                window: Duration::ZERO,
                max_batches: 1,
            },
            Durability::Group | Durability::None => GroupCommitConfig {
                durability,
                window,
                max_batches: 4096,
            },
        }
    }
}

/// A handle for submitting batches; clone it freely. The committer task ends when every
/// handle is dropped and the batches already submitted are committed.
#[derive(Debug, Clone)]
pub struct GroupCommitter {
    // Unbounded so that `enqueue` is synchronous and keeps the order of its callers: a
    // step of a message must never be applied before the write that created its row. The
    // broker bounds what waits here: each publish waits for its own commit before the
    // publisher's window (receive maximum) lets another in.
    jobs: mpsc::UnboundedSender<Job>,
    durability: Durability,
    store: Arc<Store>,
    /// Named in the error of a commit that never happened; shared, not copied per batch.
    path: Arc<Path>,
    /// Bytes of batches enqueued and not yet committed (see `queued_bytes`).
    queued: Arc<AtomicU64>,
}

/// The committer task; [`CommitterTask::join`] waits for it to finish.
#[derive(Debug)]
pub struct CommitterTask(JoinHandle<()>);

#[derive(Debug)]
struct Job {
    batch: WriteBatch,
    /// Whether it must be on disk when `done` resolves (see `enqueue_lazy`).
    durable: bool,
    done: oneshot::Sender<Result<(), StoreError>>,
}

impl GroupCommitter {
    /// Starts the committer task on the current tokio runtime (panics outside one, as
    /// `tokio::spawn` does). With [`Durability::None`] no task does any work: submits
    /// resolve at once.
    pub fn spawn(store: Arc<Store>, config: GroupCommitConfig) -> (GroupCommitter, CommitterTask) {
        let (jobs, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(Arc::clone(&store), rx, config, Arc::clone(&queued)));
        let committer = GroupCommitter {
            jobs,
            durability: config.durability,
            path: Arc::from(store.path()),
            store,
            queued,
        };
        (committer, CommitterTask(task))
    }

    /// Resolves once `batch` is committed: durably (on disk) for `Sync` and `Group`;
    /// immediately, without touching the store, for `None` (memory-only mode: the broker's
    /// in-memory state is the only copy). An empty batch resolves immediately.
    pub async fn submit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.enqueue(batch).await
    }

    /// Hands `batch` to the committer now, behind every batch enqueued before it (by any
    /// caller): batches are applied in the order of their `enqueue` calls. The returned
    /// [`Commit`] resolves when it is committed; dropping it does not cancel the batch.
    pub fn enqueue(&self, batch: WriteBatch) -> Commit {
        self.hand_over(batch, true)
    }

    /// [`GroupCommitter::enqueue`] for a batch that need not be on disk yet: it is applied
    /// in order with the others but commits without an fsync when its group holds only
    /// such batches, and reaches the disk with the next durable commit. For removals whose
    /// loss in a crash is harmless (a finished flow's row: at worst a QoS 1 message or a
    /// PUBREL is sent again), so they do not cost an fsync each under `sync`.
    pub fn enqueue_lazy(&self, batch: WriteBatch) -> Commit {
        self.hand_over(batch, false)
    }

    /// Resolves once every batch enqueued before it, lazy ones included, is on disk: for a
    /// clean shutdown, which would otherwise cut off what is still queued.
    pub fn flush(&self) -> Commit {
        if self.durability == Durability::None {
            return Commit::Done;
        }
        // An empty durable batch: its group commits with an fsync after all before it.
        self.send(WriteBatch::new(super::Now::from_clocks()), true)
    }

    fn hand_over(&self, batch: WriteBatch, durable: bool) -> Commit {
        if self.durability == Durability::None || batch.is_empty() {
            return Commit::Done;
        }
        self.send(batch, durable)
    }

    fn send(&self, batch: WriteBatch, durable: bool) -> Commit {
        let (done, result) = oneshot::channel();
        let bytes = batch.encoded_bytes() as u64;
        self.queued.fetch_add(bytes, Ordering::Relaxed);
        match self.jobs.send(Job {
            batch,
            durable,
            done,
        }) {
            Ok(()) => Commit::Waiting {
                result,
                path: Arc::clone(&self.path),
            },
            Err(_) => {
                self.queued.fetch_sub(bytes, Ordering::Relaxed);
                Commit::Stopped(Arc::clone(&self.path))
            }
        }
    }

    /// At most what the batches enqueued and not yet committed will add to
    /// [`Store::live_bytes`]: with it, a `max_store_bytes` check counts writes still on
    /// their way (a commit adds its live bytes before it stops counting here, so the sum
    /// never undercounts).
    pub fn queued_bytes(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// The store the committer writes to (for [`Store::usage`]).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

/// A batch handed to the committer; resolves to the outcome of its commit.
#[derive(Debug)]
pub enum Commit {
    /// Nothing to write (an empty batch, or `Durability::None`).
    Done,
    Waiting {
        result: oneshot::Receiver<Result<(), StoreError>>,
        path: Arc<Path>,
    },
    /// The committer task has ended.
    Stopped(Arc<Path>),
}

impl std::future::Future for Commit {
    type Output = Result<(), StoreError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        match self.get_mut() {
            Commit::Done => Poll::Ready(Ok(())),
            Commit::Stopped(path) => Poll::Ready(Err(StoreError::CommitterStopped {
                path: path.to_path_buf(),
            })),
            Commit::Waiting { result, path } => match std::pin::Pin::new(result).poll(cx) {
                Poll::Ready(Ok(outcome)) => Poll::Ready(outcome),
                Poll::Ready(Err(_)) => Poll::Ready(Err(StoreError::CommitterStopped {
                    path: path.to_path_buf(),
                })),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl CommitterTask {
    /// Waits until every [`GroupCommitter`] handle is dropped and the last group is
    /// committed.
    pub async fn join(self) {
        if let Err(err) = self.0.await {
            tracing::error!("store committer task failed: {err}");
        }
    }
}

/// Most lazy batches in one group, on top of `max_batches` durable ones.
const MAX_LAZY_PER_GROUP: usize = 4096;

async fn run(
    store: Arc<Store>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    config: GroupCommitConfig,
    queued: Arc<AtomicU64>,
) {
    let max_batches = config.max_batches.max(1);
    // A durable batch that did not fit its group opens the next one.
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut durables = usize::from(first.durable);
        let mut group = vec![first];
        let closes = tokio::time::Instant::now() + config.window;
        // Lazy batches ride along without counting against `max_batches` (they add no
        // fsync), so under `sync` they do not cost a commit each.
        while group.len() < max_batches + MAX_LAZY_PER_GROUP {
            let job = match rx.try_recv() {
                Ok(job) => job,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) if config.window.is_zero() => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(closes, rx.recv()).await {
                        Ok(Some(job)) => job,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            if job.durable {
                if durables == max_batches {
                    carried = Some(job);
                    break;
                }
                durables += 1;
            }
            group.push(job);
        }
        let durable = group.iter().any(|job| job.durable);
        let bytes: u64 = group
            .iter()
            .map(|job| job.batch.encoded_bytes() as u64)
            .sum();
        let (batches, waiters): (Vec<WriteBatch>, Vec<_>) =
            group.into_iter().map(|job| (job.batch, job.done)).unzip();
        let committing = Arc::clone(&store);
        let result =
            tokio::task::spawn_blocking(move || committing.commit_batches(&batches, durable))
                .await
                .unwrap_or_else(|err| {
                    Err(StoreError::Storage {
                        path: store.path().to_path_buf(),
                        detail: format!("the commit task failed: {err}"),
                    })
                });
        // Counted in the live bytes now (or never written): no longer on its way.
        queued.fetch_sub(bytes, Ordering::Relaxed);
        if let Err(err) = &result {
            tracing::error!("group commit of {} batches failed: {err}", waiters.len());
        }
        for done in waiters {
            // A submitter that went away only loses the result.
            let _ = done.send(result.clone());
        }
    }
}
