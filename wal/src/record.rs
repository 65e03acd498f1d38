//! The on-disk record format of every value flotilla stores: one version
//! byte, a CRC-32 of the payload, then the postcard payload. Corruption is
//! caught here and reported with its column family and key, never decoded
//! into garbage.

use serde::{de::DeserializeOwned, Serialize};

use crate::error::StorageError;
use crate::keys::display_key;

/// Version of the record format.
pub const RECORD_VERSION: u8 = 1;
const HEADER: usize = 5;

/// Encodes a value as a record.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let payload = postcard::to_allocvec(value).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes a record stored under `key` in column family `cf`.
pub fn decode<T: DeserializeOwned>(
    cf: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StorageError> {
    let corrupt = |detail: String| StorageError::Corruption {
        cf,
        key: display_key(key),
        detail,
    };
    if bytes.len() < HEADER {
        return Err(corrupt(format!(
            "record of {} bytes is shorter than its header",
            bytes.len()
        )));
    }
    if bytes[0] != RECORD_VERSION {
        return Err(corrupt(format!("unknown record version {}", bytes[0])));
    }
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let payload = &bytes[HEADER..];
    let actual = crc32fast::hash(payload);
    if stored != actual {
        return Err(corrupt(format!(
            "checksum mismatch: stored {stored:08x}, computed {actual:08x}"
        )));
    }
    postcard::from_bytes(payload).map_err(|e| corrupt(format!("payload does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, EntryPayload};

    #[test]
    fn round_trip_and_every_flipped_byte_is_caught() {
        let entry = Entry {
            term: 3,
            index: 9,
            payload: EntryPayload::Normal(b"hello".to_vec()),
        };
        let bytes = encode(&entry);
        assert_eq!(decode::<Entry>("raft_log", b"k", &bytes).ok(), Some(entry));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let err =
                decode::<Entry>("raft_log", b"k", &bad).expect_err("flipped byte must be detected");
            assert!(
                matches!(err, StorageError::Corruption { cf: "raft_log", .. }),
                "{err}"
            );
        }
    }
}
