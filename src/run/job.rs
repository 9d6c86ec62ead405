//! The job's lifecycle, as the supervisor thread tracks it: which output
//! pipes are still open, the main process's exit, the timeout, the kill
//! escalation (SIGTERM, then SIGKILL repeated until the group is gone), and
//! the result code. It decides when the job is finished and with what code.
//!
//! Plain state with no threads and no clock: the supervisor passes `now` and a
//! `group` function that signals the job's process group (`false`: no process
//! is left in it). Every deadline it owns is listed once, in `deadlines`, from
//! which both `next_deadline` and `on_time` are derived.

use std::time::{Duration, Instant, SystemTime};

use crate::exit_codes::{self, KillReason};
use crate::messages::Stream;
use crate::timings::Timings;

/// After a killed job's main process is gone, how often to look whether the
/// rest of its group is gone too (zombies still count as members until
/// reaped; on kernels without subreaper init reaps them and tells us nothing).
const GROUP_RECHECK: Duration = Duration::from_millis(50);
/// How often SIGKILL is repeated until the group is gone (only while killing).
const KILL_REPEAT: Duration = Duration::from_millis(100);

/// The job's result, once its main process is gone and its output drained.
#[derive(Clone, Copy, Debug)]
pub struct Finished {
    pub retcode: i32,
    pub at: Instant,
    /// When the main process exited: `complete.timestamp`.
    pub exited_at: SystemTime,
}

struct Kill {
    reason: KillReason,
    next_signal: Instant,
    group_gone: bool,
    /// Set while the job's main process is gone but its group is not.
    recheck: Option<Instant>,
}

/// The main process's exit, as the waiter reported it.
#[derive(Clone, Copy)]
struct Exit {
    status: i32,
    at: Instant,
    wall: SystemTime,
}

/// What a call changed, for the supervisor to pass on to the session.
#[derive(Debug, Default)]
pub struct JobChange {
    /// A kill began: this marker goes into the output, in this stream.
    pub kill_marker: Option<(Stream, String)>,
    /// The job is finished, with this result.
    pub finished: Option<Finished>,
}

/// The deadlines the job owns.
#[derive(Clone, Copy, Debug)]
enum Deadline {
    Timeout,
    KillSignal,
    GroupRecheck,
    Drained,
}

pub struct JobLifecycle {
    timeout: Option<Duration>,
    /// One pipe carries both streams (`SP_OUTPUT=merged`).
    merged_output: bool,
    timeout_at: Option<Instant>,
    streams_open: [bool; 2],
    exit: Option<Exit>,
    kill: Option<Kill>,
    finished: Option<Finished>,
    /// SIGTERM, then this long, then SIGKILL (`Timings::kill_grace`).
    kill_grace: Duration,
    /// After the main process exits, how long a background process may keep
    /// the output pipes open before we finish without the rest
    /// (`Timings::drain_grace`).
    drain_grace: Duration,
}

impl JobLifecycle {
    /// `merged_output`: one pipe carries both streams, so only stdout is
    /// waited for.
    pub fn new(
        timeout: Option<Duration>,
        merged_output: bool,
        timings: &Timings,
        started: Instant,
    ) -> Self {
        JobLifecycle {
            timeout,
            merged_output,
            timeout_at: timeout.map(|t| started + t),
            streams_open: [true, !merged_output],
            exit: None,
            kill: None,
            finished: None,
            kill_grace: timings.kill_grace,
            drain_grace: timings.drain_grace,
        }
    }

    /// A job that finished before this process took charge of its report
    /// (the guardian's): nothing to wait for, nothing to kill.
    pub fn ended(finished: Finished) -> Self {
        JobLifecycle {
            timeout: None,
            merged_output: true,
            timeout_at: None,
            streams_open: [false, false],
            exit: None,
            kill: None,
            finished: Some(finished),
            kill_grace: Timings::DEFAULT.kill_grace,
            drain_grace: Timings::DEFAULT.drain_grace,
        }
    }

    pub fn finished(&self) -> Option<Finished> {
        self.finished
    }

    /// Is a kill under way or the job finished (a new kill would do nothing)?
    pub fn beyond_kill(&self) -> bool {
        self.kill.is_some() || self.finished.is_some()
    }

    pub fn on_stream_closed(
        &mut self,
        stream: Stream,
        now: Instant,
        group: &mut dyn FnMut(i32) -> bool,
    ) -> JobChange {
        self.streams_open[stream.index()] = false;
        self.check_finished(now, group)
    }

    pub fn on_exit(
        &mut self,
        status: i32,
        wall: SystemTime,
        now: Instant,
        group: &mut dyn FnMut(i32) -> bool,
    ) -> JobChange {
        self.exit = Some(Exit {
            status,
            at: now,
            wall,
        });
        self.check_finished(now, group)
    }

    /// An orphan of the job was reaped: it may have been the group's last.
    pub fn on_reaped(&mut self, now: Instant, group: &mut dyn FnMut(i32) -> bool) -> JobChange {
        self.check_finished(now, group)
    }

    /// SIGTERM to the group, SIGKILL `kill_grace` later. Repeated kills count
    /// once; a finished job has nothing to kill.
    pub fn kill(
        &mut self,
        reason: KillReason,
        now: Instant,
        group: &mut dyn FnMut(i32) -> bool,
    ) -> JobChange {
        if self.beyond_kill() {
            return JobChange::default();
        }
        let marker = match reason {
            KillReason::Timeout => {
                let secs = crate::config::format_seconds(self.timeout.unwrap_or_default());
                log::warn!("job exceeded its timeout of {secs} s: SIGTERM to its process group");
                format!("\n[Job exceeded timeout of {secs} seconds]\n")
            }
            KillReason::Request => {
                log::info!("SIGTERM to the job's process group");
                "\n[Job terminated by user request]\n".to_string()
            }
        };
        // Told before the signal: a daemon that dies from here on leaves the
        // guardian knowing the retcode is 124 or 143, however the job ends.
        crate::to_guardian::kill_started(reason);
        let alive = group(libc::SIGTERM);
        self.kill = Some(Kill {
            reason,
            next_signal: now + self.kill_grace,
            group_gone: !alive,
            recheck: None,
        });
        // Merged output is all labelled stdout; separate streams put our
        // notes where the job's errors go.
        let stream = if self.merged_output {
            Stream::Stdout
        } else {
            Stream::Stderr
        };
        JobChange {
            kill_marker: Some((stream, marker)),
            finished: None,
        }
    }

    /// Every deadline the job has now, each once.
    fn deadlines(&self) -> impl Iterator<Item = (Deadline, Instant)> {
        let kill = self.kill.as_ref();
        let drained = match (self.finished, self.exit) {
            (None, Some(exit)) => Some(exit.at + self.drain_grace),
            _ => None,
        };
        [
            (Deadline::Timeout, self.timeout_at),
            (
                Deadline::KillSignal,
                kill.filter(|k| !k.group_gone).map(|k| k.next_signal),
            ),
            (Deadline::GroupRecheck, kill.and_then(|k| k.recheck)),
            (Deadline::Drained, drained),
        ]
        .into_iter()
        .filter_map(|(deadline, at)| Some((deadline, at?)))
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines().map(|(_, at)| at).min()
    }

    /// Fire every deadline that is due.
    pub fn on_time(&mut self, now: Instant, group: &mut dyn FnMut(i32) -> bool) -> JobChange {
        let due: Vec<Deadline> = self
            .deadlines()
            .filter(|(_, at)| now >= *at)
            .map(|(deadline, _)| deadline)
            .collect();
        let mut change = JobChange::default();
        for deadline in due {
            let step = match deadline {
                Deadline::Timeout => {
                    self.timeout_at = None;
                    self.kill(KillReason::Timeout, now, group)
                }
                Deadline::KillSignal => {
                    let Some(kill) = self.kill.as_mut() else {
                        continue;
                    };
                    let alive = group(libc::SIGKILL);
                    kill.group_gone = !alive;
                    kill.next_signal = now + KILL_REPEAT;
                    if alive {
                        log::debug!("SIGKILL to the job's process group");
                    }
                    self.check_finished(now, group)
                }
                Deadline::GroupRecheck => {
                    if let Some(kill) = self.kill.as_mut() {
                        kill.recheck = None;
                    }
                    self.check_finished(now, group)
                }
                Deadline::Drained => self.check_finished(now, group),
            };
            change.kill_marker = change.kill_marker.or(step.kill_marker);
            change.finished = change.finished.or(step.finished);
        }
        change
    }

    /// The job is finished when its main process has exited, its output is
    /// drained (or `drain_grace` has passed), and, if we killed it, no
    /// process of its group is left.
    fn check_finished(&mut self, now: Instant, group: &mut dyn FnMut(i32) -> bool) -> JobChange {
        let unchanged = JobChange::default();
        if self.finished.is_some() {
            return unchanged;
        }
        let Some(exit) = self.exit else {
            return unchanged;
        };
        let all_closed = self.streams_open == [false, false];
        if !all_closed && now < exit.at + self.drain_grace {
            return unchanged;
        }
        if !all_closed {
            log::warn!(
                "job output still open {} s after its main process exited; completing without the rest",
                self.drain_grace.as_secs()
            );
        }
        if let Some(kill) = self.kill.as_mut() {
            if !kill.group_gone {
                if group(0) {
                    // Processes (or unreaped zombies) remain: look again soon;
                    // the kill timer finishes any that ignore SIGTERM.
                    kill.recheck = Some(now + GROUP_RECHECK);
                    return unchanged;
                }
                kill.group_gone = true;
            }
        }
        // (Logged by the supervisor, once the guardian has been told.)
        let retcode = exit_codes::job_retcode(exit.status, self.kill.as_ref().map(|k| k.reason));
        let finished = Finished {
            retcode,
            at: now,
            exited_at: exit.wall,
        };
        self.finished = Some(finished);
        JobChange {
            kill_marker: None,
            finished: Some(finished),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::effects::Effects;
    use crate::run::effects::fake::FakeEffects;

    fn exited(code: i32) -> i32 {
        code << 8
    }

    fn job(timeout: Option<Duration>, merged_output: bool, t0: Instant) -> JobLifecycle {
        JobLifecycle::new(timeout, merged_output, &Timings::DEFAULT, t0)
    }

    #[test]
    fn finished_once_the_main_process_exited_and_every_pipe_closed() {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut group = FakeEffects::new();
        let mut job = job(None, false, t0);
        let mut g = |s| group.signal_group(s);
        assert!(job.on_exit(exited(3), wall, t0, &mut g).finished.is_none());
        assert!(
            job.on_stream_closed(Stream::Stdout, t0, &mut g)
                .finished
                .is_none()
        );
        let change = job.on_stream_closed(Stream::Stderr, t0, &mut g);
        let finished = change.finished.expect("finished");
        assert_eq!((finished.retcode, finished.exited_at), (3, wall));
        assert!(job.beyond_kill(), "a finished job has nothing to kill");
        assert!(
            job.kill(KillReason::Request, t0, &mut g)
                .kill_marker
                .is_none()
        );
        assert!(group.signals.is_empty());
    }

    #[test]
    fn merged_output_waits_for_its_one_pipe() {
        let t0 = Instant::now();
        let mut group = FakeEffects::new();
        let mut job = job(None, true, t0);
        let mut g = |s| group.signal_group(s);
        assert!(
            job.on_stream_closed(Stream::Stdout, t0, &mut g)
                .finished
                .is_none()
        );
        let change = job.on_exit(exited(0), SystemTime::now(), t0, &mut g);
        assert_eq!(change.finished.map(|f| f.retcode), Some(0));
    }

    #[test]
    fn a_background_process_holding_the_output_open_is_waited_for_drain_grace_only() {
        let t0 = Instant::now();
        let grace = Timings::DEFAULT.drain_grace;
        let mut group = FakeEffects::new();
        let mut job = job(None, false, t0);
        let mut g = |s| group.signal_group(s);
        job.on_exit(exited(0), SystemTime::now(), t0, &mut g);
        assert_eq!(job.next_deadline(), Some(t0 + grace));
        let early = t0 + grace - Duration::from_millis(1);
        assert!(job.on_time(early, &mut g).finished.is_none());
        assert_eq!(
            job.on_time(t0 + grace, &mut g).finished.map(|f| f.retcode),
            Some(0)
        );
        assert!(group.signals.is_empty(), "draining kills nothing");
    }

    #[test]
    fn a_timeout_sends_sigterm_then_sigkill_after_the_grace_and_gives_124() {
        let t0 = Instant::now();
        let grace = Timings::DEFAULT.kill_grace;
        let timeout = Duration::from_secs(2);
        let mut group = FakeEffects::new();
        let mut job = job(Some(timeout), false, t0);
        let mut g = |s| group.signal_group(s);
        assert_eq!(job.next_deadline(), Some(t0 + timeout));
        let change = job.on_time(t0 + timeout, &mut g);
        assert_eq!(
            change.kill_marker,
            Some((
                Stream::Stderr,
                "\n[Job exceeded timeout of 2 seconds]\n".into()
            ))
        );
        // The job traps SIGTERM and exits 0: still cut short, 124.
        job.on_exit(exited(0), SystemTime::now(), t0 + timeout, &mut g);
        job.on_stream_closed(Stream::Stdout, t0 + timeout, &mut g);
        let change = job.on_stream_closed(Stream::Stderr, t0 + timeout, &mut g);
        assert!(change.finished.is_none(), "its group is still alive");
        let change = job.on_time(t0 + timeout + grace, &mut g);
        assert_eq!(
            change.finished.map(|f| f.retcode),
            Some(exit_codes::TIMEOUT)
        );
        assert_eq!(group.signals, [libc::SIGTERM, libc::SIGKILL]);
    }

    #[test]
    fn a_killed_job_is_finished_when_its_group_is_gone_and_kills_count_once() {
        let t0 = Instant::now();
        let mut group = FakeEffects::new();
        let mut job = job(None, true, t0);
        {
            let mut g = |s| group.signal_group(s);
            let first = job.kill(KillReason::Request, t0, &mut g);
            assert_eq!(
                first.kill_marker,
                Some((
                    Stream::Stdout,
                    "\n[Job terminated by user request]\n".into()
                ))
            );
            for _ in 0..3 {
                assert!(
                    job.kill(KillReason::Request, t0, &mut g)
                        .kill_marker
                        .is_none()
                );
            }
            job.on_exit(libc::SIGTERM, SystemTime::now(), t0, &mut g);
            let change = job.on_stream_closed(Stream::Stdout, t0, &mut g);
            assert!(change.finished.is_none(), "an orphan is left in the group");
        }
        assert_eq!(group.signals, [libc::SIGTERM]);
        // The orphan exits on its own: the next look finds the group empty.
        group.group_alive = false;
        let recheck = job.next_deadline().expect("a look at the group");
        assert!(recheck < t0 + Timings::DEFAULT.kill_grace, "{recheck:?}");
        let change = job.on_time(recheck, &mut |s| group.signal_group(s));
        assert_eq!(
            change.finished.map(|f| f.retcode),
            Some(exit_codes::KILLED_BY_REQUEST)
        );
        assert_eq!(
            group.signals,
            [libc::SIGTERM],
            "no SIGKILL for an empty group"
        );
    }
}
