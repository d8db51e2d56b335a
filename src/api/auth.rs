//! Who may call the daemon's API, and what each caller may do on each environment.
//!
//! Callers send `Authorization: Bearer <token>`. The tokens file holds only the SHA-256 of each
//! token, so the file (or a backup, or a repository it was committed to) does not let anyone call
//! the API. Each token has a name, recorded as the actor in the audit log, and a role per
//! environment, with `"*"` standing for every environment a more specific entry does not name.
//!
//! Roles are ordered: viewer < deployer < approver < admin, each allowing what the ones below
//! allow. A viewer reads; a deployer requests promotions and cancels, resumes or rolls back runs;
//! an approver also approves or rejects; an admin also reloads the configuration.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use toml::Spanned;

use crate::config::FileContext;
use crate::error::{Error, Result};

/// The environment key that grants a role on every environment not named on its own, so a
/// tokens file need not change when an environment is added.
pub const ALL_ENVIRONMENTS: &str = "*";

/// Every token [`generate_token`] makes starts with this, so secret scanners and people can
/// recognise a sluice token in a log or a paste.
const TOKEN_PREFIX: &str = "slc_";

/// What a caller may do on one environment. The order matters: a higher role includes every
/// right of the lower ones, so a check is a single comparison.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads runs, environments and the audit log.
    Viewer,
    /// Also requests promotions and cancels, resumes or rolls back runs.
    Deployer,
    /// Also approves or rejects promotions waiting for approval.
    Approver,
    /// Also reloads the daemon's configuration.
    Admin,
}

impl Role {
    /// Every role, lowest first, so messages can list the valid ones.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Deployer, Role::Approver, Role::Admin];

    /// The name used in the tokens file, on the command line and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    /// Parses a role name; the error lists the four roles, so a typo is fixed in one try.
    fn from_str(text: &str) -> std::result::Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| {
                format!("unknown role `{text}`; roles are viewer, deployer, approver and admin")
            })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    token: Vec<Spanned<RawToken>>,
}

type RawRoles = BTreeMap<Spanned<String>, Spanned<String>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: Option<Spanned<String>>,
    sha256: Option<Spanned<String>>,
    roles: Option<Spanned<RawRoles>>,
}

/// One `[[token]]` entry, validated.
#[derive(Clone)]
struct Entry {
    name: String,
    hash: [u8; 32],
    roles: BTreeMap<String, Role>,
    /// Lines of `name` and `sha256`, for duplicate errors.
    line: usize,
    hash_line: usize,
}

/// The daemon's known tokens: names, SHA-256 hashes and roles. Holds no token itself, so it
/// can be kept in memory for the daemon's life without keeping a secret there.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl fmt::Debug for Tokens {
    /// Names only: hashes stay out of debug output and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field(
                "names",
                &self.entries.iter().map(|e| &e.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Tokens {
    /// Reads and validates the tokens file at `path`; `environments` are the known environment
    /// names, so a role on a misspelt environment is an error at startup, not a silent no-op.
    ///
    /// Errors name the file, the line and the key: bad TOML, unknown keys, a missing `name`,
    /// `sha256` or `roles`, a `sha256` that is not 64 hexadecimal characters, a duplicate name
    /// or hash, an unknown role (the four are listed) or an unknown environment (the known ones
    /// are listed; `"*"` is always allowed).
    pub fn load(path: &Path, environments: &[String]) -> Result<Tokens> {
        let text = crate::config::read_text(path)?;
        Tokens::parse(path, &text, environments)
    }

    /// Parses the text of a tokens file; `path` is used for messages only. Same checks as
    /// [`Tokens::load`].
    pub fn parse(path: &Path, text: &str, environments: &[String]) -> Result<Tokens> {
        let ctx = FileContext { path, text };
        let raw: RawFile = toml::from_str(text).map_err(|e| ctx.parse_error(e))?;
        let mut entries: Vec<Entry> = Vec::with_capacity(raw.token.len());
        for table in raw.token {
            let table_line = ctx.line_of(table.span().start);
            let entry = parse_entry(&ctx, table_line, table.into_inner(), environments)?;
            if let Some(other) = entries.iter().find(|e| e.name == entry.name) {
                return Err(at_line(
                    &ctx,
                    entry.line,
                    "name",
                    format!(
                        "`{}` is already the name of the token on line {}; names must be unique \
                         because they identify the caller in the audit log",
                        entry.name, other.line
                    ),
                ));
            }
            if let Some(other) = entries.iter().find(|e| e.hash == entry.hash) {
                return Err(at_line(
                    &ctx,
                    entry.hash_line,
                    "sha256",
                    format!(
                        "the same hash as token `{}` (line {}); one token with two names would \
                         make the audit log ambiguous, so generate a new token for `{}`",
                        other.name, other.line, entry.name
                    ),
                ));
            }
            entries.push(entry);
        }
        Ok(Tokens { entries })
    }

    /// True when the file defines no token, so the daemon can refuse to serve an API that
    /// nobody could call (or warn loudly).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many tokens are defined, for the startup log line.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Finds the caller behind a request; `authorization` is the raw `Authorization` header
    /// value, if the request had one.
    ///
    /// The SHA-256 of the presented token is compared with every entry using
    /// [`subtle::ConstantTimeEq`], without stopping at a match, so the time taken reveals
    /// neither which entry matched nor how much of a hash was right. The token is never part of
    /// an error.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        let token = bearer_token(authorization)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (i, entry) in self.entries.iter().enumerate() {
            let equal = entry.hash[..].ct_eq(&digest[..]);
            index.conditional_assign(&(i as u64), equal);
            found |= equal;
        }
        if !bool::from(found) {
            return Err(AuthError::Unknown);
        }
        let entry = usize::try_from(index)
            .ok()
            .and_then(|i| self.entries.get(i))
            .ok_or(AuthError::Unknown)?;
        Ok(Caller {
            name: entry.name.clone(),
            roles: entry.roles.clone(),
        })
    }
}

/// Extracts the token from `Bearer <token>`: the scheme in any case, whitespace around the
/// token ignored; a blank header counts as no header.
fn bearer_token(authorization: Option<&str>) -> Result<&str, AuthError> {
    let value = authorization
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(AuthError::Missing)?;
    let (scheme, token) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// An error at a line where no `Spanned` value exists (a key that is missing from a table).
fn at_line(ctx: &FileContext<'_>, line: usize, key: &str, message: impl fmt::Display) -> Error {
    Error::Config(format!(
        "{}:{line}: key `{key}`: {message}",
        ctx.path.display()
    ))
}

fn parse_entry(
    ctx: &FileContext<'_>,
    table_line: usize,
    raw: RawToken,
    environments: &[String],
) -> Result<Entry> {
    let name = raw.name.ok_or_else(|| {
        at_line(
            ctx,
            table_line,
            "name",
            "missing; every [[token]] needs a unique `name`, recorded as the actor in the \
             audit log",
        )
    })?;
    let valid_name = !name.get_ref().is_empty()
        && !name
            .get_ref()
            .chars()
            .any(|c| c.is_whitespace() || c.is_control());
    if !valid_name {
        return Err(ctx.at(
            "name",
            &name,
            "must be a non-empty name without spaces or control characters; it is recorded as \
             the actor in the audit log",
        ));
    }
    let sha256 = raw.sha256.ok_or_else(|| {
        at_line(
            ctx,
            table_line,
            "sha256",
            "missing; give the SHA-256 of the token as 64 hexadecimal characters (never the \
             token itself)",
        )
    })?;
    let hash =
        parse_hash(sha256.get_ref()).map_err(|message| ctx.at("sha256", &sha256, message))?;
    let raw_roles = raw.roles.ok_or_else(|| {
        at_line(
            ctx,
            table_line,
            "roles",
            "missing; give the token's role per environment, e.g. \
             roles = { \"*\" = \"viewer\", prod = \"deployer\" }",
        )
    })?;
    if raw_roles.get_ref().is_empty() {
        return Err(ctx.at(
            "roles",
            &raw_roles,
            "is empty; give the token's role per environment, e.g. \
             roles = { \"*\" = \"viewer\", prod = \"deployer\" }",
        ));
    }
    let mut roles = BTreeMap::new();
    for (environment, role) in raw_roles.into_inner() {
        let key = format!("roles.{}", environment.get_ref());
        let env = environment.get_ref().as_str();
        if env != ALL_ENVIRONMENTS && !environments.iter().any(|known| known == env) {
            let known = if environments.is_empty() {
                "none".to_string()
            } else {
                environments.join(", ")
            };
            return Err(ctx.at(
                &key,
                &environment,
                format!(
                    "unknown environment `{env}`; known environments: {known}; \
                     \"*\" means every environment"
                ),
            ));
        }
        let parsed = role
            .get_ref()
            .parse::<Role>()
            .map_err(|message| ctx.at(&key, &role, message))?;
        roles.insert(environment.into_inner(), parsed);
    }
    Ok(Entry {
        name: name.get_ref().clone(),
        hash,
        roles,
        line: ctx.line_of(name.span().start),
        hash_line: ctx.line_of(sha256.span().start),
    })
}

/// Decodes a stored hash. The value is never echoed: someone may have pasted the token itself.
fn parse_hash(text: &str) -> std::result::Result<[u8; 32], String> {
    const EXPECTED: &str = "must be the SHA-256 of the token as 64 hexadecimal characters";
    if text.starts_with(TOKEN_PREFIX) {
        return Err(format!(
            "{EXPECTED}; this looks like a token, not its hash: store only the hash, and treat \
             this token as leaked and replace it"
        ));
    }
    if text.len() != 64 {
        return Err(format!(
            "{EXPECTED}, not {} characters",
            text.chars().count()
        ));
    }
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text, &mut hash)
        .map_err(|_| format!("{EXPECTED}; it contains a character that is not hexadecimal"))?;
    Ok(hash)
}

/// An authenticated caller: the name to record in the audit log and the roles to check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Caller {
    /// The token's name, recorded as the actor of every action the caller takes.
    pub name: String,
    /// The caller's role per environment; `"*"` applies where no specific entry exists.
    pub roles: BTreeMap<String, Role>,
}

impl Caller {
    /// The caller's role on `environment`: its own entry if any (even when lower than `"*"`,
    /// so a token can be restricted on prod), otherwise the `"*"` entry.
    pub fn role_for(&self, environment: &str) -> Option<Role> {
        self.roles
            .get(environment)
            .or_else(|| self.roles.get(ALL_ENVIRONMENTS))
            .copied()
    }

    /// Ok when the caller has at least `needed` on `environment`; otherwise a 403 that says
    /// what the caller has and what the action needs.
    pub fn require(&self, environment: &str, needed: Role) -> Result<(), AuthError> {
        let has = self.role_for(environment);
        if has.is_some_and(|has| has >= needed) {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                caller: self.name.clone(),
                environment: environment.to_string(),
                needed,
                has,
            })
        }
    }

    /// Ok when the caller has at least `needed` on every one of `environments` (through its
    /// specific entry or `"*"`), for actions that affect the whole daemon such as reloading the
    /// configuration. The first environment that falls short is the error. With no
    /// environments, the `"*"` entry decides, so an empty list never grants anything by itself.
    pub fn require_everywhere(
        &self,
        environments: &[String],
        needed: Role,
    ) -> Result<(), AuthError> {
        if environments.is_empty() {
            return self.require(ALL_ENVIRONMENTS, needed);
        }
        environments
            .iter()
            .try_for_each(|environment| self.require(environment, needed))
    }
}

/// Why a request was refused. [`AuthError::status`] gives the HTTP status; the message is safe
/// to send to the client and to log, since it never contains the token.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    /// 401: the request had no `Authorization` header (or a blank one).
    #[error("no bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    /// 401: the header is not `Bearer <token>` (another scheme, or no token after `Bearer`).
    #[error("the Authorization header is not `Bearer <token>`")]
    Malformed,
    /// 401: the token matches no entry of the tokens file.
    #[error("the bearer token is not known to this daemon")]
    Unknown,
    /// 403: the caller is known but its role on the environment is too low (or absent).
    #[error("{}", forbidden_message(.caller, .environment, *.needed, *.has))]
    Forbidden {
        /// The caller's name.
        caller: String,
        /// The environment the action concerns (`"*"` for the whole daemon).
        environment: String,
        /// The lowest role that allows the action.
        needed: Role,
        /// The caller's role on the environment, if any.
        has: Option<Role>,
    },
}

fn forbidden_message(caller: &str, environment: &str, needed: Role, has: Option<Role>) -> String {
    let on = if environment == ALL_ENVIRONMENTS {
        "on every environment (\"*\")".to_string()
    } else {
        format!("on `{environment}`")
    };
    match has {
        Some(has) => format!("`{caller}` is {has} {on}; this needs {needed}"),
        None => format!("`{caller}` has no role {on}; this needs {needed}"),
    }
}

impl AuthError {
    /// The HTTP status to answer with: 401 when the caller is not identified, 403 when it is
    /// but may not do this.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Malformed | AuthError::Unknown => 401,
            AuthError::Forbidden { .. } => 403,
        }
    }
}

/// The SHA-256 of a token as lowercase hex: what the tokens file stores in `sha256`.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: `slc_` followed by 43 characters of URL-safe base64 (no padding) of 32
/// bytes from the operating system's random source (two v4 UUIDs, so 244 of the 256 bits are
/// random; the other 12 are UUID version and variant bits). Long enough that guessing is
/// hopeless, and the prefix makes a leaked token recognisable.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    format!("{TOKEN_PREFIX}{}", base64url(&bytes))
}

/// URL-safe base64 without padding (RFC 4648 §5), so a token fits a header or a shell variable
/// without quoting.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let mut group = [0u8; 3];
        group[..chunk.len()].copy_from_slice(chunk);
        let n = u32::from(group[0]) << 16 | u32::from(group[1]) << 8 | u32::from(group[2]);
        for i in 0..=chunk.len() {
            let sextet = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[sextet as usize]));
        }
    }
    out
}

/// The `[[token]]` entry for a new token, ready to paste into the tokens file: the name, the
/// hash (never the token) and the roles, quoted as TOML requires.
pub fn render_entry(name: &str, sha256: &str, roles: &BTreeMap<String, Role>) -> String {
    let roles = roles
        .iter()
        .map(|(environment, role)| format!("{} = \"{role}\"", toml_key(environment)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = String::from("[[token]]\n");
    // Writing to a String cannot fail.
    let _ = writeln!(out, "name = {}", toml_string(name));
    let _ = writeln!(out, "sha256 = {}", toml_string(sha256));
    if roles.is_empty() {
        out.push_str("roles = {}\n");
    } else {
        let _ = writeln!(out, "roles = {{ {roles} }}");
    }
    out
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

fn toml_key(text: &str) -> String {
    let bare = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare {
        text.to_string()
    } else {
        toml_string(text)
    }
}

/// Parses a role grant given on the command line, `ENVIRONMENT=ROLE` such as `prod=deployer`
/// or `*=viewer`, into the pair [`render_entry`] takes.
pub fn parse_role_grant(text: &str) -> std::result::Result<(String, Role), String> {
    let usage =
        || format!("`{text}` is not ENVIRONMENT=ROLE; write e.g. prod=deployer or *=viewer");
    let (environment, role) = text.split_once('=').ok_or_else(usage)?;
    let (environment, role) = (environment.trim(), role.trim());
    if environment.is_empty() || role.is_empty() {
        return Err(usage());
    }
    let valid = environment == ALL_ENVIRONMENTS
        || environment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(format!(
            "`{environment}` is not an environment name (letters, digits, `-`, `_`) or \"*\""
        ));
    }
    Ok((environment.to_string(), role.parse()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CI_TOKEN: &str = "slc_ci-token-for-tests";
    const ALICE_TOKEN: &str = "slc_alice-token-for-tests";

    fn envs() -> Vec<String> {
        ["dev", "staging", "prod"].map(String::from).to_vec()
    }

    fn good_file() -> String {
        format!(
            "# Tokens for the sluice daemon.\n\
             [[token]]\n\
             name = \"ci\"\n\
             sha256 = \"{}\"\n\
             roles = {{ dev = \"deployer\", staging = \"deployer\", prod = \"viewer\" }}\n\
             \n\
             [[token]]\n\
             name = \"alice\"\n\
             sha256 = \"{}\"\n\
             roles = {{ \"*\" = \"approver\" }}\n",
            hash_token(CI_TOKEN),
            hash_token(ALICE_TOKEN)
        )
    }

    fn parse(text: &str) -> Result<Tokens> {
        Tokens::parse(Path::new("tokens.toml"), text, &envs())
    }

    fn parse_err(text: &str) -> String {
        match parse(text) {
            Ok(tokens) => panic!("expected an error, parsed {tokens:?}"),
            Err(Error::Config(message)) => message,
            Err(other) => panic!("expected a config error, got {other:?}"),
        }
    }

    fn tokens() -> Tokens {
        parse(&good_file()).expect("the good file parses")
    }

    fn caller(roles: &[(&str, Role)]) -> Caller {
        Caller {
            name: "ci".into(),
            roles: roles.iter().map(|(e, r)| (e.to_string(), *r)).collect(),
        }
    }

    /// A one-token file; line 1 is `[[token]]`, then name, sha256, roles (each omitted if None).
    fn one(name: Option<&str>, sha256: Option<&str>, roles: Option<&str>) -> String {
        let mut text = String::from("[[token]]\n");
        if let Some(name) = name {
            text.push_str(&format!("name = \"{name}\"\n"));
        }
        if let Some(sha256) = sha256 {
            text.push_str(&format!("sha256 = \"{sha256}\"\n"));
        }
        if let Some(roles) = roles {
            text.push_str(&format!("roles = {roles}\n"));
        }
        text
    }

    #[test]
    fn parses_a_good_file() {
        let tokens = tokens();
        assert_eq!(tokens.len(), 2);
        assert!(!tokens.is_empty());
        let ci = &tokens.entries[0];
        assert_eq!(ci.name, "ci");
        assert_eq!(hex::encode(ci.hash), hash_token(CI_TOKEN));
        assert_eq!(
            ci.roles,
            BTreeMap::from([
                ("dev".to_string(), Role::Deployer),
                ("staging".to_string(), Role::Deployer),
                ("prod".to_string(), Role::Viewer),
            ])
        );
        let alice = &tokens.entries[1];
        assert_eq!(alice.name, "alice");
        assert_eq!(
            alice.roles,
            BTreeMap::from([("*".to_string(), Role::Approver)])
        );
    }

    #[test]
    fn an_empty_file_has_no_tokens() {
        let tokens = parse("# nobody yet\n").unwrap();
        assert!(tokens.is_empty());
        assert_eq!(tokens.len(), 0);
    }

    #[test]
    fn uppercase_hex_is_accepted() {
        let text = one(
            Some("ci"),
            Some(&hash_token(CI_TOKEN).to_uppercase()),
            Some("{ dev = \"viewer\" }"),
        );
        let tokens = parse(&text).unwrap();
        let caller = tokens
            .authenticate(Some(&format!("Bearer {CI_TOKEN}")))
            .unwrap();
        assert_eq!(caller.name, "ci");
    }

    #[test]
    fn debug_shows_names_but_no_hashes() {
        let debug = format!("{:?}", tokens());
        assert_eq!(debug, r#"Tokens { names: ["ci", "alice"] }"#);
        assert!(!debug.contains(&hash_token(CI_TOKEN)));
    }

    #[test]
    fn load_reads_the_file_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, good_file()).unwrap();
        assert_eq!(Tokens::load(&path, &envs()).unwrap().len(), 2);
        let missing = dir.path().join("absent.toml");
        let err = Tokens::load(&missing, &envs()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: ", missing.display())),
            "{err}"
        );
    }

    #[test]
    fn bad_toml_names_file_and_line() {
        let err = parse_err("[[token]]\nname = \"ci\"\nsha256 = \n");
        assert!(err.starts_with("tokens.toml:3: key `sha256`: "), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let mut text = one(
            Some("ci"),
            Some(&hash_token(CI_TOKEN)),
            Some("{ dev = \"viewer\" }"),
        );
        text.push_str("expires = \"2030-01-01\"\n");
        let err = parse_err(&text);
        assert!(
            err.starts_with("tokens.toml:5: key `expires`: unknown field `expires`"),
            "{err}"
        );
        let err = parse_err("tokens = []\n");
        assert!(
            err.starts_with("tokens.toml:1: key `tokens`: unknown field `tokens`"),
            "{err}"
        );
    }

    #[test]
    fn missing_name_sha256_or_roles() {
        let hash = hash_token(CI_TOKEN);
        let err = parse_err(&format!(
            "{}\n{}",
            good_file(),
            one(None, Some(&hash_token("x")), Some("{ dev = \"viewer\" }"))
        ));
        assert_eq!(
            err,
            "tokens.toml:12: key `name`: missing; every [[token]] needs a unique `name`, \
             recorded as the actor in the audit log"
        );
        let err = parse_err(&one(Some("ci"), None, Some("{ dev = \"viewer\" }")));
        assert_eq!(
            err,
            "tokens.toml:1: key `sha256`: missing; give the SHA-256 of the token as 64 \
             hexadecimal characters (never the token itself)"
        );
        let err = parse_err(&one(Some("ci"), Some(&hash), None));
        assert_eq!(
            err,
            "tokens.toml:1: key `roles`: missing; give the token's role per environment, e.g. \
             roles = { \"*\" = \"viewer\", prod = \"deployer\" }"
        );
        let err = parse_err(&one(Some("ci"), Some(&hash), Some("{}")));
        assert_eq!(
            err,
            "tokens.toml:4: key `roles`: is empty; give the token's role per environment, e.g. \
             roles = { \"*\" = \"viewer\", prod = \"deployer\" }"
        );
    }

    #[test]
    fn names_must_be_plain() {
        for bad in ["", "ci bot", "ci\\tbot"] {
            let err = parse_err(&one(
                Some(bad),
                Some(&hash_token(CI_TOKEN)),
                Some("{ dev = \"viewer\" }"),
            ));
            assert_eq!(
                err,
                "tokens.toml:2: key `name`: must be a non-empty name without spaces or control \
                 characters; it is recorded as the actor in the audit log",
                "name {bad:?}"
            );
        }
    }

    #[test]
    fn sha256_must_be_64_hex_characters() {
        let roles = Some("{ dev = \"viewer\" }");
        let err = parse_err(&one(Some("ci"), Some("abc12"), roles));
        assert_eq!(
            err,
            "tokens.toml:3: key `sha256`: must be the SHA-256 of the token as 64 hexadecimal \
             characters, not 5 characters"
        );
        let err = parse_err(&one(Some("ci"), Some(&"z".repeat(64)), roles));
        assert_eq!(
            err,
            "tokens.toml:3: key `sha256`: must be the SHA-256 of the token as 64 hexadecimal \
             characters; it contains a character that is not hexadecimal"
        );
        let token = generate_token();
        let err = parse_err(&one(Some("ci"), Some(&token), roles));
        assert_eq!(
            err,
            "tokens.toml:3: key `sha256`: must be the SHA-256 of the token as 64 hexadecimal \
             characters; this looks like a token, not its hash: store only the hash, and treat \
             this token as leaked and replace it"
        );
        assert!(!err.contains(&token));
    }

    #[test]
    fn duplicate_names_and_hashes_are_refused() {
        let roles = Some("{ dev = \"viewer\" }");
        let text = format!(
            "{}\n{}",
            one(Some("ci"), Some(&hash_token("a")), roles),
            one(Some("ci"), Some(&hash_token("b")), roles)
        );
        assert_eq!(
            parse_err(&text),
            "tokens.toml:7: key `name`: `ci` is already the name of the token on line 2; names \
             must be unique because they identify the caller in the audit log"
        );
        let text = format!(
            "{}\n{}",
            one(Some("ci"), Some(&hash_token("a")), roles),
            one(Some("deploy-bot"), Some(&hash_token("a")), roles)
        );
        assert_eq!(
            parse_err(&text),
            "tokens.toml:8: key `sha256`: the same hash as token `ci` (line 2); one token with \
             two names would make the audit log ambiguous, so generate a new token for \
             `deploy-bot`"
        );
    }

    #[test]
    fn unknown_roles_and_environments_are_refused() {
        let hash = hash_token(CI_TOKEN);
        let err = parse_err(&one(
            Some("ci"),
            Some(&hash),
            Some("{ dev = \"viewer\", prod = \"owner\" }"),
        ));
        assert_eq!(
            err,
            "tokens.toml:4: key `roles.prod`: unknown role `owner`; roles are viewer, deployer, \
             approver and admin"
        );
        let err = parse_err(&one(
            Some("ci"),
            Some(&hash),
            Some("{ \"*\" = \"viewer\", qa = \"viewer\" }"),
        ));
        assert_eq!(
            err,
            "tokens.toml:4: key `roles.qa`: unknown environment `qa`; known environments: dev, \
             staging, prod; \"*\" means every environment"
        );
        let err = Tokens::parse(
            Path::new("tokens.toml"),
            &one(Some("ci"), Some(&hash), Some("{ dev = \"viewer\" }")),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "tokens.toml:4: key `roles.dev`: unknown environment `dev`; known environments: \
             none; \"*\" means every environment"
        );
    }

    #[test]
    fn the_right_token_authenticates_with_its_roles() {
        let tokens = tokens();
        let ci = tokens
            .authenticate(Some(&format!("Bearer {CI_TOKEN}")))
            .unwrap();
        assert_eq!(ci.name, "ci");
        assert_eq!(ci.role_for("prod"), Some(Role::Viewer));
        assert_eq!(ci.role_for("dev"), Some(Role::Deployer));
        let alice = tokens
            .authenticate(Some(&format!("  bEaReR \t {ALICE_TOKEN}  ")))
            .unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.role_for("prod"), Some(Role::Approver));
    }

    #[test]
    fn wrong_missing_and_malformed_headers_are_401() {
        let tokens = tokens();
        let cases = [
            (Some("Bearer slc_not-a-known-token"), AuthError::Unknown),
            (Some(CI_TOKEN), AuthError::Malformed),
            (None, AuthError::Missing),
            (Some("   "), AuthError::Missing),
            (Some("Basic xyz"), AuthError::Malformed),
            (Some("Bearer "), AuthError::Malformed),
            (Some("Bearer"), AuthError::Malformed),
            (Some("Bearer a b"), AuthError::Malformed),
        ];
        for (header, expected) in cases {
            let err = tokens.authenticate(header).unwrap_err();
            assert_eq!(err, expected, "header {header:?}");
            assert_eq!(err.status(), 401);
        }
        assert_eq!(
            AuthError::Missing.to_string(),
            "no bearer token: send `Authorization: Bearer <token>`"
        );
        assert_eq!(
            AuthError::Malformed.to_string(),
            "the Authorization header is not `Bearer <token>`"
        );
        let unknown = tokens
            .authenticate(Some("Bearer slc_secret-value"))
            .unwrap_err()
            .to_string();
        assert_eq!(unknown, "the bearer token is not known to this daemon");
    }

    #[test]
    fn no_tokens_means_nobody_authenticates() {
        let err = Tokens::default()
            .authenticate(Some(&format!("Bearer {CI_TOKEN}")))
            .unwrap_err();
        assert_eq!(err, AuthError::Unknown);
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Deployer);
        assert!(Role::Deployer < Role::Approver);
        assert!(Role::Approver < Role::Admin);
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{role}\""));
        }
        assert_eq!(
            "Admin".parse::<Role>(),
            Err("unknown role `Admin`; roles are viewer, deployer, approver and admin".into())
        );
    }

    #[test]
    fn a_specific_entry_overrides_star_even_when_lower() {
        let c = caller(&[("*", Role::Admin), ("prod", Role::Viewer)]);
        assert_eq!(c.role_for("prod"), Some(Role::Viewer));
        assert_eq!(c.role_for("dev"), Some(Role::Admin));
        let c = caller(&[("*", Role::Viewer), ("prod", Role::Approver)]);
        assert_eq!(c.role_for("prod"), Some(Role::Approver));
        assert_eq!(c.role_for("staging"), Some(Role::Viewer));
        let c = caller(&[("dev", Role::Deployer)]);
        assert_eq!(c.role_for("prod"), None);
    }

    #[test]
    fn require_allows_and_refuses_with_exact_messages() {
        let c = caller(&[("dev", Role::Deployer), ("prod", Role::Viewer)]);
        assert_eq!(c.require("dev", Role::Viewer), Ok(()));
        assert_eq!(c.require("dev", Role::Deployer), Ok(()));
        assert_eq!(c.require("prod", Role::Viewer), Ok(()));
        let err = c.require("prod", Role::Deployer).unwrap_err();
        assert_eq!(err.status(), 403);
        assert_eq!(
            err,
            AuthError::Forbidden {
                caller: "ci".into(),
                environment: "prod".into(),
                needed: Role::Deployer,
                has: Some(Role::Viewer),
            }
        );
        assert_eq!(
            err.to_string(),
            "`ci` is viewer on `prod`; this needs deployer"
        );
        let err = c.require("staging", Role::Viewer).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`ci` has no role on `staging`; this needs viewer"
        );
    }

    #[test]
    fn require_everywhere_checks_each_environment() {
        let envs = envs();
        let admin = caller(&[("*", Role::Admin)]);
        assert_eq!(admin.require_everywhere(&envs, Role::Admin), Ok(()));
        assert_eq!(admin.require_everywhere(&[], Role::Admin), Ok(()));

        let each = caller(&[
            ("dev", Role::Admin),
            ("staging", Role::Admin),
            ("prod", Role::Admin),
        ]);
        assert_eq!(each.require_everywhere(&envs, Role::Admin), Ok(()));

        let restricted = caller(&[("*", Role::Admin), ("prod", Role::Approver)]);
        assert_eq!(
            restricted
                .require_everywhere(&envs, Role::Admin)
                .unwrap_err()
                .to_string(),
            "`ci` is approver on `prod`; this needs admin"
        );
        assert_eq!(restricted.require_everywhere(&envs, Role::Approver), Ok(()));

        let partial = caller(&[("dev", Role::Admin)]);
        assert_eq!(
            partial
                .require_everywhere(&envs, Role::Admin)
                .unwrap_err()
                .to_string(),
            "`ci` has no role on `staging`; this needs admin"
        );
        assert_eq!(
            each.require_everywhere(&[], Role::Admin)
                .unwrap_err()
                .to_string(),
            "`ci` has no role on every environment (\"*\"); this needs admin"
        );
    }

    #[test]
    fn generated_tokens_are_distinct_and_well_formed() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        for token in [&a, &b] {
            let body = token.strip_prefix("slc_").expect("prefix");
            assert_eq!(body.len(), 43, "{token}");
            assert!(
                body.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{token}"
            );
        }
    }

    #[test]
    fn base64url_matches_rfc_4648() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(b"fooba"), "Zm9vYmE");
        assert_eq!(base64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url(&[0xfb, 0xff, 0xbf]), "-_-_");
    }

    #[test]
    fn hash_token_is_lowercase_sha256_hex() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_rendered_entry_parses_back_and_authenticates() {
        let token = generate_token();
        let roles = BTreeMap::from([
            ("*".to_string(), Role::Viewer),
            ("prod".to_string(), Role::Deployer),
        ]);
        let entry = render_entry("release-bot", &hash_token(&token), &roles);
        assert_eq!(
            entry,
            format!(
                "[[token]]\nname = \"release-bot\"\nsha256 = \"{}\"\nroles = {{ \"*\" = \
                 \"viewer\", prod = \"deployer\" }}\n",
                hash_token(&token)
            )
        );
        assert!(!entry.contains(&token));
        let text = format!("{}\n{entry}", good_file());
        let tokens = parse(&text).unwrap();
        assert_eq!(tokens.len(), 3);
        let caller = tokens
            .authenticate(Some(&format!("Bearer {token}")))
            .unwrap();
        assert_eq!(caller.name, "release-bot");
        assert_eq!(caller.roles, roles);
        assert_eq!(caller.role_for("dev"), Some(Role::Viewer));
        let other = tokens
            .authenticate(Some(&format!("Bearer {CI_TOKEN}")))
            .unwrap();
        assert_eq!(other.name, "ci");
    }

    #[test]
    fn rendered_names_with_quotes_stay_valid_toml() {
        let entry = render_entry(
            "o\"brien",
            &hash_token("x"),
            &BTreeMap::from([("dev".to_string(), Role::Admin)]),
        );
        let tokens = parse(&entry).unwrap();
        assert_eq!(tokens.entries[0].name, "o\"brien");
    }

    #[test]
    fn role_grants_parse_from_the_command_line() {
        assert_eq!(
            parse_role_grant("prod=deployer"),
            Ok(("prod".to_string(), Role::Deployer))
        );
        assert_eq!(
            parse_role_grant(" * = viewer "),
            Ok(("*".to_string(), Role::Viewer))
        );
        assert_eq!(
            parse_role_grant("prod"),
            Err("`prod` is not ENVIRONMENT=ROLE; write e.g. prod=deployer or *=viewer".into())
        );
        assert_eq!(
            parse_role_grant("=admin"),
            Err("`=admin` is not ENVIRONMENT=ROLE; write e.g. prod=deployer or *=viewer".into())
        );
        assert_eq!(
            parse_role_grant("prod=root"),
            Err("unknown role `root`; roles are viewer, deployer, approver and admin".into())
        );
        assert_eq!(
            parse_role_grant("pr od=admin"),
            Err("`pr od` is not an environment name (letters, digits, `-`, `_`) or \"*\"".into())
        );
    }

    #[test]
    fn caller_serializes_name_and_roles() {
        let c = caller(&[("*", Role::Viewer), ("prod", Role::Deployer)]);
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"name": "ci", "roles": {"*": "viewer", "prod": "deployer"}})
        );
    }
}
