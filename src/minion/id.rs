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

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::host_names::{DNS_BOUND, HostFacts, generate};
use super::salt_config::{RemoveDomain, SALT_CONFIG_DIR, read_minion_config, read_minion_id_file};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::CString;
    use std::fs::File;
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
            self.resolve_with(env, None, HostFacts::named("host.example.org", "host"))
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
    fn generated_id_then_lowercase_remove_domain_append_domain() {
        let root = Root::new();
        let facts = || HostFacts::named("Web.Example.ORG", "Web");
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
}
