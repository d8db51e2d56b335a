//! The state store under damage and through a backup (issue 12, item 7): a store whose sled
//! files were damaged in many ways either gives back its whole history or stops with an error
//! that says what was found and what to do, never a panic and never an empty history; and a
//! backup restored into a new state directory gives back the same runs, events and approvals,
//! also when it was taken from a running daemon.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::daemon::{write_tokens, Daemon};
use common::*;
use serde_json::Value;

const ADMIN: &str = "slc_store_admin_token_0123456789";
const VIEWER: &str = "slc_store_viewer_token_012345678";

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sluice <args>` in `dir`, with a timeout: a store that makes sluice hang fails the test.
fn sluice_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = sluice();
    cmd.args(args).current_dir(dir).env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, Duration::from_secs(120))
}

/// The example project with a history: the release promoted up the ladder, prod waiting for
/// an approval that bob then gives. Returns the project and its runs as `runs --json` shows.
fn project_with_history() -> Project {
    let project = example_project();
    let policy = project.path().join("policies/prod.toml");
    let text = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("required = 0", "required = 1");
    std::fs::write(&policy, text).unwrap();
    let promoted = project.run(&["promote", "--to", "prod", "--local", "--by", "alice"]);
    assert_exit_code(&promoted, 3);
    let runs = runs_of(project.path());
    let prod = runs
        .iter()
        .find(|r| r["environment"] == "prod")
        .and_then(|r| r["id"].as_str())
        .unwrap()
        .to_string();
    project.run_ok(&["approve", &prod, "--local", "--by", "bob"]);
    project
}

fn runs_of(dir: &Path) -> Vec<Value> {
    let out = sluice_in(dir, &["runs", "--local", "--json"], &[]);
    assert_success(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every run of `dir` with its events, as `sluice run ID --json` shows them.
fn history_of(dir: &Path) -> Vec<Value> {
    runs_of(dir)
        .iter()
        .map(|r| {
            let out = sluice_in(
                dir,
                &["run", r["id"].as_str().unwrap(), "--local", "--json"],
                &[],
            );
            assert_success(&out);
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect()
}

/// A small deterministic generator (splitmix64), so every damage is the same on every run.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn sled_snapshot_file(store: &Path) -> PathBuf {
    std::fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snap."))
        })
        .unwrap_or_else(|| panic!("no sled snapshot file in {}", store.display()))
}

/// Bytes of sled's data file up to its last non-zero byte: where damage does something.
fn used_length(file: &Path) -> u64 {
    let bytes = std::fs::read(file).unwrap();
    bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |p| p as u64 + 1)
}

fn truncate(file: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn rewrite(file: &Path, at: u64, change: impl Fn(&mut [u8])) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = (at as usize).min(bytes.len().saturating_sub(1));
    change(&mut bytes[at..]);
    std::fs::write(file, bytes).unwrap();
}

fn flip(file: &Path, at: u64, mask: u8) {
    rewrite(file, at, |b| b[0] ^= mask.max(1));
}

fn zero(file: &Path, at: u64, len: usize) {
    rewrite(file, at, |b| {
        let n = len.min(b.len());
        b[..n].fill(0)
    });
}

type Damage = Box<dyn Fn(&Path)>;

/// The ways the test damages a store: each gets the store directory of a fresh copy.
fn damages() -> Vec<(String, Damage)> {
    let mut out: Vec<(String, Damage)> = Vec::new();
    for (percent, name) in [(0, "empty"), (1, "1%"), (50, "half"), (99, "99%")] {
        out.push((
            format!("data file truncated to {name}"),
            Box::new(move |s: &Path| {
                let db = s.join("db");
                truncate(&db, used_length(&db) * percent / 100)
            }),
        ));
    }
    for file in ["db", "conf"] {
        out.push((
            format!("`{file}` deleted"),
            Box::new(move |s: &Path| std::fs::remove_file(s.join(file)).unwrap()),
        ));
    }
    out.push((
        "sled's snapshot file deleted".into(),
        Box::new(|s: &Path| std::fs::remove_file(sled_snapshot_file(s)).unwrap()),
    ));
    out.push((
        "`blobs` deleted".into(),
        Box::new(|s: &Path| std::fs::remove_dir_all(s.join("blobs")).unwrap()),
    ));
    out.push((
        "sled's snapshot file truncated to half".into(),
        Box::new(|s: &Path| {
            let snap = sled_snapshot_file(s);
            truncate(&snap, std::fs::metadata(&snap).unwrap().len() / 2)
        }),
    ));
    out.push((
        "`conf` truncated".into(),
        Box::new(|s: &Path| truncate(&s.join("conf"), 10)),
    ));
    for seed in 1..=4u64 {
        out.push((
            format!("a byte of sled's snapshot file flipped (seed {seed})"),
            Box::new(move |s: &Path| {
                let snap = sled_snapshot_file(s);
                let mut rng = Seeded(seed);
                let at = rng.below(std::fs::metadata(&snap).unwrap().len());
                flip(&snap, at, rng.next() as u8)
            }),
        ));
    }
    for seed in 1..=6u64 {
        out.push((
            format!("a byte of the data file flipped (seed {seed})"),
            Box::new(move |s: &Path| {
                let db = s.join("db");
                let mut rng = Seeded(100 + seed);
                let at = rng.below(used_length(&db));
                flip(&db, at, rng.next() as u8)
            }),
        ));
    }
    for seed in 1..=3u64 {
        out.push((
            format!("4 KiB of the data file zeroed (seed {seed})"),
            Box::new(move |s: &Path| {
                let db = s.join("db");
                let at = Seeded(200 + seed).below(used_length(&db));
                zero(&db, at, 4096)
            }),
        ));
    }
    // Without sled's snapshot file sled replays its log, and damage in the log made sled
    // 0.34 come back with an older state, or an empty one, without a word.
    for seed in 1..=4u64 {
        out.push((
            format!("snapshot file deleted and a byte of the log flipped (seed {seed})"),
            Box::new(move |s: &Path| {
                std::fs::remove_file(sled_snapshot_file(s)).unwrap();
                let db = s.join("db");
                let mut rng = Seeded(300 + seed);
                let at = rng.below(used_length(&db));
                flip(&db, at, rng.next() as u8)
            }),
        ));
    }
    for percent in [10u64, 60] {
        out.push((
            format!("snapshot file deleted and the log cut at {percent}%"),
            Box::new(move |s: &Path| {
                std::fs::remove_file(sled_snapshot_file(s)).unwrap();
                let db = s.join("db");
                truncate(&db, used_length(&db) * percent / 100)
            }),
        ));
    }
    out.push((
        "the data file replaced by noise".into(),
        Box::new(|s: &Path| {
            let db = s.join("db");
            let mut rng = Seeded(400);
            let noise: Vec<u8> = (0..used_length(&db)).map(|_| rng.next() as u8).collect();
            std::fs::write(&db, noise).unwrap();
        }),
    ));
    out
}

#[test]
fn item07_a_damaged_store_gives_its_whole_history_or_a_clear_error_never_a_panic_or_nothing() {
    let project = project_with_history();
    let intact = runs_of(project.path());
    assert_eq!(intact.len(), 3, "{intact:?}");
    let work = tempfile::tempdir().unwrap();
    let mut refused = 0;
    let cases = damages();
    assert!(cases.len() >= 20, "{} damages", cases.len());
    for (index, (what, damage)) in cases.iter().enumerate() {
        let copy = work.path().join(format!("case{index}"));
        copy_dir(project.path(), &copy);
        damage(&copy.join(".sluice/store"));
        let out = sluice_in(&copy, &["runs", "--local", "--json"], &[]);
        let (stdout, stderr) = text(&out);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
            "{what}: a panic reached the user:\n{stderr}"
        );
        if out.status.success() {
            let runs: Vec<Value> = serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("{what}: not JSON ({e}):\n{stdout}"));
            assert_eq!(
                runs, intact,
                "{what}: sluice answered with a history that is not the store's"
            );
        } else {
            refused += 1;
            assert_eq!(out.status.code(), Some(2), "{what}:\n{stderr}");
            assert!(
                stderr.contains("error: the store at ")
                    && stderr.contains("is damaged: ")
                    && stderr.contains("sluice has written nothing to it")
                    && stderr.contains("sluice store restore FILE"),
                "{what}: the error must say what was found and what to do:\n{stderr}"
            );
            assert_eq!(
                stderr.trim().lines().count(),
                1,
                "{what}: one clear line, no log noise from sled:\n{stderr}"
            );
        }
    }
    assert!(
        refused >= cases.len() / 2,
        "only {refused} of {} damages were refused: the damages do not reach the store",
        cases.len()
    );
}

#[test]
fn item07_a_backup_restored_into_a_new_state_directory_gives_back_runs_events_and_approvals() {
    let project = project_with_history();
    let history = history_of(project.path());
    assert!(
        history
            .iter()
            .any(|r| r["approvals"].as_array().is_some_and(|a| a.len() == 1)),
        "the history has prod's approval"
    );
    let files = tempfile::tempdir().unwrap();
    let backup = files.path().join("sluice-backup.jsonl");
    let backup_arg = backup.to_str().unwrap();

    let out = project.run_ok(&["store", "backup", backup_arg]);
    assert!(
        text(&out).0.starts_with("backed up ") && text(&out).0.contains(backup_arg),
        "{}",
        output_text(&out)
    );
    let first = std::fs::read_to_string(&backup).unwrap();
    let header: Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert_eq!(header["sluice_store_backup"], 1, "{header}");
    assert_eq!(header["counts"]["runs"], 3, "{header}");

    // Into a new state directory.
    let fresh = example_project();
    let out = fresh.run_ok(&["store", "restore", backup_arg]);
    assert!(
        text(&out).0.starts_with("restored "),
        "{}",
        output_text(&out)
    );
    assert_eq!(history_of(fresh.path()), history);

    // Over a store with records: refused, then with --force moved aside, never deleted.
    let out = fresh.run(&["store", "restore", backup_arg]);
    assert_exit_code(&out, 1);
    assert!(
        text(&out).1.contains("restoring over it needs --force"),
        "{}",
        output_text(&out)
    );
    let out = fresh.run_ok(&["store", "restore", backup_arg, "--force"]);
    let (stdout, _) = text(&out);
    let aside = stdout
        .lines()
        .find_map(|l| l.strip_prefix("the store it replaced is kept at "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(fresh.path().join(aside).join("db").exists(), "{aside}");
    assert_eq!(history_of(fresh.path()), history);

    // A damaged backup restores nothing.
    let cut = files.path().join("cut.jsonl");
    let lines: Vec<&str> = first.lines().collect();
    std::fs::write(&cut, lines[..lines.len() - 1].join("\n")).unwrap();
    let other = example_project();
    let out = other.run(&["store", "restore", cut.to_str().unwrap()]);
    assert_exit_code(&out, 2);
    assert!(
        text(&out).1.contains("do not add up to the header"),
        "{}",
        output_text(&out)
    );
    assert!(!other.path().join(".sluice/store").exists());

    // While a daemon holds the store, the backup goes through its API (admin only).
    write_tokens(
        &project,
        &[
            ("ops", ADMIN, "\"*\" = \"admin\""),
            ("watcher", VIEWER, "\"*\" = \"viewer\""),
        ],
    );
    let settings = "migrations = \"migrations\"\nstate_dir = \".sluice\"\n[daemon]\ntokens_file = \"tokens.toml\"\nwatch_interval = \"0s\"\n";
    std::fs::write(project.path().join("sluice.toml"), settings).unwrap();
    let daemon = Daemon::start(&project, &[]);
    // The CLI finds the daemon where `[daemon] listen` says, once the store is held.
    let listen = daemon.base.trim_start_matches("http://");
    std::fs::write(
        project.path().join("sluice.toml"),
        format!("{settings}listen = \"{listen}\"\n"),
    )
    .unwrap();
    let (status, _) = daemon.get("/v1/store/backup", Some(VIEWER));
    assert_eq!(status, 403);
    let viewer = sluice_in(
        project.path(),
        &["store", "backup", "-"],
        &[("SLUICE_TOKEN", VIEWER)],
    );
    assert!(!viewer.status.success(), "{}", output_text(&viewer));
    assert!(
        text(&viewer).1.contains("admin"),
        "{}",
        output_text(&viewer)
    );
    let served = files.path().join("served.jsonl");
    let out = sluice_in(
        project.path(),
        &["store", "backup", served.to_str().unwrap()],
        &[("SLUICE_TOKEN", ADMIN)],
    );
    assert_success(&out);
    drop(daemon);
    let third = example_project();
    third.run_ok(&["store", "restore", served.to_str().unwrap()]);
    let restored: Vec<Value> = history_of(third.path());
    assert_eq!(
        restored.iter().map(|r| &r["id"]).collect::<Vec<_>>(),
        history.iter().map(|r| &r["id"]).collect::<Vec<_>>()
    );
    for (after, before) in restored.iter().zip(&history) {
        assert_eq!(after["approvals"], before["approvals"]);
        assert_eq!(after["transitions"], before["transitions"]);
        assert_eq!(after["events"], before["events"]);
    }
}
