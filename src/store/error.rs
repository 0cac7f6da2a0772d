//! The store's errors. Every failure of the file names the file and says what an operator
//! can do about it; [`RecordError`] is the one error that is not about the file (a record
//! the caller handed in that cannot be written), so it names the record instead.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A failure of the store file. `Clone`, so one failed group commit can be reported to
/// every batch it held.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another process (or another `Store` in this one) has the file open.
    #[error(
        "store {} is locked: another running twinmq has it open; stop that instance, or give \
         this one its own storage.data_dir",
        path.display()
    )]
    Locked { path: PathBuf },

    /// The file was written by a twinmq with another schema.
    #[error(
        "store {} has schema version {found}, this twinmq reads version {expected}; run a \
         twinmq release that reads version {found}, or move the file aside to start with an \
         empty store (its sessions and retained messages are then not loaded)",
        path.display()
    )]
    SchemaVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },

    /// The file is damaged, is not a twinmq store, or holds a record that does not decode.
    #[error(
        "store {} is corrupted ({detail}); restore it from a backup, or move it aside to start \
         with an empty store (its sessions and retained messages are then lost)",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },

    /// The file could not be read, written or synced.
    #[error("cannot {action} store {}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: Arc<io::Error>,
    },

    /// Any other failure of the storage engine (for instance a commit refused after an
    /// earlier I/O error: the store must then be reopened).
    #[error("store {}: {detail}", path.display())]
    Storage { path: PathBuf, detail: String },

    /// The group committer is gone (its task ended or panicked), so the batch was not
    /// committed.
    #[error("store {}: the group committer has stopped; the batch was not committed", path.display())]
    CommitterStopped { path: PathBuf },
}

impl StoreError {
    /// The store file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            StoreError::Locked { path }
            | StoreError::SchemaVersion { path, .. }
            | StoreError::Corrupt { path, .. }
            | StoreError::Io { path, .. }
            | StoreError::Storage { path, .. }
            | StoreError::CommitterStopped { path } => path,
        }
    }

    pub(crate) fn io(path: &Path, action: &'static str, source: io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            action,
            source: Arc::new(source),
        }
    }

    pub(crate) fn corrupt(path: &Path, detail: impl fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: detail.to_string(),
        }
    }

    /// Sorts a redb error into ours. `action` says what was being done, for I/O errors.
    pub(crate) fn from_redb(path: &Path, action: &'static str, err: redb::Error) -> StoreError {
        let path_buf = path.to_path_buf();
        match err {
            // Both mean another handle, in this process or another, holds the file's lock.
            redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
                StoreError::Locked { path: path_buf }
            }
            redb::Error::Corrupted(detail) => StoreError::Corrupt {
                path: path_buf,
                detail,
            },
            redb::Error::UpgradeRequired(format) => StoreError::Corrupt {
                path: path_buf,
                detail: format!(
                    "written in redb file format {format}, which this build cannot read"
                ),
            },
            // redb reports a file that is not a redb database as InvalidData.
            redb::Error::Io(source) if source.kind() == io::ErrorKind::InvalidData => {
                StoreError::Corrupt {
                    path: path_buf,
                    detail: source.to_string(),
                }
            }
            redb::Error::Io(source) => StoreError::Io {
                path: path_buf,
                action,
                source: Arc::new(source),
            },
            other => StoreError::Storage {
                path: path_buf,
                detail: format!("{action}: {other}"),
            },
        }
    }
}

/// A record handed to a [`WriteBatch`](super::WriteBatch) that cannot be written: the MQTT
/// codec refused to encode one of its messages (a property PUBLISH cannot carry, a topic
/// that is not valid). Nothing was added to the batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot store {what}: {detail}")]
pub struct RecordError {
    /// Which record, e.g. `session "c1" queued message on "a/b"`.
    pub what: String,
    pub detail: String,
}
