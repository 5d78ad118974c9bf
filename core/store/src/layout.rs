//! The key layout and the write transaction, written once against a tiny key-value interface
//! that both backends implement.

use std::time::Duration;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use usm_model::{
    Action, Approval, Event, EventType, HistoryEntry, LinkRel, Record, RecordId, Timestamp,
};

use crate::{Committed, Expected, ListQuery, StoreError, Write};

/// The named trees; the only way code reaches a tree (no string lookups).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TreeId {
    /// record id → [`StoredRecord`]
    Records,
    /// record id, 0, version (u64 BE) → [`HistoryEntry`]
    History,
    /// record id, 0, approval seq (u64 BE) → [`Approval`]
    Approvals,
    /// index tag, components each followed by 0, creation seq (u64 BE) → record id
    Index,
    /// target id, 0, rel, 0, source id → empty
    Backlinks,
    /// event seq (u64 BE) → [`Event`]
    Outbox,
    /// counter name → u64 BE
    Counters,
    /// idempotency key → [`IdempotencyEntry`]
    Idempotency,
    /// content key → compiled artifact bytes (serialised WASM components, module bundles)
    Artifacts,
    /// setting key → bytes (installed modules, enablement, workflows, tokens, …)
    Settings,
    /// audit seq (u64 BE) → audit entry (JSON)
    Audit,
    /// due time (ms, u64 BE), record id, 0, clock, 0, level → [`Timer`]
    Timers,
    /// record id → the keys of its timers (JSON list)
    TimerOwners,
    /// binding time (ms, u64 BE), idempotency key → empty: the keys in the order they expire
    IdempotencyExpiry,
}

impl TreeId {
    /// Every tree, in the order backends open them (index = `self as usize`).
    pub const ALL: [TreeId; 14] = [
        Self::Records,
        Self::History,
        Self::Approvals,
        Self::Index,
        Self::Backlinks,
        Self::Outbox,
        Self::Counters,
        Self::Idempotency,
        Self::Artifacts,
        Self::Settings,
        Self::Audit,
        Self::Timers,
        Self::TimerOwners,
        Self::IdempotencyExpiry,
    ];

    /// The tree's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Self::Records => "records",
            Self::History => "history",
            Self::Approvals => "approvals",
            Self::Index => "index",
            Self::Backlinks => "backlinks",
            Self::Outbox => "outbox",
            Self::Counters => "counters",
            Self::Idempotency => "idempotency",
            Self::Artifacts => "artifacts",
            Self::Settings => "settings",
            Self::Audit => "audit",
            Self::Timers => "timers",
            Self::TimerOwners => "timer_owners",
            Self::IdempotencyExpiry => "idempotency_expiry",
        }
    }
}

/// The version of this layout; stored under [`FORMAT_KEY`] and checked on open. Version 2
/// compresses long values; version 1 stores are read as they are and marked 2 when opened.
pub const FORMAT_VERSION: u64 = 2;
/// Older layouts this build reads and upgrades in place.
pub const READABLE_FORMATS: std::ops::RangeInclusive<u64> = 1..=FORMAT_VERSION;
/// Counter key holding the layout version.
pub const FORMAT_KEY: &[u8] = b"~format";
const CREATED_COUNTER: &[u8] = b"~created";
const OUTBOX_COUNTER: &[u8] = b"~outbox";

/// A failed transaction: either our own abort or a backend error.
pub enum TxFail<E> {
    /// The transaction's own decision, returned to the caller as it is.
    Abort(StoreError),
    /// The key-value engine failed (a conflict to retry, or an error).
    Kv(E),
}

impl<E> From<StoreError> for TxFail<E> {
    fn from(error: StoreError) -> Self {
        Self::Abort(error)
    }
}

/// Reads and writes inside one transaction.
pub trait KvTx {
    /// The engine's error.
    type Error;
    /// The value under `key`, as this transaction sees it (including its own writes).
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, TxFail<Self::Error>>;
    /// Sets `key` to `value`.
    fn insert(&self, tree: TreeId, key: &[u8], value: Vec<u8>) -> Result<(), TxFail<Self::Error>>;
    /// Removes `key`, if present.
    fn remove(&self, tree: TreeId, key: &[u8]) -> Result<(), TxFail<Self::Error>>;
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Reads outside transactions.
pub trait KvRead {
    /// The committed value under `key`.
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Up to `limit` entries whose key starts with `prefix`, from `start` (inclusive) on.
    fn scan(
        &self,
        tree: TreeId,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;
}

/// A record with its position in creation order (the key of its index entries).
#[derive(Serialize, Deserialize)]
pub struct StoredRecord {
    pub seq: u64,
    pub record: Record,
}

/// What an idempotency key is bound to.
#[derive(Serialize, Deserialize)]
pub struct IdempotencyEntry {
    record_id: RecordId,
    request_hash: String,
    at: Timestamp,
    /// The record as the first request created it, which a replay answers with (absent in
    /// entries written before replays returned it).
    #[serde(default)]
    record: Option<Record>,
}

/// The key of an idempotency key's entry in [`TreeId::IdempotencyExpiry`].
fn expiry_key(at: Timestamp, key: &[u8]) -> Vec<u8> {
    let millis = u64::try_from(at.as_millisecond()).unwrap_or(0);
    let mut expiry = millis.to_be_bytes().to_vec();
    expiry.extend_from_slice(key);
    expiry
}

/// The first byte of a compressed (raw DEFLATE) value: never the first byte of JSON text, so
/// values written before compression (format 1) read as they are.
const DEFLATE_TAG: u8 = 0x01;
/// DEFLATE's fastest level: on a record's JSON it keeps about 60 % of the bytes, as higher
/// levels do, for a fraction of their time.
const DEFLATE_LEVEL: u8 = 1;
/// Values shorter than this stay plain JSON: compressing them saves little and costs a copy.
const COMPRESS_FROM: usize = 256;
/// The largest value decompression will allocate for; a longer claim is corruption.
const MAX_VALUE_BYTES: usize = 64 << 20;

/// A value as stored: JSON, DEFLATE-compressed when that is worth it (a record's JSON keeps
/// about 60 % of its bytes; LZ4, tried first, kept 85 %).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let json = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        what: "value to encode",
        detail: e.to_string(),
    })?;
    if json.len() < COMPRESS_FROM {
        return Ok(json);
    }
    let length = u32::try_from(json.len()).map_err(|_| StoreError::Corrupt {
        what: "value to encode",
        detail: format!("{} bytes is too long", json.len()),
    })?;
    let compressed = miniz_oxide::deflate::compress_to_vec(&json, DEFLATE_LEVEL);
    let mut stored = Vec::with_capacity(5 + compressed.len());
    stored.push(DEFLATE_TAG);
    stored.extend_from_slice(&length.to_le_bytes());
    stored.extend_from_slice(&compressed);
    Ok(stored)
}

pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt { what, detail };
    let inflated;
    let json = match bytes.split_first() {
        Some((&DEFLATE_TAG, rest)) => {
            let (length, compressed) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| corrupt("a compressed value without its length".into()))?;
            let length = u32::from_le_bytes(*length) as usize;
            if length > MAX_VALUE_BYTES {
                return Err(corrupt(format!("a compressed value claims {length} bytes")));
            }
            inflated = miniz_oxide::inflate::decompress_to_vec_with_limit(compressed, length)
                .map_err(|e| corrupt(format!("cannot inflate: {e}")))?;
            if inflated.len() != length {
                return Err(corrupt(format!(
                    "inflated to {} bytes, not the {length} recorded",
                    inflated.len()
                )));
            }
            inflated.as_slice()
        }
        _ => bytes,
    };
    serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))
}

pub fn decode_u64(what: &'static str, bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        what,
        detail: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(array))
}

/// `a`, 0, `n` as u64 BE: keys of per-record sequences (history, approvals).
pub fn child_key(id: &RecordId, n: u64) -> Vec<u8> {
    let mut key = child_prefix(id);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

pub fn child_prefix(id: &RecordId) -> Vec<u8> {
    let mut key = Vec::with_capacity(id.as_str().len() + 9);
    key.extend_from_slice(id.as_str().as_bytes());
    key.push(0);
    key
}

/// Index entries exist for every subset of {domain, kind, state}; the subset is the tag byte, so a
/// listing with any combination of filters reads exactly the entries it returns.
const DOMAIN_BIT: u8 = 1;
const KIND_BIT: u8 = 2;
const STATE_BIT: u8 = 4;

fn index_prefix(tag: u8, domain: &str, kind: &str, state: &str) -> Vec<u8> {
    let mut key = vec![tag];
    for (bit, part) in [(DOMAIN_BIT, domain), (KIND_BIT, kind), (STATE_BIT, state)] {
        if tag & bit != 0 {
            key.extend_from_slice(part.as_bytes());
            key.push(0);
        }
    }
    key
}

fn index_keys(record: &Record, seq: u64) -> Vec<Vec<u8>> {
    (0..8u8)
        .map(|tag| {
            let mut key = index_prefix(
                tag,
                record.domain.as_str(),
                record.kind.as_str(),
                record.state.as_str(),
            );
            key.extend_from_slice(&seq.to_be_bytes());
            key
        })
        .collect()
}

/// The index prefix serving `query`.
pub fn query_prefix(query: &ListQuery) -> Vec<u8> {
    let mut tag = 0;
    tag |= if query.domain.is_some() {
        DOMAIN_BIT
    } else {
        0
    };
    tag |= if query.kind.is_some() { KIND_BIT } else { 0 };
    tag |= if query.state.is_some() { STATE_BIT } else { 0 };
    index_prefix(
        tag,
        query.domain.as_ref().map_or("", |d| d.as_str()),
        query.kind.as_ref().map_or("", |k| k.as_str()),
        query.state.as_ref().map_or("", |s| s.as_str()),
    )
}

/// The creation sequence number at the end of an index key.
pub fn index_seq(key: &[u8]) -> Result<u64, StoreError> {
    let tail = key.len().checked_sub(8).ok_or(StoreError::Corrupt {
        what: "index key",
        detail: "shorter than 8 bytes".into(),
    })?;
    decode_u64("index key", &key[tail..])
}

fn backlink_key(target: &RecordId, rel: LinkRel, source: &RecordId) -> Vec<u8> {
    let mut key = child_prefix(target);
    key.extend_from_slice(rel.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(source.as_str().as_bytes());
    key
}

/// Splits a backlink key (without the target prefix) into relation and source.
pub fn parse_backlink(rest: &[u8]) -> Result<(LinkRel, RecordId), StoreError> {
    let corrupt = |detail: &str| StoreError::Corrupt {
        what: "backlink key",
        detail: detail.to_owned(),
    };
    let text = std::str::from_utf8(rest).map_err(|_| corrupt("not UTF-8"))?;
    let (rel, source) = text
        .split_once('\0')
        .ok_or_else(|| corrupt("no separator"))?;
    let rel: LinkRel = serde_json::from_value(serde_json::Value::from(rel))
        .map_err(|_| corrupt("unknown relation"))?;
    let source = RecordId::parse(source).map_err(|_| corrupt("bad source id"))?;
    Ok((rel, source))
}

fn next_counter<T: KvTx>(tx: &T, name: &[u8]) -> Result<u64, TxFail<T::Error>> {
    let current = match tx.get(TreeId::Counters, name)? {
        Some(bytes) => decode_u64("counter", &bytes)?,
        None => 0,
    };
    let next = current + 1;
    tx.insert(TreeId::Counters, name, next.to_be_bytes().to_vec())?;
    Ok(next)
}

/// Applies `write` inside a transaction. Pure apart from `tx`: backends may run it more than once.
pub fn apply_write<T: KvTx>(
    tx: &T,
    write: &Write,
    idempotency_ttl: Duration,
) -> Result<Committed, TxFail<T::Error>> {
    let mut record = write.record.clone();
    let mut history = write.history.clone();
    let now = history.at;

    let (seq, old) = match &write.expected {
        Expected::Create {
            prefix,
            idempotency,
        } => {
            if let Some(claim) = idempotency
                && let Some(bytes) = tx.get(TreeId::Idempotency, claim.key.as_bytes())?
            {
                let entry: IdempotencyEntry = decode("idempotency entry", &bytes)?;
                let age = now.duration_since(entry.at);
                if age.unsigned_abs() < idempotency_ttl {
                    return Err(TxFail::Abort(StoreError::IdempotencyKeyUsed {
                        record_id: entry.record_id,
                        request_hash: entry.request_hash,
                        record: entry.record.map(Box::new),
                    }));
                }
            }
            let number = next_counter(tx, prefix.as_bytes())?;
            record.id = RecordId::from_parts(prefix, number);
            record.version = 1;
            if let Some(claim) = idempotency {
                let entry = IdempotencyEntry {
                    record_id: record.id.clone(),
                    request_hash: claim.request_hash.clone(),
                    at: now,
                    record: Some(record.clone()),
                };
                tx.insert(TreeId::Idempotency, claim.key.as_bytes(), encode(&entry)?)?;
                tx.insert(
                    TreeId::IdempotencyExpiry,
                    &expiry_key(now, claim.key.as_bytes()),
                    Vec::new(),
                )?;
            }
            (next_counter(tx, CREATED_COUNTER)?, None)
        }
        Expected::Version(expected) => {
            let bytes = tx
                .get(TreeId::Records, record.id.as_str().as_bytes())?
                .ok_or_else(|| StoreError::NotFound(record.id.clone()))?;
            let stored: StoredRecord = decode("record", &bytes)?;
            if stored.record.version != *expected {
                return Err(TxFail::Abort(StoreError::VersionMismatch {
                    id: record.id.clone(),
                    expected: *expected,
                    current: stored.record.version,
                }));
            }
            record.version = expected + 1;
            (stored.seq, Some(stored.record))
        }
    };

    // Index entries: drop the ones that no longer hold, add the new ones.
    let new_keys = index_keys(&record, seq);
    let old_keys = old.as_ref().map(|o| index_keys(o, seq)).unwrap_or_default();
    for key in old_keys.iter().filter(|k| !new_keys.contains(k)) {
        tx.remove(TreeId::Index, key)?;
    }
    for key in new_keys.iter().filter(|k| !old_keys.contains(k)) {
        tx.insert(TreeId::Index, key, record.id.as_str().as_bytes().to_vec())?;
    }

    let old_links = old.as_ref().map(|o| o.links.as_slice()).unwrap_or_default();
    for link in old_links.iter().filter(|l| !record.links.contains(l)) {
        tx.remove(
            TreeId::Backlinks,
            &backlink_key(&link.to, link.rel, &record.id),
        )?;
    }
    for link in record.links.iter().filter(|l| !old_links.contains(l)) {
        tx.insert(
            TreeId::Backlinks,
            &backlink_key(&link.to, link.rel, &record.id),
            Vec::new(),
        )?;
    }

    history.version = record.version;
    if let Some(approval) = history.approval.as_mut() {
        let mut counter = b"~approvals/".to_vec();
        counter.extend_from_slice(record.id.as_str().as_bytes());
        approval.seq = next_counter(tx, &counter)?;
        approval.record_version = record.version;
        tx.insert(
            TreeId::Approvals,
            &child_key(&record.id, approval.seq),
            encode::<Approval>(approval)?,
        )?;
    }
    tx.insert(
        TreeId::History,
        &child_key(&record.id, record.version),
        encode(&history)?,
    )?;

    let stored = StoredRecord { seq, record };
    tx.insert(
        TreeId::Records,
        stored.record.id.as_str().as_bytes(),
        encode(&stored)?,
    )?;

    let event = Event {
        seq: next_counter(tx, OUTBOX_COUNTER)?,
        event_type: EventType::from(history.action),
        record_id: stored.record.id.clone(),
        kind: stored.record.kind.clone(),
        domain: stored.record.domain.clone(),
        version: stored.record.version,
        state: stored.record.state.clone(),
        actor: history.actor.clone(),
        at: now,
        depth: history.cause.as_ref().map_or(0, |c| c.depth),
        payload: None,
    };
    tx.insert(TreeId::Outbox, &event.seq.to_be_bytes(), encode(&event)?)?;
    next_counter(tx, &generation_key(&format!("kind/{}", stored.record.kind)))?;
    debug_assert!(old.is_some() || history.action == Action::Create);
    Ok(Committed {
        record: stored.record,
        history,
        event,
    })
}

/// Appends a notification event inside a transaction.
pub fn apply_notification<T: KvTx>(
    tx: &T,
    record: &Record,
    actor: &str,
    depth: u32,
    payload: &serde_json::Value,
) -> Result<Event, TxFail<T::Error>> {
    let event = Event {
        seq: next_counter(tx, OUTBOX_COUNTER)?,
        event_type: EventType::Notification,
        record_id: record.id.clone(),
        kind: record.kind.clone(),
        domain: record.domain.clone(),
        version: record.version,
        state: record.state.clone(),
        actor: actor.to_owned(),
        at: Timestamp::now(),
        depth,
        payload: Some(payload.clone()),
    };
    tx.insert(TreeId::Outbox, &event.seq.to_be_bytes(), encode(&event)?)?;
    Ok(event)
}

/// The counter key of a named outbox consumer's cursor.
pub fn cursor_key(consumer: &str) -> Vec<u8> {
    format!("~cursor/{consumer}").into_bytes()
}

/// Reads a page of records for `query` through the index.
/// Index entries read per batch when filters not served by an index drop records.
const LIST_BATCH: usize = 256;
/// Most index entries one page may read; past it the page ends early with a cursor.
const LIST_SCAN_BUDGET: usize = 10_000;

/// Reads a page of records for `query` through the index. Filters the index cannot serve (the
/// caller's domain scope, ownership) are applied while scanning, within a scan budget; a page may
/// then hold fewer than `limit` records and still have a `next` position.
pub fn list<R: KvRead>(reader: &R, query: &ListQuery) -> Result<crate::Page, StoreError> {
    let prefix = query_prefix(query);
    let mut from = query.after.map_or(0, |after| after.saturating_add(1));
    let mut records = Vec::with_capacity(query.limit.min(LIST_BATCH));
    let mut scanned = 0;
    let post_filtered = query.within.is_some() || query.owner.is_some();
    loop {
        let want = if post_filtered {
            LIST_BATCH
        } else {
            query.limit - records.len() + 1
        };
        let mut start = prefix.clone();
        start.extend_from_slice(&from.to_be_bytes());
        let entries = reader.scan(TreeId::Index, &prefix, &start, want)?;
        let exhausted = entries.len() < want;
        for (key, id) in &entries {
            let seq = index_seq(key)?;
            if records.len() == query.limit {
                // One more entry exists past a full page.
                return Ok(crate::Page {
                    records,
                    next: Some(seq.saturating_sub(1)),
                });
            }
            from = seq.saturating_add(1);
            scanned += 1;
            let Some(bytes) = reader.get(TreeId::Records, id)? else {
                return Err(StoreError::Corrupt {
                    what: "index entry",
                    detail: format!("points at a missing record {}", String::from_utf8_lossy(id)),
                });
            };
            let record = decode::<StoredRecord>("record", &bytes)?.record;
            if matches(query, &record) {
                records.push(record);
            }
        }
        if exhausted {
            return Ok(crate::Page {
                records,
                next: None,
            });
        }
        if scanned >= LIST_SCAN_BUDGET && records.len() < query.limit {
            return Ok(crate::Page {
                records,
                next: Some(from.saturating_sub(1)),
            });
        }
    }
}

/// Whether a record satisfies every filter of the query. Index filters are checked again: the
/// record may have moved on since its index entry was read.
fn matches(query: &ListQuery, record: &Record) -> bool {
    let owned = |owner: &String| {
        &record.created_by == owner
            || record.fields.get("requester").and_then(|v| v.as_str()) == Some(owner.as_str())
    };
    query.kind.as_ref().is_none_or(|k| k == &record.kind)
        && query.state.as_ref().is_none_or(|s| s == &record.state)
        && query.domain.as_ref().is_none_or(|d| d == &record.domain)
        && query
            .within
            .as_ref()
            .is_none_or(|domains| domains.contains(&record.domain))
        && query.owner.as_ref().is_none_or(owned)
}

/// A record by its id.
pub fn get<R: KvRead>(reader: &R, id: &RecordId) -> Result<Option<Record>, StoreError> {
    reader
        .get(TreeId::Records, id.as_str().as_bytes())?
        .map(|bytes| decode::<StoredRecord>("record", &bytes).map(|s| s.record))
        .transpose()
}

/// A record's history entries above version `after`, oldest first.
pub fn history<R: KvRead>(
    reader: &R,
    id: &RecordId,
    after: u64,
    limit: usize,
) -> Result<Vec<HistoryEntry>, StoreError> {
    let start = child_key(id, after.saturating_add(1));
    reader
        .scan(TreeId::History, &child_prefix(id), &start, limit)?
        .iter()
        .map(|(_, bytes)| decode("history entry", bytes))
        .collect()
}

/// A record's approvals, oldest first.
pub fn approvals<R: KvRead>(reader: &R, id: &RecordId) -> Result<Vec<Approval>, StoreError> {
    let prefix = child_prefix(id);
    reader
        .scan(TreeId::Approvals, &prefix, &prefix, usize::MAX)?
        .iter()
        .map(|(_, bytes)| decode("approval", bytes))
        .collect()
}

/// The records linking to `id`.
pub fn backlinks<R: KvRead>(
    reader: &R,
    id: &RecordId,
) -> Result<Vec<(LinkRel, RecordId)>, StoreError> {
    let prefix = child_prefix(id);
    reader
        .scan(TreeId::Backlinks, &prefix, &prefix, usize::MAX)?
        .iter()
        .map(|(key, _)| parse_backlink(&key[prefix.len()..]))
        .collect()
}

/// Outbox events above `after`, oldest first.
pub fn events_after<R: KvRead>(
    reader: &R,
    after: u64,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let start = after.saturating_add(1).to_be_bytes();
    reader
        .scan(TreeId::Outbox, &[], &start, limit)?
        .iter()
        .map(|(_, bytes)| decode("event", bytes))
        .collect()
}

/// Applies a batch of setting writes inside a transaction.
pub fn apply_settings<T: KvTx>(
    tx: &T,
    put: &[(String, Vec<u8>)],
    delete: &[String],
) -> Result<(), TxFail<T::Error>> {
    for key in delete {
        tx.remove(TreeId::Settings, key.as_bytes())?;
    }
    for (key, value) in put {
        tx.insert(TreeId::Settings, key.as_bytes(), value.clone())?;
    }
    let areas: std::collections::BTreeSet<&str> = delete
        .iter()
        .chain(put.iter().map(|(key, _)| key))
        .map(|key| key.split_once('/').map_or(key.as_str(), |(area, _)| area))
        .collect();
    for area in areas {
        next_counter(tx, &generation_key(area))?;
    }
    Ok(())
}

/// The counter of an area's generation ([`crate::Store::generation`]).
fn generation_key(area: &str) -> Vec<u8> {
    format!("~gen/{area}").into_bytes()
}

/// The generation of an area: how many transactions changed it.
pub fn generation<R: KvRead>(reader: &R, area: &str) -> Result<u64, StoreError> {
    match reader.get(TreeId::Counters, &generation_key(area))? {
        Some(bytes) => decode_u64("generation", &bytes),
        None => Ok(0),
    }
}

/// The settings whose key starts with `prefix`, by key.
pub fn settings<R: KvRead>(reader: &R, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    reader
        .scan(
            TreeId::Settings,
            prefix.as_bytes(),
            prefix.as_bytes(),
            usize::MAX,
        )?
        .into_iter()
        .map(|(key, value)| {
            String::from_utf8(key)
                .map(|key| (key, value))
                .map_err(|_| StoreError::Corrupt {
                    what: "setting key",
                    detail: "not UTF-8".into(),
                })
        })
        .collect()
}

/// Appends an audit entry with the next audit sequence number (stored in its first bytes).
pub fn apply_audit<T: KvTx>(tx: &T, entry: &[u8]) -> Result<u64, TxFail<T::Error>> {
    let seq = next_counter(tx, b"~audit")?;
    tx.insert(TreeId::Audit, &seq.to_be_bytes(), entry.to_vec())?;
    Ok(seq)
}

/// Audit entries above `after`, oldest first.
pub fn audit_after<R: KvRead>(
    reader: &R,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let start = after.saturating_add(1).to_be_bytes();
    reader
        .scan(TreeId::Audit, &[], &start, limit)?
        .into_iter()
        .map(|(key, value)| decode_u64("audit key", &key).map(|seq| (seq, value)))
        .collect()
}

fn timer_key(timer: &crate::Timer) -> Vec<u8> {
    // Millisecond timestamps before 1970 do not occur for timers; clamp to keep the order.
    let millis = u64::try_from(timer.due_at.as_millisecond()).unwrap_or(0);
    let mut key = millis.to_be_bytes().to_vec();
    key.extend_from_slice(timer.record_id.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(timer.clock.as_bytes());
    key.push(0);
    key.extend_from_slice(timer.level.as_bytes());
    key
}

/// Replaces a record's timers inside a transaction.
pub fn apply_schedule<T: KvTx>(
    tx: &T,
    record: &RecordId,
    timers: &[crate::Timer],
) -> Result<(), TxFail<T::Error>> {
    let owner = record.as_str().as_bytes();
    if let Some(bytes) = tx.get(TreeId::TimerOwners, owner)? {
        let keys: Vec<Vec<u8>> = decode("timer owner", &bytes)?;
        for key in keys {
            tx.remove(TreeId::Timers, &key)?;
        }
    }
    let mut keys = Vec::with_capacity(timers.len());
    for timer in timers {
        let key = timer_key(timer);
        tx.insert(TreeId::Timers, &key, encode(timer)?)?;
        keys.push(key);
    }
    if keys.is_empty() {
        tx.remove(TreeId::TimerOwners, owner)?;
    } else {
        tx.insert(TreeId::TimerOwners, owner, encode(&keys)?)?;
    }
    Ok(())
}

/// Fires a timer inside a transaction: removes it, appends its event, writes its ledger entry.
pub fn apply_fire<T: KvTx>(
    tx: &T,
    timer: &crate::Timer,
    record: &Record,
    payload: &serde_json::Value,
    ledger: &serde_json::Value,
) -> Result<Option<Event>, TxFail<T::Error>> {
    let key = timer_key(timer);
    if tx.get(TreeId::Timers, &key)?.is_none() {
        return Ok(None);
    }
    tx.remove(TreeId::Timers, &key)?;
    let owner = record.id.as_str().as_bytes();
    if let Some(bytes) = tx.get(TreeId::TimerOwners, owner)? {
        let mut keys: Vec<Vec<u8>> = decode("timer owner", &bytes)?;
        keys.retain(|k| k != &key);
        if keys.is_empty() {
            tx.remove(TreeId::TimerOwners, owner)?;
        } else {
            tx.insert(TreeId::TimerOwners, owner, encode(&keys)?)?;
        }
    }
    let event = Event {
        seq: next_counter(tx, OUTBOX_COUNTER)?,
        event_type: if timer.level == "breach" {
            EventType::SlaBreach
        } else {
            EventType::SlaWarning
        },
        record_id: record.id.clone(),
        kind: record.kind.clone(),
        domain: record.domain.clone(),
        version: record.version,
        state: record.state.clone(),
        actor: "system:sla".into(),
        at: Timestamp::now(),
        depth: 0,
        payload: Some(payload.clone()),
    };
    tx.insert(TreeId::Outbox, &event.seq.to_be_bytes(), encode(&event)?)?;
    // Recorded with the event: the ledger keeps the breach whatever later happens to the record,
    // and a reschedule never arms a level that already fired in this cycle.
    let key = crate::ledger_key(&record.id, timer.cycle, &timer.clock, &timer.level);
    tx.insert(TreeId::Settings, key.as_bytes(), encode(ledger)?)?;
    Ok(Some(event))
}

/// Timers due at or before `now`, earliest first.
pub fn due_timers<R: KvRead>(
    reader: &R,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<crate::Timer>, StoreError> {
    let until = u64::try_from(now.as_millisecond()).unwrap_or(0);
    let mut out = Vec::new();
    for (key, value) in reader.scan(TreeId::Timers, &[], &[], limit)? {
        if decode_u64("timer key", &key[..8.min(key.len())])? > until {
            break;
        }
        out.push(decode("timer", &value)?);
    }
    Ok(out)
}

/// A named consumer's outbox position.
pub fn cursor<R: KvRead>(reader: &R, consumer: &str) -> Result<u64, StoreError> {
    match reader.get(TreeId::Counters, &cursor_key(consumer))? {
        Some(bytes) => decode_u64("cursor", &bytes),
        None => Ok(0),
    }
}

/// Entries one pruning transaction removes at most, so a long backlog never makes one huge
/// transaction.
const PRUNE_BATCH: usize = 512;

/// What one pruning transaction is to remove.
#[derive(Default)]
pub struct PrunePlan {
    /// Keys of outbox events every consumer has passed.
    events: Vec<Vec<u8>>,
    /// Keys of [`TreeId::IdempotencyExpiry`] entries past the retention.
    expired: Vec<Vec<u8>>,
}

impl PrunePlan {
    /// Whether there is nothing to prune.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.expired.is_empty()
    }
}

/// The next batch to prune: outbox events at or below every consumer's cursor (a consumer
/// without a cursor has read nothing) and older than the outbox retention, and idempotency keys
/// bound at least their retention before `now`.
pub fn prune_plan<R: KvRead>(
    reader: &R,
    consumers: &[String],
    now: Timestamp,
    config: &crate::StoreConfig,
) -> Result<PrunePlan, StoreError> {
    let mut floor = None::<u64>;
    for consumer in consumers {
        let position = cursor(reader, consumer)?;
        floor = Some(floor.map_or(position, |f| f.min(position)));
    }
    let floor = floor.unwrap_or(0);
    let cutoff = |retention: Duration| {
        let retention = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        now.as_millisecond().saturating_sub(retention)
    };
    let events_before = cutoff(config.outbox_retention);
    let mut events = Vec::new();
    for (key, bytes) in reader.scan(TreeId::Outbox, &[], &[], PRUNE_BATCH)? {
        let event: Event = decode("event", &bytes)?;
        if decode_u64("event key", &key)? > floor || event.at.as_millisecond() > events_before {
            break;
        }
        events.push(key);
    }
    let keys_before = u64::try_from(cutoff(config.idempotency_ttl)).unwrap_or(0);
    let mut expired = Vec::new();
    for (key, _) in reader.scan(TreeId::IdempotencyExpiry, &[], &[], PRUNE_BATCH)? {
        if decode_u64("idempotency expiry", &key[..8.min(key.len())])? > keys_before {
            break;
        }
        expired.push(key);
    }
    Ok(PrunePlan { events, expired })
}

/// Removes a planned batch inside a transaction; returns (events, idempotency keys) removed.
/// An idempotency key bound anew since it was planned keeps its new binding.
pub fn apply_prune<T: KvTx>(tx: &T, plan: &PrunePlan) -> Result<(usize, usize), TxFail<T::Error>> {
    for key in &plan.events {
        tx.remove(TreeId::Outbox, key)?;
    }
    let mut keys = 0;
    for expiry in &plan.expired {
        tx.remove(TreeId::IdempotencyExpiry, expiry)?;
        let key = &expiry[8.min(expiry.len())..];
        let Some(bytes) = tx.get(TreeId::Idempotency, key)? else {
            continue;
        };
        let entry: IdempotencyEntry = decode("idempotency entry", &bytes)?;
        if expiry_key(entry.at, key) == *expiry {
            tx.remove(TreeId::Idempotency, key)?;
            keys += 1;
        }
    }
    Ok((plan.events.len(), keys))
}

/// Expiry entries for idempotency keys bound before the expiry tree existed.
pub fn expiry_entries<R: KvRead>(reader: &R) -> Result<Vec<Vec<u8>>, StoreError> {
    reader
        .scan(TreeId::Idempotency, &[], &[], usize::MAX)?
        .iter()
        .map(|(key, bytes)| {
            let entry: IdempotencyEntry = decode("idempotency entry", bytes)?;
            Ok(expiry_key(entry.at, key))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_compressed_and_read_back() {
        let value = serde_json::json!({"description": "the printer on floor 3 ".repeat(40)});
        let stored = encode(&value).unwrap();
        let json = serde_json::to_vec(&value).unwrap();
        assert_eq!(stored[0], DEFLATE_TAG);
        assert!(
            stored.len() < json.len() / 4,
            "{} of {}",
            stored.len(),
            json.len()
        );
        assert_eq!(decode::<serde_json::Value>("v", &stored).unwrap(), value);
    }

    #[test]
    fn short_values_and_values_of_format_1_are_plain_json() {
        let value = serde_json::json!({"seq": 1});
        assert_eq!(encode(&value).unwrap(), serde_json::to_vec(&value).unwrap());
        let long = serde_json::json!({"text": "x".repeat(1000)});
        let plain = serde_json::to_vec(&long).unwrap();
        assert_eq!(decode::<serde_json::Value>("v", &plain).unwrap(), long);
    }

    #[test]
    fn a_damaged_compressed_value_is_corrupt_not_a_panic_or_a_huge_allocation() {
        let mut huge_claim = vec![DEFLATE_TAG];
        huge_claim.extend_from_slice(&u32::MAX.to_le_bytes());
        huge_claim.extend_from_slice(b"whatever");
        let stored = encode(&serde_json::json!({"t": "y".repeat(500)})).unwrap();
        for damaged in [
            huge_claim,
            vec![DEFLATE_TAG, 1],
            stored[..stored.len() / 2].to_vec(),
        ] {
            let error = decode::<serde_json::Value>("record", &damaged).unwrap_err();
            assert!(
                matches!(error, StoreError::Corrupt { what: "record", .. }),
                "{error}"
            );
        }
    }
}
