//! The KPI book: sums of record contributions by domain, process and hour of creation, kept in
//! the store's settings and in memory, with the contributions themselves.
//!
//! Settings, written in one atomic, durable batch per step of the worker:
//! - `kpi/position`: the outbox position the sums reflect;
//! - `kpi/h/{domain}/{process}/{hour}`: the sums of records created in that hour;
//! - `kpi/r/{domain}/{process}/{hour}/{record}`: the record's contribution as counted.
//!
//! A record's domain, kind and creation time never change, so the key of its contribution is
//! found from the record alone, and a bound that falls inside an hour reads only that hour's
//! contributions.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use usm_model::{Domain, Process, Record, RecordId};
use usm_store::{Store, StoreError};

use crate::sums::{Contribution, Sums};

const POSITION: &str = "kpi/position";
const HOURS: &str = "kpi/h/";
const CONTRIBUTIONS: &str = "kpi/r/";
const SECONDS_PER_HOUR: i64 = 3_600;
const HOURS_PER_DAY: i64 = 24;

/// Where a record's contribution is summed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bucket {
    pub domain: Domain,
    pub process: Process,
    /// Hours since the Unix epoch.
    pub hour: i64,
}

impl Bucket {
    pub fn of(record: &Record) -> Self {
        Self {
            domain: record.domain.clone(),
            process: record.process,
            hour: hour_of(record.created_at),
        }
    }

    /// `{domain}/{process}/{hour}`, zero-padded so that keys sort by hour.
    fn path(&self) -> String {
        format!(
            "{}/{}/{:010}",
            self.domain,
            self.process.as_str(),
            self.hour
        )
    }

    fn key(&self) -> String {
        format!("{HOURS}{}", self.path())
    }

    fn contributions_prefix(&self) -> String {
        format!("{CONTRIBUTIONS}{}/", self.path())
    }

    pub fn contribution_key(&self, record: &RecordId) -> String {
        format!("{}{record}", self.contributions_prefix())
    }

    fn parse(key: &str) -> Option<Self> {
        let mut parts = key.strip_prefix(HOURS)?.split('/');
        let domain = Domain::new(parts.next()?).ok()?;
        let process = serde_json::from_value(parts.next()?.into()).ok()?;
        let hour = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(Self {
            domain,
            process,
            hour,
        })
    }
}

pub fn hour_of(at: Timestamp) -> i64 {
    at.as_second().div_euclid(SECONDS_PER_HOUR)
}

fn corrupt(what: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.to_string(),
    }
}

/// The sums in memory: by hour, and by day for long ranges.
#[derive(Debug, Default)]
pub struct Book {
    hours: BTreeMap<(Domain, Process, i64), Sums>,
    days: BTreeMap<(Domain, Process, i64), Sums>,
    pairs: BTreeSet<(Domain, Process)>,
    /// The outbox position the sums reflect; `None` before the first rebuild finished.
    pub position: Option<u64>,
}

impl Book {
    /// The outbox position of the sums in the store.
    pub fn stored_position(store: &dyn Store) -> Result<Option<u64>, StoreError> {
        store
            .setting(POSITION)?
            .map(|bytes| {
                std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| corrupt("KPI position", "not a number"))
            })
            .transpose()
    }

    /// Loads the book from the store's settings.
    pub fn load(store: &dyn Store) -> Result<Self, StoreError> {
        let mut book = Book {
            position: Self::stored_position(store)?,
            ..Book::default()
        };
        for (key, bytes) in store.settings(HOURS)? {
            let bucket = Bucket::parse(&key).ok_or_else(|| corrupt("KPI sums key", &key))?;
            let sums: Sums = serde_json::from_slice(&bytes).map_err(|e| corrupt("KPI sums", e))?;
            book.add(&bucket, &sums);
        }
        Ok(book)
    }

    fn add(&mut self, bucket: &Bucket, delta: &Sums) {
        let (domain, process) = (bucket.domain.clone(), bucket.process);
        self.pairs.insert((domain.clone(), process));
        let hour = (domain.clone(), process, bucket.hour);
        self.hours.entry(hour).or_default().add(delta);
        let day = (domain, process, bucket.hour.div_euclid(HOURS_PER_DAY));
        self.days.entry(day).or_default().add(delta);
    }

    /// The sums of an hour.
    pub fn hour(&self, bucket: &Bucket) -> Option<&Sums> {
        self.hours
            .get(&(bucket.domain.clone(), bucket.process, bucket.hour))
    }

    /// The (domain, process) pairs that have sums.
    pub fn pairs(&self) -> impl Iterator<Item = &(Domain, Process)> {
        self.pairs.iter()
    }

    /// Sums of whole hours `[from, to)` of one pair, read by day where whole days fit.
    pub fn sum_hours(&self, domain: &Domain, process: Process, from: i64, to: i64) -> Sums {
        let mut total = Sums::default();
        if from >= to {
            return total;
        }
        let range =
            |map: &BTreeMap<(Domain, Process, i64), Sums>, lo: i64, hi: i64, total: &mut Sums| {
                if lo < hi {
                    for sums in map
                        .range((domain.clone(), process, lo)..(domain.clone(), process, hi))
                        .map(|(_, s)| s)
                    {
                        total.add(sums);
                    }
                }
            };
        let first_day =
            from.div_euclid(HOURS_PER_DAY) + i64::from(from.rem_euclid(HOURS_PER_DAY) != 0);
        let end_day = to.div_euclid(HOURS_PER_DAY);
        if first_day < end_day {
            range(&self.hours, from, first_day * HOURS_PER_DAY, &mut total);
            range(&self.days, first_day, end_day, &mut total);
            range(&self.hours, end_day * HOURS_PER_DAY, to, &mut total);
        } else {
            range(&self.hours, from, to, &mut total);
        }
        total
    }
}

/// One batch of changes to the book, applied to the store first and to memory after.
#[derive(Debug, Default)]
pub struct Batch {
    deltas: BTreeMap<Bucket, Sums>,
    contributions: BTreeMap<String, Vec<u8>>,
}

impl Batch {
    /// Counts `record` as `new` instead of as `old` (absent: not counted before).
    pub fn replace(
        &mut self,
        record: &Record,
        old: Option<&Contribution>,
        new: &Contribution,
    ) -> Result<(), StoreError> {
        if old == Some(new) {
            return Ok(());
        }
        let bucket = Bucket::of(record);
        let delta = self.deltas.entry(bucket.clone()).or_default();
        if let Some(old) = old {
            delta.apply(old, -1);
        }
        delta.apply(new, 1);
        let bytes = serde_json::to_vec(new).map_err(|e| corrupt("KPI contribution", e))?;
        self.contributions
            .insert(bucket.contribution_key(&record.id), bytes);
        Ok(())
    }

    /// How many contributions changed.
    pub fn len(&self) -> usize {
        self.contributions.len()
    }

    /// Writes the batch and the position it brings the book to, if any, in one durable
    /// transaction, then applies it to `book`.
    pub fn commit(
        self,
        store: &dyn Store,
        book: &mut Book,
        position: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut puts = Vec::with_capacity(self.deltas.len() + self.contributions.len() + 1);
        let mut deletes = Vec::new();
        for (bucket, delta) in &self.deltas {
            let mut sums = book.hour(bucket).cloned().unwrap_or_default();
            sums.add(delta);
            if sums.is_empty() {
                deletes.push(bucket.key());
            } else {
                let bytes = serde_json::to_vec(&sums).map_err(|e| corrupt("KPI sums", e))?;
                puts.push((bucket.key(), bytes));
            }
        }
        puts.extend(self.contributions);
        if let Some(position) = position {
            puts.push((POSITION.to_owned(), position.to_string().into_bytes()));
        }
        if puts.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        store.write_settings(&puts, &deletes)?;
        for (bucket, delta) in &self.deltas {
            book.add(bucket, delta);
        }
        if position.is_some() {
            book.position = position;
        }
        Ok(())
    }
}

/// The contribution a record was last counted with.
pub fn counted(store: &dyn Store, record: &Record) -> Result<Option<Contribution>, StoreError> {
    store
        .setting(&Bucket::of(record).contribution_key(&record.id))?
        .map(|bytes| serde_json::from_slice(&bytes).map_err(|e| corrupt("KPI contribution", e)))
        .transpose()
}

/// The contributions of records created in one hour of one pair.
pub fn contributions_in(
    store: &dyn Store,
    domain: &Domain,
    process: Process,
    hour: i64,
) -> Result<Vec<Contribution>, StoreError> {
    let bucket = Bucket {
        domain: domain.clone(),
        process,
        hour,
    };
    store
        .settings(&bucket.contributions_prefix())?
        .into_iter()
        .map(|(_, bytes)| {
            serde_json::from_slice(&bytes).map_err(|e| corrupt("KPI contribution", e))
        })
        .collect()
}
