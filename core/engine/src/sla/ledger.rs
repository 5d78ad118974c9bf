//! A record's SLA ledger: what its clocks reached, under which agreement and target, written
//! once per cycle, clock and level and never rewritten. A breach stays a breach when the priority
//! is lowered or the agreement later changes or expires.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use usm_model::RecordId;

use super::{Clock, SlaStatus};

/// One entry of the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LedgerEntry {
    /// The cycle: 1 from creation, one more after each reopen (the response clock is cycle 1).
    pub cycle: u32,
    /// `response` or `resolution`.
    pub clock: String,
    /// `warning`, `breach`, or `stop` (the clock stopped).
    pub level: String,
    /// When the level was reached, from the history, however late it was noticed.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    /// The agreement whose policy was in force.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub agreement: RecordId,
    /// The priority whose target was in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// The target in force, in minutes.
    pub target_minutes: f64,
    /// For `stop`: business minutes the clock had run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_minutes: Option<f64>,
    /// For `stop`: stopped by meeting its goal (an agent's action; a resolution), not a cancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
    /// For `stop`: within the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within_target: Option<bool>,
    /// When the entry was written.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub recorded_at: Timestamp,
}

impl LedgerEntry {
    /// The entry for `level` of the clock named `name` in `status`, when the clock reached it.
    pub fn reached(status: &SlaStatus, name: &str, level: &str, now: Timestamp) -> Option<Self> {
        let clock = status.clock(name)?;
        let at = match level {
            "warning" => clock.warned_at?,
            "breach" => clock.breached_at?,
            "stop" => clock.stopped_at?,
            _ => return None,
        };
        let stop = level == "stop";
        Some(Self {
            cycle: if name == "response" { 1 } else { status.cycle },
            clock: name.to_owned(),
            level: level.to_owned(),
            at,
            agreement: status.policy.clone(),
            priority: status.priority.clone(),
            target_minutes: clock.target_minutes,
            elapsed_minutes: stop.then_some(clock.elapsed_minutes),
            met: stop.then_some(clock.met),
            within_target: stop.then_some(clock.breached_at.is_none()),
            recorded_at: now,
        })
    }
}

impl SlaStatus {
    /// The clock named `response` or `resolution`.
    pub fn clock(&self, name: &str) -> Option<&Clock> {
        match name {
            "response" => self.response.as_ref(),
            "resolution" => self.resolution.as_ref(),
            _ => None,
        }
    }
}
