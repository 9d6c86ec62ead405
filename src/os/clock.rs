//! The wall clock, read the same way on every target, including after 2038
//! on 32-bit ones. Called from any thread; pure apart from the clock read.
//!
//! Why not `SystemTime::now()`: Rust's prebuilt std for the 32-bit musl
//! targets (i686, armv7) is built against the libc crate's 32-bit `time_t`,
//! so it calls musl's time32 compatibility `clock_gettime`, which fails with
//! EOVERFLOW from 2038-01-19T03:14:08Z, and std then panics. musl 1.2 itself
//! has a 64-bit `time_t` and exports the 64-bit call as `__clock_gettime64`
//! (it uses the vDSO, then the `clock_gettime64` system call, then falls back
//! to the old one on kernels before 5.1). On 32-bit musl we call that.
//! 64-bit targets already have a 64-bit `time_t` and use std.

use std::time::SystemTime;

/// Now, as a `SystemTime`. Never panics: a failed clock read (which the
/// kernel documents only for bad arguments) gives the epoch, which the
/// server still parses, rather than killing the job's agent.
#[cfg(not(all(target_env = "musl", target_pointer_width = "32")))]
pub fn now() -> SystemTime {
    SystemTime::now()
}

#[cfg(all(target_env = "musl", target_pointer_width = "32"))]
pub fn now() -> SystemTime {
    use std::time::{Duration, UNIX_EPOCH};

    /// musl 1.2's `struct timespec` on a 32-bit little-endian target: a
    /// 64-bit `tv_sec`, a 32-bit `tv_nsec`, then padding (16 bytes).
    #[repr(C)]
    struct Timespec64 {
        tv_sec: i64,
        tv_nsec: i32,
        padding: i32,
    }

    unsafe extern "C" {
        // musl >= 1.2.0, in the libc.a every 32-bit musl target links.
        fn __clock_gettime64(clock: libc::clockid_t, ts: *mut Timespec64) -> libc::c_int;
    }

    let mut ts = Timespec64 {
        tv_sec: 0,
        tv_nsec: 0,
        padding: 0,
    };
    // SAFETY: `ts` is a valid, writable struct of the layout musl expects.
    if unsafe { __clock_gettime64(libc::CLOCK_REALTIME, &mut ts) } != 0 {
        return UNIX_EPOCH;
    }
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0).min(999_999_999);
    match u64::try_from(ts.tv_sec) {
        Ok(secs) => UNIX_EPOCH + Duration::new(secs, nanos),
        // Before 1970: a badly set clock; say so as the epoch, as above.
        Err(_) => UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// On 32-bit targets this runs the musl call above: its answer must
    /// agree with the kernel's own clock, read by a raw system call.
    #[test]
    fn now_agrees_with_the_kernel_clock() {
        let ours = now().duration_since(UNIX_EPOCH).expect("after 1970");
        // time(2) needs no struct layout; good until 2038, like this test.
        #[allow(deprecated)] // libc's 32-bit musl `time_t`, the very thing avoided above
        let kernel = unsafe { libc::time(std::ptr::null_mut()) } as i64;
        assert!(kernel > 1_700_000_000, "the kernel clock reads {kernel}");
        let gap = (ours.as_secs() as i64 - kernel).abs();
        assert!(gap <= 2, "ours {ours:?}, kernel {kernel}");
        assert!(ours > Duration::from_secs(1_700_000_000));
    }
}
