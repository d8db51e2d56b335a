//! Backups of the state store as JSON lines, and restoring one into a state directory.
//!
//! The first line is a header: the backup's own version, the store format, the write
//! generation, the records per tree and their checksum (the store's integrity account). Each
//! further line is one record: `{"tree", "key" | "key_hex", "value" | "value_hex"}`, text when
//! the bytes are UTF-8 (most values are the records' JSON, kept as a string so every byte
//! comes back exactly), hex otherwise. A backup is read whole and checked against its header
//! before anything is written, so a truncated or edited file restores nothing.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::integrity::{Checksum, Integrity, INTEGRITY_KEY};
use super::{damaged, quiet, SledStore, TreeName, Verification, FORMAT_VERSION};
use crate::error::{Error, Result};

/// The version of the backup layout (not of the store format, which the header also gives).
pub const BACKUP_VERSION: u32 = 1;

/// The first line of a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// Always [`BACKUP_VERSION`]; marks the file as a sluice store backup.
    pub sluice_store_backup: u32,
    /// The store format of the records.
    pub format: u32,
    /// When the backup was made.
    pub created_at: DateTime<Utc>,
    /// The store's write generation at that moment.
    pub generation: u64,
    /// Records in the backup.
    pub records: u64,
    /// Records per tree.
    pub counts: BTreeMap<String, u64>,
    /// The XOR of every record's hash, as the store keeps it.
    pub checksum: Checksum,
}

impl BackupHeader {
    fn integrity(&self) -> Integrity {
        Integrity {
            generation: self.generation,
            counts: self.counts.clone(),
            checksum: self.checksum,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    tree: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_hex: Option<String>,
}

fn as_text(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|text| !text.contains('\0'))
        .map(String::from)
}

impl Line {
    fn of(tree: TreeName, key: &[u8], value: &[u8]) -> Line {
        let (key_text, value_text) = (as_text(key), as_text(value));
        Line {
            tree: tree.name().into(),
            key_hex: key_text.is_none().then(|| hex::encode(key)),
            key: key_text,
            value_hex: value_text.is_none().then(|| hex::encode(value)),
            value: value_text,
        }
    }

    fn bytes(
        text: Option<String>,
        hex_text: Option<String>,
        what: &str,
    ) -> Result<Vec<u8>, String> {
        match (text, hex_text) {
            (Some(text), None) => Ok(text.into_bytes()),
            (None, Some(hex_text)) => {
                hex::decode(hex_text).map_err(|e| format!("`{what}_hex` is not hex ({e})"))
            }
            _ => Err(format!("give exactly one of `{what}` and `{what}_hex`")),
        }
    }
}

/// Writes every record of `store` to `out`, the header first. Writers wait meanwhile, so the
/// backup is one moment of the store; the records read must add up to the store's account.
pub(super) fn write_backup(
    store: &SledStore,
    out: &mut dyn std::io::Write,
) -> Result<BackupHeader> {
    let account = store.integrity.lock().map_err(|_| store.interrupted())?;
    let header = BackupHeader {
        sluice_store_backup: BACKUP_VERSION,
        format: FORMAT_VERSION,
        created_at: Utc::now(),
        generation: account.generation,
        records: account.records(),
        counts: account.counts.clone(),
        checksum: account.checksum,
    };
    let written = |e: std::io::Error| Error::Io {
        path: "the backup".into(),
        message: e.to_string(),
    };
    let line = serde_json::to_string(&header).map_err(|e| super::store_error("encoding", e))?;
    writeln!(out, "{line}").map_err(written)?;
    let found = quiet::catch(|| -> Result<Integrity> {
        let mut found = Integrity::default();
        for tree in TreeName::ALL {
            for item in store.tree(tree).iter() {
                let (key, value) = item.map_err(|e| {
                    damaged(&store.dir, format!("reading tree `{}`: {e}", tree.name()))
                })?;
                if tree == TreeName::Meta && key.as_ref() == INTEGRITY_KEY {
                    continue;
                }
                let line = serde_json::to_string(&Line::of(tree, &key, &value))
                    .map_err(|e| super::store_error("encoding", e))?;
                writeln!(out, "{line}").map_err(written)?;
                found.change(tree.name(), &key, None, Some(&value));
            }
        }
        Ok(found)
    })
    .map_err(|panic| {
        damaged(
            &store.dir,
            format!("the store library panicked during the backup ({panic})"),
        )
    })??;
    if !account.same_records(&found) {
        return Err(damaged(&store.dir, account.difference(&found)));
    }
    out.flush().map_err(written)?;
    Ok(header)
}

/// A backup read and checked: its header and its records in file order.
#[derive(Debug)]
pub struct Backup {
    /// The header line.
    pub header: BackupHeader,
    records: Vec<(TreeName, Vec<u8>, Vec<u8>)>,
}

/// Reads a whole backup from `input` (`source` names it in errors) and checks it: a known
/// layout and format, every line a record of a known tree that decodes, and the records adding
/// up to the header's counts and checksum.
pub fn read_backup(input: impl BufRead, source: &str) -> Result<Backup> {
    let bad = |line: usize, why: String| Error::Io {
        path: source.to_string(),
        message: format!("line {line}: {why}; this is not a whole sluice store backup"),
    };
    let mut lines = input.lines();
    let first = lines
        .next()
        .ok_or_else(|| bad(1, "the file is empty".into()))?
        .map_err(|e| bad(1, e.to_string()))?;
    let header: BackupHeader = serde_json::from_str(&first)
        .map_err(|e| bad(1, format!("the header does not decode ({e})")))?;
    if header.sluice_store_backup != BACKUP_VERSION {
        return Err(bad(
            1,
            format!(
                "backup layout {} is not the one this sluice reads ({BACKUP_VERSION})",
                header.sluice_store_backup
            ),
        ));
    }
    if header.format > FORMAT_VERSION {
        return Err(bad(
            1,
            format!(
                "its records have store format {}, newer than this sluice understands \
                 ({FORMAT_VERSION}); upgrade sluice",
                header.format
            ),
        ));
    }
    let mut found = Integrity::default();
    let mut records = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (index, text) in lines.enumerate() {
        let number = index + 2;
        let text = text.map_err(|e| bad(number, e.to_string()))?;
        if text.trim().is_empty() {
            continue;
        }
        let line: Line =
            serde_json::from_str(&text).map_err(|e| bad(number, format!("not a record ({e})")))?;
        let tree = TreeName::named(&line.tree)
            .ok_or_else(|| bad(number, format!("no tree `{}` in a sluice store", line.tree)))?;
        let key = Line::bytes(line.key, line.key_hex, "key").map_err(|why| bad(number, why))?;
        let value =
            Line::bytes(line.value, line.value_hex, "value").map_err(|why| bad(number, why))?;
        if tree == TreeName::Meta && key == INTEGRITY_KEY {
            return Err(bad(
                number,
                "a backup does not carry an integrity record".into(),
            ));
        }
        tree.check(&key, &value).map_err(|why| {
            bad(
                number,
                format!(
                    "the record of tree `{}` does not decode ({why})",
                    tree.name()
                ),
            )
        })?;
        if !seen.insert((tree.name(), key.clone())) {
            return Err(bad(
                number,
                format!("a second record with the same key in `{}`", tree.name()),
            ));
        }
        found.change(tree.name(), &key, None, Some(&value));
        records.push((tree, key, value));
    }
    let expected = header.integrity();
    if !expected.same_records(&found) || header.records != found.records() {
        return Err(Error::Io {
            path: source.to_string(),
            message: format!(
                "the records do not add up to the header: {}; the backup is incomplete or was \
                 changed, so nothing was restored",
                expected.difference(&found)
            ),
        });
    }
    Ok(Backup { header, records })
}

/// What [`restore`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    /// The store directory now holding the backup's records.
    pub store: PathBuf,
    /// Where the store it replaced was moved, if there was one.
    pub moved_aside: Option<PathBuf>,
    /// The restored store's account.
    pub integrity: Integrity,
}

/// Opens a store, waiting out a lock this process's own sled threads may hold for a moment
/// after the previous handle was dropped.
fn reopen(dir: &Path) -> Result<SledStore> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open_checked(dir, Verification::Full) {
            Err(Error::StoreBusy { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn stamp() -> String {
    Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string()
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".into());
    dir.with_file_name(format!("{name}.{suffix}-{}", stamp()))
}

/// Whether `dir` holds anything at all.
fn occupied(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(Error::io(dir, err)),
    }
}

/// Restores `backup` as the store in `dir`. A store there with records (outside `meta`), or
/// one that cannot be opened, is kept unless `force`; with `force` it is moved aside to
/// `<dir>.replaced-<time>`, never deleted. The records are written into a new directory
/// beside, verified by opening it again, and only then renamed into place.
pub fn restore(dir: &Path, backup: &Backup, force: bool) -> Result<Restored> {
    let mut moved_aside = None;
    if occupied(dir)? {
        let existing = match reopen(dir) {
            Ok(store) => {
                let account = store.integrity()?;
                let kept: u64 = account
                    .counts
                    .iter()
                    .filter(|(tree, _)| tree.as_str() != TreeName::Meta.name())
                    .map(|(_, n)| n)
                    .sum();
                (kept > 0).then(|| {
                    format!(
                        "the store at {} holds {} records ({})",
                        dir.display(),
                        account.records(),
                        account.describe_counts()
                    )
                })
            }
            Err(Error::StoreBusy { path }) => {
                return Err(Error::Conflict(format!(
                    "{path}: the state store is in use by another sluice process (a running \
                     `sluice serve`?); stop it before restoring"
                )))
            }
            Err(Error::StoreDamaged { found, .. }) => Some(format!(
                "the store at {} is damaged ({found})",
                dir.display()
            )),
            Err(err) => Some(format!(
                "the store at {} cannot be opened ({err})",
                dir.display()
            )),
        };
        match existing {
            Some(what) if !force => {
                return Err(Error::Conflict(format!(
                    "{what}; restoring over it needs --force, which moves it aside to \
                     {}.replaced-<time> (nothing is deleted)",
                    dir.display()
                )))
            }
            _ => {
                let aside = sibling(dir, "replaced");
                std::fs::rename(dir, &aside).map_err(|e| Error::io(dir, e))?;
                moved_aside = Some(aside);
            }
        }
    }
    let staging = sibling(dir, "restoring");
    let loaded = load(&staging, backup);
    let integrity = match loaded {
        Ok(integrity) => integrity,
        Err(err) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(err);
        }
    };
    std::fs::rename(&staging, dir).map_err(|e| Error::io(dir, e))?;
    Ok(Restored {
        store: dir.to_path_buf(),
        moved_aside,
        integrity,
    })
}

/// Writes the backup's records into a new store in `staging` and checks them by reopening it.
fn load(staging: &Path, backup: &Backup) -> Result<Integrity> {
    {
        let store = SledStore::open(staging)?;
        let written = quiet::catch(|| -> Result<()> {
            for (tree, key, value) in &backup.records {
                store
                    .tree(*tree)
                    .insert(key.as_slice(), value.as_slice())
                    .map_err(|e| super::store_error("writing a restored record", e))?;
            }
            let scanned = store.scan()?;
            let account = Integrity {
                generation: backup.header.generation.max(1),
                ..scanned
            };
            let record = serde_json::to_vec(&account)
                .map_err(|e| super::store_error("encoding the integrity record", e))?;
            store
                .meta
                .insert(INTEGRITY_KEY, record)
                .map_err(|e| super::store_error("writing the integrity record", e))?;
            store.set_integrity(account);
            store.write_integrity_file()
        })
        .map_err(|panic| {
            damaged(
                staging,
                format!("the store library panicked restoring ({panic})"),
            )
        });
        written??;
    }
    let store = reopen(staging)?;
    let account = store.integrity()?;
    if backup.header.format == FORMAT_VERSION && !backup.header.integrity().same_records(&account) {
        return Err(damaged(
            staging,
            format!(
                "the restored records differ from the backup: {}",
                backup.header.integrity().difference(&account)
            ),
        ));
    }
    Ok(account)
}
