//! Salt's minion configuration as `salt.config.minion_config` reads it for
//! the id: the main file, `default_include` and `include` globs (each
//! file's own includes after it), the keys the id depends on, and the id
//! cache, all with their reading bounded.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::glob::glob;
use crate::minion::salt_yaml::{self, Value};
use crate::os::regular_file;

/// Salt's `syspaths.CONFIG_DIR` on Linux.
pub(super) const SALT_CONFIG_DIR: &str = "/etc/salt";
/// Salt's `DEFAULT_MINION_OPTS["default_include"]`.
const DEFAULT_INCLUDE: &str = "minion.d/*.conf";
/// A minion configuration is a few KiB; a bigger file is not read (and its
/// `id:`, if any, is missed with a warning) so a hostile file cannot stall us.
pub(super) const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Salt recurses through `include:` without a limit (and fails on a loop,
/// below); we stop here.
const MAX_INCLUDE_DEPTH: usize = 8;
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

/// `minion_id_remove_domain`: `True` removes any domain, a string that one.
pub(super) enum RemoveDomain {
    Any,
    Suffix(String),
}

/// What the minion configuration says about the keys we need; for `id`,
/// also the file that set it (the last one that did).
pub(super) struct MinionSettings {
    pub(super) id: Option<(Value, PathBuf)>,
    pub(super) root_dir: Option<String>,
    pub(super) append_domain: Option<String>,
    pub(super) minion_id_caching: bool,
    pub(super) lowercase: bool,
    pub(super) remove_domain: Option<RemoveDomain>,
    pub(super) id_function: bool,
}

pub(super) fn read_minion_config(
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
pub(super) fn read_minion_id_file(path: &Path) -> Option<String> {
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
pub(super) fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
pub(super) fn python_strip(text: &str) -> &str {
    text.trim_matches(python_space)
}

pub(super) enum ReadError {
    Missing,
    Other(String),
}

/// Read a regular file of at most `limit` bytes, following symlinks as Salt
/// does (`regular_file`: a FIFO planted in its place cannot stall us).
pub(super) fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
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
