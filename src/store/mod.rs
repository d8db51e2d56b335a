//! Local state in an embedded sled database under the state directory: the append-only audit
//! log (who did what, when and why), snapshots sluice made, releases, runs with every
//! transition, each environment's current release and the configuration as last loaded.
//! Behind [`Store`] so a shared backend can replace sled later.

pub mod backup;
pub mod integrity;
mod quiet;
pub mod records;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Mutex, RwLock, RwLockWriteGuard};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use integrity::{Integrity, INTEGRITY_FILE, INTEGRITY_KEY};

pub use records::{
    Approval, EnvironmentState, LoadedConfig, LoadedFile, Origin, RecordedMeasurement, Release,
    ReleaseMigration, ReleaseOnEnvironment, Run, RunKind, RunState, RunSummary, Transition,
};

/// The on-disk format this build reads and writes. 1: events, snapshots, last successes.
/// 2: events carry their run id and are indexed by it; releases, runs, environment states and
/// the loaded configuration. (The `marks` tree came later within format 2: an older store simply
/// gains it empty.) 3: an integrity record (records per tree, a checksum, a write generation)
/// written in the same transaction as every change, mirrored after each flush in
/// `sluice-integrity.json` beside sled's files (see [`integrity`]); a format 2 store gains
/// both on open. 4: a gated run's gates are typed (`{kind, text}` beside the sentences) and a
/// rollback's method is one of the policy's rungs; a format 3 store's runs are rewritten on open,
/// in the same transaction as the new format key.
pub const FORMAT_VERSION: u32 = 4;

/// The first format whose run records carry typed gates.
const TYPED_GATES_SINCE: u32 = 4;

/// The first format that keeps an integrity record: a store of this format without one has
/// lost it.
const INTEGRITY_SINCE: u32 = 3;

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Who did it (a person, or `sluice` for automatic actions).
    pub actor: String,
    /// What was done, e.g. `snapshot.created`, `snapshot.restored`, `apply.succeeded`.
    pub action: String,
    /// The environment concerned.
    pub environment: String,
    /// Why, as the actor said.
    pub reason: Option<String>,
    /// Facts of the action (names, run id, counts).
    pub detail: serde_json::Value,
    /// The run it belongs to, if any.
    #[serde(default)]
    pub run_id: Option<String>,
}

/// A snapshot sluice made, as recorded when it made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Provider name of the snapshot.
    pub name: String,
    /// The run (or manual request) it was made for.
    pub run_id: String,
    /// Provider kind.
    pub provider: String,
    /// When sluice recorded it.
    pub created_at: DateTime<Utc>,
    /// Who asked for it.
    pub actor: String,
    /// Why.
    pub reason: Option<String>,
    /// For a preserved copy (the state a restore replaced): the snapshot that was restored.
    /// `created_at`, `actor`, `reason` and `run_id` then say when, by whom, why and in which
    /// run the copy was preserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserved_from: Option<String>,
}

/// The last run that brought an environment to its release successfully.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastSuccess {
    /// Run id.
    pub run_id: String,
    /// The snapshot taken before it, which retention never deletes.
    pub snapshot: Option<String>,
    /// When it finished.
    pub at: DateTime<Utc>,
}

/// One page of a run listing: newest first, only runs requested before run `before` when it
/// is given (the cursor: the last id of the previous page), only those `wanted` keeps, at most
/// `limit`.
pub struct RunPage<'a> {
    /// The id of the run the page continues after, if any.
    pub before: Option<&'a str>,
    /// At most this many summaries.
    pub limit: usize,
    /// Which runs count (an environment, the runs a caller may see).
    pub wanted: &'a (dyn Fn(&RunSummary) -> bool + Sync),
}

/// Where sluice keeps its own records.
pub trait Store: Send + Sync {
    /// Appends to the audit log; entries are never changed or removed.
    fn append_event(&self, event: &Event) -> Result<()>;
    /// The audit log, oldest first, optionally for one environment.
    fn events(&self, environment: Option<&str>) -> Result<Vec<Event>>;
    /// Records a snapshot sluice made.
    fn record_snapshot(&self, environment: &str, record: &SnapshotRecord) -> Result<()>;
    /// Forgets a snapshot that was deleted.
    fn forget_snapshot(&self, environment: &str, name: &str) -> Result<()>;
    /// Snapshots sluice recorded for an environment.
    fn snapshots(&self, environment: &str) -> Result<Vec<SnapshotRecord>>;
    /// Records an environment's last successful run.
    fn set_last_success(&self, environment: &str, success: &LastSuccess) -> Result<()>;
    /// An environment's last successful run.
    fn last_success(&self, environment: &str) -> Result<Option<LastSuccess>>;
    /// The audit log of one run, oldest first.
    fn run_events(&self, run_id: &str) -> Result<Vec<Event>>;
    /// Writes a run (new or changed) and flushes before returning.
    fn put_run(&self, run: &Run) -> Result<()>;
    /// One run.
    fn run(&self, id: &str) -> Result<Option<Run>>;
    /// All runs, oldest first.
    fn runs(&self) -> Result<Vec<Run>>;
    /// Summaries of runs for a listing, newest first (by request time, then id); an unknown
    /// `before` is a usage error. Reads no whole run.
    fn run_summaries(&self, page: &RunPage<'_>) -> Result<Vec<RunSummary>>;
    /// The runs that have not ended (waiting, holding their environment or halted), oldest
    /// first: what the environment views and the metrics need, without the finished history.
    fn open_runs(&self) -> Result<Vec<Run>>;
    /// Records a release (idempotent: the first record of a hash is kept).
    fn put_release(&self, release: &Release) -> Result<bool>;
    /// One release by hash.
    fn release(&self, hash: &str) -> Result<Option<Release>>;
    /// All releases, oldest first.
    fn releases(&self) -> Result<Vec<Release>>;
    /// Marks the newest release of the migrations directory.
    fn set_head_release(&self, hash: &str) -> Result<()>;
    /// The newest release of the migrations directory.
    fn head_release(&self) -> Result<Option<String>>;
    /// Records what sluice knows about an environment's release.
    fn put_environment_state(&self, environment: &str, state: &EnvironmentState) -> Result<()>;
    /// What sluice knows about an environment's release.
    fn environment_state(&self, environment: &str) -> Result<EnvironmentState>;
    /// Records the configuration as loaded.
    fn put_loaded_config(&self, config: &LoadedConfig) -> Result<()>;
    /// The configuration as last loaded.
    fn loaded_config(&self) -> Result<Option<LoadedConfig>>;
    /// Writes a mark only if none exists under `key`, flushed; false when one did. Marks are
    /// the small once-only records of schedules (fired slots), chat-ops (seen request
    /// signatures, posted messages) and the like, so "at most once" survives a restart.
    fn insert_mark(&self, key: &str, value: &serde_json::Value) -> Result<bool>;
    /// Writes (or overwrites) a mark, flushed.
    fn put_mark(&self, key: &str, value: &serde_json::Value) -> Result<()>;
    /// One mark.
    fn mark(&self, key: &str) -> Result<Option<serde_json::Value>>;
    /// Every mark whose key starts with `prefix`, in key order.
    fn marks(&self, prefix: &str) -> Result<Vec<(String, serde_json::Value)>>;
    /// Forgets a mark (expired replay guards).
    fn remove_mark(&self, key: &str) -> Result<()>;
    /// Writes every record as JSON lines, a header with the format, counts and checksum
    /// first ([`backup`]), as of one moment; for `sluice store backup`.
    fn backup(&self, out: &mut dyn std::io::Write) -> Result<backup::BackupHeader>;
}

/// The trees of the store, each named as in sled. Every write goes through
/// [`SledStore::write`], which keeps the integrity record; nothing writes a tree directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TreeName {
    Events,
    RunEvents,
    Snapshots,
    Environments,
    EnvironmentStates,
    Runs,
    Releases,
    Marks,
    Meta,
}

impl TreeName {
    /// Every tree, in the order backups list them.
    const ALL: [TreeName; 9] = [
        TreeName::Meta,
        TreeName::Releases,
        TreeName::Runs,
        TreeName::Events,
        TreeName::RunEvents,
        TreeName::Snapshots,
        TreeName::Environments,
        TreeName::EnvironmentStates,
        TreeName::Marks,
    ];

    fn name(self) -> &'static str {
        match self {
            TreeName::Events => "events",
            TreeName::RunEvents => "run_events",
            TreeName::Snapshots => "snapshots",
            TreeName::Environments => "environments",
            TreeName::EnvironmentStates => "environment_states",
            TreeName::Runs => "runs",
            TreeName::Releases => "releases",
            TreeName::Marks => "marks",
            TreeName::Meta => "meta",
        }
    }

    fn named(name: &str) -> Option<TreeName> {
        TreeName::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether `value` under `key` is a record this tree can hold: every record must decode,
    /// so a record damaged on disk is found on open, not in the middle of a run.
    fn check(self, key: &[u8], value: &[u8]) -> std::result::Result<(), String> {
        fn parses<T: for<'de> Deserialize<'de>>(value: &[u8]) -> std::result::Result<(), String> {
            serde_json::from_slice::<T>(value)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        match self {
            TreeName::Events => parses::<Event>(value),
            TreeName::RunEvents if value.len() == 8 => Ok(()),
            TreeName::RunEvents => Err(format!("an event id of {} bytes", value.len())),
            TreeName::Snapshots => parses::<SnapshotRecord>(value),
            TreeName::Environments => parses::<LastSuccess>(value),
            TreeName::EnvironmentStates => parses::<EnvironmentState>(value),
            TreeName::Runs => parses::<Run>(value),
            TreeName::Releases => parses::<Release>(value),
            TreeName::Marks => parses::<serde_json::Value>(value),
            TreeName::Meta => match key {
                FORMAT_KEY if value.len() == 4 => Ok(()),
                FORMAT_KEY => Err(format!("a format version of {} bytes", value.len())),
                HEAD_RELEASE_KEY => std::str::from_utf8(value)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                LOADED_CONFIG_KEY => parses::<LoadedConfig>(value),
                _ => Ok(()),
            },
        }
    }
}

const FORMAT_KEY: &[u8] = b"format_version";
const HEAD_RELEASE_KEY: &[u8] = b"head_release";
const LOADED_CONFIG_KEY: &[u8] = b"loaded_config";

/// One change of one record, applied with others in one sled transaction.
struct Change {
    tree: TreeName,
    key: Vec<u8>,
    /// The new value; `None` removes the record.
    value: Option<Vec<u8>>,
    /// Write only when no record is there yet.
    only_if_absent: bool,
}

impl Change {
    fn put(tree: TreeName, key: impl Into<Vec<u8>>, value: Vec<u8>) -> Change {
        Change {
            tree,
            key: key.into(),
            value: Some(value),
            only_if_absent: false,
        }
    }

    fn put_if_absent(tree: TreeName, key: impl Into<Vec<u8>>, value: Vec<u8>) -> Change {
        Change {
            only_if_absent: true,
            ..Change::put(tree, key, value)
        }
    }

    fn remove(tree: TreeName, key: impl Into<Vec<u8>>) -> Change {
        Change {
            tree,
            key: key.into(),
            value: None,
            only_if_absent: false,
        }
    }
}

/// How much of the store [`SledStore::open_checked`] reads before trusting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Decode every record and compare counts and checksum with the integrity record: the first
    /// open of a process (the daemon, a `--local` command, a CLI command's first store access).
    Full,
    /// Only check that the integrity record is there and not older than the integrity file:
    /// for reopening a store this process already verified.
    Quick,
}

/// The sled-backed store.
pub struct SledStore {
    dir: std::path::PathBuf,
    db: sled::Db,
    events: sled::Tree,
    run_events: sled::Tree,
    snapshots: sled::Tree,
    environments: sled::Tree,
    environment_states: sled::Tree,
    runs: sled::Tree,
    releases: sled::Tree,
    marks: sled::Tree,
    meta: sled::Tree,
    /// The store's account of itself, changed in the same transaction as every write; the
    /// lock also makes writes one at a time, so the account never races.
    integrity: Mutex<Integrity>,
    /// The generation the integrity file was last written with.
    file_generation: Mutex<u64>,
    /// Summaries of every run and the runs that have not ended, built from the `runs` tree on
    /// first use and kept up to date by [`Store::put_run`] (sled lets one process at a time
    /// open the store, so nothing else writes behind its back).
    run_index: RwLock<Option<RunIndex>>,
}

/// The in-memory listing of runs, ordered by request time then id.
#[derive(Default)]
struct RunIndex {
    summaries: BTreeMap<(DateTime<Utc>, String), RunSummary>,
    requested_at: HashMap<String, DateTime<Utc>>,
    open: BTreeMap<(DateTime<Utc>, String), Run>,
}

impl RunIndex {
    /// Records `run` as stored now (new or changed).
    fn add(&mut self, run: &Run) {
        if let Some(before) = self.requested_at.insert(run.id.clone(), run.created_at) {
            if before != run.created_at {
                let old = (before, run.id.clone());
                self.summaries.remove(&old);
                self.open.remove(&old);
            }
        }
        let key = (run.created_at, run.id.clone());
        self.summaries.insert(key.clone(), RunSummary::of(run));
        if run.state.is_final() {
            self.open.remove(&key);
        } else {
            self.open.insert(key, run.clone());
        }
    }

    fn page(&self, page: &RunPage<'_>) -> Result<Vec<RunSummary>> {
        let newest_first: Box<dyn Iterator<Item = &RunSummary>> = match page.before {
            None => Box::new(self.summaries.values().rev()),
            Some(id) => {
                let at = self.requested_at.get(id).ok_or_else(|| {
                    Error::Usage(format!(
                        "`before`: no run `{id}`; pass the id of the last run of the previous page"
                    ))
                })?;
                Box::new(
                    self.summaries
                        .range(..(*at, id.to_string()))
                        .rev()
                        .map(|(_, summary)| summary),
                )
            }
        };
        Ok(newest_first
            .filter(|summary| (page.wanted)(summary))
            .take(page.limit)
            .cloned()
            .collect())
    }
}

fn store_error(context: &str, err: impl std::fmt::Display) -> Error {
    Error::Io {
        path: "state store".into(),
        message: format!("{context}: {err}"),
    }
}

fn damaged(dir: &Path, found: impl Into<String>) -> Error {
    Error::StoreDamaged {
        path: dir.display().to_string(),
        found: found.into(),
    }
}

/// What sled's refusal to open means. A lock held by another process is sled's
/// `ErrorKind::Other` with its own text (the only way sled reports it), read here once and
/// turned into [`Error::StoreBusy`]; a permission problem stays an I/O error; anything else
/// sled says about its files means they are damaged.
fn open_error(dir: &Path, err: sled::Error) -> Error {
    match &err {
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::Other
                && io.to_string().starts_with("could not acquire lock") =>
        {
            Error::StoreBusy {
                path: dir.display().to_string(),
            }
        }
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            Error::io(dir, io)
        }
        sled::Error::Corruption { .. } => damaged(dir, "sled found corrupted data in its files"),
        other => damaged(dir, format!("sled cannot read its files ({other})")),
    }
}

impl SledStore {
    /// Opens (creating) the store in `dir`, reading every record before trusting it (see
    /// [`SledStore::open_checked`]).
    pub fn open(dir: &Path) -> Result<SledStore> {
        SledStore::open_checked(dir, Verification::Full)
    }

    /// Opens (creating) the store in `dir`. sled allows one process at a time; a second gets
    /// [`Error::StoreBusy`] instead of waiting. A store that is not whole — sled refuses its
    /// files or panics on them, a record does not decode, the counts or checksum differ from
    /// the integrity record, or it is older or emptier than the integrity file says — is
    /// [`Error::StoreDamaged`], and sluice writes nothing to it: it never starts empty over a
    /// store that had records.
    pub fn open_checked(dir: &Path, verification: Verification) -> Result<SledStore> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        match quiet::catch(|| SledStore::open_and_verify(dir, verification)) {
            Ok(result) => result,
            Err(panic) => Err(damaged(
                dir,
                format!("the store library panicked reading it ({panic})"),
            )),
        }
    }

    fn open_and_verify(dir: &Path, verification: Verification) -> Result<SledStore> {
        let file = integrity::read_file(dir);
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| open_error(dir, e))?;
        let open = |name: &str| {
            db.open_tree(name)
                .map_err(|e| damaged(dir, format!("sled cannot open tree `{name}` ({e})")))
        };
        let store = SledStore {
            dir: dir.to_path_buf(),
            events: open("events")?,
            run_events: open("run_events")?,
            snapshots: open("snapshots")?,
            environments: open("environments")?,
            environment_states: open("environment_states")?,
            runs: open("runs")?,
            releases: open("releases")?,
            marks: open("marks")?,
            meta: open("meta")?,
            db,
            integrity: Mutex::new(Integrity::default()),
            file_generation: Mutex::new(0),
            run_index: RwLock::new(None),
        };
        let read = |what: &str, e: sled::Error| damaged(dir, format!("reading {what}: {e}"));
        let format = store
            .meta
            .get(FORMAT_KEY)
            .map_err(|e| read("the format version", e))?;
        let recorded = store
            .meta
            .get(INTEGRITY_KEY)
            .map_err(|e| read("the integrity record", e))?
            .map(|bytes| {
                serde_json::from_slice::<Integrity>(&bytes).map_err(|e| {
                    damaged(dir, format!("its integrity record does not decode ({e})"))
                })
            })
            .transpose()?;
        let version = match &format {
            Some(bytes) => <[u8; 4]>::try_from(bytes.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| {
                    damaged(
                        dir,
                        format!("its format key holds {} bytes, not 4", bytes.len()),
                    )
                })?,
            None if recorded.is_some() => {
                return Err(damaged(
                    dir,
                    "its format key is missing although it has an integrity record",
                ))
            }
            None => 0,
        };
        if version > FORMAT_VERSION {
            return Err(Error::Io {
                path: dir.display().to_string(),
                message: format!(
                    "the state store has format {version}, newer than this sluice understands \
                     ({FORMAT_VERSION}); upgrade sluice"
                ),
            });
        }
        let (file_generation, unreadable_file) = match &file {
            integrity::FileState::Present(f) => (Some(&f.integrity), None),
            integrity::FileState::Missing => (None, None),
            integrity::FileState::Unreadable(why) => (None, Some(why)),
        };
        if let (Some(why), None) = (unreadable_file, &recorded) {
            return Err(damaged(
                dir,
                format!(
                    "its integrity file cannot be read ({why}) and sled holds no integrity \
                     record, so sluice cannot tell whether records were lost"
                ),
            ));
        }
        if let (Some(expected), None) = (file_generation, &recorded) {
            return Err(damaged(
                dir,
                format!(
                    "sled came back without any of the writes sluice made: it has no integrity \
                     record, where {INTEGRITY_FILE} counts {} records (write #{})",
                    expected.records(),
                    expected.generation
                ),
            ));
        }
        if let (Some(expected), Some(found)) = (file_generation, &recorded) {
            if found.generation < expected.generation {
                return Err(damaged(
                    dir,
                    format!(
                        "sled came back with an older state: write #{} ({} records), where \
                         {INTEGRITY_FILE} says write #{} ({} records) was made durable",
                        found.generation,
                        found.records(),
                        expected.generation,
                        expected.records()
                    ),
                ));
            }
        }
        if version >= INTEGRITY_SINCE && recorded.is_none() {
            return Err(damaged(dir, "its integrity record is missing"));
        }
        if let Some(why) = unreadable_file {
            tracing::warn!(
                store = %dir.display(),
                "the integrity file cannot be read ({why}); every record is checked against the \
                 store's own integrity record instead, and the file written again"
            );
        }
        let current = match (&recorded, verification) {
            (Some(found), Verification::Quick) if unreadable_file.is_none() => found.clone(),
            (recorded, _) => {
                let scanned = store.scan()?;
                if let Some(recorded) = recorded {
                    if !recorded.same_records(&scanned) {
                        return Err(damaged(dir, recorded.difference(&scanned)));
                    }
                }
                Integrity {
                    generation: recorded.as_ref().map_or(0, |r| r.generation),
                    ..scanned
                }
            }
        };
        let on_file = file_generation.map(|f| f.generation);
        store.start(current, version, recorded.is_some(), on_file)?;
        Ok(store)
    }

    /// Brings a verified store to this format: migrates older records, writes the format key
    /// and the integrity record if they are missing or old, and the integrity file if it is
    /// missing or behind (`on_file`: its generation).
    fn start(
        &self,
        mut current: Integrity,
        version: u32,
        has_record: bool,
        on_file: Option<u64>,
    ) -> Result<()> {
        let fresh = version == 0 && current.records() == 0;
        if version < 2 && !fresh {
            self.migrate_1_to_2()?;
            current = Integrity {
                generation: current.generation,
                ..self.scan()?
            };
        }
        let generation = current.generation;
        self.set_integrity(current);
        if version != FORMAT_VERSION || !has_record {
            let mut changes = if version < TYPED_GATES_SINCE && !fresh {
                self.runs_with_typed_gates()?
            } else {
                Vec::new()
            };
            changes.push(Change::put(
                TreeName::Meta,
                FORMAT_KEY,
                FORMAT_VERSION.to_be_bytes().to_vec(),
            ));
            self.write(true, || Ok(changes))?;
        } else if on_file.is_none_or(|written| written < generation) {
            self.write_integrity_file()?;
        } else if let (Some(written), Ok(mut mine)) = (on_file, self.file_generation.lock()) {
            *mine = written;
        }
        Ok(())
    }

    fn set_integrity(&self, integrity: Integrity) {
        match self.integrity.lock() {
            Ok(mut guard) => *guard = integrity,
            Err(poisoned) => *poisoned.into_inner() = integrity,
        }
    }

    fn tree(&self, name: TreeName) -> &sled::Tree {
        match name {
            TreeName::Events => &self.events,
            TreeName::RunEvents => &self.run_events,
            TreeName::Snapshots => &self.snapshots,
            TreeName::Environments => &self.environments,
            TreeName::EnvironmentStates => &self.environment_states,
            TreeName::Runs => &self.runs,
            TreeName::Releases => &self.releases,
            TreeName::Marks => &self.marks,
            TreeName::Meta => &self.meta,
        }
    }

    /// Reads every record of every tree, checking that each decodes, and counts them.
    fn scan(&self) -> Result<Integrity> {
        let mut found = Integrity::default();
        for tree in TreeName::ALL {
            for item in self.tree(tree).iter() {
                let (key, value) = item.map_err(|e| {
                    damaged(&self.dir, format!("reading tree `{}`: {e}", tree.name()))
                })?;
                if tree == TreeName::Meta && key.as_ref() == INTEGRITY_KEY {
                    continue;
                }
                tree.check(&key, &value).map_err(|why| {
                    damaged(
                        &self.dir,
                        format!(
                            "record {} of tree `{}` does not decode ({why})",
                            describe_key(&key),
                            tree.name()
                        ),
                    )
                })?;
                found.change(tree.name(), &key, None, Some(&value));
            }
        }
        Ok(found)
    }

    /// The format version recorded in the store.
    pub fn format_version(&self) -> Result<u32> {
        Ok(self
            .meta
            .get(FORMAT_KEY)
            .map_err(|e| store_error("reading the format version", e))?
            .and_then(|b| <[u8; 4]>::try_from(b.as_ref()).ok())
            .map(u32::from_be_bytes)
            .unwrap_or(1))
    }

    /// The store's account of itself: records per tree, checksum, write generation.
    pub fn integrity(&self) -> Result<Integrity> {
        self.integrity
            .lock()
            .map(|guard| guard.clone())
            .map_err(|_| self.interrupted())
    }

    fn interrupted(&self) -> Error {
        damaged(
            &self.dir,
            "an earlier write in this process stopped inside the store library; restart sluice \
             so it checks the store again",
        )
    }

    /// Format 1 events kept their run id only inside `detail`; format 2 gives every event its
    /// run id and indexes events by run. Runs before the integrity record exists, so it writes
    /// sled directly; the caller counts the result afterwards.
    /// Every run record rewritten in format 4: decoding reads a format 3 gate's kind from its
    /// sentence (once, here) and encoding stores it typed.
    fn runs_with_typed_gates(&self) -> Result<Vec<Change>> {
        let mut changes = Vec::new();
        for item in self.runs.iter() {
            let (key, value) = item.map_err(|e| store_error("reading runs", e))?;
            let run: Run = decode(&value)?;
            let document = redacted_document(&run)?;
            changes.push(Change::put(
                TreeName::Runs,
                key.to_vec(),
                encode(&document)?,
            ));
        }
        Ok(changes)
    }

    fn migrate_1_to_2(&self) -> Result<()> {
        for item in self.events.iter() {
            let (key, value) = item.map_err(|e| store_error("reading events", e))?;
            let mut event: Event = decode(&value)?;
            if event.run_id.is_none() {
                event.run_id = event
                    .detail
                    .get("run_id")
                    .and_then(|v| v.as_str())
                    .map(String::from);
            }
            if let Some(run_id) = &event.run_id {
                self.run_events
                    .insert(run_event_key(run_id, &key), key.as_ref())
                    .map_err(|e| store_error("indexing events", e))?;
            }
            self.events
                .insert(key, encode(&event)?)
                .map_err(|e| store_error("migrating events", e))?;
        }
        Ok(())
    }

    /// Applies the changes `make` returns (called with the write lock held, so it may read
    /// what it bases them on) in one sled transaction together with the updated integrity
    /// record; with `flush`, makes them durable and then records the account in the integrity
    /// file. Returns, per change, whether it was written (`only_if_absent` ones may not be).
    fn write(&self, flush: bool, make: impl FnOnce() -> Result<Vec<Change>>) -> Result<Vec<bool>> {
        let committed = quiet::catch(|| self.commit(make)).map_err(|panic| {
            damaged(
                &self.dir,
                format!("the store library panicked writing ({panic})"),
            )
        })??;
        let Some((applied, generation_written)) = committed else {
            return Ok(Vec::new());
        };
        if flush && applied.iter().any(|a| *a) {
            self.flush()?;
            self.record_flushed(generation_written)?;
        }
        Ok(applied)
    }

    fn commit(
        &self,
        make: impl FnOnce() -> Result<Vec<Change>>,
    ) -> Result<Option<(Vec<bool>, Integrity)>> {
        use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
        let mut account = self.integrity.lock().map_err(|_| self.interrupted())?;
        let changes = make()?;
        if changes.is_empty() {
            return Ok(None);
        }
        let mut names: Vec<TreeName> = vec![TreeName::Meta];
        for change in &changes {
            if !names.contains(&change.tree) {
                names.push(change.tree);
            }
        }
        let trees: Vec<&sled::Tree> = names.iter().map(|n| self.tree(*n)).collect();
        let before: &Integrity = &account;
        let outcome = trees.as_slice().transaction(|views| {
            let mut after = before.clone();
            let mut applied = Vec::with_capacity(changes.len());
            for change in &changes {
                let position = names.iter().position(|n| *n == change.tree).unwrap_or(0);
                let view = &views[position];
                if change.only_if_absent && view.get(change.key.as_slice())?.is_some() {
                    applied.push(false);
                    continue;
                }
                let old = match &change.value {
                    Some(value) => view.insert(change.key.as_slice(), value.as_slice())?,
                    None => view.remove(change.key.as_slice())?,
                };
                if old.is_some() || change.value.is_some() {
                    after.change(
                        change.tree.name(),
                        &change.key,
                        old.as_deref(),
                        change.value.as_deref(),
                    );
                }
                applied.push(true);
            }
            if applied.iter().any(|a| *a) {
                after.generation += 1;
                let record = serde_json::to_vec(&after)
                    .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
                views[0].insert(INTEGRITY_KEY, record)?;
            }
            Ok((applied, after))
        });
        let (applied, after) = outcome.map_err(|e| match e {
            TransactionError::Abort(why) => store_error("encoding the integrity record", why),
            TransactionError::Storage(err) => store_error("writing", err),
        })?;
        *account = after.clone();
        Ok(Some((applied, after)))
    }

    /// Writes the integrity file for `flushed`, a state made durable by a flush, unless a
    /// later one was written already.
    fn record_flushed(&self, flushed: Integrity) -> Result<()> {
        let mut written = self
            .file_generation
            .lock()
            .map_err(|_| self.interrupted())?;
        if flushed.generation > *written {
            integrity::write_file(&self.dir, FORMAT_VERSION, &flushed)?;
            *written = flushed.generation;
        }
        Ok(())
    }

    fn write_integrity_file(&self) -> Result<()> {
        let current = self.integrity()?;
        self.flush()?;
        let mut written = self
            .file_generation
            .lock()
            .map_err(|_| self.interrupted())?;
        integrity::write_file(&self.dir, FORMAT_VERSION, &current)?;
        *written = current.generation;
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| store_error("flushing", e))
    }

    /// Runs a read, turning a panic of the store library into [`Error::StoreDamaged`].
    fn read<T>(&self, what: &str, op: impl FnOnce() -> Result<T>) -> Result<T> {
        quiet::catch(op).map_err(|panic| {
            damaged(
                &self.dir,
                format!("the store library panicked reading {what} ({panic})"),
            )
        })?
    }

    fn index_for_writing(&self) -> RwLockWriteGuard<'_, Option<RunIndex>> {
        self.run_index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `read` on the run index, building it from the stored runs first if needed. Runs
    /// stored by an older sluice are redacted on the way in, like every run stored now.
    fn with_run_index<T>(&self, read: impl FnOnce(&RunIndex) -> Result<T>) -> Result<T> {
        {
            let guard = self
                .run_index
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(index) = guard.as_ref() {
                return read(index);
            }
        }
        let mut guard = self.index_for_writing();
        if guard.is_none() {
            let mut index = RunIndex::default();
            for item in self.runs.iter() {
                let (_, value) = item.map_err(|e| store_error("reading runs", e))?;
                let run: Run = decode(&value)?;
                index.add(&decode_document(redacted_document(&run)?)?);
            }
            *guard = Some(index);
        }
        match guard.as_ref() {
            Some(index) => read(index),
            None => Err(store_error("reading runs", "the run index is missing")),
        }
    }
}

/// A key for messages: as text when it is printable, else as hex.
fn describe_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if !text.chars().any(char::is_control) => format!("`{text}`"),
        _ => format!("0x{}", hex::encode(key)),
    }
}

/// A store that opens the sled database for each operation and closes it right after, waiting
/// (up to `wait`) while another sluice process has it open. For CLI commands, so two of them
/// on one project never fail just because their bookkeeping overlaps. The first open reads
/// every record ([`Verification::Full`]); later ones only check the integrity record.
pub struct OnDemandStore {
    dir: std::path::PathBuf,
    wait: std::time::Duration,
    verified: std::sync::atomic::AtomicBool,
}

impl OnDemandStore {
    /// A store in `dir`; the directory is created on first use.
    pub fn new(dir: &Path, wait: std::time::Duration) -> OnDemandStore {
        OnDemandStore {
            dir: dir.to_path_buf(),
            wait,
            verified: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn with<T>(&self, op: impl Fn(&SledStore) -> Result<T>) -> Result<T> {
        use std::sync::atomic::Ordering;
        let deadline = std::time::Instant::now() + self.wait;
        loop {
            let verification = if self.verified.load(Ordering::SeqCst) {
                Verification::Quick
            } else {
                Verification::Full
            };
            match SledStore::open_checked(&self.dir, verification) {
                Ok(store) => {
                    self.verified.store(true, Ordering::SeqCst);
                    return op(&store);
                }
                Err(Error::StoreBusy { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl OnDemandStore {
    /// Checks that no other process holds the store for longer than `wait` (a command holds it
    /// for milliseconds; a daemon for as long as it runs), so a command can refuse before it
    /// touches a database instead of failing after.
    pub fn ensure_free(&self, wait: std::time::Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match SledStore::open_checked(&self.dir, Verification::Quick) {
                Ok(_) => return Ok(()),
                Err(Error::StoreBusy { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Store for OnDemandStore {
    fn append_event(&self, event: &Event) -> Result<()> {
        self.with(|s| s.append_event(event))
    }
    fn events(&self, environment: Option<&str>) -> Result<Vec<Event>> {
        self.with(|s| s.events(environment))
    }
    fn record_snapshot(&self, environment: &str, record: &SnapshotRecord) -> Result<()> {
        self.with(|s| s.record_snapshot(environment, record))
    }
    fn forget_snapshot(&self, environment: &str, name: &str) -> Result<()> {
        self.with(|s| s.forget_snapshot(environment, name))
    }
    fn snapshots(&self, environment: &str) -> Result<Vec<SnapshotRecord>> {
        self.with(|s| s.snapshots(environment))
    }
    fn set_last_success(&self, environment: &str, success: &LastSuccess) -> Result<()> {
        self.with(|s| s.set_last_success(environment, success))
    }
    fn last_success(&self, environment: &str) -> Result<Option<LastSuccess>> {
        self.with(|s| s.last_success(environment))
    }
    fn run_events(&self, run_id: &str) -> Result<Vec<Event>> {
        self.with(|s| s.run_events(run_id))
    }
    fn put_run(&self, run: &Run) -> Result<()> {
        self.with(|s| s.put_run(run))
    }
    fn run(&self, id: &str) -> Result<Option<Run>> {
        self.with(|s| s.run(id))
    }
    fn runs(&self) -> Result<Vec<Run>> {
        self.with(|s| s.runs())
    }
    fn run_summaries(&self, page: &RunPage<'_>) -> Result<Vec<RunSummary>> {
        self.with(|s| s.run_summaries(page))
    }
    fn open_runs(&self) -> Result<Vec<Run>> {
        self.with(|s| s.open_runs())
    }
    fn put_release(&self, release: &Release) -> Result<bool> {
        self.with(|s| s.put_release(release))
    }
    fn release(&self, hash: &str) -> Result<Option<Release>> {
        self.with(|s| s.release(hash))
    }
    fn releases(&self) -> Result<Vec<Release>> {
        self.with(|s| s.releases())
    }
    fn set_head_release(&self, hash: &str) -> Result<()> {
        self.with(|s| s.set_head_release(hash))
    }
    fn head_release(&self) -> Result<Option<String>> {
        self.with(|s| s.head_release())
    }
    fn put_environment_state(&self, environment: &str, state: &EnvironmentState) -> Result<()> {
        self.with(|s| s.put_environment_state(environment, state))
    }
    fn environment_state(&self, environment: &str) -> Result<EnvironmentState> {
        self.with(|s| s.environment_state(environment))
    }
    fn put_loaded_config(&self, config: &LoadedConfig) -> Result<()> {
        self.with(|s| s.put_loaded_config(config))
    }
    fn loaded_config(&self) -> Result<Option<LoadedConfig>> {
        self.with(|s| s.loaded_config())
    }
    fn insert_mark(&self, key: &str, value: &serde_json::Value) -> Result<bool> {
        self.with(|s| s.insert_mark(key, value))
    }
    fn put_mark(&self, key: &str, value: &serde_json::Value) -> Result<()> {
        self.with(|s| s.put_mark(key, value))
    }
    fn mark(&self, key: &str) -> Result<Option<serde_json::Value>> {
        self.with(|s| s.mark(key))
    }
    fn marks(&self, prefix: &str) -> Result<Vec<(String, serde_json::Value)>> {
        self.with(|s| s.marks(prefix))
    }
    fn remove_mark(&self, key: &str) -> Result<()> {
        self.with(|s| s.remove_mark(key))
    }
    fn backup(&self, out: &mut dyn std::io::Write) -> Result<backup::BackupHeader> {
        let out = std::sync::Mutex::new(out);
        self.with(|s| match out.lock() {
            Ok(mut out) => s.backup(&mut **out),
            Err(_) => Err(store_error(
                "writing the backup",
                "an earlier attempt failed",
            )),
        })
    }
}

fn run_event_key(run_id: &str, event_key: &[u8]) -> Vec<u8> {
    let mut key = run_id.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(event_key);
    key
}

fn snapshot_key(environment: &str, name: &str) -> Vec<u8> {
    let mut key = environment.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(name.as_bytes());
    key
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| store_error("decoding a record", e))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| store_error("encoding a record", e))
}

impl SledStore {
    /// The next event id: one past the newest, read under the write lock. (sled's
    /// `generate_id` restarts at zero in a restored store, which would overwrite history.)
    fn next_event_id(&self) -> Result<u64> {
        let last = self
            .events
            .last()
            .map_err(|e| store_error("reading the newest event", e))?;
        Ok(match last {
            Some((key, _)) => <[u8; 8]>::try_from(key.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| damaged(&self.dir, "an event key is not 8 bytes"))?
                .saturating_add(1),
            None => 0,
        })
    }
}

/// A record people read back (an event, a run) as JSON with every string passed through
/// [`crate::error::redact_urls`]: what the audit log and run views show comes from here.
fn redacted_document<T: Serialize>(value: &T) -> Result<serde_json::Value> {
    let mut document =
        serde_json::to_value(value).map_err(|e| store_error("encoding a record", e))?;
    crate::error::redact_json(&mut document);
    Ok(document)
}

fn decode_document<T: for<'de> Deserialize<'de>>(document: serde_json::Value) -> Result<T> {
    serde_json::from_value(document).map_err(|e| store_error("decoding a record", e))
}

impl Store for SledStore {
    fn append_event(&self, event: &Event) -> Result<()> {
        let value = encode(&redacted_document(event)?)?;
        self.write(true, || {
            let id = self.next_event_id()?.to_be_bytes();
            let mut changes = vec![Change::put(TreeName::Events, id.to_vec(), value.clone())];
            if let Some(run_id) = &event.run_id {
                changes.push(Change::put(
                    TreeName::RunEvents,
                    run_event_key(run_id, &id),
                    id.to_vec(),
                ));
            }
            Ok(changes)
        })
        .map(|_| ())
    }

    fn events(&self, environment: Option<&str>) -> Result<Vec<Event>> {
        self.read("events", || {
            let mut out = Vec::new();
            for item in self.events.iter() {
                let (_, value) = item.map_err(|e| store_error("reading events", e))?;
                let event: Event = decode(&value)?;
                if environment.is_none_or(|env| env == event.environment) {
                    out.push(event);
                }
            }
            Ok(out)
        })
    }

    fn record_snapshot(&self, environment: &str, record: &SnapshotRecord) -> Result<()> {
        let value = encode(record)?;
        self.write(true, || {
            Ok(vec![Change::put(
                TreeName::Snapshots,
                snapshot_key(environment, &record.name),
                value,
            )])
        })
        .map(|_| ())
    }

    fn forget_snapshot(&self, environment: &str, name: &str) -> Result<()> {
        self.write(true, || {
            Ok(vec![Change::remove(
                TreeName::Snapshots,
                snapshot_key(environment, name),
            )])
        })
        .map(|_| ())
    }

    fn snapshots(&self, environment: &str) -> Result<Vec<SnapshotRecord>> {
        let mut prefix = environment.as_bytes().to_vec();
        prefix.push(0);
        self.read("snapshots", || {
            self.snapshots
                .scan_prefix(prefix)
                .map(|item| {
                    let (_, value) = item.map_err(|e| store_error("reading snapshots", e))?;
                    decode(&value)
                })
                .collect()
        })
    }

    fn set_last_success(&self, environment: &str, success: &LastSuccess) -> Result<()> {
        let value = encode(success)?;
        self.write(true, || {
            Ok(vec![Change::put(
                TreeName::Environments,
                environment.as_bytes(),
                value,
            )])
        })
        .map(|_| ())
    }

    fn last_success(&self, environment: &str) -> Result<Option<LastSuccess>> {
        self.read("the last success", || {
            match self
                .environments
                .get(environment.as_bytes())
                .map_err(|e| store_error("reading the last success", e))?
            {
                Some(bytes) => decode(&bytes).map(Some),
                None => Ok(None),
            }
        })
    }

    fn run_events(&self, run_id: &str) -> Result<Vec<Event>> {
        let mut prefix = run_id.as_bytes().to_vec();
        prefix.push(0);
        self.read("a run's events", || {
            let mut out = Vec::new();
            for item in self.run_events.scan_prefix(prefix) {
                let (_, event_key) = item.map_err(|e| store_error("reading the event index", e))?;
                if let Some(value) = self
                    .events
                    .get(&event_key)
                    .map_err(|e| store_error("reading an event", e))?
                {
                    out.push(decode(&value)?);
                }
            }
            Ok(out)
        })
    }

    fn put_run(&self, run: &Run) -> Result<()> {
        let document = redacted_document(run)?;
        let value = encode(&document)?;
        let mut index = self.index_for_writing();
        self.write(true, || {
            Ok(vec![Change::put(
                TreeName::Runs,
                run.id.as_bytes(),
                value.clone(),
            )])
        })?;
        if let Some(listing) = index.as_mut() {
            match decode_document::<Run>(document) {
                Ok(stored) => listing.add(&stored),
                Err(_) => *index = None,
            }
        }
        Ok(())
    }

    fn run(&self, id: &str) -> Result<Option<Run>> {
        self.read("a run", || {
            self.runs
                .get(id.as_bytes())
                .map_err(|e| store_error("reading a run", e))?
                .map(|v| decode(&v))
                .transpose()
        })
    }

    fn runs(&self) -> Result<Vec<Run>> {
        let mut runs: Vec<Run> = self.read("runs", || {
            self.runs
                .iter()
                .map(|item| {
                    let (_, value) = item.map_err(|e| store_error("reading runs", e))?;
                    decode(&value)
                })
                .collect::<Result<_>>()
        })?;
        runs.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(runs)
    }

    fn run_summaries(&self, page: &RunPage<'_>) -> Result<Vec<RunSummary>> {
        self.with_run_index(|index| index.page(page))
    }

    fn open_runs(&self) -> Result<Vec<Run>> {
        self.with_run_index(|index| Ok(index.open.values().cloned().collect()))
    }

    fn put_release(&self, release: &Release) -> Result<bool> {
        let value = encode(release)?;
        let applied = self.write(true, || {
            Ok(vec![Change::put_if_absent(
                TreeName::Releases,
                release.hash.as_bytes(),
                value,
            )])
        })?;
        Ok(applied.first().copied().unwrap_or(false))
    }

    fn release(&self, hash: &str) -> Result<Option<Release>> {
        self.read("a release", || {
            self.releases
                .get(hash.as_bytes())
                .map_err(|e| store_error("reading a release", e))?
                .map(|v| decode(&v))
                .transpose()
        })
    }

    fn releases(&self) -> Result<Vec<Release>> {
        let mut releases: Vec<Release> = self.read("releases", || {
            self.releases
                .iter()
                .map(|item| {
                    let (_, value) = item.map_err(|e| store_error("reading releases", e))?;
                    decode(&value)
                })
                .collect::<Result<_>>()
        })?;
        releases.sort_by_key(|r| r.recorded_at);
        Ok(releases)
    }

    fn set_head_release(&self, hash: &str) -> Result<()> {
        self.write(true, || {
            Ok(vec![Change::put(
                TreeName::Meta,
                HEAD_RELEASE_KEY,
                hash.as_bytes().to_vec(),
            )])
        })
        .map(|_| ())
    }

    fn head_release(&self) -> Result<Option<String>> {
        self.read("the head release", || {
            Ok(self
                .meta
                .get(HEAD_RELEASE_KEY)
                .map_err(|e| store_error("reading the head release", e))?
                .map(|v| String::from_utf8_lossy(&v).into_owned()))
        })
    }

    fn put_environment_state(&self, environment: &str, state: &EnvironmentState) -> Result<()> {
        let value = encode(state)?;
        self.write(true, || {
            Ok(vec![Change::put(
                TreeName::EnvironmentStates,
                environment.as_bytes(),
                value,
            )])
        })
        .map(|_| ())
    }

    fn environment_state(&self, environment: &str) -> Result<EnvironmentState> {
        self.read("an environment's state", || {
            Ok(self
                .environment_states
                .get(environment.as_bytes())
                .map_err(|e| store_error("reading an environment's state", e))?
                .map(|v| decode(&v))
                .transpose()?
                .unwrap_or_default())
        })
    }

    fn put_loaded_config(&self, config: &LoadedConfig) -> Result<()> {
        let value = encode(config)?;
        self.write(true, || {
            Ok(vec![Change::put(TreeName::Meta, LOADED_CONFIG_KEY, value)])
        })
        .map(|_| ())
    }

    fn loaded_config(&self) -> Result<Option<LoadedConfig>> {
        self.read("the loaded configuration", || {
            self.meta
                .get(LOADED_CONFIG_KEY)
                .map_err(|e| store_error("reading the loaded configuration", e))?
                .map(|v| decode(&v))
                .transpose()
        })
    }

    fn insert_mark(&self, key: &str, value: &serde_json::Value) -> Result<bool> {
        let value = encode(value)?;
        let applied = self.write(true, || {
            Ok(vec![Change::put_if_absent(
                TreeName::Marks,
                key.as_bytes(),
                value,
            )])
        })?;
        Ok(applied.first().copied().unwrap_or(false))
    }

    fn put_mark(&self, key: &str, value: &serde_json::Value) -> Result<()> {
        let value = encode(value)?;
        self.write(true, || {
            Ok(vec![Change::put(TreeName::Marks, key.as_bytes(), value)])
        })
        .map(|_| ())
    }

    fn mark(&self, key: &str) -> Result<Option<serde_json::Value>> {
        self.read("a mark", || {
            self.marks
                .get(key.as_bytes())
                .map_err(|e| store_error("reading a mark", e))?
                .map(|v| decode(&v))
                .transpose()
        })
    }

    fn marks(&self, prefix: &str) -> Result<Vec<(String, serde_json::Value)>> {
        self.read("marks", || {
            self.marks
                .scan_prefix(prefix.as_bytes())
                .map(|item| {
                    let (key, value) = item.map_err(|e| store_error("reading marks", e))?;
                    Ok((String::from_utf8_lossy(&key).into_owned(), decode(&value)?))
                })
                .collect()
        })
    }

    fn remove_mark(&self, key: &str) -> Result<()> {
        self.write(false, || {
            Ok(vec![Change::remove(TreeName::Marks, key.as_bytes())])
        })
        .map(|_| ())
    }

    fn backup(&self, out: &mut dyn std::io::Write) -> Result<backup::BackupHeader> {
        backup::write_backup(self, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the store again after this process closed it: sled's background flusher may hold
    /// the file lock a moment after the last handle is dropped, which `OnDemandStore` waits out
    /// the same way.
    fn reopen(dir: &Path) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open(dir) {
                Ok(store) => return store,
                Err(e)
                    if std::time::Instant::now() < deadline && e.to_string().contains("in use") =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopening the store: {e}"),
            }
        }
    }

    #[test]
    fn events_append_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let event = |env: &str, action: &str| Event {
            at: Utc::now(),
            actor: "alice".into(),
            action: action.into(),
            environment: env.into(),
            reason: Some("because".into()),
            detail: serde_json::json!({"n": 1}),
            run_id: None,
        };
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.append_event(&event("dev", "a")).unwrap();
            store.append_event(&event("prod", "b")).unwrap();
            store.append_event(&event("dev", "c")).unwrap();
            store
                .set_last_success(
                    "dev",
                    &LastSuccess {
                        run_id: "r1".into(),
                        snapshot: Some("s1".into()),
                        at: Utc::now(),
                    },
                )
                .unwrap();
        }
        let store = reopen(dir.path());
        let actions: Vec<_> = store
            .events(Some("dev"))
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(actions, ["a", "c"]);
        assert_eq!(store.events(None).unwrap().len(), 3);
        assert_eq!(
            store
                .last_success("dev")
                .unwrap()
                .unwrap()
                .snapshot
                .as_deref(),
            Some("s1")
        );
        assert!(store.last_success("prod").unwrap().is_none());
    }

    #[test]
    fn a_format_1_store_is_migrated_and_its_events_indexed_by_run() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("format_version", &1u32.to_be_bytes())
                .unwrap();
            let events = db.open_tree("events").unwrap();
            let old = |action: &str, run: &str| {
                serde_json::to_vec(&serde_json::json!({
                    "at": "2026-01-01T00:00:00Z", "actor": "alice", "action": action,
                    "environment": "dev", "reason": null, "detail": {"run_id": run}
                }))
                .unwrap()
            };
            events
                .insert(1u64.to_be_bytes(), old("snapshot.created", "r1"))
                .unwrap();
            events
                .insert(2u64.to_be_bytes(), old("apply.succeeded", "r2"))
                .unwrap();
            events
                .insert(3u64.to_be_bytes(), old("restore.succeeded", "r1"))
                .unwrap();
            db.flush().unwrap();
        }
        let store = reopen(dir.path());
        assert_eq!(store.format_version().unwrap(), FORMAT_VERSION);
        let actions: Vec<_> = store
            .run_events("r1")
            .unwrap()
            .into_iter()
            .map(|e| (e.action, e.run_id))
            .collect();
        assert_eq!(
            actions,
            [
                ("snapshot.created".to_string(), Some("r1".to_string())),
                ("restore.succeeded".to_string(), Some("r1".to_string()))
            ]
        );
        assert_eq!(store.events(None).unwrap().len(), 3);
    }

    #[test]
    fn a_store_from_a_newer_sluice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("format_version", &99u32.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let err = loop {
            let err = SledStore::open(dir.path()).err().unwrap().to_string();
            if !err.contains("in use") || std::time::Instant::now() > deadline {
                break err;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(err.contains("format 99, newer than this sluice"), "{err}");
    }

    #[test]
    fn releases_are_recorded_once_and_runs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let release = Release {
            hash: "abc".into(),
            head: Some("m1".into()),
            migrations: vec![ReleaseMigration {
                name: "m1".into(),
                checksum: "c1".into(),
            }],
            recorded_at: Utc::now(),
            source: "test".into(),
        };
        assert!(store.put_release(&release).unwrap());
        let mut later = release.clone();
        later.source = "again".into();
        assert!(!store.put_release(&later).unwrap());
        assert_eq!(store.release("abc").unwrap().unwrap().source, "test");
        let run = Run {
            id: "r1".into(),
            kind: RunKind::Promotion,
            environment: "dev".into(),
            release: "abc".into(),
            head: Some("m1".into()),
            previous_release: None,
            requested_by: "alice".into(),
            reason: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            state: RunState::Applying {
                index: 1,
                total: 2,
                migration: "m1".into(),
            },
            transitions: vec![],
            plan: vec!["m1".into()],
            applied: vec![],
            snapshot: Some("s".into()),
            approvals: vec![],
            measurements: vec![],
            health: None,
            error: None,
            rolls_back: None,
            origin: None,
        };
        store.put_run(&run).unwrap();
        assert_eq!(store.run("r1").unwrap().unwrap(), run);
        assert_eq!(store.runs().unwrap().len(), 1);
    }

    /// A run record as format 3 wrote it: gates as sentences only, the method as text.
    fn format_3_run(id: &str, state: serde_json::Value) -> Vec<u8> {
        let run = Run {
            id: id.into(),
            kind: RunKind::Promotion,
            environment: "prod".into(),
            release: "abc".into(),
            head: Some("m1".into()),
            previous_release: None,
            requested_by: "alice".into(),
            reason: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            state: RunState::Queued,
            transitions: vec![],
            plan: vec!["m1".into()],
            applied: vec![],
            snapshot: Some("s".into()),
            approvals: vec![],
            measurements: vec![],
            health: None,
            error: None,
            rolls_back: None,
            origin: None,
        };
        let mut document = serde_json::to_value(&run).unwrap();
        document["state"] = state.clone();
        let mut transition = state;
        transition["at"] = "2026-01-01T00:00:00Z".into();
        transition["actor"] = "sluice".into();
        document["transitions"] = serde_json::json!([transition]);
        serde_json::to_vec(&document).unwrap()
    }

    #[test]
    fn a_format_3_store_has_its_gates_and_rollback_methods_typed_on_open() {
        use records::{Gate, GateKind, RollbackMethod};
        let dir = tempfile::tempdir().unwrap();
        {
            // Written the way format 3 wrote it, with its integrity record and file.
            let store = SledStore::open(dir.path()).unwrap();
            let gated = serde_json::json!({"name": "gated", "waiting_for": [
                "approval: 0 of 1 approvals (approvers: alice); approve with `sluice approve r1`",
                "window: closed until 09:00 Europe/Berlin"]});
            let rolled = serde_json::json!({"name": "rolled_back", "method": "snapshot",
                "reason": "health failed"});
            store.runs.insert("r1", format_3_run("r1", gated)).unwrap();
            store.runs.insert("r2", format_3_run("r2", rolled)).unwrap();
            store.meta.insert(FORMAT_KEY, &3u32.to_be_bytes()).unwrap();
            let account = Integrity {
                generation: 7,
                ..store.scan().unwrap()
            };
            store
                .meta
                .insert(INTEGRITY_KEY, serde_json::to_vec(&account).unwrap())
                .unwrap();
            store.set_integrity(account.clone());
            store.flush().unwrap();
            integrity::write_file(dir.path(), 3, &account).unwrap();
        }
        let store = reopen(dir.path());
        assert_eq!(store.format_version().unwrap(), 4);
        let gated = store.run("r1").unwrap().unwrap();
        let expected = RunState::Gated {
            gates: vec![
                Gate::new(
                    GateKind::Approval,
                    "0 of 1 approvals (approvers: alice); approve with `sluice approve r1`",
                ),
                Gate::new(GateKind::Window, "closed until 09:00 Europe/Berlin"),
            ],
        };
        assert_eq!(gated.state, expected);
        assert_eq!(gated.transitions[0].state, expected);
        assert!(gated.state.waits_for(GateKind::Approval));
        // Rewritten: the record itself now carries the typed gates beside the sentences.
        let raw: serde_json::Value =
            serde_json::from_slice(&store.runs.get("r1").unwrap().unwrap()).unwrap();
        assert_eq!(raw["state"]["gates"][1]["kind"], "window");
        assert_eq!(
            raw["state"]["waiting_for"][1],
            "window: closed until 09:00 Europe/Berlin"
        );
        assert!(matches!(
            store.run("r2").unwrap().unwrap().state,
            RunState::RolledBack {
                method: RollbackMethod::Snapshot,
                ..
            }
        ));
        drop(store);
        // The rewrite went through the integrity record: the store opens clean again.
        let again = reopen(dir.path());
        assert_eq!(again.runs().unwrap().len(), 2);
    }

    #[test]
    fn a_record_with_an_unknown_rollback_method_does_not_decode() {
        let record = format_3_run(
            "r3",
            serde_json::json!({"name": "rolling_back", "method": "prayer", "reason": "x"}),
        );
        let err = decode::<Run>(&record).unwrap_err().to_string();
        assert!(err.contains("unknown rollback method `prayer`"), "{err}");
    }

    fn event(run: &str, action: &str) -> Event {
        Event {
            at: Utc::now(),
            actor: "alice".into(),
            action: action.into(),
            environment: "dev".into(),
            reason: None,
            detail: serde_json::json!({}),
            run_id: Some(run.into()),
        }
    }

    /// A store with a release, a run and three events, closed again.
    fn filled(dir: &Path) -> Integrity {
        let store = reopen(dir);
        store
            .put_release(&Release {
                hash: "abc".into(),
                head: None,
                migrations: vec![],
                recorded_at: Utc::now(),
                source: "test".into(),
            })
            .unwrap();
        store.set_head_release("abc").unwrap();
        for action in ["run.queued", "run.locked", "run.succeeded"] {
            store.append_event(&event("r1", action)).unwrap();
        }
        store.put_mark("seen", &serde_json::json!(1)).unwrap();
        store.integrity().unwrap()
    }

    fn open_error(dir: &Path) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open(dir) {
                Ok(_) => return "opened".into(),
                Err(Error::StoreBusy { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => return e.to_string(),
            }
        }
    }

    /// Writes `tree` with sled directly, past the integrity record, as damage on disk would.
    fn write_behind_sluices_back(dir: &Path, tree: &str, key: &[u8], value: Option<&[u8]>) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match sled::open(dir) {
                Ok(db) => break db,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("{e}"),
            }
        };
        let tree = db.open_tree(tree).unwrap();
        match value {
            Some(value) => tree.insert(key, value).unwrap(),
            None => tree.remove(key).unwrap(),
        };
        db.flush().unwrap();
    }

    #[test]
    fn every_write_keeps_the_integrity_record_and_file_in_step() {
        let dir = tempfile::tempdir().unwrap();
        let written = filled(dir.path());
        assert_eq!(written.counts.get("events"), Some(&3));
        assert_eq!(written.counts.get("run_events"), Some(&3));
        assert!(written.generation >= 7, "{written:?}");
        let reopened = reopen(dir.path());
        assert_eq!(reopened.integrity().unwrap(), written);
        match integrity::read_file(dir.path()) {
            integrity::FileState::Present(file) => assert_eq!(file.integrity, written),
            other => panic!("{other:?}"),
        }
        assert_eq!(reopened.events(None).unwrap().len(), 3);
        assert_eq!(reopened.run_events("r1").unwrap().len(), 3);
        reopened.remove_mark("seen").unwrap();
        assert_eq!(reopened.integrity().unwrap().counts.get("marks"), None);
    }

    #[test]
    fn item07_a_store_that_lost_its_records_is_refused_not_started_empty() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path());
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name() == Some(std::ffi::OsStr::new(INTEGRITY_FILE)) {
                continue;
            }
            if path.is_dir() {
                std::fs::remove_dir_all(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
        let err = open_error(dir.path());
        assert!(
            err.contains("is damaged: sled came back without any of the writes sluice made")
                && err.contains("sluice store restore FILE"),
            "{err}"
        );
        assert!(
            !dir.path().join("db").exists() || open_error(dir.path()).contains("damaged"),
            "a second attempt is refused the same way"
        );
    }

    #[test]
    fn item07_a_changed_missing_or_undecodable_record_is_found_on_open() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path());
        let release = encode(&Release {
            hash: "abc".into(),
            head: Some("changed".into()),
            migrations: vec![],
            recorded_at: Utc::now(),
            source: "test".into(),
        })
        .unwrap();
        write_behind_sluices_back(dir.path(), "releases", b"abc", Some(&release));
        let err = open_error(dir.path());
        assert!(err.contains("checksum"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        filled(dir.path());
        write_behind_sluices_back(dir.path(), "marks", b"seen", None);
        let err = open_error(dir.path());
        assert!(
            err.contains("tree `marks` holds 0 records where 1 were written"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        filled(dir.path());
        write_behind_sluices_back(dir.path(), "runs", b"r9", Some(b"{\"id\": "));
        let err = open_error(dir.path());
        assert!(
            err.contains("record `r9` of tree `runs` does not decode"),
            "{err}"
        );
    }

    #[test]
    fn a_format_2_store_gains_its_integrity_record_and_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("format_version", &2u32.to_be_bytes())
                .unwrap();
            db.open_tree("marks")
                .unwrap()
                .insert("m", b"1".to_vec())
                .unwrap();
            db.flush().unwrap();
        }
        let store = reopen(dir.path());
        assert_eq!(store.format_version().unwrap(), FORMAT_VERSION);
        let account = store.integrity().unwrap();
        assert_eq!(account.counts.get("marks"), Some(&1));
        assert!(matches!(
            integrity::read_file(dir.path()),
            integrity::FileState::Present(_)
        ));
    }

    #[test]
    fn item07_backup_and_restore_give_back_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let written = filled(dir.path());
        let mut text = Vec::new();
        let header = reopen(dir.path()).backup(&mut text).unwrap();
        assert_eq!(header.records, written.records());
        let backup = backup::read_backup(text.as_slice(), "test").unwrap();
        let target = tempfile::tempdir().unwrap();
        let store_dir = target.path().join("store");
        let restored = backup::restore(&store_dir, &backup, false).unwrap();
        assert!(restored.integrity.same_records(&written));
        let store = reopen(&store_dir);
        assert_eq!(store.events(None).unwrap(), reopen_events(dir.path()));
        store.append_event(&event("r2", "run.queued")).unwrap();
        assert_eq!(
            store.events(None).unwrap().len(),
            4,
            "new events never overwrite restored ones"
        );
        drop(store);

        let err = backup::restore(&store_dir, &backup, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("restoring over it needs --force"), "{err}");
        let replaced = backup::restore(&store_dir, &backup, true).unwrap();
        let aside = replaced.moved_aside.unwrap();
        assert!(aside.join(INTEGRITY_FILE).exists(), "{}", aside.display());

        let mut cut = String::from_utf8(text.clone()).unwrap();
        cut.truncate(cut.trim_end().rfind('\n').unwrap());
        let err = backup::read_backup(cut.as_bytes(), "cut.jsonl")
            .unwrap_err()
            .to_string();
        assert!(err.contains("do not add up to the header"), "{err}");
    }

    fn reopen_events(dir: &Path) -> Vec<Event> {
        reopen(dir).events(None).unwrap()
    }

    #[test]
    fn a_second_open_of_the_same_store_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::open_from_child",
                "--ignored",
                "--nocapture",
            ])
            .env("SLUICE_STORE_DIR", dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&child.stdout);
        assert!(text.contains("in use by another sluice process"), "{text}");
    }

    #[test]
    #[ignore = "helper of a_second_open_of_the_same_store_is_refused_clearly; runs in a child process"]
    fn open_from_child() {
        if let Ok(dir) = std::env::var("SLUICE_STORE_DIR") {
            match SledStore::open(Path::new(&dir)) {
                Ok(_) => println!("opened"),
                Err(e) => println!("{e}"),
            }
        }
    }
}
