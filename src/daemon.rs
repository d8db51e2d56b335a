//! `sluice serve`: one process holding the store, the engine, the gate ticker, the release
//! watcher and the HTTP API. SIGTERM or Ctrl-C stops taking requests, lets each run finish
//! or park its current step, flushes the store and exits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::api::auth::Tokens;
use crate::api::server::{router, ApiState};
use crate::config::Project;
use crate::error::{Error, Result};
use crate::promote::engine::{Engine, EngineOptions, MACHINE_ACTOR};
use crate::store::SledStore;

/// What `sluice serve` was asked for on its command line (overriding `[daemon]`).
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Address to listen on.
    pub listen: Option<String>,
    /// Tokens file.
    pub tokens_file: Option<PathBuf>,
}

/// The store directory of a project.
pub fn store_dir(project: &Project) -> PathBuf {
    project.state_dir.join("store")
}

/// Opens the project's store for this process alone; a second daemon (or a `--local` command
/// while a daemon runs) gets a clear error.
pub fn open_store(project: &Project) -> Result<SledStore> {
    SledStore::open(&store_dir(project)).map_err(|err| match err {
        Error::StoreBusy { path } => {
            Error::Conflict(format!(
                "{path}: the state store is held by another sluice process (a running `sluice serve`?); \
                 stop it, or talk to it instead of using --local"
            ))
        }
        other => other,
    })
}

/// Runs the daemon until a shutdown signal.
pub async fn serve(root: &Path, options: ServeOptions) -> Result<()> {
    let project = Project::load(root)?;
    let store = open_store(&project)?;
    let engine = Engine::open(
        root,
        Arc::new(store),
        EngineOptions {
            tick: project.daemon.tick,
            auto_promote: true,
        },
    )?;
    let tokens_path = options
        .tokens_file
        .clone()
        .or_else(|| project.daemon.tokens_file.clone());
    let loaded = engine.loaded();
    crate::consistency::check(
        crate::consistency::Configuration {
            project: &loaded.project,
            environments: &loaded.environments,
            policies: &loaded.policies,
            migrations: Some(&loaded.set),
        },
        crate::consistency::Scope::Process,
    )?;
    let tokens = match &tokens_path {
        Some(path) => Tokens::load(path, &engine.loaded().environment_names())?,
        None => {
            tracing::warn!(
                "no tokens file (`[daemon] tokens_file` or --tokens): every API call except \
                 /v1/health, /metrics and /v1/openapi.json will be refused"
            );
            Tokens::default()
        }
    };
    let chatops = crate::chatops::ChatOps::start(engine.clone(), &project, None)?;
    let listen = options
        .listen
        .unwrap_or_else(|| project.daemon.listen.clone());
    let address: SocketAddr = listen.parse().map_err(|_| {
        Error::Usage(format!(
            "`{listen}` is not an address such as 127.0.0.1:7407"
        ))
    })?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| Error::Usage(format!("cannot listen on {address}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Usage(format!("cannot read the listening address: {e}")))?;
    tracing::info!(address = %bound, release = %engine.loaded().release.short(), "sluice serving");
    eprintln!("sluice serving on http://{bound}");

    let pruner = crate::promote::pruner::start(engine.clone());
    let recovered = engine.recover().await?;
    if !recovered.is_empty() {
        tracing::warn!(runs = recovered.len(), "resumed unfinished runs");
    }
    let ticker = tokio::spawn(engine.clone().run_ticker());
    let watcher = (!project.daemon.watch_interval.is_zero()).then(|| {
        tokio::spawn(watch_releases(
            engine.clone(),
            project.daemon.watch_interval,
        ))
    });
    let scheduler = tokio::spawn(
        crate::schedule::Scheduler::new(
            engine.clone(),
            Arc::new(crate::schedule::timing::SystemClock),
        )
        .run(),
    );
    let drift_scanner = tokio::spawn(
        crate::drift::scan::DriftScanner::new(
            engine.clone(),
            Arc::new(crate::schedule::timing::SystemClock),
        )
        .run(),
    );
    let state = Arc::new(ApiState::new(engine.clone(), tokens, tokens_path));
    let app = router(state.clone())
        .merge(crate::api::snapshots::routes(state))
        .merge(crate::api::slack::routes(chatops.clone()));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    tracing::info!("shutting down: runs finish or park their current step");
    engine.shutdown().await;
    let _ = ticker.await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), pruner).await;
    let _ = scheduler.await;
    let _ = drift_scanner.await;
    chatops
        .notifier
        .shutdown(std::time::Duration::from_secs(5))
        .await;
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    served.map_err(|e| Error::Usage(format!("the HTTP server stopped: {e}")))?;
    tracing::info!("stopped");
    Ok(())
}

async fn watch_releases(engine: Arc<Engine>, every: std::time::Duration) {
    let mut stop = engine.stop_receiver();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        match engine.scan_releases(MACHINE_ACTOR, "watch").await {
            Ok((_, true)) => engine.wake(),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "reading the migrations directory failed"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
