//! Property tests for the parsers that take client input: merge patches, cursors (through the
//! engine's list), module manifests and bundles, and USM-WIF documents. None may panic; each
//! round-trips what it accepts.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use usm_engine::{Engine, ListRequest, Module, ModuleFiles, Runtimes, bundle, workflow};
use usm_model::{Actor, Catalog, Role, merge_patch};
use usm_store::MemoryStore;

/// Arbitrary JSON, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-c]{1,2}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-c]{1,2}", json_value(), 0..5)
        .prop_map(|m| m.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// RFC 7396: applying the same patch twice changes nothing more; null members end up absent.
    #[test]
    fn merge_patch_is_idempotent(target in object(), patch in object()) {
        let mut once = target.clone();
        merge_patch(&mut once, &patch, 64).unwrap();
        let mut twice = once.clone();
        merge_patch(&mut twice, &patch, 64).unwrap();
        prop_assert_eq!(&once, &twice);
        for (key, value) in &patch {
            if value.is_null() {
                prop_assert!(!once.contains_key(key));
            }
        }
    }

    /// Any cursor string is either refused with bad_cursor or accepted; never a panic.
    #[test]
    fn cursors_never_panic(cursor in "\\PC{0,80}") {
        let engine = Engine::new(Arc::new(MemoryStore::new()), Arc::new(Catalog::core()), Default::default());
        let actor = Actor::new("ann", [Role::Agent]);
        let result = engine.list(&actor, ListRequest { cursor: Some(cursor), ..Default::default() });
        if let Err(error) = result {
            prop_assert_eq!(error.code(), usm_model::ErrorCode::BadCursor);
        }
    }

    /// Any manifest text is refused with a location or accepted; never a panic.
    #[test]
    fn manifests_never_panic(text in "\\PC{0,300}") {
        let files: ModuleFiles = [("module.toml".to_owned(), text.into_bytes())].into();
        if let Err(error) = Module::build(files, &Runtimes::default(), &[]) {
            prop_assert!(!error.location.is_empty());
        }
    }

    /// Any bytes are refused as a bundle or unpacked; packing what was unpacked round-trips.
    #[test]
    fn bundles_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(files) = bundle::unpack(&bytes) {
            let again = bundle::unpack(&bundle::pack(&files).unwrap()).unwrap();
            prop_assert_eq!(files, again);
        }
    }

    /// USM-WIF: any JSON is refused or parsed; what parses exports as it came, unknown members
    /// included, and parses again to the same document.
    #[test]
    fn usm_wif_round_trips(value in json_value(), slug in "[a-z][a-z0-9-]{0,10}", letters in prop::collection::vec("[RACI]", 1..3)) {
        let _ = workflow::parse(value.to_string().as_bytes(), None);
        let document = json!({"format-version": "1.0.0", "type": "workflow-template", "x-extra": value, "slug": slug,
            "steps": [{"id": "s", "process": "operate", "x-extra": value,
                "activities": [{"id": "a", "responsibilities": {"desk": letters}, "x-extra": value}]}],
            "profiles": [{"id": "desk", "x-extra": value}]});
        match workflow::parse(document.to_string().as_bytes(), None) {
            Ok(parsed) => {
                let exported = serde_json::to_vec(&parsed).unwrap();
                prop_assert_eq!(serde_json::from_slice::<Value>(&exported).unwrap(), document);
                prop_assert_eq!(workflow::parse(&exported, None).unwrap(), parsed);
            }
            Err(error) => {
                prop_assert_eq!(error.reason, workflow::Reason::InvalidSlug);
                prop_assert!(slug.ends_with('-') || slug.contains("--"), "{}", error);
            }
        }
    }
}

/// Runs `check` on `cases` generated values; returns how many of them `check` counted as valid
/// (the rest were refused as they should be). Reports the share, so a generator that drifts
/// into mostly refused input shows.
fn share_of_valid<S: Strategy>(
    name: &str,
    strategy: S,
    check: impl Fn(S::Value) -> Result<bool, TestCaseError>,
) -> f64 {
    let cases = 256;
    let valid = std::sync::atomic::AtomicU32::new(0);
    let total = std::sync::atomic::AtomicU32::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
    let result = runner.run(&strategy, |value| {
        total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if check(value)? {
            valid.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("{name}: {error}");
    }
    let (valid, total) = (valid.into_inner(), total.into_inner());
    let share = f64::from(valid) / f64::from(total);
    eprintln!(
        "{name}: {valid} of {total} generated cases were valid ({:.0} %)",
        share * 100.0
    );
    share
}

/// A module's files: a manifest and up to six more files, some in directories.
fn module_files() -> impl Strategy<Value = ModuleFiles> {
    prop::collection::btree_map(
        "[a-z]{1,6}(/[a-z]{1,6})?\\.(rhai|wasm|json)",
        prop::collection::vec(any::<u8>(), 0..64),
        0..6,
    )
    .prop_map(|mut files| {
        files.insert("module.toml".to_owned(), b"id = \"m\"".to_vec());
        files
    })
}

/// How a generated bundle is damaged: mostly not at all, else one byte flipped or the end cut.
#[derive(Debug, Clone)]
enum Damage {
    None,
    Flip(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        6 => Just(Damage::None),
        1 => (any::<prop::sample::Index>(), 1..=255u8).prop_map(|(i, x)| Damage::Flip(i, x)),
        1 => any::<prop::sample::Index>().prop_map(Damage::Truncate),
    ]
}

/// Bundles packed from generated modules unpack to the same files; damaged ones are refused or,
/// if a damaged byte changed nothing that matters, still round-trip.
#[test]
fn bundles_round_trip() {
    let share = share_of_valid("bundles", (module_files(), damage()), |(files, damage)| {
        let mut bytes = bundle::pack(&files).unwrap();
        match &damage {
            Damage::None => {}
            Damage::Flip(at, with) => {
                let at = at.index(bytes.len());
                bytes[at] ^= with;
            }
            Damage::Truncate(at) => bytes.truncate(at.index(bytes.len())),
        }
        match bundle::unpack(&bytes) {
            Ok(unpacked) => {
                if matches!(damage, Damage::None) {
                    prop_assert_eq!(&unpacked, &files);
                }
                let again = bundle::unpack(&bundle::pack(&unpacked).unwrap()).unwrap();
                prop_assert_eq!(&again, &unpacked);
                Ok(unpacked == files)
            }
            Err(error) => {
                prop_assert!(!matches!(damage, Damage::None), "refused: {}", error);
                Ok(false)
            }
        }
    });
    assert!(share > 0.5, "most generated bundles are valid: {share}");
}

/// A manifest as a TOML table: valid by construction, or with one key broken.
fn manifest() -> impl Strategy<Value = (toml::Table, Option<&'static str>)> {
    let valid = (
        "[a-z][a-z0-9_-]{0,20}",
        (0..5u64, 0..20u64, 0..100u64),
        prop::sample::select(vec!["usm", "itil4", "cobit2019", "iso20000", "acme"]),
        "\\PC{0,40}",
        prop::sample::select(vec!["^0.1", ">=0.1, <0.2", "0.1.0", "*"]),
        prop::option::of(Just("records:read")),
    )
        .prop_map(
            |(id, (major, minor, patch), framework, description, api, capability)| {
                let mut table = toml::Table::new();
                table.insert("id".into(), id.into());
                table.insert("version".into(), format!("{major}.{minor}.{patch}").into());
                table.insert("framework".into(), framework.into());
                table.insert("description".into(), description.into());
                table.insert("api".into(), api.into());
                let capabilities: Vec<toml::Value> =
                    capability.into_iter().map(Into::into).collect();
                table.insert("capabilities".into(), capabilities.into());
                table
            },
        );
    let broken = prop::option::weighted(
        0.2,
        prop::sample::select(vec![
            "unknown key",
            "no id",
            "bad id",
            "bad version",
            "api out of range",
            "unknown capability",
        ]),
    );
    (valid, broken).prop_map(|(mut table, broken)| {
        match broken {
            Some("unknown key") => drop(table.insert("colour".into(), "red".into())),
            Some("no id") => drop(table.remove("id")),
            Some("bad id") => drop(table.insert("id".into(), "Not An Id".into())),
            Some("bad version") => drop(table.insert("version".into(), "1.x".into())),
            Some("api out of range") => drop(table.insert("api".into(), "^0.2".into())),
            Some(_) => drop(table.insert("capabilities".into(), vec!["net:all"].into())),
            None => {}
        }
        (table, broken)
    })
}

/// Manifests built from generated tables load when valid (with exactly the values written) and
/// are refused with a location when broken; what loads round-trips through serialisation.
#[test]
fn manifests_round_trip() {
    let build = |text: String| {
        let files: ModuleFiles = [("module.toml".to_owned(), text.into_bytes())].into();
        Module::build(files, &Runtimes::default(), &[])
    };
    let share = share_of_valid("manifests", manifest(), |(table, broken)| {
        let text = toml::to_string(&table).unwrap();
        match (build(text), broken) {
            (Ok(module), None) => {
                let loaded = serde_json::to_value(&module.manifest).unwrap();
                for key in ["id", "version", "framework", "description", "api"] {
                    let written = table[key].as_str().unwrap();
                    let read = loaded[key].as_str().unwrap();
                    if key == "api" {
                        // semver normalises requirements ("0.1.0" reads as "^0.1.0").
                        let same = semver::VersionReq::parse(written).unwrap();
                        prop_assert_eq!(read, same.to_string());
                    } else {
                        prop_assert_eq!(read, written);
                    }
                }
                let again = build(toml::to_string(&module.manifest).unwrap()).unwrap();
                prop_assert_eq!(serde_json::to_value(&again.manifest).unwrap(), loaded);
                Ok(true)
            }
            (Err(error), Some(_)) => {
                prop_assert!(!error.location.is_empty());
                Ok(false)
            }
            (Ok(_), Some(broken)) => Err(TestCaseError::fail(format!("accepted with {broken}"))),
            (Err(error), None) => Err(TestCaseError::fail(format!("refused: {error}"))),
        }
    });
    assert!(share > 0.5, "most generated manifests are valid: {share}");
}
