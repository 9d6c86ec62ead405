//! The machine name the agent reports in every frame: the Salt minion id.
//!
//! Saltpeter never passes `SP_MACHINE_ID`, and its endpoint drops every frame
//! whose `machine` is not one of the minion ids it targeted. So the default is
//! the minion's own id, found the way salt-minion finds it (salt 3008,
//! `salt/config/__init__.py`: `minion_config`, `load_config`,
//! `include_config`, `_read_conf_file`, `get_id`, `_append_domain`):
//!
//! 1. `SP_MACHINE_ID` (the caller's override) wins.
//! 2. `id:` in the minion configuration. salt-minion's `-c` defaults to
//!    `$SALT_CONFIG_DIR`, else `/etc/salt`; the main file is `<dir>/minion`,
//!    except that with the default directory `$SALT_MINION_CONFIG` (when it
//!    names a file) is read instead. Then the `default_include` glob (from
//!    the main file, else `minion.d/*.conf`) and then the `include` globs,
//!    both relative to `<dir>`, each sorted, each file's own `include` after
//!    it: a later file wins. Salt turns a non-string id into `str()` of it.
//! 3. `<root_dir>/etc/salt/minion_id`, the id salt-minion cached on its first
//!    start (not with `minion_id_caching: False`; not `localhost`).
//! 4. The host name as Python's `socket.getfqdn()` gives it (what the Python
//!    wrapper reported): forward lookup of `gethostname()`, reverse lookup of
//!    that address, the first of name and aliases that contains a dot.
//!
//! `append_domain` from the configuration applies to 2 and 3, as in Salt.
//! Files are read with a size bound, never through a FIFO, and any file that
//! cannot be read or parsed is skipped with a warning: the lookup falls
//! through, it never fails. Step 4 may consult DNS, so `resolve` must run off
//! the launch path (it is plain data in, data out, callable from any thread).

use std::ffi::{CStr, CString};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Salt's `syspaths.CONFIG_DIR` on Linux.
const SALT_CONFIG_DIR: &str = "/etc/salt";
/// Salt's `DEFAULT_MINION_OPTS["default_include"]`.
const DEFAULT_INCLUDE: &str = "minion.d/*.conf";
/// A minion configuration is a few KiB; a bigger file is not read (and its
/// `id:`, if any, is missed with a warning) so a hostile file cannot stall us.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Salt recurses through `include:` without a limit (and would crash on a
/// loop); we stop here.
const MAX_INCLUDE_DEPTH: usize = 8;
/// Files one glob may bring in before the rest are ignored.
const MAX_GLOB_MATCHES: usize = 256;

/// Where the machine id came from (logged, so a wrong name can be traced).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `SP_MACHINE_ID`.
    Override,
    /// `id:` in this minion configuration file.
    MinionConfig(PathBuf),
    /// The minion id salt-minion cached in this file.
    MinionIdFile(PathBuf),
    /// The host name, as Python's `socket.getfqdn()` derives it.
    HostName,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Override => write!(f, "SP_MACHINE_ID"),
            Source::MinionConfig(path) => write!(f, "id: in {}", path.display()),
            Source::MinionIdFile(path) => write!(f, "{}", path.display()),
            Source::HostName => write!(f, "the host name (as socket.getfqdn() gives it)"),
        }
    }
}

/// The machine id and where it came from. `env` is the process environment
/// (the minion's, inherited through `cmd.run_all`). Logs the outcome and any
/// configuration file it had to skip.
pub fn resolve(
    override_id: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> (String, Source) {
    let (id, source) = resolve_in(override_id, &env, Path::new("/"), fqdn);
    log::info!("machine id {id:?} from {source}");
    (id, source)
}

/// `resolve` with the filesystem root (for Salt's default paths) and the
/// host-name lookup given, so tests need neither /etc/salt nor DNS.
fn resolve_in(
    override_id: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    root: &Path,
    host_name: impl FnOnce() -> String,
) -> (String, Source) {
    if let Some(id) = override_id.filter(|id| !id.is_empty()) {
        return (id.to_string(), Source::Override);
    }
    let settings = read_minion_config(env, root);
    let with_domain = |id: String| match &settings.append_domain {
        Some(domain) => append_domain(id, domain),
        None => id,
    };
    match settings.id {
        Some((Ok(id), path)) if !id.is_empty() => {
            return (with_domain(id), Source::MinionConfig(path));
        }
        Some((Ok(_), path)) => {
            log::debug!("{}: id is empty; Salt ignores it too", path.display());
        }
        Some((Err(why), path)) => {
            log::warn!(
                "{}: id {why}; ignored (quote it, or set SP_MACHINE_ID)",
                path.display()
            );
        }
        None => {}
    }
    if settings.minion_id_caching {
        let root_dir = match &settings.root_dir {
            Some(dir) if Path::new(dir).is_absolute() => PathBuf::from(dir),
            _ => root.to_path_buf(),
        };
        let cache = root_dir
            .join(SALT_CONFIG_DIR.trim_start_matches('/'))
            .join("minion_id");
        if let Some(id) = read_minion_id_file(&cache) {
            return (with_domain(id), Source::MinionIdFile(cache));
        }
    }
    (host_name(), Source::HostName)
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

/// What the minion configuration says about the keys we need; for `id`,
/// also the file that set it (the last one that did).
struct MinionSettings {
    id: Option<(Result<String, String>, PathBuf)>,
    root_dir: Option<String>,
    append_domain: Option<String>,
    minion_id_caching: bool,
}

fn read_minion_config(env: &dyn Fn(&str) -> Option<String>, root: &Path) -> MinionSettings {
    let default_dir = root.join(SALT_CONFIG_DIR.trim_start_matches('/'));
    let config_dir = match env("SALT_CONFIG_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => default_dir.clone(),
    };
    let default_path = config_dir.join("minion");
    // load_config: the environment variable only counts for the default path.
    let main_path = match env("SALT_MINION_CONFIG").filter(|p| !p.is_empty()) {
        Some(path) if config_dir == default_dir && Path::new(&path).is_file() => {
            PathBuf::from(path)
        }
        _ => default_path,
    };
    let mut files: Vec<(PathBuf, TopLevel)> = Vec::new();
    let main = read_config_file(&main_path);
    // Includes are relative to the -c directory, even when the main file
    // came from SALT_MINION_CONFIG (include_config is given `path`).
    let default_include = match main.as_ref().and_then(|top| top.get("default_include")) {
        Some(Setting::Text(pattern)) => vec![pattern.clone()],
        Some(Setting::List(patterns)) => patterns.clone(),
        _ => vec![DEFAULT_INCLUDE.to_string()],
    };
    let include = main.as_ref().map(|top| top.includes()).unwrap_or_default();
    if let Some(top) = main {
        files.push((main_path.clone(), top));
    }
    let home = env("HOME");
    for patterns in [default_include, include] {
        collect_includes(&patterns, &config_dir, home.as_deref(), 0, &mut files);
    }

    let mut settings = MinionSettings {
        id: None,
        root_dir: None,
        append_domain: None,
        minion_id_caching: true,
    };
    for (path, top) in files {
        if let Some(id) = top.get("id") {
            settings.id = Some((id.clone().into_id(), path.clone()));
        }
        match top.get("root_dir") {
            Some(Setting::Text(dir)) => settings.root_dir = Some(dir.clone()),
            Some(_) => settings.root_dir = None,
            None => {}
        }
        match top.get("append_domain") {
            Some(Setting::Text(domain)) if !domain.is_empty() => {
                settings.append_domain = Some(domain.clone());
            }
            Some(_) => settings.append_domain = None,
            None => {}
        }
        if let Some(caching) = top.get("minion_id_caching") {
            settings.minion_id_caching = !matches!(caching, Setting::Bool(false));
        }
    }
    settings
}

/// Read each file the patterns match, in Salt's order: sorted per pattern,
/// each file followed by its own includes.
fn collect_includes(
    patterns: &[String],
    relative_to: &Path,
    home: Option<&str>,
    depth: usize,
    files: &mut Vec<(PathBuf, TopLevel)>,
) {
    if depth >= MAX_INCLUDE_DEPTH {
        log::warn!("minion config: includes nested deeper than {MAX_INCLUDE_DEPTH}; not followed");
        return;
    }
    for pattern in patterns {
        let expanded = match (pattern.strip_prefix('~'), home) {
            (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
                format!("{home}{rest}")
            }
            _ => pattern.clone(),
        };
        let absolute = relative_to.join(&expanded);
        for path in glob(&absolute) {
            let Some(top) = read_config_file(&path) else {
                continue;
            };
            let nested = top.includes();
            let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
            files.push((path, top));
            collect_includes(&nested, &parent, home, depth + 1, files);
        }
    }
}

/// A config file's top-level settings, or `None` (with a warning when the
/// file exists) if it cannot be used.
fn read_config_file(path: &Path) -> Option<TopLevel> {
    let bytes = match read_regular_file(path, MAX_CONFIG_BYTES) {
        Ok(bytes) => bytes,
        Err(ReadError::Missing) => return None,
        Err(ReadError::Other(why)) => {
            log::warn!("minion config {}: {why}; skipped", path.display());
            return None;
        }
    };
    let parsed = std::str::from_utf8(&bytes)
        .map_err(|_| "not UTF-8 text".to_string())
        .and_then(read_top_level);
    match parsed {
        Ok(top) => Some(top),
        Err(why) => {
            log::warn!("minion config {}: {why}; skipped", path.display());
            None
        }
    }
}

/// The first line of salt-minion's id cache, as `get_id` reads it.
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
    let line = text.split('\n').next().unwrap_or("");
    let name = python_strip(line.trim_start_matches('\u{feff}'));
    (!name.is_empty() && name != "localhost").then(|| name.to_string())
}

/// Python's `str.strip()`: Unicode whitespace plus the four separators
/// (U+001C..U+001F) Python also counts.
fn python_strip(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

enum ReadError {
    Missing,
    Other(String),
}

/// Read a regular file of at most `limit` bytes. Opened non-blocking so a
/// FIFO planted in its place cannot stall us, then checked to be a file.
fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadError::Missing),
        Err(e) => return Err(ReadError::Other(format!("cannot open: {e}"))),
    };
    let metadata = file
        .metadata()
        .map_err(|e| ReadError::Other(format!("cannot stat: {e}")))?;
    if !metadata.is_file() {
        return Err(ReadError::Other("not a regular file".into()));
    }
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
// A YAML subset: the top-level scalar (and list-of-scalar) values of a block
// mapping, typed the way PyYAML's SafeLoader (YAML 1.1) types them. Anything
// this reader does not understand is reported as `Unusable` for that key, and
// anything Salt's loader would reject makes the whole file an error.

/// One top-level value.
#[derive(Clone, Debug, PartialEq)]
enum Setting {
    Text(String),
    /// A YAML int, as Python's `str(int)` renders it.
    Int(String),
    Bool(bool),
    Null,
    List(Vec<String>),
    /// Present, but not something this reader renders as Salt would.
    Unusable(String),
}

impl Setting {
    /// `_read_conf_file`: an id that is not a string becomes `str()` of it.
    /// `Err` says why this one cannot be rendered as Salt would.
    fn into_id(self) -> Result<String, String> {
        match self {
            Setting::Text(id) | Setting::Int(id) => Ok(id),
            Setting::Bool(true) => Ok("True".into()),
            Setting::Bool(false) => Ok("False".into()),
            Setting::Null => Ok("None".into()),
            Setting::List(_) => Err("is a list".into()),
            Setting::Unusable(why) => Err(why),
        }
    }
}

#[derive(Debug, Default)]
struct TopLevel {
    entries: Vec<(String, Setting)>,
}

impl TopLevel {
    fn get(&self, key: &str) -> Option<&Setting> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn includes(&self) -> Vec<String> {
        match self.get("include") {
            Some(Setting::Text(pattern)) if !pattern.is_empty() => vec![pattern.clone()],
            Some(Setting::List(patterns)) => patterns.clone(),
            _ => Vec::new(),
        }
    }
}

/// Indentation, and the line without it (`None` for blank and comment lines).
fn content(line: &str) -> Option<(usize, &str)> {
    let body = line.trim_start_matches(' ');
    let trimmed = body.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    Some((line.len() - body.len(), body))
}

/// The top-level keys of a YAML document that is a block mapping.
fn read_top_level(text: &str) -> Result<TopLevel, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some(c) = text.chars().find(|&c| !yaml_printable(c)) {
        return Err(format!(
            "character U+{:04X} is not allowed in YAML",
            c as u32
        ));
    }
    let lines: Vec<&str> = text.split('\n').map(|l| l.trim_end_matches('\r')).collect();
    let mut top = TopLevel::default();
    let mut base_indent: Option<usize> = None;
    let mut seen_start = false;
    let mut ended = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let Some((indent, body)) = content(line) else {
            continue;
        };
        if indent == 0 && (body == "---" || body.starts_with("--- ")) {
            if seen_start || base_indent.is_some() || ended {
                return Err("more than one YAML document".into());
            }
            if !body[3..].trim().is_empty() && !body[3..].trim().starts_with('#') {
                return Err("content on the --- line is not supported".into());
            }
            seen_start = true;
            continue;
        }
        if indent == 0 && (body == "..." || body.starts_with("... ")) {
            ended = true;
            continue;
        }
        if indent == 0 && body.starts_with('%') && base_indent.is_none() && !seen_start {
            continue; // a directive (%YAML, %TAG)
        }
        if ended {
            return Err("more than one YAML document".into());
        }
        if body.starts_with('\t') || line.starts_with('\t') {
            return Err(format!("line {i}: a tab as indentation"));
        }
        let base = *base_indent.get_or_insert(indent);
        if indent > base {
            continue; // inside a value we skipped or already read
        }
        if indent < base {
            return Err(format!("line {i}: less indented than the mapping"));
        }
        let Some((key, rest)) = split_key(body) else {
            return Err(format!("line {i}: not a `key: value` line"));
        };
        // The lines that belong to this value: more indented than the key.
        let mut end = i;
        while end < lines.len() {
            match content(lines[end]) {
                Some((next_indent, _)) if next_indent <= base => break,
                _ => end += 1,
            }
        }
        let value = read_value(rest, &lines[i..end], base)?;
        i = end;
        if top.entries.iter().any(|(k, _)| *k == key) {
            // SaltYamlSafeLoader rejects duplicate keys: "conflicting ID".
            return Err(format!("key {key:?} appears twice"));
        }
        top.entries.push((key, value));
    }
    Ok(top)
}

/// PyYAML's Reader accepts only these characters.
fn yaml_printable(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
        || c >= '\u{10000}'
}

/// `key: rest` (or `"key": rest`); `None` when the line is not one.
fn split_key(body: &str) -> Option<(String, &str)> {
    if let Some(quote) = body.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let (key, after) = read_quoted(body, quote).ok()?;
        let rest = after.trim_start().strip_prefix(':')?;
        return (rest.is_empty() || rest.starts_with([' ', '\t'])).then_some((key, rest));
    }
    if body.starts_with(['-', '?', '[', '{', '&', '*', '!', '|', '>', '%', '@', '`']) {
        return None;
    }
    let mut search = 0;
    while let Some(at) = body[search..].find(':') {
        let colon = search + at;
        let after = &body[colon + 1..];
        if after.is_empty() || after.starts_with([' ', '\t']) {
            let key = body[..colon].trim_end();
            if key.is_empty() || key.contains(" #") {
                return None;
            }
            return Some((key.to_string(), after));
        }
        search = colon + 1;
    }
    None
}

/// The value after `key:`, with the lines indented under it.
fn read_value(rest: &str, nested: &[&str], base: usize) -> Result<Setting, String> {
    let inline = strip_comment(rest).trim();
    let nested: Vec<(usize, &str)> = nested.iter().filter_map(|l| content(l)).collect();
    if inline.is_empty() {
        if nested.is_empty() {
            return Ok(Setting::Null);
        }
        if nested
            .iter()
            .all(|(indent, body)| *indent > base && (body.starts_with("- ") || *body == "-"))
            && nested.iter().all(|(indent, _)| *indent == nested[0].0)
        {
            let mut items = Vec::new();
            for (_, body) in &nested {
                match read_scalar(body[1..].trim(), &[])? {
                    Setting::Text(item) => items.push(item),
                    _ => return Ok(Setting::Unusable("is a list of non-strings".into())),
                }
            }
            return Ok(Setting::List(items));
        }
        if nested.len() == 1 && split_key(nested[0].1).is_none() {
            return read_scalar(nested[0].1.trim(), &[]);
        }
        return Ok(Setting::Unusable("is a nested block".into()));
    }
    let continuation: Vec<&str> = nested.iter().map(|(_, body)| body.trim()).collect();
    read_scalar(rest.trim(), &continuation)
}

/// `text` up to a ` #` comment (outside quotes it is the only comment form).
fn strip_comment(text: &str) -> &str {
    let bytes = text.as_bytes();
    for (at, &b) in bytes.iter().enumerate() {
        if b == b'#' && (at == 0 || bytes[at - 1] == b' ' || bytes[at - 1] == b'\t') {
            return &text[..at];
        }
    }
    text
}

/// One scalar (or flow list of scalars), typed as PyYAML types it.
fn read_scalar(text: &str, continuation: &[&str]) -> Result<Setting, String> {
    let Some(first) = text.chars().next() else {
        return Ok(Setting::Null);
    };
    match first {
        '"' | '\'' => {
            let (value, after) = match read_quoted(text, first) {
                Ok(quoted) => quoted,
                Err(_) if !continuation.is_empty() => {
                    return Ok(Setting::Unusable("is a multi-line quoted string".into()));
                }
                Err(why) => return Err(why),
            };
            if !strip_comment(after).trim().is_empty() {
                return Err(format!("text after the closing quote: {after:?}"));
            }
            if !continuation.is_empty() {
                return Ok(Setting::Unusable("is a multi-line quoted string".into()));
            }
            Ok(Setting::Text(value))
        }
        '[' => read_flow_list(text),
        '{' => Ok(Setting::Unusable("is a mapping".into())),
        '|' | '>' => Ok(Setting::Unusable("is a block scalar".into())),
        '&' | '*' | '!' => Ok(Setting::Unusable("uses an anchor, alias or tag".into())),
        '%' | '@' | '`' | ',' | ']' | '}' => Err(format!("{first:?} cannot start a value")),
        _ => {
            let mut plain = strip_comment(text).trim().to_string();
            if plain.starts_with(['-', '?', ':']) && plain.chars().nth(1).is_none_or(|c| c == ' ') {
                return Ok(Setting::Unusable("is a nested block".into()));
            }
            for line in continuation {
                let line = strip_comment(line).trim();
                if line.is_empty() {
                    continue;
                }
                plain.push(' ');
                plain.push_str(line);
            }
            if plain.contains(": ") || plain.ends_with(':') {
                return Err(format!("a `: ` inside the value {plain:?}"));
            }
            Ok(resolve_plain(plain))
        }
    }
}

/// `[a, b]` of plain or quoted strings.
fn read_flow_list(text: &str) -> Result<Setting, String> {
    let Some(inner) = strip_comment(text)
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
    else {
        return Ok(Setting::Unusable(
            "is a flow list this reader does not read".into(),
        ));
    };
    let mut items = Vec::new();
    for item in inner.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let value = if item.starts_with(['"', '\'']) {
            match read_quoted(item, item.chars().next().unwrap_or('"')) {
                Ok((value, after)) if after.trim().is_empty() => Setting::Text(value),
                _ => {
                    return Ok(Setting::Unusable(
                        "is a flow list this reader does not read".into(),
                    ));
                }
            }
        } else if item.starts_with(['[', '{', '&', '*', '!']) {
            return Ok(Setting::Unusable("is a nested flow collection".into()));
        } else {
            resolve_plain(item.to_string())
        };
        match value {
            Setting::Text(item) => items.push(item),
            _ => return Ok(Setting::Unusable("is a list of non-strings".into())),
        }
    }
    Ok(Setting::List(items))
}

/// A quoted scalar at the start of `text`: its value and what follows it.
fn read_quoted(text: &str, quote: char) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices().skip(1).peekable();
    while let Some((at, c)) = chars.next() {
        if c == quote {
            if quote == '\'' && chars.peek().is_some_and(|(_, next)| *next == '\'') {
                chars.next();
                value.push('\'');
                continue;
            }
            return Ok((value, &text[at + 1..]));
        }
        if c == '\\' && quote == '"' {
            let Some((_, escape)) = chars.next() else {
                break;
            };
            let hex_digits = match escape {
                'x' => 2,
                'u' => 4,
                'U' => 8,
                _ => 0,
            };
            if hex_digits > 0 {
                let mut code = 0u32;
                for _ in 0..hex_digits {
                    let digit = chars.next().and_then(|(_, d)| d.to_digit(16));
                    code = code * 16 + digit.ok_or("a bad \\x/\\u/\\U escape")?;
                }
                value.push(char::from_u32(code).ok_or("an escape that is not a character")?);
                continue;
            }
            value.push(match escape {
                '0' => '\0',
                'a' => '\u{7}',
                'b' => '\u{8}',
                't' | '\t' => '\t',
                'n' => '\n',
                'v' => '\u{b}',
                'f' => '\u{c}',
                'r' => '\r',
                'e' => '\u{1b}',
                ' ' => ' ',
                '"' => '"',
                '/' => '/',
                '\\' => '\\',
                'N' => '\u{85}',
                '_' => '\u{a0}',
                'L' => '\u{2028}',
                'P' => '\u{2029}',
                other => return Err(format!("unknown escape \\{other}")),
            });
            continue;
        }
        value.push(c);
    }
    Err("an unterminated quoted string".into())
}

/// Type a plain scalar as PyYAML's YAML 1.1 resolvers do (Salt's loader keeps
/// timestamps as text and reads `0755` as decimal 755).
fn resolve_plain(plain: String) -> Setting {
    match plain.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Setting::Null,
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Setting::Bool(true);
        }
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Setting::Bool(false);
        }
        _ => {}
    }
    if let Some(int) = python_int_text(&plain) {
        return Setting::Int(int);
    }
    if looks_numeric(&plain) {
        return Setting::Unusable(format!(
            "{plain:?} is a YAML number whose Python str() this reader does not reproduce"
        ));
    }
    Setting::Text(plain)
}

/// `str(int)` of a decimal YAML int, and of `0755` (Salt strips the zeros).
fn python_int_text(plain: &str) -> Option<String> {
    let (negative, digits) = match plain.as_bytes().first()? {
        b'-' => (true, &plain[1..]),
        b'+' => (false, &plain[1..]),
        _ => (false, plain),
    };
    let first = *digits.as_bytes().first()?;
    if !first.is_ascii_digit() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return None;
    }
    if first == b'0' && digits.len() > 1 {
        // YAML 1.1 octal; only unsigned, all-octal digits are ints at all,
        // and Salt reads them as decimal after stripping the zeros.
        if plain.len() != digits.len()
            || !digits
                .bytes()
                .all(|b| (b'0'..=b'7').contains(&b) || b == b'_')
        {
            return None;
        }
    }
    let value: String = digits.chars().filter(|c| *c != '_').collect();
    let value = value.trim_start_matches('0');
    Some(match (value.is_empty(), negative) {
        (true, _) => "0".to_string(),
        (false, true) => format!("-{value}"),
        (false, false) => value.to_string(),
    })
}

/// Would PyYAML read this as a number (float, hex, binary, sexagesimal)?
fn looks_numeric(plain: &str) -> bool {
    let unsigned = plain.trim_start_matches(['-', '+']);
    let lower = unsigned.to_ascii_lowercase();
    if matches!(lower.as_str(), ".inf" | ".nan") {
        return true;
    }
    let Some(first) = unsigned.chars().next() else {
        return false;
    };
    if !(first.is_ascii_digit() || first == '.') {
        return false;
    }
    let octal = |s: &str| s.bytes().all(|b| (b'0'..=b'7').contains(&b) || b == b'_');
    if lower.len() > 1 && lower.starts_with('0') && octal(&lower) {
        return true; // a signed octal (unsigned ones are python_int_text's)
    }
    if let Some(hex) = lower.strip_prefix("0x") {
        return !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit() || b == b'_');
    }
    if let Some(binary) = lower.strip_prefix("0b") {
        return !binary.is_empty() && binary.bytes().all(|b| b == b'0' || b == b'1' || b == b'_');
    }
    // Floats and sexagesimals: digits with `.`, `_`, `:` and an exponent.
    let mantissa = lower.split_once('e').map_or(lower.as_str(), |(m, _)| m);
    let exponent_ok = lower.split_once('e').is_none_or(|(_, e)| {
        let e = e.trim_start_matches(['-', '+']);
        !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    });
    exponent_ok
        && (mantissa.contains('.') || mantissa.contains(':'))
        && mantissa
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'_' | b':'))
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

/// This host's name as Python's `socket.getfqdn()` gives it: resolve
/// `gethostname()` to an address, look that address up in reverse, and take
/// the first of the name and its aliases that contains a dot (else that
/// name); the plain host name when either lookup fails. May consult DNS.
pub fn fqdn() -> String {
    let mut buffer = [0u8; 256];
    let hostname = if unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0 {
        let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
        String::from_utf8_lossy(&buffer[..end]).into_owned()
    } else {
        String::new()
    };
    if hostname.is_empty() {
        return "localhost".to_string();
    }
    reverse_names(&hostname)
        .and_then(|names| {
            let dotted = names.iter().find(|name| name.contains('.')).cloned();
            dotted.or_else(|| names.into_iter().next())
        })
        .unwrap_or(hostname)
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

        /// Resolve with this root, the given environment and no override.
        fn resolve(&self, env: &[(&str, String)]) -> (String, Source) {
            let env: HashMap<String, String> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            resolve_in(None, &|var| env.get(var).cloned(), &self.0, || {
                "host.from.getfqdn".to_string()
            })
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    type Id = Result<Option<Result<String, String>>, String>;

    fn id_of(yaml: &str) -> Id {
        read_top_level(yaml).map(|top| top.get("id").cloned().map(Setting::into_id))
    }

    fn text(s: &str) -> Id {
        Ok(Some(Ok(s.to_string())))
    }

    #[test]
    fn yaml_plain_quoted_and_commented_ids() {
        assert_eq!(id_of("id: web-1"), text("web-1"));
        assert_eq!(id_of("id: web-1   # the web box\n"), text("web-1"));
        assert_eq!(id_of("id: web#1"), text("web#1"));
        assert_eq!(id_of("# id: commented\nmaster: salt\n"), Ok(None));
        assert_eq!(id_of("id : spaced"), text("spaced"));
        assert_eq!(id_of("'id': quoted-key"), text("quoted-key"));
        assert_eq!(
            id_of("id: 'it''s # not a comment'  # but this is"),
            text("it's # not a comment")
        );
        assert_eq!(
            id_of(r#"id: "tab\there \"q\" \u00e9 \x41""#),
            text("tab\there \"q\" é A")
        );
        assert_eq!(id_of("id: \"\""), text(""));
        assert_eq!(id_of("id: with spaces inside "), text("with spaces inside"));
        assert_eq!(
            id_of("master: http://salt:4506\nid: after-url\n"),
            text("after-url")
        );
        assert_eq!(id_of("\u{feff}id: bom\r\nmaster: x\r\n"), text("bom"));
        assert_eq!(id_of("%YAML 1.1\n---\nid: doc\n...\n"), text("doc"));
        assert_eq!(id_of("id: folded\n  over two\n"), text("folded over two"));
        assert_eq!(id_of("id:\n  next-line\n"), text("next-line"));
        assert_eq!(
            id_of("  id: indented-doc\n  master: x\n"),
            text("indented-doc")
        );
        assert_eq!(id_of("grains:\n  id: nested\nid: top\n"), text("top"));
        assert_eq!(
            id_of("2001-12-14: date-key\nid: 2001-12-14"),
            text("2001-12-14")
        );
    }

    #[test]
    fn yaml_non_string_ids_become_what_salt_makes_of_them() {
        // _read_conf_file: str() of the value PyYAML built.
        assert_eq!(id_of("id: 123"), text("123"));
        assert_eq!(id_of("id: +1_000"), text("1000"));
        assert_eq!(id_of("id: -0"), text("0"));
        assert_eq!(id_of("id: 0755"), text("755"));
        assert_eq!(id_of("id: 0789"), text("0789")); // not octal: a string
        assert_eq!(id_of("id: 1e3"), text("1e3")); // YAML 1.1 floats need a dot
        assert_eq!(id_of("id: yes"), text("True"));
        assert_eq!(id_of("id: Off"), text("False"));
        assert_eq!(id_of("id:"), text("None"));
        assert_eq!(id_of("id: ~ # nothing"), text("None"));
        for unusable in [
            "id: 1.50",
            "id: 1.0e+3",
            "id: .inf",
            "id: 0x1F",
            "id: 0b101",
            "id: 190:20:30",
            "id: -0755",
            "id: [a, b]",
            "id: {a: b}",
            "id: |\n  block\n",
            "id: &anchor x",
            "id: !!str tagged",
            "id:\n  - a\n  - b\n",
            "id:\n  nested: map\n",
            "id: 'multi\n  line'\n",
        ] {
            match id_of(unusable) {
                Ok(Some(Err(_))) => {}
                other => panic!("{unusable:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn yaml_that_salt_rejects_is_an_error() {
        for broken in [
            "id: a\nid: b\n", // SaltYamlSafeLoader: conflicting ID
            "id: a: b\n",     // mapping values are not allowed here
            "- id: a\n",      // not a mapping
            "just text\n",    // not a mapping
            "id: \"unterminated\n",
            "id: \"bad \\q escape\"",
            "id: 'x' trailing",
            "id: @reserved",
            "id: a\x01b",          // unacceptable character
            "id: a\n---\nid: b\n", // two documents
            "\tid: tabbed\n",
            "  id: a\nmaster: less-indented\n",
        ] {
            assert!(
                read_top_level(broken).is_err(),
                "{broken:?} should be rejected"
            );
        }
    }

    #[test]
    fn yaml_lists_for_include() {
        let top = read_top_level("include:\n  - a.conf\n  - 'b c.conf'\n").expect("valid");
        assert_eq!(top.includes(), vec!["a.conf", "b c.conf"]);
        let top = read_top_level("include: [x.conf, \"y.conf\"]  # two\n").expect("valid");
        assert_eq!(top.includes(), vec!["x.conf", "y.conf"]);
        let top = read_top_level("include: one.conf\n").expect("valid");
        assert_eq!(top.includes(), vec!["one.conf"]);
    }

    #[test]
    fn override_wins_even_over_a_config() {
        let root = Root::new();
        root.write("etc/salt/minion", "id: from-config\n");
        let (id, source) = resolve_in(Some("forced"), &|_| None, &root.0, || {
            unreachable!("no DNS")
        });
        assert_eq!((id.as_str(), source), ("forced", Source::Override));
        // An empty SP_MACHINE_ID counts as unset.
        let (id, _) = resolve_in(Some(""), &|_| None, &root.0, || "host".into());
        assert_eq!(id, "from-config");
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
            ("second".into(), Source::MinionConfig(second))
        );
    }

    #[test]
    fn salt_config_dir_and_salt_minion_config() {
        let root = Root::new();
        root.write("etc/salt/minion", "id: etc-salt\n");
        let custom = root.write("custom/minion", "id: custom-dir\n");
        let env_file = root.write("elsewhere/minion.yml", "id: env-file\n");
        root.write("elsewhere/minion.d/x.conf", "id: wrong-dir\n");
        let dir = ("SALT_CONFIG_DIR", root.path("custom"));
        let file = (
            "SALT_MINION_CONFIG",
            env_file.to_string_lossy().into_owned(),
        );
        assert_eq!(
            root.resolve(std::slice::from_ref(&dir)).1,
            Source::MinionConfig(custom.clone())
        );
        // The -c directory (SALT_CONFIG_DIR) beats SALT_MINION_CONFIG...
        assert_eq!(
            root.resolve(&[dir, file.clone()]).1,
            Source::MinionConfig(custom)
        );
        // ...which counts with the default directory, whose minion.d still applies.
        assert_eq!(
            root.resolve(std::slice::from_ref(&file)),
            ("env-file".into(), Source::MinionConfig(env_file))
        );
        let dropin = root.write("etc/salt/minion.d/a.conf", "id: etc-dropin\n");
        assert_eq!(root.resolve(&[file]).1, Source::MinionConfig(dropin));
        // A SALT_MINION_CONFIG that is not a file is ignored.
        let missing = ("SALT_MINION_CONFIG", root.path("nope"));
        assert_eq!(root.resolve(&[missing]).0, "etc-dropin");
    }

    #[test]
    fn default_include_and_include_keys() {
        let root = Root::new();
        root.write(
            "etc/salt/minion",
            "default_include: conf.d/*.yaml\ninclude:\n  - extra/[ab].conf\n  - ~/home.conf\n",
        );
        root.write("etc/salt/minion.d/x.conf", "id: not-default-any-more\n");
        root.write("etc/salt/conf.d/1.yaml", "id: via-default-include\n");
        assert_eq!(root.resolve(&[]).0, "via-default-include");
        root.write(
            "etc/salt/extra/a.conf",
            "id: include-a\ninclude: nested/n.conf\n",
        );
        let nested = root.write("etc/salt/extra/nested/n.conf", "id: nested-include\n");
        root.write("etc/salt/extra/c.conf", "id: not-matched\n");
        assert_eq!(root.resolve(&[]).1, Source::MinionConfig(nested));
        let home = root.write("home/home.conf", "id: from-home\n");
        assert_eq!(
            root.resolve(&[("HOME", root.path("home"))]).1,
            Source::MinionConfig(home)
        );
    }

    #[test]
    fn minion_id_file_under_root_dir() {
        let root = Root::new();
        root.write("etc/salt/minion", "master: salt\n");
        assert_eq!(
            root.resolve(&[]),
            ("host.from.getfqdn".into(), Source::HostName)
        );
        let cached = root.write("etc/salt/minion_id", "\u{feff} cached-id \nsecond line\n");
        assert_eq!(
            root.resolve(&[]),
            ("cached-id".into(), Source::MinionIdFile(cached.clone()))
        );
        root.write("etc/salt/minion_id", "localhost\n");
        assert_eq!(root.resolve(&[]).1, Source::HostName);
        // root_dir moves the cache; minion_id_caching: False turns it off.
        let moved = root.write("state/etc/salt/minion_id", "moved-id");
        root.write(
            "etc/salt/minion",
            format!("root_dir: {}\n", root.path("state")),
        );
        assert_eq!(
            root.resolve(&[]),
            ("moved-id".into(), Source::MinionIdFile(moved))
        );
        root.write(
            "etc/salt/minion",
            format!(
                "root_dir: {}\nminion_id_caching: False\n",
                root.path("state")
            ),
        );
        assert_eq!(root.resolve(&[]).1, Source::HostName);
    }

    #[test]
    fn append_domain_as_salt_does() {
        let root = Root::new();
        root.write("etc/salt/minion", "id: web\nappend_domain: example.org\n");
        assert_eq!(root.resolve(&[]).0, "web.example.org");
        root.write(
            "etc/salt/minion",
            "id: web.example.org\nappend_domain: example.org\n",
        );
        assert_eq!(root.resolve(&[]).0, "web.example.org");
        root.write("etc/salt/minion", "id: web.\nappend_domain: example.org\n");
        assert_eq!(root.resolve(&[]).0, "web.");
        root.write("etc/salt/minion", "append_domain: example.org\n");
        root.write("etc/salt/minion_id", "cached");
        assert_eq!(root.resolve(&[]).0, "cached.example.org");
        // Not to the host name: Salt's generated ids are its own business.
        std::fs::remove_file(root.0.join("etc/salt/minion_id")).expect("rm");
        assert_eq!(root.resolve(&[]).0, "host.from.getfqdn");
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
        root.write("etc/salt/minion", "id: 1.5\n");
        expect_cached("a float id");
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
        std::os::unix::fs::symlink(root.0.join("nowhere"), root.0.join("etc/salt/minion"))
            .expect("symlink");
        expect_cached("a dangling symlink");
        // A broken drop-in is skipped; the main file's id stands.
        std::fs::remove_file(root.0.join("etc/salt/minion")).expect("rm");
        root.write("etc/salt/minion", "id: main\n");
        root.write("etc/salt/minion.d/bad.conf", "id: [unclosed\n\x07");
        assert_eq!(root.resolve(&[]).0, "main");
        // A file we may not read (root reads it anyway).
        let locked = root.write("etc/salt/minion.d/locked.conf", "id: locked\n");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).expect("chmod");
        let readable = File::open(&locked).is_ok();
        assert_eq!(
            root.resolve(&[]).0,
            if readable { "locked" } else { "main" }
        );
        // An include loop stops at the depth bound.
        root.write("etc/salt/minion", "id: main\ninclude: loop.conf\n");
        root.write("etc/salt/loop.conf", "include: loop.conf\n");
        assert_eq!(
            root.resolve(&[]).0,
            if readable { "locked" } else { "main" }
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

    /// The fallback must give what the Python wrapper reported on this host.
    #[test]
    fn fqdn_matches_python_getfqdn() {
        let python = std::env::var("SP_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let output = std::process::Command::new(&python)
            .args(["-c", "import socket; print(socket.getfqdn())"])
            .output()
            .expect("python3 (or SP_TEST_PYTHON) to compare with");
        assert!(output.status.success(), "{python} failed");
        let expected = String::from_utf8_lossy(&output.stdout).trim().to_string();
        assert_eq!(fqdn(), expected);
    }
}
