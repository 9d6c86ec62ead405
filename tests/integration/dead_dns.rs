//! Dead DNS (issue 18, item 4): with no id configured or cached, the agent
//! generates the minion id from the host's names, which asks the resolver
//! (Python's getfqdn). A resolver that never answers must not make the
//! record miss the server's 30 s window: the lookups are bounded (5 s in
//! all, `minion::host_names::DNS_BOUND`) and the id is then what Salt's getfqdn
//! gives when its lookups fail, the host name.
//!
//! The agent runs in its own mount and UTS namespaces (`unshare`, so root):
//! a host name that /etc/hosts does not know, and a resolv.conf whose only
//! nameserver is a loopback address where this test holds a UDP socket that
//! never answers (so no ICMP "port unreachable" either), with a 30 s timeout.
//! Without the bound the first frame would come after 30 s at least.

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use sp_wrapper::minion::host_names::DNS_BOUND;

use crate::common::*;

/// The namespace's set-up: our resolv.conf and hosts over the host's, our
/// host name; then the agent.
const SETUP: &str = r#"set -e
mount --bind "$1/resolv.conf" /etc/resolv.conf
mount --bind "$1/hosts" /etc/hosts
hostname "$2"
shift 2
exec "$@"
"#;

/// The bound (5 s) plus the launch, the connection and a loaded machine.
const START_WITHIN: Duration = Duration::from_secs(15);

#[test]
#[ignore = "needs root and unshare (mount and UTS namespaces): run as root with --include-ignored (./build.sh test does)"]
fn a_resolver_that_never_answers_does_not_delay_the_record() {
    let dir = TestDir::new("dead_dns");
    // A silent nameserver: a bound UDP socket nobody reads, on a loopback
    // address of its own (port 53 is the only port resolv.conf can name).
    let pid = std::process::id();
    let address = format!("127.{}.{}.53", 100 + pid % 100, (pid / 100) % 250 + 1);
    let silent = UdpSocket::bind(format!("{address}:53")).expect("bind the silent nameserver");
    std::fs::write(
        dir.join("resolv.conf"),
        format!("nameserver {address}\noptions timeout:30 attempts:2\n"),
    )
    .expect("resolv.conf");
    std::fs::write(dir.join("hosts"), "127.0.0.1 localhost\n").expect("hosts");
    // No configured id and no cache: the id must be generated.
    std::fs::create_dir_all(dir.join("salt")).expect("salt dir");
    std::fs::write(dir.join("salt/minion"), "minion_id_caching: False\n").expect("minion");
    let host = format!("sp-dead-dns-{pid}");

    let mut server = Harness::start(&dir);
    let instance = "dead_dns_1";
    server.add_job("dead_dns", instance, &[&host]);
    let launch = Launch::new(&server.url(), "dead_dns", instance, "echo resolved", &dir)
        .unset("SP_MACHINE_ID")
        .env("SALT_CONFIG_DIR", dir.join("salt").to_str().expect("utf-8"));
    let mut command = Command::new("unshare");
    command.args([
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        SETUP,
        "sh",
    ]);
    command.arg(&dir.path).arg(&host);
    let inner = launch.command();
    command.arg(inner.get_program()).args(inner.get_args());
    command.env_clear().stdin(std::process::Stdio::null());
    for (key, value) in inner.get_envs() {
        if let Some(value) = value {
            command.env(key, value);
        }
    }
    let started = Instant::now();
    let launched = Launch::run_command(command).expect_started();
    assert!(
        wait_until(START_WITHIN, || server.result("dead_dns", &host).starts
            >= 1),
        "no start from machine {host:?} within {START_WITHIN:?} (launch: {launched:?}); log:\n{}",
        log_text(&dir, "dead_dns")
    );
    let took = started.elapsed();
    let result = server
        .wait_result("dead_dns", &host, Duration::from_secs(20))
        .unwrap_or_else(|partial| panic!("no result: {partial:?}"));
    assert_eq!(result.retcode, Some(0), "{result:?}");
    assert_same(&result.ret, "resolved\n", "output");
    let log = log_text(&dir, "dead_dns");
    assert!(
        log.contains(&format!("did not answer within {} s", DNS_BOUND.as_secs())),
        "the log does not say the lookups were cut short:\n{log}"
    );
    // The bound, not a fast failure, made it quick: the resolver was asked.
    assert!(
        took >= DNS_BOUND,
        "start after {took:?}: the silent nameserver was not consulted"
    );
    let mut buffer = [0u8; 512];
    silent.set_nonblocking(true).expect("nonblocking");
    assert!(
        silent.recv_from(&mut buffer).is_ok(),
        "no query reached the silent nameserver"
    );
}
