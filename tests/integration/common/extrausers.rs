//! A user and groups that only the host's NSS knows, for the directory-user
//! test: Debian's `libnss-extrausers` reads `/var/lib/extrausers/{passwd,group}`
//! once `/etc/nsswitch.conf` names `extrausers` for passwd and group. That is
//! what an SSSD or LDAP user looks like to the static binary: absent from
//! `/etc/passwd` and `/etc/group`, known to glibc.
//!
//! `/etc/nsswitch.conf` is global: other tests (and other checkouts) on this
//! machine read it. So the change is made under the machine-wide lock
//! `/tmp/sp-global.lock` (an `flock`, the one `flock(1)` takes around apt-get
//! and friends), written by atomic rename, kept only while the launches run,
//! and undone by a drop guard however the test ends. A copy of the original
//! is left next to it while changed, so a run killed outright (no drop) is
//! repaired by the next one.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

const NSSWITCH: &str = "/etc/nsswitch.conf";
const BACKUP: &str = "/etc/nsswitch.conf.sp-test-backup";
const EXTRAUSERS: &str = "/var/lib/extrausers";
const GLOBAL_LOCK: &str = "/tmp/sp-global.lock";

/// Where Debian puts the module, per arch and multiarch layout.
const MODULE_PATHS: [&str; 3] = [
    "/usr/lib/libnss_extrausers.so.2",
    "/usr/lib/x86_64-linux-gnu/libnss_extrausers.so.2",
    "/lib/x86_64-linux-gnu/libnss_extrausers.so.2",
];

pub fn module_installed() -> bool {
    MODULE_PATHS.iter().any(|p| Path::new(p).exists())
}

/// The machine-wide lock, held until dropped (closing the file releases it).
pub struct GlobalLock(#[allow(dead_code)] File);

impl GlobalLock {
    pub fn take() -> GlobalLock {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(GLOBAL_LOCK)
            .expect("open /tmp/sp-global.lock");
        // Blocks while another engineer's apt-get or NSS test holds it.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(
            rc,
            0,
            "flock {GLOBAL_LOCK}: {}",
            std::io::Error::last_os_error()
        );
        GlobalLock(file)
    }
}

/// Replace `path` by `contents` through a rename, so that a reader sees the
/// old file or the new one, never half of one.
fn write_atomically(path: &Path, contents: &[u8]) {
    let temporary = PathBuf::from(format!("{}.sp-test-new", path.display()));
    std::fs::write(&temporary, contents).expect("write the new file");
    let mode = std::fs::metadata(path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .unwrap_or(0o644);
    let _ = std::fs::set_permissions(
        &temporary,
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    );
    std::fs::rename(&temporary, path).expect("rename into place");
}

/// `/etc/nsswitch.conf` with `extrausers` after the sources of passwd and group.
pub fn with_extrausers(original: &str) -> String {
    let mut out = String::new();
    let mut seen = (false, false);
    for line in original.lines() {
        let key = line.split(':').next().unwrap_or("").trim();
        let wanted = key == "passwd" || key == "group";
        if wanted && line.contains(':') && !line.trim_start().starts_with('#') {
            seen = (seen.0 || key == "passwd", seen.1 || key == "group");
            if line.split_whitespace().any(|w| w == "extrausers") {
                out.push_str(line);
            } else {
                out.push_str(&format!("{line} extrausers"));
            }
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !seen.0 {
        out.push_str("passwd: files extrausers\n");
    }
    if !seen.1 {
        out.push_str("group: files extrausers\n");
    }
    out
}

/// The extrausers files this test wrote, and what it must give back.
pub struct ExtraUsers {
    /// The files as they were (None: absent), put back on drop.
    saved: Vec<(PathBuf, Option<Vec<u8>>)>,
    nsswitch_changed: bool,
}

impl ExtraUsers {
    /// Repairs what a killed earlier run may have left, then writes `passwd`
    /// and `group` (lines in /etc/passwd and /etc/group format) into
    /// /var/lib/extrausers. NSS sees them only once `enable` runs.
    pub fn install(passwd: &str, group: &str) -> ExtraUsers {
        if let Ok(original) = std::fs::read(BACKUP) {
            write_atomically(Path::new(NSSWITCH), &original);
            let _ = std::fs::remove_file(BACKUP);
        }
        std::fs::create_dir_all(EXTRAUSERS).expect("create /var/lib/extrausers");
        let mut saved = Vec::new();
        for (name, contents) in [("passwd", passwd), ("group", group)] {
            let path = Path::new(EXTRAUSERS).join(name);
            saved.push((path.clone(), std::fs::read(&path).ok()));
            write_atomically(&path, contents.as_bytes());
        }
        ExtraUsers {
            saved,
            nsswitch_changed: false,
        }
    }

    /// Add `extrausers` to /etc/nsswitch.conf (a copy of the original kept
    /// at BACKUP until `disable`).
    pub fn enable(&mut self) {
        let original = std::fs::read(NSSWITCH).expect("read /etc/nsswitch.conf");
        write_atomically(Path::new(BACKUP), &original);
        self.nsswitch_changed = true;
        let changed = with_extrausers(&String::from_utf8_lossy(&original));
        write_atomically(Path::new(NSSWITCH), changed.as_bytes());
    }

    /// Put /etc/nsswitch.conf back as it was.
    pub fn disable(&mut self) {
        if !self.nsswitch_changed {
            return;
        }
        if let Ok(original) = std::fs::read(BACKUP) {
            write_atomically(Path::new(NSSWITCH), &original);
            let _ = std::fs::remove_file(BACKUP);
        }
        self.nsswitch_changed = false;
    }
}

impl Drop for ExtraUsers {
    fn drop(&mut self) {
        self.disable();
        for (path, contents) in self.saved.drain(..) {
            match contents {
                Some(bytes) => write_atomically(&path, &bytes),
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
}

/// A user in /etc/passwd for the length of a test (`useradd`, which takes
/// the passwd file's own locks), removed on drop. Its primary group is
/// `nogroup` (65534); it gets no group of its own.
pub struct LocalUser {
    name: String,
}

impl LocalUser {
    pub fn add(name: &str, uid: u32) -> LocalUser {
        let out = Command::new("useradd")
            .args([
                "-M",
                "-N",
                "-g",
                "65534",
                "-d",
                "/nonexistent",
                "-s",
                "/bin/sh",
            ])
            .args(["-u", &uid.to_string(), name])
            .output()
            .expect("run useradd");
        assert!(out.status.success(), "useradd {name}: {out:?}");
        LocalUser {
            name: name.to_string(),
        }
    }
}

impl Drop for LocalUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// `getent DATABASE KEY` through the host's glibc: `None` when not found.
pub fn getent(database: &str, key: &str) -> Option<String> {
    let out = Command::new("getent")
        .args([database, key])
        .output()
        .expect("run getent");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsswitch_gains_extrausers_for_passwd_and_group_only() {
        let original = "# comment passwd: files\npasswd:         files systemd\ngroup:          files\nshadow:         files\nhosts: files dns\n";
        let changed = with_extrausers(original);
        assert_eq!(
            changed,
            "# comment passwd: files\npasswd:         files systemd extrausers\ngroup:          files extrausers\nshadow:         files\nhosts: files dns\n"
        );
        assert_eq!(with_extrausers(&changed), changed, "idempotent");
        assert_eq!(
            with_extrausers("hosts: files\n"),
            "hosts: files\npasswd: files extrausers\ngroup: files extrausers\n"
        );
    }
}
