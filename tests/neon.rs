//! The Neon snapshot provider, driven through the library exactly as sluice drives it, against
//! a stateful fake of the Neon API (`neon_fake`): create, list, restore, delete, their retries
//! after an interruption, and the faults Neon produces (423, 429, 5xx, lost answers, failed
//! and endless operations, a wrong API key).
//!
//! The `prism_*` tests run the same flows through `prism proxy --errors`, which checks every
//! request and every answer against Neon's official OpenAPI spec. They need the Prism CLI:
//! `export SLUICE_PRISM=$(bash scripts/ci-prism.sh)`, then
//! `cargo test --test neon -- --ignored`. The spec is read from `../shared/neon/` beside the
//! checkout, or from `SLUICE_NEON_SPEC`.

mod neon_fake;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use neon_fake::{Endpoint, FakeNeon, Fault, ENV_BRANCH};
use serde_json::json;
use sluice::config::{Environment, ProviderConfig};
use sluice::snapshot::neon::NeonSnapshots;
use sluice::snapshot::{NoHazards, Progress, SnapshotKind, SnapshotProvider};
use sluice::Error;

const PROJECT: &str = "proj-1";
const RUN: &str = "0F8E3A2C-1B4D-4E5F-8A9B-0C1D2E3F4A5B";
const TOKEN: &str = "0f8e3a2c1b4d";

fn snap_name() -> String {
    format!("sluice-snap-{ENV_BRANCH}-{TOKEN}")
}

fn preserved_name() -> String {
    format!("sluice-failed-{ENV_BRANCH}-{TOKEN}")
}

fn new_key() -> String {
    format!("neon-test-key-{}", uuid::Uuid::new_v4().simple())
}

/// Collects progress lines.
#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

impl Progress for Lines {
    fn update(&self, message: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message.to_string());
    }
}

impl Lines {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn contain(&self, needle: &str) -> bool {
        self.all().iter().any(|l| l.contains(needle))
    }
}

/// An environment file as a user writes it, with the API key in a file beside it.
fn environment(dir: &std::path::Path, base_url: &str, key: &str, timeout: &str) -> Environment {
    std::fs::write(dir.join("neon-key"), format!("{key}\n")).expect("write the key file");
    let text = format!(
        r#"url_env = "DATABASE_URL"
[snapshot]
provider = "neon"
project_id = "{PROJECT}"
branch_id = "{ENV_BRANCH}"
api_key_file = "neon-key"
base_url = "{base_url}"
timeout = "{timeout}"
poll_interval = "10ms"
"#
    );
    Environment::parse(
        "staging",
        &dir.join("environments/staging.toml"),
        &text,
        dir,
    )
    .expect("the environment parses")
}

fn provider_for(env: &Environment) -> NeonSnapshots {
    let snapshot = env.snapshot.as_ref().expect("a [snapshot] section");
    let ProviderConfig::Neon(neon) = &snapshot.provider else {
        panic!("expected the neon provider, got {:?}", snapshot.provider);
    };
    NeonSnapshots::new(env, neon, snapshot).expect("the provider builds")
}

/// A fake, a provider pointed at it (directly or through a proxy), and the secrets that must
/// never show up in an error or a progress line.
struct Harness {
    fake: FakeNeon,
    provider: NeonSnapshots,
    lines: Lines,
    secrets: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn start(timeout: &str) -> Harness {
        let key = new_key();
        let fake = FakeNeon::start(PROJECT, &key);
        let url = fake.url.clone();
        Harness::with(fake, &url, &key, timeout)
    }

    fn with(fake: FakeNeon, base_url: &str, key: &str, timeout: &str) -> Harness {
        let dir = tempfile::tempdir().expect("a temp dir");
        let env = environment(dir.path(), base_url, key, timeout);
        let provider = provider_for(&env);
        let mut secrets = vec![key.to_string()];
        let fake_key = fake.state().api_key.clone();
        if !secrets.contains(&fake_key) {
            secrets.push(fake_key);
        }
        Harness {
            fake,
            provider,
            lines: Lines::default(),
            secrets,
            _dir: dir,
        }
    }

    /// The error's text, after checking it holds no secret.
    fn text(&self, err: &Error) -> String {
        let text = err.to_string();
        for secret in &self.secrets {
            assert!(
                !text.contains(secret.as_str()),
                "an error leaks the API key: {text}"
            );
        }
        text
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        for line in self.lines.all() {
            for secret in &self.secrets {
                assert!(
                    !line.contains(secret.as_str()),
                    "a progress line leaks the API key: {line}"
                );
            }
        }
    }
}

/// Create, create again, list, restore, restore again, list, delete: the whole life of a
/// snapshot, checked against the fake's state after each step.
async fn happy_path(h: &Harness) {
    let p = &h.provider;
    let name = snap_name();
    let preserved = preserved_name();
    assert_eq!(p.kind(), "neon");
    assert_eq!(p.snapshot_name(RUN), name);

    let snap = p
        .create(RUN, &h.lines, &NoHazards)
        .await
        .unwrap_or_else(|e| panic!("create: {}", h.text(&e)));
    assert_eq!(snap.name, name);
    assert_eq!(snap.kind, SnapshotKind::Snapshot);
    assert_eq!(snap.run.as_deref(), Some(TOKEN));
    assert_eq!(snap.status, "ready");
    assert!(snap.created_at.is_some());
    let snap_id = {
        let s = h.fake.state();
        let made = s.named(&name);
        assert_eq!(made.len(), 1, "exactly one snapshot branch");
        assert_eq!(made[0].parent_id.as_deref(), Some(ENV_BRANCH));
        assert_eq!(made[0].data, "v1");
        assert_eq!(made[0].current_state, "ready");
        assert_eq!(
            s.create_bodies,
            vec![json!({ "branch": { "parent_id": ENV_BRANCH, "name": name } })],
            "one create, from the environment's branch, without endpoints"
        );
        made[0].id.clone()
    };
    assert!(
        h.lines.contain("waiting for Neon operation") && h.lines.contain("(create_timeline)"),
        "{:#?}",
        h.lines.all()
    );

    let again = p
        .create(RUN, &h.lines, &NoHazards)
        .await
        .unwrap_or_else(|e| panic!("create again: {}", h.text(&e)));
    assert_eq!(again.name, name);
    assert_eq!(
        h.fake.state().named(&name).len(),
        1,
        "a second create makes no second branch"
    );
    assert_eq!(h.fake.state().create_bodies.len(), 1);

    let listed = p
        .list()
        .await
        .unwrap_or_else(|e| panic!("list: {}", h.text(&e)));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, name);
    assert_eq!(listed[0].kind, SnapshotKind::Snapshot);

    // The migration breaks the environment.
    if let Some(env) = h.fake.state().branch_mut(ENV_BRANCH) {
        env.data = "v2-broken".into();
    }

    let restored = p
        .restore(&name, RUN, &h.lines, &NoHazards)
        .await
        .unwrap_or_else(|e| panic!("restore: {}", h.text(&e)));
    assert_eq!(restored.snapshot, name);
    assert_eq!(restored.preserved_as, preserved);
    {
        let s = h.fake.state();
        let env = s
            .branch(ENV_BRANCH)
            .expect("the environment's branch keeps its id");
        assert_eq!(
            env.data, "v1",
            "the environment carries the snapshot's state"
        );
        assert_eq!(env.current_state, "ready");
        let kept = s.named(&preserved);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].data, "v2-broken", "the replaced state is kept");
        assert_eq!(
            s.restore_bodies,
            vec![json!({ "source_branch_id": snap_id, "preserve_under_name": preserved })]
        );
    }

    let again = p
        .restore(&name, RUN, &h.lines, &NoHazards)
        .await
        .unwrap_or_else(|e| panic!("restore again: {}", h.text(&e)));
    assert_eq!(again.preserved_as, preserved);
    {
        let s = h.fake.state();
        assert_eq!(
            s.restore_bodies.len(),
            1,
            "a repeated restore sends nothing"
        );
        assert_eq!(s.named(&preserved).len(), 1);
        assert_eq!(s.branch(ENV_BRANCH).map(|b| b.data.as_str()), Some("v1"));
    }

    let listed = p
        .list()
        .await
        .unwrap_or_else(|e| panic!("list: {}", h.text(&e)));
    let seen: Vec<(&str, SnapshotKind, Option<&str>)> = listed
        .iter()
        .map(|s| (s.name.as_str(), s.kind, s.run.as_deref()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (name.as_str(), SnapshotKind::Snapshot, Some(TOKEN)),
            (preserved.as_str(), SnapshotKind::Preserved, Some(TOKEN)),
        ],
        "oldest first"
    );
    assert!(listed
        .iter()
        .all(|s| s.status == "ready" && s.created_at.is_some()));

    // The snapshot now hangs off the preserved branch, so it goes first.
    p.delete(&name)
        .await
        .unwrap_or_else(|e| panic!("delete: {}", h.text(&e)));
    assert!(h.fake.state().named(&name).is_empty());
    p.delete(&preserved)
        .await
        .unwrap_or_else(|e| panic!("delete preserved: {}", h.text(&e)));
    assert!(h.fake.state().named(&preserved).is_empty());
    p.delete(&name)
        .await
        .unwrap_or_else(|e| panic!("deleting what is gone: {}", h.text(&e)));
    assert!(p.list().await.expect("list").is_empty());
    let s = h.fake.state();
    assert!(
        s.branch(ENV_BRANCH).is_some() && s.named("dev").len() == 1,
        "nothing else was touched"
    );
}

#[tokio::test]
async fn a_snapshot_lives_through_create_list_restore_and_delete() {
    let h = Harness::start("1m");
    happy_path(&h).await;
    let s = h.fake.state();
    assert_eq!(s.count("POST", "/branches"), 1);
    assert_eq!(s.count("POST", "/restore"), 1);
    assert_eq!(s.count("DELETE", ""), 2);
}

#[tokio::test]
async fn the_library_builds_the_neon_provider_from_the_environment() {
    let key = new_key();
    let fake = FakeNeon::start(PROJECT, &key);
    let dir = tempfile::tempdir().expect("a temp dir");
    let env = environment(dir.path(), &fake.url, &key, "1m");
    let provider = sluice::snapshot::provider_for(&env)
        .await
        .expect("the provider");
    assert_eq!(provider.kind(), "neon");
    assert!(provider.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn locked_rate_limited_and_unavailable_answers_are_retried() {
    let h = Harness::start("1m");
    h.fake.inject(Endpoint::CreateBranch, Fault::Locked, 3);
    h.fake.inject(
        Endpoint::GetOperation,
        Fault::RateLimited { retry_after: None },
        2,
    );
    h.fake
        .inject(Endpoint::ListBranches, Fault::Unavailable(503), 2);
    h.fake.inject(Endpoint::ListOperations, Fault::Locked, 1);
    h.fake
        .inject(Endpoint::GetBranch, Fault::Unavailable(500), 1);
    h.fake.inject(Endpoint::Restore, Fault::Locked, 2);
    h.fake.inject(
        Endpoint::Restore,
        Fault::RateLimited { retry_after: None },
        1,
    );
    h.fake.inject(Endpoint::DeleteBranch, Fault::Locked, 2);
    happy_path(&h).await;
    let s = h.fake.state();
    assert_eq!(
        s.count("POST", "/branches"),
        4,
        "three refusals, then the create"
    );
    assert_eq!(
        s.count("POST", "/restore"),
        4,
        "three refusals, then the restore"
    );
    drop(s);
    assert!(h.lines.contain("423 Locked"), "{:#?}", h.lines.all());
    assert!(h.lines.contain("429 Too Many Requests"));
    assert!(h.lines.contain("503 Service Unavailable"));
    assert!(h.lines.contain("retrying in"));
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let h = Harness::start("1m");
    h.fake.inject(
        Endpoint::CreateBranch,
        Fault::RateLimited {
            retry_after: Some(1),
        },
        1,
    );
    let started = Instant::now();
    h.provider
        .create(RUN, &h.lines, &NoHazards)
        .await
        .expect("create");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(h.lines.contain("retrying in 1.0s"), "{:#?}", h.lines.all());
    assert_eq!(h.fake.state().named(&snap_name()).len(), 1);
}

#[tokio::test]
async fn a_failed_operation_is_a_clear_error() {
    let h = Harness::start("1m");
    h.fake
        .inject(Endpoint::CreateBranch, Fault::FailOperations, 1);
    let err = h
        .provider
        .create(RUN, &h.lines, &NoHazards)
        .await
        .expect_err("the operation fails");
    assert!(matches!(err, Error::Snapshot(_)), "{err:?}");
    let text = h.text(&err);
    let op_id = h.fake.state().operations[0].id.clone();
    for needle in [
        op_id.as_str(),
        "(create_timeline)",
        "`failed`",
        "pageserver did not answer (injected failure)",
        PROJECT,
    ] {
        assert!(text.contains(needle), "`{needle}` missing from: {text}");
    }
}

#[tokio::test]
async fn a_lost_create_answer_leaves_exactly_one_branch() {
    for fault in [Fault::LostResponse, Fault::DropConnection] {
        let h = Harness::start("1m");
        h.fake.inject(Endpoint::CreateBranch, fault.clone(), 1);
        let snap = h
            .provider
            .create(RUN, &h.lines, &NoHazards)
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: {}", h.text(&e)));
        assert_eq!(
            snap.status, "ready",
            "{fault:?}: the pending operation was awaited"
        );
        let s = h.fake.state();
        assert_eq!(s.named(&snap_name()).len(), 1, "{fault:?}");
        assert_eq!(
            s.count("POST", "/branches"),
            1,
            "{fault:?}: checked, not re-sent"
        );
        assert_eq!(
            s.branch(&s.named(&snap_name())[0].id)
                .map(|b| b.current_state.as_str()),
            Some("ready")
        );
        drop(s);
        assert!(
            h.lines.contain("may or may not have been created"),
            "{:#?}",
            h.lines.all()
        );
        assert!(h.lines.contain("already exists"), "{:#?}", h.lines.all());
        assert!(
            h.lines.contain("waiting for Neon operation"),
            "{:#?}",
            h.lines.all()
        );
    }
}

#[tokio::test]
async fn a_create_refused_with_5xx_before_acting_is_sent_again() {
    let h = Harness::start("1m");
    h.fake
        .inject(Endpoint::CreateBranch, Fault::Unavailable(502), 1);
    h.provider
        .create(RUN, &h.lines, &NoHazards)
        .await
        .expect("create");
    let s = h.fake.state();
    assert_eq!(
        s.count("POST", "/branches"),
        2,
        "checked, found nothing, sent again"
    );
    assert_eq!(s.named(&snap_name()).len(), 1);
}

#[tokio::test]
async fn a_lost_restore_answer_is_not_sent_twice() {
    for fault in [Fault::LostResponse, Fault::DropConnection] {
        let h = Harness::start("1m");
        h.provider
            .create(RUN, &h.lines, &NoHazards)
            .await
            .expect("create");
        if let Some(env) = h.fake.state().branch_mut(ENV_BRANCH) {
            env.data = "v2-broken".into();
        }
        h.fake.inject(Endpoint::Restore, fault.clone(), 1);
        let restored = h
            .provider
            .restore(&snap_name(), RUN, &h.lines, &NoHazards)
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: {}", h.text(&e)));
        assert_eq!(restored.preserved_as, preserved_name());
        let s = h.fake.state();
        assert_eq!(s.count("POST", "/restore"), 1, "{fault:?}");
        assert_eq!(s.named(&preserved_name()).len(), 1);
        assert_eq!(s.named(&preserved_name())[0].data, "v2-broken");
        let env = s.branch(ENV_BRANCH).expect("env branch");
        assert_eq!(
            (env.data.as_str(), env.current_state.as_str()),
            ("v1", "ready"),
            "{fault:?}"
        );
    }
}

#[tokio::test]
async fn a_lost_delete_answer_is_retried_and_meets_204() {
    let h = Harness::start("1m");
    h.provider
        .create(RUN, &h.lines, &NoHazards)
        .await
        .expect("create");
    h.fake
        .inject(Endpoint::DeleteBranch, Fault::LostResponse, 1);
    h.provider.delete(&snap_name()).await.expect("delete");
    let s = h.fake.state();
    assert_eq!(s.count("DELETE", ""), 2);
    assert!(s.named(&snap_name()).is_empty());
}

#[tokio::test]
async fn the_deadline_ends_a_wait_with_a_clear_error() {
    let h = Harness::start("400ms");
    h.fake
        .inject(Endpoint::CreateBranch, Fault::StuckOperations, 1);
    let started = Instant::now();
    let err = h
        .provider
        .create(RUN, &h.lines, &NoHazards)
        .await
        .expect_err("never finishes");
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = h.text(&err);
    let op_id = h.fake.state().operations[0].id.clone();
    for needle in [
        "timed out after 400ms",
        op_id.as_str(),
        "(create_timeline)",
        "`running`",
        "snapshot.timeout",
        "staging.toml",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from: {text}");
    }
}

#[tokio::test]
async fn the_deadline_ends_retries_with_a_clear_error() {
    let h = Harness::start("500ms");
    h.fake.inject(Endpoint::CreateBranch, Fault::Locked, 10_000);
    let started = Instant::now();
    let err = h
        .provider
        .create(RUN, &h.lines, &NoHazards)
        .await
        .expect_err("always locked");
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = h.text(&err);
    for needle in [
        "POST /projects/proj-1/branches",
        "423 Locked",
        "gave up after",
        "snapshot.timeout",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from: {text}");
    }
    assert!(h.fake.state().create_bodies.is_empty());
}

#[tokio::test]
async fn a_wrong_api_key_is_refused_without_repeating_it() {
    let right = new_key();
    let wrong = new_key();
    let fake = FakeNeon::start(PROJECT, &right);
    let url = fake.url.clone();
    let h = Harness::with(fake, &url, &wrong, "1m");
    let errors = vec![
        h.provider.list().await.expect_err("list"),
        h.provider
            .create(RUN, &h.lines, &NoHazards)
            .await
            .expect_err("create"),
        h.provider
            .restore(&snap_name(), RUN, &h.lines, &NoHazards)
            .await
            .expect_err("restore"),
        h.provider.delete(&snap_name()).await.expect_err("delete"),
    ];
    for err in &errors {
        let text = h.text(err);
        for needle in [
            "401 Unauthorized",
            "GET /projects/proj-1/branches",
            "authentication failed",
            "api_key_file",
        ] {
            assert!(text.contains(needle), "`{needle}` missing from: {text}");
        }
    }
    assert_eq!(h.fake.state().requests.len(), 4, "a 401 is not retried");
}

#[tokio::test]
async fn restoring_a_snapshot_that_does_not_exist_is_refused() {
    let h = Harness::start("1m");
    let err = h
        .provider
        .restore("sluice-snap-nothere", RUN, &h.lines, &NoHazards)
        .await
        .expect_err("no such snapshot");
    let text = h.text(&err);
    assert!(
        text.contains("no branch named `sluice-snap-nothere`"),
        "{text}"
    );
    assert!(h.fake.state().restore_bodies.is_empty());
}

#[tokio::test]
async fn delete_refuses_branches_sluice_did_not_make() {
    let h = Harness::start("1m");
    let err = h.provider.delete("main").await.expect_err("main");
    assert!(h
        .text(&err)
        .contains("refusing to delete Neon branch `main`"));
    assert!(
        h.fake.state().requests.is_empty(),
        "refused before asking Neon"
    );

    // Even under a sluice name, the environment's own branch is never deleted.
    if let Some(env) = h.fake.state().branch_mut(ENV_BRANCH) {
        env.name = format!("sluice-snap-{ENV_BRANCH}-env");
    }
    let err = h
        .provider
        .delete(&format!("sluice-snap-{ENV_BRANCH}-env"))
        .await
        .expect_err("env branch");
    assert!(h.text(&err).contains("environment's own branch"), "{err}");
    let s = h.fake.state();
    assert!(s.branch(ENV_BRANCH).is_some());
    assert_eq!(s.count("DELETE", ""), 0);
}

#[tokio::test]
async fn a_restore_moves_children_to_the_preserved_branch_which_then_cannot_be_deleted() {
    let h = Harness::start("1m");
    let feature = h
        .fake
        .state()
        .add_branch("feature-x", Some(ENV_BRANCH), "v1 + feature");
    h.provider
        .create(RUN, &h.lines, &NoHazards)
        .await
        .expect("create");
    h.provider
        .restore(&snap_name(), RUN, &h.lines, &NoHazards)
        .await
        .expect("restore");
    {
        // Neon moves every child of the restored branch, the snapshot included, under the
        // branch that keeps the replaced state.
        let s = h.fake.state();
        let kept = s.named(&preserved_name())[0].id.clone();
        assert_eq!(
            s.branch(&feature).and_then(|b| b.parent_id.clone()),
            Some(kept.clone())
        );
        assert_eq!(s.named(&snap_name())[0].parent_id, Some(kept));
    }
    h.provider
        .delete(&snap_name())
        .await
        .expect("the snapshot has no children");
    let err = h
        .provider
        .delete(&preserved_name())
        .await
        .expect_err("feature-x hangs off it");
    let text = h.text(&err);
    assert!(
        text.contains("DELETE /projects/proj-1/branches/br-fake-"),
        "{text}"
    );
    assert!(
        text.contains("400 Bad Request: cannot delete a branch that has child branches"),
        "{text}"
    );
}

#[tokio::test]
async fn listing_follows_pages() {
    let h = Harness::start("1m");
    h.fake.state().page_cap = 2;
    let runs = ["aaaaaaaa-0001", "bbbbbbbb-0002", "cccccccc-0003"];
    for run in runs {
        h.provider
            .create(run, &h.lines, &NoHazards)
            .await
            .expect("create");
    }
    let listed = h.provider.list().await.expect("list");
    let names: Vec<&str> = listed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("sluice-snap-{ENV_BRANCH}-aaaaaaaa0001"),
            format!("sluice-snap-{ENV_BRANCH}-bbbbbbbb0002"),
            format!("sluice-snap-{ENV_BRANCH}-cccccccc0003")
        ]
    );
    assert!(listed.windows(2).all(|w| w[0].created_at < w[1].created_at));
    // A create for the first run finds its branch again, wherever it sits in the pages.
    h.provider
        .create(runs[0], &h.lines, &NoHazards)
        .await
        .expect("create again");
    assert_eq!(h.fake.state().create_bodies.len(), 3);
}

#[tokio::test]
async fn fields_the_spec_requires_but_sluice_does_not_read_may_be_missing() {
    let h = Harness::start("1m");
    h.provider
        .create(RUN, &h.lines, &NoHazards)
        .await
        .expect("create");
    h.fake.inject(Endpoint::ListBranches, Fault::ViolateSpec, 1);
    assert_eq!(h.provider.list().await.expect("list").len(), 1);
}

#[test]
fn configuration_problems_are_config_errors() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let base = |extra: &str| {
        format!(
            "url_env = \"DATABASE_URL\"\n[snapshot]\nprovider = \"neon\"\nbase_url = \"http://127.0.0.1:9\"\n{extra}"
        )
    };
    let build = |text: String| {
        let env = Environment::parse(
            "prod",
            &dir.path().join("environments/prod.toml"),
            &text,
            dir.path(),
        )
        .expect("parses");
        let snapshot = env.snapshot.clone().expect("snapshot");
        let ProviderConfig::Neon(neon) = &snapshot.provider else {
            panic!("neon expected");
        };
        NeonSnapshots::new(&env, neon, &snapshot).map(|_| ())
    };
    let err = build(base(
        "project_id = \"proj-1\"\nbranch_id = \"br-1\"\napi_key_env = \"SLUICE_SURELY_UNSET_NEON_KEY\"\n",
    ))
    .expect_err("unset variable");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(
        err.to_string().contains("SLUICE_SURELY_UNSET_NEON_KEY"),
        "{err}"
    );

    std::fs::write(dir.path().join("key"), "k\n").expect("key file");
    let err = build(base(
        "project_id = \"Proj_1\"\nbranch_id = \"br-1\"\napi_key_file = \"key\"\n",
    ))
    .expect_err("bad project id");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("key `snapshot.project_id`: `Proj_1` is not a Neon id"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Through `prism proxy --errors`: every request and answer checked against the official spec.

/// Prism, proxying to an upstream, killed when dropped (also when a test panics).
struct Prism {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn spec_path() -> PathBuf {
    let path = std::env::var_os("SLUICE_NEON_SPEC")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/neon/neon-openapi.yaml")
        });
    assert!(
        path.is_file(),
        "Neon's OpenAPI spec is not at {}; put ../shared beside the checkout or set SLUICE_NEON_SPEC",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Prism {
    fn start(upstream: &str) -> Prism {
        let bin = std::env::var_os("SLUICE_PRISM").unwrap_or_else(|| {
            panic!(
                "SLUICE_PRISM is not set: it must name the prism binary (npm @stoplight/prism-cli); \
                 `export SLUICE_PRISM=$(bash scripts/ci-prism.sh)` installs one"
            )
        });
        let spec = spec_path();
        let port = free_port();
        let dir = tempfile::tempdir().expect("a temp dir");
        let log = dir.path().join("prism.log");
        let out = std::fs::File::create(&log).expect("prism log");
        let err = out.try_clone().expect("prism log");
        let child = Command::new(&bin)
            .args([
                "proxy",
                "--errors",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .arg(&spec)
            .arg(upstream)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start prism at {}: {e}",
                    PathBuf::from(&bin).display()
                )
            });
        let mut prism = Prism {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = prism.child.try_wait() {
                panic!(
                    "prism exited ({status}) before listening:\n{}",
                    prism.log_text()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return prism;
            }
            assert!(
                Instant::now() < deadline,
                "prism did not listen on {addr} within 120s:\n{}",
                prism.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Prism {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- prism log ---\n{}", self.log_text());
        }
    }
}

/// A fake behind prism, and a provider talking to prism.
fn behind_prism(timeout: &str) -> (Harness, Prism) {
    let key = new_key();
    let fake = FakeNeon::start(PROJECT, &key);
    let prism = Prism::start(&fake.url);
    let url = prism.url.clone();
    (Harness::with(fake, &url, &key, timeout), prism)
}

#[tokio::test]
#[ignore = "needs prism (npm @stoplight/prism-cli); .ci/run provides it"]
async fn prism_the_whole_life_of_a_snapshot_conforms_to_the_spec() {
    let (h, _prism) = behind_prism("2m");
    happy_path(&h).await;
}

#[tokio::test]
#[ignore = "needs prism (npm @stoplight/prism-cli); .ci/run provides it"]
async fn prism_fault_answers_conform_to_the_spec() {
    // 423, 429 with Retry-After, 503, lost answers (502) and a 204 for a branch already gone:
    // the spec documents them all through the `default` GeneralError answer (and 204 on DELETE).
    let (h, prism) = behind_prism("2m");
    h.fake.inject(Endpoint::CreateBranch, Fault::Locked, 2);
    h.fake.inject(
        Endpoint::GetOperation,
        Fault::RateLimited {
            retry_after: Some(1),
        },
        1,
    );
    h.fake
        .inject(Endpoint::ListBranches, Fault::Unavailable(503), 1);
    h.fake.inject(Endpoint::Restore, Fault::LostResponse, 1);
    h.fake
        .inject(Endpoint::DeleteBranch, Fault::LostResponse, 1);
    happy_path(&h).await;
    assert!(h.lines.contain("423 Locked") && h.lines.contain("429 Too Many Requests"));
    assert_eq!(h.fake.state().count("POST", "/restore"), 1);

    // A failed operation (status `failed` with its `error`) passes the proxy and is reported.
    h.fake
        .inject(Endpoint::CreateBranch, Fault::FailOperations, 1);
    let err = h
        .provider
        .create("dddddddd-0004", &h.lines, &NoHazards)
        .await
        .expect_err("fails");
    assert!(h.text(&err).contains("pageserver did not answer"), "{err}");

    // So does a 401 for a wrong key.
    let fake_url = h.fake.url.clone();
    let dir = tempfile::tempdir().expect("a temp dir");
    let wrong = new_key();
    let env = environment(dir.path(), &prism.url, &wrong, "1m");
    let err = provider_for(&env).list().await.expect_err("401");
    let text = err.to_string();
    assert!(
        text.contains("401 Unauthorized") && text.contains("authentication failed"),
        "{text}"
    );
    assert!(!text.contains(&wrong), "{text}");
    assert_ne!(fake_url, prism.url);
}

#[tokio::test]
#[ignore = "needs prism (npm @stoplight/prism-cli); .ci/run provides it"]
async fn prism_rejects_answers_that_break_the_spec() {
    let (h, prism) = behind_prism("1m");
    h.provider
        .create(RUN, &h.lines, &NoHazards)
        .await
        .expect("create");
    h.fake
        .inject(Endpoint::ListBranches, Fault::ViolateSpec, 10_000);

    // The proxy itself says what is wrong.
    let key = h.fake.state().api_key.clone();
    let raw = reqwest::Client::new()
        .get(format!("{}/projects/{PROJECT}/branches", prism.url))
        .bearer_auth(&key)
        .send()
        .await
        .expect("prism answers");
    assert_eq!(raw.status().as_u16(), 500);
    let violations = raw
        .headers()
        .get("sl-violations")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        violations.contains("data_transfer_bytes"),
        "sl-violations: {violations}"
    );

    // sluice's call fails through the proxy (after retrying the 500 until its deadline),
    // naming the violation...
    let dir = tempfile::tempdir().expect("a temp dir");
    let proxied = provider_for(&environment(dir.path(), &prism.url, &key, "2s"));
    let err = proxied.list().await.expect_err("prism refuses the answer");
    let text = h.text(&err);
    assert!(text.contains("500 Internal Server Error"), "{text}");
    assert!(text.contains("data_transfer_bytes"), "{text}");

    // ...while the same answer, straight from the fake, is one sluice can read: the failure
    // above is the proxy's validation, not sluice's parsing.
    let direct = provider_for(&environment(dir.path(), &h.fake.url, &key, "2s"));
    assert_eq!(
        direct
            .list()
            .await
            .expect("sluice reads the answer itself")
            .len(),
        1
    );
}
