//! Which snapshots and preserved copies retention allows deleting. Pure: the caller lists,
//! decides with [`prunable`], deletes and reports.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Snapshot;
#[cfg(test)]
use super::SnapshotKind;
use crate::config::Retention;

/// Why a copy is kept or may go, for `sluice snapshots` and `prune` output.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The snapshot of the last successful run: never deleted.
    KeepLastSuccess,
    /// Among the newest `keep_last` of its kind.
    KeepNewest,
    /// Younger than `max_age` (or of unknown age).
    KeepYoung,
    /// No retention rule is configured: nothing is deleted.
    KeepNoRule,
    /// Retention allows deleting it.
    Prune,
}

/// The verdict for each copy, in the order given. Snapshots and preserved copies are counted
/// separately for `keep_last`; a copy any rule keeps is kept.
pub fn verdicts(
    copies: &[Snapshot],
    retention: &Retention,
    protected: &[String],
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
            if protected.contains(&copy.name) {
                return Verdict::KeepLastSuccess;
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
    protected: &[String],
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
        assert_eq!(
            prunable(&copies, &retention, &["s1".into()], now),
            ["s2", "f1"]
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
        assert_eq!(prunable(&copies, &both, &[], now), ["old"]);
        assert!(prunable(&copies, &Retention::default(), &[], now).is_empty());
        let mut unknown = copies.clone();
        unknown[0].created_at = None;
        let age_only = Retention {
            keep_last: None,
            max_age: Some(Duration::from_secs(5 * 86400)),
        };
        assert_eq!(prunable(&unknown, &age_only, &[], now), ["mid"]);
    }
}
