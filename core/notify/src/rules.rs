//! Who hears of what: notification rules per domain.
//!
//! A rule says on which event (`created`, `commented`, `assigned`, `transitioned`,
//! `sla_warning`, `sla_breach`, or a module's `notify` effect: `notice`), for which kinds and
//! states, which people are mailed (the requester, the assignee, the assignment group's members,
//! the watchers, the audience a module named, a named person or group) with which template set.
//! Every domain starts with the default rules; an admin of the domain replaces one by writing a
//! rule of the same id (`"enabled": false` switches it off) and adds rules of their own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use usm_directory::{Directory, Person};
use usm_engine::Engine;
use usm_model::{Domain, Event, EventType, HistoryEntry, Record, Visibility};
use usm_store::{Store, StoreError};

use crate::{ModuleNotifications, NotifyError};

const RULES: &str = "notify/rule/";
/// Rules a domain may have besides the defaults.
pub const MAX_RULES: usize = 100;
const MAX_RECIPIENTS: usize = 10;
const MAX_FILTERS: usize = 50;

/// What a rule fires on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = NotificationTrigger))]
pub enum Trigger {
    /// A record was created.
    Created,
    /// A comment was added: public ones, and internal notes too for a rule that says
    /// `internal`.
    Commented,
    /// A record was assigned to someone (created with or changed to an assignee).
    Assigned,
    /// A record entered another state (one of `states`, when the rule names any).
    Transitioned,
    /// An SLA clock reached its warning point.
    SlaWarning,
    /// An SLA clock breached.
    SlaBreach,
    /// A module's or automation's `notify` effect.
    Notice,
}

/// Who a rule mails: `requester`, `assignee`, `group` (the members of the record's
/// assignment group), `watchers`, `approvers`, `audience` (what a `notify` effect named: `person:<id>`,
/// `group:<id>` or `team:<id>`, or one of the words here), `person:<id>` or `group:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Recipient {
    /// The record's requester.
    Requester,
    /// The record's assignee.
    Assignee,
    /// The members of the record's assignment group.
    Group,
    /// The record's watchers.
    Watchers,
    /// Whom a `notify` effect named.
    Audience,
    /// Whoever the record names to decide its approvals (`approvers`: people and groups), as
    /// the service catalog fills it.
    Approvers,
    /// A person of the directory.
    Person(String),
    /// The members of a group of the record's domain.
    GroupOf(String),
}

impl Recipient {
    /// Whether only the desk's own people can be meant (never a requester): internal notes go
    /// only to these.
    fn is_staff(&self) -> bool {
        matches!(self, Self::Assignee | Self::Group | Self::GroupOf(_))
    }
}

impl TryFrom<String> for Recipient {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let id = |id: &str| {
            let ok = !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
            ok.then(|| id.to_owned())
                .ok_or_else(|| format!("{text:?} does not name a person or group id"))
        };
        Ok(match text.as_str() {
            "requester" => Self::Requester,
            "assignee" => Self::Assignee,
            "group" => Self::Group,
            "watchers" => Self::Watchers,
            "audience" => Self::Audience,
            "approvers" => Self::Approvers,
            other => match other.split_once(':') {
                Some(("person", person)) => Self::Person(id(person)?),
                Some(("group" | "team", group)) => Self::GroupOf(id(group)?),
                _ => {
                    return Err(format!(
                        "{text:?} is not a recipient: requester, assignee, group, watchers, \
                         audience, approvers, person:<id> or group:<id>"
                    ));
                }
            },
        })
    }
}

impl From<Recipient> for String {
    fn from(recipient: Recipient) -> Self {
        match recipient {
            Recipient::Requester => "requester".into(),
            Recipient::Assignee => "assignee".into(),
            Recipient::Group => "group".into(),
            Recipient::Watchers => "watchers".into(),
            Recipient::Audience => "audience".into(),
            Recipient::Approvers => "approvers".into(),
            Recipient::Person(id) => format!("person:{id}"),
            Recipient::GroupOf(id) => format!("group:{id}"),
        }
    }
}

fn yes() -> bool {
    true
}

/// A notification rule of a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = NotificationRule))]
pub struct Rule {
    /// 1–64 lowercase letters, digits and `-`; a default rule's id replaces that default.
    pub id: String,
    /// `false` switches the rule off (a default too).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The event it fires on.
    pub on: Trigger,
    /// The kinds it applies to; every kind when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// For `transitioned`: the states whose entry it fires on; every state when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<String>,
    /// For `commented`: internal notes too, mailed only to `assignee`, `group` and
    /// `group:<id>` recipients (never to a requester).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
    /// Who is mailed (1–10 entries): `requester`, `assignee`, `group`, `watchers`, `approvers`,
    /// `audience` (for `notice`), `person:<id>`, `group:<id>`.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub recipients: Vec<Recipient>,
    /// The template set: `created`, `replied`, `assigned`, `transitioned`, `approval`,
    /// `sla_warning`, `sla_breach`, `notice`, or one the domain defines.
    pub template: String,
}

/// The rules every domain has unless it replaces them: the requester's acknowledgement and
/// every public reply to them, the assignee on an assignment, the change authority when a
/// change is to be approved, and whoever a module's `notify` effect names.
pub fn defaults() -> Vec<Rule> {
    let rule = |id: &str, on, recipients, template: &str| Rule {
        id: id.into(),
        enabled: true,
        on,
        kinds: Vec::new(),
        states: Vec::new(),
        internal: false,
        recipients,
        template: template.into(),
    };
    vec![
        Rule {
            kinds: vec!["change".into()],
            states: vec!["assess".into()],
            ..rule(
                "approval-request",
                Trigger::Transitioned,
                vec![Recipient::GroupOf("change-authority".into())],
                "approval",
            )
        },
        // Nobody is named unless the service catalog filled the record's approvers.
        Rule {
            kinds: vec!["request".into()],
            ..rule(
                "approvers-request",
                Trigger::Created,
                vec![Recipient::Approvers],
                "approval",
            )
        },
        rule(
            "assignee-assignment",
            Trigger::Assigned,
            vec![Recipient::Assignee],
            "assigned",
        ),
        rule(
            "module-notice",
            Trigger::Notice,
            vec![Recipient::Audience],
            "notice",
        ),
        rule(
            "requester-acknowledgement",
            Trigger::Created,
            vec![Recipient::Requester],
            "created",
        ),
        rule(
            "requester-reply",
            Trigger::Commented,
            vec![Recipient::Requester],
            "replied",
        ),
    ]
}

fn invalid(field: &str, message: impl Into<String>) -> NotifyError {
    NotifyError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Rule {
    /// Checks what the type does not: names, bounds, and members that only one trigger reads.
    pub fn check(&self, template_exists: impl Fn(&str) -> bool) -> Result<(), NotifyError> {
        if !is_name(&self.id) || self.id.contains('_') {
            return Err(invalid("/id", "1-64 lowercase letters, digits and hyphens"));
        }
        if self.recipients.is_empty() || self.recipients.len() > MAX_RECIPIENTS {
            return Err(invalid(
                "/recipients",
                format!("1-{MAX_RECIPIENTS} recipients"),
            ));
        }
        if self.recipients.contains(&Recipient::Audience) && self.on != Trigger::Notice {
            return Err(invalid(
                "/recipients",
                "audience is whom a notify effect names: only a notice rule has one",
            ));
        }
        for (field, list) in [("/kinds", &self.kinds), ("/states", &self.states)] {
            if list.len() > MAX_FILTERS || list.iter().any(|name| !is_name(name)) {
                return Err(invalid(
                    field,
                    format!("at most {MAX_FILTERS} names of lowercase letters, digits, - and _"),
                ));
            }
        }
        if !self.states.is_empty() && self.on != Trigger::Transitioned {
            return Err(invalid("/states", "only a transitioned rule reads states"));
        }
        if self.internal && self.on != Trigger::Commented {
            return Err(invalid("/internal", "only a commented rule reads internal"));
        }
        if !is_name(&self.template) || !template_exists(&self.template) {
            return Err(invalid(
                "/template",
                format!("no template set {:?} in this domain", self.template),
            ));
        }
        Ok(())
    }
}

fn key(domain: &Domain, id: &str) -> String {
    format!("{RULES}{domain}/{id}")
}

fn decode(key: &str, bytes: &[u8]) -> Result<Rule, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: "notification rule",
        detail: format!("{key}: {e}"),
    })
}

/// A rule in force in a domain, and where it comes from.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = NotificationRuleInForce))]
pub struct RuleInForce {
    /// The rule.
    pub rule: Rule,
    /// The domain.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub domain: Domain,
    /// `default` (as shipped), `module:<id>` (a module enabled in the domain), `replaced` (a
    /// default or module rule an admin rewrote) or `domain` (an admin's own).
    pub source: String,
}

/// The rules of `domain`, by id: the defaults, as the domain's modules and then its admins
/// replaced them, and the modules' and the domain's own.
pub fn in_force(
    store: &dyn Store,
    domain: &Domain,
    modules: &ModuleNotifications,
) -> Result<Vec<RuleInForce>, StoreError> {
    let mut rules: BTreeMap<String, RuleInForce> = defaults()
        .into_iter()
        .map(|rule| {
            let view = RuleInForce {
                domain: domain.clone(),
                source: "default".into(),
                rule,
            };
            (view.rule.id.clone(), view)
        })
        .collect();
    for (module, rule) in &modules.rules {
        rules.insert(
            rule.id.clone(),
            RuleInForce {
                rule: rule.clone(),
                domain: domain.clone(),
                source: format!("module:{module}"),
            },
        );
    }
    for (key, bytes) in store.settings(&format!("{RULES}{domain}/"))? {
        let rule = decode(&key, &bytes)?;
        let source = if rules.contains_key(&rule.id) {
            "replaced".to_owned()
        } else {
            "domain".to_owned()
        };
        rules.insert(
            rule.id.clone(),
            RuleInForce {
                rule,
                domain: domain.clone(),
                source,
            },
        );
    }
    Ok(rules.into_values().collect())
}

/// Writes `rule` for `domain` (replacing one of the same id); `true` when it is new there.
pub fn put(
    store: &dyn Store,
    domain: &Domain,
    rule: &Rule,
    template_exists: impl Fn(&str) -> bool,
) -> Result<bool, NotifyError> {
    rule.check(template_exists)?;
    let key = key(domain, &rule.id);
    let existed = store.setting(&key)?.is_some();
    if !existed && store.settings(&format!("{RULES}{domain}/"))?.len() >= MAX_RULES {
        return Err(invalid(
            "/id",
            format!("a domain has at most {MAX_RULES} rules of its own"),
        ));
    }
    let bytes = serde_json::to_vec(rule).map_err(|e| StoreError::Corrupt {
        what: "notification rule",
        detail: e.to_string(),
    })?;
    store.write_settings(&[(key, bytes)], &[])?;
    Ok(!existed)
}

/// Removes a domain's rule (a replaced default is in force as shipped again); `false` when the
/// domain has no rule of that id.
pub fn delete(store: &dyn Store, domain: &Domain, id: &str) -> Result<bool, StoreError> {
    let key = key(domain, id);
    if store.setting(&key)?.is_none() {
        return Ok(false);
    }
    store.write_settings(&[], &[key])?;
    Ok(true)
}

/// A message to render for one person.
pub(crate) struct Notice {
    /// The template set.
    pub template: String,
    /// Who receives it (a person with an e-mail address).
    pub person: Person,
    /// What the templates see.
    pub context: Value,
    /// The first message of the record's thread.
    pub opens_thread: bool,
}

fn text<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    record.fields.get(name).and_then(Value::as_str)
}

/// The person the record was requested by: `requester`, or the one who created it.
fn requester(record: &Record) -> &str {
    text(record, "requester").unwrap_or(&record.created_by)
}

/// What happened, as the rules see it.
struct Happening<'a> {
    triggers: Vec<Trigger>,
    entry: Option<&'a HistoryEntry>,
    /// For `commented`: whether the comment is internal.
    internal: bool,
    /// For `notice`: whom the effect named.
    audience: Option<&'a str>,
}

fn happening<'a>(event: &'a Event, entry: Option<&'a HistoryEntry>) -> Happening<'a> {
    // SLA timers and notify effects write no version of their own: the entry of the version
    // they name is an earlier write, already told.
    let entry = entry.filter(|_| event.event_type.is_record_write());
    let changed = |path: &str| entry.is_some_and(|e| e.changes.iter().any(|c| c.path == path));
    let assigned = entry.is_some_and(|e| {
        e.changes
            .iter()
            .any(|c| c.path == "/fields/assignee" && c.to.as_ref().is_some_and(Value::is_string))
    });
    let mut triggers = Vec::new();
    let mut internal = false;
    match event.event_type {
        EventType::RecordCreated => triggers.push(Trigger::Created),
        EventType::RecordCommented => {
            triggers.push(Trigger::Commented);
            internal =
                entry.is_some_and(|e| e.visibility.unwrap_or_default() != Visibility::Public);
        }
        EventType::RecordTransitioned if changed("/state") => {
            triggers.push(Trigger::Transitioned);
        }
        EventType::SlaWarning => triggers.push(Trigger::SlaWarning),
        EventType::SlaBreach => triggers.push(Trigger::SlaBreach),
        EventType::Notification => triggers.push(Trigger::Notice),
        _ => {}
    }
    if assigned {
        triggers.push(Trigger::Assigned);
    }
    let audience = event
        .payload
        .as_ref()
        .filter(|_| event.event_type == EventType::Notification)
        .and_then(|p| p.get("audience"))
        .and_then(Value::as_str);
    Happening {
        triggers,
        entry,
        internal,
        audience,
    }
}

/// The people `recipient` means for `record`, by id.
fn resolve(
    directory: &Directory,
    record: &Record,
    recipient: &Recipient,
    audience: Option<&str>,
) -> Vec<String> {
    let members = |group: &str| {
        directory
            .group_in(&record.domain, group)
            .map(|g| g.members)
            .unwrap_or_default()
    };
    match recipient {
        Recipient::Requester => vec![requester(record).to_owned()],
        Recipient::Assignee => text(record, "assignee")
            .map(str::to_owned)
            .into_iter()
            .collect(),
        Recipient::Group => text(record, "assignment_group")
            .map(members)
            .unwrap_or_default(),
        Recipient::Watchers => record
            .fields
            .get("watchers")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        Recipient::Person(id) => vec![id.clone()],
        Recipient::GroupOf(id) => members(id),
        Recipient::Approvers => usm_engine::controls::approvers_of(record)
            .flat_map(|approver| match approver.strip_prefix("group:") {
                Some(group) => members(group),
                None => vec![approver.to_owned()],
            })
            .collect(),
        Recipient::Audience => match audience.map(|a| Recipient::try_from(a.to_owned())) {
            Some(Ok(Recipient::Audience)) | Some(Err(_)) | None => Vec::new(),
            Some(Ok(named)) => resolve(directory, record, &named, None),
        },
    }
}

/// The notices of `event`, one per person at most, as the rules of the record's domain say.
/// Nobody hears of their own write, except the requester's acknowledgement of a record they
/// created; internal notes reach only staff recipients of rules that ask for them, and never
/// the requester.
pub(crate) fn notices(
    engine: &Engine,
    event: &Event,
    modules: &ModuleNotifications,
) -> Result<Vec<Notice>, StoreError> {
    let store = engine.store();
    let Some(record) = store.get(&event.record_id)? else {
        return Ok(Vec::new());
    };
    let history: Vec<HistoryEntry> = store
        .history(&event.record_id, event.version.saturating_sub(1), 1)?
        .into_iter()
        .filter(|e| e.version == event.version)
        .collect();
    let what = happening(event, history.first());
    if what.triggers.is_empty() {
        return Ok(Vec::new());
    }
    let directory = engine.directory();
    let requester = requester(&record).to_owned();
    let actor = what
        .entry
        .map_or(event.actor.as_str(), |e| e.actor.as_str());
    let name_of = |id: &str| {
        directory
            .active_person(id)
            .map_or_else(|| id.to_owned(), |p| p.name)
    };
    let comment = what.entry.and_then(|entry| {
        entry.comment.as_ref().map(|body| {
            json!({"author": name_of(&entry.actor), "body": body,
                   "html": usm_engine::conversation::render(body)})
        })
    });
    let from_state = what.entry.and_then(|e| {
        e.changes
            .iter()
            .find(|c| c.path == "/state")
            .and_then(|c| c.from.clone())
    });
    let mut notices: Vec<Notice> = Vec::new();
    for rule in in_force(store.as_ref(), &record.domain, modules)? {
        let rule = rule.rule;
        let applies = rule.enabled
            && what.triggers.contains(&rule.on)
            && (rule.kinds.is_empty() || rule.kinds.iter().any(|k| k == record.kind.as_str()))
            && (rule.states.is_empty() || rule.states.iter().any(|s| s == record.state.as_str()))
            && (rule.on != Trigger::Commented || !what.internal || rule.internal);
        if !applies {
            continue;
        }
        for recipient in &rule.recipients {
            if rule.on == Trigger::Commented && what.internal && !recipient.is_staff() {
                continue;
            }
            for id in resolve(directory, &record, recipient, what.audience) {
                let own_write = id == actor && rule.on != Trigger::Created;
                let internal_to_requester =
                    rule.on == Trigger::Commented && what.internal && id == requester;
                if own_write || internal_to_requester || notices.iter().any(|n| n.person.id == id) {
                    continue;
                }
                let Some(person) = directory
                    .active_person(&id)
                    .filter(|p| p.email.is_some() && p.in_domain(&record.domain))
                else {
                    continue;
                };
                let context = json!({
                    "record": {"id": record.id.as_str(), "title": record.title,
                               "kind": record.kind.as_str(), "state": record.state.as_str(),
                               "domain": record.domain.as_str(),
                               "group": text(&record, "assignment_group"),
                               "assignee": text(&record, "assignee"),
                               "priority": text(&record, "priority")},
                    "recipient": {"id": person.id, "name": person.name},
                    "comment": if rule.on == Trigger::Commented { comment.clone() } else { None },
                    "transition": {"from": from_state, "to": record.state.as_str()},
                    "event": {"type": event.event_type, "payload": event.payload},
                    "rule": rule.id,
                });
                notices.push(Notice {
                    template: rule.template.clone(),
                    person,
                    context,
                    // The requester's acknowledgement is the thread's first message.
                    opens_thread: event.event_type == EventType::RecordCreated
                        && rule.on == Trigger::Created
                        && id == requester,
                });
            }
        }
    }
    Ok(notices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_read_and_write_as_their_words() {
        for text in [
            "requester",
            "assignee",
            "group",
            "watchers",
            "audience",
            "person:ann.lee",
            "group:network",
        ] {
            let recipient = Recipient::try_from(text.to_owned()).unwrap();
            assert_eq!(String::from(recipient), text);
        }
        assert_eq!(
            Recipient::try_from("team:network".to_owned()).unwrap(),
            Recipient::GroupOf("network".into())
        );
        for bad in ["everyone", "person:", "person:Ann", "group:a b", "x:y"] {
            assert!(Recipient::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_are_checked_before_they_are_kept() {
        let good = defaults().remove(0);
        assert!(good.check(|_| true).is_ok());
        let bad = |change: fn(&mut Rule), field: &str| {
            let mut rule = good.clone();
            change(&mut rule);
            match rule.check(|name| name != "missing") {
                Err(NotifyError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        };
        bad(|r| r.id = "Not An Id".into(), "/id");
        bad(|r| r.recipients.clear(), "/recipients");
        bad(|r| r.recipients.push(Recipient::Audience), "/recipients");
        bad(|r| r.on = Trigger::Created, "/states");
        bad(|r| r.kinds = vec!["Change!".into()], "/kinds");
        bad(|r| r.template = "missing".into(), "/template");
        bad(
            |r| {
                r.on = Trigger::Created;
                r.states.clear();
                r.internal = true;
            },
            "/internal",
        );
    }
}
