//! `usm store copy --from DIR|URL --to DIR|URL`: moves a whole store between the embedded store
//! (a data directory) and PostgreSQL (a URL), attachments included, with a progress bar, and
//! checks the counts at the end.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use usm_store::{
    SledStore, Store, StoreConfig,
    copy::{Copied, KvCopy},
};
use usm_store_postgres::{PostgresSettings, PostgresStore, redact};

/// Where a store is.
#[derive(Debug, Clone)]
enum Location {
    /// A data directory of the embedded store.
    Directory(PathBuf),
    /// A PostgreSQL database.
    Database(String),
}

impl Location {
    fn parse(text: &str) -> Self {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Self::Database(text.to_owned())
        } else {
            Self::Directory(PathBuf::from(text))
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Directory(dir) => dir.display().to_string(),
            Self::Database(url) => redact(url),
        }
    }
}

/// Arguments of `usm store copy`.
#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// The store to copy: a data directory, or `postgres://user@host:port/database`.
    #[arg(long)]
    pub from: String,
    /// Where to copy it: a data directory that holds no store yet, or an empty database.
    #[arg(long)]
    pub to: String,
    /// A file holding the database password (for whichever side is a database).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// PEM certificates of the CAs the database's certificate must chain to (`sslmode=require`).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// No progress bar (it is also left out when standard error is not a terminal).
    #[arg(long)]
    pub quiet: bool,
}

/// What a copy did, printed as JSON.
#[derive(Debug, serde::Serialize)]
pub struct CopyReport {
    /// The source.
    pub from: String,
    /// The target.
    pub to: String,
    /// Entries per tree, the same on both sides.
    pub copied: Copied,
    /// Attachment contents copied.
    pub attachments: usize,
}

/// An opened store, both as the engine sees it and as a copy reads and writes it.
struct Opened {
    store: Arc<dyn Store>,
    raw: Arc<dyn KvCopy + Send + Sync>,
}

fn open(location: &Location, args: &CopyArgs, source: bool) -> anyhow::Result<Opened> {
    match location {
        Location::Directory(dir) => {
            let holds_store = dir.join("db").exists() || dir.join("conf").exists();
            if source && !holds_store {
                anyhow::bail!("{} holds no usm store", dir.display());
            }
            if !source && holds_store {
                anyhow::bail!(
                    "{} holds a store already; copy into a new directory",
                    dir.display()
                );
            }
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let store = Arc::new(SledStore::open(dir, StoreConfig::default())?);
            Ok(Opened {
                store: Arc::clone(&store) as Arc<dyn Store>,
                raw: store,
            })
        }
        Location::Database(url) => {
            let settings = PostgresSettings {
                password_file: args.password_file.clone(),
                ca_file: args.ca_file.clone(),
                ..PostgresSettings::new(url.as_str())
            };
            let store = Arc::new(
                PostgresStore::connect(&settings, StoreConfig::default())
                    .with_context(|| format!("cannot open {}", redact(url)))?,
            );
            Ok(Opened {
                store: Arc::clone(&store) as Arc<dyn Store>,
                raw: store,
            })
        }
    }
}

/// Copies the store, then the attachment contents (files in a data directory, chunks in a
/// database).
pub fn run(args: &CopyArgs) -> anyhow::Result<CopyReport> {
    let (from, to) = (Location::parse(&args.from), Location::parse(&args.to));
    if let (Location::Directory(a), Location::Directory(b)) = (&from, &to)
        && a == b
    {
        anyhow::bail!("--from and --to are the same directory");
    }
    let source = open(&from, args, true)?;
    let target = open(&to, args, false)?;
    let total = usm_store::copy::total_entries(source.raw.as_ref())?;
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{wide_bar} {pos}/{len} entries ({per_sec}, {eta} left)",
        )
        .context("the progress bar's template")?,
    );
    let copied = usm_store::copy::copy(source.raw.as_ref(), target.raw.as_ref(), |n| bar.inc(n))
        .with_context(|| format!("cannot copy {} to {}", from.describe(), to.describe()))?;
    bar.finish_and_clear();
    let attachments = match (&from, &to) {
        (Location::Directory(dir), Location::Database(_)) => {
            usm_blobs::BlobStore::open(&dir.join("attachments"))?
                .shared_through(Arc::clone(&target.store))
                .share_all()?
        }
        (Location::Database(_), Location::Directory(dir)) => {
            usm_blobs::BlobStore::open(&dir.join("attachments"))?
                .shared_through(Arc::clone(&source.store))
                .fetch_all()?
        }
        (Location::Database(_), Location::Database(_)) => {
            // Attachments are artifacts and settings of the database: copied with it.
            0
        }
        (Location::Directory(a), Location::Directory(b)) => {
            let (from, to) = (a.join("attachments"), b.join("attachments"));
            copy_dir(&from, &to)?
        }
    };
    target.store.flush()?;
    Ok(CopyReport {
        from: from.describe(),
        to: to.describe(),
        copied,
        attachments,
    })
}

/// Copies the blob files of one data directory into another.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<usize> {
    let mut copied = 0;
    let Ok(fans) = std::fs::read_dir(from) else {
        return Ok(0);
    };
    for fan in fans {
        let fan = fan?;
        if fan.file_name() == "tmp" || !fan.file_type()?.is_dir() {
            continue;
        }
        let target = to.join(fan.file_name());
        std::fs::create_dir_all(&target)?;
        for blob in std::fs::read_dir(fan.path())? {
            let blob = blob?;
            std::fs::copy(blob.path(), target.join(blob.file_name()))?;
            copied += 1;
        }
    }
    Ok(copied)
}
