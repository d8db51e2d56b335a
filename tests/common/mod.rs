//! Shared, synchronous integration-test harness.
//!
//! Tests drive the real `sluice` binary (`CARGO_BIN_EXE_sluice`) and inspect the database
//! with `psql` / `pg_dump`. Nothing here is async.
//!
//! PostgreSQL server selection (see [`pg`]):
//! * `SLUICE_TEST_PG_URL` set: a libpq URL of a server where the user may `CREATE DATABASE`.
//!   Test databases are created there and dropped (best effort) when their [`TestDb`] drops.
//! * otherwise: a private throwaway cluster is started once per test process on a Unix
//!   socket only (no TCP), under a small `sh` supervisor whose stdin is a pipe held by this
//!   process. When the test process exits for any reason (even SIGKILL) the pipe closes, the
//!   supervisor stops postgres (`SIGQUIT`) and removes the cluster directory. No global
//!   teardown hook is needed.
//!
//! Other environment knobs:
//! * `SLUICE_TEST_PG_BINDIR`: directory holding `initdb`, `postgres`, `psql`, `pg_dump`, ...
//! * `SLUICE_TEST_KEEP_DBS=1`: do not drop test databases (handy with `SLUICE_TEST_PG_URL`).
//! * `SLUICE_TEST_CMD_TIMEOUT_SECS`: per-command timeout of [`Project::run`] (default 600).
//! * `SLUICE_CORPORA`: directory of the migration corpora (default `../shared/corpora`
//!   relative to the crate root).
#![allow(dead_code)]

pub mod daemon;
pub mod hints;
pub mod ladder;
pub mod slack;

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// PostgreSQL server
// ---------------------------------------------------------------------------------------------

/// The PostgreSQL server the tests of this process use.
pub struct PgServer {
    kind: ServerKind,
}

enum ServerKind {
    /// A server given by `SLUICE_TEST_PG_URL`.
    External { url: String },
    /// A private cluster owned by this test process.
    Private {
        /// Cluster directory; also the Unix socket directory. Removed by the supervisor.
        dir: PathBuf,
        /// Write end of the supervisor's stdin. Never written; closing it (process exit)
        /// makes the supervisor stop postgres and remove `dir`.
        _lifeline: ChildStdin,
    },
}

static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
static DB_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The shared server of this test process (started on first use).
pub fn pg() -> &'static PgServer {
    match SERVER.get_or_init(PgServer::start) {
        Ok(server) => server,
        Err(msg) => panic!("PostgreSQL test server unavailable: {msg}"),
    }
}

impl PgServer {
    fn start() -> Result<PgServer, String> {
        match std::env::var("SLUICE_TEST_PG_URL") {
            Ok(url) if !url.trim().is_empty() => {
                let server = PgServer {
                    kind: ServerKind::External {
                        url: url.trim().to_string(),
                    },
                };
                let admin = server.admin_url();
                let out = Command::new(server.bin("psql"))
                    .args(["-X", "-q", "-A", "-t", "-d", &admin, "-c", "select 1"])
                    .env("PGCONNECT_TIMEOUT", "10")
                    .output()
                    .map_err(|e| format!("cannot run psql: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "SLUICE_TEST_PG_URL is set but `psql -c 'select 1'` failed against it: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                Ok(server)
            }
            _ => start_private_cluster(),
        }
    }

    /// True when this is the private throwaway cluster of this test process.
    pub fn is_private(&self) -> bool {
        matches!(self.kind, ServerKind::Private { .. })
    }

    /// Unix socket directory of the private cluster (None for an external server).
    pub fn socket_dir(&self) -> Option<&Path> {
        match &self.kind {
            ServerKind::Private { dir, .. } => Some(dir),
            ServerKind::External { .. } => None,
        }
    }

    /// Path of a PostgreSQL program (`psql`, `pg_dump`, `initdb`, ...).
    ///
    /// Looks in `$SLUICE_TEST_PG_BINDIR`, then the newest `/usr/lib/postgresql/<N>/bin`,
    /// then `$PATH`. Falls back to the bare name.
    pub fn bin(&self, name: &str) -> PathBuf {
        pg_bin(name)
    }

    /// libpq/sqlx URL of database `db` on this server.
    pub fn url_for(&self, db: &str) -> String {
        match &self.kind {
            ServerKind::Private { dir, .. } => {
                format!("postgres://postgres@localhost/{db}?host={}", dir.display())
            }
            ServerKind::External { url } => replace_url_database(url, db),
        }
    }

    /// URL used for CREATE/DROP DATABASE.
    pub fn admin_url(&self) -> String {
        match &self.kind {
            ServerKind::Private { .. } => self.url_for("postgres"),
            ServerKind::External { url } => url.clone(),
        }
    }

    /// Creates a fresh, empty database named `<prefix>_<counter>_<pid>` (lowercased,
    /// reduced to `[a-z0-9_]`, at most 63 bytes).
    pub fn create_db(&'static self, prefix: &str) -> TestDb {
        let n = DB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let mut clean: String = prefix
            .to_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if clean.is_empty() || clean.starts_with(|c: char| c.is_ascii_digit()) {
            clean.insert_str(0, "t_");
        }
        let suffix = format!("_{n}_{}", std::process::id());
        clean.truncate(63 - suffix.len());
        let mut name = format!("{clean}{suffix}");
        let admin = self.admin_url();
        for attempt in 0..3 {
            match run_psql(
                &admin,
                &format!("CREATE DATABASE \"{name}\" TEMPLATE template0"),
            ) {
                Ok(_) => {
                    return TestDb {
                        url: self.url_for(&name),
                        name,
                        server: self,
                    }
                }
                Err(e) if attempt < 2 && e.contains("already exists") => {
                    // Left over by an earlier run on an external server whose pid matched.
                    let nanos = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.subsec_nanos())
                        .unwrap_or(0);
                    let extra = format!("_{nanos:x}");
                    clean.truncate(63 - suffix.len() - extra.len());
                    name = format!("{clean}{suffix}{extra}");
                }
                Err(e) => panic!("CREATE DATABASE {name} failed: {e}"),
            }
        }
        unreachable!()
    }
}

/// Replaces the database (path) component of a libpq URL, keeping user, host and query.
pub fn replace_url_database(url: &str, db: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[authority_start..]
        .find('/')
        .map(|i| authority_start + i)
        .unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..authority_end])
}

fn pg_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_TEST_PG_BINDIR") {
        let p = Path::new(&dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    // Newest versioned Debian/Ubuntu install first (server binaries are not on PATH there,
    // and /usr/bin client programs are only pg_wrapper shims).
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(Vec<u64>, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let v: Option<Vec<u64>> = e
                    .file_name()
                    .to_str()?
                    .split('.')
                    .map(|p| p.parse().ok())
                    .collect();
                Some((v?, e.path()))
            })
            .collect();
        versions.sort();
        for (_, dir) in versions.iter().rev() {
            let p = dir.join("bin").join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from(name)
}

/// Effective uid of this process (0 = root), read from /proc; None when unknown.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn lookup_id(flag: &str, user: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, user]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Supervisor: runs initdb, starts postgres in the background, then blocks reading stdin.
/// EOF on stdin (the test process exited) => stop postgres, remove the cluster directory.
/// Arguments: $1 = cluster dir, $2 = initdb, $3 = postgres, rest = privilege-drop prefix.
const SUPERVISOR: &str = r#"
dir=$1; initdb=$2; postgres=$3; shift 3
pg=
if "$@" "$initdb" -D "$dir/data" -A trust -U postgres --no-sync -E UTF8 --locale=C \
        >"$dir/initdb.log" 2>&1; then
    "$@" "$postgres" -D "$dir/data" -k "$dir" -c listen_addresses= \
        -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
        -c max_connections=200 >"$dir/postgres.log" 2>&1 </dev/null &
    pg=$!
    echo "$pg" >"$dir/postgres.pid"
else
    : >"$dir/initdb.failed"
fi
read _ignored || :
if [ -n "$pg" ]; then
    kill -QUIT "$pg" 2>/dev/null
    wait "$pg" 2>/dev/null
fi
rm -rf "$dir"
"#;

fn start_private_cluster() -> Result<PgServer, String> {
    let initdb = pg_bin("initdb");
    let postgres = pg_bin("postgres");
    // Short path: Unix socket paths are limited to ~107 bytes.
    let dir = tempfile::Builder::new()
        .prefix("sluice-pg-")
        .tempdir_in("/tmp")
        .map_err(|e| format!("cannot create a temp dir under /tmp: {e}"))?
        .keep();

    // initdb and postgres refuse to run as root: drop to the `postgres` (or `nobody`) user.
    let mut prefix: Vec<String> = Vec::new();
    if effective_uid() == Some(0) {
        let user = ["postgres", "nobody"]
            .into_iter()
            .find(|u| lookup_id("-u", u).is_some());
        let Some(user) = user else {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(
                "running as root and neither a `postgres` nor a `nobody` user exists \
                        to run initdb/postgres as; set SLUICE_TEST_PG_URL instead"
                    .into(),
            );
        };
        let uid = lookup_id("-u", user).unwrap();
        let gid = lookup_id("-g", user).unwrap();
        if let Err(e) = std::os::unix::fs::chown(&dir, Some(uid), Some(gid)) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!("cannot chown {} to {user}: {e}", dir.display()));
        }
        prefix = vec![
            "setpriv".into(),
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--init-groups".into(),
        ];
    }

    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(SUPERVISOR)
        .arg("sluice-pg-supervisor")
        .arg(&dir)
        .arg(&initdb)
        .arg(&postgres)
        .args(&prefix)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Own process group: a Ctrl-C aimed at `cargo test` must not kill the supervisor before
    // it has cleaned up (it cleans up as soon as this process is gone).
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "cannot spawn sh for the PostgreSQL supervisor: {e}"
            ));
        }
    };
    let lifeline = child.stdin.take().expect("piped stdin");
    // From here on the supervisor owns `dir`; dropping `lifeline` (on error) cleans up.

    let tried = format!(
        "{} -D {}/data ...; {} -D {}/data -k {} (listen_addresses='', fsync=off, ...)",
        initdb.display(),
        dir.display(),
        postgres.display(),
        dir.display(),
        dir.display()
    );
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let pg_isready = pg_bin("pg_isready");
    loop {
        if dir.join("initdb.failed").exists() {
            return Err(format!(
                "initdb failed.\ntried: {tried}\ninitdb output:\n{}",
                read("initdb.log")
            ));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "supervisor exited early ({status}).\ntried: {tried}\ninitdb output:\n{}\npostgres log:\n{}",
                read("initdb.log"),
                read("postgres.log")
            ));
        }
        if dir.join("postgres.pid").exists() {
            let ready = Command::new(&pg_isready)
                .arg("-q")
                .arg("-h")
                .arg(&dir)
                .args(["-U", "postgres", "-d", "postgres"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "PostgreSQL did not become ready within 30 s (polled `{} -h {}`).\ntried: {tried}\n\
                 initdb output:\n{}\npostgres log:\n{}",
                pg_isready.display(),
                dir.display(),
                read("initdb.log"),
                read("postgres.log")
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let server = PgServer {
        kind: ServerKind::Private {
            dir: dir.clone(),
            _lifeline: lifeline,
        },
    };
    // pg_isready only checks that the postmaster accepts connections; make sure a real
    // session works too.
    let admin = server.admin_url();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match run_psql(&admin, "select 1") {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                return Err(format!(
                    "`psql -c 'select 1'` against {admin} keeps failing: {e}\ntried: {tried}\npostgres log:\n{}",
                    read("postgres.log")
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    Ok(server)
}

// ---------------------------------------------------------------------------------------------
// Test databases
// ---------------------------------------------------------------------------------------------

/// One fresh database on [`pg()`]. Dropped (best effort, `WITH (FORCE)`) on drop unless
/// `SLUICE_TEST_KEEP_DBS` is set.
pub struct TestDb {
    pub name: String,
    pub url: String,
    server: &'static PgServer,
}

fn run_psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(pg_bin("psql"))
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "psql exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl TestDb {
    pub fn server(&self) -> &'static PgServer {
        self.server
    }

    /// Runs `sql` with `psql -X -q -A -t -v ON_ERROR_STOP=1 -c`; returns trimmed stdout.
    /// Rows are `|`-separated, one per line. Panics with psql's stderr on failure.
    pub fn psql(&self, sql: &str) -> String {
        match run_psql(&self.url, sql) {
            Ok(s) => s,
            Err(e) => panic!("psql on {} failed.\nSQL: {sql}\n{e}", self.name),
        }
    }

    /// Like [`TestDb::psql`], on the server's maintenance database: for questions about this
    /// database that must not need a connection to it.
    pub fn admin_psql(&self, sql: &str) -> String {
        match run_psql(&self.server.admin_url(), sql) {
            Ok(s) => s,
            Err(e) => panic!("psql on the maintenance database failed.\nSQL: {sql}\n{e}"),
        }
    }

    /// Like [`TestDb::psql`] but returns the error (stderr) instead of panicking.
    pub fn psql_try(&self, sql: &str) -> Result<String, String> {
        run_psql(&self.url, sql)
    }

    /// Convenience: the first column of a one-value query parsed as i64.
    pub fn psql_i64(&self, sql: &str) -> i64 {
        let s = self.psql(sql);
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("expected an integer from {sql:?}, got {s:?}"))
    }

    fn pg_dump(&self, extra: &[&str]) -> String {
        let out = Command::new(pg_bin("pg_dump"))
            .args(["--no-owner", "--no-privileges"])
            .args([
                "--exclude-table=*._prisma_migrations",
                "--exclude-table=*._sluice_migrations",
            ])
            .args(extra)
            .args(["-d", &self.url])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run pg_dump: {e}"));
        if !out.status.success() {
            panic!(
                "pg_dump of {} failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        normalize_dump(&String::from_utf8_lossy(&out.stdout))
    }

    /// Normalised `pg_dump --schema-only` without the migration history tables; two
    /// databases with the same schema give equal strings.
    pub fn schema_dump(&self) -> String {
        self.pg_dump(&["--schema-only"])
    }

    /// Normalised schema + data dump without the migration history tables.
    pub fn full_dump(&self) -> String {
        self.pg_dump(&[])
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var_os("SLUICE_TEST_KEEP_DBS").is_some() {
            return;
        }
        // Best effort, never panic (we may already be unwinding).
        let _ = run_psql(
            &self.server.admin_url(),
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        );
    }
}

/// Removes everything from a pg_dump output that differs between two dumps of the same
/// schema: comment lines, `SET ...` / `SELECT pg_catalog.set_config(...)` preamble lines,
/// `\restrict` / `\unrestrict` lines (random keys in newer pg_dump), and runs of blank lines.
pub fn normalize_dump(dump: &str) -> String {
    let mut out = String::with_capacity(dump.len());
    let mut last_blank = true;
    for line in dump.lines() {
        if line.starts_with("--")
            || line.starts_with("SET ")
            || line.starts_with("SELECT pg_catalog.set_config(")
            || line.starts_with("\\restrict")
            || line.starts_with("\\unrestrict")
        {
            continue;
        }
        let blank = line.trim().is_empty();
        if blank && last_blank {
            continue;
        }
        last_blank = blank;
        out.push_str(line);
        out.push('\n');
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

/// Panics with a compact, unified-diff-like excerpt around the first difference when the
/// two texts differ (instead of printing both in full).
#[track_caller]
pub fn assert_text_eq(what: &str, left_label: &str, left: &str, right_label: &str, right: &str) {
    if left == right {
        return;
    }
    panic!(
        "{what}: {left_label} and {right_label} differ\n{}",
        text_diff(left_label, left, right_label, right)
    );
}

/// A short diff: common prefix/suffix trimmed, the differing middle shown with 3 lines of
/// context and at most 40 lines per side.
pub fn text_diff(left_label: &str, left: &str, right_label: &str, right: &str) -> String {
    const CONTEXT: usize = 3;
    const MAX: usize = 40;
    let a: Vec<&str> = left.lines().collect();
    let b: Vec<&str> = right.lines().collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let start = prefix.saturating_sub(CONTEXT);
    let mut s = format!(
        "--- {left_label} ({} lines)\n+++ {right_label} ({} lines)\n@@ first difference at line {} @@\n",
        a.len(),
        b.len(),
        prefix + 1
    );
    for line in &a[start..prefix] {
        s.push_str(&format!("  {line}\n"));
    }
    let a_mid = &a[prefix..a.len() - suffix];
    let b_mid = &b[prefix..b.len() - suffix];
    for line in a_mid.iter().take(MAX) {
        s.push_str(&format!("- {line}\n"));
    }
    if a_mid.len() > MAX {
        s.push_str(&format!("- ... {} more lines\n", a_mid.len() - MAX));
    }
    for line in b_mid.iter().take(MAX) {
        s.push_str(&format!("+ {line}\n"));
    }
    if b_mid.len() > MAX {
        s.push_str(&format!("+ ... {} more lines\n", b_mid.len() - MAX));
    }
    for line in a[a.len() - suffix..].iter().take(CONTEXT) {
        s.push_str(&format!("  {line}\n"));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// The sluice binary and throwaway projects
// ---------------------------------------------------------------------------------------------

/// `Command` for the `sluice` binary built for these tests.
pub fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

/// A throwaway sluice project: `sluice.toml` + `environments/<name>.toml` in a temp dir.
pub struct Project {
    pub dir: tempfile::TempDir,
    /// (environment variable, url) pairs set by [`Project::cmd`].
    env_vars: Vec<(String, String)>,
}

/// Name of the environment variable [`Project`] uses for environment `env`'s URL:
/// `SLUICE_TEST_URL_<NAME_UPPER>` (non-alphanumerics become `_`).
pub fn url_env_var(env: &str) -> String {
    let upper: String = env
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("SLUICE_TEST_URL_{upper}")
}

/// TOML basic string literal for `s`.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Project {
    /// A project whose `migrations` setting is `migrations_dir` (written as given: absolute,
    /// or relative to the project directory), with one environment per `(name, url)`.
    /// URLs are never written to the files: each environment gets
    /// `url_env = "SLUICE_TEST_URL_<NAME>"` and [`Project::cmd`] sets that variable.
    pub fn new(migrations_dir: &Path, envs: &[(&str, &str)]) -> Project {
        Project::with_options(migrations_dir, envs, "")
    }

    /// Like [`Project::new`], appending `extra_env_toml` (e.g. `lock_timeout = "2s"`) to
    /// every environment file.
    pub fn with_options(
        migrations_dir: &Path,
        envs: &[(&str, &str)],
        extra_env_toml: &str,
    ) -> Project {
        let dir = tempfile::Builder::new()
            .prefix("sluice-proj-")
            .tempdir()
            .expect("create project temp dir");
        let migrations = migrations_dir
            .to_str()
            .expect("migrations path must be valid UTF-8");
        std::fs::write(
            dir.path().join("sluice.toml"),
            format!(
                "migrations = {}\nstate_dir = \".sluice\"\n",
                toml_str(migrations)
            ),
        )
        .expect("write sluice.toml");
        let mut project = Project {
            dir,
            env_vars: Vec::new(),
        };
        for (name, url) in envs {
            project.add_env(name, url, extra_env_toml);
        }
        project
    }

    /// A project with its own empty Prisma-layout `migrations/` directory (with
    /// `migration_lock.toml`); add migrations with [`Project::add_migration`].
    pub fn with_local_migrations(envs: &[(&str, &str)], extra_env_toml: &str) -> Project {
        let project = Project::with_options(Path::new("migrations"), envs, extra_env_toml);
        let m = project.dir.path().join("migrations");
        std::fs::create_dir_all(&m).expect("create migrations dir");
        std::fs::write(
            m.join("migration_lock.toml"),
            "# Please do not edit this file manually\nprovider = \"postgresql\"\n",
        )
        .expect("write migration_lock.toml");
        project
    }

    /// Adds (or replaces) environment `name`, writing `environments/<name>.toml`.
    pub fn add_env(&mut self, name: &str, url: &str, extra_env_toml: &str) {
        let envdir = self.dir.path().join("environments");
        std::fs::create_dir_all(&envdir).expect("create environments dir");
        let var = url_env_var(name);
        let mut body = format!("url_env = {}\n", toml_str(&var));
        if !extra_env_toml.is_empty() {
            body.push_str(extra_env_toml);
            if !extra_env_toml.ends_with('\n') {
                body.push('\n');
            }
        }
        std::fs::write(envdir.join(format!("{name}.toml")), body).expect("write environment file");
        self.env_vars.retain(|(v, _)| *v != var);
        self.env_vars.push((var, url.to_string()));
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Path of `environments/<name>.toml`.
    pub fn env_file(&self, name: &str) -> PathBuf {
        self.dir
            .path()
            .join("environments")
            .join(format!("{name}.toml"))
    }

    /// Writes `<project>/migrations/<name>/migration.sql` (for projects made with
    /// [`Project::with_local_migrations`]) and returns its path.
    pub fn add_migration(&self, name: &str, sql: &str) -> PathBuf {
        let d = self.dir.path().join("migrations").join(name);
        std::fs::create_dir_all(&d).expect("create migration dir");
        let f = d.join("migration.sql");
        std::fs::write(&f, sql).expect("write migration.sql");
        f
    }

    /// `sluice <args>` run in the project directory with the URL variables set.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = sluice();
        c.args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1");
        for (k, v) in &self.env_vars {
            c.env(k, v);
        }
        c
    }

    /// Runs `sluice <args>` (stdin closed) and returns its output; panics after
    /// `SLUICE_TEST_CMD_TIMEOUT_SECS` (default 600) seconds.
    pub fn run(&self, args: &[&str]) -> Output {
        let timeout = std::env::var("SLUICE_TEST_CMD_TIMEOUT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600);
        run_with_timeout(self.cmd(args), Duration::from_secs(timeout))
    }

    /// [`Project::run`] + [`assert_success`].
    #[track_caller]
    pub fn run_ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert_success(&out);
        out
    }
}

/// Runs `cmd` with stdin closed and captured stdout/stderr; kills it and panics (showing
/// what it printed so far) when it runs longer than `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {desc}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out_t = drain(Box::new(child.stdout.take().unwrap()));
    let err_t = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let mut sleep = Duration::from_millis(1);
    let status: ExitStatus = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = out_t.join().unwrap_or_default();
                let stderr = err_t.join().unwrap_or_default();
                panic!(
                    "command timed out after {timeout:?}: {desc}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    String::from_utf8_lossy(&stdout),
                    String::from_utf8_lossy(&stderr)
                );
            }
            Ok(None) => {
                std::thread::sleep(sleep);
                sleep = (sleep * 2).min(Duration::from_millis(20));
            }
            Err(e) => panic!("waiting for {desc}: {e}"),
        }
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// stdout and stderr of `out` as one printable string.
pub fn output_text(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Panics, printing stdout and stderr, unless the command exited with status 0.
#[track_caller]
pub fn assert_success(out: &Output) {
    if !out.status.success() {
        panic!("command failed\n{}", output_text(out));
    }
}

/// Panics, printing stdout and stderr, unless the command exited with `code`.
#[track_caller]
pub fn assert_exit_code(out: &Output, code: i32) {
    if out.status.code() != Some(code) {
        panic!("expected exit code {code}\n{}", output_text(out));
    }
}

// ---------------------------------------------------------------------------------------------
// Corpora and the psql reference
// ---------------------------------------------------------------------------------------------

/// `$SLUICE_CORPORA`, or `<crate>/../shared/corpora`.
pub fn corpora_dir() -> PathBuf {
    match std::env::var_os("SLUICE_CORPORA") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora"),
    }
}

/// `<corpora>/<name>/migrations`.
pub fn corpus_migrations(name: &str) -> PathBuf {
    corpora_dir().join(name).join("migrations")
}

/// The migration directories (those holding a `migration.sql`) of a Prisma-layout
/// migrations directory, sorted by byte-wise name (Prisma's order).
pub fn migration_dirs(migrations_dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(migrations_dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", migrations_dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("migration.sql").is_file())
        .collect();
    // OsStr ordering on Unix is byte-wise.
    dirs.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    dirs
}

/// Does psql's stderr say the file has to run outside a single transaction?
pub fn needs_no_transaction(stderr: &str) -> bool {
    stderr.contains("cannot run inside a transaction block")
        || stderr.contains("cannot be executed within a pipeline")
        || stderr.contains("unsafe use of new value")
        || stderr.contains("cannot be executed from a function")
}

fn psql_file(db: &TestDb, file: &Path, single_transaction: bool) -> Output {
    let mut c = Command::new(pg_bin("psql"));
    c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
    if single_transaction {
        c.arg("--single-transaction");
    }
    c.arg("-d")
        .arg(&db.url)
        .arg("-f")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run psql: {e}"))
}

/// Applies every `<dir>/*/migration.sql` in byte-wise name order with
/// `psql -X -q -v ON_ERROR_STOP=1 --single-transaction -f`, retrying a file without
/// `--single-transaction` when PostgreSQL refuses to run it in a transaction block.
/// Returns the names of the files that needed that retry.
pub fn psql_reference_apply(db: &TestDb, migrations_dir: &Path) -> Vec<String> {
    let mut non_tx = Vec::new();
    for dir in migration_dirs(migrations_dir) {
        let file = dir.join("migration.sql");
        let name = dir
            .file_name()
            .map(OsStr::to_string_lossy)
            .unwrap_or_default()
            .into_owned();
        let out = psql_file(db, &file, true);
        if out.status.success() {
            continue;
        }
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !needs_no_transaction(&stderr) {
            panic!(
                "psql reference apply of {} failed:\n{stderr}",
                file.display()
            );
        }
        let retry = psql_file(db, &file, false);
        if !retry.status.success() {
            panic!(
                "psql reference apply of {} failed (in a transaction: {}; then without \
                 --single-transaction):\n{}",
                file.display(),
                stderr.trim(),
                String::from_utf8_lossy(&retry.stderr)
            );
        }
        non_tx.push(name);
    }
    non_tx
}

/// Copies a directory tree (files and subdirectories).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A private copy of the shipped example project (SQLite environments), so tests never touch
/// the repository's `.sluice/`.
pub fn example_copy() -> tempfile::TempDir {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(root.join("sluice.toml"), dir.path().join("sluice.toml")).unwrap();
    for sub in ["environments", "migrations", "policies"] {
        copy_dir(&root.join(sub), &dir.path().join(sub));
    }
    dir
}

/// A sluice command stopped at a named pause point (`SLUICE_TEST_PAUSE`), to be killed there
/// or, when it was given a release file (`SLUICE_TEST_PAUSE_UNTIL`), let go on.
pub struct Paused {
    child: std::process::Child,
    rest: std::sync::mpsc::Receiver<String>,
}

impl Paused {
    /// Spawns `cmd` with the pause point set and waits until it stands there.
    pub fn start(mut cmd: Command, point: &str, until: Option<&Path>) -> Paused {
        use std::io::BufRead;
        cmd.env("SLUICE_TEST_PAUSE", point)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(file) = until {
            cmd.env("SLUICE_TEST_PAUSE_UNTIL", file);
        }
        let mut child = cmd.spawn().expect("spawn sluice");
        let stderr = child.stderr.take().expect("stderr");
        let (paused_tx, paused_rx) = std::sync::mpsc::channel();
        let (rest_tx, rest) = std::sync::mpsc::channel();
        let wanted = format!("sluice-test-paused: {point}");
        std::thread::spawn(move || {
            let mut seen = String::new();
            let mut told = false;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(|l| l.ok())
            {
                if !told && line == wanted {
                    let _ = paused_tx.send(Ok(()));
                    told = true;
                    continue;
                }
                seen.push_str(&line);
                seen.push('\n');
            }
            if !told {
                let _ = paused_tx.send(Err(seen.clone()));
            }
            let _ = rest_tx.send(seen);
        });
        match paused_rx.recv_timeout(Duration::from_secs(90)) {
            Ok(Ok(())) => Paused { child, rest },
            Ok(Err(output)) => panic!("sluice never reached {point}:\n{output}"),
            Err(_) => {
                let _ = child.kill();
                panic!("timed out waiting for {point}")
            }
        }
    }

    /// SIGKILL where it stands.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the command to end (after its release file appeared); exit status, stdout
    /// and everything it wrote to stderr after the pause line.
    pub fn finish(mut self) -> (ExitStatus, String, String) {
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        let status = self.child.wait().expect("wait for sluice");
        let stderr = self
            .rest
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_default();
        (status, stdout, stderr)
    }
}

impl Drop for Paused {
    /// A test that failed while the command stood paused must not leave it behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The names of `db` and its copies (snapshots, preserved copies) that refuse connections: a
/// killed template copy must leave none. Other tests' databases, which may be in the middle of
/// a copy, are not looked at.
pub fn databases_refusing_connections(db: &TestDb) -> String {
    db.admin_psql(&format!(
        "SELECT coalesce(string_agg(datname, ', '), '') FROM pg_database \
         WHERE NOT datallowconn AND NOT datistemplate AND starts_with(datname, '{}')",
        db.name
    ))
}

/// The shipped example (SQLite environments) as a [`Project`], for tests that drive it through
/// [`Project::cmd`] or a daemon.
pub fn example_project() -> Project {
    Project {
        dir: example_copy(),
        env_vars: Vec::new(),
    }
}
