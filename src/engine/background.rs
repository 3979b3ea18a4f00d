//! CPU priority for background work. An archive moves millions of rows on the machine that
//! serves downloads: at normal priority the data plane's requests wait for a core (serve's
//! p99 under 2,000 req/s rose by 6 ms during an archive, paced or not). Under Linux's `SCHED_IDLE` policy a thread runs only when no other
//! thread wants the core, so the archive takes what the data plane leaves.
//!
//! A thread cannot always go back: without `CAP_SYS_NICE` and with the default
//! `RLIMIT_NICE`, Linux refuses to leave `SCHED_IDLE`. So only threads that end with the work
//! (or a whole one-shot process) are lowered, never a pooled thread.

/// Lowers the calling thread, and every thread it starts from now on, to `SCHED_IDLE`.
/// Returns whether it took (always false off Linux).
pub fn lower_to_idle() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a plain system call on the calling thread (pid 0) with a valid parameter.
        let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        r == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the calling thread runs under `SCHED_IDLE`.
    fn is_idle() -> bool {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: reads the calling thread's policy.
            unsafe { libc::sched_getscheduler(0) == libc::SCHED_IDLE }
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }

    #[test]
    fn a_thread_of_its_own_is_lowered_and_the_caller_is_not() {
        let lowered = std::thread::spawn(|| (lower_to_idle(), is_idle()))
            .join()
            .expect("thread");
        if cfg!(target_os = "linux") {
            assert_eq!(lowered, (true, true));
        }
        assert!(!is_idle(), "the test's own thread stays as it was");
    }
}
