//! The byte stream a RocksDB snapshot travels as: a header frame with the
//! applied state, one frame per key/value pair, and an end frame carrying the
//! CRC32 of everything before it and the pair count. Frames are
//! `kind u8 ‖ len u32 (big-endian) ‖ payload`, so a reader needs no total size
//! and can decode chunk by chunk with bounded memory.

use flotilla_wal::{Index, Membership, Term};
use serde::{Deserialize, Serialize};

use crate::SnapshotError;

const HEADER: u8 = 1;
const PAIR: u8 = 2;
const END: u8 = 3;
const FRAME_HEADER_BYTES: usize = 5;
/// Largest frame a reader accepts: a longer length is corruption, not a
/// reason to allocate.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// What a group's state machine has applied, stored atomically with its data.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    /// Index of the last applied entry.
    pub index: Index,
    /// Its term.
    pub term: Term,
    /// Membership in force at `index`.
    pub membership: Membership,
    /// Client sessions (exactly-once bookkeeping), opaque here.
    pub sessions: Vec<u8>,
}

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The applied state the image was read at.
    Header(AppliedState),
    /// A key of the group's data (without the group prefix) and its value.
    Pair(Vec<u8>, Vec<u8>),
}

/// Builds an image; bytes come out through [`take`](Self::take) as they are ready.
pub struct ImageWriter {
    out: Vec<u8>,
    crc: crc32fast::Hasher,
    pairs: u64,
}

impl ImageWriter {
    /// Starts an image with its header.
    pub fn new(applied: &AppliedState) -> Result<Self, SnapshotError> {
        let header = postcard::to_allocvec(applied).map_err(|e| SnapshotError::Corrupt {
            detail: format!("cannot encode the applied state: {e}"),
        })?;
        check_frame_len(header.len(), "the applied state")?;
        let mut writer = ImageWriter {
            out: Vec::new(),
            crc: crc32fast::Hasher::new(),
            pairs: 0,
        };
        writer.frame(HEADER, &[&header]);
        Ok(writer)
    }

    /// Adds a key/value pair. A pair too large for one frame is refused, so
    /// no image is ever built that a reader would reject.
    pub fn pair(&mut self, key: &[u8], value: &[u8]) -> Result<(), SnapshotError> {
        check_frame_len(4 + key.len() + value.len(), "a key/value pair")?;
        let key_len = (key.len() as u32).to_be_bytes();
        self.frame(PAIR, &[&key_len, key, value]);
        self.pairs += 1;
        Ok(())
    }

    /// Bytes ready so far.
    pub fn ready(&self) -> usize {
        self.out.len()
    }

    /// Takes the bytes ready so far.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Ends the image; returns its last bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let crc = self.crc.clone().finalize();
        let mut end = crc.to_be_bytes().to_vec();
        end.extend_from_slice(&self.pairs.to_be_bytes());
        self.frame(END, &[&end]);
        self.out
    }

    fn frame(&mut self, kind: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let start = self.out.len();
        self.out.push(kind);
        self.out.extend_from_slice(&(len as u32).to_be_bytes());
        for part in parts {
            self.out.extend_from_slice(part);
        }
        if kind != END {
            self.crc.update(&self.out[start..]);
        }
    }
}

/// Decodes an image fed in pieces of any size, checking the end frame.
#[derive(Default)]
pub struct ImageReader {
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
    pairs: u64,
    header_seen: bool,
    ended: bool,
}

impl ImageReader {
    /// A reader at the start of an image.
    pub fn new() -> Self {
        ImageReader::default()
    }

    /// Feeds the next bytes; returns every frame they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Frame>, SnapshotError> {
        self.buf.extend_from_slice(bytes);
        let mut frames = Vec::new();
        let mut at = 0;
        while self.buf.len() - at >= FRAME_HEADER_BYTES {
            let kind = self.buf[at];
            let len = u32::from_be_bytes([
                self.buf[at + 1],
                self.buf[at + 2],
                self.buf[at + 3],
                self.buf[at + 4],
            ]) as usize;
            if len > MAX_FRAME_BYTES {
                return Err(corrupt(format!("a frame claims {len} bytes")));
            }
            if self.buf.len() - at < FRAME_HEADER_BYTES + len {
                break;
            }
            let end = at + FRAME_HEADER_BYTES + len;
            let payload = &self.buf[at + FRAME_HEADER_BYTES..end];
            if self.ended {
                return Err(corrupt("bytes after the end frame".into()));
            }
            match kind {
                HEADER if !self.header_seen => {
                    let applied = postcard::from_bytes(payload)
                        .map_err(|e| corrupt(format!("undecodable header: {e}")))?;
                    self.header_seen = true;
                    frames.push(Frame::Header(applied));
                }
                PAIR if self.header_seen && payload.len() >= 4 => {
                    let key_len =
                        u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                            as usize;
                    let Some(key) = payload.get(4..4 + key_len) else {
                        return Err(corrupt("a pair's key runs past its frame".into()));
                    };
                    frames.push(Frame::Pair(key.to_vec(), payload[4 + key_len..].to_vec()));
                    self.pairs += 1;
                }
                END if self.header_seen && payload.len() == 12 => {
                    let crc = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    let pairs = u64::from_be_bytes(payload[4..12].try_into().unwrap_or_default());
                    let actual = self.crc.clone().finalize();
                    if crc != actual {
                        return Err(corrupt(format!(
                            "image checksum {actual:08x} does not match its end frame's {crc:08x}"
                        )));
                    }
                    if pairs != self.pairs {
                        return Err(corrupt(format!(
                            "the end frame counts {pairs} pairs, the image holds {}",
                            self.pairs
                        )));
                    }
                    self.ended = true;
                }
                _ => return Err(corrupt(format!("unexpected frame kind {kind}"))),
            }
            if kind != END {
                self.crc.update(&self.buf[at..end]);
            }
            at = end;
        }
        self.buf.drain(..at);
        Ok(frames)
    }

    /// Checks that the image ended properly and nothing trails it.
    pub fn finish(&self) -> Result<(), SnapshotError> {
        if !self.ended {
            return Err(corrupt("the image ends without its end frame".into()));
        }
        if !self.buf.is_empty() {
            return Err(corrupt("bytes after the end frame".into()));
        }
        Ok(())
    }
}

fn check_frame_len(len: usize, what: &str) -> Result<(), SnapshotError> {
    if len > MAX_FRAME_BYTES {
        return Err(SnapshotError::TooLarge {
            what: what.to_string(),
            bytes: len as u64,
            max: MAX_FRAME_BYTES as u64,
        });
    }
    Ok(())
}

fn corrupt(detail: String) -> SnapshotError {
    SnapshotError::Corrupt { detail }
}

/// A whole image of `applied` and `pairs`, for tests and small snapshots.
pub fn encode_image(applied: &AppliedState, pairs: &[Pair]) -> Result<Vec<u8>, SnapshotError> {
    let mut writer = ImageWriter::new(applied)?;
    for (key, value) in pairs {
        writer.pair(key, value)?;
    }
    let mut out = writer.take();
    out.extend(writer.finish());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (AppliedState, Vec<Pair>) {
        let applied = AppliedState {
            index: 7,
            term: 2,
            membership: Membership::with_voters([1, 2, 3]),
            sessions: b"sessions".to_vec(),
        };
        let pairs = (0..50u8)
            .map(|i| (vec![i; 3], vec![i; i as usize]))
            .collect();
        (applied, pairs)
    }

    #[test]
    fn decodes_what_it_encodes_fed_one_byte_at_a_time() {
        let (applied, pairs) = sample();
        let image = encode_image(&applied, &pairs).expect("encode");
        let mut reader = ImageReader::new();
        let mut frames = Vec::new();
        for byte in &image {
            frames.extend(reader.feed(std::slice::from_ref(byte)).expect("feed"));
        }
        reader.finish().expect("complete");
        let mut expected = vec![Frame::Header(applied)];
        expected.extend(pairs.into_iter().map(|(k, v)| Frame::Pair(k, v)));
        assert_eq!(frames, expected);
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let (applied, pairs) = sample();
        let image = encode_image(&applied, &pairs[..3]).expect("encode");
        for at in 0..image.len() {
            let mut bad = image.clone();
            bad[at] ^= 0x40;
            let mut reader = ImageReader::new();
            let outcome = reader.feed(&bad).and_then(|_| reader.finish());
            assert!(
                matches!(outcome, Err(SnapshotError::Corrupt { .. })),
                "a flipped byte at {at} of {} went unnoticed",
                image.len()
            );
        }
    }

    #[test]
    fn a_pair_larger_than_a_frame_is_refused_when_written() {
        let (applied, _) = sample();
        let mut writer = ImageWriter::new(&applied).expect("header");
        let huge = vec![0u8; MAX_FRAME_BYTES];
        assert!(matches!(
            writer.pair(b"k", &huge),
            Err(SnapshotError::TooLarge { .. })
        ));
        writer
            .pair(b"k", &huge[..MAX_FRAME_BYTES - 5])
            .expect("the largest pair that fits");
    }

    #[test]
    fn a_truncated_image_is_incomplete() {
        let (applied, pairs) = sample();
        let image = encode_image(&applied, &pairs).expect("encode");
        let mut reader = ImageReader::new();
        reader.feed(&image[..image.len() - 1]).expect("feed");
        assert!(matches!(
            reader.finish(),
            Err(SnapshotError::Corrupt { .. })
        ));
    }
}
