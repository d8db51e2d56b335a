//! How the store knows it is whole. sled 0.34 can come back from damaged files silently: with
//! an older state (its log replayed up to the damage) or with nothing at all. So sluice keeps
//! its own account of what the store holds and compares on open:
//!
//! * an **integrity record** in the `meta` tree: how many records each tree holds, a checksum
//!   over every record, and a write generation counting the changes. It is written in the same
//!   sled transaction as every change, so it always describes exactly the records beside it;
//! * the same account in a small file beside sled's (`sluice-integrity.json`), rewritten after
//!   each flush. sled cannot roll it back with its own files: a store whose generation is
//!   older than the file's, or an empty store where the file counts records, has lost writes.
//!
//! The checksum is the XOR of a 128-bit hash (SHA-256, truncated) of each record's tree, key
//! and value. XOR makes it incremental: a change removes the old record's hash and adds the new
//! one's, using the old value sled returns from the write, so a write costs two hashes and
//! never a scan. Keys are unique within a tree, so no two records cancel out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The key of the integrity record in the `meta` tree. Not part of the checksum or counts.
pub const INTEGRITY_KEY: &[u8] = b"integrity";

/// The file beside sled's files holding the account as of the last flush.
pub const INTEGRITY_FILE: &str = "sluice-integrity.json";

/// The XOR of every record's hash: equal for equal contents in any order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checksum(pub [u8; 16]);

impl Checksum {
    /// The hash of one record: its tree, its key and its value.
    pub fn of_record(tree: &str, key: &[u8], value: &[u8]) -> Checksum {
        let mut hasher = Sha256::new();
        hasher.update(tree.as_bytes());
        hasher.update([0u8]);
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key);
        hasher.update(value);
        let digest = hasher.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        Checksum(out)
    }

    /// Adds (or, applied again, removes) a record's hash.
    pub fn toggle(&mut self, other: Checksum) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine ^= theirs;
        }
    }

    /// Lowercase hex, as stored and shown.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl Serialize for Checksum {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for Checksum {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Checksum, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        let array: [u8; 16] = bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("a checksum is 32 hex characters"))?;
        Ok(Checksum(array))
    }
}

/// What the store holds, by the store's own account.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Integrity {
    /// How many changes were made since the store was created (or restored).
    pub generation: u64,
    /// Records per tree; trees without records are absent.
    pub counts: BTreeMap<String, u64>,
    /// The XOR of every record's hash.
    pub checksum: Checksum,
}

impl Integrity {
    /// Accounts for one record changing from `old` to `new` (`None`: absent).
    pub fn change(&mut self, tree: &str, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) {
        if let Some(old) = old {
            self.checksum.toggle(Checksum::of_record(tree, key, old));
            if let Some(count) = self.counts.get_mut(tree) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.counts.remove(tree);
                }
            }
        }
        if let Some(new) = new {
            self.checksum.toggle(Checksum::of_record(tree, key, new));
            *self.counts.entry(tree.to_string()).or_default() += 1;
        }
    }

    /// Every record of every tree.
    pub fn records(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The same records (counts and checksum), whatever the generations.
    pub fn same_records(&self, other: &Integrity) -> bool {
        self.counts == other.counts && self.checksum == other.checksum
    }

    /// Records per tree in words, e.g. `3 runs, 120 events`.
    pub fn describe_counts(&self) -> String {
        if self.counts.is_empty() {
            return "no records".into();
        }
        self.counts
            .iter()
            .map(|(tree, n)| format!("{n} {tree}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How `found` (what a scan counted) differs from this account, in words.
    pub fn difference(&self, found: &Integrity) -> String {
        let trees: std::collections::BTreeSet<&String> =
            self.counts.keys().chain(found.counts.keys()).collect();
        let differing: Vec<String> = trees
            .into_iter()
            .filter_map(|tree| {
                let recorded = self.counts.get(tree).copied().unwrap_or(0);
                let counted = found.counts.get(tree).copied().unwrap_or(0);
                (recorded != counted).then(|| {
                    format!("tree `{tree}` holds {counted} records where {recorded} were written")
                })
            })
            .collect();
        if differing.is_empty() {
            format!(
                "the records' checksum is {} where {} was written: the content of a record \
                 changed",
                found.checksum.hex(),
                self.checksum.hex()
            )
        } else {
            differing.join("; ")
        }
    }
}

/// The account as written to [`INTEGRITY_FILE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrityFile {
    /// The store format it was written by.
    pub format: u32,
    /// When.
    pub written_at: DateTime<Utc>,
    /// The account as of the flush before.
    #[serde(flatten)]
    pub integrity: Integrity,
}

/// What was found where [`INTEGRITY_FILE`] should be.
#[derive(Debug)]
pub enum FileState {
    /// No file: a new store, or one from before sluice kept it.
    Missing,
    /// A file that cannot be read as an account, with why.
    Unreadable(String),
    /// The account.
    Present(IntegrityFile),
}

/// The path of the integrity file of the store in `dir`.
pub fn file_path(dir: &Path) -> PathBuf {
    dir.join(INTEGRITY_FILE)
}

/// Reads the integrity file of the store in `dir`.
pub fn read_file(dir: &Path) -> FileState {
    let path = file_path(dir);
    match std::fs::read(&path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => FileState::Missing,
        Err(err) => FileState::Unreadable(format!("{}: {err}", path.display())),
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(file) => FileState::Present(file),
            Err(err) => FileState::Unreadable(format!("{}: {err}", path.display())),
        },
    }
}

/// Replaces the integrity file of the store in `dir`: written beside and renamed over, so it
/// is always either the old account or the new one. Not synced: it is written after sled's own
/// flush, which on Linux writes its data out without a full `fsync` either, and a sync here
/// would cost a disk flush on every write (measured: 6 ms instead of 0.2 ms). A file lost or
/// cut short by a power failure is reported on open and rewritten when the records check out.
pub fn write_file(dir: &Path, format: u32, integrity: &Integrity) -> Result<()> {
    let path = file_path(dir);
    let partial = dir.join(format!("{INTEGRITY_FILE}.partial"));
    let file = IntegrityFile {
        format,
        written_at: Utc::now(),
        integrity: integrity.clone(),
    };
    let text = serde_json::to_vec_pretty(&file).map_err(|e| Error::io(&path, e))?;
    std::fs::write(&partial, &text).map_err(|e| Error::io(&partial, e))?;
    std::fs::rename(&partial, &path).map_err(|e| Error::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_follows_inserts_overwrites_and_removes_in_any_order() {
        let mut written = Integrity::default();
        written.change("runs", b"a", None, Some(b"1"));
        written.change("runs", b"b", None, Some(b"2"));
        written.change("runs", b"a", Some(b"1"), Some(b"3"));
        written.change("events", b"e", None, Some(b"x"));
        written.change("events", b"e", Some(b"x"), None);
        let mut scanned = Integrity::default();
        scanned.change("runs", b"b", None, Some(b"2"));
        scanned.change("runs", b"a", None, Some(b"3"));
        assert!(written.same_records(&scanned));
        assert_eq!(written.describe_counts(), "2 runs");
        let mut flipped = Integrity::default();
        flipped.change("runs", b"b", None, Some(b"2"));
        flipped.change("runs", b"a", None, Some(b"4"));
        assert!(!written.same_records(&flipped));
        assert!(written.difference(&flipped).contains("checksum"));
        let mut fewer = Integrity::default();
        fewer.change("runs", b"b", None, Some(b"2"));
        assert_eq!(
            written.difference(&fewer),
            "tree `runs` holds 1 records where 2 were written"
        );
    }

    #[test]
    fn the_file_round_trips_and_a_damaged_one_says_so() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read_file(dir.path()), FileState::Missing));
        let mut integrity = Integrity {
            generation: 7,
            ..Integrity::default()
        };
        integrity.change("runs", b"a", None, Some(b"1"));
        write_file(dir.path(), 3, &integrity).unwrap();
        match read_file(dir.path()) {
            FileState::Present(file) => assert_eq!(file.integrity, integrity),
            other => panic!("{other:?}"),
        }
        std::fs::write(file_path(dir.path()), b"{\"format\": 3").unwrap();
        assert!(matches!(read_file(dir.path()), FileState::Unreadable(_)));
    }
}
