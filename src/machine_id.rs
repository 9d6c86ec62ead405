//! The machine name the agent reports in every frame: the Salt minion id.
//!
//! Saltpeter never passes `SP_MACHINE_ID`, and its endpoint drops every frame
//! whose `machine` is not one of the minion ids it targeted. So the default is
//! the minion's own id, computed the way `salt.config.minion_config` computes
//! it (salt 2019.2 to 3008 agree: `load_config`, `include_config`,
//! `_read_conf_file`, `apply_minion_config`, `get_id`,
//! `salt.utils.network.generate_minion_id`, `_append_domain`), and checked
//! against Salt itself by tests/salt_id (the differential test):
//!
//! 1. `SP_MACHINE_ID` (the caller's override) wins.
//! 2. `id:` in the minion configuration: the main file `<dir>/minion`, where
//!    `<dir>` is the `-c` of the salt-minion (or salt-call) process among our
//!    ancestors, else `$SALT_CONFIG_DIR`, else `/etc/salt` (with the default
//!    directory, `$SALT_MINION_CONFIG` names the main file when it is one);
//!    then the `default_include` glob (from the main file, else
//!    `minion.d/*.conf`), then the main file's `include` globs, each sorted,
//!    each file's own `include` (relative to it) after it: a later file
//!    wins, and a file Salt cannot parse is skipped whole. YAML as Salt reads
//!    it (`salt_yaml`), a non-string id turned into its Python `str()`.
//! 3. `<root_dir>/etc/salt/minion_id`, the id salt-minion cached (unless
//!    `minion_id_caching` is falsy): its first line, `strip()`ped (a UTF-8
//!    BOM kept, as Salt keeps it); not when empty or `localhost`.
//! 4. The id `generate_minion_id()` makes from the host's names (see
//!    `generate`), then `minion_id_lowercase` and `minion_id_remove_domain`.
//!
//! `append_domain` applies to 2, 3 and 4, except to a generated id that is an
//! IPv4 address. `id_function` and `sdb://` ids need Salt's own modules: a
//! warning names `SP_MACHINE_ID`, the only way to get them right.
//!
//! Files are read with a size bound, never through a FIFO, and any file that
//! cannot be read or parsed is skipped with a warning: the lookup falls
//! through, it never fails. The whole reading is bounded (`Reading`: files,
//! bytes, YAML work), and stops at an include loop, where Salt fails.
//! Step 4 may consult DNS: `resolve` runs on the link thread (and in the
//! guardian, and for `--print-machine-id`), off the launch path, and bounds
//! its lookups to `DNS_BOUND` in all, on a thread of their own. Only
//! `note_salt_ancestor` runs at launch, before detaching: a few /proc reads.

use std::ffi::{CStr, CString};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::regular_file;
use crate::salt_yaml::{self, Value};
use crate::threads::SpawnDetached;

/// Salt's `syspaths.CONFIG_DIR` on Linux.
const SALT_CONFIG_DIR: &str = "/etc/salt";
/// Salt's `DEFAULT_MINION_OPTS["default_include"]`.
const DEFAULT_INCLUDE: &str = "minion.d/*.conf";
/// A minion configuration is a few KiB; a bigger file is not read (and its
/// `id:`, if any, is missed with a warning) so a hostile file cannot stall us.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Salt recurses through `include:` without a limit (and fails on a loop,
/// below); we stop here.
const MAX_INCLUDE_DEPTH: usize = 8;
/// Files one glob may bring in before the rest are ignored.
const MAX_GLOB_MATCHES: usize = 256;
/// Files one lookup reads, a file counted each time an include brings it
/// (Salt reads it again), and globs it expands: includes that fan out
/// (each file including several that each include several...) cannot
/// multiply the work past this.
const MAX_FILE_READS: usize = 512;
/// Bytes of configuration one lookup parses, all files together.
const MAX_BYTES_READ: u64 = 4 << 20;
/// The top-level keys the id depends on: only these are kept of each file
/// (the rest is checked, as Salt's loader would construct it, and dropped).
const KEYS: &[&str] = &[
    "id",
    "include",
    "default_include",
    "root_dir",
    "append_domain",
    "minion_id_caching",
    "minion_id_lowercase",
    "minion_id_remove_domain",
    "id_function",
];
/// The host-name lookups (getfqdn's forward and reverse lookups, the
/// canonical name of `localhost`) together: the server waits 30 s for the
/// first frame, and a resolver that never answers would take longer than
/// that (resolv.conf's timeout times its attempts, per query).
pub const DNS_BOUND: Duration = Duration::from_secs(5);
/// How far up the process tree the salt-minion process is looked for
/// (salt-minion, its job process, a shell or two, us).
const MAX_ANCESTORS: usize = 16;

/// Where the machine id came from (logged, so a wrong name can be traced).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `SP_MACHINE_ID`.
    Override,
    /// `id:` in this minion configuration file.
    MinionConfig(PathBuf),
    /// The minion id salt-minion cached in this file.
    MinionIdFile(PathBuf),
    /// Salt's `generate_minion_id()` from the host's names and addresses.
    Generated,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Override => write!(f, "SP_MACHINE_ID"),
            Source::MinionConfig(path) => write!(f, "id: in {}", path.display()),
            Source::MinionIdFile(path) => write!(f, "{}", path.display()),
            Source::Generated => write!(f, "the host's names, as generate_minion_id() picks"),
        }
    }
}

/// The `-c` directory of the salt-minion process among our ancestors, found
/// at launch (`note_salt_ancestor`), before detaching makes init our parent.
static ANCESTOR_CONFIG_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Look for the salt-minion (or salt-call) process that started us and
/// remember its `-c` directory. Call at launch, before detaching; cheap
/// (a few /proc reads, no DNS).
pub fn note_salt_ancestor() {
    let found = salt_ancestor_config_dir();
    if let Ok(mut slot) = ANCESTOR_CONFIG_DIR.lock() {
        *slot = found;
    }
}

/// The `-c` of the nearest salt-minion or salt-call process above us; `None`
/// when there is none, or when that process has no `-c` (it then took
/// SALT_CONFIG_DIR or /etc/salt, as we will).
fn salt_ancestor_config_dir() -> Option<PathBuf> {
    let mut pid = unsafe { libc::getppid() };
    for _ in 0..MAX_ANCESTORS {
        if pid <= 1 {
            break;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if let Some(dir) = salt_config_dir_from_cmdline(&cmdline) {
            let dir = PathBuf::from(dir?);
            if dir.is_absolute() {
                return Some(dir);
            }
            // Salt makes a relative -c absolute against its own cwd.
            return std::fs::read_link(format!("/proc/{pid}/cwd"))
                .ok()
                .map(|cwd| cwd.join(dir));
        }
        pid = parent_of(pid).unwrap_or(0);
    }
    None
}

/// The parent pid from `/proc/<pid>/stat` (the field after the `)` that
/// ends the command name, which may itself contain spaces and parentheses).
fn parent_of(pid: libc::pid_t) -> Option<libc::pid_t> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// When this command line is salt-minion's or salt-call's (run directly or
/// by an interpreter): `Some` of its config directory option, if it has one
/// (`-c DIR`, `-cDIR`, `--config-dir=DIR`, `--config-dir DIR`). A command
/// line rewritten by setproctitle (one string, spaces between the words)
/// is split on spaces. `None` for any other process.
fn salt_config_dir_from_cmdline(cmdline: &[u8]) -> Option<Option<String>> {
    let text = String::from_utf8_lossy(cmdline);
    let mut args: Vec<&str> = text.split('\0').filter(|a| !a.is_empty()).collect();
    if args.len() == 1 && args[0].contains(' ') {
        args = args[0].split(' ').filter(|a| !a.is_empty()).collect();
    }
    let is_salt = |arg: &str| {
        let name = arg.rsplit('/').next().unwrap_or(arg);
        name == "salt-minion" || name == "salt-call"
    };
    // The program itself, or the script an interpreter runs.
    let at = args.iter().take(2).position(|a| is_salt(a))?;
    let mut found = None;
    let mut rest = args[at + 1..].iter();
    while let Some(arg) = rest.next() {
        if *arg == "--" {
            break;
        }
        if *arg == "-c" || *arg == "--config-dir" {
            found = rest.next().map(|d| d.to_string());
        } else if let Some(dir) = arg.strip_prefix("--config-dir=") {
            found = Some(dir.to_string());
        } else if let Some(dir) = arg.strip_prefix("-c") {
            // `-cDIR`, but not another long option that starts with `-c`.
            if !arg.starts_with("--") {
                found = Some(dir.to_string());
            }
        }
    }
    Some(found)
}

/// The machine id and where it came from. `env` is the process environment
/// (the minion's, inherited through `cmd.run_all`). Logs the outcome and any
/// configuration file it had to skip. May take up to `DNS_BOUND` when the
/// id must be generated from the host's names. Not inlined, and `env` not
/// generic: the link thread, the guardian, `--print-machine-id` and
/// `--check` all call it, and one copy keeps the binary smaller.
#[inline(never)]
pub fn resolve(
    override_id: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> (String, Source) {
    let ancestor = ANCESTOR_CONFIG_DIR.lock().ok().and_then(|dir| dir.clone());
    let (id, source) = resolve_in(
        override_id,
        env,
        Path::new("/"),
        ancestor.as_deref(),
        || HostFacts::gather(Path::new("/"), DNS_BOUND),
    );
    log::info!("machine id {id:?} from {source}");
    (id, source)
}

/// `resolve` with the filesystem root (for Salt's default paths), the
/// ancestor's `-c` and the host's facts given, so tests need neither
/// /etc/salt nor DNS.
fn resolve_in(
    override_id: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    root: &Path,
    ancestor_config_dir: Option<&Path>,
    host: impl FnOnce() -> HostFacts,
) -> (String, Source) {
    if let Some(id) = override_id.filter(|id| !id.is_empty()) {
        return (id.to_string(), Source::Override);
    }
    let settings = read_minion_config(env, root, ancestor_config_dir);
    let with_domain = |id: String| match &settings.append_domain {
        Some(domain) => append_domain(id, domain),
        None => id,
    };
    if let Some((value, path)) = &settings.id {
        match value.python_str() {
            Some(id) if id.starts_with("sdb://") => {
                log::warn!(
                    "{}: id {id:?} is an sdb:// reference, which only Salt can look up; \
                     reporting it as it is: set SP_MACHINE_ID in the cron's env: to the real id",
                    path.display()
                );
                return (with_domain(id), Source::MinionConfig(path.clone()));
            }
            // Salt ignores an empty id (`if not opts.get("id")`).
            Some(id) if !id.is_empty() => {
                return (with_domain(id), Source::MinionConfig(path.clone()));
            }
            Some(_) => log::debug!("{}: id is empty; Salt ignores it too", path.display()),
            None => log::warn!(
                "{}: id is a {}, whose Python str() this agent does not reproduce; \
                 ignored (quote it, or set SP_MACHINE_ID)",
                path.display(),
                value.type_name()
            ),
        }
    }
    if settings.minion_id_caching {
        let root_dir = match &settings.root_dir {
            Some(dir) => root.join(dir),
            None => root.to_path_buf(),
        };
        let cache = root_dir
            .join(SALT_CONFIG_DIR.trim_start_matches('/'))
            .join("minion_id");
        if let Some(id) = read_minion_id_file(&cache) {
            return (with_domain(id), Source::MinionIdFile(cache));
        }
    }
    if settings.id_function {
        log::warn!(
            "minion config: id_function computes the id with a Salt module, which this agent \
             cannot run; using the id generate_minion_id() would give: set SP_MACHINE_ID in \
             the cron's env: to the real id"
        );
    }
    let mut id = generate(&host());
    // Python's lower()/upper() are Unicode-wide; host names are ASCII, and
    // Unicode case tables would cost the binary ~20 KiB.
    if settings.lowercase {
        id = id.to_ascii_lowercase();
    }
    match &settings.remove_domain {
        Some(RemoveDomain::Any) => {
            if let Some((host, _)) = id.split_once('.') {
                id = host.to_string();
            }
        }
        Some(RemoveDomain::Suffix(domain)) => {
            let suffix = format!(".{domain}");
            if id
                .to_ascii_uppercase()
                .ends_with(&suffix.to_ascii_uppercase())
            {
                id.truncate(id.len().saturating_sub(suffix.len()));
            }
        }
        None => {}
    }
    // `_append_domain` is skipped for an IPv4 address (Salt's is_ipv4).
    if id.parse::<Ipv4Addr>().is_err() {
        id = with_domain(id);
    }
    (id, Source::Generated)
}

/// Salt's `_append_domain`: not when the id already ends with the domain or
/// with a dot (a terminated FQDN).
fn append_domain(id: String, domain: &str) -> String {
    if id.ends_with(domain) || id.ends_with('.') {
        id
    } else {
        format!("{id}.{domain}")
    }
}

/// `minion_id_remove_domain`: `True` removes any domain, a string that one.
enum RemoveDomain {
    Any,
    Suffix(String),
}

/// What the minion configuration says about the keys we need; for `id`,
/// also the file that set it (the last one that did).
struct MinionSettings {
    id: Option<(Value, PathBuf)>,
    root_dir: Option<String>,
    append_domain: Option<String>,
    minion_id_caching: bool,
    lowercase: bool,
    remove_domain: Option<RemoveDomain>,
    id_function: bool,
}

fn read_minion_config(
    env: &dyn Fn(&str) -> Option<String>,
    root: &Path,
    ancestor_config_dir: Option<&Path>,
) -> MinionSettings {
    let default_dir = root.join(SALT_CONFIG_DIR.trim_start_matches('/'));
    // salt-minion's -c, whose default is $SALT_CONFIG_DIR, else /etc/salt.
    let config_dir = match (
        ancestor_config_dir,
        env("SALT_CONFIG_DIR").filter(|d| !d.is_empty()),
    ) {
        (Some(dir), _) => root.join(dir.strip_prefix("/").unwrap_or(dir)),
        (None, Some(dir)) => root.join(dir.trim_start_matches('/')),
        (None, None) => default_dir.clone(),
    };
    let default_path = default_dir.join("minion");
    let path = config_dir.join("minion");
    // minion_config: SALT_CONFIG_DIR/minion stands in for an unset
    // SALT_MINION_CONFIG; load_config: the variable counts only for the
    // default path, and only when it names a file.
    let env_main = env("SALT_MINION_CONFIG")
        .filter(|p| !p.is_empty())
        .or_else(|| {
            env("SALT_CONFIG_DIR")
                .filter(|d| !d.is_empty())
                .map(|d| format!("{d}/minion"))
        })
        .map(|p| root.join(p.trim_start_matches('/')));
    let main_path = match env_main {
        Some(p) if path == default_path && p.is_file() => p,
        _ => path.clone(),
    };
    let mut includes = Includes {
        home: env("HOME"),
        chain: Vec::new(),
        outside: 0,
        files: Vec::new(),
        reading: Reading {
            files_left: MAX_FILE_READS,
            bytes_left: MAX_BYTES_READ,
            work_left: salt_yaml::WORK_BUDGET,
        },
    };
    let main = includes.reading.config_file(&main_path).unwrap_or(None);
    let default_include = match main.as_ref().and_then(|top| top.get("default_include")) {
        Some(value) => include_patterns(Some(value)),
        None => vec![DEFAULT_INCLUDE.to_string()],
    };
    let include = include_patterns(main.as_ref().and_then(|top| top.get("include")));
    if let Some(top) = main {
        includes.files.push((main_path.clone(), top));
    }
    // Includes are relative to the -c directory, even when the main file
    // came from SALT_MINION_CONFIG (include_config is given `path`). The
    // main file heads the chain of its own `include`: Salt reads that
    // again if an include brings the main file back.
    if includes.collect(&default_include, &config_dir).is_ok() {
        includes.chain.push(main_path.clone());
        includes.outside = 1;
        let _ = includes.collect(&include, &config_dir);
    }

    let mut settings = MinionSettings {
        id: None,
        root_dir: None,
        append_domain: None,
        minion_id_caching: true,
        lowercase: false,
        remove_domain: None,
        id_function: false,
    };
    for (path, top) in includes.files {
        if let Some(id) = top.get("id") {
            settings.id = Some((id.clone(), path.clone()));
        }
        match top.get("root_dir") {
            Some(Value::Str(dir)) => settings.root_dir = Some(dir.clone()),
            Some(_) => settings.root_dir = None,
            None => {}
        }
        match top.get("append_domain") {
            Some(Value::Str(domain)) if !domain.is_empty() => {
                settings.append_domain = Some(domain.clone());
            }
            Some(_) => settings.append_domain = None,
            None => {}
        }
        if let Some(caching) = top.get("minion_id_caching") {
            settings.minion_id_caching = caching.truthy();
        }
        if let Some(lowercase) = top.get("minion_id_lowercase") {
            settings.lowercase = lowercase.truthy();
        }
        match top.get("minion_id_remove_domain") {
            Some(Value::Bool(true)) => settings.remove_domain = Some(RemoveDomain::Any),
            Some(Value::Str(domain)) if !domain.is_empty() => {
                settings.remove_domain = Some(RemoveDomain::Suffix(domain.clone()));
            }
            Some(_) => settings.remove_domain = None,
            None => {}
        }
        if let Some(function) = top.get("id_function") {
            settings.id_function = function.truthy();
        }
    }
    settings
}

/// An `include` or `default_include` value as `include_config` takes it:
/// one pattern, or a list of them (items that are not strings ignored).
fn include_patterns(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Str(pattern)) if !pattern.is_empty() => vec![pattern.clone()],
        Some(Value::Seq(items)) => items
            .iter()
            .filter_map(|item| match item {
                Value::Str(pattern) => Some(pattern.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// What one lookup may still read (`MAX_FILE_READS`, `MAX_BYTES_READ`,
/// `salt_yaml::WORK_BUDGET`): any configuration, however its includes fan
/// out and its merges nest, is read in bounded time and memory.
struct Reading {
    files_left: usize,
    bytes_left: u64,
    work_left: usize,
}

/// The reading of includes stopped early (an include loop, or the
/// `Reading` bound spent): the files read until then count, none after.
struct Stop;

/// The warning when the reading stops early.
fn stopped(path: &Path, why: &str) -> Stop {
    log::warn!(
        "minion config: {}: {why}; no file is read after it, the id is what the files \
         before give (set SP_MACHINE_ID in the cron's env: if it is wrong)",
        path.display()
    );
    Stop
}

impl Reading {
    /// One read of a file or a glob; `Err` once the bound is spent.
    fn take_file(&mut self, path: &Path) -> Result<(), Stop> {
        if self.files_left == 0 {
            return Err(stopped(
                path,
                "the includes bring more than 512 files (Salt would read them all, slowly)",
            ));
        }
        self.files_left -= 1;
        Ok(())
    }

    /// A config file's top-level mapping (`Map`, possibly empty, only the
    /// `KEYS`), or `None` (with a warning when the file exists) if Salt
    /// would not use it; `Err` once the bound is spent.
    fn config_file(&mut self, path: &Path) -> Result<Option<Value>, Stop> {
        self.take_file(path)?;
        let limit = MAX_CONFIG_BYTES.min(self.bytes_left);
        let bytes = match read_regular_file(path, limit) {
            Ok(bytes) => bytes,
            Err(ReadError::Missing) => return Ok(None),
            Err(ReadError::Other(_)) if limit < MAX_CONFIG_BYTES => {
                return Err(stopped(path, "more than 4 MiB of configuration in all"));
            }
            Err(ReadError::Other(why)) => {
                log::warn!("minion config {}: {why}; skipped", path.display());
                return Ok(None);
            }
        };
        self.bytes_left -= bytes.len() as u64;
        let parsed = String::from_utf8(bytes)
            .map_err(|_| "not UTF-8 text".to_string())
            .and_then(|text| salt_yaml::load_keys(&text, Some(KEYS), &mut self.work_left));
        // _read_conf_file: `safe_load(...) or {}`, then it must be a dict.
        match parsed {
            Ok(map @ Value::Map(_)) => Ok(Some(map)),
            Ok(value) if !value.truthy() => Ok(Some(Value::Map(Vec::new()))),
            Ok(value) => {
                log::warn!(
                    "minion config {}: a {}, not a mapping; skipped, as Salt does",
                    path.display(),
                    value.type_name()
                );
                Ok(None)
            }
            Err(why) if self.work_left == 0 => Err(stopped(path, &why)),
            Err(why) => {
                log::warn!(
                    "minion config {}: {why}; skipped, as Salt does",
                    path.display()
                );
                Ok(None)
            }
        }
    }
}

/// The walk through `include:` globs: Salt's `include_config`.
struct Includes {
    home: Option<String>,
    /// The files whose includes are being read, outermost first.
    chain: Vec<PathBuf>,
    /// How many of them are not includes (the main file, for its own
    /// `include`): not counted in the depth.
    outside: usize,
    /// Each file read and its top-level mapping, in Salt's order.
    files: Vec<(PathBuf, Value)>,
    reading: Reading,
}

impl Includes {
    /// Read each file the patterns match, in Salt's order: sorted per
    /// pattern, each file followed by its own includes (relative to it).
    fn collect(&mut self, patterns: &[String], relative_to: &Path) -> Result<(), Stop> {
        if self.chain.len() - self.outside >= MAX_INCLUDE_DEPTH {
            log::warn!(
                "minion config: includes nested deeper than {MAX_INCLUDE_DEPTH}; not followed"
            );
            return Ok(());
        }
        for pattern in patterns {
            let expanded = match (pattern.strip_prefix('~'), self.home.as_deref()) {
                (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
                    format!("{home}{rest}")
                }
                _ => pattern.clone(),
            };
            let absolute = relative_to.join(&expanded);
            self.reading.take_file(&absolute)?;
            for path in glob(&absolute) {
                // A file Salt cannot read is an empty one to it (skipped).
                let Some(top) = self.reading.config_file(&path)? else {
                    continue;
                };
                let nested = include_patterns(top.get("include"));
                self.files.push((path.clone(), top));
                if nested.is_empty() {
                    continue;
                }
                // Salt would read this file's includes again, and again:
                // it recurses until Python's limit and fails.
                if self.chain.iter().any(|p| p.as_os_str() == path.as_os_str()) {
                    return Err(stopped(
                        &path,
                        "an include loop (the file includes itself, directly or not): Salt \
                         fails on it (RecursionError) and salt-minion does not start with it",
                    ));
                }
                let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
                self.chain.push(path);
                let nested = self.collect(&nested, &parent);
                self.chain.pop();
                nested?;
            }
        }
        Ok(())
    }
}

/// The first line of salt-minion's id cache, as `get_id` reads it: text
/// mode (any of `\n`, `\r\n`, `\r` ends the line), `strip()`; `None` when
/// that leaves nothing or `localhost`. A UTF-8 BOM stays: `get_id` looks for
/// `codecs.BOM`, which is the UTF-16 one, so salt-minion keeps U+FEFF in its
/// id (the differential test shows all three Salt versions do).
fn read_minion_id_file(path: &Path) -> Option<String> {
    let bytes = match read_regular_file(path, 64 * 1024) {
        Ok(bytes) => bytes,
        Err(ReadError::Missing) => return None,
        Err(ReadError::Other(why)) => {
            log::warn!("{}: {why}; skipped", path.display());
            return None;
        }
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        log::warn!("{}: not UTF-8 text; skipped", path.display());
        return None;
    };
    let line = text.split(['\n', '\r']).next().unwrap_or("");
    let name = python_strip(line);
    (!name.is_empty() && name != "localhost").then(|| name.to_string())
}

/// Python's `str.isspace()`: Unicode whitespace plus the four separators
/// (U+001C..U+001F) Python also counts.
fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
fn python_strip(text: &str) -> &str {
    text.trim_matches(python_space)
}

// ---------------------------------------------------------------------------
// The generated id: salt.utils.network.generate_minion_id.

/// What `generate_minion_id()` looks at, gathered once (`gather`) or made
/// up by tests.
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    /// `socket.gethostname()`, which on Linux is also `platform.node()`.
    pub hostname: String,
    /// `socket.getfqdn(hostname)`.
    pub fqdn: String,
    /// The canonical name `getaddrinfo("localhost", AI_CANONNAME)` gives:
    /// Salt asks only when every name above was filtered out.
    pub localhost_canonical: Option<String>,
    /// The text of /etc/hostname, /etc/nodename and /etc/hosts (absent: None).
    pub files: [Option<String>; 3],
    /// The host's IPv4 addresses that are not loopback, in ascending order.
    pub addresses: Vec<Ipv4Addr>,
}

/// Salt's DistinctList filter: names that stand for the local host.
fn is_localhost_name(name: &str) -> bool {
    let c: Vec<char> = name.chars().collect();
    let starts = |prefix: &str| name.starts_with(prefix);
    if starts("localhost")
        || starts("ip6-")
        || starts("0.0.0.0")
        || starts("::1")
        || starts("ipv6-")
        || starts("fe00::")
        || starts("fe02::")
    {
        return true;
    }
    // r"127[.]\d"
    if starts("127.") && c.get(4).is_some_and(|d| d.is_ascii_digit()) {
        return true;
    }
    // r"1.0.0.*.ip6.arpa" with re.match: `.` is any character.
    if c.len() >= 14 && c[0] == '1' && c[2] == '0' && c[4] == '0' {
        let tail: Vec<char> = "ip6".chars().collect();
        for k in 5..=c.len() - 9 {
            if c[k + 1..k + 4] == tail[..] && c[k + 5..k + 9].iter().collect::<String>() == "arpa" {
                return true;
            }
        }
    }
    false
}

/// `generate_minion_id()`: the first candidate that survives the filter
/// and is not already listed, else `localhost`.
pub fn generate(facts: &HostFacts) -> String {
    let mut names: Vec<String> = Vec::new();
    let add = |name: &str, names: &mut Vec<String>| {
        if !name.is_empty() && !names.iter().any(|n| n == name) && !is_localhost_name(name) {
            names.push(name.to_string());
        }
    };
    add(&facts.fqdn, &mut names);
    add(&facts.hostname, &mut names);
    if names.is_empty() {
        if let Some(canonical) = &facts.localhost_canonical {
            add(canonical, &mut names);
        }
    }
    for text in facts.files.iter().flatten() {
        for line in text.split(['\n', '\r']) {
            let line = python_strip(line);
            let before_comment = line.split('#').next().unwrap_or("");
            let fields: Vec<&str> = before_comment
                .split(python_space)
                .filter(|f| !f.is_empty())
                .collect();
            let Some(first) = fields.first() else {
                continue;
            };
            let head: String = first.chars().take(4).collect();
            if head == "127." || head == "::1" || fields.len() == 1 {
                for field in &fields {
                    add(field, &mut names);
                }
            }
        }
    }
    for address in &facts.addresses {
        add(&address.to_string(), &mut names);
    }
    names
        .into_iter()
        .next()
        .unwrap_or_else(|| "localhost".into())
}

impl HostFacts {
    /// The facts of this host (files under `root`), the DNS lookups bounded
    /// to `bound` in all: past it, getfqdn counts as failed (it then gives
    /// the host name, as Python's does) and localhost has no other name.
    pub fn gather(root: &Path, bound: Duration) -> HostFacts {
        let hostname = gethostname();
        let read = |name: &str| {
            read_regular_file(&root.join(name), MAX_CONFIG_BYTES)
                .ok()
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        };
        let files = [
            read("etc/hostname"),
            read("etc/nodename"),
            read("etc/hosts"),
        ];
        let (results, answers) = crate::oneshot::oneshot();
        let name = hostname.clone();
        let lookups = std::thread::Builder::new()
            .name("dns".into())
            .spawn_detached(move || {
                let fqdn = getfqdn(&name);
                let filtered = |n: &str| n.is_empty() || is_localhost_name(n);
                let canonical = (filtered(&fqdn) && filtered(&name))
                    .then(|| canonical_name("localhost"))
                    .flatten();
                results.send((fqdn, canonical));
            });
        let (fqdn, localhost_canonical) = match lookups {
            Ok(_) => match answers.recv_timeout(bound) {
                Some(answer) => answer,
                None => {
                    log::warn!(
                        "host name lookups did not answer within {} s (DNS down?); \
                         using the host name {hostname:?} as getfqdn() gives it when they fail",
                        bound.as_secs()
                    );
                    (hostname.clone(), None)
                }
            },
            Err(e) => {
                log::warn!("cannot start the host name lookups ({e}); using the host name");
                (hostname.clone(), None)
            }
        };
        HostFacts {
            hostname,
            fqdn,
            localhost_canonical,
            files,
            addresses: ipv4_addresses(),
        }
    }
}

fn gethostname() -> String {
    let mut buffer = [0u8; 256];
    if unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } != 0 {
        return String::new();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

/// The host's non-loopback IPv4 addresses, ascending (Salt's `ip_addrs()`).
fn ipv4_addresses() -> Vec<Ipv4Addr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut addresses = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        let ifa = unsafe { &*entry };
        if !ifa.ifa_addr.is_null()
            && i32::from(unsafe { (*ifa.ifa_addr).sa_family }) == libc::AF_INET
        {
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            // Kept in order as they come (a handful): no sort routine to link.
            if let (false, Err(at)) = (ip.is_loopback(), addresses.binary_search(&ip)) {
                addresses.insert(at, ip);
            }
        }
        entry = ifa.ifa_next;
    }
    unsafe { libc::freeifaddrs(list) };
    addresses
}

/// `getaddrinfo(name, AF_INET, SOCK_RAW, AI_CANONNAME)`'s canonical name.
fn canonical_name(name: &str) -> Option<String> {
    let c_name = CString::new(name).ok()?;
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_INET;
    hints.ai_socktype = libc::SOCK_RAW;
    hints.ai_flags = libc::AI_CANONNAME;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    if unsafe { libc::getaddrinfo(c_name.as_ptr(), std::ptr::null(), &hints, &mut list) } != 0
        || list.is_null()
    {
        return None;
    }
    let first = unsafe { &*list };
    let canonical = (!first.ai_canonname.is_null()).then(|| {
        unsafe { CStr::from_ptr(first.ai_canonname) }
            .to_string_lossy()
            .into_owned()
    });
    unsafe { libc::freeaddrinfo(list) };
    canonical
}

enum ReadError {
    Missing,
    Other(String),
}

/// Read a regular file of at most `limit` bytes, following symlinks as Salt
/// does (`regular_file`: a FIFO planted in its place cannot stall us).
fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let rules = regular_file::Rules {
        follow_links: true,
        ..regular_file::Rules::default()
    };
    let (file, metadata) = match regular_file::open(path, File::options().read(true), rules) {
        Ok(opened) => opened,
        Err(refused) if refused.is_missing() => return Err(ReadError::Missing),
        Err(refused) => return Err(ReadError::Other(refused.to_string())),
    };
    if metadata.len() > limit {
        return Err(ReadError::Other(format!(
            "{} bytes, more than the {limit} read",
            metadata.len()
        )));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::Other(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::Other(format!(
            "more than the {limit} bytes read"
        )));
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------
// A glob as Python's `glob.glob` matches: `*`, `?` and `[...]` in any path
// component, hidden names only for patterns that start with a dot.

fn glob(pattern: &Path) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::from("/")];
    let components: Vec<String> = pattern
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
            std::path::Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    if !pattern.is_absolute() {
        return Vec::new();
    }
    for component in &components {
        let mut next = Vec::new();
        for dir in &found {
            if !component.contains(['*', '?', '[']) {
                next.push(dir.join(component));
                continue;
            }
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|name| !name.starts_with('.') || component.starts_with('.'))
                .filter(|name| fnmatch(component, name))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|name| dir.join(name)));
        }
        found = next;
        if found.len() > MAX_GLOB_MATCHES {
            log::warn!(
                "minion config: {} matches more than {MAX_GLOB_MATCHES} paths; the rest are ignored",
                pattern.display()
            );
            found.truncate(MAX_GLOB_MATCHES);
        }
    }
    let mut matches: Vec<PathBuf> = found
        .into_iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    matches.sort();
    matches
}

/// Python's `fnmatch.fnmatchcase` for one component.
fn fnmatch(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() {
            match pattern[p] {
                '*' => {
                    star = Some((p, n));
                    p += 1;
                    continue;
                }
                '?' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = match_class(&pattern, p, name[n]) {
                        if matched {
                            p = next;
                            n += 1;
                            continue;
                        }
                    } else if name[n] == '[' {
                        p += 1;
                        n += 1;
                        continue;
                    }
                }
                c if c == name[n] => {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((star_p, star_n)) => {
                p = star_p + 1;
                n = star_n + 1;
                star = Some((star_p, star_n + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// `[...]` at `pattern[start]`: whether `c` is in it, and the index after it;
/// `None` when the bracket is not closed (then it is a literal `[`).
fn match_class(pattern: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = pattern.get(i) == Some(&'!');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() {
        if pattern[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&'-') && pattern.get(i + 2).is_some_and(|end| *end != ']') {
            if pattern[i] <= c && c <= pattern[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if pattern[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

// ---------------------------------------------------------------------------
// The host name, as Python's socket.getfqdn() derives it.

unsafe extern "C" {
    // In glibc and musl alike; the libc crate does not declare it for Linux.
    fn gethostbyaddr_r(
        addr: *const libc::c_void,
        len: libc::socklen_t,
        family: libc::c_int,
        ret: *mut libc::hostent,
        buf: *mut libc::c_char,
        buflen: libc::size_t,
        result: *mut *mut libc::hostent,
        h_errnop: *mut libc::c_int,
    ) -> libc::c_int;
}

/// Python's `socket.getfqdn(name)`: resolve `name` to an address, look that
/// address up in reverse, and take the first of the name and its aliases
/// that contains a dot (else that name); `name` itself when either lookup
/// fails. May consult DNS.
fn getfqdn(name: &str) -> String {
    let name = python_strip(name);
    let name = if name.is_empty() || name == "0.0.0.0" || name == "::" {
        gethostname()
    } else {
        name.to_string()
    };
    reverse_names(&name)
        .and_then(|names| {
            let dotted = names.iter().find(|n| n.contains('.')).cloned();
            dotted.or_else(|| names.into_iter().next())
        })
        .unwrap_or(name)
}

/// `gethostbyaddr(name)`: the reverse name of `name`'s first address, then
/// its aliases; `None` when there is none.
fn reverse_names(name: &str) -> Option<Vec<String>> {
    let c_name = CString::new(name).ok()?;
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_UNSPEC;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    if unsafe { libc::getaddrinfo(c_name.as_ptr(), std::ptr::null(), &hints, &mut list) } != 0
        || list.is_null()
    {
        return None;
    }
    // Copy the first address out, then free the list before the next call.
    let first = unsafe { &*list };
    let address: Option<(Vec<u8>, libc::c_int)> = match first.ai_family {
        libc::AF_INET if !first.ai_addr.is_null() => {
            let sin = unsafe { &*(first.ai_addr as *const libc::sockaddr_in) };
            Some((sin.sin_addr.s_addr.to_ne_bytes().to_vec(), libc::AF_INET))
        }
        libc::AF_INET6 if !first.ai_addr.is_null() => {
            let sin6 = unsafe { &*(first.ai_addr as *const libc::sockaddr_in6) };
            Some((sin6.sin6_addr.s6_addr.to_vec(), libc::AF_INET6))
        }
        _ => None,
    };
    unsafe { libc::freeaddrinfo(list) };
    let (address, family) = address?;
    let ip: Option<std::net::IpAddr> = match address.len() {
        4 => <[u8; 4]>::try_from(address.as_slice()).ok().map(Into::into),
        16 => <[u8; 16]>::try_from(address.as_slice())
            .ok()
            .map(Into::into),
        _ => None,
    };

    let mut buffer = vec![0 as libc::c_char; 4096];
    loop {
        let mut entry: libc::hostent = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::hostent = std::ptr::null_mut();
        let mut h_errno = 0;
        let status = unsafe {
            gethostbyaddr_r(
                address.as_ptr().cast(),
                address.len() as libc::socklen_t,
                family,
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut result,
                &mut h_errno,
            )
        };
        // ERANGE: the answer does not fit; grow the buffer, within reason.
        if status == libc::ERANGE && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 4, 0);
            continue;
        }
        if status != 0 || result.is_null() || entry.h_name.is_null() {
            return None;
        }
        let mut names = vec![
            unsafe { CStr::from_ptr(entry.h_name) }
                .to_string_lossy()
                .into_owned(),
        ];
        let mut alias = entry.h_aliases;
        while !alias.is_null() && !unsafe { *alias }.is_null() {
            names.push(
                unsafe { CStr::from_ptr(*alias) }
                    .to_string_lossy()
                    .into_owned(),
            );
            alias = unsafe { alias.add(1) };
        }
        // musl answers from the first /etc/hosts line with the address but
        // gives none of that line's other names as aliases; glibc does, and
        // Python's getfqdn looks at them (`127.0.1.1 web web.example.org`).
        if cfg!(target_env = "musl") {
            if let (Some(ip), Ok(hosts)) = (
                ip,
                read_regular_file(Path::new("/etc/hosts"), MAX_CONFIG_BYTES),
            ) {
                let hosts = String::from_utf8_lossy(&hosts);
                for name in hosts_line_names(&hosts, ip) {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
        }
        return Some(names);
    }
}

/// The names on the first /etc/hosts line for `ip`, as the files backend
/// reads it (`#` starts a comment; the first name is the canonical one).
fn hosts_line_names(hosts: &str, ip: std::net::IpAddr) -> Vec<String> {
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        if fields
            .next()
            .and_then(|a| a.parse::<std::net::IpAddr>().ok())
            == Some(ip)
        {
            return fields.map(str::to_string).collect();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory standing for `/` (so `<root>/etc/salt` is Salt's
    /// default directory), removed on drop.
    struct Root(PathBuf);

    impl Root {
        fn new() -> Root {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "sp_machine_id_{}_{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("etc/salt")).expect("temp dir");
            Root(dir)
        }

        fn write(&self, relative: &str, text: impl AsRef<[u8]>) -> PathBuf {
            let path = self.0.join(relative);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, text).expect("write");
            path
        }

        fn path(&self, relative: &str) -> String {
            self.0.join(relative).to_string_lossy().into_owned()
        }

        /// Resolve with this root, the given environment, no override, and
        /// a host whose generated id is `host.example.org`.
        fn resolve(&self, env: &[(&str, String)]) -> (String, Source) {
            self.resolve_with(env, None, host("host.example.org", "host"))
        }

        fn resolve_with(
            &self,
            env: &[(&str, String)],
            ancestor: Option<&Path>,
            facts: HostFacts,
        ) -> (String, Source) {
            let env: HashMap<String, String> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            resolve_in(
                None,
                &|var| env.get(var).cloned(),
                &self.0,
                ancestor,
                || facts,
            )
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn host(fqdn: &str, hostname: &str) -> HostFacts {
        HostFacts {
            hostname: hostname.into(),
            fqdn: fqdn.into(),
            ..HostFacts::default()
        }
    }

    #[test]
    fn override_wins_even_over_a_config() {
        let root = Root::new();
        root.write("etc/salt/minion", "id: from-config\n");
        let (id, source) = resolve_in(Some("forced"), &|_| None, &root.0, None, || {
            unreachable!("no host facts needed")
        });
        assert_eq!((id.as_str(), source), ("forced", Source::Override));
        // An empty SP_MACHINE_ID counts as unset.
        assert_eq!(
            resolve_in(Some(""), &|_| None, &root.0, None, HostFacts::default).0,
            "from-config"
        );
    }

    #[test]
    fn default_config_dir_and_minion_d_later_files_win() {
        let root = Root::new();
        let main = root.write("etc/salt/minion", "master: salt\nid: main-id\n");
        assert_eq!(
            root.resolve(&[]),
            ("main-id".into(), Source::MinionConfig(main))
        );
        root.write("etc/salt/minion.d/10-first.conf", "id: first\n");
        let second = root.write("etc/salt/minion.d/20-second.conf", "id: second\n");
        root.write("etc/salt/minion.d/30-other.conf", "master: x\n");
        root.write("etc/salt/minion.d/.hidden.conf", "id: hidden\n");
        root.write("etc/salt/minion.d/99-not-conf.txt", "id: txt\n");
        assert_eq!(
            root.resolve(&[]),
            ("second".into(), Source::MinionConfig(second.clone()))
        );
        // A broken drop-in is skipped whole; the others stand.
        root.write("etc/salt/minion.d/40-broken.conf", "id: [unclosed\n");
        assert_eq!(root.resolve(&[]).1, Source::MinionConfig(second));
    }

    #[test]
    fn config_dir_from_ancestor_then_environment() {
        let root = Root::new();
        root.write("etc/salt/minion", "id: etc-salt\n");
        root.write("custom/minion", "id: custom-dir\n");
        root.write("other/minion", "id: other-dir\n");
        let dir = ("SALT_CONFIG_DIR", "/custom".to_string());
        assert_eq!(root.resolve(std::slice::from_ref(&dir)).0, "custom-dir");
        let facts = HostFacts::default();
        // salt-minion's -c wins: SALT_CONFIG_DIR is only its default.
        assert_eq!(
            root.resolve_with(&[dir], Some(Path::new("/other")), facts)
                .0,
            "other-dir"
        );
    }

    #[test]
    fn salt_minion_config_counts_with_the_default_dir_only() {
        let root = Root::new();
        root.write("etc/salt/minion", "id: etc-salt\n");
        root.write("elsewhere/minion.yml", "id: env-file\n");
        let file = ("SALT_MINION_CONFIG", "/elsewhere/minion.yml".to_string());
        assert_eq!(root.resolve(std::slice::from_ref(&file)).0, "env-file");
        root.write("custom/minion", "id: custom-dir\n");
        let dir = ("SALT_CONFIG_DIR", "/custom".to_string());
        assert_eq!(root.resolve(&[dir, file.clone()]).0, "custom-dir");
        // minion.d of the default directory still applies.
        root.write("etc/salt/minion.d/a.conf", "id: etc-dropin\n");
        assert_eq!(root.resolve(&[file]).0, "etc-dropin");
    }

    #[test]
    fn nested_includes_are_relative_to_the_including_file() {
        let root = Root::new();
        root.write(
            "etc/salt/minion",
            "default_include: conf.d/*.yaml\ninclude:\n- extra/[ab].conf\n",
        );
        root.write("etc/salt/minion.d/x.conf", "id: not-default-any-more\n");
        root.write("etc/salt/conf.d/1.yaml", "id: via-default-include\n");
        assert_eq!(root.resolve(&[]).0, "via-default-include");
        root.write(
            "etc/salt/extra/a.conf",
            "id: include-a\ninclude: nested/n.conf\n",
        );
        let nested = root.write("etc/salt/extra/nested/n.conf", "id: nested-include\n");
        assert_eq!(root.resolve(&[]).1, Source::MinionConfig(nested));
    }

    #[test]
    fn minion_id_cache_as_get_id_reads_it() {
        let root = Root::new();
        root.write("etc/salt/minion", "master: salt\n");
        assert_eq!(
            root.resolve(&[]),
            ("host.example.org".into(), Source::Generated)
        );
        let cached = root.write("etc/salt/minion_id", " cached-id \r\nsecond line\n");
        assert_eq!(
            root.resolve(&[]),
            ("cached-id".into(), Source::MinionIdFile(cached))
        );
        // A UTF-8 BOM is part of the id, as for salt-minion.
        root.write("etc/salt/minion_id", "\u{feff}x \n");
        assert_eq!(root.resolve(&[]).0, "\u{feff}x");
        root.write("etc/salt/minion_id", "localhost\n");
        assert_eq!(root.resolve(&[]).1, Source::Generated);
        let moved = root.write("state/etc/salt/minion_id", "moved-id");
        root.write(
            "etc/salt/minion",
            format!("root_dir: {}\n", root.path("state")),
        );
        assert_eq!(
            root.resolve(&[]),
            ("moved-id".into(), Source::MinionIdFile(moved))
        );
        for falsy in ["False", "no", "0", "''", "~", "[]", "0.0"] {
            root.write(
                "etc/salt/minion",
                format!(
                    "root_dir: {}\nminion_id_caching: {falsy}\n",
                    root.path("state")
                ),
            );
            assert_eq!(root.resolve(&[]).1, Source::Generated, "{falsy}");
        }
    }

    #[test]
    fn generated_id_order_and_filters() {
        let mut facts = host("localhost", "localhost");
        assert_eq!(generate(&facts), "localhost");
        facts.files[0] = Some("box1\n".into());
        facts.files[2] = Some(
            "127.0.0.1 localhost\n127.0.1.1 web.example.org web # x\n10.0.0.1 db\nsolo\n".into(),
        );
        assert_eq!(generate(&facts), "box1");
        facts.files[0] = None;
        assert_eq!(generate(&facts), "web.example.org");
        facts.files[2] = Some("10.0.0.1 db\n".into());
        facts.addresses = vec![Ipv4Addr::new(10, 1, 2, 3)];
        assert_eq!(generate(&facts), "10.1.2.3");
        facts.localhost_canonical = Some("canon.example".into());
        assert_eq!(generate(&facts), "canon.example");
        assert_eq!(generate(&host("ip6-x", "real")), "real");
        assert!(is_localhost_name("127.0.1.1"));
        assert!(!is_localhost_name("127.x"));
        assert!(is_localhost_name("1.0.0.0.0.ip6.arpa"));
        assert!(is_localhost_name("1x0y0zzzip6xarpa"));
        assert!(!is_localhost_name("1x0y0zzipv6xarpa"));
    }

    #[test]
    fn generated_id_then_lowercase_remove_domain_append_domain() {
        let root = Root::new();
        let facts = || host("Web.Example.ORG", "Web");
        root.write("etc/salt/minion", "minion_id_lowercase: True\n");
        assert_eq!(root.resolve_with(&[], None, facts()).0, "web.example.org");
        root.write("etc/salt/minion", "minion_id_remove_domain: True\n");
        assert_eq!(root.resolve_with(&[], None, facts()).0, "Web");
        root.write("etc/salt/minion", "minion_id_remove_domain: example.org\n");
        assert_eq!(root.resolve_with(&[], None, facts()).0, "Web");
        root.write("etc/salt/minion", "append_domain: corp\n");
        assert_eq!(
            root.resolve_with(&[], None, facts()).0,
            "Web.Example.ORG.corp"
        );
        let ip = HostFacts {
            addresses: vec![Ipv4Addr::new(10, 9, 8, 7)],
            ..HostFacts::default()
        };
        assert_eq!(root.resolve_with(&[], None, ip).0, "10.9.8.7");
    }

    #[test]
    fn what_only_salt_can_compute_falls_back_with_a_warning() {
        let root = Root::new();
        // id_function: Salt would run a module; we give the generated id.
        root.write(
            "etc/salt/minion",
            "id_function: {grains.get: {key: fqdn}}\n",
        );
        assert_eq!(
            root.resolve(&[]),
            ("host.example.org".into(), Source::Generated)
        );
        // An sdb:// id is reported as it is (Salt would look it up).
        let main = root.write("etc/salt/minion", "id: sdb://vault/minion-id\n");
        assert_eq!(
            root.resolve(&[]),
            ("sdb://vault/minion-id".into(), Source::MinionConfig(main))
        );
        // A float Python prints in exponent form: not reproduced, falls through.
        root.write("etc/salt/minion", "id: 1.0e+20\n");
        assert_eq!(root.resolve(&[]).1, Source::Generated);
    }

    #[test]
    fn append_domain_on_configured_and_cached_ids() {
        let root = Root::new();
        root.write("etc/salt/minion", "id: web\nappend_domain: example.org\n");
        assert_eq!(root.resolve(&[]).0, "web.example.org");
        root.write("etc/salt/minion", "id: web.\nappend_domain: example.org\n");
        assert_eq!(root.resolve(&[]).0, "web.");
        root.write("etc/salt/minion", "append_domain: example.org\n");
        root.write("etc/salt/minion_id", "cached");
        assert_eq!(root.resolve(&[]).0, "cached.example.org");
    }

    #[test]
    fn hostile_files_fall_through_without_crashing() {
        let root = Root::new();
        root.write("etc/salt/minion_id", "cached-id\n");
        let expect_cached = |why: &str| {
            assert_eq!(root.resolve(&[]).0, "cached-id", "{why}");
        };
        root.write(
            "etc/salt/minion",
            [0xff, 0xfe, 0x00, 0x69, 0x64, 0x3a, 0x20, 0x78, 0x80],
        );
        expect_cached("binary junk");
        root.write(
            "etc/salt/minion",
            format!("id: huge\n#{}\n", "x".repeat(2 << 20)),
        );
        expect_cached("a file over the size bound");
        root.write("etc/salt/minion", "id: [a]\n");
        expect_cached("a list id");
        root.write("etc/salt/minion", "id: \"\"\n");
        expect_cached("an empty id (Salt ignores it too)");
        root.write("etc/salt/minion", "id: a\nid: b\n");
        expect_cached("a duplicate key");
        std::fs::remove_file(root.0.join("etc/salt/minion")).expect("rm");
        std::fs::create_dir(root.0.join("etc/salt/minion")).expect("mkdir");
        expect_cached("a directory in place of the file");
        std::fs::remove_dir(root.0.join("etc/salt/minion")).expect("rmdir");
        let fifo = CString::new(root.path("etc/salt/minion")).expect("path");
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        expect_cached("a FIFO (must not block)");
        std::fs::remove_file(root.0.join("etc/salt/minion")).expect("rm");
        // A file we may not read (root reads it anyway).
        let locked = root.write("etc/salt/minion.d/locked.conf", "id: locked\n");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).expect("chmod");
        let readable = File::open(&locked).is_ok();
        assert_eq!(
            root.resolve(&[]).0,
            if readable { "locked" } else { "cached-id" }
        );
        // An include loop: Salt fails (RecursionError); the agent stops
        // there, the files read until then count.
        root.write("etc/salt/minion", "id: main\ninclude: loop.conf\n");
        root.write("etc/salt/loop.conf", "include: loop.conf\n");
        assert_eq!(
            root.resolve(&[]).0,
            if readable { "locked" } else { "main" }
        );
    }

    #[test]
    fn include_loops_stop_where_salt_fails() {
        let root = Root::new();
        // Through the main file's own include: Salt reads minion, a.conf,
        // minion again, then a.conf again... until RecursionError.
        root.write("etc/salt/minion", "id: main\ninclude: a.conf\n");
        root.write("etc/salt/a.conf", "include: minion\nid: from-a\n");
        root.write("etc/salt/minion.d/z.conf", "id: from-z\n");
        let main = root.path("etc/salt/minion");
        assert_eq!(
            root.resolve(&[]),
            ("main".into(), Source::MinionConfig(PathBuf::from(main)))
        );
        // Not a loop: a drop-in includes the main file, which includes
        // nothing; the files after it are read.
        root.write("etc/salt/minion", "id: main\n");
        root.write(
            "etc/salt/minion.d/a.conf",
            "include: ../minion\nid: from-a\n",
        );
        assert_eq!(root.resolve(&[]).0, "from-z");
        // Includes nested 8 deep from the main file are read, not a 9th.
        root.write("etc/salt/minion", "include: i1.conf\n");
        for n in 1..=9 {
            root.write(
                &format!("etc/salt/i{n}.conf"),
                format!("id: i{n}\ninclude: i{}.conf\n", n + 1),
            );
        }
        std::fs::remove_dir_all(root.0.join("etc/salt/minion.d")).expect("rm minion.d");
        assert_eq!(root.resolve(&[]).0, "i8");
    }

    #[test]
    fn past_the_work_bound_no_file_is_read() {
        let root = Root::new();
        root.write("etc/salt/minion", "id: main\n");
        // Each level merges the one below and adds a key: quadratic.
        let mut chain = String::from("l0: &l0 {a0: 1}\n");
        for level in 1..=1_000 {
            chain.push_str(&format!(
                "l{level}: &l{level} {{<<: *l{}, a{level}: 1}}\n",
                level - 1
            ));
        }
        root.write("etc/salt/minion.d/a.conf", format!("id: chained\n{chain}"));
        root.write("etc/salt/minion.d/b.conf", "id: after\n");
        assert_eq!(root.resolve(&[]).0, "main");
        // Within the bound, the same shape is read, and the files after it.
        let short: String = chain.lines().take(200).map(|l| format!("{l}\n")).collect();
        root.write("etc/salt/minion.d/a.conf", format!("id: chained\n{short}"));
        assert_eq!(root.resolve(&[]).0, "after");
    }

    #[test]
    fn salt_command_lines() {
        let dir = |args: &[&str]| salt_config_dir_from_cmdline(args.join("\0").as_bytes());
        let some = |d: &str| Some(Some(d.to_string()));
        assert_eq!(dir(&["/usr/bin/salt-minion", "-c", "/a"]), some("/a"));
        assert_eq!(
            dir(&["/usr/bin/python3", "/usr/bin/salt-minion", "-c/b", "-d"]),
            some("/b")
        );
        assert_eq!(
            dir(&["salt-call", "--config-dir=/c", "--local"]),
            some("/c")
        );
        assert_eq!(dir(&["salt-minion", "--config-dir", "/d"]), some("/d"));
        // A salt-minion without -c decides too: SALT_CONFIG_DIR or /etc/salt.
        assert_eq!(dir(&["salt-minion", "-d"]), Some(None));
        assert_eq!(dir(&["saltpeter", "-c", "/etc/saltpeter"]), None);
        assert_eq!(dir(&["bash", "-c", "salt-minion -c /x"]), None);
        // setproctitle: one string, words separated by spaces.
        assert_eq!(
            salt_config_dir_from_cmdline(
                b"/usr/bin/python3 /usr/bin/salt-minion -c /e ProcessPayload\0"
            ),
            some("/e")
        );
    }

    #[test]
    fn globs_match_like_python() {
        assert!(fnmatch("*.conf", "a.conf"));
        assert!(!fnmatch("*.conf", "a.conf.bak"));
        assert!(fnmatch("a?c", "abc"));
        assert!(fnmatch("[a-c]x", "bx"));
        assert!(!fnmatch("[!a-c]x", "bx"));
        assert!(fnmatch("[]]", "]"));
        assert!(fnmatch("[x", "[x"));
        assert!(fnmatch("*a*b*", "xxaxxbxx"));
        assert!(!fnmatch("*a*b", "xxaxxbxx"));
        assert!(fnmatch("**", ""));
    }

    #[test]
    fn hosts_aliases_for_musl() {
        let hosts = "# comment 127.0.1.1 x\n127.0.0.1 localhost\n\
                     127.0.1.1\tweb  web.example.org # the box\n\
                     127.0.1.1 other.example.org\n::1 ip6-localhost\n";
        let ip = |text: &str| text.parse::<std::net::IpAddr>().expect("ip");
        assert_eq!(
            hosts_line_names(hosts, ip("127.0.1.1")),
            ["web", "web.example.org"]
        );
        assert_eq!(hosts_line_names(hosts, ip("::1")), ["ip6-localhost"]);
        assert!(hosts_line_names(hosts, ip("10.0.0.1")).is_empty());
    }

    /// On this host, the real facts give what Salt's own code gives
    /// (`SP_TEST_SALT_PYTHON`: a Python that can import salt), else what
    /// Python's getfqdn gives for the first candidate.
    #[test]
    fn getfqdn_matches_python() {
        let python = std::env::var("SP_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let output = std::process::Command::new(&python)
            .args([
                "-c",
                "import socket; print(socket.getfqdn(socket.gethostname()))",
            ])
            .output()
            .expect("python3 (or SP_TEST_PYTHON) to compare with");
        assert!(output.status.success(), "{python} failed");
        let expected = String::from_utf8_lossy(&output.stdout).trim().to_string();
        assert_eq!(getfqdn(&gethostname()), expected);
    }
}
