//! The spin before a sleep, shared by the std drivers that block (the blocking [`Vchan`] and the
//! drop-in libxenvchan): a short poll of the ring, since a peer on another CPU that keeps up
//! answers well within it and sleeping costs a system call on each side.
//!
//! [`Vchan`]: crate::Vchan

use std::time::{Duration, Instant};

/// How long a blocking call polls the ring before it asks the peer for an event and sleeps. A
/// peer on another CPU that is keeping up answers well within this (a ring round trip takes
/// well under a microsecond); one that does not costs us this much CPU before we sleep. Sleeping
/// and waking through the event channel costs tens of microseconds on any backend.
pub const SPIN_BUDGET: Duration = Duration::from_micros(50);

/// Poll `ready` for up to `SPIN_BUDGET` until it has an answer; `None` once the budget is
/// spent, and at once on a machine with one CPU, where the peer cannot make progress while we
/// spin.
pub fn spin_until<T>(ready: impl Fn() -> Option<T>) -> Option<T> {
    static MANY_CPUS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let many =
        *MANY_CPUS.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1));
    if !many {
        return None;
    }
    let started = Instant::now();
    loop {
        for _ in 0..64 {
            if let Some(answer) = ready() {
                return Some(answer);
            }
            for _ in 0..8 {
                std::hint::spin_loop();
            }
        }
        if started.elapsed() >= SPIN_BUDGET {
            return None;
        }
    }
}
