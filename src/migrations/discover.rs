//! Finding migrations on disk in the layouts teams already use, and identifying each one by its
//! full name and the SHA-256 of its raw bytes (Prisma's checksum).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The file Prisma writes beside its migration folders, naming the database provider.
pub const PRISMA_LOCK_FILE: &str = "migration_lock.toml";
/// The file inside a Prisma migration folder that holds the SQL.
pub const PRISMA_SCRIPT: &str = "migration.sql";
/// The optional reverse script sluice accepts beside a Prisma `migration.sql`.
pub const PRISMA_DOWN_SCRIPT: &str = "down.sql";

/// How the migrations directory is organised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `<name>/migration.sql` folders, with the provider from `migration_lock.toml` if present.
    Prisma {
        /// The `provider` of `migration_lock.toml`, e.g. `postgresql` or `sqlite`.
        provider: Option<String>,
    },
    /// `<version>_<name>.sql`, or `.up.sql` with an optional `.down.sql`, side by side.
    Flat,
}

/// One SQL file of a migration.
#[derive(Debug, Clone)]
pub struct Script {
    /// Where it was read from.
    pub path: PathBuf,
    raw: String,
}

impl Script {
    /// The SQL to execute: the file's text without a leading byte-order mark.
    pub fn sql(&self) -> &str {
        self.raw.strip_prefix('\u{feff}').unwrap_or(&self.raw)
    }

    /// Byte length of the leading byte-order mark, which positions inside `sql()` skip.
    pub fn bom_len(&self) -> usize {
        self.raw.len() - self.sql().len()
    }
}

/// One migration: identified by its full name, ordered byte-wise by it.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The full name: the Prisma folder name, or the flat file name without `.sql`/`.up.sql`.
    pub name: String,
    /// The forward script.
    pub up: Script,
    /// The reverse script, when the directory has one.
    pub down: Option<Script>,
    /// Lowercase hex SHA-256 of the forward script's raw bytes.
    pub checksum: String,
}

impl Migration {
    /// Whether a checksum recorded at apply time still describes this file. A file whose only
    /// change is its line endings (a Windows checkout, an editor setting) is not an edit.
    pub fn checksum_matches(&self, recorded: &str) -> bool {
        if self.checksum.eq_ignore_ascii_case(recorded) {
            return true;
        }
        let lf = self.up.raw.replace("\r\n", "\n");
        let crlf = lf.replace('\n', "\r\n");
        [lf, crlf]
            .iter()
            .any(|variant| sha256_hex(variant.as_bytes()).eq_ignore_ascii_case(recorded))
    }
}

/// All migrations of a directory, in apply order.
#[derive(Debug, Clone)]
pub struct MigrationSet {
    /// The directory they were read from.
    pub dir: PathBuf,
    /// Its layout.
    pub layout: Layout,
    /// The migrations, sorted byte-wise by name.
    pub migrations: Vec<Migration>,
}

impl MigrationSet {
    /// The migration with this full name.
    pub fn get(&self, name: &str) -> Option<&Migration> {
        self.migrations
            .binary_search_by(|m| m.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.migrations[i])
    }

    /// Hash of the ordered (name, checksum) pairs: what a release is identified by.
    pub fn release_hash(&self) -> String {
        let mut hasher = Sha256::new();
        for m in &self.migrations {
            hasher.update(m.name.as_bytes());
            hasher.update([0]);
            hasher.update(m.checksum.as_bytes());
            hasher.update([b'\n']);
        }
        hex::encode(hasher.finalize())
    }
}

/// Lowercase hex SHA-256, the checksum format Prisma records.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn read_script(path: &Path) -> Result<Script> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let raw = String::from_utf8(bytes).map_err(|e| {
        Error::Discovery(format!(
            "{}: not valid UTF-8 (first bad byte at offset {}); save the file as UTF-8",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    Ok(Script {
        path: path.to_path_buf(),
        raw,
    })
}

fn checksum_of(script: &Script) -> String {
    sha256_hex(script.raw.as_bytes())
}

/// Reads the migrations directory. Errors name the offending file and say how to fix it; a
/// directory that cannot be read completely is never half-used.
pub fn discover(dir: &Path) -> Result<MigrationSet> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Error::Discovery(format!(
            "cannot read the migrations directory {}: {e}",
            dir.display()
        ))
    })?;
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let file_type = entry.file_type().map_err(|e| Error::io(&entry.path(), e))?;
        let is_dir = if file_type.is_symlink() {
            entry.path().is_dir()
        } else {
            file_type.is_dir()
        };
        if is_dir {
            dirs.push(name);
        } else {
            files.push(name);
        }
    }
    let lock_file = dir.join(PRISMA_LOCK_FILE);
    let prisma = lock_file.exists()
        || dirs
            .iter()
            .any(|d| dir.join(d).join(PRISMA_SCRIPT).exists());
    let (layout, mut migrations) = if prisma {
        let provider = if lock_file.exists() {
            read_prisma_provider(&lock_file)?
        } else {
            None
        };
        if let Some(stray) = files.iter().find(|f| f.ends_with(".sql")) {
            return Err(Error::Discovery(format!(
                "{}: an SQL file beside Prisma migration folders; move it into a folder \
                 `<name>/migration.sql` or out of the migrations directory",
                dir.join(stray).display()
            )));
        }
        (Layout::Prisma { provider }, discover_prisma(dir, &dirs)?)
    } else {
        (Layout::Flat, discover_flat(dir, &files)?)
    };
    migrations.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    Ok(MigrationSet {
        dir: dir.to_path_buf(),
        layout,
        migrations,
    })
}

fn read_prisma_provider(path: &Path) -> Result<Option<String>> {
    #[derive(serde::Deserialize)]
    struct LockFile {
        provider: Option<String>,
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let parsed: LockFile = toml::from_str(&text)
        .map_err(|e| Error::Discovery(format!("{}: {}", path.display(), e.message().trim())))?;
    Ok(parsed.provider)
}

fn discover_prisma(dir: &Path, dirs: &[String]) -> Result<Vec<Migration>> {
    let mut out = Vec::with_capacity(dirs.len());
    for name in dirs {
        let folder = dir.join(name);
        let up_path = folder.join(PRISMA_SCRIPT);
        if !up_path.exists() {
            return Err(Error::Discovery(format!(
                "{}: migration folder without {PRISMA_SCRIPT}; add the script or remove the folder",
                folder.display()
            )));
        }
        let up = read_script(&up_path)?;
        let down_path = folder.join(PRISMA_DOWN_SCRIPT);
        let down = if down_path.exists() {
            Some(read_script(&down_path)?)
        } else {
            None
        };
        out.push(Migration {
            name: name.clone(),
            checksum: checksum_of(&up),
            up,
            down,
        });
    }
    Ok(out)
}

/// Whether a flat file name starts with a version: digits, optionally after `V`/`v`, then `_`.
fn has_version_prefix(stem: &str) -> bool {
    let digits = stem.strip_prefix(['V', 'v']).unwrap_or(stem);
    let count = digits.bytes().take_while(u8::is_ascii_digit).count();
    count > 0 && digits[count..].starts_with('_')
}

fn discover_flat(dir: &Path, files: &[String]) -> Result<Vec<Migration>> {
    use std::collections::BTreeMap;
    let mut ups: BTreeMap<String, String> = BTreeMap::new();
    let mut downs: BTreeMap<String, String> = BTreeMap::new();
    for file in files {
        let Some(without_sql) = file.strip_suffix(".sql") else {
            continue;
        };
        let (stem, is_down) = if let Some(s) = without_sql.strip_suffix(".down") {
            (s, true)
        } else if let Some(s) = without_sql.strip_suffix(".up") {
            (s, false)
        } else {
            (without_sql, false)
        };
        if !has_version_prefix(stem) {
            return Err(Error::Discovery(format!(
                "{}: not a migration file name; expected `<version>_<name>.sql` or \
                 `<version>_<name>.up.sql` / `.down.sql` (version = digits, optionally after V)",
                dir.join(file).display()
            )));
        }
        let slot = if is_down { &mut downs } else { &mut ups };
        if let Some(previous) = slot.insert(stem.to_string(), file.clone()) {
            return Err(Error::Discovery(format!(
                "{} and {} both define migration `{stem}`; keep one",
                dir.join(previous).display(),
                dir.join(file).display()
            )));
        }
    }
    if let Some((stem, file)) = downs.iter().find(|(stem, _)| !ups.contains_key(*stem)) {
        return Err(Error::Discovery(format!(
            "{}: down script without a forward script for `{stem}`",
            dir.join(file).display()
        )));
    }
    let mut out = Vec::with_capacity(ups.len());
    for (stem, file) in ups {
        let up = read_script(&dir.join(&file))?;
        let down = match downs.get(&stem) {
            Some(down_file) => Some(read_script(&dir.join(down_file))?),
            None => None,
        };
        out.push(Migration {
            name: stem,
            checksum: checksum_of(&up),
            up,
            down,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(path, text).unwrap();
    }

    #[test]
    fn prisma_layout_is_ordered_bytewise_and_keeps_full_names() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(d, "migration_lock.toml", "provider = \"postgresql\"\n");
        write(
            d,
            "20240126184148_new_models copy/migration.sql",
            "SELECT 2;",
        );
        write(d, "20240126184148_new_models/migration.sql", "SELECT 1;");
        write(d, "20240126184148_new_models/down.sql", "SELECT -1;");
        write(d, "01_init/migration.sql", "SELECT 0;");
        write(d, "README.md", "notes");
        let set = discover(d).unwrap();
        assert_eq!(
            set.layout,
            Layout::Prisma {
                provider: Some("postgresql".into())
            }
        );
        let names: Vec<_> = set.migrations.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "01_init",
                "20240126184148_new_models",
                "20240126184148_new_models copy"
            ]
        );
        let m = set.get("20240126184148_new_models").unwrap();
        assert!(m.down.is_some());
        assert_eq!(m.checksum, sha256_hex(b"SELECT 1;"));
    }

    #[test]
    fn flat_layouts_pair_up_and_down() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(d, "0002_users.up.sql", "CREATE TABLE u(id int);");
        write(d, "0002_users.down.sql", "DROP TABLE u;");
        write(d, "0001_init.sql", "SELECT 1;");
        write(d, "V3__more.sql", "SELECT 3;");
        let set = discover(d).unwrap();
        assert_eq!(set.layout, Layout::Flat);
        let names: Vec<_> = set.migrations.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["0001_init", "0002_users", "V3__more"]);
        assert!(set.get("0002_users").unwrap().down.is_some());
    }

    #[test]
    fn flat_layout_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "seed.sql", "SELECT 1;");
        let err = discover(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("seed.sql") && err.contains("not a migration file name"));

        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "1_a.sql", "SELECT 1;");
        write(tmp.path(), "1_a.up.sql", "SELECT 1;");
        let err = discover(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("both define migration `1_a`"), "{err}");

        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "1_a.down.sql", "SELECT 1;");
        let err = discover(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("down script without a forward script"),
            "{err}"
        );
    }

    #[test]
    fn prisma_folder_without_script_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "migration_lock.toml", "provider = \"sqlite\"\n");
        fs::create_dir_all(tmp.path().join("20240101_empty")).unwrap();
        let err = discover(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("20240101_empty") && err.contains("migration.sql"));
    }

    #[test]
    fn non_utf8_is_refused_with_the_offset() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("1_x")).unwrap();
        fs::write(tmp.path().join("1_x/migration.sql"), b"SELECT '\xff';").unwrap();
        let err = discover(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("not valid UTF-8") && err.contains("offset 8"),
            "{err}"
        );
    }

    #[test]
    fn line_endings_alone_are_not_an_edit() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "1_x.sql", "SELECT 1;\r\nSELECT 2;\r\n");
        let set = discover(tmp.path()).unwrap();
        let m = &set.migrations[0];
        assert!(m.checksum_matches(&sha256_hex(b"SELECT 1;\nSELECT 2;\n")));
        assert!(m.checksum_matches(&m.checksum));
        assert!(!m.checksum_matches(&sha256_hex(b"SELECT 1;\nSELECT 3;\n")));
    }

    #[test]
    fn a_byte_order_mark_is_not_executed() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "1_x.sql", "\u{feff}SELECT 1;");
        let set = discover(tmp.path()).unwrap();
        assert_eq!(set.migrations[0].up.sql(), "SELECT 1;");
        assert_eq!(set.migrations[0].up.bom_len(), 3);
    }
}
