use serde_json::{Map, Value};

/// Why a merge patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergePatchError {
    /// The patch nests deeper than allowed.
    #[error("the patch nests deeper than {0} levels")]
    TooDeep(usize),
}

/// Applies an RFC 7396 JSON merge patch to `target`: objects merge member by member, `null`
/// removes a member, anything else replaces. Refuses patches nested deeper than `max_depth`.
pub fn merge_patch(
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    max_depth: usize,
) -> Result<(), MergePatchError> {
    merge_object(target, patch, max_depth, max_depth)
}

fn merge_object(
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    remaining: usize,
    max_depth: usize,
) -> Result<(), MergePatchError> {
    if remaining == 0 {
        return Err(MergePatchError::TooDeep(max_depth));
    }
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner_patch) => {
                let slot = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(inner_target) = slot {
                    merge_object(inner_target, inner_patch, remaining - 1, max_depth)?;
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn apply(target: Value, patch: Value) -> Value {
        let mut target = target.as_object().unwrap().clone();
        merge_patch(&mut target, patch.as_object().unwrap(), 16).unwrap();
        Value::Object(target)
    }

    #[test]
    fn follows_rfc_7396() {
        // Cases from RFC 7396 appendix A.
        assert_eq!(
            apply(json!({"a": "b"}), json!({"a": "c"})),
            json!({"a": "c"})
        );
        assert_eq!(
            apply(json!({"a": "b"}), json!({"b": "c"})),
            json!({"a": "b", "b": "c"})
        );
        assert_eq!(apply(json!({"a": "b"}), json!({"a": null})), json!({}));
        assert_eq!(
            apply(
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}})
            ),
            json!({"a": {"b": "d"}})
        );
        assert_eq!(
            apply(json!({"a": [{"b": "c"}]}), json!({"a": [1]})),
            json!({"a": [1]})
        );
        assert_eq!(
            apply(json!({"a": "foo"}), json!({"a": {"bb": {"ccc": null}}})),
            json!({"a": {"bb": {}}})
        );
    }

    #[test]
    fn refuses_deep_patches() {
        let mut target = Map::new();
        let patch = json!({"a": {"b": {"c": 1}}});
        assert_eq!(
            merge_patch(&mut target, patch.as_object().unwrap(), 2),
            Err(MergePatchError::TooDeep(2))
        );
    }
}
