//! Reviewed snapshots of transition tables. A table that changes fails its test until the
//! new table is written with `UPDATE_SNAPSHOTS=1` and the diff is reviewed.

use std::path::PathBuf;

pub(crate) fn assert_snapshot(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/protocol/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        if let Err(err) = std::fs::write(&path, actual) {
            panic!("cannot write snapshot {}: {err}", path.display());
        }
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "snapshot {} is missing ({err}); run with UPDATE_SNAPSHOTS=1 and review it",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "snapshot {} differs; run with UPDATE_SNAPSHOTS=1 and review the diff\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}
