//! Which snapshots and preserved copies retention allows deleting. Pure: the caller lists,
//! works out which copies are protected whatever the rules say, decides with [`verdicts`],
//! deletes and reports.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Snapshot;
#[cfg(test)]
use super::SnapshotKind;
use crate::config::Retention;

/// Why a copy is kept or may go, for `sluice snapshots` and `prune` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The snapshot of the last successful run: never deleted.
    KeepLastSuccess,
    /// A snapshot or preserved copy of a run that has not ended (halted runs included: a
    /// person may still roll back with it): never deleted.
    KeepUnfinishedRun,
    /// The environment's newest preserved copy: the daemon's automatic pruning leaves it for a
    /// person to look at; a person's prune applies the rules to it.
    KeepNewestPreserved,
    /// Among the newest `keep_last` of its kind.
    KeepNewest,
    /// Younger than `max_age` (or of unknown age).
    KeepYoung,
    /// No retention rule is configured: nothing is deleted.
    KeepNoRule,
    /// Retention allows deleting it.
    Prune,
}

impl Verdict {
    /// The verdict in words, for tables.
    pub fn describe(self) -> &'static str {
        match self {
            Verdict::KeepLastSuccess => "keep: last success",
            Verdict::KeepUnfinishedRun => "keep: run not finished",
            Verdict::KeepNewestPreserved => "keep: newest preserved",
            Verdict::KeepNewest => "keep: newest",
            Verdict::KeepYoung => "keep: young",
            Verdict::KeepNoRule => "keep: no rule",
            Verdict::Prune => "prune",
        }
    }
}

/// The verdict for each copy, in the order given. `protected` names copies kept whatever the
/// rules say, with the verdict saying why. Snapshots and preserved copies are counted
/// separately for `keep_last`; a copy any rule keeps is kept.
pub fn verdicts(
    copies: &[Snapshot],
    retention: &Retention,
    protected: &HashMap<String, Verdict>,
    now: DateTime<Utc>,
) -> Vec<Verdict> {
    let newest_rank = |index: usize| {
        let copy = &copies[index];
        copies
            .iter()
            .filter(|other| other.kind == copy.kind)
            .filter(|other| (other.created_at, &other.name) > (copy.created_at, &copy.name))
            .count()
    };
    (0..copies.len())
        .map(|i| {
            let copy = &copies[i];
            if let Some(why) = protected.get(&copy.name) {
                return *why;
            }
            if retention.keep_last.is_none() && retention.max_age.is_none() {
                return Verdict::KeepNoRule;
            }
            if let Some(n) = retention.keep_last {
                if newest_rank(i) < n {
                    return Verdict::KeepNewest;
                }
            }
            if let Some(max_age) = retention.max_age {
                let young = match copy.created_at {
                    None => true,
                    Some(t) => (now - t).to_std().unwrap_or(Duration::ZERO) < max_age,
                };
                if young {
                    return Verdict::KeepYoung;
                }
            }
            Verdict::Prune
        })
        .collect()
}

/// Names retention allows deleting.
pub fn prunable(
    copies: &[Snapshot],
    retention: &Retention,
    protected: &HashMap<String, Verdict>,
    now: DateTime<Utc>,
) -> Vec<String> {
    verdicts(copies, retention, protected, now)
        .into_iter()
        .zip(copies)
        .filter(|(v, _)| *v == Verdict::Prune)
        .map(|(_, c)| c.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(name: &str, kind: SnapshotKind, days_old: i64, now: DateTime<Utc>) -> Snapshot {
        Snapshot {
            name: name.into(),
            kind,
            run: None,
            created_at: Some(now - chrono::Duration::days(days_old)),
            status: String::new(),
            size_bytes: None,
        }
    }

    #[test]
    fn keep_last_counts_each_kind_and_protects_the_last_success() {
        let now = Utc::now();
        let copies = vec![
            copy("s1", SnapshotKind::Snapshot, 5, now),
            copy("s2", SnapshotKind::Snapshot, 4, now),
            copy("s3", SnapshotKind::Snapshot, 3, now),
            copy("f1", SnapshotKind::Preserved, 4, now),
            copy("f2", SnapshotKind::Preserved, 1, now),
        ];
        let retention = Retention {
            keep_last: Some(1),
            max_age: None,
        };
        let protected = HashMap::from([("s1".to_string(), Verdict::KeepLastSuccess)]);
        assert_eq!(prunable(&copies, &retention, &protected, now), ["s2", "f1"]);
        let mut copies = copies;
        copies.push(copy("f0", SnapshotKind::Preserved, 9, now));
        let protected = HashMap::from([
            ("s1".to_string(), Verdict::KeepLastSuccess),
            ("f0".to_string(), Verdict::KeepUnfinishedRun),
        ]);
        assert_eq!(
            verdicts(&copies, &retention, &protected, now),
            [
                Verdict::KeepLastSuccess,
                Verdict::Prune,
                Verdict::KeepNewest,
                Verdict::Prune,
                Verdict::KeepNewest,
                Verdict::KeepUnfinishedRun
            ]
        );
    }

    #[test]
    fn either_rule_keeps_and_no_rule_keeps_everything() {
        let now = Utc::now();
        let copies = vec![
            copy("old", SnapshotKind::Snapshot, 30, now),
            copy("mid", SnapshotKind::Snapshot, 10, now),
            copy("new", SnapshotKind::Snapshot, 1, now),
        ];
        let both = Retention {
            keep_last: Some(1),
            max_age: Some(Duration::from_secs(15 * 86400)),
        };
        let none = HashMap::new();
        assert_eq!(prunable(&copies, &both, &none, now), ["old"]);
        assert!(prunable(&copies, &Retention::default(), &none, now).is_empty());
        let mut unknown = copies.clone();
        unknown[0].created_at = None;
        let age_only = Retention {
            keep_last: None,
            max_age: Some(Duration::from_secs(5 * 86400)),
        };
        assert_eq!(prunable(&unknown, &age_only, &none, now), ["mid"]);
    }
}
