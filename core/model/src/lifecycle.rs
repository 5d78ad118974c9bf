use serde::{Deserialize, Serialize};

use crate::{Actor, Role, State};

/// Where a state sits in a record's life; SLAs and "is it still open?" checks read this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum StateCategory {
    /// The state a new record starts in; exactly one per lifecycle.
    Initial,
    /// Work is going on or waiting.
    Active,
    /// The record is finished (closed, cancelled, retired).
    Inactive,
}

/// One state of a lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StateDef {
    /// The state's name.
    pub name: State,
    /// Its category.
    pub category: StateCategory,
}

/// An allowed move between two states and who may make it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TransitionDef {
    /// The state the record is in.
    pub from: State,
    /// The state it moves to.
    pub to: State,
    /// Roles that may take the transition; `admin` always may.
    pub roles: Vec<Role>,
}

/// Why a lifecycle is malformed or a transition refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// The lifecycle does not have exactly one initial state.
    #[error("a lifecycle needs exactly one initial state, found {0}")]
    InitialStates(usize),
    /// A state is declared twice.
    #[error("state {0} is declared twice")]
    DuplicateState(State),
    /// A transition names an undeclared state.
    #[error("transition {from} -> {to} names an undeclared state")]
    UndeclaredState {
        /// Source state.
        from: State,
        /// Target state.
        to: State,
    },
    /// The state does not exist in the lifecycle.
    #[error("{0} is not a state of this lifecycle")]
    UnknownState(State),
    /// No transition leads from `from` to `to`.
    #[error("no transition from {from} to {to}")]
    Illegal {
        /// Current state.
        from: State,
        /// Requested state.
        to: State,
        /// States reachable from `from`.
        allowed: Vec<State>,
    },
    /// The transition exists but the actor's roles may not take it.
    #[error("the transition from {from} to {to} needs one of the roles {roles:?}")]
    Forbidden {
        /// Current state.
        from: State,
        /// Requested state.
        to: State,
        /// Roles that may take it.
        roles: Vec<Role>,
    },
}

/// The serialised shape of a lifecycle, before validation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LifecycleSpec {
    states: Vec<StateDef>,
    transitions: Vec<TransitionDef>,
}

/// A per-kind state machine; always well formed (see [`Lifecycle::new`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LifecycleSpec")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Lifecycle {
    states: Vec<StateDef>,
    transitions: Vec<TransitionDef>,
    #[serde(skip)]
    initial: usize,
}

impl TryFrom<LifecycleSpec> for Lifecycle {
    type Error = LifecycleError;
    fn try_from(spec: LifecycleSpec) -> Result<Self, LifecycleError> {
        Self::new(spec.states, spec.transitions)
    }
}

impl Lifecycle {
    /// Builds a lifecycle, checking unique states, exactly one initial state and transitions
    /// between declared states.
    pub fn new(
        states: Vec<StateDef>,
        transitions: Vec<TransitionDef>,
    ) -> Result<Self, LifecycleError> {
        let initials: Vec<usize> = states
            .iter()
            .enumerate()
            .filter(|(_, s)| s.category == StateCategory::Initial)
            .map(|(i, _)| i)
            .collect();
        let [initial] = initials[..] else {
            return Err(LifecycleError::InitialStates(initials.len()));
        };
        for (i, state) in states.iter().enumerate() {
            if states[..i].iter().any(|s| s.name == state.name) {
                return Err(LifecycleError::DuplicateState(state.name.clone()));
            }
        }
        let declared = |name: &State| states.iter().any(|s| &s.name == name);
        if let Some(t) = transitions
            .iter()
            .find(|t| !declared(&t.from) || !declared(&t.to))
        {
            return Err(LifecycleError::UndeclaredState {
                from: t.from.clone(),
                to: t.to.clone(),
            });
        }
        Ok(Self {
            states,
            transitions,
            initial,
        })
    }

    /// The states, in display order.
    pub fn states(&self) -> &[StateDef] {
        &self.states
    }

    /// The allowed transitions.
    pub fn transitions(&self) -> &[TransitionDef] {
        &self.transitions
    }

    /// The initial state.
    pub fn initial(&self) -> &State {
        &self.states[self.initial].name
    }

    /// The definition of `name`, if the lifecycle has it.
    pub fn state(&self, name: &State) -> Option<&StateDef> {
        self.states.iter().find(|s| &s.name == name)
    }

    /// The states reachable in one transition from `from`.
    pub fn allowed_from(&self, from: &State) -> Vec<State> {
        self.transitions
            .iter()
            .filter(|t| &t.from == from)
            .map(|t| t.to.clone())
            .collect()
    }

    /// Checks that `actor` may move a record from `from` to `to`.
    pub fn check(&self, from: &State, to: &State, actor: &Actor) -> Result<(), LifecycleError> {
        if self.state(to).is_none() {
            return Err(LifecycleError::UnknownState(to.clone()));
        }
        let transition = self
            .transitions
            .iter()
            .find(|t| &t.from == from && &t.to == to)
            .ok_or_else(|| LifecycleError::Illegal {
                from: from.clone(),
                to: to.clone(),
                allowed: self.allowed_from(from),
            })?;
        let permitted = actor.has_role(Role::Admin)
            || transition.roles.iter().any(|role| actor.has_role(*role));
        if permitted {
            Ok(())
        } else {
            Err(LifecycleError::Forbidden {
                from: from.clone(),
                to: to.clone(),
                roles: transition.roles.clone(),
            })
        }
    }
}
