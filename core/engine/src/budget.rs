//! Time budgets of step calls, shared by every runtime.
//!
//! A step's budget counts the CPU time its own code uses on the calling thread. Time the thread
//! spends waiting for a core, blocked in the store, or inside host calls made for the step is not
//! the step's doing: under load, 32 writers time-slicing two cores or one long flush would
//! otherwise run every step past a wall-clock budget at once and get healthy plugins suspended.
//! A wall-clock backstop, far above the budget, still ends a call that cannot finish; that
//! outcome is [`BudgetCheck::Stalled`], the host's problem rather than the step's.

use std::time::{Duration, Instant};

use rustix::time::{ClockId, clock_gettime};

/// How many times its CPU budget a call may take in wall-clock time before it is stopped as
/// stalled (at least [`MIN_WALL_LIMIT`]).
pub const WALL_FACTOR: u32 = 20;
/// The least wall-clock time any call is given.
pub const MIN_WALL_LIMIT: Duration = Duration::from_secs(1);

/// CPU time the calling thread has used since it started.
pub fn thread_cpu_time() -> Duration {
    let now = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// The budget of one call, started on the thread that runs the call.
#[derive(Debug, Clone)]
pub struct CallBudget {
    cpu_limit: Duration,
    wall_limit: Duration,
    started: Instant,
    started_cpu: Duration,
    /// CPU time of host calls made for the step: the host's work, not the step's.
    excluded: Duration,
}

/// Where a call stands against its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetCheck {
    /// Within budget; at most this much CPU time is left.
    Within(Duration),
    /// The step's own code used up its CPU budget: the step's fault.
    Spent,
    /// The call ran past the wall-clock backstop without spending its CPU budget: the host
    /// stalled (or starved the thread), not the step.
    Stalled,
}

impl CallBudget {
    /// Starts the budget of a call allowed `cpu_limit` of its own CPU time.
    pub fn start(cpu_limit: Duration) -> Self {
        Self {
            cpu_limit,
            wall_limit: wall_limit(cpu_limit),
            started: Instant::now(),
            started_cpu: thread_cpu_time(),
            excluded: Duration::ZERO,
        }
    }

    /// The CPU budget.
    pub fn cpu_limit(&self) -> Duration {
        self.cpu_limit
    }

    /// The wall-clock backstop.
    pub fn wall_limit(&self) -> Duration {
        self.wall_limit
    }

    /// Runs host work for the step (a record read, a query) without charging its CPU time to
    /// the step.
    pub fn exclude<T>(&mut self, host_work: impl FnOnce() -> T) -> T {
        let before = thread_cpu_time();
        let result = host_work();
        self.exclude_since(before);
        result
    }

    /// Stops charging the step for the thread's CPU time since `before` (a reading of
    /// [`thread_cpu_time`] taken when host work for the step began).
    pub fn exclude_since(&mut self, before: Duration) {
        self.excluded += thread_cpu_time().saturating_sub(before);
    }

    /// CPU time the step's own code has used so far.
    pub fn used(&self) -> Duration {
        thread_cpu_time()
            .saturating_sub(self.started_cpu)
            .saturating_sub(self.excluded)
    }

    /// Checks the call against its budget. Cheap while the call is younger than its budget (a
    /// thread cannot use more CPU time than wall-clock time, so the CPU clock is not read).
    pub fn check(&self) -> BudgetCheck {
        let elapsed = self.started.elapsed();
        if elapsed < self.cpu_limit {
            return BudgetCheck::Within(self.cpu_limit - elapsed);
        }
        let used = self.used();
        if used >= self.cpu_limit {
            BudgetCheck::Spent
        } else if elapsed >= self.wall_limit {
            BudgetCheck::Stalled
        } else {
            BudgetCheck::Within(self.cpu_limit - used)
        }
    }
}

/// The wall-clock backstop of a call with `cpu_limit`.
pub fn wall_limit(cpu_limit: Duration) -> Duration {
    cpu_limit.saturating_mul(WALL_FACTOR).max(MIN_WALL_LIMIT)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // time off the CPU is what these tests measure
mod tests {
    use super::*;

    fn spin_cpu(for_how_long: Duration) {
        let until = thread_cpu_time() + for_how_long;
        let mut x = 0u64;
        while thread_cpu_time() < until {
            x = x.wrapping_mul(31).wrapping_add(7);
            std::hint::black_box(x);
        }
    }

    #[test]
    fn sleeping_spends_no_budget_and_running_does() {
        let budget = CallBudget::start(Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            matches!(budget.check(), BudgetCheck::Within(_)),
            "60 ms asleep is three times the wall budget but no CPU: {:?}",
            budget.check()
        );
        spin_cpu(Duration::from_millis(25));
        assert_eq!(budget.check(), BudgetCheck::Spent);
    }

    #[test]
    fn host_work_is_not_charged_to_the_step() {
        let mut budget = CallBudget::start(Duration::from_millis(20));
        budget.exclude(|| spin_cpu(Duration::from_millis(40)));
        assert!(matches!(budget.check(), BudgetCheck::Within(_)));
        assert!(budget.used() < Duration::from_millis(20));
    }

    #[test]
    fn a_call_past_the_wall_backstop_is_stalled_not_spent() {
        let mut budget = CallBudget::start(Duration::from_millis(5));
        budget.wall_limit = Duration::from_millis(30);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(budget.check(), BudgetCheck::Stalled);
    }

    #[test]
    fn the_backstop_is_a_multiple_of_the_budget_with_a_floor() {
        assert_eq!(
            wall_limit(Duration::from_millis(50)),
            Duration::from_secs(1)
        );
        assert_eq!(
            wall_limit(Duration::from_millis(200)),
            Duration::from_secs(4)
        );
    }
}
