//! The wire encoding of Raft messages: one version byte, then postcard.
//! Every encode and decode of a message goes through here.

use thiserror::Error;

use crate::raft::message::Message;

/// The current wire format version. Also raised when replicas of different
/// versions would apply the same log differently, so they refuse each other
/// instead of diverging: 2 enforces session limits per command and stores
/// the state machine's clock.
pub const WIRE_VERSION: u8 = 2;

/// A frame that could not be decoded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The frame was empty.
    #[error("empty frame: expected a version byte")]
    Empty,
    /// The frame was written by another format version.
    #[error(
        "frame has wire version {found}, this node speaks {WIRE_VERSION}; upgrade the older node"
    )]
    Version {
        /// The version byte found.
        found: u8,
    },
    /// The body did not decode.
    #[error("malformed frame body: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Encodes a message with the version byte in front.
pub fn encode_message(msg: &Message) -> Vec<u8> {
    let out = vec![WIRE_VERSION];
    // Serializing into a Vec cannot fail for these plain types.
    match postcard::to_extend(msg, out) {
        Ok(bytes) => bytes,
        Err(_) => vec![WIRE_VERSION],
    }
}

/// Decodes a frame produced by [`encode_message`].
pub fn decode_message(frame: &[u8]) -> Result<Message, CodecError> {
    let (&version, body) = frame.split_first().ok_or(CodecError::Empty)?;
    if version != WIRE_VERSION {
        return Err(CodecError::Version { found: version });
    }
    Ok(postcard::from_bytes(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::message::MessageBody;

    #[test]
    fn round_trip_and_version_check() {
        let msg = Message {
            group: 3,
            from: 1,
            to: 2,
            term: 9,
            body: MessageBody::TimeoutNow,
        };
        let frame = encode_message(&msg);
        assert_eq!(frame[0], WIRE_VERSION);
        assert_eq!(decode_message(&frame).ok(), Some(msg));
        let mut bad = frame.clone();
        bad[0] = 9;
        assert!(matches!(
            decode_message(&bad),
            Err(CodecError::Version { found: 9 })
        ));
        assert!(matches!(
            decode_message(&frame[..2]),
            Err(CodecError::Malformed(_))
        ));
        assert!(matches!(decode_message(&[]), Err(CodecError::Empty)));
    }
}
