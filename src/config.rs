//! Configuration: the `SP_*` environment Salt passes, turned into a validated
//! `Config` (run once by the launcher, before anything is started). The
//! variables are declared once, in `VARIABLES`.
//!
//! `Config::from_lookup` is pure (it takes a lookup function, not the real
//! environment) so it can be unit-tested and property-tested. Every bad value is an
//! error naming its variable; nothing is silently ignored. An empty value
//! counts as unset for optional variables, because Salt passes `""` for
//! settings a job leaves out.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration error: the variable and what is wrong with it.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// `lookup(var)`, with an empty value counted as unset; `None` for a
/// variable not in `VARIABLES` (a unit test checks that the parser reads
/// each name there and no other).
#[inline(never)]
fn set_value(lookup: &dyn Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    declared(var)?;
    lookup(var).filter(|v| !v.is_empty())
}

/// `var`'s value, else its default from the table, for a variable whose
/// default is a value (the `defaults` test parses each of them).
#[inline(never)]
fn value_or_default(lookup: &dyn Fn(&str) -> Option<String>, var: &str) -> String {
    set_value(lookup, var).unwrap_or_else(|| declared(var).map_or("", |v| v.default).to_string())
}

/// `var` is none of the words it may be.
#[inline(never)]
fn expected(var: &'static str, words: &str, got: &str) -> ConfigError {
    ConfigError {
        var,
        problem: format!("expected {words}, got {got:?}"),
    }
}

fn bad<T>(var: &'static str, problem: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        var,
        problem: problem.into(),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Off,
    Normal,
    Debug,
}

/// A parsed `ws://host[:port][/path]` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsUrl {
    /// The URL as given, for the WebSocket handshake request.
    pub raw: String,
    /// Host without brackets (an IPv6 literal is bare here).
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub url: WsUrl,
    pub job_name: String,
    pub job_instance: String,
    pub command: String,
    /// `None`: resolve the Salt minion id (`minion::id::resolve`), never in the launch path.
    pub machine_id: Option<String>,
    pub cwd: Option<PathBuf>,
    pub user: Option<String>,
    /// `None`: no limit (`SP_TIMEOUT` unset or 0).
    pub timeout: Option<Duration>,
    pub output_interval: Duration,
    /// `SP_OUTPUT=separate`: stdout and stderr on two pipes, labelled, with
    /// no order between them. Default (merged): one pipe, terminal order.
    pub separate_streams: bool,
    pub log_level: LogLevel,
    pub log_dir: PathBuf,
    pub allow_overlap: bool,
    pub lockfile: PathBuf,
    /// Unacknowledged output held in memory before spilling to the spool file.
    pub buffer_limit: usize,
    /// Where the spool file goes: `SP_SPOOL_DIR`, else the log directory.
    pub spool_dir: PathBuf,
    /// `SP_SPOOL_MAX_MB` in bytes: the most backlog the spool file holds.
    pub spool_limit: u64,
    /// `SP_OUTPUT_MAX_MB` in bytes: the most output the server receives
    /// per run; `None` (0) for no cap.
    pub output_limit: Option<u64>,
    /// `SP_LEFTOUT_MAX_MB` in bytes (at most `leftout_job_limit`): the
    /// most of one run's output past the cap kept on the minion.
    pub leftout_limit: u64,
    /// `SP_LEFTOUT_JOB_MAX_MB` in bytes: all of a job's `.leftout` files
    /// together, the new one counted at `leftout_limit`.
    pub leftout_job_limit: u64,
    /// `SP_LEFTOUT_JOB_FILES`: how many of a job's `.leftout` files are
    /// kept, the new one included.
    pub leftout_job_files: u64,
}

/// One `SP_*` variable: its name, its default, and one line for `--help`.
pub struct Variable {
    pub name: &'static str,
    /// What applies when it is unset (or empty), as the docs say it: a value
    /// the parser reads as if it were set (`8`, `normal`), else words for
    /// what is worked out at launch (`the log directory`); empty for a
    /// required variable (Saltpeter always passes it).
    pub default: &'static str,
    pub help: &'static str,
}

/// Every variable the configuration reads, declared once: `from_lookup`
/// reads a name only through this table (and takes its default from it),
/// `--help` prints it, the property tests set these names, and the unit tests check
/// that docs/configuration.md has a row for each and no other. The order is
/// the doc's. Test-only variables are not configuration and are not here:
/// `SP_TEST_TIMINGS` (timings.rs), `SP_TEST_PYTHON`/`SP_TEST_SALT_PYTHON`
/// (minion/id.rs's tests, build.sh) and `SP_PROPERTY_CASES`
/// (property_tests.rs).
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "SP_WEBSOCKET_URL",
        default: "",
        help: "ws://host:port of the Saltpeter server (not wss://)",
    },
    Variable {
        name: "SP_JOB_NAME",
        default: "",
        help: "the job's name",
    },
    Variable {
        name: "SP_JOB_INSTANCE",
        default: "",
        help: "this run's instance id (or SP_JOB_INSTANCE_NAME)",
    },
    Variable {
        name: "SP_COMMAND",
        default: "",
        help: "run as /bin/sh -c \"$SP_COMMAND\"",
    },
    Variable {
        name: "SP_JOB_INSTANCE_NAME",
        default: "none",
        help: "older name of SP_JOB_INSTANCE, read if that is unset",
    },
    Variable {
        name: "SP_MACHINE_ID",
        default: "the Salt minion id",
        help: "minion config id:, minion_id, else the host name",
    },
    Variable {
        name: "SP_CWD",
        default: "the wrapper's",
        help: "the job's working directory (must exist)",
    },
    Variable {
        name: "SP_USER",
        default: "none",
        help: "run the job as this user (root only)",
    },
    Variable {
        name: "SP_TIMEOUT",
        default: "0",
        help: "seconds; 0 = no limit; then SIGTERM, 5 s, SIGKILL, retcode 124",
    },
    Variable {
        name: "SP_OUTPUT",
        default: "merged",
        help: "merged (stderr joins stdout, in the order written) or separate",
    },
    Variable {
        name: "SP_OUTPUT_INTERVAL_MS",
        default: "1000",
        help: "how long output may be batched",
    },
    Variable {
        name: "SP_WRAPPER_LOGLEVEL",
        default: "normal",
        help: "normal, debug or off",
    },
    Variable {
        name: "SP_WRAPPER_LOGDIR",
        default: "/var/log/sp_wrapper",
        help: "log file <dir>/<job>.log",
    },
    Variable {
        name: "SP_ALLOW_OVERLAP",
        default: "true",
        help: "true (also 1/yes) or false (also 0/no)",
    },
    Variable {
        name: "SP_LOCKFILE",
        default: "/tmp/sp_wrapper_<job>.lock",
        help: "used when overlap is not allowed",
    },
    Variable {
        name: "SP_BUFFER_MAX_MB",
        default: "8",
        help: "unacknowledged output kept in memory (all of it is in the spool file)",
    },
    Variable {
        name: "SP_SPOOL_DIR",
        default: "the log directory",
        help: "where output beyond SP_BUFFER_MAX_MB spills",
    },
    Variable {
        name: "SP_SPOOL_MAX_MB",
        default: "512",
        help: "most unacknowledged output kept in the spool file",
    },
    Variable {
        name: "SP_OUTPUT_MAX_MB",
        // Chosen from the server's cost per run (docs/saltpeter.md, "What
        // one run's output costs the server").
        default: "8",
        help: "0: no cap; most output the server gets per run: the head, then the last 256 KiB",
    },
    Variable {
        name: "SP_LEFTOUT_MAX_MB",
        default: "256",
        help: "most output past SP_OUTPUT_MAX_MB kept in <log dir>/<job>.<instance>.leftout",
    },
    Variable {
        name: "SP_LEFTOUT_JOB_MAX_MB",
        // Four full-size files of the default SP_LEFTOUT_MAX_MB.
        default: "1024",
        help: "most disk all of a job's .leftout files take (the oldest are removed)",
    },
    Variable {
        name: "SP_LEFTOUT_JOB_FILES",
        default: "8",
        help: "most .leftout files a job keeps (the oldest are removed)",
    },
];

/// `--help`: what sp_wrapper does, its flags, its variables (the table
/// above) and its exit codes.
pub fn usage() -> String {
    let mut text = format!(
        "sp_wrapper {}: runs one Saltpeter job and reports it to the server\n\n\
         usage: sp_wrapper [--foreground]    (configured by environment variables)\n\
         \x20      sp_wrapper --check | --version | --help\n\n\
         --foreground  do not detach: show the job's output here too and exit with its result\n\
         --check       what a job would meet here (id, server, dirs, SP_USER); exit 1 if a check fails\n\n\
         variables:\n",
        crate::wire::protocol::VERSION
    );
    write_help(&mut text);
    text.push_str(
        "\nexit codes (and complete.retcode):\n\
         \x20 0 success; 1-123 the command's own; 1 also: invalid configuration at launch\n\
         \x20 124 killed after SP_TIMEOUT; 126/127 cannot execute / not found; 128+N died of signal N\n\
         \x20 143 killed on the server's request; 254 overlap refused (lock held); 255 wrapper error\n",
    );
    text
}

/// The variables' lines of `--help`: name, default (or "required"), help.
fn write_help(text: &mut String) {
    for variable in VARIABLES {
        let (name, default, help) = (variable.name, variable.default, variable.help);
        let said = if default.is_empty() {
            "required"
        } else {
            "default: "
        };
        text.push_str(&format!("  {name:<22} {said}{default}; {help}\n"));
    }
}

/// The declared variable called `name`; `None` (and a failed unit test)
/// for a name the table lacks, so an undeclared variable is never read.
#[inline(never)]
fn declared(name: &str) -> Option<&'static Variable> {
    let variable = VARIABLES.iter().find(|v| v.name == name);
    assert!(
        cfg!(not(test)) || variable.is_some(),
        "{name} is not in VARIABLES"
    );
    variable
}

/// When every required variable is missing, Salt ran us without the env it
/// was given: Saltpeter passes `env={...}` as the text of a Python dict that
/// Salt parses as YAML, and a command holding both quote kinds breaks it.
const NO_ENVIRONMENT: &str = "not set, and neither are SP_WEBSOCKET_URL, SP_JOB_NAME \
    and SP_JOB_INSTANCE: Salt passed no Saltpeter environment at all. With Saltpeter \
    this happens when the job's command contains both ' and \" (the env={...} \
    argument is then not valid YAML and Salt drops it); use one kind of quote, \
    or put the command in a script";

/// The largest disk cap: 1 TiB.
const MAX_DISK_MB: u64 = 1 << 20;
/// The largest SP_BUFFER_MAX_MB: 1 TiB, or half the address space where that
/// is less (2047 MiB on i686 and armv7), so `mb << 20` cannot wrap in `usize`
/// and a budget the process could never hold is refused at launch.
const MAX_BUFFER_MB: u64 = {
    let half_address_space_mb = (usize::MAX as u64 >> 1) >> 20;
    if half_address_space_mb < 1 << 20 {
        half_address_space_mb
    } else {
        1 << 20
    }
};
/// Longest encoded job name used in a file name (NAME_MAX is 255, leave room
/// for the `sp_wrapper_` prefix and the suffixes).
const MAX_NAME_COMPONENT: usize = 200;

impl Config {
    /// Validate the environment given by `lookup` (`None` = unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Self::from_dyn_lookup(&lookup)
    }

    /// `from_lookup`, not generic, and with one out-of-line `get`: each
    /// caller's closure inlined some twenty times cost ~KB of code run once.
    #[inline(never)]
    fn from_dyn_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        // Empty counts as unset: Salt passes "" for settings a job leaves out.
        let get = |var: &str| set_value(lookup, var);
        // A variable whose default is a value: its value, else that one.
        let setting = |var: &str| value_or_default(lookup, var);
        let required = |var: &'static str| match get(var) {
            Some(v) => Ok(v),
            None => bad(var, "not set (required)"),
        };

        let mut all_required_unset = get("SP_JOB_INSTANCE_NAME").is_none();
        for variable in VARIABLES {
            if variable.default.is_empty() {
                all_required_unset &= get(variable.name).is_none();
            }
        }
        if all_required_unset {
            return bad("SP_COMMAND", NO_ENVIRONMENT);
        }
        let url = parse_url(&required("SP_WEBSOCKET_URL")?)?;
        let job_name = required("SP_JOB_NAME")?;
        let job_file_name = file_name_component(&job_name)?;
        let job_instance = match get("SP_JOB_INSTANCE").or_else(|| get("SP_JOB_INSTANCE_NAME")) {
            Some(v) => v,
            None => {
                return bad(
                    "SP_JOB_INSTANCE",
                    "not set (required; SP_JOB_INSTANCE_NAME also accepted)",
                );
            }
        };
        let command = required("SP_COMMAND")?;

        let timeout = parse_seconds("SP_TIMEOUT", &setting("SP_TIMEOUT"))?;
        let output_interval = Duration::from_millis(parse_whole(
            "SP_OUTPUT_INTERVAL_MS",
            &setting("SP_OUTPUT_INTERVAL_MS"),
            3_600_000,
        )?);
        let separate_streams = match setting("SP_OUTPUT").to_ascii_lowercase().as_str() {
            "merged" => false,
            "separate" => true,
            other => return Err(expected("SP_OUTPUT", "merged or separate", other)),
        };
        let log_level = match setting("SP_WRAPPER_LOGLEVEL").to_ascii_lowercase().as_str() {
            "normal" | "info" => LogLevel::Normal,
            "debug" => LogLevel::Debug,
            "off" | "none" => LogLevel::Off,
            other => {
                return Err(expected(
                    "SP_WRAPPER_LOGLEVEL",
                    "normal, debug or off",
                    other,
                ));
            }
        };
        let log_dir = absolute_path("SP_WRAPPER_LOGDIR", setting("SP_WRAPPER_LOGDIR"))?;
        let allow_overlap = match setting("SP_ALLOW_OVERLAP").to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            other => {
                return Err(expected(
                    "SP_ALLOW_OVERLAP",
                    "true/1/yes or false/0/no",
                    other,
                ));
            }
        };
        let lockfile = match get("SP_LOCKFILE") {
            Some(v) => absolute_path("SP_LOCKFILE", v)?,
            None => PathBuf::from(format!("/tmp/sp_wrapper_{job_file_name}.lock")),
        };
        let buffer_limit = match parse_whole(
            "SP_BUFFER_MAX_MB",
            &setting("SP_BUFFER_MAX_MB"),
            MAX_BUFFER_MB,
        )? {
            0 => return bad("SP_BUFFER_MAX_MB", "must be at least 1"),
            // Fits: MAX_BUFFER_MB << 20 is at most half of usize.
            mb => (mb as usize) << 20,
        };
        let spool_dir = match get("SP_SPOOL_DIR") {
            Some(v) => absolute_path("SP_SPOOL_DIR", v)?,
            None => log_dir.clone(),
        };
        let megabytes = |var: &'static str| -> Result<u64, ConfigError> {
            Ok(parse_whole(var, &setting(var), MAX_DISK_MB)? << 20)
        };
        let spool_limit = megabytes("SP_SPOOL_MAX_MB")?;
        if spool_limit == 0 {
            return bad("SP_SPOOL_MAX_MB", "must be at least 1");
        }
        let output_limit = Some(megabytes("SP_OUTPUT_MAX_MB")?).filter(|&b| b > 0);
        let leftout_job_limit = megabytes("SP_LEFTOUT_JOB_MAX_MB")?;
        let leftout_job_files = parse_whole(
            "SP_LEFTOUT_JOB_FILES",
            &setting("SP_LEFTOUT_JOB_FILES"),
            1 << 20,
        )?;
        if leftout_job_limit == 0 || leftout_job_files == 0 {
            let var = if leftout_job_files == 0 {
                "SP_LEFTOUT_JOB_FILES"
            } else {
                "SP_LEFTOUT_JOB_MAX_MB"
            };
            return bad(var, "must be at least 1 (SP_LEFTOUT_MAX_MB=0 keeps none)");
        }
        let leftout_limit = megabytes("SP_LEFTOUT_MAX_MB")?.min(leftout_job_limit);
        let cwd = match get("SP_CWD") {
            None => None,
            Some(v) if v.contains('\0') => return bad("SP_CWD", "contains a NUL byte"),
            Some(v) => Some(PathBuf::from(v)),
        };
        let user = get("SP_USER");
        if user.as_deref().is_some_and(|u| u.contains('\0')) {
            return bad("SP_USER", "contains a NUL byte");
        }

        Ok(Config {
            url,
            job_name,
            job_instance,
            command,
            machine_id: get("SP_MACHINE_ID"),
            cwd,
            user,
            timeout,
            output_interval,
            separate_streams,
            log_level,
            log_dir,
            allow_overlap,
            lockfile,
            buffer_limit,
            spool_dir,
            spool_limit,
            output_limit,
            leftout_limit,
            leftout_job_limit,
            leftout_job_files,
        })
    }

    /// The job name as used in file names (see `file_name_component`).
    pub fn job_file_name(&self) -> String {
        // Validated in from_lookup, so this cannot fail here.
        file_name_component(&self.job_name).unwrap_or_else(|_| "job".to_string())
    }

    pub fn log_path(&self) -> PathBuf {
        self.log_dir.join(format!("{}.log", self.job_file_name()))
    }

    /// Where output past `SP_OUTPUT_MAX_MB` is kept:
    /// `<log dir>/<job>.<instance>.leftout`, or with the daemon's pid for an
    /// instance name too long for a file name. The instance's dots are
    /// encoded too (`%2E`), so the job's part of a name is all before its
    /// second-to-last dot and one job's files are never taken for another's
    /// (`output_cap::of_job`).
    pub fn leftout_path(&self, daemon_pid: u32) -> PathBuf {
        let job = self.job_file_name();
        let name = Some(format!(
            "{job}.{}.leftout",
            encoded(&self.job_instance, false)
        ))
        .filter(|name| name.len() <= 250)
        .unwrap_or_else(|| format!("{job}.{daemon_pid}.leftout"));
        self.log_dir.join(name)
    }
}

/// `name` with every byte outside `[A-Za-z0-9._-]` as `%XX`, and every `.`
/// too unless `dots` (then only a leading one).
fn encoded(name: &str, dots: bool) -> String {
    let mut encoded = String::with_capacity(name.len());
    for (i, byte) in name.bytes().enumerate() {
        let plain = byte.is_ascii_alphanumeric()
            || byte == b'_'
            || byte == b'-'
            || (byte == b'.' && dots && i > 0);
        if plain {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// A job name made safe as one file-name component: bytes outside
/// `[A-Za-z0-9._-]` become `%XX`, and a leading `.` too, so no name can be
/// `..`, contain `/` or NUL, or be hidden. Plain names are unchanged, so logs
/// and locks keep the names the Python wrapper gave them.
pub fn file_name_component(job_name: &str) -> Result<String, ConfigError> {
    let encoded = encoded(job_name, true);
    if encoded.len() > MAX_NAME_COMPONENT {
        return bad(
            "SP_JOB_NAME",
            format!(
                "too long for a file name ({} bytes once encoded, at most {MAX_NAME_COMPONENT})",
                encoded.len()
            ),
        );
    }
    Ok(encoded)
}

fn parse_whole(var: &'static str, value: &str, max: u64) -> Result<u64, ConfigError> {
    let trimmed = value.trim();
    match trimmed.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        Ok(_) => bad(var, format!("{trimmed} is too large (at most {max})")),
        Err(_) => bad(var, format!("expected a whole number, got {value:?}")),
    }
}

/// Seconds as the server writes them (`str()` of a YAML number): `30`,
/// `30.0` or `1.5` (to the millisecond). Zero means no limit. Parsed by hand:
/// float parsing would add ~20 KiB to a binary that must stay small.
fn parse_seconds(var: &'static str, value: &str) -> Result<Option<Duration>, ConfigError> {
    let trimmed = value.trim();
    let (whole, fraction) = trimmed.split_once('.').unwrap_or((trimmed, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) {
        return bad(
            var,
            format!("expected seconds (e.g. 30 or 1.5), got {value:?}"),
        );
    }
    let secs: u64 = match whole.parse() {
        Ok(n) if n <= u64::from(u32::MAX) => n,
        _ => {
            return bad(
                var,
                format!("{trimmed} is too large (at most {})", u32::MAX),
            );
        }
    };
    // Milliseconds from the first three fraction digits; finer is ignored.
    let millis = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'));
    let timeout = Duration::from_secs(secs) + Duration::from_millis(millis);
    Ok((!timeout.is_zero()).then_some(timeout))
}

/// A timeout as the server wrote it: `30`, or `1.5` for a fractional one.
pub fn format_seconds(duration: Duration) -> String {
    match duration.subsec_millis() {
        0 => duration.as_secs().to_string(),
        millis => {
            let mut text = format!("{}.{millis:03}", duration.as_secs());
            // Not past the point: millis is not 0.
            while text.ends_with('0') {
                text.pop();
            }
            text
        }
    }
}

fn absolute_path(var: &'static str, value: String) -> Result<PathBuf, ConfigError> {
    if value.contains('\0') {
        bad(var, "contains a NUL byte")
    } else if !Path::new(&value).is_absolute() {
        bad(var, format!("must be an absolute path, got {value:?}"))
    } else {
        Ok(PathBuf::from(value))
    }
}

/// Accepts `ws://host[:port][/path]`; the server always passes `ws://host:port`.
pub fn parse_url(raw: &str) -> Result<WsUrl, ConfigError> {
    const VAR: &str = "SP_WEBSOCKET_URL";
    let raw = raw.trim();
    let Some((scheme, rest)) = raw.split_once("://") else {
        return bad(VAR, format!("expected ws://host:port, got {raw:?}"));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "ws" => {}
        "wss" => return bad(VAR, "wss:// (TLS) is not supported; use ws://"),
        other => return bad(VAR, format!("unsupported scheme {other:?}; expected ws://")),
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return bad(VAR, "user information in the URL is not supported");
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return bad(VAR, format!("unclosed [ in {raw:?}"));
        };
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return bad(VAR, format!("no host in {raw:?}"));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad(VAR, format!("invalid host in {raw:?}"));
    }
    let port = match port {
        None | Some("") => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return bad(VAR, format!("invalid port {p:?}")),
        },
    };
    Ok(WsUrl {
        raw: raw.to_string(),
        host: host.to_string(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut map: HashMap<String, String> = [
            ("SP_WEBSOCKET_URL", "ws://127.0.0.1:8889"),
            ("SP_JOB_NAME", "backup"),
            ("SP_JOB_INSTANCE", "backup_1"),
            ("SP_COMMAND", "echo hi"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in pairs {
            if v.is_empty() {
                map.remove(*k);
            } else {
                map.insert(k.to_string(), v.to_string());
            }
        }
        map
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map = env(pairs);
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let cfg = parse(&[]).expect("valid");
        assert_eq!(cfg.url.host, "127.0.0.1");
        assert_eq!(cfg.url.port, 8889);
        assert_eq!(cfg.timeout, None);
        assert_eq!(cfg.output_interval, Duration::from_millis(1000));
        assert_eq!(cfg.log_level, LogLevel::Normal);
        assert_eq!(cfg.log_dir, PathBuf::from("/var/log/sp_wrapper"));
        assert!(cfg.allow_overlap);
        assert_eq!(cfg.lockfile, PathBuf::from("/tmp/sp_wrapper_backup.lock"));
        assert_eq!(cfg.buffer_limit, 8 << 20);
        assert_eq!(cfg.machine_id, None);
        assert!(!cfg.separate_streams);
        assert_eq!(cfg.spool_dir, PathBuf::from("/var/log/sp_wrapper"));
        assert_eq!(cfg.spool_limit, 512 << 20);
        assert_eq!(cfg.output_limit, Some(8 << 20));
        assert_eq!(
            cfg.log_path(),
            PathBuf::from("/var/log/sp_wrapper/backup.log")
        );
    }

    #[test]
    fn each_missing_required_variable_is_named() {
        for var in [
            "SP_WEBSOCKET_URL",
            "SP_JOB_NAME",
            "SP_JOB_INSTANCE",
            "SP_COMMAND",
        ] {
            let error = parse(&[(var, "")]).expect_err("must fail");
            assert_eq!(error.var, var);
            assert!(error.to_string().starts_with(var));
        }
    }

    #[test]
    fn an_empty_environment_names_the_quoting_cause() {
        let error = Config::from_lookup(|_| None).expect_err("must fail");
        assert_eq!(error.var, "SP_COMMAND");
        let line = error.to_string();
        assert!(line.contains("both ' and \""), "{line}");
        assert!(!line.contains('\n'), "one line: {line}");
        // Unrelated variables (the job's own env, PATH) do not change that.
        let error = Config::from_lookup(|var| (var == "PATH").then(|| "/bin".into()))
            .expect_err("must fail");
        assert!(error.problem.contains("no Saltpeter environment"));
        // One missing variable among the others is named plainly.
        let error = parse(&[("SP_COMMAND", "")]).expect_err("must fail");
        assert_eq!(error.problem, "not set (required)");
    }

    #[test]
    fn instance_falls_back_to_the_older_name() {
        let cfg =
            parse(&[("SP_JOB_INSTANCE", ""), ("SP_JOB_INSTANCE_NAME", "old_7")]).expect("valid");
        assert_eq!(cfg.job_instance, "old_7");
    }

    #[test]
    fn bad_values_are_errors_not_defaults() {
        for (var, value) in [
            ("SP_TIMEOUT", "ten"),
            ("SP_TIMEOUT", "-1"),
            ("SP_OUTPUT_INTERVAL_MS", "1.5"),
            ("SP_WRAPPER_LOGLEVEL", "loud"),
            ("SP_ALLOW_OVERLAP", "maybe"),
            ("SP_WRAPPER_LOGDIR", "relative/dir"),
            ("SP_LOCKFILE", "x.lock"),
            ("SP_BUFFER_MAX_MB", "0"),
            ("SP_SPOOL_MAX_MB", "0"),
            ("SP_SPOOL_MAX_MB", "1048577"),
            ("SP_OUTPUT_MAX_MB", "-1"),
            ("SP_OUTPUT_MAX_MB", "1.5"),
            ("SP_LEFTOUT_MAX_MB", "lots"),
            ("SP_LEFTOUT_JOB_MAX_MB", "0"),
            ("SP_LEFTOUT_JOB_FILES", "0"),
            ("SP_LEFTOUT_JOB_FILES", "1048577"),
        ] {
            let error = parse(&[(var, value)]).expect_err(value);
            assert_eq!(error.var, var, "{value}");
        }
    }

    /// On 32-bit targets (./build.sh test runs these unit tests on i686)
    /// 4096 MiB used to wrap to a 0-byte budget without a word.
    #[test]
    fn buffer_max_mb_is_refused_beyond_what_the_process_can_address() {
        let limit = |value: &str| parse(&[("SP_BUFFER_MAX_MB", value)]).map(|c| c.buffer_limit);
        let refused = |value: &str| {
            let error = limit(value).expect_err(value);
            assert_eq!(error.var, "SP_BUFFER_MAX_MB", "{value}");
            assert!(error.problem.contains("too large"), "{value}: {error}");
        };
        assert_eq!(limit("1"), Ok(1 << 20));
        assert_eq!(limit("2047"), Ok(2047 << 20));
        refused("1048577");
        refused("4294967296");
        if cfg!(target_pointer_width = "32") {
            assert_eq!(MAX_BUFFER_MB, 2047);
            for value in ["2048", "4096", "4097", "8192"] {
                refused(value);
            }
        } else {
            assert_eq!(MAX_BUFFER_MB, 1 << 20);
            assert_eq!(limit("4096").map(|b| b as u64), Ok(4096 << 20));
            assert_eq!(limit("1048576").map(|b| b as u64), Ok(1 << 40));
        }
    }

    #[test]
    fn timeout_zero_means_no_limit() {
        assert_eq!(parse(&[("SP_TIMEOUT", "0")]).expect("valid").timeout, None);
        assert_eq!(
            parse(&[("SP_TIMEOUT", "30")]).expect("valid").timeout,
            Some(Duration::from_secs(30))
        );
        for (value, expected) in [("30.0", Some(30_000)), ("1.5", Some(1_500)), ("0.0", None)] {
            let timeout = parse(&[("SP_TIMEOUT", value)]).expect("valid").timeout;
            assert_eq!(timeout.map(|t| t.as_millis()), expected, "{value}");
        }
        assert_eq!(format_seconds(Duration::from_millis(1500)), "1.5");
        assert_eq!(format_seconds(Duration::from_secs(30)), "30");
        for bad in ["1e3", "inf", "NaN", ".", "1.2.3", "-0.5", "5s", ".5"] {
            assert!(parse(&[("SP_TIMEOUT", bad)]).is_err(), "{bad}");
        }
    }

    #[test]
    fn overlap_spellings() {
        for yes in ["true", "TRUE", "1", "yes"] {
            assert!(
                parse(&[("SP_ALLOW_OVERLAP", yes)])
                    .expect("valid")
                    .allow_overlap
            );
        }
        for no in ["false", "0", "no", "False"] {
            assert!(
                !parse(&[("SP_ALLOW_OVERLAP", no)])
                    .expect("valid")
                    .allow_overlap
            );
        }
    }

    #[test]
    fn urls() {
        assert_eq!(parse_url("ws://[::1]:9000").expect("v6").host, "::1");
        assert_eq!(parse_url("ws://server").expect("no port").port, 80);
        assert_eq!(parse_url("ws://server:1234/path").expect("path").port, 1234);
        assert!(
            parse_url("wss://server:1")
                .expect_err("tls")
                .problem
                .contains("wss")
        );
        for bad in [
            "http://x:1",
            "server:80",
            "ws://",
            "ws://:80",
            "ws://h:0",
            "ws://h:99999",
            "ws://h:x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn left_out_files_are_bounded_per_run_and_per_job() {
        let cfg = parse(&[("SP_JOB_INSTANCE", "backup.daily_7")]).expect("valid");
        assert_eq!(
            (
                cfg.leftout_limit,
                cfg.leftout_job_limit,
                cfg.leftout_job_files
            ),
            (256 << 20, 1024 << 20, 8)
        );
        // The instance's dots are encoded: the job's part stays unambiguous.
        assert_eq!(
            cfg.leftout_path(42),
            PathBuf::from("/var/log/sp_wrapper/backup.backup%2Edaily_7.leftout")
        );
        // One run's file never passes the whole job's budget.
        let cfg = parse(&[
            ("SP_LEFTOUT_MAX_MB", "4096"),
            ("SP_LEFTOUT_JOB_MAX_MB", "100"),
        ])
        .expect("valid");
        assert_eq!(
            (cfg.leftout_limit, cfg.leftout_job_limit),
            (100 << 20, 100 << 20)
        );
    }

    /// The rows of docs/configuration.md's variable tables (a line starting
    /// "| `SP_"): the name and the default column (empty for a required one).
    fn documented(text: &str) -> Vec<(&str, &str)> {
        text.lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter(|row| row.starts_with("SP_"))
            .map(|row| {
                let mut cells = row.split(" | ");
                let name = cells.next().unwrap_or("").trim_end_matches('`');
                let default = match (cells.next(), cells.next()) {
                    (Some(default), Some(_)) => default,
                    _ => "",
                };
                (name, default)
            })
            .collect()
    }

    /// docs/configuration.md has one row per variable of the table, in its
    /// order, and no other; a literal default is the one the parser uses.
    #[test]
    fn the_doc_documents_exactly_the_table() {
        let rows = documented(include_str!("../docs/configuration.md"));
        let names: Vec<&str> = rows.iter().map(|&(name, _)| name).collect();
        let declared: Vec<&str> = VARIABLES.iter().map(|v| v.name).collect();
        assert_eq!(names, declared, "docs/configuration.md against VARIABLES");
        for (variable, (name, default)) in VARIABLES.iter().zip(&rows) {
            let plain = default.trim_matches('`');
            assert_eq!(plain, variable.default, "{name}'s default in the doc");
        }
        // The README's short table names each one too.
        let readme = include_str!("../README.md");
        for name in declared {
            assert!(
                readme.contains(&format!("| `{name}` |")),
                "{name} is not in README.md"
            );
        }
    }

    /// The parser reads each name of the table and no other (`declared`
    /// fails this test for an undeclared one). The `defaults` test parses
    /// the table's value defaults.
    #[test]
    fn the_parser_reads_exactly_the_table() {
        let read = std::cell::RefCell::new(std::collections::BTreeSet::new());
        let map = env(&[
            ("SP_CWD", "/"),
            ("SP_USER", "nobody"),
            ("SP_MACHINE_ID", "m"),
            ("SP_LOCKFILE", "/tmp/x.lock"),
            ("SP_SPOOL_DIR", "/tmp"),
        ]);
        Config::from_lookup(|var| {
            read.borrow_mut().insert(var.to_string());
            map.get(var).cloned()
        })
        .expect("valid");
        let mut declared: Vec<&str> = VARIABLES.iter().map(|v| v.name).collect();
        declared.sort_unstable();
        assert_eq!(read.into_inner().into_iter().collect::<Vec<_>>(), declared);
    }

    /// `--help` (main.rs) lists every variable of the table, with its
    /// default, and no test-only one.
    #[test]
    fn help_lists_every_variable() {
        let help = usage();
        for variable in VARIABLES {
            let line = help
                .lines()
                .find(|line| line.split_whitespace().next() == Some(variable.name))
                .unwrap_or_else(|| panic!("{} is not in --help", variable.name));
            let default = match variable.default {
                "" => "required;".to_string(),
                default => format!("default: {default};"),
            };
            assert!(line.contains(&default), "{line}");
            assert!(line.ends_with(variable.help), "{line}");
        }
        assert!(!help.contains("SP_TEST_"), "{help}");
    }

    #[test]
    fn job_names_cannot_escape_their_directory() {
        assert_eq!(
            file_name_component("backup-db_1.daily").expect("ok"),
            "backup-db_1.daily"
        );
        assert_eq!(
            file_name_component("../escape").expect("ok"),
            "%2E.%2Fescape"
        );
        assert_eq!(file_name_component("..").expect("ok"), "%2E.");
        assert_eq!(file_name_component("a/b").expect("ok"), "a%2Fb");
        assert_eq!(file_name_component(".hidden").expect("ok"), "%2Ehidden");
        for name in ["../escape", "..", "a/b", "x\u{1}", "/etc/passwd", "日本"] {
            let encoded = file_name_component(name).expect("ok");
            assert!(
                !encoded.contains('/') && encoded != ".." && !encoded.starts_with('.'),
                "{name} -> {encoded}"
            );
        }
        assert!(file_name_component(&"x".repeat(300)).is_err());
        let cfg = parse(&[("SP_JOB_NAME", "../escape")]).expect("valid");
        assert_eq!(
            cfg.log_path(),
            PathBuf::from("/var/log/sp_wrapper/%2E.%2Fescape.log")
        );
        assert_eq!(
            cfg.lockfile,
            PathBuf::from("/tmp/sp_wrapper_%2E.%2Fescape.lock")
        );
    }
}
