//! Length-prefixed framing of core messages on a byte stream: `u32 BE length ‖ Message::encode`.
//!
//! It decides only where frames start and end and refuses a length over the codec's
//! [`MESSAGE_BYTES_MAX`] before buffering it; what a message means is the core's business.

use bytes::{Buf, Bytes, BytesMut};
use ltxfs_core::msg::{Message, MsgError, MESSAGE_BYTES_MAX};

/// Why a byte stream is not a sequence of frames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MESSAGE_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    #[error("frame does not decode: {0}")]
    Message(#[from] MsgError),
}

pub fn encode(msg: &Message) -> Bytes {
    let body = msg.encode();
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// Reassembles frames from arbitrary chunks.
#[derive(Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed. After an error the stream is
    /// unusable (the caller closes the connection).
    pub fn next_frame(&mut self) -> Result<Option<Message>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MESSAGE_BYTES_MAX {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        self.buf.advance(4);
        let body = self.buf.split_to(len);
        Ok(Some(Message::decode(&body)?))
    }

    /// Bytes buffered but not yet a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ltxfs_core::ids::Epoch;

    #[test]
    fn frames_split_anywhere_reassemble() {
        let a = Message::Heartbeat { epoch: Epoch(3), wall_ms: 42 };
        let b = Message::Ready { epoch: Epoch(3) };
        let mut bytes = encode(&a).to_vec();
        bytes.extend_from_slice(&encode(&b));
        let mut d = FrameDecoder::default();
        let mut got = Vec::new();
        for byte in bytes {
            d.push(&[byte]);
            while let Some(m) = d.next_frame().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![a, b]);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let mut d = FrameDecoder::default();
        d.push(&u32::MAX.to_be_bytes());
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge(_))));
        let mut d = FrameDecoder::default();
        d.push(&[0, 0, 0, 3, 9, 9, 9]);
        assert!(matches!(d.next_frame(), Err(FrameError::Message(_))));
    }
}
