//! The records the promotion daemon keeps: releases, runs with every transition, approvals,
//! each environment's current release, and the configuration as last loaded.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::health::{HealthOutcome, Measurement};
use crate::migrations::MigrationSet;

/// An ordered list of migrations up to a head, identified by the hash of its (name, checksum)
/// pairs: what gets promoted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// Hash of the ordered (name, checksum) pairs.
    pub hash: String,
    /// The last migration, if there is any.
    pub head: Option<String>,
    /// The migrations in order, each with its checksum.
    pub migrations: Vec<ReleaseMigration>,
    /// When sluice first saw it.
    pub recorded_at: DateTime<Utc>,
    /// What made sluice record it (`reload`, `api`, `watch`, `start`).
    pub source: String,
}

/// One migration of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseMigration {
    /// Full name.
    pub name: String,
    /// SHA-256 of the forward script.
    pub checksum: String,
}

impl Release {
    /// The release a migrations directory holds now.
    pub fn of(set: &MigrationSet, source: &str) -> Release {
        Release {
            hash: set.release_hash(),
            head: set.migrations.last().map(|m| m.name.clone()),
            migrations: set
                .migrations
                .iter()
                .map(|m| ReleaseMigration {
                    name: m.name.clone(),
                    checksum: m.checksum.clone(),
                })
                .collect(),
            recorded_at: Utc::now(),
            source: source.into(),
        }
    }

    /// The first twelve characters of the hash, for people.
    pub fn short(&self) -> &str {
        short_hash(&self.hash)
    }

    /// Whether every migration of `self` is, in order, the start of `other`.
    pub fn is_prefix_of(&self, other: &Release) -> bool {
        self.migrations.len() <= other.migrations.len()
            && self
                .migrations
                .iter()
                .zip(&other.migrations)
                .all(|(a, b)| a == b)
    }
}

/// The first twelve characters of a release hash.
pub fn short_hash(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// What a run is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// Bring an environment to a release.
    Promotion,
    /// Put an environment back where it was before its last successful promotion.
    Rollback,
}

impl std::fmt::Display for RunKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunKind::Promotion => "promotion",
            RunKind::Rollback => "rollback",
        })
    }
}

/// What kind of gate holds a run: decides what the run waits for (a person, time, another
/// environment) wherever that matters, so no behaviour hangs on the wording of a sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateKind {
    /// The environment feeding this one is not healthy on the release yet.
    Upstream,
    /// The release has not been healthy upstream for the policy's soak time yet.
    Soak,
    /// The policy blocks a lint finding of the migrations the run brings.
    Lint,
    /// Approvals are missing.
    Approval,
    /// A deploy window is closed.
    Window,
    /// Another run holds the environment or waits ahead of this one.
    Concurrency,
}

impl GateKind {
    /// The kind as shown and stored (`approval`, `soak`, …).
    pub fn name(self) -> &'static str {
        match self {
            GateKind::Upstream => "upstream",
            GateKind::Soak => "soak",
            GateKind::Lint => "lint",
            GateKind::Approval => "approval",
            GateKind::Window => "window",
            GateKind::Concurrency => "concurrency",
        }
    }

    /// Every kind, for records written before gates were typed (see [`Gate::from_sentence`]).
    const ALL: [GateKind; 6] = [
        GateKind::Upstream,
        GateKind::Soak,
        GateKind::Lint,
        GateKind::Approval,
        GateKind::Window,
        GateKind::Concurrency,
    ];
}

/// One closed gate: its kind, and what it waits for in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    /// What kind of gate.
    pub kind: GateKind,
    /// What it waits for, for people (without the kind).
    pub text: String,
}

impl Gate {
    /// A gate of `kind` saying `text`.
    pub fn new(kind: GateKind, text: impl Into<String>) -> Gate {
        Gate {
            kind,
            text: text.into(),
        }
    }

    /// `kind: text`, the sentence people read (and what `waiting_for` lists).
    pub fn sentence(&self) -> String {
        format!("{}: {}", self.kind.name(), self.text)
    }

    /// A gate from a sentence of a store written before format 4, when gates were stored as
    /// text alone; used once, by the format migration, never to decide anything afterwards.
    pub fn from_sentence(sentence: &str) -> Gate {
        let (head, rest) = sentence.split_once(':').unwrap_or(("", sentence));
        let kind = GateKind::ALL
            .into_iter()
            .find(|k| k.name() == head.trim())
            .unwrap_or(GateKind::Concurrency);
        Gate::new(kind, rest.trim())
    }
}

/// How a rollback undoes a run (the policy's rung), stored as `down` or `snapshot`.
pub use crate::policy::RollbackMethod;

/// The name a rollback method is stored and shown under.
pub fn method_name(method: RollbackMethod) -> &'static str {
    match method {
        RollbackMethod::Down => "down",
        RollbackMethod::Snapshot => "snapshot",
    }
}

mod method_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{method_name, RollbackMethod};

    pub fn serialize<S: Serializer>(method: &RollbackMethod, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(method_name(*method))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RollbackMethod, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "down" => Ok(RollbackMethod::Down),
            "snapshot" => Ok(RollbackMethod::Snapshot),
            other => Err(serde::de::Error::custom(format!(
                "unknown rollback method `{other}` (down or snapshot)"
            ))),
        }
    }
}

/// Where a run is. Every change is written to the store before the action it announces.
///
/// Stored (and shown by the API) as [`StoredState`]: a gated run lists its gates both typed
/// (`gates`) and as the sentences people read (`waiting_for`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "StoredState", from = "StoredState")]
pub enum RunState {
    /// Recorded; its gates have not been looked at yet.
    Queued,
    /// Held by gates (soak, approvals, a window, another run).
    Gated {
        /// Each closed gate.
        gates: Vec<Gate>,
    },
    /// The environment is reserved for this run; next it takes the snapshot.
    Locked,
    /// The snapshot exists (or none is configured); next it applies.
    Snapshotted,
    /// Applying migration `index` (1-based) of `total`.
    Applying {
        /// 1-based position of the migration being applied.
        index: usize,
        /// Migrations in the run.
        total: usize,
        /// Its name.
        migration: String,
    },
    /// Everything applied; health checks are running.
    Verifying,
    /// On the release and healthy.
    Succeeded,
    /// Putting the environment back.
    RollingBack {
        /// The rung of the ladder in use.
        method: RollbackMethod,
        /// Why.
        reason: String,
    },
    /// Back on the previous release.
    RolledBack {
        /// How it was put back.
        method: RollbackMethod,
        /// Why.
        reason: String,
    },
    /// Stopped; a person has to decide (resume, roll back, or resolve by hand).
    Halted {
        /// What happened and what to do.
        reason: String,
    },
    /// Cancelled before it touched anything.
    Cancelled {
        /// Who or what cancelled it and why.
        reason: String,
    },
    /// An approver said no.
    Rejected {
        /// Who and why.
        reason: String,
    },
}

/// A run state as the store keeps it and the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum StoredState {
    /// See [`RunState::Queued`].
    Queued,
    /// See [`RunState::Gated`].
    Gated {
        /// The gates' sentences, as people read them.
        waiting_for: Vec<String>,
        /// The gates, typed (absent in stores written before format 4).
        #[serde(default)]
        gates: Vec<Gate>,
    },
    /// See [`RunState::Locked`].
    Locked,
    /// See [`RunState::Snapshotted`].
    Snapshotted,
    /// See [`RunState::Applying`].
    Applying {
        /// 1-based position.
        index: usize,
        /// Migrations in the run.
        total: usize,
        /// Its name.
        migration: String,
    },
    /// See [`RunState::Verifying`].
    Verifying,
    /// See [`RunState::Succeeded`].
    Succeeded,
    /// See [`RunState::RollingBack`].
    RollingBack {
        /// The method.
        #[serde(with = "method_serde")]
        method: RollbackMethod,
        /// Why.
        reason: String,
    },
    /// See [`RunState::RolledBack`].
    RolledBack {
        /// The method.
        #[serde(with = "method_serde")]
        method: RollbackMethod,
        /// Why.
        reason: String,
    },
    /// See [`RunState::Halted`].
    Halted {
        /// Why.
        reason: String,
    },
    /// See [`RunState::Cancelled`].
    Cancelled {
        /// Why.
        reason: String,
    },
    /// See [`RunState::Rejected`].
    Rejected {
        /// Why.
        reason: String,
    },
}

impl From<RunState> for StoredState {
    fn from(state: RunState) -> StoredState {
        match state {
            RunState::Queued => StoredState::Queued,
            RunState::Gated { gates } => StoredState::Gated {
                waiting_for: gates.iter().map(Gate::sentence).collect(),
                gates,
            },
            RunState::Locked => StoredState::Locked,
            RunState::Snapshotted => StoredState::Snapshotted,
            RunState::Applying {
                index,
                total,
                migration,
            } => StoredState::Applying {
                index,
                total,
                migration,
            },
            RunState::Verifying => StoredState::Verifying,
            RunState::Succeeded => StoredState::Succeeded,
            RunState::RollingBack { method, reason } => StoredState::RollingBack { method, reason },
            RunState::RolledBack { method, reason } => StoredState::RolledBack { method, reason },
            RunState::Halted { reason } => StoredState::Halted { reason },
            RunState::Cancelled { reason } => StoredState::Cancelled { reason },
            RunState::Rejected { reason } => StoredState::Rejected { reason },
        }
    }
}

impl From<StoredState> for RunState {
    fn from(state: StoredState) -> RunState {
        match state {
            StoredState::Queued => RunState::Queued,
            // A record from before format 4 has only the sentences; the migration passes
            // through here once to type them.
            StoredState::Gated { waiting_for, gates } if gates.is_empty() => RunState::Gated {
                gates: waiting_for.iter().map(|s| Gate::from_sentence(s)).collect(),
            },
            StoredState::Gated { gates, .. } => RunState::Gated { gates },
            StoredState::Locked => RunState::Locked,
            StoredState::Snapshotted => RunState::Snapshotted,
            StoredState::Applying {
                index,
                total,
                migration,
            } => RunState::Applying {
                index,
                total,
                migration,
            },
            StoredState::Verifying => RunState::Verifying,
            StoredState::Succeeded => RunState::Succeeded,
            StoredState::RollingBack { method, reason } => RunState::RollingBack { method, reason },
            StoredState::RolledBack { method, reason } => RunState::RolledBack { method, reason },
            StoredState::Halted { reason } => RunState::Halted { reason },
            StoredState::Cancelled { reason } => RunState::Cancelled { reason },
            StoredState::Rejected { reason } => RunState::Rejected { reason },
        }
    }
}

impl RunState {
    /// Whether the run is gated and one of its gates is of `kind`.
    pub fn waits_for(&self, kind: GateKind) -> bool {
        matches!(self, RunState::Gated { gates } if gates.iter().any(|g| g.kind == kind))
    }

    /// The state's name as stored and shown (`queued`, `applying`, …).
    pub fn name(&self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Gated { .. } => "gated",
            RunState::Locked => "locked",
            RunState::Snapshotted => "snapshotted",
            RunState::Applying { .. } => "applying",
            RunState::Verifying => "verifying",
            RunState::Succeeded => "succeeded",
            RunState::RollingBack { .. } => "rolling_back",
            RunState::RolledBack { .. } => "rolled_back",
            RunState::Halted { .. } => "halted",
            RunState::Cancelled { .. } => "cancelled",
            RunState::Rejected { .. } => "rejected",
        }
    }

    /// Nothing more will happen to the run by itself or by a person.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RunState::Succeeded
                | RunState::RolledBack { .. }
                | RunState::Cancelled { .. }
                | RunState::Rejected { .. }
        )
    }

    /// The run has not touched its environment yet (it may still be cancelled or replaced).
    pub fn is_waiting(&self) -> bool {
        matches!(self, RunState::Queued | RunState::Gated { .. })
    }

    /// The run holds its environment: from `locked` until it ends, including `halted`, which
    /// keeps the environment reserved until a person resumes, rolls back or cancels it.
    pub fn holds_environment(&self) -> bool {
        !self.is_final() && !self.is_waiting()
    }

    /// One line for people: the state and its details.
    pub fn describe(&self) -> String {
        match self {
            RunState::Gated { gates } => format!(
                "gated: {}",
                gates
                    .iter()
                    .map(Gate::sentence)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            RunState::Applying {
                index,
                total,
                migration,
            } => format!("applying {index}/{total}: {migration}"),
            RunState::RollingBack { method, reason } => {
                format!("rolling back ({}): {reason}", method_name(*method))
            }
            RunState::RolledBack { method, reason } => {
                format!("rolled back ({}): {reason}", method_name(*method))
            }
            RunState::Halted { reason } => format!("halted: {reason}"),
            RunState::Cancelled { reason } => format!("cancelled: {reason}"),
            RunState::Rejected { reason } => format!("rejected: {reason}"),
            other => other.name().to_string(),
        }
    }
}

/// One state change of a run, kept in order on the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// When.
    pub at: DateTime<Utc>,
    /// The new state.
    #[serde(flatten)]
    pub state: RunState,
    /// Who caused it (`sluice` for the machine itself).
    pub actor: String,
}

/// An approval given to a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// Who approved.
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
    /// What they said.
    pub comment: Option<String>,
}

/// One health measurement, recorded on the run the moment it is taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedMeasurement {
    /// The check's name.
    pub check: String,
    /// What was measured.
    #[serde(flatten)]
    pub measurement: Measurement,
}

/// One attempt to bring one environment to one release (or back from it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Unique id (a uuid); snapshot names derive from it.
    pub id: String,
    /// Promotion or rollback.
    pub kind: RunKind,
    /// The environment it changes.
    pub environment: String,
    /// The release it brings the environment to (for a rollback: the release it leaves).
    pub release: String,
    /// The release's last migration.
    pub head: Option<String>,
    /// The environment's release when the run was requested.
    pub previous_release: Option<String>,
    /// Who asked.
    pub requested_by: String,
    /// Why.
    pub reason: Option<String>,
    /// When it was requested.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Where it is now.
    pub state: RunState,
    /// Every state it went through, oldest first.
    pub transitions: Vec<Transition>,
    /// The migrations it set out to apply (known from `locked` on).
    pub plan: Vec<String>,
    /// The migrations it applied and committed.
    pub applied: Vec<String>,
    /// The snapshot taken before it changed anything.
    pub snapshot: Option<String>,
    /// Approvals given.
    pub approvals: Vec<Approval>,
    /// Every health measurement taken while verifying.
    pub measurements: Vec<RecordedMeasurement>,
    /// The health verdict.
    pub health: Option<HealthOutcome>,
    /// The error that ended or stopped it, if any.
    pub error: Option<String>,
    /// For a rollback run: the run whose changes it undoes.
    pub rolls_back: Option<String>,
    /// What asked for it besides a person at the API or CLI: a schedule slot, a Slack command,
    /// a signed webhook. Progress goes back there; a schedule slot is never fired twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// A run in a listing: where it is and why, without its transitions, measurements or events
/// (those are in the run's own view). What `GET /v1/runs`, `sluice runs` and the environment
/// views show, kept by the store for every run so a listing never reads whole runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Run id.
    pub id: String,
    /// Promotion or rollback.
    pub kind: RunKind,
    /// The environment it changes.
    #[serde(default)]
    pub environment: String,
    /// The release.
    pub release: String,
    /// The release's last migration.
    #[serde(default)]
    pub head: Option<String>,
    /// Where it is, in the same shape as the run's own `state` (`name` and its details).
    pub state: RunState,
    /// State with its details, for people.
    pub describe: String,
    /// Who asked.
    #[serde(default)]
    pub requested_by: String,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
    /// When it was requested.
    #[serde(default)]
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    #[serde(default)]
    pub updated_at: DateTime<Utc>,
    /// The error that ended or stopped it, if any.
    #[serde(default)]
    pub error: Option<String>,
    /// The health verdict, once there is one.
    #[serde(default)]
    pub health: Option<HealthOutcome>,
    /// Its number of state changes ([`Run::version`]): a client that saw this version has seen
    /// every transition up to it.
    #[serde(default)]
    pub version: usize,
    /// For a rollback run: the run whose changes it undoes.
    #[serde(default)]
    pub rolls_back: Option<String>,
    /// The snapshot taken before it changed anything.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// What asked for it besides a person at the API or CLI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

impl RunSummary {
    /// The summary of `run`.
    pub fn of(run: &Run) -> RunSummary {
        RunSummary {
            id: run.id.clone(),
            kind: run.kind,
            environment: run.environment.clone(),
            release: run.release.clone(),
            head: run.head.clone(),
            state: run.state.clone(),
            describe: run.state.describe(),
            requested_by: run.requested_by.clone(),
            reason: run.reason.clone(),
            created_at: run.created_at,
            updated_at: run.updated_at,
            error: run.error.clone(),
            health: run.health,
            version: run.version(),
            rolls_back: run.rolls_back.clone(),
            snapshot: run.snapshot.clone(),
            origin: run.origin.clone(),
        }
    }
}

/// Where a run's request came from, when not the API or the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum Origin {
    /// A policy's `schedule` fired for this slot.
    Schedule {
        /// The firing's key (environment, cron line, slot), unique per slot.
        firing: String,
        /// The scheduled instant.
        slot: DateTime<Utc>,
    },
    /// A Slack slash command; progress is posted to and edited in this channel.
    Slack {
        /// Channel id.
        channel: String,
        /// Slack user id of the requester.
        user: String,
    },
    /// The signed inbound webhook `POST /hooks/release`.
    Hook {
        /// The caller's delivery id, if it sent one.
        delivery: Option<String>,
    },
}

impl Run {
    /// A promotion of `environment` to `release`, queued and not yet stored: every way a
    /// promotion is asked for (API, CLI, Slack, schedule, hook, a plan's probe) starts here.
    pub fn promotion(
        environment: &str,
        release: &Release,
        previous_release: Option<String>,
        requested_by: &str,
        reason: Option<String>,
        origin: Option<Origin>,
    ) -> Run {
        let now = Utc::now();
        Run {
            id: uuid::Uuid::new_v4().to_string(),
            kind: RunKind::Promotion,
            environment: environment.to_string(),
            release: release.hash.clone(),
            head: release.head.clone(),
            previous_release,
            requested_by: requested_by.to_string(),
            reason,
            created_at: now,
            updated_at: now,
            state: RunState::Queued,
            transitions: Vec::new(),
            plan: Vec::new(),
            applied: Vec::new(),
            snapshot: None,
            approvals: Vec::new(),
            measurements: Vec::new(),
            health: None,
            error: None,
            rolls_back: None,
            origin,
        }
    }

    /// The run's number of state changes, used to tell API clients what they saw.
    pub fn version(&self) -> usize {
        self.transitions.len()
    }
}

/// What the daemon knows about an environment: the release it is on, since when, and by which
/// run. The target's history table stays the truth; this is the record of what sluice did.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EnvironmentState {
    /// The release it is on, if sluice brought it to one.
    pub release: Option<String>,
    /// The release's head migration.
    pub head: Option<String>,
    /// Since when (the end of the run that brought it there).
    pub since: Option<DateTime<Utc>>,
    /// That run.
    pub run_id: Option<String>,
    /// Whether that run's health checks passed.
    pub healthy: bool,
    /// Earlier releases, newest first (kept short).
    pub history: Vec<ReleaseOnEnvironment>,
}

/// An earlier release of an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseOnEnvironment {
    /// The release.
    pub release: Option<String>,
    /// Since when.
    pub since: Option<DateTime<Utc>>,
    /// The run that brought it.
    pub run_id: Option<String>,
}

/// One configuration file as the daemon last loaded it (environment files hold no secrets:
/// URLs of servers come from environment variables or files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadedFile {
    /// Path relative to the project root.
    pub path: String,
    /// SHA-256 of the contents.
    pub sha256: String,
    /// The contents.
    pub text: String,
}

/// The configuration the daemon runs with, as last loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadedConfig {
    /// When it was loaded.
    pub at: DateTime<Utc>,
    /// Who asked (`sluice` on start).
    pub by: String,
    /// The environment and policy files.
    pub files: Vec<LoadedFile>,
}
