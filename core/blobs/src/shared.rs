//! Blobs kept in a store several nodes share (the PostgreSQL store), so that a file uploaded
//! through one node downloads through any other. The node's directory stays the write path and
//! becomes a cache: a finished blob is copied into the store in 1 MiB chunks (artifacts
//! `blob/{sha256}/{n}`) before anything may reference it, with its manifest (setting
//! `blob/{sha256}`) written last, so a manifest always names complete chunks. A node missing a
//! blob fetches it, checks its digest and keeps it.

use std::{
    fs::{self, File},
    io::{self, Read, Write},
    path::Path,
    time::Duration,
};

use sha2::{Digest, Sha256};
use usm_store::{Store, StoreError};

/// Bytes per chunk: big enough that a 25 MiB attachment is 25 rows, small enough for one.
const CHUNK: usize = 1 << 20;

/// What the store holds of a blob.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Manifest {
    size: u64,
    chunks: u64,
    /// When it was stored, in milliseconds since the epoch (the grace of collection).
    stored_at_ms: i64,
}

fn manifest_key(sha256: &str) -> String {
    format!("blob/{sha256}")
}

fn chunk_key(sha256: &str, n: u64) -> String {
    format!("blob/{sha256}/{n:06}")
}

fn store_error(error: StoreError) -> io::Error {
    io::Error::other(error)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn manifest(store: &dyn Store, sha256: &str) -> io::Result<Option<Manifest>> {
    store
        .setting(&manifest_key(sha256))
        .map_err(store_error)?
        .map(|bytes| serde_json::from_slice(&bytes).map_err(io::Error::other))
        .transpose()
}

/// Copies the finished blob at `path` into `store`, unless it is there already.
pub(crate) fn put(store: &dyn Store, sha256: &str, path: &Path, size: u64) -> io::Result<()> {
    if manifest(store, sha256)?.is_some() {
        return Ok(());
    }
    let mut file = File::open(path)?;
    let mut buffer = vec![0; CHUNK];
    let mut chunks = 0;
    loop {
        let mut filled = 0;
        while filled < CHUNK {
            let read = file.read(&mut buffer[filled..])?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        if filled == 0 {
            break;
        }
        store
            .put_artifact(&chunk_key(sha256, chunks), &buffer[..filled])
            .map_err(store_error)?;
        chunks += 1;
        if filled < CHUNK {
            break;
        }
    }
    let manifest = Manifest {
        size,
        chunks,
        stored_at_ms: now_ms(),
    };
    let bytes = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
    store
        .write_settings(&[(manifest_key(sha256), bytes)], &[])
        .map_err(store_error)
}

/// Writes the blob `sha256` from `store` to `path` (through `tmp`), checking size and digest;
/// `false` when the store does not have it.
pub(crate) fn fetch(store: &dyn Store, sha256: &str, path: &Path, tmp: &Path) -> io::Result<bool> {
    let Some(manifest) = manifest(store, sha256)? else {
        return Ok(false);
    };
    let mut file = File::options().write(true).create_new(true).open(tmp)?;
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let copied = (|| {
        for n in 0..manifest.chunks {
            let chunk = store
                .artifact(&chunk_key(sha256, n))
                .map_err(store_error)?
                .ok_or_else(|| {
                    io::Error::other(format!("chunk {n} of blob {sha256} is missing"))
                })?;
            hash.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk)?;
        }
        let digest = format!("{:x}", hash.finalize_reset());
        if size != manifest.size || digest != sha256 {
            return Err(io::Error::other(format!(
                "blob {sha256} from the store is {size} bytes with digest {digest}"
            )));
        }
        file.sync_all()?;
        if let Some(fan) = path.parent() {
            fs::create_dir_all(fan)?;
        }
        fs::rename(tmp, path)
    })();
    if copied.is_err() {
        let _ = fs::remove_file(tmp);
    }
    copied.map(|()| true)
}

/// The digests of the blobs `store` holds.
pub(crate) fn list(store: &dyn Store) -> io::Result<Vec<String>> {
    Ok(store
        .settings("blob/")
        .map_err(store_error)?
        .into_iter()
        .filter_map(|(key, _)| key.strip_prefix("blob/").map(str::to_owned))
        .collect())
}

/// Removes from `store` the blobs `keep` rejects that were stored longer than `grace` ago.
pub(crate) fn collect(
    store: &dyn Store,
    keep: impl Fn(&str) -> bool,
    grace: Duration,
) -> io::Result<usize> {
    let cutoff = now_ms().saturating_sub(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX));
    let mut removed = 0;
    for (key, bytes) in store.settings("blob/").map_err(store_error)? {
        let Some(sha256) = key.strip_prefix("blob/") else {
            continue;
        };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
        if keep(sha256) || manifest.stored_at_ms > cutoff {
            continue;
        }
        // The manifest first: a blob without one is never read.
        store
            .write_settings(&[], std::slice::from_ref(&key))
            .map_err(store_error)?;
        for n in 0..manifest.chunks {
            store
                .delete_artifact(&chunk_key(sha256, n))
                .map_err(store_error)?;
        }
        removed += 1;
    }
    Ok(removed)
}
