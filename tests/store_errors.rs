//! A data directory that another broker holds, that an incompatible build wrote, that is
//! damaged or that is not a twinmq store gives a clear error naming the file, never a
//! panic and never a silently empty store.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use twinmq::protocol::{Delivery, QoS, SessionSnapshot, TopicName};
use twinmq::store::{
    Durability, Now, SessionRecord, Store, StoreError, StoreOptions, WriteBatch, FILE_NAME,
    NEVER_EXPIRES, SCHEMA_VERSION,
};

use common::TempDir;

/// The store's file in `dir`.
fn store_file(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join(FILE_NAME)
}

fn open(dir: &TempDir) -> Result<Store, StoreError> {
    Store::open(dir.path(), StoreOptions::default())
}

/// A store holding `sessions` sessions of `per_session` queued 1 KiB messages.
fn fill(dir: &TempDir, sessions: usize, per_session: usize) {
    let store = open(dir).expect("opens");
    let now = Now::from_clocks();
    let message = Delivery::new(
        TopicName::new("fill/topic").expect("topic"),
        vec![0x42; 1024],
        QoS::AtLeastOnce,
    );
    for s in 0..sessions {
        let record = SessionRecord {
            expiry_interval: NEVER_EXPIRES,
            offline_since: Some(now.instant),
            subscriptions: Vec::new(),
            will: None,
            state: SessionSnapshot {
                queue: vec![message.clone(); per_session],
                ..SessionSnapshot::default()
            },
        };
        let mut batch = WriteBatch::new(now);
        batch
            .put_session(&format!("client-{s}"), &record)
            .expect("encodes");
        store.commit(batch, Durability::Sync).expect("commits");
    }
}

fn assert_names_file(err: &StoreError, dir: &TempDir) {
    assert_eq!(err.path(), store_file(dir));
    let text = err.to_string();
    assert!(
        text.contains(&store_file(dir).display().to_string()),
        "message names the file: {text}"
    );
}

#[test]
fn a_second_open_in_the_same_process_is_locked() {
    let dir = TempDir::new("lock");
    let first = open(&dir).expect("first open");
    let err = open(&dir).expect_err("second open refused");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert_names_file(&err, &dir);
    assert!(err.to_string().contains("another running twinmq"), "{err}");
    first.close().expect("closes");
    open(&dir).expect("opens once the first is closed");
}

/// The child half of [`a_second_broker_process_is_locked_out`]: does nothing unless that
/// test started this binary with the directory to open.
#[test]
fn child_opens_a_locked_store() {
    let Some(dir) = std::env::var_os("TWINMQ_STORE_LOCK_CHILD_DIR") else {
        return;
    };
    match Store::open(Path::new(&dir), StoreOptions::default()) {
        Err(err @ StoreError::Locked { .. }) => println!("child: locked: {err}"),
        Err(err) => panic!("child: unexpected error: {err}"),
        Ok(_) => panic!("child: opened a store another process holds"),
    }
}

#[test]
fn a_second_broker_process_is_locked_out() {
    let dir = TempDir::new("lock-process");
    let _held = open(&dir).expect("parent opens");
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_opens_a_locked_store", "--nocapture"])
        .env("TWINMQ_STORE_LOCK_CHILD_DIR", dir.path())
        .output()
        .expect("child runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("child: locked"), "{stdout}");
    assert!(
        stdout.contains(&store_file(&dir).display().to_string()),
        "the error names the file: {stdout}"
    );
}

#[test]
fn another_schema_version_is_refused_with_both_versions() {
    let dir = TempDir::new("schema");
    drop(open(&dir).expect("creates"));
    {
        let db = redb::Database::open(store_file(&dir)).expect("redb opens");
        let txn = db.begin_write().expect("write");
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, u64>::new("twinmq.meta"))
                .expect("meta table");
            meta.insert("schema_version", 99).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let err = open(&dir).expect_err("refused");
    match &err {
        StoreError::SchemaVersion {
            found, expected, ..
        } => assert_eq!((*found, *expected), (99, SCHEMA_VERSION)),
        other => panic!("expected SchemaVersion, got {other:?}"),
    }
    assert_names_file(&err, &dir);
    assert!(err.to_string().contains("move the file aside"), "{err}");
}

#[test]
fn a_redb_file_that_is_not_a_twinmq_store_is_refused() {
    let dir = TempDir::new("foreign");
    {
        let db = redb::Database::create(store_file(&dir)).expect("redb creates");
        let txn = db.begin_write().expect("write");
        {
            let mut other = txn
                .open_table(redb::TableDefinition::<u64, u64>::new("someone.else"))
                .expect("table");
            other.insert(1, 2).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let err = open(&dir).expect_err("refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("not a twinmq store"), "{err}");
    assert_names_file(&err, &dir);
}

#[test]
fn a_file_that_is_not_a_database_is_corrupt() {
    let dir = TempDir::new("garbage");
    std::fs::write(store_file(&dir), vec![0x5A; 16 * 1024]).expect("write garbage");
    let err = open(&dir).expect_err("refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert_names_file(&err, &dir);
    // Not silently replaced by an empty store.
    assert_eq!(
        std::fs::read(store_file(&dir)).expect("still there"),
        vec![0x5A; 16 * 1024]
    );
}

#[test]
fn bytes_overwritten_in_the_middle_are_reported_as_corruption() {
    let dir = TempDir::new("corrupt");
    fill(&dir, 8, 64);
    let len = std::fs::metadata(store_file(&dir)).expect("file").len();
    assert!(len > 256 * 1024, "file of {len} bytes");
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(store_file(&dir))
            .expect("open for damage");
        file.seek(SeekFrom::Start(len / 2)).expect("seek");
        file.write_all(&vec![0xA5; 64 * 1024]).expect("damage");
        file.sync_all().expect("sync");
    }
    let err = open(&dir).expect_err("refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert_names_file(&err, &dir);
    assert!(
        err.to_string().contains("restore it from a backup"),
        "{err}"
    );
}

#[test]
fn damage_anywhere_never_panics() {
    let dir = TempDir::new("damage");
    fill(&dir, 4, 16);
    let pristine = std::fs::read(store_file(&dir)).expect("read");
    let len = pristine.len() as u64;
    // The header, the commit slots, and pages across the file.
    let mut offsets = vec![0, 16, 64, 512, 1024, 4096];
    offsets.extend((1..16).map(|i| len * i / 16));
    for offset in offsets {
        let mut damaged = pristine.clone();
        let end = (offset as usize + 4096).min(damaged.len());
        for byte in &mut damaged[offset as usize..end] {
            *byte ^= 0x5F;
        }
        std::fs::write(store_file(&dir), &damaged).expect("write");
        // Either a clear error or a store whose recovery succeeds or fails cleanly.
        match open(&dir) {
            Ok(store) => {
                if let Err(err) = store.recover(Now::from_clocks()) {
                    assert_names_file(&err, &dir);
                }
            }
            Err(err) => assert_names_file(&err, &dir),
        }
    }
}

#[test]
fn an_unwritable_data_directory_names_the_path() {
    let dir = TempDir::new("unwritable");
    // A file where the directory should be.
    let blocked = dir.path().join("data");
    std::fs::write(&blocked, b"not a directory").expect("write");
    let err = Store::open(&blocked, StoreOptions::default()).expect_err("refused");
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&blocked.display().to_string()),
        "{err}"
    );
}
