//! Scheduled promotions with a clock the test controls: firings at the right instants in
//! Europe/Berlin across both daylight-saving changes, `skip` and `run_once` after an outage,
//! no second firing of a slot after a restart (the store is really closed and reopened), and a
//! firing during a deny window that waits or is dropped as configured, said in the event log;
//! a drift scan firing once per slot and not catching up after an outage.
//!
//! The example project (SQLite environments) is enough here: a firing only requests a
//! promotion; the runs it requests are the same runs the ladder tests drive on PostgreSQL.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sluice::promote::engine::{Engine, EngineOptions};
use sluice::schedule::timing::ManualClock;
use sluice::schedule::{Outcome, Scheduler};
use sluice::store::{Origin, SledStore, Store};

/// The example project with `dev_policy` as dev's policy file.
fn project(dev_policy: &str) -> tempfile::TempDir {
    let dir = common::example_copy();
    std::fs::write(dir.path().join("policies/dev.toml"), dev_policy).unwrap();
    dir
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// An engine on the project's store; dropping it (and waiting out sled's flusher) is a restart.
struct Daemon {
    engine: Arc<Engine>,
    scheduler: Scheduler,
}

fn open(root: &Path, clock: &Arc<ManualClock>) -> Daemon {
    let dir = root.join(".sluice/store");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let store = loop {
        match SledStore::open(&dir) {
            Ok(store) => break store,
            Err(err)
                if std::time::Instant::now() < deadline && err.to_string().contains("in use") =>
            {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(err) => panic!("{err}"),
        }
    };
    let engine = Engine::open(
        root,
        Arc::new(store),
        EngineOptions {
            tick: Duration::from_millis(100),
            auto_promote: false,
        },
    )
    .unwrap();
    let scheduler = Scheduler::new(engine.clone(), clock.clone());
    Daemon { engine, scheduler }
}

fn fired_slots(outcomes: &[(String, Outcome)]) -> Vec<DateTime<Utc>> {
    outcomes
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::Fired { slot, .. } | Outcome::Skipped { slot, .. } => Some(*slot),
            _ => None,
        })
        .collect()
}

/// Ticks every `step` from the clock's time until `until`, collecting what fired.
async fn tick_until(
    daemon: &Daemon,
    clock: &ManualClock,
    until: DateTime<Utc>,
    step: Duration,
) -> Vec<(String, Outcome)> {
    let mut all = Vec::new();
    loop {
        all.extend(daemon.scheduler.tick().await);
        use sluice::schedule::timing::Clock;
        if clock.now() >= until {
            return all;
        }
        clock.advance(step);
    }
}

fn actions(store: &dyn Store) -> Vec<String> {
    store
        .events(Some("dev"))
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .filter(|a| a.starts_with("schedule."))
        .collect()
}

#[tokio::test]
async fn a_berlin_schedule_fires_at_the_right_instants_across_both_dst_changes() {
    let dir =
        project("environment = \"dev\"\nschedule = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\n");
    // Spring: Sunday 2026-03-29 has no 02:30 in Berlin; the slot fires when the clocks jump.
    let clock = Arc::new(ManualClock::new(at("2026-03-27T12:00:00Z")));
    let daemon = open(dir.path(), &clock);
    let outcomes = tick_until(
        &daemon,
        &clock,
        at("2026-03-30T12:00:00Z"),
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(
        fired_slots(&outcomes),
        vec![
            at("2026-03-28T01:30:00Z"), // 02:30 CET
            at("2026-03-29T01:00:00Z"), // 03:00 CEST, the end of the gap
            at("2026-03-30T00:30:00Z"), // 02:30 CEST
        ]
    );
    // The first firing made a run with the slot as its origin; the later ones found it waiting.
    match &outcomes
        .iter()
        .find(|(_, o)| matches!(o, Outcome::Fired { .. }))
        .unwrap()
        .1
    {
        Outcome::Fired { run_id, .. } => {
            let run = daemon.engine.run(run_id).unwrap();
            assert!(
                matches!(&run.origin, Some(Origin::Schedule { slot, .. }) if *slot == at("2026-03-28T01:30:00Z"))
            );
            assert_eq!(run.requested_by, "schedule");
        }
        _ => unreachable!(),
    }
    // Autumn: 02:30 happens twice on 2026-10-25; it fires once, at the first.
    clock.set(at("2026-10-23T12:00:00Z"));
    let outcomes = tick_until(
        &daemon,
        &clock,
        at("2026-10-26T12:00:00Z"),
        Duration::from_secs(300),
    )
    .await;
    let slots = fired_slots(&outcomes);
    assert_eq!(
        slots,
        vec![
            at("2026-10-24T00:30:00Z"), // 02:30 CEST
            at("2026-10-25T00:30:00Z"), // 02:30 CEST, the first of two
            at("2026-10-26T01:30:00Z"), // 02:30 CET
        ]
    );
    // Between the two windows the daemon "was down" for seven months: those slots were missed.
    assert!(outcomes
        .iter()
        .any(|(_, o)| matches!(o, Outcome::Missed { count } if *count > 200)));
}

#[tokio::test]
async fn after_an_outage_skip_fires_nothing_and_run_once_fires_the_newest_slot_once() {
    for (misfire, expect_fire) in [("skip", false), ("run_once", true)] {
        let dir = project(&format!(
            "environment = \"dev\"\nschedule = \"0 10 * * Mon-Fri\"\ntimezone = \"America/New_York\"\n\
             misfire = \"{misfire}\"\nstarting_deadline = \"10m\"\n"
        ));
        let clock = Arc::new(ManualClock::new(at("2026-11-02T12:00:00Z")));
        {
            let daemon = open(dir.path(), &clock);
            assert!(
                daemon.scheduler.tick().await.is_empty(),
                "a new schedule fires nothing"
            );
        }
        // Down from Monday 07:00 until Thursday 11:00 New York (12:00 and 16:00 UTC): Monday to
        // Thursday 10:00 passed, Thursday's too more than 10 minutes ago.
        clock.set(at("2026-11-05T16:00:00Z"));
        let daemon = open(dir.path(), &clock);
        let outcomes = daemon.scheduler.tick().await;
        let missed: usize = outcomes
            .iter()
            .map(|(_, o)| match o {
                Outcome::Missed { count } => *count,
                _ => 0,
            })
            .sum();
        let fired = fired_slots(&outcomes);
        if expect_fire {
            assert_eq!(
                fired,
                vec![at("2026-11-05T15:00:00Z")],
                "{misfire}: {outcomes:?}"
            );
            assert_eq!(missed, 3, "{misfire}");
            let run_id = match &outcomes
                .iter()
                .find(|(_, o)| matches!(o, Outcome::Fired { .. }))
                .unwrap()
                .1
            {
                Outcome::Fired { run_id, .. } => run_id.clone(),
                _ => unreachable!(),
            };
            let run = daemon.engine.run(&run_id).unwrap();
            assert!(run.reason.unwrap().contains("fired late"), "{misfire}");
        } else {
            assert!(fired.is_empty(), "{misfire}: {outcomes:?}");
            assert_eq!(missed, 4, "{misfire}");
            assert!(daemon.engine.store().runs().unwrap().is_empty());
        }
        let log = actions(daemon.engine.store());
        assert!(
            log.contains(&"schedule.missed".to_string()),
            "{misfire}: {log:?}"
        );
        assert_eq!(
            log.contains(&"schedule.fired".to_string()),
            expect_fire,
            "{misfire}: {log:?}"
        );
        let event = daemon
            .engine
            .store()
            .events(Some("dev"))
            .unwrap()
            .into_iter()
            .find(|e| e.action == "schedule.missed")
            .unwrap();
        assert!(event
            .reason
            .unwrap()
            .contains(&format!("misfire = \"{misfire}\"")));
    }
}

#[tokio::test]
async fn a_restart_within_the_same_slot_never_fires_it_twice() {
    let dir =
        project("environment = \"dev\"\nschedule = \"0 10 * * *\"\ntimezone = \"Europe/Berlin\"\n");
    let slot = at("2026-07-01T08:00:00Z");
    let clock = Arc::new(ManualClock::new(at("2026-07-01T07:59:00Z")));
    let cursor_key = "schedule/cursor/dev|0 10 * * *|Europe/Berlin";
    let before_slot = {
        let daemon = open(dir.path(), &clock);
        daemon.scheduler.tick().await;
        daemon
            .engine
            .store()
            .mark(cursor_key)
            .unwrap()
            .expect("armed")
    };
    clock.set(at("2026-07-01T08:00:05Z"));
    let first_run = {
        let daemon = open(dir.path(), &clock);
        let outcomes = daemon.scheduler.tick().await;
        assert_eq!(fired_slots(&outcomes), vec![slot]);
        // Crash before the cursor moved on: the next start sees the slot due again.
        daemon
            .engine
            .store()
            .put_mark(cursor_key, &before_slot)
            .unwrap();
        daemon.engine.store().runs().unwrap()
    };
    assert_eq!(first_run.len(), 1);
    clock.set(at("2026-07-01T08:00:30Z"));
    {
        let daemon = open(dir.path(), &clock);
        let outcomes = daemon.scheduler.tick().await;
        assert_eq!(outcomes.len(), 1, "{outcomes:?}");
        assert!(matches!(outcomes[0].1, Outcome::AlreadyHandled { slot: s } if s == slot));
        assert_eq!(
            daemon.engine.store().runs().unwrap().len(),
            1,
            "no second run"
        );
        // A crash between claiming the slot and requesting the run: the claim is found with
        // the run carrying the slot, so nothing is requested again either.
        let firing =
            "schedule/firing/dev|0 10 * * *|Europe/Berlin|2026-07-01T08:00:00Z".to_string();
        daemon
            .engine
            .store()
            .put_mark(
                &firing,
                &serde_json::json!({"state": "claimed", "at": "2026-07-01T08:00:05Z"}),
            )
            .unwrap();
        daemon
            .engine
            .store()
            .put_mark(cursor_key, &before_slot)
            .unwrap();
        let outcomes = daemon.scheduler.tick().await;
        assert!(
            matches!(outcomes[0].1, Outcome::AlreadyHandled { .. }),
            "{outcomes:?}"
        );
        assert_eq!(daemon.engine.store().runs().unwrap().len(), 1);
        let mark = daemon.engine.store().mark(&firing).unwrap().unwrap();
        assert_eq!(mark["state"], "fired");
        assert_eq!(mark["run_id"], first_run[0].id.as_str());
    }
    // The next day's slot fires normally.
    clock.set(at("2026-07-02T08:00:01Z"));
    let daemon = open(dir.path(), &clock);
    let outcomes = daemon.scheduler.tick().await;
    assert_eq!(fired_slots(&outcomes), vec![at("2026-07-02T08:00:00Z")]);
    let fired = actions(daemon.engine.store())
        .into_iter()
        .filter(|a| a == "schedule.fired" || a == "schedule.skipped")
        .count();
    assert_eq!(fired, 2, "one record per slot");
}

#[tokio::test]
async fn a_firing_in_a_deny_window_waits_or_is_dropped_as_configured() {
    // A deny window that is always open (every minute, for an hour).
    let window = "[[windows]]\nname = \"freeze\"\nkind = \"deny\"\ncron = \"* * * * *\"\nduration = \"1h\"\n";
    for rule in ["wait", "drop"] {
        let dir = project(&format!(
            "environment = \"dev\"\nschedule = \"*/5 * * * *\"\non_closed_window = \"{rule}\"\n{window}"
        ));
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let daemon = open(dir.path(), &clock);
        daemon.scheduler.tick().await;
        clock.advance(Duration::from_secs(300));
        let outcomes = daemon.scheduler.tick().await;
        let store = daemon.engine.store();
        let events = store.events(Some("dev")).unwrap();
        if rule == "drop" {
            assert!(
                matches!(&outcomes[0].1, Outcome::Skipped { reason, .. } if reason.contains("freeze")),
                "{outcomes:?}"
            );
            assert!(store.runs().unwrap().is_empty());
            let dropped = events
                .iter()
                .find(|e| e.action == "schedule.dropped")
                .expect("dropped event");
            let reason = dropped.reason.clone().unwrap();
            assert!(
                reason.contains("window") && reason.contains("on_closed_window = \"drop\""),
                "{reason}"
            );
        } else {
            let run_id = match &outcomes[0].1 {
                Outcome::Fired { run_id, .. } => run_id.clone(),
                other => panic!("{other:?}"),
            };
            let fired = events
                .iter()
                .find(|e| e.action == "schedule.fired")
                .expect("fired event");
            assert!(
                fired
                    .reason
                    .clone()
                    .unwrap()
                    .contains("the run waits: window"),
                "{fired:?}"
            );
            daemon.engine.tick().await.unwrap();
            let run = daemon.engine.run(&run_id).unwrap();
            assert_eq!(run.state.name(), "gated");
            assert!(
                run.state.describe().contains("window:"),
                "{}",
                run.state.describe()
            );
        }
    }
}

#[test]
fn sluice_schedules_prints_the_next_five_firings_in_the_zone() {
    let dir = project("environment = \"dev\"\nschedule = \"0 10 * * Mon-Fri\"\ntimezone = \"Europe/Berlin\"\nmisfire = \"run_once\"\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["schedules", "--after", "2026-03-26T12:00:00Z"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("dev: `0 10 * * Mon-Fri` in Europe/Berlin (misfire = \"run_once\""),
        "{text}"
    );
    assert_eq!(
        &lines[1..6],
        &[
            "  Fri 2026-03-27 10:00 CET (+01:00)  (2026-03-27 09:00 UTC)",
            "  Mon 2026-03-30 10:00 CEST (+02:00)  (2026-03-30 08:00 UTC)",
            "  Tue 2026-03-31 10:00 CEST (+02:00)  (2026-03-31 08:00 UTC)",
            "  Wed 2026-04-01 10:00 CEST (+02:00)  (2026-04-01 08:00 UTC)",
            "  Thu 2026-04-02 10:00 CEST (+02:00)  (2026-04-02 08:00 UTC)",
        ],
        "{text}"
    );
    let bad = project("environment = \"dev\"\nschedule = \"0 25 * * *\"\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["schedules"])
        .current_dir(bad.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("policies/dev.toml:2: key `schedule`"), "{err}");
}

/// A drift scan with the controllable clock: nothing on first sight of the schedule, one scan
/// per firing, one scan (not one per missed slot) after an outage, and the last result kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_scan_fires_on_its_schedule_and_does_not_catch_up() {
    use sluice::drift::scan::{last_key, DriftScanner, ScanRecord};
    let dir = project("environment = \"dev\"\ndrift_scan = { schedule = \"0 * * * *\" }\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["apply", "--env", "dev"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let clock = Arc::new(ManualClock::new(at("2026-05-04T09:30:00Z")));
    let daemon = open(dir.path(), &clock);
    let scanner = DriftScanner::new(daemon.engine.clone(), clock.clone());
    let scans = |daemon: &Daemon| {
        daemon
            .engine
            .store()
            .events(Some("dev"))
            .unwrap()
            .iter()
            .filter(|e| e.action == "drift.scanned")
            .count()
    };

    assert!(
        scanner.tick().await.is_empty(),
        "first sight: scans start from now"
    );
    clock.set(at("2026-05-04T09:59:59Z"));
    assert!(scanner.tick().await.is_empty());
    clock.set(at("2026-05-04T10:00:01Z"));
    assert_eq!(scanner.tick().await, ["dev"]);
    assert!(scanner.tick().await.is_empty(), "one scan per firing");
    assert_eq!(scans(&daemon), 1);

    // Down from 10:00 to 15:20: five slots passed, one scan now.
    clock.set(at("2026-05-04T15:20:00Z"));
    assert_eq!(scanner.tick().await, ["dev"]);
    assert!(scanner.tick().await.is_empty());
    assert_eq!(scans(&daemon), 2);
    let last: ScanRecord = serde_json::from_value(
        daemon
            .engine
            .store()
            .mark(&last_key("dev"))
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last.at, at("2026-05-04T15:20:00Z"));
    assert_eq!((last.differences, last.error), (0, None));
}
