//! Reading `policies/*.toml` into the rules of the ladder, and deciding whether a deploy window
//! is open.
//!
//! A policy is the part of the configuration that says *when* and *from where* a release may
//! enter an environment: which environment feeds it, how long a release must soak there, who
//! must approve, which windows allow or deny deploys, what happens to a newer pending request,
//! and how a failed or inconclusive run is rolled back. One file per environment; file names are
//! free. Like every config file, each error names the file, the line and the key.
//!
//! Nothing here touches a database or the clock: callers pass the instant to judge, so the gates
//! can be tested at any date, including across daylight-saving changes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

use crate::config::{parse_duration, FileContext};
use crate::error::{Error, Result};
use crate::migrations::lint::Rule as LintRule;
use crate::schedule::timing::{CronSchedule, Misfire};

/// Folder, beside `sluice.toml`, holding the policy files (`*.toml`, one per environment).
pub const POLICIES_DIR: &str = "policies";

/// How far ahead [`window_verdict`] looks for the next opening; a year covers every yearly freeze.
const SEARCH_HORIZON_DAYS: i64 = 366;
/// How many window boundaries [`window_verdict`] crosses at most while looking for an opening,
/// so a pathological schedule (a deny window every minute) cannot stall the daemon.
const SEARCH_STEPS: usize = 1000;
/// How many firings a window query skips at most around a daylight-saving change, where the
/// cron crate may return a wall-clock time on the wrong side of the instant asked about.
const MAX_SKIPPED_FIRINGS: usize = 10_000;
/// How far a window query also looks beyond the instant asked about, because the cron crate
/// searches by wall-clock time and misses a firing in the repeated hour of a fall-back change
/// (e.g. 02:45 CEST when asked about 02:30 CET). Larger than any daylight-saving shift.
const DST_SLACK_HOURS: i64 = 3;

/// What a cron line may look like; shown whenever one is refused.
const CRON_FORMS: &str = "expected 5 fields `minute hour day-of-month month day-of-week` \
     (e.g. \"0 18 * * Fri\", day-of-week 0-7 or Sun-Sat, 0 and 7 = Sunday), or the cron crate's \
     6/7-field form with seconds first and an optional year (e.g. \"0 0 18 * * Fri\", \
     day-of-week 1-7 with 1 = Sunday)";

/// Every environment's policy, as read from `policies/`. Environments without a file follow
/// [`Policy::default_for`]: an entry point with no gates.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    by_env: BTreeMap<String, Policy>,
}

/// The rules one environment's deploys follow (one file in `policies/`).
///
/// Durations serialize as strings that [`crate::config`] parses back, in the largest whole unit
/// (`"30m"`, `"62h"`, `"1500ms"`, `"0s"`); see [`format_duration`].
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    /// The environment these rules govern.
    pub environment: String,
    /// The environment that feeds this one; `None` for an entry point of the ladder.
    pub from: Option<String>,
    /// Whether a release that succeeds in `from` is promoted here without anyone asking.
    pub auto_promote: bool,
    /// How long the release must have been healthy in `from` before it may come here.
    #[serde(serialize_with = "serialize_duration")]
    pub soak: Duration,
    /// How many approvals a promotion here needs, and from whom.
    pub approvals: ApprovalRule,
    /// When deploys are allowed or denied.
    pub windows: Vec<Window>,
    /// What happens to a pending request when a newer one arrives.
    pub concurrency: PendingRule,
    /// How a failed or inconclusive run is undone.
    pub rollback: RollbackPolicy,
    /// When promotions here are requested by the clock (`schedule = "<cron>"`).
    pub schedule: Option<ScheduleRule>,
    /// Which lint findings in the migrations a promotion brings stop it or need an approval.
    pub lint: LintPolicy,
    /// What drift found just before a run does to it (`drift = "off" | "warn" | "block"`).
    pub drift: DriftRule,
    /// When the daemon compares the environment with its expected schema on its own
    /// (`drift_scan = { schedule = "<cron>", timezone = "UTC" }`).
    pub drift_scan: Option<DriftScan>,
    /// The file the policy was read from; `None` for a default policy.
    pub source: Option<PathBuf>,
}

/// What lint findings do to a promotion (`lint = { block = [...], require_approval = [...] }`).
/// A finding silenced in its migration (with a reason) counts for neither.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LintPolicy {
    /// Rules whose findings keep the run gated until the migration changes or silences them.
    pub block: Vec<LintRule>,
    /// Rules whose findings make the run wait for one approval even where none is required.
    pub require_approval: Vec<LintRule>,
}

/// What a difference between the live schema and the expected one does to a run about to
/// start. With `warn` and `block` the daemon checks before every run that would change the
/// database; either way the diff goes to the event log and the notification sinks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftRule {
    /// No check before runs.
    #[default]
    Off,
    /// Record and announce the drift, then run.
    Warn,
    /// Record and announce the drift and halt the run before it changes anything.
    Block,
}

/// A periodic drift scan: at each firing the daemon compares the environment with its expected
/// schema, records the result, and announces it when it differs from the last scan's.
#[derive(Debug, Clone)]
pub struct DriftScan {
    /// The cron line and its time zone.
    pub cron: CronSchedule,
}

impl Serialize for DriftScan {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("DriftScan", 2)?;
        out.serialize_field("schedule", &self.cron.expression)?;
        out.serialize_field("timezone", self.cron.timezone.name())?;
        out.end()
    }
}

/// A cron schedule that requests a promotion at each firing, so a team can promote on a rhythm
/// ("staging to prod every weekday at 10:00"). A firing only *requests*: every gate of the
/// policy still applies.
#[derive(Debug, Clone)]
pub struct ScheduleRule {
    /// The cron line and its time zone.
    pub cron: CronSchedule,
    /// What a slot the daemon missed (it was down) does: nothing, or run once on start.
    pub misfire: Misfire,
    /// How late after its slot a firing still counts as on time; later ones are misfires.
    pub starting_deadline: Duration,
    /// What a firing does while a window denies deploys: wait as a gated run, or be dropped.
    pub on_closed_window: ClosedWindowRule,
}

/// What a scheduled firing does when a deploy window is closed at its slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClosedWindowRule {
    /// Request the promotion anyway; the run waits, gated, until the window opens.
    #[default]
    Wait,
    /// Do not request it; the event log says the slot was dropped and why.
    Drop,
}

/// How late a firing may start and still count as on time, unless the policy says otherwise.
pub const DEFAULT_STARTING_DEADLINE: Duration = Duration::from_secs(300);

impl Serialize for ScheduleRule {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("ScheduleRule", 5)?;
        out.serialize_field("cron", &self.cron.expression)?;
        out.serialize_field("timezone", self.cron.timezone.name())?;
        out.serialize_field("misfire", self.misfire.as_str())?;
        out.serialize_field(
            "starting_deadline",
            &format_duration(self.starting_deadline),
        )?;
        out.serialize_field("on_closed_window", &self.on_closed_window)?;
        out.end()
    }
}

/// Who must approve a promotion before it runs. Self-approval (the requester approving their
/// own run) never counts; that is enforced where approvals are recorded, not configurable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApprovalRule {
    /// How many distinct approvals are needed; 0 = none.
    pub required: u32,
    /// Who may approve (API token or user names); empty = anyone with the approver role.
    pub from: Vec<String>,
    /// An approval older than this no longer counts; `None` = approvals never expire.
    #[serde(serialize_with = "serialize_opt_duration")]
    pub expiry: Option<Duration>,
}

/// What a newer pending promotion request does to an older one that has not started yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PendingRule {
    /// The newer request replaces the older one: only the latest release is worth deploying.
    #[default]
    Replace,
    /// Requests wait and run in the order they arrived.
    Queue,
}

/// One way of undoing a run, tried in the order the policy lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RollbackMethod {
    /// Run the migrations' down scripts, newest first.
    Down,
    /// Restore the snapshot taken just before the run.
    Snapshot,
}

/// What to do when a run fails (a migration errors or a health check fails).
///
/// Serializes as it is written: a list of methods (`["down", "snapshot"]`) or `"halt"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureAction {
    /// Try these methods in order until one restores a healthy environment.
    Ladder(Vec<RollbackMethod>),
    /// Roll nothing back: stop and leave the environment as it is for a human.
    Halt,
}

/// What to do when health cannot be decided (a check errors or times out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InconclusiveAction {
    /// Pause the run and wait for a human to resume or roll back.
    #[default]
    Pause,
    /// Treat it as a failure and follow the rollback ladder.
    Rollback,
}

/// The `[rollback]` section: how failed and inconclusive runs are handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RollbackPolicy {
    /// What a failed run does.
    pub on_failure: FailureAction,
    /// What a run whose health is inconclusive does.
    pub on_inconclusive: InconclusiveAction,
}

/// Whether deploys may happen inside a window or may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    /// Deploys happen only inside some allow window (when the policy has any).
    Allow,
    /// No deploy happens inside a deny window; deny wins over allow.
    Deny,
}

/// A recurring stretch of time: it opens at every firing of `cron` (in `timezone`) and lasts
/// `duration` of real elapsed time, so a window crossing a daylight-saving change keeps its length.
///
/// Serializes its cron line as written, its duration as a string (`"62h"`) and its time zone's
/// IANA name.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// A name for messages; unnamed windows are described by kind, cron line and time zone.
    pub name: Option<String>,
    /// Allow or deny.
    pub kind: WindowKind,
    /// The cron line as written in the file (see [`parse_cron`] for its forms).
    pub cron: String,
    /// How long each occurrence lasts.
    #[serde(serialize_with = "serialize_duration")]
    pub duration: Duration,
    /// The time zone the cron line is read in.
    #[serde(serialize_with = "serialize_tz")]
    pub timezone: Tz,
    #[serde(skip)]
    schedule: cron::Schedule,
}

/// Whether deploys may happen at an instant, and if not, why and until when.
///
/// Serializes as `{"state": "open"}` or
/// `{"state": "closed", "reason": "…", "opens_at": "2026-11-23T07:00:00Z" | null}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum WindowVerdict {
    /// Deploys may happen now.
    Open,
    /// Deploys may not happen now.
    Closed {
        /// Which window closes it and until when, for people.
        reason: String,
        /// The earliest instant at or after the one judged when deploys may happen; `None` if
        /// none was found within a year.
        opens_at: Option<DateTime<Utc>>,
    },
}

impl Default for RollbackPolicy {
    fn default() -> Self {
        RollbackPolicy {
            on_failure: FailureAction::Ladder(vec![RollbackMethod::Snapshot]),
            on_inconclusive: InconclusiveAction::Pause,
        }
    }
}

impl fmt::Display for WindowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WindowKind::Allow => "allow",
            WindowKind::Deny => "deny",
        })
    }
}

impl fmt::Display for RollbackMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RollbackMethod::Down => "down",
            RollbackMethod::Snapshot => "snapshot",
        })
    }
}

impl Serialize for FailureAction {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            FailureAction::Ladder(methods) => methods.serialize(serializer),
            FailureAction::Halt => serializer.serialize_str("halt"),
        }
    }
}

/// Formats a duration in the largest unit that divides it (`"62h"`, `"90m"`, `"1500ms"`,
/// `"0s"`), so what the API shows reads like the file and parses back with the config parser.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let nanos = d.as_nanos();
    const UNITS: [(&str, u128); 6] = [
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    UNITS
        .iter()
        .find(|(_, size)| nanos.is_multiple_of(*size))
        .map(|(unit, size)| format!("{}{unit}", nanos / size))
        .unwrap_or_else(|| format!("{nanos}ns"))
}

fn serialize_duration<S: Serializer>(
    d: &Duration,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*d))
}

fn serialize_opt_duration<S: Serializer>(
    d: &Option<Duration>,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    match d {
        Some(d) => serializer.serialize_some(&format_duration(*d)),
        None => serializer.serialize_none(),
    }
}

fn serialize_tz<S: Serializer>(tz: &Tz, serializer: S) -> std::result::Result<S::Ok, S::Error> {
    serializer.serialize_str(tz.name())
}

/// An instant as messages show it: RFC 3339 in UTC, whole seconds unless it has a fraction.
fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

// ---------------------------------------------------------------------------------------------
// Cron lines
// ---------------------------------------------------------------------------------------------

/// Parses a cron line, so policy files can use the familiar 5-field form while the cron crate
/// (which wants seconds first and numbers Sunday as 1) does the scheduling.
///
/// - 5 fields (`minute hour day-of-month month day-of-week`, standard cron): day-of-week takes
///   0-7 (0 and 7 = Sunday) or names `Sun`..`Sat`, with lists, ranges and steps (`1-5`, `0,6`,
///   `Fri-Sun`, `*/2`). The line is translated to the crate's form: seconds `0` prepended and the
///   days rewritten as an explicit list in the crate's numbering (Sunday = 1).
/// - 6 or 7 fields (seconds first, optional year) and the `@daily`-style shorthands are passed
///   to the crate as they are, so their day-of-week numbers follow the crate (1 = Sunday).
///
/// Unlike classic cron, the crate requires both day-of-month and day-of-week to match when both
/// are restricted. The error says what was expected.
pub fn parse_cron(text: &str) -> std::result::Result<cron::Schedule, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let expression = match fields.as_slice() {
        [minute, hour, dom, month, dow] => {
            let dow = translate_day_of_week(dow).map_err(|message| {
                format!("`{text}`: day-of-week `{dow}`: {message}; {CRON_FORMS}")
            })?;
            format!("0 {minute} {hour} {dom} {month} {dow}")
        }
        [_, _, _, _, _, _] | [_, _, _, _, _, _, _] => fields.join(" "),
        [shorthand] if shorthand.starts_with('@') => shorthand.to_string(),
        [] => return Err(format!("the cron line is empty; {CRON_FORMS}")),
        _ => {
            return Err(format!(
                "`{text}` has {} fields; {CRON_FORMS}",
                fields.len()
            ))
        }
    };
    cron::Schedule::from_str(&expression)
        .map_err(|e| format!("`{text}` is not a valid cron line ({e}); {CRON_FORMS}"))
}

/// Rewrites a standard day-of-week field (0-7, Sunday = 0 or 7) as a list in the crate's
/// numbering (1-7, Sunday = 1). Ranges and steps are expanded first, because the two numberings
/// do not map range to range (`5-7`, Friday to Sunday, becomes `1,6,7`).
fn translate_day_of_week(field: &str) -> std::result::Result<String, String> {
    if field == "*" || field == "?" {
        return Ok(field.to_string());
    }
    let mut days = BTreeSet::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("step `{step}` is not a positive number"))?;
                (range, Some(step))
            }
            None => (item, None),
        };
        let (first, last) = if range == "*" {
            (0, 6)
        } else if let Some((a, b)) = range.split_once('-') {
            let first = day_number(a, false)?;
            let last = day_number(b, true)?;
            if first > last {
                return Err(format!(
                    "range `{range}` runs backwards; write it from the earlier day (Sunday is 0 or 7)"
                ));
            }
            (first, last)
        } else {
            let day = day_number(range, false)?;
            (day, if step.is_some() { 7 } else { day })
        };
        let step = step.unwrap_or(1) as usize;
        for day in (first..=last).step_by(step) {
            days.insert(day % 7);
        }
    }
    Ok(days
        .iter()
        .map(|d| (d + 1).to_string())
        .collect::<Vec<_>>()
        .join(","))
}

/// A standard day-of-week number (0-7) from a number or a name; Sunday as the end of a range is
/// 7, so `Fri-Sun` reads as Friday to Sunday.
fn day_number(token: &str, range_end: bool) -> std::result::Result<u32, String> {
    if let Ok(n) = token.parse::<u32>() {
        return if n <= 7 {
            Ok(n)
        } else {
            Err(format!("`{token}` is not a day of the week (0-7)"))
        };
    }
    const NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    const FULL: [&str; 7] = [
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
    ];
    let lower = token.to_ascii_lowercase();
    let index = NAMES
        .iter()
        .position(|n| *n == lower)
        .or_else(|| FULL.iter().position(|n| *n == lower))
        .ok_or_else(|| format!("`{token}` is not a day of the week (0-7 or Sun-Sat)"))?;
    Ok(match index {
        0 if range_end => 7,
        i => i as u32,
    })
}

// ---------------------------------------------------------------------------------------------
// Windows
// ---------------------------------------------------------------------------------------------

impl Window {
    /// Builds a window from its parts, so code and tests can make windows without a file; the
    /// error is the message a policy file would show for the same values.
    pub fn new(
        name: Option<String>,
        kind: WindowKind,
        cron: &str,
        duration: Duration,
        timezone: Tz,
    ) -> std::result::Result<Window, String> {
        if duration.is_zero() {
            return Err("must be longer than 0s: a window that lasts no time never holds".into());
        }
        chrono::Duration::from_std(duration)
            .map_err(|_| format!("`{}` is too long", format_duration(duration)))?;
        let schedule = parse_cron(cron)?;
        Ok(Window {
            name,
            kind,
            cron: cron.to_string(),
            duration,
            timezone,
            schedule,
        })
    }

    /// How messages name the window: its name, or e.g. "deny window `0 18 * * Fri`
    /// (Europe/Berlin)" when it has none.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!(
                "{} window `{}` ({})",
                self.kind,
                self.cron,
                self.timezone.name()
            ),
        }
    }

    /// The window with its kind, for sentences: "deny window `weekend freeze`".
    fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("{} window `{name}`", self.kind),
            None => self.label(),
        }
    }

    fn length(&self) -> chrono::Duration {
        // `new` and the parser refuse durations chrono cannot hold.
        chrono::Duration::from_std(self.duration).unwrap_or(chrono::Duration::MAX)
    }

    /// Whether `at` falls inside an occurrence of the window; `Some(end)` of the occurrence
    /// covering it (the latest firing `f <= at` with `at < f + duration`), else `None`.
    ///
    /// Around daylight-saving changes the crate's rules apply: a firing whose wall-clock time
    /// does not exist that day (spring forward) is skipped, and one in the repeated hour (fall
    /// back) fires in both passes.
    pub fn contains(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let latest = self.latest_firing(at)?;
        let end = latest.checked_add_signed(self.length())?;
        (at < end).then_some(end)
    }

    /// The latest firing at or before `at`. Iterating backwards finds it in one query however
    /// often the window fires. The crate compares wall-clock times, so near a fall-back change
    /// it may hand out a firing after `at` (skipped) or miss one in the repeated hour; a second
    /// search from a few hours later catches those, and the later of the two answers wins.
    fn latest_firing(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let search = |from: DateTime<Utc>| {
            self.schedule
                .after(&from.with_timezone(&self.timezone))
                .rev()
                .take(MAX_SKIPPED_FIRINGS)
                .map(|f| f.with_timezone(&Utc))
                .find(|f| *f <= at)
        };
        let just_after = at + chrono::Duration::nanoseconds(1);
        let near = search(just_after);
        let far = search(just_after + chrono::Duration::hours(DST_SLACK_HOURS));
        near.max(far)
    }

    /// The first time the window opens strictly after `after`, so callers can say when the next
    /// freeze starts or when the next allow window opens; `None` if the schedule never fires again.
    pub fn next_start(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // As in `latest_firing`: a second search from a few hours earlier catches the repeated
        // hour of a fall-back change, which a wall-clock search from `after` skips.
        let search = |from: DateTime<Utc>| {
            self.schedule
                .after(&from.with_timezone(&self.timezone))
                .take(MAX_SKIPPED_FIRINGS)
                .map(|f| f.with_timezone(&Utc))
                .find(|f| *f > after)
        };
        let near = search(after);
        let far = search(after - chrono::Duration::hours(DST_SLACK_HOURS));
        match (near, far) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Decides whether deploys may happen at `at`. A deny window wins over an allow window; when
/// allow windows exist, `at` must be inside one. When closed, the reason names the window and
/// until when, and `opens_at` is the earliest instant at or after `at` when the verdict becomes
/// open, following chained and overlapping windows for up to a year (or 1000 boundaries).
pub fn window_verdict(windows: &[Window], at: DateTime<Utc>) -> WindowVerdict {
    let denies: Vec<&Window> = windows
        .iter()
        .filter(|w| w.kind == WindowKind::Deny)
        .collect();
    let allows: Vec<&Window> = windows
        .iter()
        .filter(|w| w.kind == WindowKind::Allow)
        .collect();
    let covering_deny = denies
        .iter()
        .filter_map(|w| w.contains(at).map(|end| (*w, end)))
        .max_by_key(|(_, end)| *end);
    let in_allow = allows.is_empty() || allows.iter().any(|w| w.contains(at).is_some());
    if covering_deny.is_none() && in_allow {
        return WindowVerdict::Open;
    }
    let opens_at = next_opening(&denies, &allows, at);
    let (mut reason, until) = match covering_deny {
        Some((window, end)) => (
            format!("inside {} until {}", window.describe(), stamp(end)),
            Some(end),
        ),
        None => {
            let next = allows
                .iter()
                .filter_map(|w| w.next_start(at).map(|start| (*w, start)))
                .min_by_key(|(_, start)| *start);
            match next {
                Some((window, start)) => (
                    format!(
                        "outside every allow window; the next opens at {} ({})",
                        stamp(start),
                        window.describe()
                    ),
                    Some(start),
                ),
                None => (
                    "outside every allow window; none of them opens again".to_string(),
                    None,
                ),
            }
        }
    };
    match opens_at {
        Some(open) if Some(open) != until => {
            reason.push_str(&format!("; deploys open again at {}", stamp(open)));
        }
        Some(_) => {}
        None if until.is_some() => reason.push_str(&format!(
            "; no opening found within {SEARCH_HORIZON_DAYS} days or {SEARCH_STEPS} window boundaries"
        )),
        None => {}
    }
    WindowVerdict::Closed { reason, opens_at }
}

/// The earliest instant at or after `at` outside every deny window and, when there are allow
/// windows, inside one; bounded by a year and a number of steps.
fn next_opening(
    denies: &[&Window],
    allows: &[&Window],
    at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let horizon = at.checked_add_signed(chrono::Duration::days(SEARCH_HORIZON_DAYS))?;
    let mut t = at;
    for _ in 0..SEARCH_STEPS {
        if t > horizon {
            return None;
        }
        if let Some(end) = denies.iter().filter_map(|w| w.contains(t)).max() {
            t = end;
            continue;
        }
        if !allows.is_empty() && !allows.iter().any(|w| w.contains(t).is_some()) {
            t = allows.iter().filter_map(|w| w.next_start(t)).min()?;
            continue;
        }
        return Some(t);
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    environment: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    auto_promote: Option<Spanned<bool>>,
    soak: Option<Spanned<String>>,
    approvals: Option<RawApprovals>,
    windows: Option<Vec<RawWindow>>,
    concurrency: Option<RawConcurrency>,
    rollback: Option<RawRollback>,
    schedule: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    misfire: Option<Spanned<String>>,
    starting_deadline: Option<Spanned<String>>,
    on_closed_window: Option<Spanned<String>>,
    lint: Option<RawLint>,
    drift: Option<Spanned<String>>,
    drift_scan: Option<RawDriftScan>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDriftScan {
    schedule: Spanned<String>,
    timezone: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLint {
    block: Option<Spanned<Vec<Spanned<String>>>>,
    require_approval: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    required: Option<Spanned<i64>>,
    from: Option<Spanned<Vec<Spanned<String>>>>,
    expiry: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    name: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    cron: Option<Spanned<String>>,
    duration: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
}

impl RawWindow {
    /// Where the table's first key sits, to point at a table missing a required key.
    fn first_offset(&self) -> Option<usize> {
        [
            self.name.as_ref().map(|v| v.span().start),
            self.kind.as_ref().map(|v| v.span().start),
            self.cron.as_ref().map(|v| v.span().start),
            self.duration.as_ref().map(|v| v.span().start),
            self.timezone.as_ref().map(|v| v.span().start),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConcurrency {
    pending: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollback {
    on_failure: Option<Spanned<toml::Value>>,
    on_inconclusive: Option<Spanned<String>>,
}

/// Where the keys that cross-file checks complain about sit in their file.
#[derive(Debug, Clone, Copy, Default)]
struct KeyLines {
    environment: Option<usize>,
    from: Option<usize>,
}

/// "dev, prod, staging", or a hint when no environment exists at all.
fn known_list(environments: &[String]) -> String {
    if environments.is_empty() {
        return "none are defined (add a file under environments/)".into();
    }
    let mut names: Vec<&str> = environments.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.join(", ")
}

fn missing(ctx: &FileContext<'_>, key: &str, line: Option<usize>, message: &str) -> Error {
    Error::Config(match line {
        Some(line) => format!("{}:{line}: key `{key}`: {message}", ctx.path.display()),
        None => format!("{}: key `{key}`: {message}", ctx.path.display()),
    })
}

/// The line of the `index`-th (1-based) `[[windows]]` header, for a table with no keys.
fn window_header_line(text: &str, index: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start();
            l.starts_with("[[") && l[2..].trim_start().starts_with("windows")
        })
        .nth(index.checked_sub(1)?)
        .map(|(n, _)| n + 1)
}

fn parse_policy(path: &Path, text: &str, environments: &[String]) -> Result<(Policy, KeyLines)> {
    let ctx = FileContext { path, text };
    let raw: RawPolicy = toml::from_str(text).map_err(|e| ctx.parse_error(e))?;
    let known = |key: &str, value: &Spanned<String>| -> Result<String> {
        let name = value.get_ref().trim();
        if environments.iter().any(|e| e == name) {
            Ok(name.to_string())
        } else {
            Err(ctx.at(
                key,
                value,
                format!(
                    "`{name}` is not a known environment; known: {}",
                    known_list(environments)
                ),
            ))
        }
    };
    let Some(env_value) = &raw.environment else {
        return Err(missing(
            &ctx,
            "environment",
            None,
            &format!(
                "missing; name the environment this file governs, one of: {}",
                known_list(environments)
            ),
        ));
    };
    let environment = known("environment", env_value)?;
    let mut lines = KeyLines {
        environment: Some(ctx.line_of(env_value.span().start)),
        from: None,
    };
    let from = match &raw.from {
        Some(value) => {
            let from = known("from", value)?;
            if from == environment {
                return Err(ctx.at(
                    "from",
                    value,
                    format!("`{from}` cannot feed itself; name the environment before it on the ladder, or leave `from` out for an entry point"),
                ));
            }
            lines.from = Some(ctx.line_of(value.span().start));
            Some(from)
        }
        None => None,
    };
    let auto_promote = match &raw.auto_promote {
        Some(value) if *value.get_ref() && from.is_none() => {
            return Err(ctx.at(
                "auto_promote",
                value,
                "needs `from`: promotions are requested automatically when the environment that feeds this one succeeds",
            ))
        }
        Some(value) => *value.get_ref(),
        None => false,
    };
    let soak = match &raw.soak {
        Some(value) if from.is_none() => {
            return Err(ctx.at(
                "soak",
                value,
                "needs `from`: soak is how long a release must have been healthy in the environment that feeds this one",
            ))
        }
        _ => ctx.duration("soak", &raw.soak)?.unwrap_or(Duration::ZERO),
    };
    let schedule = parse_schedule(&ctx, &raw)?;
    let lint = match &raw.lint {
        Some(raw) => LintPolicy {
            block: parse_lint_rules(&ctx, "lint.block", &raw.block)?,
            require_approval: parse_lint_rules(
                &ctx,
                "lint.require_approval",
                &raw.require_approval,
            )?,
        },
        None => LintPolicy::default(),
    };
    let drift = match &raw.drift {
        Some(value) => match value.get_ref().trim() {
            "off" => DriftRule::Off,
            "warn" => DriftRule::Warn,
            "block" => DriftRule::Block,
            other => {
                return Err(ctx.at(
                    "drift",
                    value,
                    format!(
                        "`{other}` is not a drift rule; expected \"off\", \"warn\" or \"block\""
                    ),
                ))
            }
        },
        None => DriftRule::Off,
    };
    let drift_scan = match &raw.drift_scan {
        Some(scan) => {
            let timezone = match &scan.timezone {
                Some(value) => parse_timezone(&ctx, "drift_scan.timezone", value)?,
                None => Tz::UTC,
            };
            let cron = CronSchedule::new(scan.schedule.get_ref().trim(), timezone)
                .map_err(|message| ctx.at("drift_scan.schedule", &scan.schedule, message))?;
            Some(DriftScan { cron })
        }
        None => None,
    };
    let approvals = match raw.approvals {
        Some(raw) => parse_approvals(&ctx, raw)?,
        None => ApprovalRule::default(),
    };
    let windows = raw
        .windows
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, w)| parse_window(&ctx, i + 1, w))
        .collect::<Result<Vec<_>>>()?;
    let concurrency = match raw.concurrency.and_then(|c| c.pending) {
        Some(value) => match value.get_ref().as_str() {
            "replace" => PendingRule::Replace,
            "queue" => PendingRule::Queue,
            other => {
                return Err(ctx.at(
                    "concurrency.pending",
                    &value,
                    format!("`{other}` is not a pending rule; expected \"replace\" or \"queue\""),
                ))
            }
        },
        None => PendingRule::default(),
    };
    let rollback = match raw.rollback {
        Some(raw) => parse_rollback(&ctx, raw)?,
        None => RollbackPolicy::default(),
    };
    let policy = Policy {
        environment,
        from,
        auto_promote,
        soak,
        approvals,
        windows,
        concurrency,
        rollback,
        schedule,
        lint,
        drift,
        drift_scan,
        source: Some(path.to_path_buf()),
    };
    Ok((policy, lines))
}

fn parse_lint_rules(
    ctx: &FileContext<'_>,
    key: &str,
    value: &Option<Spanned<Vec<Spanned<String>>>>,
) -> Result<Vec<LintRule>> {
    let Some(list) = value else {
        return Ok(Vec::new());
    };
    list.get_ref()
        .iter()
        .map(|id| {
            LintRule::from_id(id.get_ref().trim()).ok_or_else(|| {
                ctx.at(
                    key,
                    id,
                    format!(
                        "`{}` is not a lint rule; known: {}",
                        id.get_ref(),
                        LintRule::ALL.map(|r| r.id()).join(", ")
                    ),
                )
            })
        })
        .collect()
}

fn parse_timezone(ctx: &FileContext<'_>, key: &str, value: &Spanned<String>) -> Result<Tz> {
    Tz::from_str(value.get_ref().trim()).map_err(|_| {
        ctx.at(
            key,
            value,
            format!(
                "`{}` is not a known time zone; use an IANA name such as \"Europe/Berlin\", \"America/New_York\" or \"UTC\"",
                value.get_ref()
            ),
        )
    })
}

/// The top-level `schedule` and the keys that only make sense with it.
fn parse_schedule(ctx: &FileContext<'_>, raw: &RawPolicy) -> Result<Option<ScheduleRule>> {
    let Some(cron_value) = &raw.schedule else {
        let stray = [
            ("timezone", &raw.timezone),
            ("misfire", &raw.misfire),
            ("starting_deadline", &raw.starting_deadline),
            ("on_closed_window", &raw.on_closed_window),
        ];
        if let Some((key, Some(value))) = stray.into_iter().find(|(_, v)| v.is_some()) {
            return Err(ctx.at(
                key,
                value,
                "needs `schedule`: it says how scheduled promotions behave (windows take their own `timezone` inside `[[windows]]`)",
            ));
        }
        return Ok(None);
    };
    let timezone = match &raw.timezone {
        Some(value) => parse_timezone(ctx, "timezone", value)?,
        None => Tz::UTC,
    };
    let cron = CronSchedule::new(cron_value.get_ref().trim(), timezone)
        .map_err(|message| ctx.at("schedule", cron_value, message))?;
    let misfire = match &raw.misfire {
        Some(value) => {
            Misfire::parse(value.get_ref().trim()).map_err(|m| ctx.at("misfire", value, m))?
        }
        None => Misfire::Skip,
    };
    let starting_deadline = ctx
        .duration("starting_deadline", &raw.starting_deadline)?
        .unwrap_or(DEFAULT_STARTING_DEADLINE);
    if let (true, Some(value)) = (starting_deadline.is_zero(), &raw.starting_deadline) {
        return Err(ctx.at(
            "starting_deadline",
            value,
            "must be more than 0s: a firing is seen a tick after its slot at the earliest",
        ));
    }
    let on_closed_window = match &raw.on_closed_window {
        Some(value) => match value.get_ref().trim() {
            "wait" => ClosedWindowRule::Wait,
            "drop" => ClosedWindowRule::Drop,
            other => {
                return Err(ctx.at(
                    "on_closed_window",
                    value,
                    format!("`{other}` is not a rule; expected \"wait\" or \"drop\""),
                ))
            }
        },
        None => ClosedWindowRule::default(),
    };
    Ok(Some(ScheduleRule {
        cron,
        misfire,
        starting_deadline,
        on_closed_window,
    }))
}

fn parse_approvals(ctx: &FileContext<'_>, raw: RawApprovals) -> Result<ApprovalRule> {
    let required = match &raw.required {
        Some(value) => {
            let n = *value.get_ref();
            if n < 0 {
                return Err(ctx.at("approvals.required", value, "must be 0 or more"));
            }
            u32::try_from(n).map_err(|_| {
                ctx.at(
                    "approvals.required",
                    value,
                    format!("must be at most {}", u32::MAX),
                )
            })?
        }
        None => 0,
    };
    let mut from: Vec<String> = Vec::new();
    for name in raw.from.iter().flat_map(|list| list.get_ref()) {
        let trimmed = name.get_ref().trim();
        if trimmed.is_empty() {
            return Err(ctx.at("approvals.from", name, "names must not be empty"));
        }
        if from.iter().any(|n| n == trimmed) {
            return Err(ctx.at(
                "approvals.from",
                name,
                format!("`{trimmed}` is listed twice"),
            ));
        }
        from.push(trimmed.to_string());
    }
    if let Some(value) = &raw.required {
        if !from.is_empty() && required as usize > from.len() {
            return Err(ctx.at(
                "approvals.required",
                value,
                format!(
                    "{required} distinct approvals can never be given: `approvals.from` lists only {} ({}); lower `required` or add approvers",
                    from.len(),
                    from.join(", ")
                ),
            ));
        }
    }
    let expiry = ctx.duration("approvals.expiry", &raw.expiry)?;
    if let (Some(d), Some(value)) = (expiry, &raw.expiry) {
        if d.is_zero() {
            return Err(ctx.at(
                "approvals.expiry",
                value,
                "must be longer than 0s: an approval that expires at once never counts; leave `expiry` out for approvals that never expire",
            ));
        }
    }
    Ok(ApprovalRule {
        required,
        from,
        expiry,
    })
}

fn parse_window(ctx: &FileContext<'_>, index: usize, raw: &RawWindow) -> Result<Window> {
    let key = |k: &str| format!("windows[{index}].{k}");
    let table_line = raw
        .first_offset()
        .map(|o| ctx.line_of(o))
        .or_else(|| window_header_line(ctx.text, index));
    let name = match &raw.name {
        Some(value) if value.get_ref().trim().is_empty() => {
            return Err(ctx.at(
                &key("name"),
                value,
                "must not be empty; leave `name` out for an unnamed window",
            ))
        }
        Some(value) => Some(value.get_ref().trim().to_string()),
        None => None,
    };
    let Some(kind_value) = &raw.kind else {
        return Err(missing(
            ctx,
            &key("kind"),
            table_line,
            "missing; write kind = \"allow\" or kind = \"deny\"",
        ));
    };
    let kind = match kind_value.get_ref().as_str() {
        "allow" => WindowKind::Allow,
        "deny" => WindowKind::Deny,
        other => {
            return Err(ctx.at(
                &key("kind"),
                kind_value,
                format!("`{other}` is not a window kind; expected \"allow\" or \"deny\""),
            ))
        }
    };
    let Some(cron_value) = &raw.cron else {
        return Err(missing(
            ctx,
            &key("cron"),
            table_line,
            &format!("missing; say when each window opens: {CRON_FORMS}"),
        ));
    };
    let cron_text = cron_value.get_ref().trim();
    let schedule =
        parse_cron(cron_text).map_err(|message| ctx.at(&key("cron"), cron_value, message))?;
    let Some(duration_value) = &raw.duration else {
        return Err(missing(
            ctx,
            &key("duration"),
            table_line,
            "missing; say how long each window lasts, e.g. duration = \"2h\"",
        ));
    };
    let duration = parse_duration(duration_value.get_ref())
        .map_err(|message| ctx.at(&key("duration"), duration_value, message))?;
    if duration.is_zero() {
        return Err(ctx.at(
            &key("duration"),
            duration_value,
            "must be longer than 0s: a window that lasts no time never holds",
        ));
    }
    if chrono::Duration::from_std(duration).is_err() {
        return Err(ctx.at(&key("duration"), duration_value, "is too long"));
    }
    let timezone = match &raw.timezone {
        Some(value) => parse_timezone(ctx, &key("timezone"), value)?,
        None => Tz::UTC,
    };
    Ok(Window {
        name,
        kind,
        cron: cron_text.to_string(),
        duration,
        timezone,
        schedule,
    })
}

fn parse_rollback(ctx: &FileContext<'_>, raw: RawRollback) -> Result<RollbackPolicy> {
    const FORMS: &str = "expected an ordered list of methods such as [\"down\", \"snapshot\"] (methods: \"down\", \"snapshot\") or the string \"halt\"";
    let on_failure = match &raw.on_failure {
        None => RollbackPolicy::default().on_failure,
        Some(value) => match value.get_ref() {
            toml::Value::String(s) if s == "halt" => FailureAction::Halt,
            toml::Value::String(s) => {
                return Err(ctx.at(
                    "rollback.on_failure",
                    value,
                    format!("`{s}` is not an action; {FORMS}"),
                ))
            }
            toml::Value::Array(items) => {
                if items.is_empty() {
                    return Err(ctx.at(
                        "rollback.on_failure",
                        value,
                        format!("the list is empty; {FORMS}"),
                    ));
                }
                let mut methods = Vec::with_capacity(items.len());
                for item in items {
                    let method = match item.as_str() {
                        Some("down") => RollbackMethod::Down,
                        Some("snapshot") => RollbackMethod::Snapshot,
                        Some(other) => {
                            return Err(ctx.at(
                                "rollback.on_failure",
                                value,
                                format!("`{other}` is not a rollback method; {FORMS}"),
                            ))
                        }
                        None => {
                            return Err(ctx.at(
                                "rollback.on_failure",
                                value,
                                format!("`{item}` is not a string; {FORMS}"),
                            ))
                        }
                    };
                    if methods.contains(&method) {
                        return Err(ctx.at(
                            "rollback.on_failure",
                            value,
                            format!("`{method}` is listed twice; each method is tried once"),
                        ));
                    }
                    methods.push(method);
                }
                FailureAction::Ladder(methods)
            }
            other => {
                return Err(ctx.at(
                    "rollback.on_failure",
                    value,
                    format!("`{other}` is not an action; {FORMS}"),
                ))
            }
        },
    };
    let on_inconclusive = match &raw.on_inconclusive {
        None => InconclusiveAction::default(),
        Some(value) => match value.get_ref().as_str() {
            "pause" => InconclusiveAction::Pause,
            "rollback" if on_failure == FailureAction::Halt => {
                return Err(ctx.at(
                    "rollback.on_inconclusive",
                    value,
                    "\"rollback\" needs a rollback ladder, but `rollback.on_failure` is \"halt\"; use \"pause\" or list methods in `on_failure`",
                ))
            }
            "rollback" => InconclusiveAction::Rollback,
            other => {
                return Err(ctx.at(
                    "rollback.on_inconclusive",
                    value,
                    format!("`{other}` is not an action; expected \"pause\" or \"rollback\""),
                ))
            }
        },
    };
    Ok(RollbackPolicy {
        on_failure,
        on_inconclusive,
    })
}

// ---------------------------------------------------------------------------------------------
// The set of policies
// ---------------------------------------------------------------------------------------------

impl ApprovalRule {
    /// Whether `approver` is on the list of who may approve (anyone, when the list is empty).
    /// The approver role and the no-self-approval rule are checked by the caller.
    pub fn may_approve(&self, approver: &str) -> bool {
        self.from.is_empty() || self.from.iter().any(|name| name == approver)
    }
}

impl Policy {
    /// The policy of an environment without a file: an entry point with no gates, newer pending
    /// requests replacing older ones, rollback by snapshot and a pause when health is unclear.
    pub fn default_for(env: &str) -> Policy {
        Policy {
            environment: env.to_string(),
            from: None,
            auto_promote: false,
            soak: Duration::ZERO,
            approvals: ApprovalRule::default(),
            windows: Vec::new(),
            concurrency: PendingRule::default(),
            rollback: RollbackPolicy::default(),
            schedule: None,
            lint: LintPolicy::default(),
            drift: DriftRule::Off,
            drift_scan: None,
            source: None,
        }
    }
}

impl Policies {
    /// Reads every `*.toml` in `dir`, sorted by file name (a missing dir = no policies), and
    /// checks them together: one file per environment and no cycle in `from`. `environments`
    /// are the known environment names. Any bad file fails the whole set, so a half-read ladder
    /// never runs.
    pub fn load(dir: &Path, environments: &[String]) -> Result<Policies> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Policies::default()),
            Err(e) => return Err(Error::io(dir, e)),
        };
        let mut paths = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            if path.extension().and_then(|e| e.to_str()) == Some("toml") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        let mut parsed = Vec::with_capacity(paths.len());
        for path in paths {
            let text = crate::config::read_text(&path)?;
            parsed.push(parse_policy(&path, &text, environments)?);
        }
        Policies::assemble(parsed)
    }

    /// Parses one policy file's text; `path` is used for messages and as the policy's source.
    /// Checks that need the other files (duplicates, cycles) are left to [`Policies::load`].
    pub fn parse_file(path: &Path, text: &str, environments: &[String]) -> Result<Policy> {
        parse_policy(path, text, environments).map(|(policy, _)| policy)
    }

    /// Builds the set from policies made in code (tests, embedding), with the same cross-file
    /// checks as [`Policies::load`].
    pub fn from_policies(policies: impl IntoIterator<Item = Policy>) -> Result<Policies> {
        Policies::assemble(
            policies
                .into_iter()
                .map(|p| (p, KeyLines::default()))
                .collect(),
        )
    }

    fn assemble(parsed: Vec<(Policy, KeyLines)>) -> Result<Policies> {
        let origin = |policy: &Policy| match &policy.source {
            Some(path) => path.display().to_string(),
            None => format!("the policy of `{}`", policy.environment),
        };
        let at_line = |policy: &Policy, line: Option<usize>, key: &str, message: String| {
            Error::Config(match line {
                Some(line) => format!("{}:{line}: key `{key}`: {message}", origin(policy)),
                None => format!("{}: key `{key}`: {message}", origin(policy)),
            })
        };
        let mut by_env: BTreeMap<String, Policy> = BTreeMap::new();
        let mut lines: BTreeMap<String, KeyLines> = BTreeMap::new();
        for (policy, key_lines) in parsed {
            if let Some(first) = by_env.get(&policy.environment) {
                return Err(at_line(
                    &policy,
                    key_lines.environment,
                    "environment",
                    format!(
                        "`{}` already has a policy in {}; keep one file per environment",
                        policy.environment,
                        origin(first)
                    ),
                ));
            }
            lines.insert(policy.environment.clone(), key_lines);
            by_env.insert(policy.environment.clone(), policy);
        }
        for (env, policy) in &by_env {
            if policy.from.as_deref() == Some(env.as_str()) {
                return Err(at_line(
                    policy,
                    lines.get(env).and_then(|l| l.from),
                    "from",
                    format!("`{env}` cannot feed itself"),
                ));
            }
        }
        // Walk `from` upstream from each environment; coming back to one already on the path
        // is a cycle. Reported in the direction releases flow, from the first name in it.
        for start in by_env.keys() {
            let mut path: Vec<&str> = vec![start.as_str()];
            let mut current = start.as_str();
            while let Some(upstream) = by_env.get(current).and_then(|p| p.from.as_deref()) {
                if let Some(i) = path.iter().position(|e| *e == upstream) {
                    let mut cycle: Vec<&str> = path[i..].iter().rev().copied().collect();
                    let first = cycle
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, e)| **e)
                        .map(|(i, _)| i)
                        .unwrap_or(0);
                    cycle.rotate_left(first);
                    let head = cycle[0];
                    let mut shown: Vec<&str> = cycle.clone();
                    shown.push(head);
                    // Blame `head`'s file: its `from` closes the loop.
                    let blamed = by_env
                        .get(head)
                        .map(|p| (p, lines.get(head).and_then(|l| l.from)));
                    let message = format!(
                        "the ladder has a cycle: {}; every ladder needs an entry point without `from`",
                        shown.join(" → ")
                    );
                    return Err(match blamed {
                        Some((policy, line)) => at_line(policy, line, "from", message),
                        None => Error::Config(message),
                    });
                }
                path.push(upstream);
                current = upstream;
            }
        }
        Ok(Policies { by_env })
    }

    /// The policy read for `env`, if its file exists.
    pub fn get(&self, env: &str) -> Option<&Policy> {
        self.by_env.get(env)
    }

    /// The policy that applies to `env`: its file's, or [`Policy::default_for`] without one.
    pub fn for_env(&self, env: &str) -> Policy {
        self.get(env)
            .cloned()
            .unwrap_or_else(|| Policy::default_for(env))
    }

    /// The policies fed by `env` (whose `from` is `env`), sorted by environment, so a success
    /// in `env` knows where to promote next.
    pub fn downstream(&self, env: &str) -> Vec<&Policy> {
        self.by_env
            .values()
            .filter(|p| p.from.as_deref() == Some(env))
            .collect()
    }

    /// The ladder from its entry point down to `env`, following `from` (e.g. `["dev",
    /// "staging", "prod"]` for `prod`); just `[env]` for an entry point.
    pub fn chain_to(&self, env: &str) -> Vec<String> {
        let mut chain = vec![env.to_string()];
        let mut current = env;
        while let Some(upstream) = self.get(current).and_then(|p| p.from.as_deref()) {
            if chain.iter().any(|e| e == upstream) {
                break; // `load` refuses cycles; never loop on one anyway.
            }
            chain.push(upstream.to_string());
            current = upstream;
        }
        chain.reverse();
        chain
    }

    /// Every policy read, sorted by environment.
    pub fn iter(&self) -> impl Iterator<Item = &Policy> {
        self.by_env.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"# policies/prod.toml
environment = "prod"
from = "staging"
auto_promote = true
soak = "30m"

[approvals]
required = 1
from = ["alice", "bob"]
expiry = "24h"

[[windows]]
name = "weekend freeze"
kind = "deny"
cron = "0 18 * * Fri"
duration = "62h"
timezone = "Europe/Berlin"

[concurrency]
pending = "queue"

[rollback]
on_failure = ["down", "snapshot"]
on_inconclusive = "rollback"
"#;

    fn envs() -> Vec<String> {
        vec!["dev".into(), "staging".into(), "prod".into()]
    }

    fn parse(text: &str) -> Result<Policy> {
        Policies::parse_file(Path::new("policies/prod.toml"), text, &envs())
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(p) => panic!("expected an error, got {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().expect("a test instant")
    }

    fn window(kind: WindowKind, cron: &str, duration: &str, tz: Tz) -> Window {
        Window::new(
            None,
            kind,
            cron,
            parse_duration(duration).expect("a test duration"),
            tz,
        )
        .expect("a test window")
    }

    fn named(name: &str, kind: WindowKind, cron: &str, duration: &str, tz: Tz) -> Window {
        Window {
            name: Some(name.into()),
            ..window(kind, cron, duration, tz)
        }
    }

    fn closed(verdict: WindowVerdict) -> (String, Option<DateTime<Utc>>) {
        match verdict {
            WindowVerdict::Closed { reason, opens_at } => (reason, opens_at),
            WindowVerdict::Open => panic!("expected a closed verdict"),
        }
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write a test policy");
    }

    // --- parsing -------------------------------------------------------------------------

    #[test]
    fn the_full_example_parses() {
        let p = parse(EXAMPLE).unwrap();
        assert_eq!(p.environment, "prod");
        assert_eq!(p.from.as_deref(), Some("staging"));
        assert!(p.auto_promote);
        assert_eq!(p.soak, Duration::from_secs(30 * 60));
        assert_eq!(
            p.approvals,
            ApprovalRule {
                required: 1,
                from: vec!["alice".into(), "bob".into()],
                expiry: Some(Duration::from_secs(24 * 3600)),
            }
        );
        assert_eq!(p.windows.len(), 1);
        let w = &p.windows[0];
        assert_eq!(w.name.as_deref(), Some("weekend freeze"));
        assert_eq!(w.kind, WindowKind::Deny);
        assert_eq!(w.cron, "0 18 * * Fri");
        assert_eq!(w.duration, Duration::from_secs(62 * 3600));
        assert_eq!(w.timezone, Tz::Europe__Berlin);
        assert_eq!(p.concurrency, PendingRule::Queue);
        assert_eq!(
            p.rollback,
            RollbackPolicy {
                on_failure: FailureAction::Ladder(vec![
                    RollbackMethod::Down,
                    RollbackMethod::Snapshot
                ]),
                on_inconclusive: InconclusiveAction::Rollback,
            }
        );
        assert_eq!(p.source.as_deref(), Some(Path::new("policies/prod.toml")));
    }

    #[test]
    fn policies_serialize_as_they_are_written() {
        let json = serde_json::to_value(parse(EXAMPLE).unwrap()).unwrap();
        assert_eq!(json["soak"], "30m");
        assert_eq!(json["approvals"]["expiry"], "24h");
        assert_eq!(json["windows"][0]["cron"], "0 18 * * Fri");
        assert_eq!(json["windows"][0]["duration"], "62h");
        assert_eq!(json["windows"][0]["timezone"], "Europe/Berlin");
        assert_eq!(json["windows"][0]["kind"], "deny");
        assert_eq!(json["concurrency"], "queue");
        assert_eq!(
            json["rollback"]["on_failure"],
            serde_json::json!(["down", "snapshot"])
        );
        assert_eq!(json["rollback"]["on_inconclusive"], "rollback");
        let halt = parse("environment = \"prod\"\n[rollback]\non_failure = \"halt\"\n").unwrap();
        let json = serde_json::to_value(&halt).unwrap();
        assert_eq!(json["rollback"]["on_failure"], "halt");
        assert_eq!(json["approvals"]["expiry"], serde_json::Value::Null);
        assert_eq!(json["soak"], "0s");
    }

    #[test]
    fn a_minimal_file_means_the_defaults() {
        let p = parse("environment = \"dev\"\n").unwrap();
        let d = Policy::default_for("dev");
        assert_eq!(p.environment, d.environment);
        assert_eq!(p.from, None);
        assert!(!p.auto_promote);
        assert_eq!(p.soak, Duration::ZERO);
        assert_eq!(p.approvals, ApprovalRule::default());
        assert!(p.windows.is_empty());
        assert_eq!(p.concurrency, PendingRule::Replace);
        assert_eq!(p.rollback, d.rollback);
        assert_eq!(
            d.rollback.on_failure,
            FailureAction::Ladder(vec![RollbackMethod::Snapshot])
        );
        assert_eq!(d.rollback.on_inconclusive, InconclusiveAction::Pause);
        assert_eq!(d.source, None);
    }

    #[test]
    fn toml_errors_name_file_line_and_key() {
        let e = err("environment = \"prod\"\nfrom = \n");
        assert!(e.starts_with("policies/prod.toml:2"), "{e}");
        let e = err("environment = \"prod\"\ncolour = \"red\"\n");
        assert!(
            e.starts_with("policies/prod.toml:2: key `colour`") && e.contains("unknown field"),
            "{e}"
        );
        let e = err("environment = \"prod\"\n[approvals]\nrequird = 1\n");
        assert!(
            e.starts_with("policies/prod.toml:3: key `requird`") && e.contains("unknown field"),
            "{e}"
        );
        let e = err("environment = \"prod\"\nfrom = \"staging\"\nauto_promote = \"yes\"\n");
        assert!(
            e.starts_with("policies/prod.toml:3: key `auto_promote`"),
            "{e}"
        );
        let e = err("environment = \"prod\"\n[approvals]\nrequired = \"one\"\n");
        assert!(e.starts_with("policies/prod.toml:3: key `required`"), "{e}");
    }

    #[test]
    fn environment_and_from_must_be_known() {
        let e = err("from = \"dev\"\n");
        assert!(
            e.starts_with("policies/prod.toml: key `environment`: missing")
                && e.contains("dev, prod, staging"),
            "{e}"
        );
        let e = err("\nenvironment = \"qa\"\n");
        assert_eq!(
            e,
            "policies/prod.toml:2: key `environment`: `qa` is not a known environment; known: dev, prod, staging"
        );
        let e = err("environment = \"prod\"\nfrom = \"stagin\"\n");
        assert!(
            e.starts_with("policies/prod.toml:2: key `from`: `stagin` is not a known environment; known: dev, prod, staging"),
            "{e}"
        );
        let e = err("environment = \"prod\"\n\nfrom = \"prod\"\n");
        assert!(
            e.starts_with("policies/prod.toml:3: key `from`: `prod` cannot feed itself"),
            "{e}"
        );
    }

    #[test]
    fn soak_and_auto_promote_need_from() {
        let e = err("environment = \"dev\"\nsoak = \"1m\"\n");
        assert!(
            e.starts_with("policies/prod.toml:2: key `soak`: needs `from`"),
            "{e}"
        );
        let e = err("environment = \"dev\"\nauto_promote = true\n");
        assert!(
            e.starts_with("policies/prod.toml:2: key `auto_promote`: needs `from`"),
            "{e}"
        );
        assert!(
            !parse("environment = \"dev\"\nauto_promote = false\n")
                .unwrap()
                .auto_promote
        );
    }

    #[test]
    fn bad_durations_use_the_config_message() {
        let e = err("environment = \"prod\"\nfrom = \"staging\"\nsoak = \"soon\"\n");
        assert!(
            e.starts_with("policies/prod.toml:3: key `soak`: `soon` is not a duration")
                && e.contains("\"10s\""),
            "{e}"
        );
        let e = err("environment = \"prod\"\n[approvals]\nexpiry = \"1 fortnight\"\n");
        assert!(
            e.starts_with(
                "policies/prod.toml:3: key `approvals.expiry`: `1 fortnight` is not a duration"
            ),
            "{e}"
        );
        let e = err("environment = \"prod\"\n[approvals]\nexpiry = \"0s\"\n");
        assert!(
            e.starts_with("policies/prod.toml:3: key `approvals.expiry`: must be longer than 0s"),
            "{e}"
        );
    }

    #[test]
    fn window_errors_name_the_window() {
        let head = "environment = \"prod\"\n[[windows]]\nkind = \"deny\"\n";
        let e = err(&format!("{head}cron = \"0 18 * Fri\"\nduration = \"1h\"\n"));
        assert!(
            e.starts_with("policies/prod.toml:4: key `windows[1].cron`: `0 18 * Fri` has 4 fields; expected 5 fields"),
            "{e}"
        );
        assert!(e.contains("6/7-field"), "{e}");
        let e = err(&format!(
            "{head}cron = \"0 25 * * Fri\"\nduration = \"1h\"\n"
        ));
        assert!(
            e.starts_with("policies/prod.toml:4: key `windows[1].cron`: `0 25 * * Fri` is not a valid cron line"),
            "{e}"
        );
        let e = err(&format!(
            "{head}cron = \"0 18 * * Fri\"\nduration = \"1h\"\ntimezone = \"Europe/Berlim\"\n"
        ));
        assert!(
            e.starts_with("policies/prod.toml:6: key `windows[1].timezone`: `Europe/Berlim` is not a known time zone"),
            "{e}"
        );
        let e = err(&format!(
            "{head}cron = \"0 18 * * Fri\"\nduration = \"0s\"\n"
        ));
        assert!(
            e.starts_with(
                "policies/prod.toml:5: key `windows[1].duration`: must be longer than 0s"
            ),
            "{e}"
        );
        let e = err(&format!(
            "{head}cron = \"0 18 * * Fri\"\nduration = \"long\"\n"
        ));
        assert!(
            e.starts_with(
                "policies/prod.toml:5: key `windows[1].duration`: `long` is not a duration"
            ),
            "{e}"
        );
        let e = err("environment = \"prod\"\n[[windows]]\nkind = \"allow\"\ncron = \"0 9 * * *\"\nduration = \"8h\"\n[[windows]]\nkind = \"block\"\ncron = \"0 9 * * *\"\nduration = \"8h\"\n");
        assert!(
            e.starts_with("policies/prod.toml:7: key `windows[2].kind`: `block` is not a window kind; expected \"allow\" or \"deny\""),
            "{e}"
        );
        let e =
            err("environment = \"prod\"\n[[windows]]\ncron = \"0 9 * * *\"\nduration = \"8h\"\n");
        assert!(
            e.starts_with("policies/prod.toml:3: key `windows[1].kind`: missing"),
            "{e}"
        );
        let e = err("environment = \"prod\"\n\n[[windows]]\n");
        assert!(
            e.starts_with("policies/prod.toml:3: key `windows[1].kind`: missing"),
            "{e}"
        );
        let e = err(&format!("{head}duration = \"1h\"\n"));
        assert!(
            e.starts_with("policies/prod.toml:3: key `windows[1].cron`: missing"),
            "{e}"
        );
    }

    #[test]
    fn approvals_must_be_possible() {
        let e =
            err("environment = \"prod\"\n[approvals]\nrequired = 3\nfrom = [\"alice\", \"bob\"]\n");
        assert!(
            e.starts_with("policies/prod.toml:3: key `approvals.required`: 3 distinct approvals can never be given")
                && e.contains("alice, bob"),
            "{e}"
        );
        let e = err("environment = \"prod\"\n[approvals]\nrequired = -1\n");
        assert!(
            e.starts_with("policies/prod.toml:3: key `approvals.required`: must be 0 or more"),
            "{e}"
        );
        let e = err("environment = \"prod\"\n[approvals]\nfrom = [\"alice\",\n  \"alice\"]\n");
        assert!(
            e.starts_with("policies/prod.toml:4: key `approvals.from`: `alice` is listed twice"),
            "{e}"
        );
        // Without a list, any number of approvers with the role may approve.
        let p = parse("environment = \"prod\"\n[approvals]\nrequired = 5\n").unwrap();
        assert_eq!(p.approvals.required, 5);
        assert!(p.approvals.may_approve("anyone"));
        let p = parse(
            "environment = \"prod\"\n[approvals]\nrequired = 2\nfrom = [\"alice\", \"bob\"]\n",
        )
        .unwrap();
        assert!(p.approvals.may_approve("alice"));
        assert!(!p.approvals.may_approve("mallory"));
    }

    #[test]
    fn rollback_errors() {
        let head = "environment = \"prod\"\n[rollback]\n";
        let e = err(&format!("{head}on_failure = []\n"));
        assert!(
            e.starts_with("policies/prod.toml:3: key `rollback.on_failure`: the list is empty"),
            "{e}"
        );
        let e = err(&format!("{head}on_failure = [\"down\", \"revert\"]\n"));
        assert!(
            e.starts_with("policies/prod.toml:3: key `rollback.on_failure`: `revert` is not a rollback method"),
            "{e}"
        );
        let e = err(&format!(
            "{head}on_failure = [\"snapshot\", \"snapshot\"]\n"
        ));
        assert!(
            e.starts_with(
                "policies/prod.toml:3: key `rollback.on_failure`: `snapshot` is listed twice"
            ),
            "{e}"
        );
        let e = err(&format!("{head}on_failure = \"snapshot\"\n"));
        assert!(
            e.starts_with(
                "policies/prod.toml:3: key `rollback.on_failure`: `snapshot` is not an action"
            ) && e.contains("\"halt\""),
            "{e}"
        );
        let e = err(&format!("{head}on_failure = 3\n"));
        assert!(
            e.starts_with("policies/prod.toml:3: key `rollback.on_failure`: `3` is not an action"),
            "{e}"
        );
        let e = err(&format!("{head}on_inconclusive = \"shrug\"\n"));
        assert!(
            e.starts_with("policies/prod.toml:3: key `rollback.on_inconclusive`: `shrug` is not an action; expected \"pause\" or \"rollback\""),
            "{e}"
        );
        let e = err(&format!(
            "{head}on_failure = \"halt\"\non_inconclusive = \"rollback\"\n"
        ));
        assert!(
            e.starts_with("policies/prod.toml:4: key `rollback.on_inconclusive`"),
            "{e}"
        );
        let e = err("environment = \"prod\"\n[concurrency]\npending = \"latest\"\n");
        assert!(
            e.starts_with(
                "policies/prod.toml:3: key `concurrency.pending`: `latest` is not a pending rule"
            ),
            "{e}"
        );
    }

    // --- the set of files ----------------------------------------------------------------

    #[test]
    fn a_missing_directory_means_no_policies() {
        let dir = tempfile::tempdir().unwrap();
        let policies = Policies::load(&dir.path().join("policies"), &envs()).unwrap();
        assert_eq!(policies.iter().count(), 0);
        let p = policies.for_env("prod");
        assert_eq!(p.from, None);
        assert_eq!(policies.chain_to("prod"), vec!["prod".to_string()]);
    }

    #[test]
    fn two_files_for_one_environment_are_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", "environment = \"prod\"\n");
        write(dir.path(), "b.toml", "# again\nenvironment = \"prod\"\n");
        let e = Policies::load(dir.path(), &envs()).unwrap_err().to_string();
        let a = dir.path().join("a.toml").display().to_string();
        let b = dir.path().join("b.toml").display().to_string();
        assert!(
            e.starts_with(&format!(
                "{b}:2: key `environment`: `prod` already has a policy in {a}"
            )),
            "{e}"
        );
    }

    #[test]
    fn a_cycle_across_files_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "dev.toml",
            "environment = \"dev\"\nfrom = \"prod\"\n",
        );
        write(
            dir.path(),
            "staging.toml",
            "environment = \"staging\"\nfrom = \"dev\"\n",
        );
        write(
            dir.path(),
            "prod.toml",
            "environment = \"prod\"\nfrom = \"staging\"\n",
        );
        let e = Policies::load(dir.path(), &envs()).unwrap_err().to_string();
        let dev = dir.path().join("dev.toml").display().to_string();
        assert!(
            e.starts_with(&format!(
                "{dev}:2: key `from`: the ladder has a cycle: dev → staging → prod → dev"
            )),
            "{e}"
        );
    }

    #[test]
    fn one_bad_file_fails_the_whole_set() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "dev.toml", "environment = \"dev\"\n");
        write(
            dir.path(),
            "prod.toml",
            "environment = \"prod\"\nfrom = \"staging\"\nsoak = \"forever\"\n",
        );
        write(dir.path(), "notes.txt", "not a policy");
        let e = Policies::load(dir.path(), &envs()).unwrap_err().to_string();
        assert!(e.contains("prod.toml:3: key `soak`"), "{e}");
    }

    #[test]
    fn the_ladder_is_followed_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "1.toml", "environment = \"dev\"\n");
        write(
            dir.path(),
            "2.toml",
            "environment = \"staging\"\nfrom = \"dev\"\n",
        );
        write(
            dir.path(),
            "3.toml",
            "environment = \"prod\"\nfrom = \"staging\"\n",
        );
        write(
            dir.path(),
            "4.toml",
            "environment = \"qa\"\nfrom = \"staging\"\n",
        );
        let mut known = envs();
        known.push("qa".into());
        let policies = Policies::load(dir.path(), &known).unwrap();
        assert_eq!(policies.chain_to("prod"), vec!["dev", "staging", "prod"]);
        assert_eq!(policies.chain_to("qa"), vec!["dev", "staging", "qa"]);
        assert_eq!(policies.chain_to("dev"), vec!["dev"]);
        let down: Vec<&str> = policies
            .downstream("staging")
            .iter()
            .map(|p| p.environment.as_str())
            .collect();
        assert_eq!(down, vec!["prod", "qa"]);
        assert_eq!(
            policies
                .downstream("dev")
                .iter()
                .map(|p| p.environment.as_str())
                .collect::<Vec<_>>(),
            vec!["staging"]
        );
        assert!(policies.downstream("prod").is_empty());
        assert_eq!(
            policies
                .iter()
                .map(|p| p.environment.as_str())
                .collect::<Vec<_>>(),
            vec!["dev", "prod", "qa", "staging"]
        );
        assert_eq!(
            policies.get("prod").and_then(|p| p.source.clone()),
            Some(dir.path().join("3.toml"))
        );
        assert!(policies.get("nowhere").is_none());
    }

    #[test]
    fn policies_made_in_code_get_the_same_checks() {
        let mut dev = Policy::default_for("dev");
        dev.from = Some("prod".into());
        let mut prod = Policy::default_for("prod");
        prod.from = Some("dev".into());
        let e = Policies::from_policies([dev, prod])
            .unwrap_err()
            .to_string();
        assert!(e.contains("dev → prod → dev"), "{e}");
        let mut staging = Policy::default_for("staging");
        staging.from = Some("dev".into());
        let set = Policies::from_policies([Policy::default_for("dev"), staging]).unwrap();
        assert_eq!(set.chain_to("staging"), vec!["dev", "staging"]);
    }

    #[test]
    fn the_shipped_policies_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(POLICIES_DIR);
        let policies = Policies::load(&dir, &envs()).unwrap();
        assert_eq!(policies.chain_to("prod"), vec!["dev", "staging", "prod"]);
        let prod = policies.for_env("prod");
        assert!(prod.auto_promote);
        assert_eq!(prod.soak, Duration::from_secs(2));
        assert_eq!(prod.approvals.required, 0);
        assert!(!prod.windows.is_empty());
        // The example freeze must not block a demo on an ordinary day.
        assert_eq!(
            window_verdict(&prod.windows, utc("2026-06-03T12:00:00Z")),
            WindowVerdict::Open
        );
        let staging = policies.for_env("staging");
        assert_eq!(
            staging.rollback.on_failure,
            FailureAction::Ladder(vec![RollbackMethod::Down, RollbackMethod::Snapshot])
        );
        assert!(staging.auto_promote);
    }

    // --- cron lines ----------------------------------------------------------------------

    #[test]
    fn standard_days_of_week_are_translated() {
        assert_eq!(translate_day_of_week("1-5").unwrap(), "2,3,4,5,6");
        assert_eq!(translate_day_of_week("0,6").unwrap(), "1,7");
        assert_eq!(translate_day_of_week("5-7").unwrap(), "1,6,7");
        assert_eq!(translate_day_of_week("Fri-Sun").unwrap(), "1,6,7");
        assert_eq!(translate_day_of_week("mon-FRI").unwrap(), "2,3,4,5,6");
        assert_eq!(translate_day_of_week("*/2").unwrap(), "1,3,5,7");
        assert_eq!(translate_day_of_week("1-5/2").unwrap(), "2,4,6");
        assert_eq!(translate_day_of_week("7").unwrap(), "1");
        assert_eq!(translate_day_of_week("*").unwrap(), "*");
        assert!(translate_day_of_week("8").is_err());
        assert!(translate_day_of_week("5-1").is_err());
        assert!(translate_day_of_week("*/0").is_err());
        assert!(translate_day_of_week("Funday").is_err());
    }

    /// The local (weekday, hour) of the next `n` firings after `start`.
    fn firings(cron: &str, tz: Tz, start: &str, n: usize) -> Vec<(chrono::Weekday, u32)> {
        use chrono::{Datelike, Timelike};
        let schedule = parse_cron(cron).unwrap();
        schedule
            .after(&utc(start).with_timezone(&tz))
            .take(n)
            .map(|f| (f.weekday(), f.hour()))
            .collect()
    }

    #[test]
    fn five_field_lines_fire_on_the_standard_days() {
        use chrono::Weekday::*;
        // Sunday 2026-06-07, Berlin.
        assert_eq!(
            firings(
                "0 10 * * 1-5",
                Tz::Europe__Berlin,
                "2026-06-07T00:00:00Z",
                6
            ),
            vec![
                (Mon, 10),
                (Tue, 10),
                (Wed, 10),
                (Thu, 10),
                (Fri, 10),
                (Mon, 10)
            ]
        );
        for line in ["0 0 * * 0", "0 0 * * 7", "0 0 * * Sun"] {
            assert_eq!(
                firings(line, Tz::UTC, "2026-06-01T00:00:00Z", 2),
                vec![(Sun, 0), (Sun, 0)],
                "{line}"
            );
        }
        assert_eq!(
            firings("0 0 * * 5-7", Tz::UTC, "2026-06-01T00:00:00Z", 4),
            vec![(Fri, 0), (Sat, 0), (Sun, 0), (Fri, 0)]
        );
        assert_eq!(
            firings("0 0 * * 0,6", Tz::UTC, "2026-06-01T00:00:00Z", 3),
            vec![(Sat, 0), (Sun, 0), (Sat, 0)]
        );
        // Six fields go to the crate as they are: its day 2 is Monday.
        assert_eq!(
            firings("0 0 10 * * 2", Tz::UTC, "2026-06-02T00:00:00Z", 1),
            vec![(Mon, 10)]
        );
        assert!(parse_cron("@daily").is_ok());
        let e = parse_cron("0 18 * * Fri *").map(|_| ()).unwrap_err();
        assert!(e.contains("not a valid cron line"), "{e}");
        let e = parse_cron("").map(|_| ()).unwrap_err();
        assert!(
            e.contains("empty") && e.contains("expected 5 fields"),
            "{e}"
        );
        let e = parse_cron("0 18 * * 9").map(|_| ()).unwrap_err();
        assert!(e.contains("day-of-week `9`"), "{e}");
    }

    // --- windows -------------------------------------------------------------------------

    fn weekend_freeze() -> Window {
        named(
            "weekend freeze",
            WindowKind::Deny,
            "0 18 * * Fri",
            "62h",
            Tz::Europe__Berlin,
        )
    }

    #[test]
    fn a_window_covers_its_occurrences_and_nothing_else() {
        let w = weekend_freeze();
        // Friday 18:00 Berlin (CET) = 17:00 UTC; 62 hours later is Monday 07:00 UTC.
        assert_eq!(w.contains(utc("2026-11-20T16:59:59Z")), None);
        assert_eq!(
            w.contains(utc("2026-11-20T17:00:00Z")),
            Some(utc("2026-11-23T07:00:00Z"))
        );
        assert_eq!(
            w.contains(utc("2026-11-23T06:59:59.5Z")),
            Some(utc("2026-11-23T07:00:00Z"))
        );
        assert_eq!(w.contains(utc("2026-11-23T07:00:00Z")), None);
        assert_eq!(
            w.next_start(utc("2026-11-23T07:00:00Z")),
            Some(utc("2026-11-27T17:00:00Z"))
        );
        assert_eq!(w.label(), "weekend freeze");
        let unnamed = window(WindowKind::Deny, "0 18 * * Fri", "62h", Tz::Europe__Berlin);
        assert_eq!(
            unnamed.label(),
            "deny window `0 18 * * Fri` (Europe/Berlin)"
        );
    }

    #[test]
    fn overlapping_occurrences_end_at_the_latest() {
        // Every hour, lasting 90 minutes: at 10:45 both the 9:00 and 10:00 firings cover.
        let w = window(WindowKind::Deny, "0 * * * *", "90m", Tz::UTC);
        assert_eq!(
            w.contains(utc("2026-06-01T10:45:00Z")),
            Some(utc("2026-06-01T11:30:00Z"))
        );
    }

    #[test]
    fn a_deny_window_closes() {
        let windows = [weekend_freeze()];
        assert_eq!(
            window_verdict(&windows, utc("2026-11-20T16:00:00Z")),
            WindowVerdict::Open
        );
        let (reason, opens_at) = closed(window_verdict(&windows, utc("2026-11-21T12:00:00Z")));
        assert_eq!(
            reason,
            "inside deny window `weekend freeze` until 2026-11-23T07:00:00Z"
        );
        assert_eq!(opens_at, Some(utc("2026-11-23T07:00:00Z")));
        assert_eq!(
            window_verdict(&windows, utc("2026-11-23T07:00:00Z")),
            WindowVerdict::Open
        );
        let unnamed = [window(
            WindowKind::Deny,
            "0 18 * * Fri",
            "62h",
            Tz::Europe__Berlin,
        )];
        let (reason, _) = closed(window_verdict(&unnamed, utc("2026-11-21T12:00:00Z")));
        assert_eq!(
            reason,
            "inside deny window `0 18 * * Fri` (Europe/Berlin) until 2026-11-23T07:00:00Z"
        );
    }

    #[test]
    fn allow_windows_must_hold() {
        let hours = [named(
            "office hours",
            WindowKind::Allow,
            "0 9 * * Mon-Fri",
            "8h",
            Tz::Europe__Berlin,
        )];
        // Monday 10:00 UTC = 11:00 CET: inside.
        assert_eq!(
            window_verdict(&hours, utc("2026-11-23T10:00:00Z")),
            WindowVerdict::Open
        );
        // Saturday: the next opening is Monday 09:00 CET = 08:00 UTC.
        let (reason, opens_at) = closed(window_verdict(&hours, utc("2026-11-21T12:00:00Z")));
        assert_eq!(
            reason,
            "outside every allow window; the next opens at 2026-11-23T08:00:00Z (allow window `office hours`)"
        );
        assert_eq!(opens_at, Some(utc("2026-11-23T08:00:00Z")));
        // Monday 16:00 UTC = 17:00 CET: just closed.
        let (_, opens_at) = closed(window_verdict(&hours, utc("2026-11-23T16:00:00Z")));
        assert_eq!(opens_at, Some(utc("2026-11-24T08:00:00Z")));
    }

    #[test]
    fn deny_wins_over_allow() {
        let windows = [
            window(WindowKind::Allow, "0 0 * * *", "24h", Tz::UTC),
            weekend_freeze(),
        ];
        assert_eq!(
            window_verdict(&windows, utc("2026-11-20T12:00:00Z")),
            WindowVerdict::Open
        );
        let (reason, opens_at) = closed(window_verdict(&windows, utc("2026-11-22T12:00:00Z")));
        assert!(
            reason.starts_with("inside deny window `weekend freeze`"),
            "{reason}"
        );
        assert_eq!(opens_at, Some(utc("2026-11-23T07:00:00Z")));
    }

    #[test]
    fn opens_at_follows_chained_windows() {
        // The freeze ends Monday 07:00 UTC, but a Monday maintenance freeze runs 07:00-09:00
        // UTC and overlaps a third one from 08:30 to 10:00.
        let windows = [
            weekend_freeze(),
            named(
                "maintenance",
                WindowKind::Deny,
                "0 7 * * Mon",
                "2h",
                Tz::UTC,
            ),
            window(WindowKind::Deny, "30 8 * * Mon", "90m", Tz::UTC),
        ];
        let (reason, opens_at) = closed(window_verdict(&windows, utc("2026-11-21T12:00:00Z")));
        assert_eq!(opens_at, Some(utc("2026-11-23T10:00:00Z")));
        assert_eq!(
            reason,
            "inside deny window `weekend freeze` until 2026-11-23T07:00:00Z; deploys open again at 2026-11-23T10:00:00Z"
        );
        // An allow window that opens inside a freeze opens for deploys when the freeze ends.
        let windows = [
            weekend_freeze(),
            window(WindowKind::Allow, "0 6 * * Mon", "4h", Tz::UTC),
        ];
        let (reason, opens_at) = closed(window_verdict(&windows, utc("2026-11-21T12:00:00Z")));
        assert_eq!(opens_at, Some(utc("2026-11-23T07:00:00Z")));
        assert!(reason.starts_with("inside deny window"), "{reason}");
        // Allow windows never open outside a freeze: the next one after it.
        let windows = [
            weekend_freeze(),
            window(WindowKind::Allow, "0 3 * * *", "1h", Tz::UTC),
        ];
        let (reason, opens_at) = closed(window_verdict(&windows, utc("2026-11-21T12:00:00Z")));
        assert_eq!(opens_at, Some(utc("2026-11-24T03:00:00Z")));
        assert!(
            reason.ends_with("; deploys open again at 2026-11-24T03:00:00Z"),
            "{reason}"
        );
    }

    #[test]
    fn a_window_that_never_ends_gives_no_opening() {
        let windows = [window(WindowKind::Deny, "* * * * *", "1h", Tz::UTC)];
        let (reason, opens_at) = closed(window_verdict(&windows, utc("2026-06-01T00:00:00Z")));
        assert_eq!(opens_at, None);
        assert!(
            reason.contains("no opening found within 366 days"),
            "{reason}"
        );
        assert!(
            reason.starts_with("inside deny window `* * * * *` (UTC) until 2026-06-01T01:00:00Z"),
            "{reason}"
        );
    }

    #[test]
    fn windows_across_the_spring_change_in_berlin() {
        // 2026-03-29 02:00 CET jumps to 03:00 CEST. A freeze from Saturday 22:00 CET
        // (21:00 UTC) lasts 12 real hours: until 09:00 UTC, which is 11:00 CEST.
        let freeze = [window(
            WindowKind::Deny,
            "0 22 * * Sat",
            "12h",
            Tz::Europe__Berlin,
        )];
        let (reason, opens_at) = closed(window_verdict(&freeze, utc("2026-03-29T08:59:00Z")));
        assert_eq!(opens_at, Some(utc("2026-03-29T09:00:00Z")));
        assert!(reason.ends_with("until 2026-03-29T09:00:00Z"), "{reason}");
        assert_eq!(
            window_verdict(&freeze, utc("2026-03-29T09:00:00Z")),
            WindowVerdict::Open
        );
        // Office hours from 09:00 local: 08:00 UTC before the change, 07:00 UTC after.
        let hours = [window(
            WindowKind::Allow,
            "0 9 * * *",
            "8h",
            Tz::Europe__Berlin,
        )];
        assert_eq!(
            window_verdict(&hours, utc("2026-03-30T07:30:00Z")),
            WindowVerdict::Open
        );
        let (_, opens_at) = closed(window_verdict(&hours, utc("2026-03-27T07:30:00Z")));
        assert_eq!(opens_at, Some(utc("2026-03-27T08:00:00Z")));
        // From Saturday evening the next opening is Sunday 09:00 CEST = 07:00 UTC.
        let (_, opens_at) = closed(window_verdict(&hours, utc("2026-03-28T20:00:00Z")));
        assert_eq!(opens_at, Some(utc("2026-03-29T07:00:00Z")));
        // 02:30 does not exist on 2026-03-29: that day's occurrence is skipped.
        let gap = window(WindowKind::Deny, "30 2 * * *", "10m", Tz::Europe__Berlin);
        assert_eq!(gap.contains(utc("2026-03-29T00:35:00Z")), None);
        assert_eq!(gap.contains(utc("2026-03-29T01:35:00Z")), None);
        assert_eq!(
            gap.contains(utc("2026-03-30T00:35:00Z")),
            Some(utc("2026-03-30T00:40:00Z"))
        );
    }

    #[test]
    fn windows_across_the_autumn_change_in_berlin() {
        // 2026-10-25 03:00 CEST falls back to 02:00 CET. A freeze from Saturday 22:00 CEST
        // (20:00 UTC) lasts 12 real hours: until 08:00 UTC, which is 09:00 CET.
        let freeze = [window(
            WindowKind::Deny,
            "0 22 * * Sat",
            "12h",
            Tz::Europe__Berlin,
        )];
        let (_, opens_at) = closed(window_verdict(&freeze, utc("2026-10-25T07:59:00Z")));
        assert_eq!(opens_at, Some(utc("2026-10-25T08:00:00Z")));
        assert_eq!(
            window_verdict(&freeze, utc("2026-10-25T08:00:00Z")),
            WindowVerdict::Open
        );
        assert_eq!(
            window_verdict(&freeze, utc("2026-10-24T19:59:00Z")),
            WindowVerdict::Open
        );
        // 02:30 happens twice that night (00:30 and 01:30 UTC); the crate fires in both passes.
        let twice = window(WindowKind::Deny, "30 2 * * *", "10m", Tz::Europe__Berlin);
        assert_eq!(
            twice.contains(utc("2026-10-25T00:35:00Z")),
            Some(utc("2026-10-25T00:40:00Z"))
        );
        assert_eq!(twice.contains(utc("2026-10-25T01:00:00Z")), None);
        assert_eq!(
            twice.contains(utc("2026-10-25T01:35:00Z")),
            Some(utc("2026-10-25T01:40:00Z"))
        );
        assert_eq!(
            twice.next_start(utc("2026-10-25T00:35:00Z")),
            Some(utc("2026-10-25T01:30:00Z"))
        );
        // Asked at 02:30 CET (01:30 UTC), the 02:45 CEST firing (00:45 UTC), an hour earlier
        // in real time though later on the wall clock, still covers it.
        let hour = window(WindowKind::Deny, "45 2 * * *", "1h", Tz::Europe__Berlin);
        assert_eq!(
            hour.contains(utc("2026-10-25T01:30:00Z")),
            Some(utc("2026-10-25T01:45:00Z"))
        );
    }

    #[test]
    fn verdicts_serialize_with_a_state() {
        let open = serde_json::to_value(WindowVerdict::Open).unwrap();
        assert_eq!(open, serde_json::json!({"state": "open"}));
        let closed = serde_json::to_value(window_verdict(
            &[weekend_freeze()],
            utc("2026-11-21T12:00:00Z"),
        ))
        .unwrap();
        assert_eq!(closed["state"], "closed");
        assert_eq!(closed["opens_at"], "2026-11-23T07:00:00Z");
    }

    #[test]
    fn durations_format_in_their_largest_whole_unit() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(62 * 3600), "62h"),
            (Duration::from_secs(90 * 60), "90m"),
            (Duration::from_secs(2), "2s"),
            (Duration::from_millis(1500), "1500ms"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text).unwrap(), d);
        }
    }

    #[test]
    fn a_schedule_parses_with_its_rules_and_stray_keys_are_refused() {
        let envs = ["dev".to_string(), "prod".to_string()];
        let parse = |text: &str| Policies::parse_file(Path::new("policies/prod.toml"), text, &envs);
        let policy = parse(
            "environment = \"prod\"\nschedule = \"0 10 * * Mon-Fri\"\ntimezone = \"Europe/Berlin\"\n\
             misfire = \"run_once\"\nstarting_deadline = \"15m\"\non_closed_window = \"drop\"\n",
        )
        .unwrap();
        let rule = policy.schedule.expect("schedule");
        assert_eq!(rule.cron.timezone, chrono_tz::Europe::Berlin);
        assert_eq!(rule.misfire, Misfire::RunOnce);
        assert_eq!(rule.starting_deadline, Duration::from_secs(900));
        assert_eq!(rule.on_closed_window, ClosedWindowRule::Drop);
        let default = parse("environment = \"prod\"\nschedule = \"@daily\"\n").unwrap();
        let rule = default.schedule.expect("schedule");
        assert_eq!(
            (rule.misfire, rule.starting_deadline),
            (Misfire::Skip, DEFAULT_STARTING_DEADLINE)
        );
        for (text, needle) in [
            (
                "environment = \"prod\"\ntimezone = \"UTC\"\n",
                "prod.toml:2: key `timezone`: needs `schedule`",
            ),
            (
                "environment = \"prod\"\nschedule = \"0 10 * * *\"\nmisfire = \"later\"\n",
                ":3: key `misfire`",
            ),
            (
                "environment = \"prod\"\nschedule = \"0 10 * * *\"\ntimezone = \"Mars/Olympus\"\n",
                ":3: key `timezone`",
            ),
            (
                "environment = \"prod\"\nschedule = \"0 10 * *\"\n",
                ":2: key `schedule`",
            ),
            (
                "environment = \"prod\"\nschedule = \"0 10 * * *\"\nstarting_deadline = \"0s\"\n",
                ":3: key `starting_deadline`",
            ),
            (
                "environment = \"prod\"\nschedule = \"0 10 * * *\"\non_closed_window = \"skip\"\n",
                ":3: key `on_closed_window`",
            ),
            (
                "environment = \"prod\"\nlint = { block = [\"drop-everything\"] }\n",
                ":2: key `lint.block`: `drop-everything` is not a lint rule",
            ),
        ] {
            let message = parse(text).unwrap_err().to_string();
            assert!(message.contains(needle), "{text:?}: {message}");
        }
    }

    #[test]
    fn drift_rules_and_scans_parse_and_bad_ones_name_their_key() {
        let envs = ["prod".to_string()];
        let parse = |text: &str| Policies::parse_file(Path::new("policies/prod.toml"), text, &envs);
        let default = parse("environment = \"prod\"\n").unwrap();
        assert_eq!(default.drift, DriftRule::Off);
        assert!(default.drift_scan.is_none());
        let policy = parse(
            "environment = \"prod\"\ndrift = \"block\"\n\
             drift_scan = { schedule = \"0 * * * *\", timezone = \"Europe/Berlin\" }\n",
        )
        .unwrap();
        assert_eq!(policy.drift, DriftRule::Block);
        let scan = policy.drift_scan.expect("scan");
        assert_eq!(scan.cron.timezone, chrono_tz::Europe::Berlin);
        assert_eq!(scan.cron.expression, "0 * * * *");
        for (text, needle) in [
            (
                "environment = \"prod\"\ndrift = \"loud\"\n",
                "prod.toml:2: key `drift`: `loud` is not a drift rule",
            ),
            (
                "environment = \"prod\"\ndrift_scan = { schedule = \"0 * *\" }\n",
                ":2: key `drift_scan.schedule`",
            ),
            (
                "environment = \"prod\"\ndrift_scan = { schedule = \"@hourly\", timezone = \"Nowhere\" }\n",
                ":2: key `drift_scan.timezone`",
            ),
        ] {
            let message = parse(text).unwrap_err().to_string();
            assert!(message.contains(needle), "{text:?}: {message}");
        }
    }
}
