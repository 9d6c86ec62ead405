//! Every protocol and watchdog duration of a run, in one `Timings` with its
//! shipped values (`Timings::DEFAULT`), and the one test-only way to shorten
//! them (`SP_TEST_TIMINGS`, docs/testing.md).
//!
//! The launcher builds the value once (`launcher::prepare`); the guardian and
//! the daemon are forks of it and get the same value, which they pass to
//! the session, the link and the job's lifecycle. `--check` builds its own.
//! Nothing reads a duration from a global, so a test can run a whole run
//! with short timings and the integration tests import the defaults they
//! depend on (`sp_wrapper::timings::Timings::DEFAULT`) instead of copying them.
//!
//! One stall watchdog: `stall`, output in flight with no ACK progress, in
//! the session. ACKs are the end of the way, so they cover a socket whose
//! writes stopped moving too (no byte reaches the server, no ACK comes); the
//! link's own byte-progress watchdog did the same job and is gone. The link
//! keeps its ping (`ping_after`, `pong_timeout`) for a peer that neither
//! takes bytes nor talks while nothing of ours awaits an ACK
//! (docs/delivery.md, "Reconnects and dead peers").
//!
//! Kept where they are used, as they are no protocol or watchdog durations:
//! polling steps (`run/job.rs`'s `GROUP_RECHECK` and `KILL_REPEAT`, the
//! guardian's `GROUP_RECHECK` and `GROUP_RECHECK_SLOW`), the pacer's control
//! constants (`report/pacing.rs`'s `TARGET_FRAME` and `FLIGHT_TIME`: how
//! big a message is, not when something is given up), the daemon's
//! `PANIC_LOG_WAIT`, and the bounds on the minion's own lookups
//! (`minion::host_names::DNS_BOUND`, `os::nss::NSS_BUDGET`), which run
//! before and apart from the run's reporting.

use std::time::Duration;

use crate::config::ConfigError;

/// The durations a run's processes go by. Every field says its default and
/// why; a test may only shorten them (`from_test_spec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// 5 s: a heartbeat this often (PROTOCOL.md), also while killing and
    /// while delivering after the end, so the server keeps the machine.
    pub heartbeat: Duration,
    /// 5 s: wait this long for `sync_response` before assuming a server
    /// that numbers per socket.
    pub sync_timeout: Duration,
    /// 30 s: output in flight with no ACK progress for this long means the
    /// connection is stuck (a dead peer, a socket whose writes stopped, a
    /// server that reads and does not answer): it is dropped and another
    /// opened. The one stall watchdog (see the module comment). Long enough
    /// for a slow link: an ACK comes per message, and messages follow the
    /// link's speed (`report/pacing.rs`).
    pub stall: Duration,
    /// 40 s: the server waits up to 30 s for the job's state before it
    /// answers `complete`; after this without an answer we reconnect.
    pub complete_timeout: Duration,
    /// 60 s: after the job ends, delivery is tried this long after the later
    /// of the end and the last delivery progress, then given up (the output
    /// goes to the log). Contact alone is no progress (docs/delivery.md).
    pub delivery_window: Duration,
    /// 5 s: per-address TCP connect bound: an unroutable server must not
    /// hold us.
    pub connect_timeout: Duration,
    /// 10 s: bound on the WebSocket handshake (a server that accepts and
    /// says nothing).
    pub handshake_timeout: Duration,
    /// 2 s: between connection attempts (PROTOCOL.md), ±25% jitter so that
    /// thousands of minions do not reconnect in lockstep.
    pub retry_interval: Duration,
    /// 10 s: a connection we drop is still read (its ACKs) this long while
    /// the server takes what we sent before our close frame, and closes
    /// (`run/session.rs`, `reconnect`).
    pub close_drain: Duration,
    /// 15 s: silence (no frame, no byte moving) after which we ping.
    pub ping_after: Duration,
    /// 15 s: silence after a ping after which the server is taken for dead.
    pub pong_timeout: Duration,
    /// 500 ms: how long a finished run waits for the server's close reply.
    pub close_wait: Duration,
    /// 1 s: how long the process waits at exit for the link thread to close
    /// the connection (a close frame, then the server's reply).
    pub link_close_bound: Duration,
    /// 5 s: SIGKILL this long after the SIGTERM of a kill.
    pub kill_grace: Duration,
    /// 5 s: after the job's exit, its output pipes are read this long for
    /// what its children still write.
    pub drain_grace: Duration,
    /// 5 s: the guardian kills what is left of a dead daemon's job this
    /// long before it reports the run with some still alive.
    pub group_wait: Duration,
    /// 25 s: Salt gives the wrapper 30 s; the launcher answers by then even
    /// if the daemon hangs.
    pub report_timeout: Duration,
    /// 5 s: `--check`'s bound on its one exchange with the server.
    pub check_bound: Duration,
}

/// The test-only variable: `name=milliseconds` pairs, comma-separated.
pub const TEST_VARIABLE: &str = "SP_TEST_TIMINGS";

impl Timings {
    /// What ships.
    pub const DEFAULT: Timings = Timings {
        heartbeat: Duration::from_secs(5),
        sync_timeout: Duration::from_secs(5),
        stall: Duration::from_secs(30),
        complete_timeout: Duration::from_secs(40),
        delivery_window: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(10),
        retry_interval: Duration::from_secs(2),
        close_drain: Duration::from_secs(10),
        ping_after: Duration::from_secs(15),
        pong_timeout: Duration::from_secs(15),
        close_wait: Duration::from_millis(500),
        link_close_bound: Duration::from_secs(1),
        kill_grace: Duration::from_secs(5),
        drain_grace: Duration::from_secs(5),
        group_wait: Duration::from_secs(5),
        report_timeout: Duration::from_secs(25),
        check_bound: Duration::from_secs(5),
    };

    /// The names of the fields in `SP_TEST_TIMINGS`, in the order of `fields`.
    const NAMES: [&'static str; 18] = [
        "heartbeat",
        "sync_timeout",
        "stall",
        "complete_timeout",
        "delivery_window",
        "connect_timeout",
        "handshake_timeout",
        "retry_interval",
        "close_drain",
        "ping_after",
        "pong_timeout",
        "close_wait",
        "link_close_bound",
        "kill_grace",
        "drain_grace",
        "group_wait",
        "report_timeout",
        "check_bound",
    ];

    /// Every field, in the order of `NAMES`.
    fn fields(&mut self) -> [&mut Duration; 18] {
        [
            &mut self.heartbeat,
            &mut self.sync_timeout,
            &mut self.stall,
            &mut self.complete_timeout,
            &mut self.delivery_window,
            &mut self.connect_timeout,
            &mut self.handshake_timeout,
            &mut self.retry_interval,
            &mut self.close_drain,
            &mut self.ping_after,
            &mut self.pong_timeout,
            &mut self.close_wait,
            &mut self.link_close_bound,
            &mut self.kill_grace,
            &mut self.drain_grace,
            &mut self.group_wait,
            &mut self.report_timeout,
            &mut self.check_bound,
        ]
    }

    /// The defaults with a test's shorter values (`stall=3000,heartbeat=500`:
    /// milliseconds). Only shorter, and at least 1 ms: a real server never
    /// sees a longer or a zero timing. An error is one line for the user.
    pub fn from_test_spec(spec: &str) -> Result<Timings, ConfigError> {
        let (mut timings, mut shipped) = (Timings::DEFAULT, Timings::DEFAULT);
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let shortened = pair.split_once('=').and_then(|(name, ms)| {
                let index = Self::NAMES.iter().position(|n| *n == name.trim())?;
                let wanted = Duration::from_millis(ms.trim().parse().ok()?);
                (!wanted.is_zero() && wanted <= *shipped.fields()[index]).then_some((index, wanted))
            });
            let Some((index, wanted)) = shortened else {
                return Err(ConfigError {
                    var: TEST_VARIABLE,
                    problem: format!(
                        "{pair:?} is not name=milliseconds with a name of src/timings.rs \
                         and a value from 1 to its default (it can only shorten)"
                    ),
                });
            };
            *timings.fields()[index] = wanted;
        }
        Ok(timings)
    }

    /// This process's timings: the defaults, or a test's (`SP_TEST_TIMINGS`).
    pub fn from_env() -> Result<Timings, ConfigError> {
        match std::env::var_os(TEST_VARIABLE) {
            None => Ok(Timings::DEFAULT),
            Some(spec) => match spec.to_str() {
                Some(spec) => Timings::from_test_spec(spec),
                None => Err(ConfigError {
                    var: TEST_VARIABLE,
                    problem: "not UTF-8".into(),
                }),
            },
        }
    }
}

impl Default for Timings {
    fn default() -> Self {
        Timings::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_spec_shortens_the_named_timings_only() {
        let t = Timings::from_test_spec("stall=3000, delivery_window=2000,retry_interval=1")
            .expect("valid");
        assert_eq!(t.stall, Duration::from_secs(3));
        assert_eq!(t.delivery_window, Duration::from_secs(2));
        assert_eq!(t.retry_interval, Duration::from_millis(1));
        assert_eq!(t.heartbeat, Timings::DEFAULT.heartbeat);
        assert_eq!(Timings::from_test_spec(""), Ok(Timings::DEFAULT));
    }

    #[test]
    fn every_field_has_its_name() {
        // Each field set through its name alone: a name in the wrong place
        // would set another field.
        let mut shipped = Timings::DEFAULT;
        for (index, name) in Timings::NAMES.iter().enumerate() {
            let t = Timings::from_test_spec(&format!("{name}=1")).expect(name);
            let mut t = t;
            for (other, value) in t.fields().into_iter().enumerate() {
                let want = if other == index {
                    Duration::from_millis(1)
                } else {
                    *shipped.fields()[other]
                };
                assert_eq!(*value, want, "{name}");
            }
        }
    }

    #[test]
    fn a_bad_test_spec_is_one_line_naming_the_variable() {
        for spec in [
            "stall",
            "stall=",
            "stall=abc",
            "stall=-1",
            "stall=0",
            "stall=30001",
            "stall=99999999999999999999",
            "nonsense=5",
            "=5",
        ] {
            let error = Timings::from_test_spec(spec).expect_err(spec).to_string();
            assert!(
                error.starts_with("SP_TEST_TIMINGS: ") && !error.contains('\n'),
                "{spec}: {error}"
            );
        }
    }
}
