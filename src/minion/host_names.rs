//! The host's names as Salt's `generate_minion_id()` sees them:
//! `gethostname`, Python's `socket.getfqdn()` (forward, then reverse
//! lookups, bounded to `DNS_BOUND`), the host files, the IPv4 addresses.

use std::ffi::{CStr, CString};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use super::salt_config::{MAX_CONFIG_BYTES, python_space, python_strip, read_regular_file};
use crate::os::threads::SpawnDetached;

/// The host-name lookups (getfqdn's forward and reverse lookups, the
/// canonical name of `localhost`) together: the server waits 30 s for the
/// first frame, and a resolver that never answers would take longer than
/// that (resolv.conf's timeout times its attempts, per query).
pub const DNS_BOUND: Duration = Duration::from_secs(5);

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
        let (results, answers) = crate::os::oneshot::oneshot();
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
impl HostFacts {
    /// A host known only by these two names (no files, no addresses).
    pub(super) fn named(fqdn: &str, hostname: &str) -> HostFacts {
        HostFacts {
            hostname: hostname.into(),
            fqdn: fqdn.into(),
            ..HostFacts::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_id_order_and_filters() {
        let mut facts = HostFacts::named("localhost", "localhost");
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
        assert_eq!(generate(&HostFacts::named("ip6-x", "real")), "real");
        assert!(is_localhost_name("127.0.1.1"));
        assert!(!is_localhost_name("127.x"));
        assert!(is_localhost_name("1.0.0.0.0.ip6.arpa"));
        assert!(is_localhost_name("1x0y0zzzip6xarpa"));
        assert!(!is_localhost_name("1x0y0zzipv6xarpa"));
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
