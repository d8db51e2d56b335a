//! The gates a waiting run must pass before it may touch its environment: the upstream
//! environment on the release and soaked, enough approvals, an open window, and no other run
//! holding the environment. Pure functions of what the store knows and the time, so every
//! gate can be tested without a clock or a database.

use chrono::{DateTime, Utc};

use crate::migrations::lint::LintReport;
use crate::policy::{window_verdict, Policy, WindowVerdict};
use crate::store::records::short_hash;
use crate::store::records::{Gate, GateKind};
use crate::store::{Approval, EnvironmentState, Release, Run};

/// What the gates look at for one waiting run.
pub struct GateInput<'a> {
    /// The policy of the run's environment.
    pub policy: &'a Policy,
    /// The waiting run.
    pub run: &'a Run,
    /// The release it brings.
    pub release: &'a Release,
    /// The upstream environment's state and release, when the policy has `from`.
    pub upstream: Option<(&'a EnvironmentState, Option<&'a Release>)>,
    /// Another run that holds the environment or is ahead in the queue.
    pub ahead: Option<&'a Run>,
    /// The lint of the migrations the run would bring, for the policy's `lint` rules.
    pub lint: Option<&'a LintReport>,
    /// Now.
    pub now: DateTime<Utc>,
}

/// Whether `approval` still counts at `now` under the policy's `expiry`.
pub fn approval_is_current(policy: &Policy, approval: &Approval, now: DateTime<Utc>) -> bool {
    policy.approvals.expiry.is_none_or(|expiry| {
        chrono::Duration::from_std(expiry).is_ok_and(|expiry| now - approval.at < expiry)
    })
}

/// Approvals that count now: not by the requester, by someone the policy allows, not expired;
/// one per person, however often they renewed theirs.
pub fn valid_approvals(policy: &Policy, run: &Run, now: DateTime<Utc>) -> usize {
    let mut people: Vec<&str> = run
        .approvals
        .iter()
        .filter(|a| a.by != run.requested_by && policy.approvals.may_approve(&a.by))
        .filter(|a| approval_is_current(policy, a, now))
        .map(|a| a.by.as_str())
        .collect();
    people.sort_unstable();
    people.dedup();
    people.len()
}

/// Every closed gate, typed, with its sentence; empty when the run may go.
pub fn closed_gates(input: &GateInput<'_>) -> Vec<Gate> {
    let mut closed = Vec::new();
    let policy = input.policy;
    let short = input.release.short();
    if let Some(from) = &policy.from {
        match input.upstream {
            Some((state, Some(upstream_release)))
                if input.release.is_prefix_of(upstream_release) && state.healthy =>
            {
                let since = state.since.unwrap_or(input.now);
                let soak = chrono::Duration::from_std(policy.soak).unwrap_or(chrono::Duration::MAX);
                let soaked = input.now - since;
                if soaked < soak {
                    closed.push(Gate::new(
                        GateKind::Soak,
                        format!(
                        "`{from}` has been healthy on release {short} for {}s of {}s (opens at {})",
                        soaked.num_seconds().max(0),
                        policy.soak.as_secs(),
                        (since + soak).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                    ));
                }
            }
            Some((state, _)) => closed.push(Gate::new(
                GateKind::Upstream,
                format!(
                    "waiting for `{from}` to be healthy on release {short} ({})",
                    match state.release.as_deref() {
                        Some(hash) if !state.healthy =>
                            format!("it is on {} and not healthy", short_hash(hash)),
                        Some(hash) => format!("it is on {}", short_hash(hash)),
                        None => "it has no release from sluice yet".to_string(),
                    }
                ),
            )),
            None => closed.push(Gate::new(
                GateKind::Upstream,
                format!("waiting for `{from}` to be healthy on release {short}"),
            )),
        }
    }
    let findings = |rules: &[crate::migrations::lint::Rule]| -> Vec<String> {
        input
            .lint
            .map(|report| {
                report
                    .findings
                    .iter()
                    .filter(|f| rules.contains(&f.rule))
                    .map(|f| format!("{} at {}:{}", f.rule.id(), f.migration, f.line))
                    .collect()
            })
            .unwrap_or_default()
    };
    let blocked = findings(&policy.lint.block);
    if !blocked.is_empty() {
        closed.push(Gate::new(GateKind::Lint, format!(
            "the policy blocks {}; change the migration, silence the finding in it with a reason (`-- sluice:allow <rule> -- <why>`), or cancel the run",
            blocked.join(", ")
        )));
    }
    let needs_approval = findings(&policy.lint.require_approval);
    let mut required = policy.approvals.required as usize;
    if !needs_approval.is_empty() {
        required = required.max(1);
    }
    if required > 0 {
        let have = valid_approvals(policy, input.run, input.now);
        if have < required {
            let who = if policy.approvals.from.is_empty() {
                "anyone with the approver role except the requester".to_string()
            } else {
                policy.approvals.from.join(", ")
            };
            let because = if needs_approval.is_empty() {
                String::new()
            } else {
                format!(
                    "; the policy wants one for lint findings {}",
                    needs_approval.join(", ")
                )
            };
            closed.push(Gate::new(GateKind::Approval, format!(
                "{have} of {required} approvals (approvers: {who}){because}; approve with `sluice approve {}`",
                input.run.id
            )));
        }
    }
    if let WindowVerdict::Closed { reason, .. } = window_verdict(&policy.windows, input.now) {
        closed.push(Gate::new(GateKind::Window, reason));
    }
    if let Some(ahead) = input.ahead {
        closed.push(Gate::new(
            GateKind::Concurrency,
            format!(
                "run {} is {} on `{}`",
                ahead.id,
                ahead.state.describe(),
                ahead.environment
            ),
        ));
    }
    closed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policies;
    use crate::store::{Approval, ReleaseMigration, RunKind, RunState};
    use chrono::TimeZone;
    use std::path::Path;

    fn policy(text: &str) -> Policy {
        let envs = ["dev".to_string(), "staging".to_string(), "prod".to_string()];
        Policies::parse_file(Path::new("policies/prod.toml"), text, &envs).unwrap()
    }

    fn release(names: &[&str]) -> Release {
        Release {
            hash: format!("hash-{}", names.join("-")),
            head: names.last().map(|s| s.to_string()),
            migrations: names
                .iter()
                .map(|n| ReleaseMigration {
                    name: n.to_string(),
                    checksum: format!("c-{n}"),
                })
                .collect(),
            recorded_at: Utc::now(),
            source: "test".into(),
        }
    }

    fn run(requested_by: &str, approvals: &[(&str, DateTime<Utc>)]) -> Run {
        Run {
            id: "run-1".into(),
            kind: RunKind::Promotion,
            environment: "prod".into(),
            release: "hash-a-b".into(),
            head: Some("b".into()),
            previous_release: None,
            requested_by: requested_by.into(),
            reason: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            state: RunState::Queued,
            transitions: vec![],
            plan: vec![],
            applied: vec![],
            snapshot: None,
            approvals: approvals
                .iter()
                .map(|(by, at)| Approval {
                    by: by.to_string(),
                    at: *at,
                    comment: None,
                })
                .collect(),
            measurements: vec![],
            health: None,
            error: None,
            rolls_back: None,
            origin: None,
        }
    }

    fn upstream(release: &Release, since: DateTime<Utc>, healthy: bool) -> EnvironmentState {
        EnvironmentState {
            release: Some(release.hash.clone()),
            head: release.head.clone(),
            since: Some(since),
            run_id: Some("up".into()),
            healthy,
            history: vec![],
        }
    }

    fn gates(
        policy: &Policy,
        run: &Run,
        rel: &Release,
        up: Option<(&EnvironmentState, Option<&Release>)>,
        now: DateTime<Utc>,
    ) -> Vec<Gate> {
        closed_gates(&GateInput {
            policy,
            run,
            release: rel,
            upstream: up,
            ahead: None,
            lint: None,
            now,
        })
    }

    #[test]
    fn soak_holds_until_the_upstream_release_has_been_healthy_long_enough() {
        let p = policy("environment = \"prod\"\nfrom = \"staging\"\nsoak = \"10m\"\n");
        let rel = release(&["a", "b"]);
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        let r = run("ci", &[]);
        let since = now - chrono::Duration::minutes(4);
        let up = upstream(&rel, since, true);
        let closed = gates(&p, &r, &rel, Some((&up, Some(&rel))), now);
        assert_eq!(closed.len(), 1, "{closed:?}");
        assert!(closed[0].sentence().starts_with("soak: `staging` has been healthy on release hash-a-b for 240s of 600s (opens at 2026-11-22T12:06:00Z)"), "{closed:?}");
        assert!(gates(
            &p,
            &r,
            &rel,
            Some((&up, Some(&rel))),
            now + chrono::Duration::minutes(6)
        )
        .is_empty());
        // A newer upstream release that contains this one counts; an unhealthy one does not.
        let newer = release(&["a", "b", "c"]);
        let up_newer = upstream(&newer, since, true);
        assert!(gates(
            &p,
            &r,
            &rel,
            Some((&up_newer, Some(&newer))),
            now + chrono::Duration::hours(1)
        )
        .is_empty());
        let sick = upstream(&rel, since, false);
        let closed = gates(
            &p,
            &r,
            &rel,
            Some((&sick, Some(&rel))),
            now + chrono::Duration::hours(1),
        );
        assert!(
            closed[0].sentence().starts_with("upstream:")
                && closed[0].sentence().contains("not healthy"),
            "{closed:?}"
        );
        // An upstream on an older release holds the run.
        let older = release(&["a"]);
        let up_old = upstream(&older, since, true);
        let closed = gates(
            &p,
            &r,
            &rel,
            Some((&up_old, Some(&older))),
            now + chrono::Duration::hours(1),
        );
        assert!(
            closed[0]
                .sentence()
                .starts_with("upstream: waiting for `staging`"),
            "{closed:?}"
        );
    }

    #[test]
    fn approvals_count_only_allowed_unexpired_approvers_other_than_the_requester() {
        let p = policy(
            "environment = \"prod\"\n[approvals]\nrequired = 1\nfrom = [\"alice\", \"bob\"]\nexpiry = \"1h\"\n",
        );
        let rel = release(&["a", "b"]);
        let now = Utc::now();
        let fresh = now - chrono::Duration::minutes(5);
        let stale = now - chrono::Duration::hours(2);
        assert_eq!(gates(&p, &run("ci", &[]), &rel, None, now).len(), 1);
        assert!(gates(&p, &run("ci", &[("alice", fresh)]), &rel, None, now).is_empty());
        for not_counted in [
            run("alice", &[("alice", fresh)]),
            run("ci", &[("mallory", fresh)]),
            run("ci", &[("bob", stale)]),
        ] {
            let closed = gates(&p, &not_counted, &rel, None, now);
            assert_eq!(closed.len(), 1, "{:?}", not_counted.approvals);
            assert!(
                closed[0]
                    .sentence()
                    .starts_with("approval: 0 of 1 approvals (approvers: alice, bob)"),
                "{closed:?}"
            );
        }
    }

    #[test]
    fn a_deny_window_and_a_run_ahead_hold_the_run() {
        let p = policy(
            "environment = \"prod\"\n[[windows]]\nname = \"freeze\"\nkind = \"deny\"\ncron = \"0 0 12 * * *\"\nduration = \"1h\"\n",
        );
        let rel = release(&["a"]);
        let inside = Utc.with_ymd_and_hms(2026, 11, 22, 12, 30, 0).unwrap();
        let closed = gates(&p, &run("ci", &[]), &rel, None, inside);
        assert_eq!(closed.len(), 1);
        assert!(
            closed[0].sentence().starts_with("window:") && closed[0].sentence().contains("freeze"),
            "{closed:?}"
        );
        let outside = Utc.with_ymd_and_hms(2026, 11, 22, 13, 30, 0).unwrap();
        assert!(gates(&p, &run("ci", &[]), &rel, None, outside).is_empty());
        let mut ahead = run("ci", &[]);
        ahead.id = "run-0".into();
        ahead.state = RunState::Verifying;
        let closed = closed_gates(&GateInput {
            policy: &p,
            run: &run("ci", &[]),
            release: &rel,
            upstream: None,
            ahead: Some(&ahead),
            lint: None,
            now: outside,
        });
        assert_eq!(
            closed.iter().map(Gate::sentence).collect::<Vec<_>>(),
            ["concurrency: run run-0 is verifying on `prod`"]
        );
    }

    #[test]
    fn lint_findings_block_or_ask_for_an_approval_as_the_policy_says() {
        use crate::migrations::lint::{lint, LintOptions};
        let p = policy(
            "environment = \"prod\"\nlint = { block = [\"drop-table\"], require_approval = [\"drop-column\"] }\n",
        );
        let rel = release(&["a", "b"]);
        let now = Utc::now();
        let report = |sql: &str| lint(&[("b", sql, true)], LintOptions::default());
        let check = |report: &crate::migrations::lint::LintReport,
                     approvals: &[(&str, DateTime<Utc>)]| {
            closed_gates(&GateInput {
                policy: &p,
                run: &run("ci", approvals),
                release: &rel,
                upstream: None,
                ahead: None,
                lint: Some(report),
                now,
            })
        };
        let drop_table = report("DROP TABLE users;\n");
        let closed = check(&drop_table, &[]);
        assert_eq!(closed.len(), 1, "{closed:?}");
        assert!(
            closed[0]
                .sentence()
                .starts_with("lint: the policy blocks drop-table at b:1"),
            "{closed:?}"
        );
        assert_eq!(
            check(&drop_table, &[("alice", now)]).len(),
            1,
            "an approval does not lift a block"
        );

        let drop_column = report("ALTER TABLE users DROP COLUMN email;\n");
        let closed = check(&drop_column, &[]);
        assert_eq!(closed.len(), 1, "{closed:?}");
        assert!(
            closed[0]
                .sentence()
                .starts_with("approval: 0 of 1 approvals"),
            "{closed:?}"
        );
        assert!(
            closed[0]
                .sentence()
                .contains("lint findings drop-column at b:1"),
            "{closed:?}"
        );
        assert!(check(&drop_column, &[("alice", now)]).is_empty());
        assert!(
            check(&drop_column, &[("ci", now)]).len() == 1,
            "self-approval never counts"
        );

        let silenced = report(
            "-- sluice:allow drop-table -- archived in 2023, empty since\nDROP TABLE users;\n",
        );
        assert!(
            check(&silenced, &[]).is_empty(),
            "a silenced finding stops nothing"
        );
        assert!(check(&report("CREATE TABLE t (id int);\n"), &[]).is_empty());
    }
}
