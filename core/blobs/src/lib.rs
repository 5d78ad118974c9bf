//! Attachment contents on disk, content-addressed: a blob's name is the SHA-256 of its bytes, so
//! the same file attached twice is stored once. A blob is written to a temporary file, fsynced,
//! renamed into place and its directory fsynced before anyone may reference it, so a crash
//! leaves at worst an unreferenced blob, which [`BlobStore::collect`] removes, never a reference
//! to a missing one.
//!
//! On a store several nodes share, [`BlobStore::shared_through`] makes the directory a cache of
//! blobs kept in that store (see `shared`).

mod shared;

use std::{
    collections::HashSet,
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// From this size on a blob is hashed on a thread of its own while it is written: SHA-256 and
/// the disk each take about as long as the other, so together they run at the slower one's
/// speed instead of the sum of both. Smaller blobs are not worth a thread.
const HASH_BESIDE_FROM: u64 = 1 << 20;

/// Chunks queued for the hashing thread; the writer waits when it is this far ahead.
const CHUNKS_QUEUED_FOR_HASHING: usize = 16;

/// Bytes written between two requests for an `fdatasync` (made on a thread of its own), so the
/// disk flushes while the upload still arrives and the final fsync, which the client waits
/// for, has only the tail left.
const SYNC_EVERY: u64 = 4 << 20;

/// Why a blob could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The blob grew past the limit; nothing was kept.
    #[error("larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The disk failed.
    #[error("blob store: {0}")]
    Io(#[from] io::Error),
}

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Lowercase hex SHA-256 of the contents: the blob's name.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A directory of blobs, and the shared store behind it if there is one.
#[derive(Clone)]
pub struct BlobStore {
    dir: PathBuf,
    shared: Option<std::sync::Arc<dyn usm_store::Store>>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("dir", &self.dir)
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

fn is_digest(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl BlobStore {
    /// Opens (or creates) the blob directory `dir`, removing uploads a crash left half-written.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let store = Self {
            dir: dir.to_path_buf(),
            shared: None,
        };
        fs::create_dir_all(store.tmp())?;
        for entry in fs::read_dir(store.tmp())? {
            fs::remove_file(entry?.path())?;
        }
        Ok(store)
    }

    /// Keeps every blob in `store` too, which other nodes share: a blob is copied there before
    /// [`BlobWriter::finish`] returns, and [`BlobStore::fetch`] brings one this node lacks.
    pub fn shared_through(mut self, store: std::sync::Arc<dyn usm_store::Store>) -> Self {
        self.shared = Some(store);
        self
    }

    fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// The path of the blob named `sha256` on this node, fetched from the shared store when
    /// another node stored it; `NotFound` when no one has it or the name is not a digest.
    pub fn fetch(&self, sha256: &str) -> io::Result<PathBuf> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = self
            .path(sha256)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not a digest"))?;
        if path.exists() {
            return Ok(path);
        }
        let Some(store) = &self.shared else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such blob"));
        };
        let tmp = self.tmp().join(format!(
            "fetch-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        if shared::fetch(store.as_ref(), sha256, &path, &tmp)? {
            Ok(path)
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, "no such blob"))
        }
    }

    /// Where the blob named `sha256` lives (two-level fan-out keeps directories small); `None`
    /// for a name that is not a digest, so no caller can reach outside the store.
    pub fn path(&self, sha256: &str) -> Option<PathBuf> {
        is_digest(sha256).then(|| self.dir.join(&sha256[..2]).join(sha256))
    }

    /// Starts a blob of at most `limit` bytes.
    pub fn writer(&self, limit: u64) -> Result<BlobWriter, BlobError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = self.tmp().join(format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = File::options().write(true).create_new(true).open(&tmp)?;
        Ok(BlobWriter {
            store: self.clone(),
            file: Some(file),
            tmp,
            hashing: Hashing::Here(Sha256::new()),
            size: 0,
            unsynced: 0,
            flushing: None,
            limit,
        })
    }

    /// Copies every blob of this directory into the shared store (moving a store from a data
    /// directory into a database); returns how many.
    pub fn share_all(&self) -> io::Result<usize> {
        let Some(store) = &self.shared else {
            return Ok(0);
        };
        let mut shared = 0;
        for (sha256, path) in self.local_blobs()? {
            shared::put(store.as_ref(), &sha256, &path, fs::metadata(&path)?.len())?;
            shared += 1;
        }
        Ok(shared)
    }

    /// Brings every blob of the shared store into this directory (moving a store from a
    /// database into a data directory); returns how many.
    pub fn fetch_all(&self) -> io::Result<usize> {
        let Some(store) = &self.shared else {
            return Ok(0);
        };
        let digests = shared::list(store.as_ref())?;
        for sha256 in &digests {
            self.fetch(sha256)?;
        }
        Ok(digests.len())
    }

    /// Every blob of this directory: (digest, path).
    fn local_blobs(&self) -> io::Result<Vec<(String, PathBuf)>> {
        let mut blobs = Vec::new();
        for fan in fs::read_dir(&self.dir)? {
            let fan = fan?;
            if fan.file_name() == "tmp" || !fan.file_type()?.is_dir() {
                continue;
            }
            for blob in fs::read_dir(fan.path())? {
                let blob = blob?;
                let name = blob.file_name().to_string_lossy().into_owned();
                if is_digest(&name) {
                    blobs.push((name, blob.path()));
                }
            }
        }
        Ok(blobs)
    }

    /// Removes the blobs not in `referenced` that are older than `grace` (so a blob written for
    /// a commit still in flight is kept). Returns how many it removed.
    pub fn collect(&self, referenced: &HashSet<String>, grace: Duration) -> io::Result<usize> {
        let mut removed = match &self.shared {
            Some(store) => shared::collect(store.as_ref(), |sha| referenced.contains(sha), grace)?,
            None => 0,
        };
        let cutoff = SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        for (sha256, path) in self.local_blobs()? {
            if !referenced.contains(&sha256) && fs::metadata(&path)?.modified()? < cutoff {
                fs::remove_file(path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// `fdatasync`s on a thread of their own: the disk flushes what is written while the writes go
/// on.
struct Flushing {
    requests: SyncSender<()>,
    flushed: JoinHandle<io::Result<()>>,
}

impl Flushing {
    fn start(file: &File) -> io::Result<Self> {
        let file = file.try_clone()?;
        let (requests, pending) = sync_channel::<()>(1);
        let flushed = std::thread::Builder::new()
            .name("usm-blob-sync".into())
            .spawn(move || {
                for () in pending {
                    file.sync_data()?;
                }
                Ok(())
            })?;
        Ok(Self { requests, flushed })
    }

    /// Asks for a flush, unless one is waiting already. A flush that failed ends the thread;
    /// [`Flushing::finish`] reports its error.
    fn request(&self) {
        match self.requests.try_send(()) {
            Ok(()) | Err(TrySendError::Full(()) | TrySendError::Disconnected(())) => {}
        }
    }

    fn finish(self) -> io::Result<()> {
        drop(self.requests);
        self.flushed
            .join()
            .map_err(|_| io::Error::other("the thread flushing a blob panicked"))?
    }
}

enum Hashing {
    Here(Sha256),
    Beside {
        chunks: SyncSender<Bytes>,
        digest: JoinHandle<Sha256>,
    },
}

impl Hashing {
    fn update(&mut self, chunk: &Bytes, size: u64) {
        if let Self::Here(hasher) = self
            && size >= HASH_BESIDE_FROM
        {
            let (chunks, queue) = sync_channel::<Bytes>(CHUNKS_QUEUED_FOR_HASHING);
            let mut beside = std::mem::take(hasher);
            let spawned = std::thread::Builder::new()
                .name("usm-blob-hash".into())
                .spawn(move || {
                    for chunk in queue {
                        beside.update(&chunk);
                    }
                    beside
                });
            // Without a thread to spare the hashing simply continues here.
            match spawned {
                Ok(digest) => *self = Self::Beside { chunks, digest },
                Err(error) => {
                    tracing::warn!(%error, "no thread to hash a blob beside its writes");
                }
            }
        }
        match self {
            Self::Here(hasher) => hasher.update(chunk),
            Self::Beside { chunks, .. } => {
                // A send fails only when the thread is gone; `digest` then reports it.
                let _ = chunks.send(chunk.clone());
            }
        }
    }

    fn finish(self) -> io::Result<String> {
        let hasher = match self {
            Self::Here(hasher) => hasher,
            Self::Beside { chunks, digest } => {
                drop(chunks);
                digest
                    .join()
                    .map_err(|_| io::Error::other("the thread hashing a blob panicked"))?
            }
        };
        Ok(format!("{:x}", hasher.finalize()))
    }
}

/// A blob being written: feed it chunks, then [`BlobWriter::finish`]. Dropped unfinished, it
/// leaves nothing behind.
pub struct BlobWriter {
    store: BlobStore,
    file: Option<File>,
    tmp: PathBuf,
    hashing: Hashing,
    size: u64,
    unsynced: u64,
    flushing: Option<Flushing>,
    limit: u64,
}

impl BlobWriter {
    /// Appends a chunk; refuses one that would pass the limit.
    pub fn write(&mut self, chunk: impl Into<Bytes>) -> Result<(), BlobError> {
        let chunk = chunk.into();
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(BlobError::TooLarge { limit: self.limit });
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("the blob is finished"))?;
        self.hashing.update(&chunk, self.size);
        file.write_all(&chunk)?;
        self.unsynced += chunk.len() as u64;
        if self.unsynced >= SYNC_EVERY {
            self.unsynced = 0;
            if self.flushing.is_none() {
                self.flushing = Flushing::start(file)
                    .inspect_err(|error| {
                        tracing::warn!(%error, "no thread to flush a blob beside its writes");
                    })
                    .ok();
            }
            match &self.flushing {
                Some(flushing) => flushing.request(),
                None => file.sync_data()?,
            }
        }
        Ok(())
    }

    /// Makes the blob durable under its digest and returns it.
    pub fn finish(mut self) -> Result<Blob, BlobError> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("the blob is finished"))?;
        if let Some(flushing) = self.flushing.take() {
            flushing.finish()?;
        }
        file.sync_all()?;
        drop(file);
        let hashing = std::mem::replace(&mut self.hashing, Hashing::Here(Sha256::new()));
        let sha256 = hashing.finish()?;
        let path = self
            .store
            .path(&sha256)
            .ok_or_else(|| io::Error::other("a digest that is not one"))?;
        let fan = path.parent().unwrap_or(&self.store.dir).to_path_buf();
        fs::create_dir_all(&fan)?;
        if path.exists() {
            // The same bytes are stored already: touch them, so collection keeps them as new.
            File::options()
                .append(true)
                .open(&path)?
                .set_modified(SystemTime::now())?;
            fs::remove_file(&self.tmp)?;
        } else {
            fs::rename(&self.tmp, &path)?;
            sync_dir(&fan)?;
            sync_dir(&self.store.dir)?;
        }
        if let Some(store) = &self.store.shared {
            shared::put(store.as_ref(), &sha256, &path, self.size)?;
        }
        Ok(Blob {
            sha256,
            size: self.size,
        })
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.take().is_some()
            && let Err(error) = fs::remove_file(&self.tmp)
        {
            tracing::warn!(%error, path = %self.tmp.display(), "cannot remove an unfinished blob");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_blob_is_fetched_by_another_node_checked_and_collected() {
        let store: std::sync::Arc<dyn usm_store::Store> =
            std::sync::Arc::new(usm_store::MemoryStore::new());
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = BlobStore::open(one.path())
            .unwrap()
            .shared_through(std::sync::Arc::clone(&store));
        let second = BlobStore::open(two.path())
            .unwrap()
            .shared_through(std::sync::Arc::clone(&store));
        let bytes: Vec<u8> = (0..(3u32 << 20) + 5).map(|i| (i % 249) as u8).collect();
        let mut writer = first.writer(u64::MAX).unwrap();
        writer.write(bytes.clone()).unwrap();
        let blob = writer.finish().unwrap();
        let fetched = second.fetch(&blob.sha256).unwrap();
        assert!(fetched.starts_with(two.path()));
        assert!(fs::read(&fetched).unwrap() == bytes);
        let unknown = "0".repeat(64);
        assert_eq!(
            second.fetch(&unknown).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );

        // A damaged chunk is refused, not served.
        let third = tempfile::tempdir().unwrap();
        let damaged = BlobStore::open(third.path())
            .unwrap()
            .shared_through(std::sync::Arc::clone(&store));
        let key = format!("blob/{}/000001", blob.sha256);
        let mut chunk = store.artifact(&key).unwrap().unwrap();
        chunk[7] ^= 1;
        store.put_artifact(&key, &chunk).unwrap();
        assert!(damaged.fetch(&blob.sha256).is_err());
        assert!(!damaged.path(&blob.sha256).unwrap().exists());

        // Referenced, it stays; unreferenced past the grace, it goes from the store too.
        let referenced = HashSet::from([blob.sha256.clone()]);
        first.collect(&referenced, Duration::ZERO).unwrap();
        assert!(
            store
                .setting(&format!("blob/{}", blob.sha256))
                .unwrap()
                .is_some()
        );
        first.collect(&HashSet::new(), Duration::ZERO).unwrap();
        assert!(
            store
                .setting(&format!("blob/{}", blob.sha256))
                .unwrap()
                .is_none()
        );
        assert!(store.artifact(&key).unwrap().is_none());
    }

    #[test]
    fn blobs_are_content_addressed_limited_and_collected() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut writer = store.writer(10).unwrap();
        writer.write(&b"hello "[..]).unwrap();
        writer.write(&b"you"[..]).unwrap();
        let blob = writer.finish().unwrap();
        assert_eq!(blob.size, 9);
        assert_eq!(blob.sha256, format!("{:x}", Sha256::digest(b"hello you")));
        let path = store.path(&blob.sha256).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"hello you");
        // The same bytes again are the same blob.
        let mut again = store.writer(10).unwrap();
        again.write(&b"hello you"[..]).unwrap();
        assert_eq!(again.finish().unwrap(), blob);
        // Past the limit nothing is kept, and an abandoned writer leaves nothing either.
        let mut big = store.writer(4).unwrap();
        assert!(matches!(
            big.write(&b"12345"[..]),
            Err(BlobError::TooLarge { limit: 4 })
        ));
        drop(big);
        let mut abandoned = store.writer(100).unwrap();
        abandoned.write(&b"half"[..]).unwrap();
        drop(abandoned);
        assert_eq!(fs::read_dir(store.tmp()).unwrap().count(), 0);
        // Names that are not digests reach nothing.
        assert!(store.path("../../etc/passwd").is_none());
        // Collection keeps referenced and recent blobs.
        let referenced = HashSet::from([blob.sha256.clone()]);
        let mut other = store.writer(100).unwrap();
        other.write(&b"orphan"[..]).unwrap();
        let orphan = other.finish().unwrap();
        assert_eq!(
            store
                .collect(&referenced, Duration::from_secs(3600))
                .unwrap(),
            0
        );
        assert_eq!(store.collect(&referenced, Duration::ZERO).unwrap(), 1);
        assert!(!store.path(&orphan.sha256).unwrap().exists());
        assert!(path.exists());
    }

    #[test]
    fn a_large_blob_hashed_and_flushed_beside_its_writes_is_named_by_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..SYNC_EVERY + HASH_BESIDE_FROM + 12_345)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let mut writer = store.writer(bytes.len() as u64).unwrap();
        for chunk in bytes.chunks(100_000) {
            writer.write(chunk.to_vec()).unwrap();
        }
        assert!(matches!(writer.hashing, Hashing::Beside { .. }));
        assert!(writer.flushing.is_some());
        let blob = writer.finish().unwrap();
        assert_eq!(blob.sha256, format!("{:x}", Sha256::digest(&bytes)));
        assert_eq!(fs::read(store.path(&blob.sha256).unwrap()).unwrap(), bytes);
        // Abandoned half way, with its hashing thread running, it leaves nothing.
        let mut abandoned = store.writer(bytes.len() as u64).unwrap();
        abandoned
            .write(bytes[..2 * HASH_BESIDE_FROM as usize].to_vec())
            .unwrap();
        drop(abandoned);
        assert_eq!(fs::read_dir(store.tmp()).unwrap().count(), 0);
    }

    #[test]
    fn a_reopen_clears_half_written_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut writer = store.writer(100).unwrap();
        writer.write(&b"half"[..]).unwrap();
        // A crash: the writer is never dropped.
        std::mem::forget(writer);
        assert_eq!(fs::read_dir(store.tmp()).unwrap().count(), 1);
        let store = BlobStore::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(store.tmp()).unwrap().count(), 0);
    }
}
