//! Keeps what a node holds in memory — tokens, modules, the directory, automations, agreements
//! — in step with the changes other nodes sharing its database make: every half second it
//! compares each area's generation with the last it saw and reloads the areas that moved.
//! Runs only on a shared store; on the embedded store every change is this process's own.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use usm_engine::{Background, Engine};
use usm_store::Store;

/// How often the generations are compared: changes reach the other nodes within about this.
pub const INTERVAL: Duration = Duration::from_millis(500);

/// Reloads one area; the error is logged and the reload tried again at the next change check.
pub type Reload = Box<dyn Fn() -> Result<(), String> + Send>;

/// The thread following the other nodes. Stops when dropped.
pub struct Peers(#[expect(dead_code, reason = "held to keep the thread running")] Background);

struct Area {
    name: &'static str,
    seen: u64,
    reload: Reload,
}

impl Peers {
    /// Starts comparing the generations of `areas` (as of now) every [`INTERVAL`].
    pub fn start(engine: &Arc<Engine>, areas: Vec<(&'static str, Reload)>) -> anyhow::Result<Self> {
        let store = Arc::clone(engine.store());
        let mut watched = Vec::with_capacity(areas.len());
        for (name, reload) in areas {
            let seen = store.generation(name)?;
            watched.push(Area { name, seen, reload });
        }
        let commits = Arc::clone(engine.commits());
        let background = Background::spawn("usm-peers", Arc::clone(&commits), move |stop| {
            while !stop.load(Ordering::SeqCst) {
                follow(store.as_ref(), &mut watched);
                commits.wait_past(u64::MAX, INTERVAL);
            }
        })?;
        Ok(Self(background))
    }
}

fn follow(store: &dyn Store, areas: &mut [Area]) {
    for area in areas {
        let generation = match store.generation(area.name) {
            Ok(generation) => generation,
            Err(error) => {
                tracing::warn!(area = area.name, %error, "cannot read a generation");
                continue;
            }
        };
        if generation == area.seen {
            continue;
        }
        match (area.reload)() {
            Ok(()) => area.seen = generation,
            Err(error) => {
                tracing::error!(area = area.name, %error, "cannot reload what another node changed");
            }
        }
    }
}
