//! Module bundles: a `.tar.gz` of a module directory. Unpacking is defensive — bounded entry
//! count, total size and path shapes — because bundles come from clients.

use std::io::{Read, Write};

use crate::ModuleFiles;

/// Most files in a bundle.
pub const MAX_BUNDLE_FILES: usize = 256;
/// Most bytes in a bundle, uncompressed.
pub const MAX_BUNDLE_BYTES: u64 = 64 * 1024 * 1024;

/// Unpacks a `.tar.gz` bundle. Files may sit at the root or under one top-level directory;
/// only regular files are kept; absolute paths, `..` and links are refused.
pub fn unpack(bytes: &[u8]) -> Result<ModuleFiles, String> {
    let decoder = flate2::read::GzDecoder::new(bytes);
    // One byte past the limit tells an oversized bundle from one exactly at it.
    let mut archive = tar::Archive::new(decoder.take(MAX_BUNDLE_BYTES + 1024 * 1024));
    let mut files = ModuleFiles::new();
    let mut total = 0u64;
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar.gz bundle: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("not a tar.gz bundle: {e}"))?;
        let kind = entry.header().entry_type();
        if kind.is_dir()
            || kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
        {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| format!("bad path in bundle: {e}"))?
            .into_owned();
        let name = path.to_string_lossy().replace('\\', "/");
        if !kind.is_file() {
            return Err(format!("{name}: only regular files may be in a bundle"));
        }
        let name = name.trim_start_matches("./").to_owned();
        if name.starts_with('/') || name.split('/').any(|part| part == ".." || part.is_empty()) {
            return Err(format!(
                "{name}: paths must be relative and stay inside the bundle"
            ));
        }
        // Which of two entries counts is the unpacker's choice, not the author's: refuse both.
        if files.contains_key(&name) {
            return Err(format!("{name}: the bundle holds this path twice"));
        }
        total += entry.size();
        if files.len() >= MAX_BUNDLE_FILES || total > MAX_BUNDLE_BYTES {
            return Err(format!(
                "a bundle holds at most {MAX_BUNDLE_FILES} files and {MAX_BUNDLE_BYTES} bytes"
            ));
        }
        let mut content = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
        entry
            .read_to_end(&mut content)
            .map_err(|e| format!("{name}: {e}"))?;
        files.insert(name, content);
    }
    Ok(strip_common_directory(files))
}

/// `itil4/module.toml` → `module.toml` when every file is under `itil4/`.
fn strip_common_directory(files: ModuleFiles) -> ModuleFiles {
    if files.contains_key("module.toml") {
        return files;
    }
    let Some(first) = files
        .keys()
        .next()
        .and_then(|k| k.split_once('/'))
        .map(|(dir, _)| format!("{dir}/"))
    else {
        return files;
    };
    if files.keys().all(|k| k.starts_with(&first)) {
        files
            .into_iter()
            .map(|(k, v)| (k[first.len()..].to_owned(), v))
            .collect()
    } else {
        files
    }
}

/// Packs a module's files into a deterministic `.tar.gz` (sorted paths, zero times), so the same
/// files always give the same bytes and the same digest.
pub fn pack(files: &ModuleFiles) -> Result<Vec<u8>, String> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(encoder);
    builder.mode(tar::HeaderMode::Deterministic);
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder
            .append_data(&mut header, name, content.as_slice())
            .map_err(|e| format!("{name}: {e}"))?;
    }
    let encoder = builder.into_inner().map_err(|e| e.to_string())?;
    let mut out = encoder.finish().map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(entries: &[(&str, &str)]) -> ModuleFiles {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn pack_and_unpack_round_trip_deterministically() {
        let original = files(&[
            ("module.toml", "id = \"x\""),
            ("scripts/a.rhai", "fn run(i) {}"),
        ]);
        let bytes = pack(&original).unwrap();
        assert_eq!(pack(&original).unwrap(), bytes, "same files, same bytes");
        assert_eq!(unpack(&bytes).unwrap(), original);
    }

    #[test]
    fn a_single_top_directory_is_stripped() {
        let nested = files(&[("itil4/module.toml", "id"), ("itil4/itil4.wasm", "w")]);
        let unpacked = unpack(&pack(&nested).unwrap()).unwrap();
        assert_eq!(
            unpacked.keys().collect::<Vec<_>>(),
            ["itil4.wasm", "module.toml"]
        );
    }

    /// A bundle of `count` files of `size` bytes each.
    fn many(count: usize, size: usize) -> Vec<u8> {
        let files: ModuleFiles = (0..count)
            .map(|i| (format!("f{i:03}"), vec![b'x'; size]))
            .collect();
        pack(&files).unwrap()
    }

    #[test]
    fn file_count_and_size_limits_hold_at_the_limit_and_refuse_past_it() {
        assert_eq!(unpack(&many(MAX_BUNDLE_FILES, 1)).unwrap().len(), 256);
        let error = unpack(&many(MAX_BUNDLE_FILES + 1, 1)).unwrap_err();
        assert!(error.contains("at most 256 files"), "{error}");
        let size = usize::try_from(MAX_BUNDLE_BYTES).unwrap() / 4;
        let at = unpack(&many(4, size)).unwrap();
        assert_eq!(at.values().map(Vec::len).sum::<usize>(), 64 * 1024 * 1024);
        let mut past: ModuleFiles = (0..4).map(|i| (format!("f{i}"), vec![0; size])).collect();
        past.insert("one-more".into(), vec![0]);
        let error = unpack(&pack(&past).unwrap()).unwrap_err();
        assert!(error.contains("67108864 bytes"), "{error}");
    }

    /// A bundle of one entry of `kind` named `name` (raw, bypassing the builder's checks),
    /// linking to `target` when it is a link.
    fn raw_entry(name: &str, kind: tar::EntryType, target: Option<&str>) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.set_size(if target.is_some() { 0 } else { 1 });
        header.set_entry_type(kind);
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(target) = target {
            old.linkname[..target.len()].copy_from_slice(target.as_bytes());
        }
        header.set_cksum();
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let data: &[u8] = if target.is_some() { b"" } else { b"x" };
        builder.append(&header, data).unwrap();
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn links_and_absolute_paths_are_refused() {
        use tar::EntryType;
        let plain = raw_entry("module.toml", EntryType::Regular, None);
        assert!(
            unpack(&plain).is_ok(),
            "the same entry as a plain file passes"
        );
        for (kind, target) in [
            (EntryType::Symlink, "/etc/passwd"),
            (EntryType::Symlink, "module.toml"),
            (EntryType::Link, "module.toml"),
        ] {
            let error = unpack(&raw_entry("data", kind, Some(target))).unwrap_err();
            assert!(error.contains("only regular files"), "{kind:?}: {error}");
        }
        let error = unpack(&raw_entry("/etc/module.toml", EntryType::Regular, None)).unwrap_err();
        assert!(error.contains("relative"), "{error}");
    }

    #[test]
    fn a_path_given_twice_is_refused() {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (name, content) in [("module.toml", "id = 'a'"), ("./module.toml", "id = 'b'")] {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            builder
                .append_data(&mut header, name, content.as_bytes())
                .unwrap();
        }
        let bytes = builder.into_inner().unwrap().finish().unwrap();
        let error = unpack(&bytes).unwrap_err();
        assert!(error.contains("module.toml"), "{error}");
    }

    #[test]
    fn hostile_bundles_are_refused() {
        assert!(unpack(b"definitely not gzip").is_err());
        for bad in ["../escape", "a/../../b"] {
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_entry_type(tar::EntryType::Regular);
            // Write the raw name, bypassing the builder's own path checks.
            let name = header.as_old_mut();
            name.name[..bad.len()].copy_from_slice(bad.as_bytes());
            header.set_cksum();
            let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::fast(),
            ));
            builder.append(&header, &b"x"[..]).unwrap();
            let bytes = builder.into_inner().unwrap().finish().unwrap();
            assert!(unpack(&bytes).is_err(), "{bad} accepted");
        }
    }
}
