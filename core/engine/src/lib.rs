//! `usm-engine` owns what happens to records: creating them with per-kind ids, validating their
//! fields against the kind's schema, moving them through their lifecycle, recording approvals,
//! and committing each write with its history entry through the [`Store`]. It knows neither
//! HTTP nor the storage engine.
//!
//! Writes are optimistic: the engine reads the record, computes the proposed version, and
//! commits with a compare-and-swap on the version it read. With `If-Match` a lost race is the
//! client's to resolve (412); without, the engine recomputes on the fresh record.

mod admission;
pub mod attachments;
pub mod auth;
mod background;
pub mod budget;
pub mod bundle;
mod catalogs;
pub mod controls;
pub mod conversation;
mod cursor;
mod error;
mod module;
mod outbox;
mod pipeline;
mod preview;
mod registry;
pub mod retention;
pub mod sla;
mod sla_worker;
mod step;
pub mod webhooks;
pub mod workflow;

use std::{
    collections::BTreeSet,
    sync::{Arc, PoisonError, RwLock, RwLockWriteGuard},
};

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tracing::instrument;
use usm_model::{
    Action, Actor, Approval, Catalog, CatalogAdditions, CatalogError, Cause, Decision, Domain,
    HistoryEntry, KindDef, LifecycleError, Link, Record, RecordId, State, StateCategory, Timestamp,
    diff_records, merge_patch,
};
use usm_store::{Committed, Expected, IdempotencyClaim, ListQuery, Store, StoreError, Write};

pub use admission::AdmissionConfig;
pub use background::Background;
pub use catalogs::Catalogs;
pub use error::EngineError;
pub use module::{
    BuildError, BuildRequest, HOST_API_VERSION, KNOWN_CAPABILITIES, Manifest, ManifestCheck,
    Module, ModuleError, ModuleFiles, RECORDS_READ, Runtimes, StepBuilder, StepDecl, peek_manifest,
    valid_module_id,
};
pub use outbox::{AfterStepWorker, CommitSignal, head as outbox_head};
pub use pipeline::{
    BoundStep, BreakerPolicy, BreakerView, PipelineView, Pipelines, Runtime, StepLatency, StepView,
};
pub use preview::{
    MAX_PREVIEW_RECORDS, PreviewChange, PreviewOutcome, PreviewReport, PreviewSample,
};
pub use registry::{Installed, ModuleInfo, Registry, RegistryError, WorkflowSummary};
pub use sla_worker::{SlaPolicies, SlaView, SlaWorker, ledger as sla_ledger, timeline};
pub use step::{Effect, Hook, OnError, Phase, Step, StepError, StepInput, StepOutput};
pub use usm_model::Kind;

/// Bounds on what one request can make the engine do.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest title, in characters.
    pub max_title_chars: usize,
    /// Longest transition or approval comment, in characters.
    pub max_comment_chars: usize,
    /// Most attachments one record holds.
    pub max_attachments_per_record: usize,
    /// Most bytes one record's attachments hold in all.
    pub max_attachment_bytes_per_record: u64,
    /// Most links on one record.
    pub max_links: usize,
    /// Deepest nesting of a merge patch.
    pub max_patch_depth: usize,
    /// Largest page a listing returns.
    pub max_page: usize,
    /// Page size when the client gives none.
    pub default_page: usize,
    /// Most history entries in one response.
    pub max_history_page: usize,
    /// Longest idempotency key, in bytes.
    pub max_idempotency_key: usize,
    /// How often a write without `If-Match` is recomputed after losing a race.
    pub write_attempts: u32,
    /// Deepest nesting inside `fields`.
    pub max_field_depth: usize,
    /// Most members (values at any depth) inside `fields`.
    pub max_field_members: usize,
    /// Longest string inside `fields`, in bytes.
    pub max_string_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_title_chars: 500,
            max_comment_chars: 10_000,
            max_attachments_per_record: 100,
            max_attachment_bytes_per_record: 250 * 1024 * 1024,
            max_links: 100,
            max_patch_depth: 16,
            max_page: 500,
            default_page: 50,
            max_history_page: 1000,
            max_idempotency_key: 255,
            write_attempts: 32,
            max_field_depth: 8,
            max_field_members: 1_000,
            max_string_bytes: 64 * 1024,
        }
    }
}

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The service domains records may live in.
    pub domains: Vec<Domain>,
    /// Request bounds.
    pub limits: Limits,
    /// When a misbehaving step is suspended.
    pub breaker: BreakerPolicy,
    /// How many client writes run their pipelines at once, and how many wait.
    pub admission: AdmissionConfig,
    /// A resolved record its requester neither confirms nor rejects closes after this many
    /// minutes of its SLA calendar's business time (wall-clock time without a policy); `None`
    /// never.
    pub auto_close_after_business_minutes: Option<f64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let domains = ["it", "hr", "facilities"]
            .into_iter()
            .filter_map(|d| Domain::new(d).ok())
            .collect();
        Self {
            domains,
            limits: Limits::default(),
            breaker: BreakerPolicy::default(),
            admission: AdmissionConfig::default(),
            // Five days of eight business hours.
            auto_close_after_business_minutes: Some(2400.0),
        }
    }
}

/// A record to create.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewRecord {
    /// The kind, e.g. `incident`.
    pub kind: String,
    /// The domain; `it` when absent.
    #[serde(default)]
    pub domain: Option<String>,
    /// A one-line summary.
    pub title: String,
    /// Kind-specific data.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub fields: Map<String, Value>,
    /// Relations to existing records.
    #[serde(default)]
    pub links: Vec<Link>,
}

/// A change to a record's title, fields (JSON merge patch) or links (replaced whole).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecordPatch {
    /// The new title.
    #[serde(default)]
    pub title: Option<String>,
    /// A JSON merge patch (RFC 7396) applied to `fields`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub fields: Option<Map<String, Value>>,
    /// The new list of links.
    #[serde(default)]
    pub links: Option<Vec<Link>>,
}

/// A create's result: the record, and whether it was created earlier under the same key.
#[derive(Debug, Clone)]
pub struct Created {
    /// The record.
    pub record: Record,
    /// True when an earlier request with the same `Idempotency-Key` created it.
    pub replayed: bool,
}

/// Filters for listing records; all optional.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this state.
    pub state: Option<String>,
    /// Only this domain.
    pub domain: Option<String>,
    /// Page size.
    pub limit: Option<usize>,
    /// Resume from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// A listing's kind, state and domain filters, checked against the catalog.
#[derive(Debug, Clone, Default)]
pub struct ListFilters {
    /// Only this kind.
    pub kind: Option<Kind>,
    /// Only this state.
    pub state: Option<State>,
    /// Only this domain.
    pub domain: Option<Domain>,
}

/// One page of records.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// The records, oldest first.
    pub records: Vec<Record>,
    /// Pass this as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The record engine.
pub struct Engine {
    store: Arc<dyn Store>,
    /// The kinds of the engine's construction, before modules add to them.
    base_kinds: Vec<KindDef>,
    /// The composed catalogs in force now, one per domain; swapped whole when modules change.
    catalogs: RwLock<Arc<Catalogs>>,
    /// Held shared by every write from its catalog snapshot to its commit, and exclusively by a
    /// catalog change while it checks that no record uses what it drops and swaps: so no write
    /// on the old catalog lands a record of a kind or state that is gone.
    catalog_gate: RwLock<()>,
    config: EngineConfig,
    pipelines: RwLock<Arc<Pipelines>>,
    commits: Arc<CommitSignal>,
    sla_policies: SlaPolicies,
    admission: admission::Admission,
    directory: Arc<usm_directory::Directory>,
}

impl Engine {
    /// An engine over `store` with the kinds of `catalog`.
    pub fn new(store: Arc<dyn Store>, catalog: Arc<Catalog>, config: EngineConfig) -> Self {
        let directory = Arc::new(usm_directory::Directory::new(
            Arc::clone(&store),
            config.domains.clone(),
        ));
        Self {
            base_kinds: catalog.kinds().cloned().collect(),
            catalogs: RwLock::new(Arc::new(Catalogs::uniform(catalog))),
            catalog_gate: RwLock::new(()),
            admission: admission::Admission::new(config.admission),
            config,
            pipelines: RwLock::new(Arc::new(Pipelines::default())),
            commits: Arc::new(CommitSignal::default()),
            sla_policies: SlaPolicies::default(),
            directory,
            store,
        }
    }

    /// The people and groups records are assigned to and approvals resolve to.
    pub fn directory(&self) -> &Arc<usm_directory::Directory> {
        &self.directory
    }

    /// When misbehaving steps are suspended.
    pub fn breaker_policy(&self) -> &BreakerPolicy {
        &self.config.breaker
    }

    /// Client writes running their pipelines now, and waiting for a turn.
    pub fn pipeline_load(&self) -> (usize, usize) {
        self.admission.load()
    }

    /// The SLA policies of the active agreements.
    pub fn sla_policies(&self) -> &SlaPolicies {
        &self.sla_policies
    }

    /// The pipelines in force now. A write takes this once and uses it throughout, so a swap
    /// never gives one write a mix of old and new steps.
    pub fn pipelines(&self) -> Arc<Pipelines> {
        Arc::clone(
            &self
                .pipelines
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Swaps in newly composed pipelines; writes in flight finish on the old ones.
    pub fn set_pipelines(&self, pipelines: Pipelines) {
        *self
            .pipelines
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(pipelines);
    }

    /// Signalled after every commit; the outbox consumers wait on it.
    pub fn commits(&self) -> &Arc<CommitSignal> {
        &self.commits
    }

    /// The catalogs in force now, one per domain.
    pub fn catalogs(&self) -> Arc<Catalogs> {
        Arc::clone(&self.catalogs.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Every kind in force in some domain: the engine's own plus what enabled modules add.
    pub fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(self.catalogs().union())
    }

    /// The kinds in force in `domain`: the engine's own plus what the modules enabled there add.
    pub fn catalog_in(&self, domain: &Domain) -> Arc<Catalog> {
        Arc::clone(self.catalogs().domain(domain))
    }

    /// The kinds `actor` asks for: those in force in `domain` (one of its domains), or every
    /// kind in force somewhere.
    pub fn kinds_for(
        &self,
        actor: &Actor,
        domain: Option<&str>,
    ) -> Result<Arc<Catalog>, EngineError> {
        let Some(name) = domain else {
            return Ok(self.catalog());
        };
        let domain = self.domain(name)?;
        if !actor.in_domain(&domain) {
            return Err(EngineError::Forbidden(format!(
                "{} may not read domain {domain}",
                actor.name
            )));
        }
        Ok(self.catalog_in(&domain))
    }

    /// The engine's own kinds plus what `modules` add, without swapping it in.
    pub fn compose_catalog<'a>(
        &self,
        modules: impl IntoIterator<Item = (&'a str, &'a CatalogAdditions)>,
    ) -> Result<Catalog, CatalogError> {
        Catalog::compose(self.base_kinds.iter().cloned(), modules)
    }

    /// The catalogs of each domain given `modules` (id, additions, domains enabled in), without
    /// swapping them in.
    pub fn compose_catalogs(
        &self,
        modules: &[(&str, &CatalogAdditions, Vec<Domain>)],
    ) -> Result<Catalogs, CatalogError> {
        Catalogs::compose(&self.base_kinds, &self.config.domains, modules)
    }

    /// Waits for writes in flight to commit and holds new ones back until the guard drops; a
    /// catalog change that drops kinds or states checks and swaps under it.
    pub(crate) fn hold_writes(&self) -> RwLockWriteGuard<'_, ()> {
        self.catalog_gate
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Swaps in newly composed catalogs; writes in flight finish on the old ones.
    pub fn set_catalogs(&self, catalogs: Catalogs) {
        *self
            .catalogs
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(catalogs);
    }

    /// Refuses writes to a record whose domain no longer has its kind or the state it is in
    /// (the module adding it was disabled there with `force`): the record stays readable, with
    /// its history, and is read-only until the module is enabled there again.
    pub fn writable(&self, record: &Record) -> Result<(), EngineError> {
        match self.catalogs().missing(record) {
            None => Ok(()),
            Some(missing) => Err(EngineError::ModuleNotEnabled {
                id: record.id.clone(),
                domain: record.domain.clone(),
                what: missing.what,
                module: missing.module,
            }),
        }
    }

    /// The bounds on what one request can make the engine do.
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// The configured domains.
    pub fn domains(&self) -> &[Domain] {
        &self.config.domains
    }

    /// The store, for health checks and flushing on shutdown.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Whether `record` is finished: in an inactive state of its kind's lifecycle (done,
    /// closed, cancelled, …) as composed in its domain.
    pub fn is_finished(&self, record: &Record) -> bool {
        is_finished(&self.catalogs(), record)
    }

    /// The current version of a record the actor may see. A record outside the actor's domains,
    /// or a requester's view of someone else's record, is not found: its existence is not told.
    pub fn get(&self, actor: &Actor, id: &str) -> Result<Record, EngineError> {
        let id = parse_id(id)?;
        self.store
            .get(&id)?
            .filter(|record| visible(actor, record))
            .ok_or_else(|| EngineError::NotFound(id.to_string()))
    }

    /// Creates a record in its kind's initial state. With an idempotency key, a repeat of the
    /// same request returns the record the first one created.
    #[instrument(skip_all, fields(kind = %new.kind))]
    pub fn create(
        &self,
        actor: &Actor,
        new: NewRecord,
        idempotency_key: Option<&str>,
    ) -> Result<Created, EngineError> {
        self.create_caused(actor, new, idempotency_key, None, Map::new())
    }

    /// Creates a record on behalf of one of the server's services (the service catalog), which
    /// also fills `system`: fields the kind reserves for the engine, which no client or step
    /// writes. The actor's own fields pass every control a client's do.
    pub fn create_with_system_fields(
        &self,
        actor: &Actor,
        new: NewRecord,
        idempotency_key: Option<&str>,
        system: Map<String, Value>,
    ) -> Result<Created, EngineError> {
        self.create_caused(actor, new, idempotency_key, None, system)
    }

    pub(crate) fn create_caused(
        &self,
        actor: &Actor,
        mut new: NewRecord,
        idempotency_key: Option<&str>,
        cause: Option<Cause>,
        system: Map<String, Value>,
    ) -> Result<Created, EngineError> {
        let _gate = self
            .catalog_gate
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let domain = match &new.domain {
            Some(domain) => self.domain(domain)?,
            None => Domain::default(),
        };
        if !actor.in_domain(&domain) {
            return Err(EngineError::Forbidden(format!(
                "{} may not create records in domain {domain}",
                actor.name
            )));
        }
        let catalog = self.catalog_in(&domain);
        let def = kind_def(&catalog, &new.kind)?;
        self.check_size(&new.fields)?;
        let write = controls::ClientWrite {
            actor,
            before: None,
            domain_admin: false,
        };
        controls::check_client(def, &write, &new.fields)?;
        for (field, value) in system {
            if def.writer(&field) != &usm_model::Writer::System {
                return Err(EngineError::invalid(
                    format!("/fields/{field}"),
                    "only the engine's own fields are filled by a service",
                ));
            }
            new.fields.insert(field, value);
        }
        self.check_size(&new.fields)?;
        // After the service's fields are in: a replay with other variables is another request.
        let claim = idempotency_key
            .map(|key| self.idempotency_claim(actor, key, &new))
            .transpose()?;
        let title = self.title(&new.title)?;
        self.check_links(actor, &new.links, None)?;
        let fields = valid_fields(&catalog, def, new.fields)?;
        let now = Timestamp::now();
        let record = Record {
            id: RecordId::from_parts(&def.prefix, 0),
            kind: def.name.clone(),
            process: def.process,
            domain,
            state: def.lifecycle.initial().clone(),
            title,
            fields,
            links: new.links,
            version: 0,
            created_at: now,
            created_by: actor.name.clone(),
            updated_at: now,
            updated_by: actor.name.clone(),
        };
        let pipelines = self.pipelines();
        let (record, steps) = self.run_before(
            &pipelines,
            None,
            Hook::Create,
            actor,
            record,
            None,
            Value::Null,
            cause.is_none(),
        )?;
        sla::validate::agreement(&record)?;
        let by_agent = sla::acts_as_agent(actor, cause.is_some());
        let history = HistoryEntry {
            version: 1,
            at: now,
            actor: actor.name.clone(),
            action: Action::Create,
            comment: None,
            changes: diff_records(None, &record),
            approval: None,
            steps,
            cause,
            visibility: None,
            stale_approvals: Vec::new(),
            by_agent,
        };
        let write = Write {
            record,
            history,
            expected: Expected::Create {
                prefix: def.prefix.clone(),
                idempotency: claim.clone(),
            },
        };
        match self.store.commit(write) {
            Ok(committed) => {
                self.commits.notify();
                tracing::info!(record = %committed.record.id, "record created");
                Ok(Created {
                    record: committed.record,
                    replayed: false,
                })
            }
            Err(StoreError::IdempotencyKeyUsed {
                record_id,
                request_hash,
                record,
            }) => {
                let ours = claim.map(|c| c.request_hash).unwrap_or_default();
                if request_hash != ours {
                    return Err(EngineError::IdempotencyKeyReused { record_id });
                }
                // The answer the first request got, not what later writes made of the record.
                let record = match record {
                    Some(record) => *record,
                    None => self
                        .store
                        .get(&record_id)?
                        .ok_or_else(|| EngineError::NotFound(record_id.to_string()))?,
                };
                Ok(Created {
                    record,
                    replayed: true,
                })
            }
            Err(other) => Err(other.into()),
        }
    }

    /// Applies a patch to title, fields or links.
    #[instrument(skip_all, fields(record = %id))]
    pub fn update(
        &self,
        actor: &Actor,
        id: &str,
        patch: RecordPatch,
        if_match: Option<u64>,
    ) -> Result<Record, EngineError> {
        self.update_caused(actor, id, patch, if_match, None)
    }

    pub(crate) fn update_caused(
        &self,
        actor: &Actor,
        id: &str,
        patch: RecordPatch,
        if_match: Option<u64>,
        cause: Option<Cause>,
    ) -> Result<Record, EngineError> {
        let title = patch.title.as_deref().map(|t| self.title(t)).transpose()?;
        let target = WriteTarget {
            id,
            if_match,
            action: Action::Update,
            cause,
        };
        self.write(actor, target, |current| {
            let mut next = current.clone();
            if let Some(title) = &title {
                next.title = title.clone();
            }
            if let Some(links) = &patch.links {
                self.check_links(actor, links, Some(current))?;
                next.links = links.clone();
            }
            if let Some(fields_patch) = &patch.fields {
                self.patch_fields(actor, current, &mut next, fields_patch)?;
            }
            Ok(Proposal {
                record: next,
                comment: None,
                approval: None,
                context: Value::Null,
                visibility: None,
            })
        })
        .map(|committed| committed.record)
    }

    /// Applies a client's merge patch of `current`'s fields to `next`, with every control a
    /// client's field write passes.
    fn patch_fields(
        &self,
        actor: &Actor,
        current: &Record,
        next: &mut Record,
        patch: &Map<String, Value>,
    ) -> Result<(), EngineError> {
        merge_patch(&mut next.fields, patch, self.config.limits.max_patch_depth)
            .map_err(|e| EngineError::invalid("/fields", e.to_string()))?;
        self.check_size(&next.fields)?;
        let catalog = self.catalog_in(&current.domain);
        let def = kind_def(&catalog, current.kind.as_str())?;
        let write = controls::ClientWrite {
            actor,
            before: Some(&current.fields),
            domain_admin: auth::admin_sees(
                actor,
                Some(&std::collections::BTreeSet::from([current.domain.clone()])),
            ),
        };
        controls::check_client(def, &write, &next.fields)?;
        next.fields = valid_fields(&catalog, def, std::mem::take(&mut next.fields))?;
        Ok(())
    }

    /// Moves a record to another state of its lifecycle.
    #[instrument(skip_all, fields(record = %id, to = %to))]
    pub fn transition(
        &self,
        actor: &Actor,
        id: &str,
        to: &str,
        comment: Option<String>,
        if_match: Option<u64>,
    ) -> Result<Record, EngineError> {
        self.transition_caused(actor, id, to, comment, if_match, None, None)
    }

    /// Moves a record to another state and changes its fields (a JSON merge patch) in the same
    /// write: one version, one history entry, and the transition's rules see the new fields.
    pub fn transition_with_fields(
        &self,
        actor: &Actor,
        id: &str,
        to: &str,
        comment: Option<String>,
        if_match: Option<u64>,
        fields: Option<Map<String, Value>>,
    ) -> Result<Record, EngineError> {
        self.transition_caused(actor, id, to, comment, if_match, None, fields.as_ref())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn transition_caused(
        &self,
        actor: &Actor,
        id: &str,
        to: &str,
        comment: Option<String>,
        if_match: Option<u64>,
        cause: Option<Cause>,
        fields: Option<&Map<String, Value>>,
    ) -> Result<Record, EngineError> {
        let comment = self.comment(comment)?;
        let target = WriteTarget {
            id,
            if_match,
            action: Action::Transition,
            cause,
        };
        self.write(actor, target, |current| {
            let catalog = self.catalog_in(&current.domain);
            let def = kind_def(&catalog, current.kind.as_str())?;
            let lifecycle = &def.lifecycle;
            let unknown = || EngineError::UnknownState {
                state: to.chars().take(64).collect(),
                kind: def.name.to_string(),
                states: lifecycle.states().iter().map(|s| s.name.clone()).collect(),
            };
            let target = State::new(to).map_err(|_| unknown())?;
            lifecycle
                .check(&current.state, &target, actor)
                .map_err(|error| match error {
                    LifecycleError::UnknownState(_) => unknown(),
                    LifecycleError::Illegal { from, to, allowed } => {
                        EngineError::IllegalTransition {
                            kind: def.name.to_string(),
                            from,
                            to,
                            allowed,
                        }
                    }
                    LifecycleError::Forbidden { from, to, roles } => {
                        EngineError::TransitionForbidden { from, to, roles }
                    }
                    other => EngineError::invalid("/to", other.to_string()),
                })?;
            let mut next = current.clone();
            if let Some(patch) = fields {
                self.patch_fields(actor, current, &mut next, patch)?;
            }
            next.state = target;
            controls::on_transition(def, actor, current, &mut next);
            let context = serde_json::json!({"transition": {
                "from": current.state, "to": next.state, "comment": comment,
            }});
            Ok(Proposal {
                record: next,
                comment: comment.clone(),
                approval: None,
                context,
                visibility: None,
            })
        })
        .map(|committed| committed.record)
    }

    /// The requester's answer to a resolution: accepting closes the record (and records the
    /// confirmation), rejecting reopens it (and clears the resolution). Only the record's
    /// requester answers, and only while the record waits in its kind's resolved state.
    #[instrument(skip_all, fields(record = %id, accept))]
    pub fn confirm(
        &self,
        actor: &Actor,
        id: &str,
        accept: bool,
        comment: Option<String>,
    ) -> Result<Record, EngineError> {
        let comment = self.comment(comment)?;
        let target = WriteTarget {
            id,
            if_match: None,
            action: Action::Transition,
            cause: None,
        };
        self.write(actor, target, |current| {
            let catalog = self.catalog_in(&current.domain);
            let def = kind_def(&catalog, current.kind.as_str())?;
            let Some(confirmation) = &def.confirmation else {
                return Err(EngineError::ConfirmationNotExpected {
                    id: current.id.clone(),
                    state: current.state.clone(),
                    expected: format!("no state: {} takes no confirmations", def.name),
                });
            };
            let requester = controls::requester_of(current);
            if requester != actor.name {
                return Err(EngineError::Forbidden(format!(
                    "only {}'s requester, {requester}, confirms or rejects its resolution",
                    current.id
                )));
            }
            if current.state != confirmation.state {
                return Err(EngineError::ConfirmationNotExpected {
                    id: current.id.clone(),
                    state: current.state.clone(),
                    expected: confirmation.state.to_string(),
                });
            }
            let to = if accept {
                &confirmation.accept
            } else {
                &confirmation.reject
            };
            let mut next = current.clone();
            next.state = to.clone();
            controls::on_transition(def, actor, current, &mut next);
            if accept {
                next.fields
                    .insert("customer_confirmed".into(), Value::Bool(true));
            }
            let context = serde_json::json!({
                "transition": {"from": current.state, "to": next.state, "comment": comment},
                "confirmation": {"accept": accept},
            });
            Ok(Proposal {
                record: next,
                comment: comment.clone(),
                approval: None,
                context,
                visibility: None,
            })
        })
        .map(|committed| committed.record)
    }

    /// Records an approval decision on a record that is not finished; with `if_match`, only on
    /// the version the approver saw.
    #[instrument(skip_all, fields(record = %id))]
    pub fn approve(
        &self,
        actor: &Actor,
        id: &str,
        decision: Decision,
        comment: Option<String>,
        if_match: Option<u64>,
    ) -> Result<(Approval, Record), EngineError> {
        let comment = self.comment(comment)?;
        let target = WriteTarget {
            id,
            if_match,
            action: Action::Approval,
            cause: None,
        };
        let committed = self.write(actor, target, |current| {
            // Checked once the record is known to be visible: a record the actor cannot see is
            // not found, whatever the role.
            let groups = self.directory.groups_of(&actor.name, &current.domain);
            controls::may_approve(actor, &groups, current)?;
            let catalog = self.catalog_in(&current.domain);
            let def = kind_def(&catalog, current.kind.as_str())?;
            let inactive = def
                .lifecycle
                .state(&current.state)
                .is_some_and(|s| s.category == StateCategory::Inactive);
            if inactive {
                return Err(EngineError::RecordInactive {
                    id: current.id.clone(),
                    state: current.state.clone(),
                });
            }
            let approval = Approval {
                seq: 0,
                decision,
                comment: comment.clone(),
                actor: actor.name.clone(),
                roles: actor.roles.clone(),
                at: Timestamp::now(),
                state: current.state.clone(),
                record_version: 0,
                content: controls::material_digest(def, current),
                groups,
            };
            let context = serde_json::json!({"approval": approval});
            Ok(Proposal {
                record: current.clone(),
                comment: None,
                approval: Some(approval),
                context,
                visibility: None,
            })
        })?;
        let approval = committed.history.approval.ok_or_else(|| {
            EngineError::Store(StoreError::Corrupt {
                what: "approval",
                detail: "the committed entry lost its approval".into(),
            })
        })?;
        Ok((approval, committed.record))
    }

    /// The approvals of a record, oldest first.
    pub fn approvals(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<Vec<controls::ApprovalStatus>, EngineError> {
        let record = self.get(actor, id)?;
        self.approval_statuses(&record)
    }

    /// A record's approvals, each with whether it still approves the record's content.
    fn approval_statuses(
        &self,
        record: &Record,
    ) -> Result<Vec<controls::ApprovalStatus>, EngineError> {
        let catalog = self.catalog_in(&record.domain);
        let digest = catalog
            .get(&record.kind)
            .and_then(|def| controls::material_digest(def, record));
        Ok(self
            .store
            .approvals(&record.id)?
            .into_iter()
            .map(|approval| controls::ApprovalStatus {
                current: controls::is_current(&approval, digest.as_ref()),
                approval,
            })
            .collect())
    }

    /// The history of a record after version `after`, oldest first.
    pub fn history(
        &self,
        actor: &Actor,
        id: &str,
        after: u64,
        limit: Option<usize>,
    ) -> Result<Vec<HistoryEntry>, EngineError> {
        let record = self.get(actor, id)?;
        let limit = self.page_size(limit, self.config.limits.max_history_page)?;
        let mut entries = self.store.history(&record.id, after, limit)?;
        entries.retain(|entry| conversation::can_read(actor, entry));
        Ok(entries)
    }

    /// A page of the records matching the filters that the actor may see.
    pub fn list(&self, actor: &Actor, request: ListRequest) -> Result<ListPage, EngineError> {
        let ListFilters {
            kind,
            state,
            domain,
        } = self.list_filters(
            actor,
            request.kind.as_deref(),
            request.state.as_deref(),
            request.domain.as_deref(),
        )?;
        let mut query = ListQuery {
            kind,
            state,
            domain,
            within: actor.domains.clone(),
            owner: (!actor.works_records()).then(|| actor.name.clone()),
            after: None,
            limit: self.page_size(request.limit, self.config.limits.max_page)?,
        };
        if let Some(cursor) = &request.cursor {
            query.after = Some(cursor::decode(&query, cursor)?);
        }
        let page = self.store.list(&query)?;
        Ok(ListPage {
            records: page.records,
            next_cursor: page.next.map(|after| cursor::encode(&query, after)),
        })
    }

    /// Checks a listing's kind, state and domain filters: known to the catalog, and a domain the
    /// actor works in.
    pub fn list_filters(
        &self,
        actor: &Actor,
        kind: Option<&str>,
        state: Option<&str>,
        domain: Option<&str>,
    ) -> Result<ListFilters, EngineError> {
        // Every kind and state an installed module has: records a forced disabling left
        // read-only are still found by their kind.
        let catalog = Arc::clone(self.catalogs().installed());
        let kind = kind.map(|k| kind_def(&catalog, k)).transpose()?;
        let domain = domain.map(|d| self.domain(d)).transpose()?;
        let state = state.map(|s| known_state(&catalog, kind, s)).transpose()?;
        if let Some(domain) = &domain
            && !actor.in_domain(domain)
        {
            return Err(EngineError::Forbidden(format!(
                "{} may not list domain {domain}",
                actor.name
            )));
        }
        Ok(ListFilters {
            kind: kind.map(|k| k.name.clone()),
            state,
            domain,
        })
    }

    /// The page size of a record listing: `limit`, or the default, within the configured bound.
    pub fn list_page_size(&self, limit: Option<usize>) -> Result<usize, EngineError> {
        self.page_size(limit, self.config.limits.max_page)
    }

    /// The optimistic write loop shared by update, transition and approval.
    fn write(
        &self,
        actor: &Actor,
        target: WriteTarget<'_>,
        propose: impl Fn(&Record) -> Result<Proposal, EngineError>,
    ) -> Result<Committed, EngineError> {
        let WriteTarget {
            id,
            if_match,
            action,
            cause,
        } = target;
        let id = parse_id(id)?;
        let _gate = self
            .catalog_gate
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let attempts = self.config.limits.write_attempts;
        // A comment runs no pipeline: rules govern the record, not the conversation about it.
        let hook = match action {
            Action::Create | Action::Update => Some(Hook::Update),
            Action::Transition => Some(Hook::Transition),
            Action::Approval => Some(Hook::Approval),
            Action::Comment | Action::Attachment => None,
        };
        let pipelines = self.pipelines();
        for _ in 0..attempts {
            let current = self
                .store
                .get(&id)?
                .filter(|record| visible(actor, record))
                .ok_or_else(|| EngineError::NotFound(id.to_string()))?;
            self.writable(&current)?;
            if action == Action::Update && !actor.works_records() {
                return Err(EngineError::Forbidden(
                    "requesters follow their records through transitions and comments; editing needs the agent role".into(),
                ));
            }
            if let Some(expected) = if_match
                && expected != current.version
            {
                return Err(EngineError::VersionMismatch {
                    id,
                    expected,
                    current: current.version,
                });
            }
            let Proposal {
                mut record,
                comment,
                approval,
                mut context,
                visibility,
            } = propose(&current)?;
            let now = Timestamp::now();
            record.updated_at = now;
            record.updated_by = actor.name.clone();
            let (record, steps) = match hook {
                Some(hook) => {
                    let has_steps = !pipelines
                        .steps(&current.domain, current.process, hook, Phase::Before)
                        .is_empty();
                    if has_steps && matches!(hook, Hook::Transition | Hook::Approval) {
                        self.add_relations(&current, &mut context)?;
                    }
                    self.run_before(
                        &pipelines,
                        None,
                        hook,
                        actor,
                        record,
                        Some(&current),
                        context,
                        cause.is_none(),
                    )?
                }
                None => (record, Vec::new()),
            };
            if record.fields != current.fields {
                // An unchanged agreement can still be expired or terminated.
                sla::validate::agreement(&record)?;
            }
            let stale_approvals = self.staled_approvals(&current, &record)?;
            let history = HistoryEntry {
                version: current.version + 1,
                at: now,
                actor: actor.name.clone(),
                action,
                comment,
                changes: diff_records(Some(&current), &record),
                approval,
                steps,
                cause: cause.clone(),
                visibility,
                stale_approvals,
                by_agent: sla::acts_as_agent(actor, cause.is_some()),
            };
            let write = Write {
                record,
                history,
                expected: Expected::Version(current.version),
            };
            match self.store.commit(write) {
                Ok(committed) => {
                    self.commits.notify();
                    tracing::info!(
                        version = committed.record.version,
                        ?action,
                        "record written"
                    );
                    return Ok(committed);
                }
                Err(StoreError::VersionMismatch { .. }) if if_match.is_none() => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(EngineError::WriteConflict {
            id: id.to_string(),
            attempts,
        })
    }

    /// The approvals that held for `current` and no longer hold for `next`: a material field
    /// changed under them.
    fn staled_approvals(&self, current: &Record, next: &Record) -> Result<Vec<u64>, EngineError> {
        let catalog = self.catalog_in(&current.domain);
        let Ok(def) = kind_def(&catalog, current.kind.as_str()) else {
            return Ok(Vec::new());
        };
        let before = controls::material_digest(def, current);
        let after = controls::material_digest(def, next);
        if before == after {
            return Ok(Vec::new());
        }
        Ok(self
            .store
            .approvals(&current.id)?
            .into_iter()
            .filter(|a| a.content.is_some() && a.content == before)
            .map(|a| a.seq)
            .collect())
    }

    /// Adds what rules about transitions and approvals need to see: the record's approvals so
    /// far, each with whether it still holds (`current`), and the records linking to it
    /// (`children`, with whether each is still active).
    fn add_relations(&self, current: &Record, context: &mut Value) -> Result<(), EngineError> {
        /// Most linking records handed to steps.
        const MAX_CHILDREN: usize = 200;
        let catalogs = self.catalogs();
        let approvals = self.approval_statuses(current)?;
        let mut children = Vec::new();
        for (rel, source) in self
            .store
            .backlinks(&current.id)?
            .into_iter()
            .take(MAX_CHILDREN)
        {
            let Some(child) = self.store.get(&source)? else {
                continue;
            };
            let active = !is_finished(&catalogs, &child);
            children.push(serde_json::json!({
                "id": child.id, "rel": rel, "kind": child.kind, "state": child.state,
                "domain": child.domain, "active": active,
            }));
        }
        if !context.is_object() {
            *context = Value::Object(Map::new());
        }
        if let Value::Object(map) = context {
            map.insert(
                "approvals".into(),
                serde_json::to_value(approvals).unwrap_or_default(),
            );
            map.insert("children".into(), Value::Array(children));
        }
        Ok(())
    }

    /// Runs the before-phase of `hook` on a proposed record. A client's write (`admitted`)
    /// first waits for its turn: background effects are already paced by their workers.
    #[allow(clippy::too_many_arguments)]
    /// `catalogs` replaces the catalogs in force (a preview's, with a module's additions).
    fn run_before(
        &self,
        pipelines: &Pipelines,
        catalogs: Option<&Catalogs>,
        hook: Hook,
        actor: &Actor,
        proposed: Record,
        previous: Option<&Record>,
        context: Value,
        admitted: bool,
    ) -> Result<(Record, Vec<usm_model::StepRun>), EngineError> {
        let steps = pipelines.steps(&proposed.domain, proposed.process, hook, Phase::Before);
        let _turn = if admitted && steps.iter().any(|s| s.applies_to(&proposed.kind)) {
            Some(self.admission.enter()?)
        } else {
            None
        };
        pipeline::BeforeRun {
            steps,
            hook,
            actor,
            previous,
            context,
            max_patch_depth: self.config.limits.max_patch_depth,
            breaker: &self.config.breaker,
        }
        .run(proposed, |module, before, mut candidate| {
            candidate.title = self.title(&candidate.title)?;
            self.check_links(actor, &candidate.links, previous)?;
            let catalog = catalogs.map_or_else(
                || self.catalog_in(&candidate.domain),
                |catalogs| Arc::clone(catalogs.domain(&candidate.domain)),
            );
            let def = kind_def(&catalog, candidate.kind.as_str())?;
            controls::check_step(def, module, &before.fields, &candidate.fields)?;
            candidate.fields = valid_fields(&catalog, def, std::mem::take(&mut candidate.fields))?;
            Ok(candidate)
        })
        .and_then(|(record, steps)| {
            // Checked on the final record: whoever set the assignment, a client or a routing step.
            controls::check_assignment(&self.directory, previous, &record)?;
            Ok((record, steps))
        })
    }

    fn domain(&self, name: &str) -> Result<Domain, EngineError> {
        Domain::new(name)
            .ok()
            .filter(|d| self.config.domains.contains(d))
            .ok_or_else(|| {
                let known: Vec<_> = self.config.domains.iter().map(Domain::as_str).collect();
                EngineError::invalid(
                    "/domain",
                    format!(
                        "unknown domain {:?}; domains: {}",
                        name.chars().take(64).collect::<String>(),
                        known.join(", ")
                    ),
                )
            })
    }

    /// Bounds the shape of client-supplied fields: nesting depth, member count, string length.
    fn check_size(&self, fields: &Map<String, Value>) -> Result<(), EngineError> {
        let limits = &self.config.limits;
        let mut members = 0usize;
        let mut stack: Vec<(&Value, usize, String)> = Vec::new();
        push_members(&mut stack, fields, 1, "/fields")?;
        while let Some((value, depth, path)) = stack.pop() {
            members += 1;
            if members > limits.max_field_members {
                return Err(EngineError::invalid(
                    "/fields",
                    format!("at most {} members in all", limits.max_field_members),
                ));
            }
            if depth > limits.max_field_depth {
                return Err(EngineError::invalid(
                    path,
                    format!("nested deeper than {} levels", limits.max_field_depth),
                ));
            }
            match value {
                Value::String(s) if s.len() > limits.max_string_bytes => {
                    return Err(EngineError::invalid(
                        path,
                        format!("longer than {} bytes", limits.max_string_bytes),
                    ));
                }
                Value::String(s) if s.contains('\0') => {
                    return Err(EngineError::invalid(path, "must not contain NUL"));
                }
                // JSON integers past i64/u64 arrive as floats, rounded: refuse what cannot be
                // kept exactly rather than store another number than the one sent.
                Value::Number(n)
                    if n.as_f64()
                        .is_some_and(|f| n.is_f64() && f.abs() >= I64_SPAN) =>
                {
                    return Err(EngineError::invalid(
                        path,
                        "numbers must lie within ±2^63 (send larger ones as strings)",
                    ));
                }
                Value::Array(items) => stack.extend(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (v, depth + 1, format!("{path}/{i}"))),
                ),
                Value::Object(map) => push_members(&mut stack, map, depth + 1, &path)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn title(&self, title: &str) -> Result<String, EngineError> {
        let title = title.trim();
        let max = self.config.limits.max_title_chars;
        if title.is_empty() {
            return Err(EngineError::invalid("/title", "must not be empty"));
        }
        if title.chars().count() > max {
            return Err(EngineError::invalid(
                "/title",
                format!("must be at most {max} characters"),
            ));
        }
        if title.chars().any(char::is_control) {
            return Err(EngineError::invalid(
                "/title",
                "must not contain control characters",
            ));
        }
        Ok(title.to_owned())
    }

    fn comment(&self, comment: Option<String>) -> Result<Option<String>, EngineError> {
        let max = self.config.limits.max_comment_chars;
        match comment {
            Some(c) if c.chars().count() > max => Err(EngineError::invalid(
                "/comment",
                format!("must be at most {max} characters"),
            )),
            Some(c) if c.trim().is_empty() => Ok(None),
            other => Ok(other),
        }
    }

    /// Checks a record's links. A new link to a record the actor cannot see answers exactly as
    /// one to a record that does not exist, so links tell nothing about other domains or other
    /// people's records (links the record already had stay, whoever works it now).
    fn check_links(
        &self,
        actor: &Actor,
        links: &[Link],
        previous: Option<&Record>,
    ) -> Result<(), EngineError> {
        let own_id = previous.map(|p| &p.id);
        let max = self.config.limits.max_links;
        if links.len() > max {
            return Err(EngineError::invalid(
                "/links",
                format!("at most {max} links"),
            ));
        }
        for (i, link) in links.iter().enumerate() {
            let field = format!("/links/{i}/to");
            if links[..i].contains(link) {
                return Err(EngineError::invalid(
                    format!("/links/{i}"),
                    "duplicate link",
                ));
            }
            if Some(&link.to) == own_id {
                return Err(EngineError::invalid(
                    field,
                    "a record cannot link to itself",
                ));
            }
            if previous.is_some_and(|p| p.links.contains(link)) {
                continue;
            }
            let seen = self
                .store
                .get(&link.to)?
                .is_some_and(|target| visible(actor, &target));
            if !seen {
                return Err(EngineError::UnknownLinkTarget {
                    field,
                    target: link.to.clone(),
                });
            }
        }
        Ok(())
    }

    fn page_size(&self, limit: Option<usize>, max: usize) -> Result<usize, EngineError> {
        match limit {
            None => Ok(self.config.limits.default_page.min(max)),
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(_) => Err(EngineError::invalid(
                "limit",
                format!("must be between 1 and {max}"),
            )),
        }
    }

    fn idempotency_claim(
        &self,
        actor: &Actor,
        key: &str,
        new: &NewRecord,
    ) -> Result<IdempotencyClaim, EngineError> {
        let max = self.config.limits.max_idempotency_key;
        let printable = key.bytes().all(|b| (0x21..=0x7e).contains(&b));
        if key.is_empty() || key.len() > max || !printable {
            return Err(EngineError::invalid(
                "Idempotency-Key",
                format!("must be 1 to {max} printable ASCII characters"),
            ));
        }
        let mut hasher = Sha256::new();
        hasher.update(new.kind.as_bytes());
        hasher.update([0]);
        hasher.update(new.domain.as_deref().unwrap_or("").as_bytes());
        hasher.update([0]);
        hasher.update(new.title.as_bytes());
        hasher.update([0]);
        // serde_json maps are sorted, so this serialisation is canonical.
        hasher.update(serde_json::to_vec(&new.fields).unwrap_or_default());
        hasher.update(serde_json::to_vec(&new.links).unwrap_or_default());
        let request_hash = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(IdempotencyClaim {
            key: format!("{}\u{0}{key}", actor.name),
            request_hash,
        })
    }
}

/// What a write proposes, computed from the current record.
struct Proposal {
    record: Record,
    comment: Option<String>,
    approval: Option<Approval>,
    /// Hook details for the pipeline steps.
    context: Value,
    /// Who reads the comment, for a comment.
    visibility: Option<usm_model::Visibility>,
}

/// Which record a write changes, and how.
struct WriteTarget<'a> {
    id: &'a str,
    if_match: Option<u64>,
    action: Action,
    cause: Option<Cause>,
}

/// Whether `actor` may see `record`: in the actor's domains, and for requesters only records
/// they created or requested.
/// The definition of the kind called `name`, or the error listing the known kinds.
fn kind_def<'c>(catalog: &'c Catalog, name: &str) -> Result<&'c KindDef, EngineError> {
    Kind::new(name)
        .ok()
        .and_then(|kind| catalog.get(&kind))
        .ok_or_else(|| EngineError::UnknownKind {
            kind: name.chars().take(64).collect(),
            known: catalog
                .kinds()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// `name` as a state of `kind`, or of any kind when none is given.
fn known_state(
    catalog: &Catalog,
    kind: Option<&KindDef>,
    name: &str,
) -> Result<State, EngineError> {
    let candidates: Vec<&KindDef> = match kind {
        Some(def) => vec![def],
        None => catalog.kinds().collect(),
    };
    let states: BTreeSet<State> = candidates
        .iter()
        .flat_map(|def| def.lifecycle.states().iter().map(|s| s.name.clone()))
        .collect();
    match State::new(name) {
        Ok(state) if states.contains(&state) => Ok(state),
        _ => Err(EngineError::UnknownState {
            state: name.chars().take(64).collect(),
            kind: kind.map_or_else(|| "any kind".to_owned(), |k| k.name.to_string()),
            states: states.into_iter().collect(),
        }),
    }
}

/// `fields` once they pass the kind's schema.
fn valid_fields(
    catalog: &Catalog,
    def: &KindDef,
    fields: Map<String, Value>,
) -> Result<Map<String, Value>, EngineError> {
    let value = Value::Object(fields);
    catalog
        .validate_fields(&def.name, &value)
        .map_err(|errors| EngineError::InvalidFields {
            kind: def.name.to_string(),
            errors,
        })?;
    match value {
        Value::Object(fields) => Ok(fields),
        _ => unreachable!("constructed as an object above"),
    }
}

/// Whether `record` is in an inactive (finished) state of its kind's lifecycle in its domain.
fn is_finished(catalogs: &Catalogs, record: &Record) -> bool {
    catalogs
        .domain(&record.domain)
        .get(&record.kind)
        .and_then(|def| def.lifecycle.state(&record.state))
        .is_some_and(|state| state.category == StateCategory::Inactive)
}

fn visible(actor: &Actor, record: &Record) -> bool {
    actor.in_domain(&record.domain)
        && (actor.works_records()
            || record.created_by == actor.name
            || record.fields.get("requester").and_then(Value::as_str) == Some(actor.name.as_str())
            // A manager approving a report's order sees what they decide on.
            || controls::approvers_of(record).any(|approver| approver == actor.name))
}

/// 2^63: floats at or past it in magnitude are integers JSON could not carry exactly.
const I64_SPAN: f64 = 9_223_372_036_854_775_808.0;

/// Queues the members of an object in `fields` for checking; refuses NUL in member names.
fn push_members<'a>(
    stack: &mut Vec<(&'a Value, usize, String)>,
    map: &'a Map<String, Value>,
    depth: usize,
    path: &str,
) -> Result<(), EngineError> {
    for (key, value) in map {
        if key.contains('\0') {
            return Err(EngineError::invalid(
                path.to_owned(),
                "member names must not contain NUL",
            ));
        }
        stack.push((value, depth, format!("{path}/{key}")));
    }
    Ok(())
}

/// An id that cannot exist is simply not found; callers need not learn our id syntax.
fn parse_id(id: &str) -> Result<RecordId, EngineError> {
    RecordId::parse(id).map_err(|_| EngineError::NotFound(id.chars().take(64).collect()))
}

#[cfg(test)]
mod tests;
