//! Opaque keyset cursors: the position in the index plus a fingerprint of the filters, so a
//! cursor cannot be replayed against another query.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use usm_store::ListQuery;

use crate::EngineError;

const VERSION: u8 = 1;

fn fingerprint(query: &ListQuery) -> [u8; 4] {
    let mut hasher = Sha256::new();
    for part in [
        query.kind.as_ref().map(|k| k.as_str()),
        query.state.as_ref().map(|s| s.as_str()),
        query.domain.as_ref().map(|d| d.as_str()),
    ] {
        hasher.update(part.unwrap_or("\u{0}").as_bytes());
        hasher.update([0xff]);
    }
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// Encodes the position after which the next page of `query` starts.
pub(crate) fn encode(query: &ListQuery, after: u64) -> String {
    let mut bytes = Vec::with_capacity(13);
    bytes.push(VERSION);
    bytes.extend_from_slice(&after.to_be_bytes());
    bytes.extend_from_slice(&fingerprint(query));
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes a cursor issued for the same filters as `query`.
pub(crate) fn decode(query: &ListQuery, cursor: &str) -> Result<u64, EngineError> {
    if cursor.len() > 64 {
        return Err(EngineError::BadCursor("too long"));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| EngineError::BadCursor("not a cursor issued by this server"))?;
    let [version, rest @ ..] = bytes.as_slice() else {
        return Err(EngineError::BadCursor("empty"));
    };
    if *version != VERSION || rest.len() != 12 {
        return Err(EngineError::BadCursor("not a cursor issued by this server"));
    }
    let (position, print) = rest.split_at(8);
    if print != fingerprint(query) {
        return Err(EngineError::BadCursor(
            "it belongs to a query with other filters",
        ));
    }
    let mut array = [0u8; 8];
    array.copy_from_slice(position);
    Ok(u64::from_be_bytes(array))
}

#[cfg(test)]
mod tests {
    use usm_model::Kind;

    use super::*;

    #[test]
    fn round_trips_and_refuses_foreign_cursors() {
        let incidents = ListQuery {
            kind: Some(Kind::new("incident").unwrap()),
            ..ListQuery::default()
        };
        let cursor = encode(&incidents, 42);
        assert_eq!(decode(&incidents, &cursor).unwrap(), 42);
        assert!(decode(&ListQuery::default(), &cursor).is_err());
        for junk in ["", "!!!", "AAAA", &"A".repeat(100)] {
            assert!(decode(&incidents, junk).is_err(), "{junk}");
        }
    }
}
