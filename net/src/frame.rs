//! Frames on a QUIC stream: `version u8 ‖ kind u8 ‖ len u32 (big-endian) ‖
//! payload`. Every frame is version- and length-checked before its payload
//! is read, so a malformed or oversized frame costs at most a header and
//! ends that stream with an error — never a panic, never a big allocation.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::NetError;

/// The frame format this build speaks.
pub const FRAME_VERSION: u8 = 1;
/// Largest payload accepted (a snapshot chunk of 1 MiB plus headroom).
pub const MAX_FRAME_BYTES: u32 = 4 << 20;
const HEADER_BYTES: usize = 6;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// First frame of a connection: the node id the peer claims (u64 BE).
    Hello = 1,
    /// Raft messages of any groups.
    Raft = 2,
    /// A snapshot chunk.
    Snapshot = 3,
    /// A client request (on a bidirectional stream of its own).
    Request = 4,
    /// The answer to a request, on the same stream.
    Response = 5,
}

impl FrameKind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(FrameKind::Hello),
            2 => Some(FrameKind::Raft),
            3 => Some(FrameKind::Snapshot),
            4 => Some(FrameKind::Request),
            5 => Some(FrameKind::Response),
            _ => None,
        }
    }
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Its kind.
    pub kind: FrameKind,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Frames up to this size are copied behind their header and written at
/// once; larger ones (snapshot chunks) go out as header, then payload.
const COALESCE_BYTES: usize = 64 * 1024;

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<(), NetError> {
    let len = u32::try_from(frame.payload.len())
        .ok()
        .filter(|len| *len <= MAX_FRAME_BYTES)
        .ok_or(NetError::FrameTooLarge {
            bytes: frame.payload.len() as u64,
            max: MAX_FRAME_BYTES,
        })?;
    let mut header = [0u8; HEADER_BYTES];
    header[0] = FRAME_VERSION;
    header[1] = frame.kind as u8;
    header[2..].copy_from_slice(&len.to_be_bytes());
    if frame.payload.len() <= COALESCE_BYTES {
        // One write: on a QUIC stream each write may wake the connection
        // driver, which can then send the header in a packet of its own.
        let mut whole = Vec::with_capacity(HEADER_BYTES + frame.payload.len());
        whole.extend_from_slice(&header);
        whole.extend_from_slice(&frame.payload);
        w.write_all(&whole).await.map_err(io)?;
    } else {
        w.write_all(&header).await.map_err(io)?;
        w.write_all(&frame.payload).await.map_err(io)?;
    }
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, NetError> {
    let mut header = [0u8; HEADER_BYTES];
    let mut filled = 0;
    while filled < HEADER_BYTES {
        let n = r.read(&mut header[filled..]).await.map_err(io)?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(NetError::Malformed(format!(
                    "stream ended inside a frame header ({filled} of {HEADER_BYTES} bytes)"
                )))
            };
        }
        filled += n;
    }
    if header[0] != FRAME_VERSION {
        return Err(NetError::Malformed(format!(
            "frame version {} (this build speaks {FRAME_VERSION})",
            header[0]
        )));
    }
    let kind = FrameKind::from_byte(header[1])
        .ok_or_else(|| NetError::Malformed(format!("unknown frame kind {}", header[1])))?;
    let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
    if len > MAX_FRAME_BYTES {
        return Err(NetError::FrameTooLarge {
            bytes: len as u64,
            max: MAX_FRAME_BYTES,
        });
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)
        .await
        .map_err(|e| NetError::Malformed(format!("stream ended inside a {len}-byte frame: {e}")))?;
    Ok(Some(Frame { kind, payload }))
}

fn io(e: std::io::Error) -> NetError {
    NetError::Io(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: FrameKind, payload: &[u8]) -> Frame {
        Frame {
            kind,
            payload: payload.to_vec(),
        }
    }

    async fn encode(f: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, f).await.expect("write");
        out
    }

    #[tokio::test]
    async fn frames_round_trip_back_to_back() {
        let a = frame(FrameKind::Hello, &7u64.to_be_bytes());
        let b = frame(FrameKind::Raft, b"");
        let mut bytes = encode(&a).await;
        bytes.extend(encode(&b).await);
        let mut r = bytes.as_slice();
        assert_eq!(read_frame(&mut r).await.expect("a"), Some(a));
        assert_eq!(read_frame(&mut r).await.expect("b"), Some(b));
        assert_eq!(read_frame(&mut r).await.expect("end"), None);
    }

    #[tokio::test]
    async fn bad_headers_and_truncations_are_typed_errors() {
        let good = encode(&frame(FrameKind::Raft, b"hello")).await;
        let mut wrong_version = good.clone();
        wrong_version[0] = 9;
        let mut unknown_kind = good.clone();
        unknown_kind[1] = 77;
        let mut huge = good.clone();
        huge[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
        for (name, bytes, oversized) in [
            ("version", wrong_version, false),
            ("kind", unknown_kind, false),
            ("length", huge, true),
            ("truncated payload", good[..good.len() - 1].to_vec(), false),
            ("truncated header", good[..3].to_vec(), false),
        ] {
            let got = read_frame(&mut bytes.as_slice()).await;
            let ok = if oversized {
                matches!(got, Err(NetError::FrameTooLarge { .. }))
            } else {
                matches!(got, Err(NetError::Malformed(_)))
            };
            assert!(ok, "{name}: {got:?}");
        }
        let too_big = frame(FrameKind::Snapshot, &vec![0; MAX_FRAME_BYTES as usize + 1]);
        assert!(matches!(
            write_frame(&mut Vec::new(), &too_big).await,
            Err(NetError::FrameTooLarge { .. })
        ));
    }
}
