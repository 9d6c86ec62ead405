//! Asking the host's name service (NSS: glibc with SSSD, LDAP, AD, extrausers)
//! about `SP_USER`, through the host's own `getent`. Run by the launcher only,
//! before it detaches, single-threaded.
//!
//! Why a process: the static musl binary has no NSS. musl reads `/etc/passwd`
//! and `/etc/group` (and asks nscd, when one runs), so a user that only the
//! directory knows would be "no such user", and a local user's directory
//! groups would be dropped. The host's `getent` is linked against the host's
//! libc and follows its `/etc/nsswitch.conf`, as the Python wrapper did.
//!
//! `getent`'s answer is input like any other: it runs from an absolute path
//! with an empty environment (no `LD_PRELOAD`, no `PATH` search), its output
//! is cut at `MAX_ANSWER` bytes, all queries share one `NSS_BUDGET` (an
//! unreachable directory must not use up Salt's 30 s), and it is parsed
//! field by field; anything malformed is an error naming `getent`.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where `getent` lives: `/usr/bin` (Debian, Ubuntu, RHEL 7+, SUSE, Alpine's
/// musl-utils), `/bin` (RHEL/CentOS 6 and older layouts).
pub const GETENT_PATHS: [&str; 2] = ["/usr/bin/getent", "/bin/getent"];

/// Time for every NSS query of one launch together. SSSD and nslcd answer a
/// cold lookup in well under a second; a directory that does not answer in
/// 10 s would still leave the launch inside Salt's 30 s.
pub const NSS_BUDGET: Duration = Duration::from_secs(10);

/// Largest answer read from `getent`: a passwd line is short, and 65,536
/// group ids (the kernel's NGROUPS_MAX) print in about 720 KB.
const MAX_ANSWER: usize = 1 << 20;

/// Most supplementary groups the kernel accepts (NGROUPS_MAX since 2.6.4).
pub const MAX_GROUPS: usize = 65_536;

/// A passwd entry as NSS gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub home: String,
    pub shell: String,
}

/// The first executable `getent` among `candidates`.
pub fn find_getent<'a>(candidates: &[&'a str]) -> Option<&'a str> {
    candidates.iter().copied().find(|path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// The host's NSS, reached through one `getent` binary, within one deadline.
pub struct Nss<'a> {
    getent: &'a str,
    deadline: Instant,
}

impl<'a> Nss<'a> {
    pub fn new(getent: &'a str, budget: Duration) -> Self {
        Nss {
            getent,
            deadline: Instant::now() + budget,
        }
    }

    /// `getent passwd -- NAME`: `Ok(None)` when NSS does not know the user.
    pub fn passwd(&self, name: &str) -> Result<Option<PasswdEntry>, String> {
        let (status, answer) = self.query("passwd", name)?;
        match status.code() {
            Some(0) => parse_passwd(name, &answer),
            // getent(1): 2 = the key was not found.
            Some(2) => Ok(None),
            _ => Err(format!(
                "{} passwd {name:?} failed ({})",
                self.getent,
                describe(status)
            )),
        }
    }

    /// `getent initgroups -- NAME`: every group NSS gives the user (glibc's
    /// `getgrouplist`, as `initgroups` at login), not counting its primary
    /// group unless a group lists it as a member.
    pub fn initgroups(&self, name: &str) -> Result<Vec<libc::gid_t>, String> {
        let (status, answer) = self.query("initgroups", name)?;
        if status.code() != Some(0) {
            return Err(format!(
                "{} initgroups {name:?} failed ({})",
                self.getent,
                describe(status)
            ));
        }
        parse_initgroups(name, &answer).map_err(|e| format!("{} initgroups: {e}", self.getent))
    }

    /// Run `getent DATABASE -- KEY` and read its whole answer, all within
    /// the deadline. `--` so that a name starting with `-` is a key.
    fn query(&self, database: &str, key: &str) -> Result<(ExitStatus, String), String> {
        let what = format!("{} {database} {key:?}", self.getent);
        let mut child = Command::new(self.getent)
            .args([database, "--", key])
            .env_clear()
            // Plain messages, no locale files read as root.
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {what}: {e}"))?;
        let outcome =
            read_bounded(&mut child, self.deadline).and_then(|answer| {
                match wait_until(&mut child, self.deadline)? {
                    Some(status) => Ok((status, answer)),
                    None => Err(Problem::TimedOut),
                }
            });
        if outcome.is_err() {
            // Never leave it behind: a hung directory lookup is killed.
            let _ = child.kill();
            let _ = child.wait();
        }
        match outcome {
            Ok((status, bytes)) => match String::from_utf8(bytes) {
                Ok(text) => Ok((status, text)),
                Err(_) => Err(format!("{what}: the answer is not UTF-8")),
            },
            Err(Problem::TimedOut) => Err(format!(
                "{what} gave no answer within {} s (is the directory service, e.g. sssd or nslcd, reachable?)",
                NSS_BUDGET.as_secs()
            )),
            Err(Problem::TooLong) => Err(format!("{what}: answer over {MAX_ANSWER} bytes")),
            Err(Problem::Io(e)) => Err(format!("{what}: {e}")),
        }
    }
}

enum Problem {
    TimedOut,
    TooLong,
    Io(io::Error),
}

/// The child's stdout up to end-of-file, at most `MAX_ANSWER` bytes, before
/// `deadline`. The pipe is non-blocking and waited on with `poll`.
fn read_bounded(child: &mut Child, deadline: Instant) -> Result<Vec<u8>, Problem> {
    let Some(stdout) = child.stdout.as_mut() else {
        return Err(Problem::Io(io::Error::other("no stdout pipe")));
    };
    let fd = stdout.as_raw_fd();
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(Problem::Io(io::Error::last_os_error()));
        }
    }
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stdout.read(&mut chunk) {
            Ok(0) => return Ok(answer),
            Ok(n) => {
                if answer.len() + n > MAX_ANSWER {
                    return Err(Problem::TooLong);
                }
                answer.extend_from_slice(&chunk[..n]);
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Problem::Io(e)),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Problem::TimedOut);
        }
        let mut pollfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // EINTR or a timeout: the loop reads again and re-checks the deadline.
        unsafe { libc::poll(&mut pollfd, 1, millis) };
    }
}

/// The child's exit status once it has exited, or `None` at the deadline.
/// `getent` exits as it closes its output, so this rarely waits at all; the
/// short sleeps cover a child that closed stdout and lingers.
fn wait_until(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>, Problem> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().map_err(Problem::Io)? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// One `getent passwd` line for `name`: `name:password:uid:gid:gecos:home:shell`.
/// The name must be the one asked for: getent takes an all-digit key as a
/// uid, and SP_USER names a user, never a number.
pub fn parse_passwd(name: &str, answer: &str) -> Result<Option<PasswdEntry>, String> {
    let Some(line) = answer.lines().find(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let fields: Vec<&str> = line.split(':').collect();
    let malformed = || {
        format!(
            "getent passwd: malformed entry for {name:?}: {:?}",
            clip(line)
        )
    };
    if fields.len() != 7 {
        return Err(malformed());
    }
    if fields[0] != name {
        return Ok(None);
    }
    let id = |field: &str| field.parse::<u32>().ok().filter(|&id| id != u32::MAX);
    let (Some(uid), Some(gid)) = (id(fields[2]), id(fields[3])) else {
        return Err(malformed());
    };
    Ok(Some(PasswdEntry {
        uid,
        gid,
        home: fields[5].to_string(),
        shell: fields[6].to_string(),
    }))
}

/// One `getent initgroups` line: the name, then decimal group ids.
pub fn parse_initgroups(name: &str, answer: &str) -> Result<Vec<libc::gid_t>, String> {
    let line = answer.lines().next().unwrap_or("");
    let Some(ids) = line.strip_prefix(name) else {
        return Err(format!("no line for {name:?} in {:?}", clip(line)));
    };
    if !ids.is_empty() && !ids.starts_with([' ', '\t']) {
        return Err(format!("no line for {name:?} in {:?}", clip(line)));
    }
    let mut groups = Vec::new();
    for word in ids.split_ascii_whitespace() {
        match word.parse::<u32>() {
            Ok(gid) if gid != u32::MAX => groups.push(gid),
            _ => return Err(format!("not a group id: {:?}", clip(word))),
        }
        if groups.len() > MAX_GROUPS {
            return Err(format!("more than {MAX_GROUPS} groups"));
        }
    }
    Ok(groups)
}

/// How `getent` ended, for an error line (not ExitStatus's Display: its
/// signal-name table costs the static binary for nothing here).
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "no exit status".to_string(),
    }
}

/// At most 80 bytes of `text`, for an error line.
fn clip(text: &str) -> &str {
    let mut end = text.len().min(80);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines_are_parsed_field_by_field() {
        let entry = parse_passwd("ann", "ann:x:61001:61002:Ann,,,:/home/ann:/bin/bash\n")
            .expect("valid")
            .expect("found");
        assert_eq!(
            entry,
            PasswdEntry {
                uid: 61001,
                gid: 61002,
                home: "/home/ann".into(),
                shell: "/bin/bash".into()
            }
        );
        // Empty home and shell are allowed (spawn defaults the shell).
        let entry = parse_passwd("b", "b:*:5:6:::\n")
            .expect("valid")
            .expect("found");
        assert_eq!((entry.home.as_str(), entry.shell.as_str()), ("", ""));
        // A numeric key answered by uid: not the user asked for.
        assert_eq!(parse_passwd("0", "root:x:0:0:root:/root:/bin/sh"), Ok(None));
        assert_eq!(parse_passwd("ann", ""), Ok(None));
        for bad in [
            "ann:x:61001:61002:/home/ann:/bin/bash",
            "ann:x:61001:61002:g:/h:/s:extra",
            "ann:x:-1:5:g:/h:/s",
            "ann:x:4294967295:5:g:/h:/s",
            "ann:x:1:99999999999:g:/h:/s",
            "ann:x: 1:2:g:/h:/s",
            "ann:x:1:two:g:/h:/s",
        ] {
            let error = parse_passwd("ann", bad).expect_err(bad);
            assert!(error.starts_with("getent passwd: malformed"), "{error}");
        }
    }

    #[test]
    fn initgroups_lines_are_parsed_strictly() {
        assert_eq!(
            parse_initgroups("ann", "ann                   61002 27 100\n"),
            Ok(vec![61002, 27, 100])
        );
        assert_eq!(parse_initgroups("ann", "ann\n"), Ok(vec![]));
        for bad in [
            "",
            "bob 1 2",
            "annie 1 2",
            "ann 1 x",
            "ann 1 -2",
            "ann 4294967295",
        ] {
            assert!(parse_initgroups("ann", bad).is_err(), "{bad}");
        }
        let many = format!("ann{}", " 7".repeat(MAX_GROUPS + 1));
        assert!(parse_initgroups("ann", &many).is_err());
    }

    #[test]
    fn no_getent_is_none_and_a_real_one_is_found() {
        assert_eq!(find_getent(&["/nonexistent/getent", "/etc/passwd"]), None);
        assert_eq!(find_getent(&["/nonexistent", "/bin/sh"]), Some("/bin/sh"));
    }

    /// A stand-in `getent` that never answers is killed at the deadline, and
    /// one that floods is cut at `MAX_ANSWER`.
    #[test]
    fn a_getent_that_hangs_or_floods_is_bounded() {
        let dir = std::env::temp_dir().join(format!("sp_nss_unit_{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let script = |name: &str, body: &str| {
            let path = dir.join(name);
            std::fs::write(&path, body).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            path.to_str().expect("utf-8").to_string()
        };
        // Another test thread forking while the script was open for writing
        // makes exec fail with ETXTBSY for a moment: try again then.
        let run = |path: &str, budget: Duration, initgroups: bool| {
            let mut attempts = 0;
            loop {
                let nss = Nss::new(path, budget);
                let error = if initgroups {
                    nss.initgroups("ann").expect_err("must fail")
                } else {
                    nss.passwd("ann").map(|_| ()).expect_err("must fail")
                };
                attempts += 1;
                if !error.contains("Text file busy") || attempts == 20 {
                    return error;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        let hangs = script("getent-hangs", "#!/bin/sh\nexec sleep 30\n");
        let started = Instant::now();
        let error = run(&hangs, Duration::from_millis(300), false);
        assert!(started.elapsed() < Duration::from_secs(5), "{error}");
        assert!(error.contains("gave no answer"), "{error}");

        let floods = script("getent-floods", "#!/bin/sh\nexec yes ann\n");
        let error = run(&floods, Duration::from_secs(10), true);
        assert!(error.contains("answer over"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
