//! The run machine's table: every legal move of a run from one state to the next, and where a
//! halted run re-enters when it is resumed. It is the one place these are written; the engine
//! checks every transition against it before it stores one, so a step that tries a move the
//! table does not name fails with [`IllegalMove`] and stores nothing.
//!
//! ```text
//!  (recorded) ─► queued ─┬─► gated ◄─┐ (gates change)
//!                        │     │ └───┘
//!                        ├─────┴─► locked ─► snapshotted ─► applying ◄─┐ (next migration)
//!                        │           │            │    │       │ └─────┘
//!                        │           │            │    └───────┴─► verifying ─► succeeded
//!                        │           └────────────┴──(nothing to apply)─┘
//!  queued (a rollback) ──┴─► rolling back ◄─ snapshotted | applying | verifying | halted
//!                             │  └─► rolling back (the next rung)
//!                             └─► rolled back
//!  locked | snapshotted | applying | verifying | rolling back ─► halted ─(resume)─► see below
//!  queued | gated ─► cancelled | rejected        halted ─► cancelled
//! ```

pub use crate::error::IllegalMove;
use crate::store::{Run, RunState};

/// Whether a run may go from `from` to `to`. `first` is true for the transition that records a
/// new run (its record starts `queued`, and its first transition writes `queued` again).
pub fn allowed(from: &RunState, to: &RunState, first: bool) -> bool {
    use RunState as S;
    match (from, to) {
        (S::Queued, S::Queued) => first,
        // Gates: a waiting run is held, held differently, or let through.
        (S::Queued | S::Gated { .. }, S::Gated { .. } | S::Locked) => true,
        // A waiting run nobody wants any more.
        (S::Queued | S::Gated { .. }, S::Cancelled { .. } | S::Rejected { .. }) => true,
        // A rollback run goes straight to its first rung.
        (S::Queued, S::RollingBack { .. }) => true,
        // The forward path.
        (S::Locked, S::Snapshotted | S::Verifying) => true,
        (S::Snapshotted | S::Applying { .. }, S::Applying { .. } | S::Verifying) => true,
        (S::Verifying, S::Succeeded) => true,
        // Undoing: after a failure, a person's request on a halted run, or the next rung.
        (
            S::Snapshotted | S::Applying { .. } | S::Verifying | S::Halted { .. },
            S::RollingBack { .. },
        ) => true,
        (S::RollingBack { .. }, S::RollingBack { .. } | S::RolledBack { .. }) => true,
        // Stopping for a person.
        (
            S::Locked | S::Snapshotted | S::Applying { .. } | S::Verifying | S::RollingBack { .. },
            S::Halted { .. },
        ) => true,
        (S::Halted { .. }, S::Cancelled { .. }) => true,
        // Resuming: where [`resume_point`] says.
        (S::Halted { .. }, S::Locked | S::Snapshotted | S::Verifying) => true,
        _ => false,
    }
}

/// Checks a move of `run` to `to` against the table.
pub fn check(run: &Run, to: &RunState) -> Result<(), IllegalMove> {
    if allowed(&run.state, to, run.transitions.is_empty()) {
        Ok(())
    } else {
        Err(IllegalMove {
            run: run.id.clone(),
            from: run.state.name(),
            to: to.name(),
        })
    }
}

/// Where a halted run re-enters when a person resumes it: the step it halted in, from its
/// beginning (each step is safe to run again). A halt during a rollback resumes the rollback
/// with the same rung; during applying, the apply step (it reads what was applied back from the
/// target's history); before the snapshot was taken, the locked step.
pub fn resume_point(run: &Run) -> RunState {
    let before = run
        .transitions
        .iter()
        .rev()
        .map(|t| &t.state)
        .find(|s| !matches!(s, RunState::Halted { .. }));
    match before {
        Some(RunState::Verifying) => RunState::Verifying,
        Some(RunState::RollingBack { method, reason }) => RunState::RollingBack {
            method: *method,
            reason: reason.clone(),
        },
        Some(RunState::Applying { .. } | RunState::Snapshotted) => RunState::Snapshotted,
        _ => RunState::Locked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::RollbackMethod;
    use crate::store::records::{Gate, GateKind};
    use crate::store::{Run, RunKind, Transition};

    /// One state of every kind, with details where it has any.
    fn every_state() -> Vec<RunState> {
        let reason = || "why".to_string();
        vec![
            RunState::Queued,
            RunState::Gated {
                gates: vec![Gate::new(GateKind::Approval, "0 of 1")],
            },
            RunState::Locked,
            RunState::Snapshotted,
            RunState::Applying {
                index: 1,
                total: 2,
                migration: "m1".into(),
            },
            RunState::Verifying,
            RunState::Succeeded,
            RunState::RollingBack {
                method: RollbackMethod::Down,
                reason: reason(),
            },
            RunState::RolledBack {
                method: RollbackMethod::Snapshot,
                reason: reason(),
            },
            RunState::Halted { reason: reason() },
            RunState::Cancelled { reason: reason() },
            RunState::Rejected { reason: reason() },
        ]
    }

    fn run_in(state: RunState, transitions: Vec<RunState>) -> Run {
        let mut run = Run::promotion("dev", &test_release(), None, "alice", None, None);
        run.kind = RunKind::Promotion;
        run.state = state;
        run.transitions = transitions
            .into_iter()
            .map(|state| Transition {
                at: chrono::Utc::now(),
                state,
                actor: "sluice".into(),
            })
            .collect();
        run
    }

    fn test_release() -> crate::store::Release {
        crate::store::Release {
            hash: "abc".into(),
            head: Some("m2".into()),
            migrations: vec![],
            recorded_at: chrono::Utc::now(),
            source: "test".into(),
        }
    }

    /// Every legal move, by state name: the table drawn as a list.
    const LEGAL: &[(&str, &str)] = &[
        ("queued", "gated"),
        ("queued", "locked"),
        ("queued", "cancelled"),
        ("queued", "rejected"),
        ("queued", "rolling_back"),
        ("gated", "gated"),
        ("gated", "locked"),
        ("gated", "cancelled"),
        ("gated", "rejected"),
        ("locked", "snapshotted"),
        ("locked", "verifying"),
        ("locked", "halted"),
        ("snapshotted", "applying"),
        ("snapshotted", "verifying"),
        ("snapshotted", "rolling_back"),
        ("snapshotted", "halted"),
        ("applying", "applying"),
        ("applying", "verifying"),
        ("applying", "rolling_back"),
        ("applying", "halted"),
        ("verifying", "succeeded"),
        ("verifying", "rolling_back"),
        ("verifying", "halted"),
        ("rolling_back", "rolling_back"),
        ("rolling_back", "rolled_back"),
        ("rolling_back", "halted"),
        ("halted", "locked"),
        ("halted", "snapshotted"),
        ("halted", "verifying"),
        ("halted", "rolling_back"),
        ("halted", "cancelled"),
    ];

    #[test]
    fn the_table_allows_exactly_the_listed_moves() {
        let states = every_state();
        let mut seen = Vec::new();
        for from in &states {
            for to in &states {
                let listed = LEGAL.contains(&(from.name(), to.name()));
                assert_eq!(
                    allowed(from, to, false),
                    listed,
                    "{} → {}",
                    from.name(),
                    to.name()
                );
                if listed {
                    seen.push((from.name(), to.name()));
                }
            }
        }
        assert_eq!(seen.len(), LEGAL.len(), "a listed move names no state");
    }

    #[test]
    fn only_a_new_run_may_be_recorded_as_queued() {
        assert!(allowed(&RunState::Queued, &RunState::Queued, true));
        assert!(!allowed(&RunState::Queued, &RunState::Queued, false));
        let fresh = run_in(RunState::Queued, vec![]);
        assert!(check(&fresh, &RunState::Queued).is_ok());
        let recorded = run_in(RunState::Queued, vec![RunState::Queued]);
        assert!(check(&recorded, &RunState::Queued).is_err());
    }

    #[test]
    fn a_final_run_never_moves_and_the_refusal_names_both_states() {
        for end in every_state().into_iter().filter(RunState::is_final) {
            for to in every_state() {
                let run = run_in(end.clone(), vec![RunState::Queued, end.clone()]);
                let err = check(&run, &to).unwrap_err();
                assert_eq!((err.from, err.to), (end.name(), to.name()));
            }
        }
        let run = run_in(RunState::Succeeded, vec![RunState::Succeeded]);
        let text = check(&run, &RunState::Locked).unwrap_err().to_string();
        assert!(
            text.contains("cannot go from `succeeded` to `locked`; nothing was recorded"),
            "{text}"
        );
    }

    #[test]
    fn illegal_shortcuts_are_refused() {
        let samples = [
            (RunState::Queued, RunState::Succeeded),
            (
                RunState::Gated { gates: vec![] },
                RunState::Applying {
                    index: 1,
                    total: 1,
                    migration: "m".into(),
                },
            ),
            (RunState::Locked, RunState::Succeeded),
            (
                RunState::Locked,
                RunState::Applying {
                    index: 1,
                    total: 1,
                    migration: "m".into(),
                },
            ),
            (
                RunState::Verifying,
                RunState::Applying {
                    index: 1,
                    total: 1,
                    migration: "m".into(),
                },
            ),
            (RunState::Halted { reason: "x".into() }, RunState::Succeeded),
            (
                RunState::Halted { reason: "x".into() },
                RunState::Applying {
                    index: 1,
                    total: 1,
                    migration: "m".into(),
                },
            ),
            (RunState::Locked, RunState::Cancelled { reason: "x".into() }),
            (
                RunState::Applying {
                    index: 1,
                    total: 1,
                    migration: "m".into(),
                },
                RunState::Cancelled { reason: "x".into() },
            ),
            (
                RunState::Locked,
                RunState::RollingBack {
                    method: RollbackMethod::Snapshot,
                    reason: "x".into(),
                },
            ),
        ];
        for (from, to) in samples {
            assert!(
                !allowed(&from, &to, false),
                "{} → {}",
                from.name(),
                to.name()
            );
        }
    }

    #[test]
    fn a_resumed_run_re_enters_the_step_it_halted_in() {
        let halted = || RunState::Halted { reason: "x".into() };
        let applying = RunState::Applying {
            index: 2,
            total: 3,
            migration: "m2".into(),
        };
        let rolling = RunState::RollingBack {
            method: RollbackMethod::Snapshot,
            reason: "health".into(),
        };
        let cases = [
            (
                vec![RunState::Queued, RunState::Locked, halted()],
                RunState::Locked,
            ),
            (
                vec![RunState::Locked, RunState::Snapshotted, halted()],
                RunState::Snapshotted,
            ),
            (
                vec![RunState::Snapshotted, applying, halted()],
                RunState::Snapshotted,
            ),
            (vec![RunState::Verifying, halted()], RunState::Verifying),
            (
                vec![RunState::Verifying, rolling.clone(), halted()],
                rolling,
            ),
            // Resumed, halted again in the same step: still that step.
            (
                vec![RunState::Verifying, halted(), RunState::Verifying, halted()],
                RunState::Verifying,
            ),
            (vec![halted()], RunState::Locked),
        ];
        for (history, expected) in cases {
            let run = run_in(halted(), history.clone());
            let point = resume_point(&run);
            assert_eq!(point, expected, "{history:?}");
            assert!(check(&run, &point).is_ok(), "{history:?}");
        }
    }
}
