//! The one way usm runs a background loop: a named thread with a stop flag, woken by commits,
//! stopped and joined when its handle is stopped or dropped.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use crate::CommitSignal;

/// A running background thread. Stops (after the work in hand) when stopped or dropped.
pub struct Background {
    name: &'static str,
    stop: Arc<AtomicBool>,
    commits: Arc<CommitSignal>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Runs `body` on a thread called `name`; `body` returns once the flag it gets is set.
    /// Stopping also notifies `commits`, so a body waiting for the next commit wakes up.
    pub fn spawn(
        name: &'static str,
        commits: Arc<CommitSignal>,
        body: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || body(stop))?
        };
        Ok(Self {
            name,
            stop,
            commits,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.commits.notify();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(thread = self.name, "a background thread panicked");
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.shut_down();
    }
}
