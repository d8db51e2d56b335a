//! Commands of the promotion ladder: `serve`, `promote`, `environments`, `runs`, `run`,
//! `approve`, `reject`, `cancel`, `resume`, `rollback`, `reload`, `token`. Each talks to a
//! running daemon, or with `--local` drives the same engine in this process against the files
//! and the store; the output is built from the same views either way.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use comfy_table::{presets, Table};
use serde_json::json;

use crate::api::auth::{generate_token, hash_token, parse_role_grant, render_entry};
use crate::client::Client;
use crate::config::Project;
use crate::daemon::{self, ServeOptions};
use crate::error::{Error, Result};
use crate::promote::engine::{Engine, EngineOptions, PromotionRequest};
use crate::promote::views::{environment_views, EnvironmentView, RunSummary, RunView};
use crate::store::records::{short_hash, GateKind};
use crate::store::{RunKind, RunPage, RunState, SledStore, Verification};

/// How a ladder command reaches the engine.
#[derive(Debug, Args, Clone)]
pub struct Connection {
    /// Work on the files and the store directly instead of talking to a daemon (fails while a
    /// daemon holds the store).
    #[arg(long)]
    pub local: bool,
    /// The daemon's URL (default: $SLUICE_URL, else http:// + `[daemon] listen`).
    #[arg(long, env = "SLUICE_URL")]
    pub server: Option<String>,
    /// A file holding the API token (default: $SLUICE_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Who acts with --local (default: $SLUICE_ACTOR, else $USER, else the OS user name); a daemon takes the token's name.
    #[arg(long)]
    pub by: Option<String>,
}

/// `sluice serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (default: `[daemon] listen` in sluice.toml, else 127.0.0.1:7407).
    #[arg(long)]
    pub listen: Option<String>,
    /// The file of hashed API tokens (default: `[daemon] tokens_file`).
    #[arg(long)]
    pub tokens: Option<PathBuf>,
}

/// `sluice promote`.
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The environment to bring to the release.
    #[arg(long)]
    pub to: String,
    /// Release hash or a unique prefix (default: the migrations directory's newest).
    #[arg(long)]
    pub release: Option<String>,
    /// Request only `--to`, not the environments upstream of it that lack the release.
    #[arg(long)]
    pub only: bool,
    /// Why: recorded with the runs.
    #[arg(long)]
    pub reason: Option<String>,
    /// Return once the runs are requested instead of following them.
    #[arg(long)]
    pub no_wait: bool,
    /// Machine-readable output (the runs as JSON at the end).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

/// One drift scan in a table cell: what it found and when.
fn describe_scan(scan: &crate::drift::scan::ScanRecord) -> String {
    let at = scan.at.format("%Y-%m-%d %H:%M");
    match (&scan.error, scan.differences) {
        (Some(_), _) => format!("check failed {at}"),
        (None, 0) => format!("clean {at}"),
        (None, n) => format!("{n} difference(s) {at}"),
    }
}

/// `sluice environments`.
#[derive(Debug, Args)]
pub struct EnvironmentsArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

/// `sluice runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only runs of this environment.
    #[arg(long)]
    pub env: Option<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

/// `sluice run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run id (from `sluice runs`).
    pub id: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

/// `sluice approve` / `resume`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// Run id.
    pub run: String,
    /// A comment recorded with the approval.
    #[arg(long)]
    pub comment: Option<String>,
    /// Return at once instead of following the run.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub connection: Connection,
}

/// `sluice reject` / `cancel`.
#[derive(Debug, Args)]
pub struct RejectArgs {
    /// Run id.
    pub run: String,
    /// Why: recorded with the decision.
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub connection: Connection,
}

/// `sluice resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Run id of a halted run.
    pub run: String,
    /// Return at once instead of following the run.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub connection: Connection,
}

/// `sluice rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The environment to put back where it was before its last promotion.
    #[arg(long)]
    pub env: String,
    /// Why: recorded with the run.
    #[arg(long)]
    pub reason: String,
    /// Return at once instead of following the run.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub connection: Connection,
}

/// `sluice reload`.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub connection: Connection,
}

/// `sluice token`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a new API token: prints it once, and the entry for the tokens file.
    New {
        /// Who the token stands for (recorded as the actor).
        #[arg(long)]
        name: String,
        /// A role per environment, e.g. `prod=approver` or `*=viewer` (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    /// Print the SHA-256 of a token read from stdin, for the tokens file.
    Hash,
}

/// Where ladder commands send their requests.
pub enum Backend {
    /// The engine in this process, on the files and the store.
    Local(Arc<Engine>),
    /// A running daemon.
    Remote(Client),
}

impl Connection {
    /// A client of the daemon at `--server` (default `$SLUICE_URL`, else `[daemon] listen`)
    /// with the token of `--token-file` or `$SLUICE_TOKEN`.
    pub fn client(&self, project: &Project) -> Result<Client> {
        let base = self
            .server
            .clone()
            .unwrap_or_else(|| format!("http://{}", project.daemon.listen));
        let token = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| Error::io(path, e))?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("SLUICE_TOKEN")
                .ok()
                .filter(|t| !t.trim().is_empty()),
        };
        Client::new(&base, token)
    }

    /// For commands that read or change the store itself (`snapshots`, `store backup`): the
    /// daemon to go through, if any. With `--local`, none; with `--server` (or `$SLUICE_URL`),
    /// that daemon; otherwise the daemon at `[daemon] listen` when another process holds the
    /// store (sled allows one at a time), else none: the command works on the store here.
    pub fn daemon_for_store(&self, project: &Project) -> Result<Option<Client>> {
        if self.local {
            return Ok(None);
        }
        if self.server.is_some() {
            return self.client(project).map(Some);
        }
        match SledStore::open_checked(&daemon::store_dir(project), Verification::Quick) {
            Ok(_) => Ok(None),
            Err(Error::StoreBusy { .. }) => self.client(project).map(Some),
            Err(err) => Err(err),
        }
    }

    /// This connection with `more`'s flags added (a subcommand's flags over its parent's).
    pub fn and(self, more: Connection) -> Connection {
        Connection {
            local: self.local || more.local,
            server: more.server.or(self.server),
            token_file: more.token_file.or(self.token_file),
            by: more.by.or(self.by),
        }
    }
}

impl Backend {
    /// Opens the engine locally or a client of the daemon.
    pub async fn open(project: &Project, connection: &Connection) -> Result<Backend> {
        if connection.local {
            let store = daemon::open_store(project)?;
            let engine = Engine::open(
                &project.root,
                Arc::new(store),
                EngineOptions {
                    tick: project.daemon.tick,
                    auto_promote: false,
                },
            )?;
            engine.recover().await?;
            return Ok(Backend::Local(engine));
        }
        Ok(Backend::Remote(connection.client(project)?))
    }

    async fn environments(&self) -> Result<Vec<EnvironmentView>> {
        match self {
            Backend::Local(engine) => environment_views(engine),
            Backend::Remote(client) => client.environments().await,
        }
    }

    async fn run(&self, id: &str) -> Result<RunView> {
        match self {
            Backend::Local(engine) => {
                let run = engine.run(id)?;
                let events = engine.store().run_events(&run.id)?;
                Ok(RunView::of(run, Some(events)))
            }
            Backend::Remote(client) => client.run(id).await,
        }
    }

    /// The newest release recorded.
    async fn head_release(&self) -> Result<Option<String>> {
        match self {
            Backend::Local(engine) => engine.store().head_release(),
            Backend::Remote(client) => client.head_release().await,
        }
    }

    /// Lets the local engine make progress (gates are evaluated by the caller's loop).
    async fn step(&self) -> Result<()> {
        if let Backend::Local(engine) = self {
            engine.tick().await?;
        }
        Ok(())
    }

    async fn finish(&self) {
        if let Backend::Local(engine) = self {
            engine.shutdown().await;
        }
    }
}

fn actor(connection: &Connection) -> String {
    super::actor(connection.by.clone())
}

/// `sluice serve`.
pub async fn serve(project: &Project, args: ServeArgs) -> Result<u8> {
    daemon::serve(
        &project.root,
        ServeOptions {
            listen: args.listen,
            tokens_file: args.tokens,
        },
    )
    .await?;
    Ok(0)
}

/// `sluice promote`.
pub async fn promote(project: &Project, args: PromoteArgs) -> Result<u8> {
    let backend = Backend::open(project, &args.connection).await?;
    let result = promote_with(&backend, &args).await;
    backend.finish().await;
    result
}

async fn promote_with(backend: &Backend, args: &PromoteArgs) -> Result<u8> {
    let ladder = !args.only;
    let requested = match backend {
        Backend::Local(engine) => engine
            .request_promotion(&PromotionRequest {
                to: args.to.clone(),
                release: args.release.clone(),
                ladder,
                actor: actor(&args.connection),
                reason: args.reason.clone(),
                origin: None,
            })
            .await
            .map(|runs| {
                runs.into_iter()
                    .map(|r| RunView::of(r, None))
                    .collect::<Vec<_>>()
            }),
        Backend::Remote(client) => {
            client
                .promote(
                    &args.to,
                    args.release.as_deref(),
                    ladder,
                    args.reason.as_deref(),
                )
                .await
        }
    };
    // A refusal because runs already bring the environments to the release (or they are on
    // it) is no failure for a pipeline: what matters is where the target ends up, so the
    // existing runs are followed like new ones.
    let (runs, refusal) = match requested {
        Ok(runs) => (runs, None),
        Err(Error::Conflict(why)) => (Vec::new(), Some(why)),
        Err(err) => return Err(err),
    };
    let release = match runs.first() {
        Some(run) => run.run.release.clone(),
        None => match (&args.release, backend.head_release().await?) {
            (Some(wanted), _) => wanted.to_ascii_lowercase(),
            (None, Some(head)) => head,
            (None, None) => return Err(Error::Conflict(refusal.unwrap_or_default())),
        },
    };
    if !args.json {
        for run in &runs {
            say!(
                "{:<8} {}  requested: release {}{}",
                run.run.environment,
                short_id(&run.run.id),
                short_hash(&run.run.release),
                run.run
                    .head
                    .as_deref()
                    .map(|h| format!(" (head {h})"))
                    .unwrap_or_default()
            );
        }
    }
    if args.no_wait {
        if let Some(why) = &refusal {
            say!("nothing requested: {why}");
        } else if args.json {
            say!(
                "{}",
                serde_json::to_string_pretty(&runs).unwrap_or_default()
            );
        }
        return Ok(0);
    }
    let views = backend.environments().await?;
    let chain = if ladder {
        chain_to(&views, &args.to)
    } else {
        vec![args.to.clone()]
    };
    let outcome = follow_release(backend, &chain, &release, args.json).await?;
    if outcome == 0 && runs.is_empty() && !args.json {
        if let Some(why) = refusal {
            say!("nothing to do: {why}");
        }
    }
    Ok(outcome)
}

/// The environments from the entry point of `to`'s ladder down to `to`, by the `from` links
/// the views carry.
fn chain_to(views: &[EnvironmentView], to: &str) -> Vec<String> {
    let mut chain = vec![to.to_string()];
    let mut current = to.to_string();
    while let Some(from) = views
        .iter()
        .find(|v| v.name == current)
        .and_then(|v| v.from.clone())
    {
        if chain.contains(&from) {
            break;
        }
        chain.push(from.clone());
        current = from;
    }
    chain.reverse();
    chain
}

fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// Whether a waiting run waits for an approval.
fn waits_for_approval(state: &RunState) -> bool {
    state.waits_for(GateKind::Approval)
}

/// Whether a run waits only for the environment upstream of it.
fn waits_only_upstream(state: &RunState) -> bool {
    matches!(state, RunState::Gated { gates }
        if !gates.is_empty() && gates.iter().all(|g| g.kind == GateKind::Upstream))
}

fn needs_person(state: &RunState) -> bool {
    waits_for_approval(state) || matches!(state, RunState::Halted { .. })
}

/// One environment on the way to the target, and the run that brings it to the release.
struct Leg {
    environment: String,
    run: Option<RunView>,
    printed: usize,
}

/// Follows every run that brings an environment of `chain` to `release` (new, existing, or
/// requested later by auto-promotion), printing each transition once, until the target is on
/// the release (0), a run on the way waits for an approval with nothing else moving (3), or
/// one rolled back, halted, was rejected or cancelled, or nothing will bring an environment
/// there (1).
async fn follow_release(
    backend: &Backend,
    chain: &[String],
    release: &str,
    json_out: bool,
) -> Result<u8> {
    let on_release =
        |v: &EnvironmentView| v.release.as_deref().is_some_and(|r| r.starts_with(release));
    let mut legs: Vec<Leg> = chain
        .iter()
        .map(|environment| Leg {
            environment: environment.clone(),
            run: None,
            printed: 0,
        })
        .collect();
    let mut quiet_rounds = 0;
    let code = loop {
        backend.step().await?;
        let views = backend.environments().await?;
        for leg in &mut legs {
            let Some(view) = views.iter().find(|v| v.name == leg.environment) else {
                return Err(Error::NotFound(format!(
                    "the daemon knows no environment `{}`",
                    leg.environment
                )));
            };
            let found = view
                .active_run
                .iter()
                .chain(view.waiting_runs.iter())
                .find(|r| r.release.starts_with(release) && r.kind == RunKind::Promotion)
                .map(|r| r.id.clone());
            let id = match (&leg.run, found) {
                (_, Some(id)) => Some(id),
                (Some(current), None) => Some(current.run.id.clone()),
                (None, None) => None,
            };
            if let Some(id) = id {
                let view = backend.run(&id).await?;
                if leg.run.as_ref().is_some_and(|r| r.run.id != view.run.id) {
                    leg.printed = 0;
                }
                if !json_out {
                    for transition in view.run.transitions.iter().skip(leg.printed) {
                        say!(
                            "{:<8} {}  {}",
                            view.run.environment,
                            short_id(&view.run.id),
                            transition.state.describe()
                        );
                    }
                }
                leg.printed = view.run.transitions.len();
                leg.run = Some(view);
            }
        }
        let target = legs
            .last()
            .and_then(|leg| views.iter().find(|v| v.name == leg.environment));
        let target_done = target.is_some_and(&on_release)
            && legs
                .last()
                .and_then(|leg| leg.run.as_ref())
                .is_none_or(|r| r.run.state == RunState::Succeeded);
        if target_done {
            break 0;
        }
        let failed = legs.iter().filter_map(|l| l.run.as_ref()).any(|r| {
            matches!(
                r.run.state,
                RunState::RolledBack { .. }
                    | RunState::Cancelled { .. }
                    | RunState::Rejected { .. }
                    | RunState::Halted { .. }
            )
        });
        if failed {
            break 1;
        }
        let approval = legs
            .iter()
            .filter_map(|l| l.run.as_ref())
            .any(|r| waits_for_approval(&r.run.state));
        let moving = legs.iter().any(|leg| match &leg.run {
            Some(r) => {
                let stopped = r.run.state.is_final()
                    || waits_for_approval(&r.run.state)
                    || (approval && waits_only_upstream(&r.run.state));
                !stopped
            }
            None => false,
        });
        if approval && !moving {
            break 3;
        }
        // An environment not on the release that no run brings there, once everything before
        // it is: nothing will move it (auto-promotion would have requested a run by now).
        let stranded = legs.iter().enumerate().find(|(i, leg)| {
            leg.run
                .as_ref()
                .is_none_or(|r| r.run.state == RunState::Succeeded)
                && !views
                    .iter()
                    .any(|v| v.name == leg.environment && on_release(v))
                && legs[..*i].iter().all(|before| {
                    views
                        .iter()
                        .any(|v| v.name == before.environment && on_release(v))
                })
        });
        if stranded.is_some() && !moving {
            quiet_rounds += 1;
            if quiet_rounds > 25 {
                if let Some((_, leg)) = stranded {
                    if !json_out {
                        say!(
                            "nothing brings `{}` to release {}: request it with `sluice promote --to {} --release {}`",
                            leg.environment,
                            short_hash(release),
                            leg.environment,
                            short_hash(release)
                        );
                    }
                }
                break 1;
            }
        } else {
            quiet_rounds = 0;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let last: Vec<RunView> = legs.into_iter().filter_map(|l| l.run).collect();
    if json_out {
        say!(
            "{}",
            serde_json::to_string_pretty(&last).unwrap_or_default()
        );
    } else {
        print_environments(&backend.environments().await?);
        for view in &last {
            if needs_person(&view.run.state) {
                say!(
                    "run {} on `{}` waits for a person: {}",
                    view.run.id,
                    view.run.environment,
                    view.run.state.describe()
                );
            } else if code == 1
                && view.run.state.is_final()
                && view.run.state != RunState::Succeeded
            {
                say!(
                    "run {} on `{}` {}",
                    view.run.id,
                    view.run.environment,
                    view.run.state.describe()
                );
            }
        }
    }
    Ok(code)
}

/// Prints every transition of `ids` as it happens (after those `seen` already shows) until
/// each run has ended or waits for a person; then the environments. Exit 0 when all
/// succeeded, 3 when one waits for an approval, 1 otherwise.
async fn follow(
    backend: &Backend,
    ids: &[String],
    json_out: bool,
    seen: HashMap<String, usize>,
) -> Result<u8> {
    let mut seen = seen;
    let last: Vec<RunView> = loop {
        backend.step().await?;
        let mut views = Vec::new();
        for id in ids {
            let view = backend.run(id).await?;
            let printed = seen.entry(id.clone()).or_insert(0);
            if !json_out {
                for transition in view.run.transitions.iter().skip(*printed) {
                    say!(
                        "{:<8} {}  {}",
                        view.run.environment,
                        short_id(&view.run.id),
                        transition.state.describe()
                    );
                }
            }
            *printed = view.run.transitions.len();
            views.push(view);
        }
        let moving = views
            .iter()
            .filter(|v| !v.run.state.is_final() && !needs_person(&v.run.state))
            .count();
        if moving == 0 {
            break views;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if json_out {
        say!(
            "{}",
            serde_json::to_string_pretty(&last).unwrap_or_default()
        );
    } else {
        print_environments(&backend.environments().await?);
        for view in &last {
            if needs_person(&view.run.state) {
                say!(
                    "run {} on `{}` waits for a person: {}",
                    view.run.id,
                    view.run.environment,
                    view.run.state.describe()
                );
            }
        }
    }
    Ok(if last.iter().all(|v| v.run.state == RunState::Succeeded) {
        0
    } else if last.iter().any(|v| waits_for_approval(&v.run.state)) {
        3
    } else {
        1
    })
}

fn print_environments(views: &[EnvironmentView]) {
    let mut table = Table::new();
    table.load_preset(presets::UTF8_BORDERS_ONLY);
    table.set_header([
        "environment",
        "release",
        "head",
        "since",
        "healthy",
        "drift (last scan)",
        "run",
    ]);
    for v in views {
        table.add_row([
            v.name.clone(),
            v.release
                .as_deref()
                .map(short_hash)
                .unwrap_or("-")
                .to_string(),
            v.head.clone().unwrap_or_else(|| "-".into()),
            v.since
                .map(|s| s.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_else(|| "-".into()),
            if v.release.is_some() {
                if v.healthy { "yes" } else { "no" }.to_string()
            } else {
                "-".into()
            },
            v.drift
                .as_ref()
                .map(describe_scan)
                .unwrap_or_else(|| "-".into()),
            v.active_run
                .as_ref()
                .map(|r| format!("{} {}", short_id(&r.id), r.describe))
                .or_else(|| {
                    v.waiting_runs
                        .first()
                        .map(|r| format!("{} {}", short_id(&r.id), r.describe))
                })
                .unwrap_or_default(),
        ]);
    }
    say!("{table}");
}

/// `sluice environments`.
pub async fn environments(project: &Project, args: EnvironmentsArgs) -> Result<u8> {
    let backend = Backend::open(project, &args.connection).await?;
    let views = backend.environments().await;
    backend.finish().await;
    let views = views?;
    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&views).unwrap_or_default()
        );
    } else {
        print_environments(&views);
    }
    Ok(0)
}

/// `sluice runs`.
pub async fn runs(project: &Project, args: RunsArgs) -> Result<u8> {
    let backend = Backend::open(project, &args.connection).await?;
    let runs = match &backend {
        Backend::Local(engine) => {
            if let Some(env) = &args.env {
                engine.loaded().environment(env)?;
            }
            let wanted = |r: &RunSummary| args.env.as_ref().is_none_or(|e| &r.environment == e);
            engine.store().run_summaries(&RunPage {
                before: None,
                limit: args.limit,
                wanted: &wanted,
            })
        }
        Backend::Remote(client) => client.runs(args.env.as_deref(), args.limit).await,
    };
    backend.finish().await;
    let runs = runs?;
    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&runs).unwrap_or_default()
        );
        return Ok(0);
    }
    let mut table = Table::new();
    table.load_preset(presets::UTF8_BORDERS_ONLY);
    table.set_header([
        "run",
        "environment",
        "kind",
        "release",
        "requested",
        "by",
        "state",
    ]);
    for r in &runs {
        table.add_row([
            r.id.clone(),
            r.environment.clone(),
            r.kind.to_string(),
            short_hash(&r.release).to_string(),
            r.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            r.requested_by.clone(),
            r.describe.clone(),
        ]);
    }
    say!("{table}");
    Ok(0)
}

/// `sluice run`.
pub async fn run(project: &Project, args: RunArgs) -> Result<u8> {
    let backend = Backend::open(project, &args.connection).await?;
    let view = backend.run(&args.id).await;
    backend.finish().await;
    let view = view?;
    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&view).unwrap_or_default()
        );
        return Ok(0);
    }
    let r = &view.run;
    say!("run {} ({}) on `{}`", r.id, r.kind, r.environment);
    say!(
        "release {}{}",
        r.release,
        r.head
            .as_deref()
            .map(|h| format!(" (head {h})"))
            .unwrap_or_default()
    );
    say!(
        "requested by {} at {}{}",
        r.requested_by,
        r.created_at.to_rfc3339(),
        r.reason
            .as_deref()
            .map(|x| format!(": {x}"))
            .unwrap_or_default()
    );
    say!("state: {}", r.state.describe());
    if !r.plan.is_empty() {
        say!("plan: {}", r.plan.join(", "));
        say!(
            "applied: {}",
            if r.applied.is_empty() {
                "nothing".into()
            } else {
                r.applied.join(", ")
            }
        );
    }
    if let Some(snapshot) = &r.snapshot {
        say!("snapshot: {snapshot}");
    }
    for a in &r.approvals {
        say!(
            "approved by {} at {}{}",
            a.by,
            a.at.to_rfc3339(),
            a.comment
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        );
    }
    if let Some(health) = &r.health {
        say!("health: {health} ({} measurements)", r.measurements.len());
    }
    say!("transitions:");
    for t in &r.transitions {
        say!(
            "  {}  {:<8} {}",
            t.at.format("%H:%M:%S%.3f"),
            t.actor,
            t.state.describe()
        );
    }
    if let Some(events) = &view.events {
        say!("events:");
        for e in events {
            say!(
                "  {}  {:<8} {}{}",
                e.at.format("%H:%M:%S%.3f"),
                e.actor,
                e.action,
                e.reason
                    .as_deref()
                    .or_else(|| e.detail["summary"].as_str())
                    .filter(|x| !x.is_empty())
                    .map(|x| format!(" ({x})"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(0)
}

/// `sluice approve`.
pub async fn approve(project: &Project, args: ApproveArgs) -> Result<u8> {
    let backend = Backend::open(project, &args.connection).await?;
    let result = async {
        let view = match &backend {
            Backend::Local(engine) => RunView::of(
                engine
                    .approve(&args.run, &actor(&args.connection), args.comment.clone())
                    .await?,
                None,
            ),
            Backend::Remote(client) => {
                client
                    .act(&args.run, "approve", json!({"comment": args.comment}))
                    .await?
            }
        };
        say!(
            "approved run {} on `{}`; it is {}",
            view.run.id,
            view.run.environment,
            view.run.state.describe()
        );
        if args.no_wait {
            return Ok(0);
        }
        // What the run went through before the approval is history, not news.
        let seen = HashMap::from([(view.run.id.clone(), view.run.transitions.len())]);
        follow(&backend, &[view.run.id], false, seen).await
    }
    .await;
    backend.finish().await;
    result
}

/// `sluice reject` and `sluice cancel`.
pub async fn decide(project: &Project, args: RejectArgs, action: &str) -> Result<u8> {
    let backend = Backend::open(project, &args.connection).await?;
    let result = async {
        let view = match &backend {
            Backend::Local(engine) => {
                let who = actor(&args.connection);
                let run = if action == "reject" {
                    engine.reject(&args.run, &who, &args.reason).await?
                } else {
                    engine.cancel(&args.run, &who, &args.reason).await?
                };
                RunView::of(run, None)
            }
            Backend::Remote(client) => {
                client
                    .act(&args.run, action, json!({"reason": args.reason}))
                    .await?
            }
        };
        say!(
            "run {} on `{}`: {}",
            view.run.id,
            view.run.environment,
            view.run.state.describe()
        );
        Ok(0)
    }
    .await;
    backend.finish().await;
    result
}

/// `sluice resume`.
pub async fn resume(project: &Project, args: ResumeArgs) -> Result<u8> {
    let backend = Backend::open(project, &args.connection).await?;
    let result = async {
        let view = match &backend {
            Backend::Local(engine) => RunView::of(
                engine.resume(&args.run, &actor(&args.connection)).await?,
                None,
            ),
            Backend::Remote(client) => client.act(&args.run, "resume", json!({})).await?,
        };
        if args.no_wait {
            say!("resumed run {}", view.run.id);
            return Ok(0);
        }
        let seen = HashMap::from([(
            view.run.id.clone(),
            view.run.transitions.len().saturating_sub(1),
        )]);
        follow(&backend, &[view.run.id], false, seen).await
    }
    .await;
    backend.finish().await;
    result
}

/// `sluice rollback`.
pub async fn rollback(project: &Project, args: RollbackArgs) -> Result<u8> {
    let backend = Backend::open(project, &args.connection).await?;
    let result = async {
        let view = match &backend {
            Backend::Local(engine) => RunView::of(
                engine
                    .request_rollback(&args.env, &actor(&args.connection), &args.reason, None)
                    .await?,
                None,
            ),
            Backend::Remote(client) => client.rollback(&args.env, &args.reason).await?,
        };
        if args.no_wait {
            say!(
                "rollback run {} on `{}` started",
                view.run.id,
                view.run.environment
            );
            return Ok(0);
        }
        let code = follow(
            &backend,
            std::slice::from_ref(&view.run.id),
            false,
            HashMap::new(),
        )
        .await?;
        let final_view = backend.run(&view.run.id).await?;
        Ok(
            if matches!(final_view.run.state, RunState::RolledBack { .. }) {
                0
            } else {
                code.max(1)
            },
        )
    }
    .await;
    backend.finish().await;
    result
}

/// `sluice reload`.
pub async fn reload(project: &Project, args: ReloadArgs) -> Result<u8> {
    if args.connection.local {
        return Err(Error::Usage(
            "`reload` tells a running daemon to re-read its files; --local commands always read them".into(),
        ));
    }
    let backend = Backend::open(project, &args.connection).await?;
    if let Backend::Remote(client) = &backend {
        let answer = client.reload().await?;
        say!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
    }
    Ok(0)
}

/// `sluice token`.
pub fn token(project: &Project, command: TokenCommand) -> Result<u8> {
    match command {
        TokenCommand::New { name, roles } => {
            let known = project.environment_names()?;
            let mut grants = std::collections::BTreeMap::new();
            for role in &roles {
                let (env, role) = parse_role_grant(role).map_err(Error::Usage)?;
                if env != "*" && !known.contains(&env) {
                    return Err(Error::Usage(format!(
                        "--role {env}=…: no environment `{env}`; known environments: {}",
                        known.join(", ")
                    )));
                }
                grants.insert(env, role);
            }
            let token = generate_token();
            let entry = render_entry(&name, &hash_token(&token), &grants);
            say!("token (shown once; give it to {name}, keep it out of files and logs):");
            say!("{token}");
            say!("");
            say!("add to the tokens file:");
            say!("{entry}");
            Ok(0)
        }
        TokenCommand::Hash => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| Error::Usage(format!("reading the token from stdin: {e}")))?;
            let token = text.trim();
            if token.is_empty() {
                return Err(Error::Usage("no token on stdin".into()));
            }
            say!("{}", hash_token(token));
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::scan::ScanRecord;

    #[test]
    fn a_scan_cell_says_what_was_found_and_when() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-05-04T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let scan = |differences, error: Option<&str>| ScanRecord {
            at,
            differences,
            fingerprint: String::new(),
            error: error.map(String::from),
        };
        assert_eq!(describe_scan(&scan(0, None)), "clean 2026-05-04 10:00");
        assert_eq!(
            describe_scan(&scan(3, None)),
            "3 difference(s) 2026-05-04 10:00"
        );
        assert_eq!(
            describe_scan(&scan(0, Some("no shadow"))),
            "check failed 2026-05-04 10:00"
        );
    }
}
