use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier is empty or too long.
    #[error("{what} must be 1 to {max} characters long")]
    Length {
        /// Which identifier.
        what: &'static str,
        /// The maximum length.
        max: usize,
    },
    /// The identifier contains a character it may not contain.
    #[error(
        "{what} {value:?} must start with a lowercase letter and contain only a-z, 0-9, '_' or '-'"
    )]
    Charset {
        /// Which identifier.
        what: &'static str,
        /// The refused value.
        value: String,
    },
    /// A record id is not `PREFIX-NUMBER`.
    #[error("record id {0:?} is not of the form PREFIX-NUMBER, e.g. INC-42")]
    RecordId(String),
}

fn check_slug(what: &'static str, value: &str, allow_dash: bool) -> Result<(), IdError> {
    const MAX: usize = 32;
    if value.is_empty() || value.len() > MAX {
        return Err(IdError::Length { what, max: MAX });
    }
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || (allow_dash && c == '-')
    });
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(IdError::Charset {
            what,
            value: value.to_owned(),
        })
    }
}

macro_rules! slug_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $dash:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String))]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps the identifier.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_slug($what, &value, $dash)?;
                Ok(Self(value))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

slug_type!(
    /// A record kind, e.g. `incident`; defined in the [`Catalog`](crate::Catalog).
    Kind, "kind", false
);
slug_type!(
    /// A service domain such as `it`, `hr` or `facilities`.
    Domain, "domain", true
);
slug_type!(
    /// A lifecycle state such as `in_progress`.
    State, "state", false
);

impl Default for Domain {
    fn default() -> Self {
        Self("it".to_owned())
    }
}

/// A human-friendly record id: the kind's prefix, a dash and a per-kind sequence number (`INC-7`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, example = "INC-42"))]
pub struct RecordId(String);

impl RecordId {
    /// Builds the id for the `number`th record of the kind with this prefix.
    pub fn from_parts(prefix: &str, number: u64) -> Self {
        Self(format!("{prefix}-{number}"))
    }

    /// Parses `PREFIX-NUMBER` where PREFIX is 2–6 uppercase ASCII letters.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        let bad = || IdError::RecordId(value.chars().take(64).collect());
        let (prefix, number) = value.split_once('-').ok_or_else(bad)?;
        let prefix_ok =
            (2..=6).contains(&prefix.len()) && prefix.bytes().all(|b| b.is_ascii_uppercase());
        let number_ok = !number.is_empty()
            && number.len() <= 19
            && number.bytes().all(|b| b.is_ascii_digit())
            && !number.starts_with('0');
        if prefix_ok && number_ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(bad())
        }
    }

    /// The prefix part, e.g. `INC`.
    pub fn prefix(&self) -> &str {
        self.0.split_once('-').map_or("", |(prefix, _)| prefix)
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RecordId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        Self::parse(&value)
    }
}

impl From<RecordId> for String {
    fn from(value: RecordId) -> String {
        value.0
    }
}

impl FromStr for RecordId {
    type Err = IdError;
    fn from_str(value: &str) -> Result<Self, IdError> {
        Self::parse(value)
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an actor may do; scoped to domains by the auth layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// Everything, including modules and tokens.
    Admin,
    /// Works records in their domains.
    Agent,
    /// Creates records and follows their own.
    Requester,
    /// Scripts and integrations; acts like an agent.
    Automation,
}

/// Who performs an operation: the principal's id and name, its roles and the domains they
/// apply in. A token's actor carries the token's id and its (unique) name; the server's own
/// actors (`system`, `module:<id>`, `automation:<id>`) use their name as id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The principal's stable identity: a token's id, or the name of a server actor.
    #[serde(default)]
    pub id: String,
    /// The principal's stable name, recorded in history (`created_by`, approvals, …).
    pub name: String,
    /// The roles this actor holds.
    pub roles: Vec<Role>,
    /// The domains the roles apply in; every domain when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domains: Option<std::collections::BTreeSet<Domain>>,
}

impl Actor {
    /// An actor with the given name (also its id) and roles, in every domain.
    pub fn new(name: impl Into<String>, roles: impl Into<Vec<Role>>) -> Self {
        let name = name.into();
        Self {
            id: name.clone(),
            name,
            roles: roles.into(),
            domains: None,
        }
    }

    /// The same actor, limited to `domains`.
    #[must_use]
    pub fn in_domains(mut self, domains: impl IntoIterator<Item = Domain>) -> Self {
        self.domains = Some(domains.into_iter().collect());
        self
    }

    /// The same actor with the id of the token it authenticated with.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Whether the actor's roles apply in every domain (no domain restriction).
    pub fn is_global(&self) -> bool {
        self.domains.is_none()
    }

    /// Whether the actor's roles apply in every domain of `scope` (`None`: the whole server,
    /// which only a global actor covers).
    pub fn covers(&self, scope: Option<&std::collections::BTreeSet<Domain>>) -> bool {
        match (&self.domains, scope) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(own), Some(scope)) => scope.is_subset(own),
        }
    }

    /// Whether the actor holds `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether the actor's roles apply in `domain`.
    pub fn in_domain(&self, domain: &Domain) -> bool {
        self.domains
            .as_ref()
            .is_none_or(|domains| domains.contains(domain))
    }

    /// Whether the actor works records (admin, agent or automation), as opposed to a requester
    /// who only follows their own.
    pub fn works_records(&self) -> bool {
        self.roles
            .iter()
            .any(|r| matches!(r, Role::Admin | Role::Agent | Role::Automation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_accept_lowercase_and_refuse_the_rest() {
        assert!(Kind::new("incident").is_ok());
        assert!(Kind::new("my_kind2").is_ok());
        assert!(Kind::new("Incident").is_err());
        assert!(Kind::new("in-cident").is_err());
        assert!(Domain::new("field-ops").is_ok());
        assert!(Domain::new("").is_err());
        assert!(Domain::new("a".repeat(33)).is_err());
        assert!(State::new("1st").is_err());
    }

    #[test]
    fn record_ids_parse_strictly() {
        let id = RecordId::parse("INC-42").unwrap();
        assert_eq!(id.prefix(), "INC");
        for bad in [
            "INC42",
            "inc-1",
            "INC-",
            "INC-01",
            "I-1",
            "INC-1x",
            "TOOLONG-1",
            "INC-99999999999999999999",
        ] {
            assert!(RecordId::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
