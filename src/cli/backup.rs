//! `sluice store backup` and `sluice store restore`: the state store (runs, approvals, the
//! audit log, releases, snapshots' records) as JSON lines and back. A backup goes through the
//! daemon when it holds the store; a restore needs the store free, since it replaces it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};

use super::ladder::Connection;
use crate::config::Project;
use crate::daemon::store_dir;
use crate::error::{Error, Result};
use crate::store::backup::{read_backup, restore, BackupHeader};
use crate::store::{OnDemandStore, Store};

/// `sluice store`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Write every record of the state store to FILE as JSON lines (`-`: standard output),
    /// through the daemon when one holds the store.
    Backup(BackupArgs),
    /// Restore a backup as the state store. The backup is checked whole first; a store with
    /// records is kept unless --force, which moves it aside (never deletes it).
    Restore(RestoreArgs),
}

/// `sluice store backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the backup; `-` for standard output.
    pub file: PathBuf,
    /// Where the store is: a daemon holding it (needs an admin token), or --local.
    #[command(flatten)]
    pub connection: Connection,
}

/// `sluice store restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A file written by `sluice store backup`.
    pub file: PathBuf,
    /// Replace a store that has records (or cannot be opened), moving it aside to
    /// `<state_dir>/store.replaced-<time>`.
    #[arg(long)]
    pub force: bool,
}

/// Runs a `sluice store` command.
pub async fn store_cmd(project: &Project, command: StoreCommand) -> Result<u8> {
    match command {
        StoreCommand::Backup(args) => backup_cmd(project, args).await,
        StoreCommand::Restore(args) => restore_cmd(project, args),
    }
}

async fn backup_cmd(project: &Project, args: BackupArgs) -> Result<u8> {
    let (text, header) = match args.connection.daemon_for_store(project)? {
        Some(client) => {
            let text = client.store_backup().await?;
            let checked = read_backup(text.as_bytes(), "the daemon's backup")?;
            (text.into_bytes(), checked.header)
        }
        None => {
            let store = OnDemandStore::new(&store_dir(project), Duration::from_secs(30));
            let mut text = Vec::new();
            let header = store.backup(&mut text)?;
            (text, header)
        }
    };
    write_out(&args.file, &text)?;
    let summary = describe(&header);
    if args.file == Path::new("-") {
        eprintln!("backed up {summary}");
    } else {
        say!("backed up {summary} to {}", args.file.display());
    }
    Ok(0)
}

fn describe(header: &BackupHeader) -> String {
    let integrity = crate::store::integrity::Integrity {
        generation: header.generation,
        counts: header.counts.clone(),
        checksum: header.checksum,
    };
    format!(
        "{} records ({}; store format {}, write #{}, checksum {})",
        header.records,
        integrity.describe_counts(),
        header.format,
        header.generation,
        header.checksum.hex()
    )
}

/// Writes the backup whole or not at all: beside the file, then renamed over it.
fn write_out(file: &Path, text: &[u8]) -> Result<()> {
    if file == Path::new("-") {
        let mut out = std::io::stdout().lock();
        return out
            .write_all(text)
            .and_then(|_| out.flush())
            .map_err(|e| Error::io(file, e));
    }
    let mut partial = file.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let written = std::fs::File::create(&partial).and_then(|mut out| {
        out.write_all(text)?;
        out.sync_all()
    });
    if let Err(err) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(Error::io(file, err));
    }
    std::fs::rename(&partial, file).map_err(|e| Error::io(file, e))
}

fn restore_cmd(project: &Project, args: RestoreArgs) -> Result<u8> {
    let source = args.file.display().to_string();
    let file = std::fs::File::open(&args.file).map_err(|e| Error::io(&args.file, e))?;
    let backup = read_backup(std::io::BufReader::new(file), &source)?;
    let restored = restore(&store_dir(project), &backup, args.force)?;
    say!(
        "restored {} into {}",
        describe(&backup.header),
        restored.store.display()
    );
    if let Some(aside) = &restored.moved_aside {
        say!("the store it replaced is kept at {}", aside.display());
    }
    Ok(0)
}
