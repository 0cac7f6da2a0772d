//! The group committer: concurrent submits share fsyncs, each submit resolves only once its
//! batch is committed, and `none` durability never touches the store.

mod common;

use common::TempDir;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use twinmq::broker::retained::RetainedMessage;
use twinmq::protocol::{Properties, QoS, TopicName};
use twinmq::store::{
    Durability, GroupCommitConfig, GroupCommitter, Now, Store, StoreOptions, WriteBatch,
};

fn retained_batch(i: usize) -> WriteBatch {
    let mut batch = WriteBatch::new(Now::from_clocks());
    batch
        .put_retained(&RetainedMessage {
            topic: TopicName::new(&format!("group/{i}")).expect("topic"),
            payload: Bytes::from(vec![b'x'; 64]),
            qos: QoS::AtLeastOnce,
            properties: Properties::default(),
            expires_at: None,
        })
        .expect("encodes");
    batch
}

fn store(dir: &TempDir) -> Arc<Store> {
    Arc::new(Store::open(dir.path(), StoreOptions::default()).expect("opens"))
}

/// Retained messages a fresh read of the store finds.
fn retained_count(store: &Store) -> usize {
    store
        .recover(Now::from_clocks())
        .expect("reads")
        .retained
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submits_share_fsyncs() {
    const N: usize = 64;
    let dir = TempDir::new("group");
    let store = store(&dir);
    let before = store.stats();
    let (committer, task) = GroupCommitter::spawn(
        Arc::clone(&store),
        GroupCommitConfig::new(Durability::Group, Duration::from_millis(5)),
    );
    let submits: Vec<_> = (0..N)
        .map(|i| {
            let committer = committer.clone();
            tokio::spawn(async move { committer.submit(retained_batch(i)).await })
        })
        .collect();
    for submit in submits {
        submit.await.expect("task").expect("committed");
    }
    let after = store.stats();
    let commits = after.durable_commits - before.durable_commits;
    assert_eq!(after.batches - before.batches, N as u64);
    assert!(
        (1..N as u64).contains(&commits),
        "{N} submits took {commits} fsync commits"
    );
    println!("{N} concurrent submits: {commits} durable commits");

    // Every submit that resolved is in the file.
    drop(committer);
    task.join().await;
    let recovered = store.recover(Now::from_clocks()).expect("recovers");
    assert_eq!(recovered.retained.len(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_submit_is_committed() {
    let dir = TempDir::new("resolved");
    let store = store(&dir);
    let (committer, _task) = GroupCommitter::spawn(
        Arc::clone(&store),
        GroupCommitConfig::new(Durability::Sync, Duration::ZERO),
    );
    for i in 0..5 {
        committer
            .submit(retained_batch(i))
            .await
            .expect("committed");
        // Visible to a new read the moment submit resolves.
        assert_eq!(retained_count(&store), i + 1);
    }
    assert_eq!(
        store.stats().durable_commits,
        5,
        "one commit each when sequential"
    );
    committer
        .submit(WriteBatch::new(Now::from_clocks()))
        .await
        .expect("empty batch");
    assert_eq!(
        store.stats().durable_commits,
        5,
        "an empty batch commits nothing"
    );
}

#[tokio::test]
async fn none_durability_never_touches_the_store() {
    let dir = TempDir::new("none");
    let store = store(&dir);
    let (committer, task) = GroupCommitter::spawn(
        Arc::clone(&store),
        GroupCommitConfig::new(Durability::None, Duration::from_millis(5)),
    );
    committer.submit(retained_batch(0)).await.expect("resolves");
    assert_eq!(store.stats().commits, 0);
    assert!(store
        .recover(Now::from_clocks())
        .expect("reads")
        .retained
        .is_empty());
    drop(committer);
    task.join().await;
}

#[tokio::test(start_paused = true)]
async fn the_window_holds_a_group_open_for_late_batches() {
    let dir = TempDir::new("window");
    let store = store(&dir);
    let (committer, _task) = GroupCommitter::spawn(
        Arc::clone(&store),
        GroupCommitConfig::new(Durability::Group, Duration::from_millis(50)),
    );
    let first = tokio::spawn({
        let committer = committer.clone();
        async move { committer.submit(retained_batch(0)).await }
    });
    // Arrives 20 ms into the 50 ms window: same group.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = tokio::spawn({
        let committer = committer.clone();
        async move { committer.submit(retained_batch(1)).await }
    });
    first.await.expect("task").expect("committed");
    second.await.expect("task").expect("committed");
    let stats = store.stats();
    assert_eq!((stats.durable_commits, stats.batches), (1, 2));
}

// One thread: the committer cannot run between the test's synchronous enqueues, so the
// groups below form the same way however the machine schedules threads.
#[tokio::test]
async fn enqueued_batches_apply_in_call_order_and_lazy_ones_skip_the_fsync() {
    let dir = TempDir::new("lazy");
    let store = store(&dir);
    // As the broker runs `storage.durability = sync`: one durable batch per commit.
    let config = GroupCommitConfig::new(Durability::Sync, Duration::ZERO);
    let (committer, _task) = GroupCommitter::spawn(Arc::clone(&store), config);
    let clear = |i: usize| {
        let mut batch = WriteBatch::new(Now::from_clocks());
        batch.delete_retained(&TopicName::new(&format!("group/{i}")).expect("topic"));
        batch
    };
    // Set, then cleared: enqueued without waiting, they still apply in call order.
    let set = committer.enqueue(retained_batch(0));
    let cleared = committer.enqueue_lazy(clear(0));
    set.await.expect("committed");
    cleared.await.expect("committed");
    assert!(store
        .recover(Now::from_clocks())
        .expect("reads")
        .retained
        .is_empty());
    assert_eq!(store.stats().durable_commits, 1, "one fsync for the set");

    // A lazy batch alone commits without an fsync; the next durable commit carries it.
    committer
        .submit(retained_batch(1))
        .await
        .expect("committed");
    committer
        .submit(retained_batch(2))
        .await
        .expect("committed");
    let before = store.stats();
    committer.enqueue_lazy(clear(1)).await.expect("committed");
    let after = store.stats();
    assert_eq!(after.commits - before.commits, 1);
    assert_eq!(after.durable_commits, before.durable_commits, "no fsync");
    assert_eq!(retained_count(&store), 1);

    // Under `sync`, lazy batches waiting with durable ones share their fsync, and each
    // durable batch still gets its own.
    let before = store.stats();
    let batches: Vec<_> = (10..20)
        .flat_map(|i| {
            [
                committer.enqueue(retained_batch(i)),
                committer.enqueue_lazy(clear(i)),
            ]
        })
        .collect();
    for commit in batches {
        commit.await.expect("committed");
    }
    let after = store.stats();
    assert_eq!(after.durable_commits - before.durable_commits, 10);
    assert_eq!(
        after.commits - before.commits,
        10,
        "the lazy ones rode along"
    );
    assert_eq!(retained_count(&store), 1);
}

#[tokio::test]
async fn flush_puts_what_was_queued_lazily_on_disk() {
    let dir = TempDir::new("flush");
    let store = store(&dir);
    let (committer, _task) = GroupCommitter::spawn(
        Arc::clone(&store),
        GroupCommitConfig::new(Durability::Group, Duration::from_millis(5)),
    );
    let before = store.stats();
    let lazy = committer.enqueue_lazy(retained_batch(1));
    let flushed = committer.flush();
    lazy.await.expect("committed");
    flushed.await.expect("flushed");
    let after = store.stats();
    assert_eq!(
        after.durable_commits - before.durable_commits,
        1,
        "one fsync"
    );
    assert_eq!(retained_count(&store), 1);

    let idle = store.stats();
    committer.flush().await.expect("flushed");
    assert_eq!(
        store.stats().durable_commits - idle.durable_commits,
        1,
        "a flush always ends with an fsync"
    );
}
