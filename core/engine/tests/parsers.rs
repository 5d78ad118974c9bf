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

    /// USM-WIF: any JSON is refused or parsed, and what parses round-trips through export.
    #[test]
    fn usm_wif_round_trips(value in json_value(), slug in "[a-z][a-z0-9-]{0,10}", letters in "[RACI]{1,2}") {
        let _ = workflow::parse(value.to_string().as_bytes());
        let document = json!({"usm_wif": "1", "extra": value, "workflow": {"slug": slug, "name": "W", "steps": [
            {"name": "s", "process": "operate", "activities": [{"name": "a", "raci": {"desk": letters}}]}]}});
        match workflow::parse(document.to_string().as_bytes()) {
            Ok(parsed) => {
                let exported = serde_json::to_vec(&parsed).unwrap();
                prop_assert_eq!(workflow::parse(&exported).unwrap(), parsed);
            }
            Err(error) => prop_assert!(letters.matches('A').count() > 1, "{}", error),
        }
    }
}
