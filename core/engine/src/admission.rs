//! Admission control for pipelines: at most as many writes run their steps at once as the
//! machine has cores; the rest wait in a bounded queue, and past it or past the wait they are
//! turned away as overloaded (the API answers `503` with `Retry-After`).
//!
//! Letting every request into the pipeline at once does not make the cores faster: 64 writers
//! time-slicing two cores each take 32 times longer per step, so latencies grow for everyone and
//! nothing is gained. Waiting before the pipeline keeps a step's run short and its latency
//! predictable, and a full queue says "come back later" instead of failing a write half-way.

use std::{
    sync::{Condvar, Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::EngineError;

/// How many writes may run their pipelines at once and how many may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Writes running their before-steps at once; the number of cores by default.
    pub max_running: usize,
    /// Writes waiting for a turn; more are refused at once.
    pub max_waiting: usize,
    /// Longest a write waits for its turn before it is refused.
    pub max_wait: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_running: std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
            max_waiting: 1024,
            max_wait: Duration::from_secs(2),
        }
    }
}

/// Seconds a refused client is told to wait before retrying.
const RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug, Default)]
struct Counts {
    running: usize,
    waiting: usize,
}

/// The gate in front of the pipelines.
#[derive(Debug)]
pub(crate) struct Admission {
    config: AdmissionConfig,
    counts: Mutex<Counts>,
    freed: Condvar,
}

/// A turn to run a pipeline; the next waiting write goes when it is dropped.
#[derive(Debug)]
pub(crate) struct Turn<'a>(&'a Admission);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut counts = self.0.lock();
        counts.running -= 1;
        drop(counts);
        self.0.freed.notify_one();
    }
}

impl Admission {
    pub(crate) fn new(config: AdmissionConfig) -> Self {
        Self {
            config: AdmissionConfig {
                max_running: config.max_running.max(1),
                ..config
            },
            counts: Mutex::new(Counts::default()),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a turn, or refuses the write as overloaded.
    pub(crate) fn enter(&self) -> Result<Turn<'_>, EngineError> {
        let mut counts = self.lock();
        if counts.running < self.config.max_running {
            counts.running += 1;
            return Ok(Turn(self));
        }
        if counts.waiting >= self.config.max_waiting {
            return Err(overloaded(format!(
                "{} writes are already waiting for a turn",
                counts.waiting
            )));
        }
        counts.waiting += 1;
        let deadline = Instant::now() + self.config.max_wait;
        loop {
            let now = Instant::now();
            if now >= deadline {
                counts.waiting -= 1;
                return Err(overloaded(format!(
                    "no turn to run the pipeline within {} ms",
                    self.config.max_wait.as_millis()
                )));
            }
            counts = self
                .freed
                .wait_timeout(counts, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            if counts.running < self.config.max_running {
                counts.waiting -= 1;
                counts.running += 1;
                return Ok(Turn(self));
            }
        }
    }

    /// Writes running and waiting now.
    pub(crate) fn load(&self) -> (usize, usize) {
        let counts = self.lock();
        (counts.running, counts.waiting)
    }
}

fn overloaded(reason: String) -> EngineError {
    EngineError::Overloaded {
        reason,
        retry_after_secs: RETRY_AFTER_SECS,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;

    fn gate(max_running: usize, max_waiting: usize, max_wait: Duration) -> Arc<Admission> {
        Arc::new(Admission::new(AdmissionConfig {
            max_running,
            max_waiting,
            max_wait,
        }))
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_a_freed_turn_admits_the_next() {
        let admission = gate(1, 1, Duration::from_secs(30));
        let first = admission.enter().unwrap();
        let waiter = {
            let admission = Arc::clone(&admission);
            std::thread::spawn(move || admission.enter().map(|_| ()).is_ok())
        };
        while admission.load().1 == 0 {
            std::thread::yield_now();
        }
        let refused = admission.enter().unwrap_err();
        assert!(
            matches!(refused, EngineError::Overloaded { .. }),
            "{refused:?}"
        );
        drop(first);
        assert!(waiter.join().unwrap(), "the waiting write got its turn");
        assert_eq!(admission.load(), (0, 0));
    }

    #[test]
    fn a_wait_past_the_limit_is_refused() {
        let admission = gate(1, 8, Duration::from_millis(20));
        let _held = admission.enter().unwrap();
        let error = admission.enter().unwrap_err();
        assert_eq!(error.code(), usm_model::ErrorCode::Overloaded);
        assert_eq!(admission.load(), (1, 0));
    }

    #[test]
    fn never_more_than_max_running_at_once() {
        let admission = gate(2, 64, Duration::from_secs(30));
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (admission, running, peak, start) = (
                    Arc::clone(&admission),
                    Arc::clone(&running),
                    Arc::clone(&peak),
                    Arc::clone(&start),
                );
                std::thread::spawn(move || {
                    start.wait();
                    for _ in 0..50 {
                        let _turn = admission.enter().unwrap();
                        let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                        std::thread::yield_now();
                        running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
        assert!((1..=2).contains(&peak), "{peak} writes ran at once");
    }
}
