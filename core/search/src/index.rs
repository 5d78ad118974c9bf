//! The index: opening and rebuilding it, applying records, and answering queues and searches.

use std::{
    path::Path,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tantivy::{
    DocAddress, Index, IndexReader, IndexWriter, ReloadPolicy, SegmentReader, TantivyDocument,
    Term,
    collector::{Count, TopDocs},
    directory::MmapDirectory,
    query::{AllQuery, BooleanQuery, Occur, Query},
    schema::Value as _,
};
use usm_engine::Engine;
use usm_model::{Actor, Record, RecordId, Timestamp};
use usm_store::{ListQuery, Store, StoreError};

use crate::{
    SearchError,
    document::{self, Fields, Note, SCHEMA_VERSION},
    query::{self, Filter, Place, Sort, place},
};

/// Memory the index writer buffers before it writes a segment.
const WRITER_HEAP_BYTES: usize = 32 << 20;
/// Deepest a ranked search pages (relevance has no keyset: later pages cost more).
const MAX_RANKED_OFFSET: usize = 1_000;
/// History entries read per page while collecting a record's comments.
const HISTORY_PAGE: usize = 500;

/// What a committed index says about itself.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    schema: u32,
    /// The outbox position the index reflects.
    position: u64,
}

/// One page of records found.
#[derive(Debug, Clone)]
pub struct Hits {
    /// The records, as the store has them now.
    pub records: Vec<Record>,
    /// Pass back for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// The search index of a data directory.
pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
    /// The outbox position the committed index reflects.
    position: AtomicU64,
    /// Whether the committed index can be trusted; false until a rebuild finishes.
    current: AtomicBool,
}

/// Where a page resumes.
#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    /// Hash of the query the cursor belongs to.
    q: String,
    /// After this place (keyset orders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<Place>,
    /// From this offset (relevance order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<usize>,
}

fn bind(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(str::as_bytes(part));
        hasher.update([0]);
    }
    hasher.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn encode(cursor: &Cursor) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(cursor).unwrap_or_default())
}

fn decode(text: &str, query: &str) -> Result<Cursor, SearchError> {
    let cursor: Cursor = URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(SearchError::BadCursor)?;
    if cursor.q == query {
        Ok(cursor)
    } else {
        Err(SearchError::BadCursor)
    }
}

impl SearchIndex {
    /// Opens the index in `dir`, creating it if needed. An index of another schema is discarded
    /// (the worker rebuilds it from the store).
    pub fn open(dir: &Path) -> Result<Self, SearchError> {
        let (schema, fields) = document::schema();
        let open = |dir: &Path| -> Result<Index, SearchError> {
            std::fs::create_dir_all(dir).map_err(|e| tantivy::TantivyError::IoError(e.into()))?;
            let directory =
                MmapDirectory::open(dir).map_err(tantivy::TantivyError::OpenDirectoryError)?;
            Ok(Index::open_or_create(directory, schema.clone())?)
        };
        let index = match open(dir) {
            Ok(index)
                if index
                    .load_metas()
                    .is_ok_and(|m| payload(&m.payload).is_some()) =>
            {
                index
            }
            Ok(index) if index.searchable_segment_ids().is_ok_and(|s| s.is_empty()) => index,
            outcome => {
                if let Err(error) = &outcome {
                    tracing::warn!(%error, dir = %dir.display(), "the search index does not open; it is rebuilt");
                } else {
                    tracing::warn!(dir = %dir.display(), "the search index is of another version; it is rebuilt");
                }
                drop(outcome);
                std::fs::remove_dir_all(dir)
                    .map_err(|e| tantivy::TantivyError::IoError(e.into()))?;
                open(dir)?
            }
        };
        let writer = index.writer_with_num_threads(1, WRITER_HEAP_BYTES)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let position = payload(&index.load_metas()?.payload);
        Ok(Self {
            index,
            reader,
            writer: Mutex::new(writer),
            fields,
            position: AtomicU64::new(position.map_or(0, |p| p.position)),
            current: AtomicBool::new(false),
        })
    }

    /// The outbox position the committed index reflects.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::SeqCst)
    }

    /// Whether the index is being rebuilt (queries wait for it).
    pub fn rebuilding(&self) -> bool {
        !self.current.load(Ordering::SeqCst)
    }

    /// Whether the committed index can serve `store` as it is: of this schema, and neither
    /// behind what the outbox still holds for it nor ahead of the outbox (a store restored from
    /// an older copy).
    pub(crate) fn in_step_with(
        &self,
        store: &dyn Store,
        consumer: &str,
    ) -> Result<bool, SearchError> {
        let Some(payload) = payload(&self.index.load_metas()?.payload) else {
            return Ok(false);
        };
        let head = usm_engine::outbox_head(store)?;
        let passed = store.cursor(consumer)?;
        Ok(payload.position >= passed && payload.position <= head)
    }

    pub(crate) fn mark_current(&self) {
        self.current.store(true, Ordering::SeqCst);
    }

    /// Replaces the index's copy of record `id` with what the store holds now (nothing when the
    /// record is gone).
    pub(crate) fn apply(&self, engine: &Engine, id: &RecordId) -> Result<(), SearchError> {
        let store = engine.store().as_ref();
        let document = match store.get(id)? {
            Some(record) => Some(self.document(engine, store, &record)?),
            None => None,
        };
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        writer.delete_term(Term::from_field_text(self.fields.id, id.as_str()));
        if let Some(document) = document {
            writer.add_document(document)?;
        }
        Ok(())
    }

    fn document(
        &self,
        engine: &Engine,
        store: &dyn Store,
        record: &Record,
    ) -> Result<TantivyDocument, SearchError> {
        let notes = notes(store, &record.id)?;
        let sla = engine.sla(record).unwrap_or_else(|error| {
            tracing::warn!(record = %record.id, %error, "no SLA for the search index");
            None
        });
        Ok(document::document(
            &self.fields,
            record,
            &notes,
            sla.as_ref(),
        ))
    }

    /// Re-indexes every record of `domain` (an agreement there changed every due time).
    pub(crate) fn apply_domain(
        &self,
        engine: &Engine,
        domain: &usm_model::Domain,
        stop: &AtomicBool,
    ) -> Result<bool, SearchError> {
        let mut query = ListQuery {
            domain: Some(domain.clone()),
            limit: 500,
            ..ListQuery::default()
        };
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(false);
            }
            let page = engine.store().list(&query)?;
            for record in &page.records {
                self.apply(engine, &record.id)?;
            }
            match page.next {
                Some(after) => query.after = Some(after),
                None => return Ok(true),
            }
        }
    }

    /// Empties the index and indexes every record of the store, then commits at the outbox head
    /// read before the first record: events after it are applied again, which is harmless.
    pub(crate) fn rebuild(
        &self,
        engine: &Engine,
        stop: &AtomicBool,
    ) -> Result<Option<u64>, SearchError> {
        self.current.store(false, Ordering::SeqCst);
        let store = engine.store().as_ref();
        let head = usm_engine::outbox_head(store)?;
        self.writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .delete_all_documents()?;
        let mut query = ListQuery {
            limit: 500,
            ..ListQuery::default()
        };
        let mut count = 0usize;
        loop {
            if stop.load(Ordering::SeqCst) {
                self.writer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .rollback()?;
                return Ok(None);
            }
            let page = store.list(&query)?;
            for record in &page.records {
                let document = self.document(engine, store, record)?;
                self.writer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .add_document(document)?;
            }
            count += page.records.len();
            match page.next {
                Some(after) => query.after = Some(after),
                None => break,
            }
        }
        self.commit(head)?;
        tracing::info!(records = count, position = head, "search index rebuilt");
        Ok(Some(head))
    }

    /// Makes what was applied searchable and durable, as of outbox `position`.
    pub(crate) fn commit(&self, position: u64) -> Result<(), SearchError> {
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut prepared = writer.prepare_commit()?;
        let payload = serde_json::to_string(&Payload {
            schema: SCHEMA_VERSION,
            position,
        })
        .unwrap_or_default();
        prepared.set_payload(&payload);
        prepared.commit()?;
        drop(writer);
        self.reader.reload()?;
        self.position.store(position, Ordering::SeqCst);
        Ok(())
    }

    fn ready(&self) -> Result<(), SearchError> {
        if self.rebuilding() {
            Err(SearchError::Rebuilding)
        } else {
            Ok(())
        }
    }

    /// A page of the records `filter` selects that `actor` may see, in `sort` order.
    pub fn queue(
        &self,
        engine: &Engine,
        actor: &Actor,
        filter: &Filter,
        sort: Sort,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Hits, SearchError> {
        self.ready()?;
        let bound = bind(&["queue", &filter.fingerprint(), &sort.to_string()]);
        let after = cursor
            .map(|c| decode(c, &bound))
            .transpose()?
            .map(|c| c.after.ok_or(SearchError::BadCursor))
            .transpose()?;
        let mut clauses = query::scope(&self.fields, actor);
        clauses.extend(filter.clauses(&self.fields, Timestamp::now()));
        let query = conjunction(clauses);
        let places = self.top_by_place(query.as_ref(), sort, after, limit + 1)?;
        let more = places.len() > limit;
        let searcher = self.reader.searcher();
        let mut records = Vec::with_capacity(limit);
        let mut last = None;
        for (place, address) in places.into_iter().take(limit) {
            last = Some(place);
            if let Some(record) = self.fetch(engine, actor, &searcher, address)?
                && filter.matches(&record)
            {
                records.push(record);
            }
        }
        let next_cursor = more.then(|| {
            encode(&Cursor {
                q: bound,
                after: last,
                offset: None,
            })
        });
        Ok(Hits {
            records,
            next_cursor,
        })
    }

    /// How many records `filter` selects that `actor` may see, as the index has them.
    pub fn count(&self, actor: &Actor, filter: &Filter) -> Result<usize, SearchError> {
        self.ready()?;
        let mut clauses = query::scope(&self.fields, actor);
        clauses.extend(filter.clauses(&self.fields, Timestamp::now()));
        let query = conjunction(clauses);
        Ok(self.reader.searcher().search(query.as_ref(), &Count)?)
    }

    /// Searches `text` (filters written `name:value`, words, "phrases"): the records `actor` may
    /// see that hold every word, best match first; only filters, latest update first. Internal
    /// notes are searched only for those who work records.
    pub fn search(
        &self,
        engine: &Engine,
        actor: &Actor,
        text: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Hits, SearchError> {
        let parsed = query::parse(text)?;
        let filter = parsed.filter.for_caller(actor);
        engine.list_filters(
            actor,
            filter.kind.as_deref(),
            filter.state.as_deref(),
            filter.domain.as_deref(),
        )?;
        if parsed.terms.is_empty() {
            let sort = Sort {
                key: crate::SortKey::UpdatedAt,
                descending: true,
            };
            return self.queue(engine, actor, &filter, sort, limit, cursor);
        }
        self.ready()?;
        let bound = bind(&["search", text]);
        let offset = match cursor {
            Some(cursor) => decode(cursor, &bound)?
                .offset
                .ok_or(SearchError::BadCursor)?,
            None => 0,
        };
        let mut searched = vec![(
            self.fields.text,
            self.index.tokenizer_for_field(self.fields.text)?,
        )];
        if actor.works_records() {
            searched.push((
                self.fields.internal,
                self.index.tokenizer_for_field(self.fields.internal)?,
            ));
        }
        let mut clauses = query::scope(&self.fields, actor);
        clauses.extend(filter.clauses(&self.fields, Timestamp::now()));
        let words = query::text_clauses(&parsed.terms, &searched);
        if words.is_empty() {
            return Err(SearchError::Syntax(
                "the search text has no word to look for".into(),
            ));
        }
        clauses.extend(words);
        let query = conjunction(clauses);
        let searcher = self.reader.searcher();
        let found = searcher.search(
            query.as_ref(),
            &TopDocs::with_limit(limit + 1)
                .and_offset(offset)
                .order_by_score(),
        )?;
        let more = found.len() > limit && offset + limit < MAX_RANKED_OFFSET;
        let mut records = Vec::with_capacity(limit);
        for (_, address) in found.into_iter().take(limit) {
            if let Some(record) = self.fetch(engine, actor, &searcher, address)?
                && filter.matches(&record)
            {
                records.push(record);
            }
        }
        let next_cursor = more.then(|| {
            encode(&Cursor {
                q: bound,
                after: None,
                offset: Some(offset + limit),
            })
        });
        Ok(Hits {
            records,
            next_cursor,
        })
    }

    /// The first `limit` matches of `query` in `sort` order that come after `after`.
    fn top_by_place(
        &self,
        query: &dyn Query,
        sort: Sort,
        after: Option<Place>,
        limit: usize,
    ) -> Result<Vec<(Place, DocAddress)>, SearchError> {
        let schema = self.index.schema();
        let name = |field| schema.get_field_name(field).to_owned();
        let (primary, created, tie) = (
            name(sort.field(&self.fields)),
            name(self.fields.created),
            name(self.fields.tie),
        );
        let by_place = move |segment: &SegmentReader| {
            let column = |name: &str| {
                segment
                    .fast_fields()
                    .u64(name)
                    .expect("every sort field of the schema is a u64 fast field")
            };
            let (primary, created, tie) = (column(&primary), column(&created), column(&tie));
            move |doc| {
                let at = place(
                    sort,
                    primary.first(doc).unwrap_or(document::ABSENT),
                    created.first(doc).unwrap_or(0),
                    tie.first(doc).unwrap_or(0),
                );
                // Places at or before the cursor rank below every other and are dropped.
                after.is_none_or(|after| at < after).then_some(at)
            }
        };
        let found = self
            .reader
            .searcher()
            .search(query, &TopDocs::with_limit(limit).order_by(by_place))?;
        Ok(found
            .into_iter()
            .filter_map(|(place, address)| place.map(|p| (p, address)))
            .collect())
    }

    /// The record a hit names, as the store has it now, if `actor` may see it.
    fn fetch(
        &self,
        engine: &Engine,
        actor: &Actor,
        searcher: &tantivy::Searcher,
        address: DocAddress,
    ) -> Result<Option<Record>, SearchError> {
        let stored: TantivyDocument = searcher.doc(address)?;
        let Some(id) = stored.get_first(self.fields.id).and_then(|v| v.as_str()) else {
            return Ok(None);
        };
        match engine.get(actor, id) {
            Ok(record) => Ok(Some(record)),
            Err(usm_engine::EngineError::NotFound(_)) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }
}

fn payload(text: &Option<String>) -> Option<Payload> {
    text.as_deref()
        .and_then(|t| serde_json::from_str::<Payload>(t).ok())
        .filter(|p| p.schema == SCHEMA_VERSION)
}

fn conjunction(clauses: Vec<(Occur, Box<dyn Query>)>) -> Box<dyn Query> {
    if clauses.is_empty() {
        Box::new(AllQuery)
    } else if clauses.iter().all(|(occur, _)| *occur == Occur::MustNot) {
        let mut clauses = clauses;
        clauses.push((Occur::Must, Box::new(AllQuery)));
        Box::new(BooleanQuery::new(clauses))
    } else {
        Box::new(BooleanQuery::new(clauses))
    }
}

/// The comments of a record's history, and the notes written with its transitions.
fn notes(store: &dyn Store, id: &RecordId) -> Result<Vec<Note>, StoreError> {
    let mut notes = Vec::new();
    let mut after = 0;
    loop {
        let entries = store.history(id, after, HISTORY_PAGE)?;
        let Some(last) = entries.last() else {
            return Ok(notes);
        };
        after = last.version;
        for entry in &entries {
            if let Some(text) = &entry.comment {
                notes.push(Note {
                    text: text.clone(),
                    visibility: entry.visibility.unwrap_or_default(),
                });
            }
        }
        if entries.len() < HISTORY_PAGE {
            return Ok(notes);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::AtomicBool};

    use serde_json::json;
    use usm_engine::{Engine, EngineConfig, NewRecord, RecordPatch, conversation::NewComment};
    use usm_model::{Actor, Catalog, Role, Visibility};
    use usm_store::MemoryStore;

    use super::*;
    use crate::SortKey;

    fn engine() -> Engine {
        Engine::new(
            Arc::new(MemoryStore::new()),
            Arc::new(Catalog::core()),
            EngineConfig::default(),
        )
    }

    fn create(engine: &Engine, actor: &Actor, title: &str) -> String {
        let new: NewRecord =
            serde_json::from_value(json!({"kind": "incident", "title": title})).unwrap();
        engine
            .create(actor, new, None)
            .unwrap()
            .record
            .id
            .to_string()
    }

    fn ids(hits: &Hits) -> Vec<&str> {
        hits.records.iter().map(|r| r.id.as_str()).collect()
    }

    fn built(engine: &Engine) -> (tempfile::TempDir, SearchIndex) {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(&dir.path().join("search")).unwrap();
        index.rebuild(engine, &AtomicBool::new(false)).unwrap();
        index.mark_current();
        (dir, index)
    }

    #[test]
    fn a_hit_that_no_longer_matches_in_the_store_is_not_shown() {
        let engine = engine();
        let admin = Actor::new("admin", [Role::Admin]);
        let id = create(&engine, &admin, "Slow VPN");
        let patch: RecordPatch =
            serde_json::from_value(json!({"fields": {"priority": "P2"}})).unwrap();
        engine.update(&admin, &id, patch, None).unwrap();
        let (_dir, index) = built(&engine);
        let p2 = Filter {
            priority: Some("P2".into()),
            ..Filter::default()
        };
        let sort = Sort::default();
        let found = index.queue(&engine, &admin, &p2, sort, 10, None).unwrap();
        assert_eq!(ids(&found), [id.as_str()]);
        // The store moves on; the index has not applied it yet.
        let patch: RecordPatch =
            serde_json::from_value(json!({"fields": {"priority": "P4"}})).unwrap();
        engine.update(&admin, &id, patch, None).unwrap();
        let found = index.queue(&engine, &admin, &p2, sort, 10, None).unwrap();
        assert!(found.records.is_empty(), "{:?}", ids(&found));
        assert_eq!(
            index.count(&admin, &p2).unwrap(),
            1,
            "the index itself still has it"
        );
    }

    #[test]
    fn requesters_find_their_own_records_and_never_through_an_internal_note() {
        let engine = engine();
        let rob = Actor::new("rob", [Role::Requester]);
        let eve = Actor::new("eve", [Role::Requester]);
        let agent = Actor::new("ann", [Role::Agent]);
        let robs = create(&engine, &rob, "Printer jams");
        let eves = create(&engine, &eve, "Printer is slow");
        let note = NewComment {
            body: "vendor contract expired".into(),
            visibility: Visibility::Internal,
        };
        engine.add_comment(&agent, &eves, note, None).unwrap();
        let (_dir, index) = built(&engine);
        let find = |actor: &Actor, text: &str| {
            let hits = index.search(&engine, actor, text, 10, None).unwrap();
            ids(&hits)
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(find(&rob, "printer"), [robs.as_str()]);
        assert_eq!(find(&eve, "printer"), [eves.as_str()]);
        assert!(find(&eve, "vendor").is_empty());
        assert_eq!(find(&agent, "vendor"), [eves.as_str()]);
        let mut both = find(&agent, "printer");
        both.sort();
        assert_eq!(both, [robs.as_str(), eves.as_str()]);
    }

    #[test]
    fn keyset_pages_of_equal_keys_neither_repeat_nor_skip() {
        let engine = engine();
        let admin = Actor::new("admin", [Role::Admin]);
        let mut made: Vec<String> = (0..25)
            .map(|i| create(&engine, &admin, &format!("r{i}")))
            .collect();
        let (_dir, index) = built(&engine);
        // No record has a priority: every key is equal and only the tie-breakers order them.
        let sort = Sort {
            key: SortKey::Priority,
            descending: false,
        };
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10 {
            let page = index
                .queue(
                    &engine,
                    &admin,
                    &Filter::default(),
                    sort,
                    4,
                    cursor.as_deref(),
                )
                .unwrap();
            seen.extend(page.records.iter().map(|r| r.id.to_string()));
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        assert!(cursor.is_none(), "seven pages of four hold 25 records");
        assert_eq!(seen.len(), 25, "{seen:?}");
        seen.sort();
        made.sort();
        assert_eq!(seen, made);
    }
}
