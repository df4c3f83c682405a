//! The node-to-node replication messages and their one binary codec.
//!
//! This module decides what a well-formed message is: every field's encoding, the size limits
//! ([`MESSAGE_BYTES_MAX`], [`LTX_CHUNK_BYTES_MAX`], [`STREAM_DBS_MAX`]) and a typed [`MsgError`]
//! for every way bytes can be malformed. It never decides what a message means (that is
//! [`crate::node`]'s job), never panics on input and never does I/O: the shell frames the bytes
//! on its transport (e.g. a length prefix on a TCP or HTTP/2 stream).
//!
//! Wire format: `version u8 (=1) ‖ tag u8 ‖ epoch u64 ‖ fields`, all integers big-endian, strings
//! as `u16 length ‖ UTF-8`, byte strings as `u32 length ‖ bytes`, positions as
//! `txid u64 ‖ checksum u64`. Every message carries the sender's epoch (its lease epoch if it is
//! primary, else the highest epoch it has accepted) so a receiver can refuse stale senders.

use std::collections::BTreeMap;

use crate::ids::{ClusterId, DbName, DbNameError, Epoch, NodeId};
use crate::ltx::Pos;

/// Codec version written in every message's first byte.
pub const MSG_VERSION: u8 = 1;
/// Largest encoded message accepted by [`Message::decode`].
pub const MESSAGE_BYTES_MAX: usize = LTX_CHUNK_BYTES_MAX + 64 * 1024;
/// Largest LTX chunk in one [`Message::Ltx`]; bigger files are split into several chunks.
pub const LTX_CHUNK_BYTES_MAX: usize = 1024 * 1024;
/// Most databases one position map may list.
pub const STREAM_DBS_MAX: usize = 1024;
/// Longest error detail text, in bytes.
pub const ERROR_DETAIL_BYTES_MAX: usize = 1024;

/// A database's position together with the epoch of the primary whose lineage produced it.
/// Recovery compares `(epoch, pos.txid)` to find the most advanced chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DbPos {
    pub epoch: Epoch,
    pub pos: Pos,
}

/// What a stream request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamMode {
    /// Follow the primary: catch up, then receive every new commit until disconnect.
    Follow,
    /// One-shot catch-up for a newly elected primary's recovery phase: the serving node (any
    /// role) sends what the requester lacks, then [`Message::Ready`], then stops.
    Recovery,
}

/// Error codes carried by [`Message::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The peer belongs to another cluster; the stream is refused.
    ClusterMismatch,
    /// The receiver is not the primary and cannot serve a follow stream.
    NotPrimary,
    /// The sender's epoch is older than the receiver's highest accepted epoch.
    StaleEpoch,
    /// A code this version does not know.
    Unknown(u16),
}

impl ErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            ErrorCode::ClusterMismatch => 1,
            ErrorCode::NotPrimary => 2,
            ErrorCode::StaleEpoch => 3,
            ErrorCode::Unknown(c) => c,
        }
    }
    fn from_u16(c: u16) -> ErrorCode {
        match c {
            1 => ErrorCode::ClusterMismatch,
            2 => ErrorCode::NotPrimary,
            3 => ErrorCode::StaleEpoch,
            c => ErrorCode::Unknown(c),
        }
    }
}

/// One replication message. See the module docs for the wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Replica → primary (or recovering primary → source): "here is where I am".
    StreamRequest {
        epoch: Epoch,
        cluster_id: ClusterId,
        node_id: NodeId,
        mode: StreamMode,
        positions: BTreeMap<DbName, DbPos>,
    },
    /// A chunk of one LTX file for `db`. `offset` is the chunk's first byte in the file,
    /// `total_bytes` the whole file's length; chunks of one file arrive in order.
    Ltx { epoch: Epoch, db: DbName, offset: u64, total_bytes: u64, bytes: Vec<u8> },
    /// The initial catch-up pass is complete (follow) or the one-shot catch-up is done (recovery).
    Ready { epoch: Epoch },
    /// Primary liveness and lag reference: the primary's wall clock estimate.
    Heartbeat { epoch: Epoch, wall_ms: i64 },
    /// Replica → primary: `db` is applied and durable at `pos`.
    Ack { epoch: Epoch, db: DbName, pos: Pos },
    /// Primary → replica `to`: the lease is reserved for you, acquire it now.
    Handoff { epoch: Epoch, to: NodeId },
    /// A refusal; the sender closes the stream after it.
    Error { epoch: Epoch, code: ErrorCode, detail: String },
    /// New primary (recovery phase) → every peer: "tell me your positions".
    PositionQuery { epoch: Epoch, cluster_id: ClusterId },
    /// Answer to [`Message::PositionQuery`].
    PositionAnswer { epoch: Epoch, cluster_id: ClusterId, positions: BTreeMap<DbName, DbPos> },
    /// Replica → primary: an LTX did not continue from `pos` (gap or divergence); send a snapshot,
    /// or one compacted LTX from `pos` if the primary's chain from there is intact.
    Resync { epoch: Epoch, db: DbName, pos: Pos },
}

/// Why bytes are not a valid [`Message`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    #[error("message of {0} bytes exceeds the {MESSAGE_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    #[error("message truncated at byte {at}: {needed} more bytes needed")]
    Truncated { at: usize, needed: usize },
    #[error("unknown message codec version {0}")]
    UnknownVersion(u8),
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    #[error("unknown stream mode {0}")]
    UnknownStreamMode(u8),
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("invalid database name: {0}")]
    BadDbName(#[from] DbNameError),
    #[error("string is not UTF-8")]
    BadUtf8,
    #[error("position map lists {0} databases, more than {STREAM_DBS_MAX}")]
    TooManyDatabases(usize),
    #[error("position map lists a database twice")]
    DuplicateDatabase,
    #[error("LTX chunk of {0} bytes exceeds {LTX_CHUNK_BYTES_MAX}")]
    ChunkTooLarge(usize),
    #[error("LTX chunk at offset {offset} with {len} bytes exceeds the file's {total_bytes} bytes")]
    ChunkOutOfRange { offset: u64, len: usize, total_bytes: u64 },
    #[error("error detail of {0} bytes exceeds {ERROR_DETAIL_BYTES_MAX}")]
    DetailTooLong(usize),
}

const TAG_STREAM_REQUEST: u8 = 1;
const TAG_LTX: u8 = 2;
const TAG_READY: u8 = 3;
const TAG_HEARTBEAT: u8 = 4;
const TAG_ACK: u8 = 5;
const TAG_HANDOFF: u8 = 6;
const TAG_ERROR: u8 = 7;
const TAG_POSITION_QUERY: u8 = 8;
const TAG_POSITION_ANSWER: u8 = 9;
const TAG_RESYNC: u8 = 10;

impl Message {
    /// The sender's epoch, which every message carries.
    pub fn epoch(&self) -> Epoch {
        match self {
            Message::StreamRequest { epoch, .. }
            | Message::Ltx { epoch, .. }
            | Message::Ready { epoch }
            | Message::Heartbeat { epoch, .. }
            | Message::Ack { epoch, .. }
            | Message::Handoff { epoch, .. }
            | Message::Error { epoch, .. }
            | Message::PositionQuery { epoch, .. }
            | Message::PositionAnswer { epoch, .. }
            | Message::Resync { epoch, .. } => *epoch,
        }
    }

    /// A short name for logs and events.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::StreamRequest { .. } => "stream-request",
            Message::Ltx { .. } => "ltx",
            Message::Ready { .. } => "ready",
            Message::Heartbeat { .. } => "heartbeat",
            Message::Ack { .. } => "ack",
            Message::Handoff { .. } => "handoff",
            Message::Error { .. } => "error",
            Message::PositionQuery { .. } => "position-query",
            Message::PositionAnswer { .. } => "position-answer",
            Message::Resync { .. } => "resync",
        }
    }

    /// Encodes the message. Panics only if the message itself breaks a limit the core never
    /// exceeds when building messages (a chunk over [`LTX_CHUNK_BYTES_MAX`], an error detail over
    /// [`ERROR_DETAIL_BYTES_MAX`], more than [`STREAM_DBS_MAX`] databases): that is a bug.
    pub fn encode(&self) -> Vec<u8> {
        // Sized up front so that an LTX chunk is copied once, not through repeated growth.
        let capacity = match self {
            Message::Ltx { db, bytes, .. } => 64 + db.as_str().len() + bytes.len(),
            _ => 128,
        };
        let mut w = Writer { buf: Vec::with_capacity(capacity) };
        w.u8(MSG_VERSION);
        w.u8(self.tag());
        w.u64(self.epoch().0);
        self.encode_fields(&mut w);
        assert!(w.buf.len() <= MESSAGE_BYTES_MAX, "encoded message exceeds the limit");
        w.buf
    }

    fn tag(&self) -> u8 {
        match self {
            Message::StreamRequest { .. } => TAG_STREAM_REQUEST,
            Message::Ltx { .. } => TAG_LTX,
            Message::Ready { .. } => TAG_READY,
            Message::Heartbeat { .. } => TAG_HEARTBEAT,
            Message::Ack { .. } => TAG_ACK,
            Message::Handoff { .. } => TAG_HANDOFF,
            Message::Error { .. } => TAG_ERROR,
            Message::PositionQuery { .. } => TAG_POSITION_QUERY,
            Message::PositionAnswer { .. } => TAG_POSITION_ANSWER,
            Message::Resync { .. } => TAG_RESYNC,
        }
    }

    fn encode_fields(&self, w: &mut Writer) {
        match self {
            Message::StreamRequest { cluster_id, node_id, mode, positions, .. } => {
                w.u64(cluster_id.0);
                w.u64(node_id.0);
                w.u8(match mode {
                    StreamMode::Follow => 0,
                    StreamMode::Recovery => 1,
                });
                w.positions(positions);
            }
            Message::Ltx { db, offset, total_bytes, bytes, .. } => {
                assert!(bytes.len() <= LTX_CHUNK_BYTES_MAX, "LTX chunk over the limit");
                w.name(db);
                w.u64(*offset);
                w.u64(*total_bytes);
                w.bytes(bytes);
            }
            Message::Ready { .. } => {}
            Message::Heartbeat { wall_ms, .. } => w.u64(*wall_ms as u64),
            Message::Ack { db, pos, .. } | Message::Resync { db, pos, .. } => {
                w.name(db);
                w.pos(*pos);
            }
            Message::Handoff { to, .. } => w.u64(to.0),
            Message::Error { code, detail, .. } => {
                assert!(detail.len() <= ERROR_DETAIL_BYTES_MAX, "error detail over the limit");
                w.u16(code.to_u16());
                w.str(detail);
            }
            Message::PositionQuery { cluster_id, .. } => w.u64(cluster_id.0),
            Message::PositionAnswer { cluster_id, positions, .. } => {
                w.u64(cluster_id.0);
                w.positions(positions);
            }
        }
    }

    /// Decodes one whole message; every malformation is a typed [`MsgError`].
    pub fn decode(bytes: &[u8]) -> Result<Message, MsgError> {
        Message::decode_with_names(bytes, &[])
    }

    /// [`Message::decode`], except that a database name spelled like one of `known` is decoded
    /// as that name: a shared reference, where decoding it anew validates and allocates it. The
    /// result is the same message (names are compared by their text); a receiver passes the names
    /// it already holds, since nearly every message names one of them.
    pub fn decode_with_names(bytes: &[u8], known: &[DbName]) -> Result<Message, MsgError> {
        Message::decode_parts(bytes, known, false).map(|(msg, _)| msg)
    }

    /// [`Message::decode_with_names`] of a message the caller owns: an LTX chunk (the last field
    /// of its message) keeps the message's own buffer, moved to its front, instead of a copy in
    /// a new one. Same result, same errors.
    pub fn decode_owned_with_names(mut bytes: Vec<u8>, known: &[DbName]) -> Result<Message, MsgError> {
        let (mut msg, chunk_at) = Message::decode_parts(&bytes, known, true)?;
        if let (Message::Ltx { bytes: chunk, .. }, Some(at)) = (&mut msg, chunk_at) {
            // The chunk runs from `at` to the end: nothing may follow the last field.
            bytes.drain(..at);
            *chunk = bytes;
        }
        Ok(msg)
    }

    /// Decodes `bytes`; with `lend_chunk`, an LTX chunk is left empty and its first byte's
    /// offset returned instead (it ends where the message ends).
    fn decode_parts(bytes: &[u8], known: &[DbName], lend_chunk: bool) -> Result<(Message, Option<usize>), MsgError> {
        if bytes.len() > MESSAGE_BYTES_MAX {
            return Err(MsgError::TooLarge(bytes.len()));
        }
        let mut r = Reader { buf: bytes, at: 0, known, lend_chunk, chunk_at: None };
        let version = r.u8()?;
        if version != MSG_VERSION {
            return Err(MsgError::UnknownVersion(version));
        }
        let tag = r.u8()?;
        let epoch = Epoch(r.u64()?);
        let msg = decode_fields(tag, epoch, &mut r)?;
        if r.at != bytes.len() {
            return Err(MsgError::TrailingBytes(bytes.len() - r.at));
        }
        Ok((msg, r.chunk_at))
    }
}

fn decode_fields(tag: u8, epoch: Epoch, r: &mut Reader<'_>) -> Result<Message, MsgError> {
    Ok(match tag {
        TAG_STREAM_REQUEST => {
            let cluster_id = ClusterId(r.u64()?);
            let node_id = NodeId(r.u64()?);
            let mode = match r.u8()? {
                0 => StreamMode::Follow,
                1 => StreamMode::Recovery,
                m => return Err(MsgError::UnknownStreamMode(m)),
            };
            let positions = r.positions()?;
            Message::StreamRequest { epoch, cluster_id, node_id, mode, positions }
        }
        TAG_LTX => {
            let db = r.name()?;
            let offset = r.u64()?;
            let total_bytes = r.u64()?;
            let (bytes, len) = r.bytes(LTX_CHUNK_BYTES_MAX)?;
            let end = offset.checked_add(len as u64);
            if end.is_none_or(|end| end > total_bytes) {
                return Err(MsgError::ChunkOutOfRange { offset, len, total_bytes });
            }
            Message::Ltx { epoch, db, offset, total_bytes, bytes }
        }
        TAG_READY => Message::Ready { epoch },
        TAG_HEARTBEAT => Message::Heartbeat { epoch, wall_ms: r.u64()? as i64 },
        TAG_ACK => Message::Ack { epoch, db: r.name()?, pos: r.pos()? },
        TAG_RESYNC => Message::Resync { epoch, db: r.name()?, pos: r.pos()? },
        TAG_HANDOFF => Message::Handoff { epoch, to: NodeId(r.u64()?) },
        TAG_ERROR => {
            let code = ErrorCode::from_u16(r.u16()?);
            let detail = r.str(ERROR_DETAIL_BYTES_MAX)?;
            Message::Error { epoch, code, detail }
        }
        TAG_POSITION_QUERY => Message::PositionQuery { epoch, cluster_id: ClusterId(r.u64()?) },
        TAG_POSITION_ANSWER => {
            let cluster_id = ClusterId(r.u64()?);
            Message::PositionAnswer { epoch, cluster_id, positions: r.positions()? }
        }
        t => return Err(MsgError::UnknownTag(t)),
    })
}

#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn str(&mut self, s: &str) {
        let len = u16::try_from(s.len()).expect("strings are bounded below u16::MAX by type");
        self.u16(len);
        self.buf.extend_from_slice(s.as_bytes());
    }
    fn name(&mut self, n: &DbName) {
        self.str(n.as_str());
    }
    fn bytes(&mut self, b: &[u8]) {
        let len = u32::try_from(b.len()).expect("byte strings are bounded by the chunk limit");
        self.u32(len);
        self.buf.extend_from_slice(b);
    }
    fn pos(&mut self, p: Pos) {
        self.u64(p.txid);
        self.u64(p.checksum);
    }
    fn positions(&mut self, m: &BTreeMap<DbName, DbPos>) {
        assert!(m.len() <= STREAM_DBS_MAX, "position map over the limit");
        self.u32(m.len() as u32);
        for (name, p) in m {
            self.name(name);
            self.u64(p.epoch.0);
            self.pos(p.pos);
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    /// Names to reuse instead of allocating (see [`Message::decode_with_names`]).
    known: &'a [DbName],
    /// Leave byte strings empty and record where they start instead of copying them.
    lend_chunk: bool,
    /// Where the byte string left empty starts.
    chunk_at: Option<usize>,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MsgError> {
        let rest = self.buf.len() - self.at;
        if n > rest {
            return Err(MsgError::Truncated { at: self.at, needed: n - rest });
        }
        let s = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], MsgError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, MsgError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, MsgError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, MsgError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, MsgError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn str(&mut self, max: usize) -> Result<String, MsgError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(MsgError::DetailTooLong(len));
        }
        let b = self.take(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| MsgError::BadUtf8)
    }
    fn name(&mut self) -> Result<DbName, MsgError> {
        let len = usize::from(self.u16()?);
        let b = self.take(len)?;
        // A known name is valid UTF-8 and a valid name already: equal bytes make it that name.
        // Compared in place: names are a few bytes, less than a call into `memcmp` costs.
        let same = |n: &&DbName| n.as_str().len() == b.len() && n.as_str().bytes().zip(b).all(|(x, y)| x == *y);
        if let Some(name) = self.known.iter().find(same) {
            return Ok(name.clone());
        }
        let s = std::str::from_utf8(b).map_err(|_| MsgError::BadUtf8)?;
        Ok(DbName::new(s)?)
    }
    /// A byte string and its length (the string left empty when lending, see
    /// [`Reader::lend_chunk`]).
    fn bytes(&mut self, max: usize) -> Result<(Vec<u8>, usize), MsgError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(MsgError::ChunkTooLarge(len));
        }
        let at = self.at;
        let b = self.take(len)?;
        if self.lend_chunk {
            self.chunk_at = Some(at);
            return Ok((Vec::new(), len));
        }
        Ok((b.to_vec(), len))
    }
    fn pos(&mut self) -> Result<Pos, MsgError> {
        Ok(Pos { txid: self.u64()?, checksum: self.u64()? })
    }
    fn positions(&mut self) -> Result<BTreeMap<DbName, DbPos>, MsgError> {
        let count = self.u32()? as usize;
        if count > STREAM_DBS_MAX {
            return Err(MsgError::TooManyDatabases(count));
        }
        let mut m = BTreeMap::new();
        for _ in 0..count {
            let name = self.name()?;
            let epoch = Epoch(self.u64()?);
            let pos = self.pos()?;
            if m.insert(name, DbPos { epoch, pos }).is_some() {
                return Err(MsgError::DuplicateDatabase);
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(n: &str) -> DbName {
        DbName::new(n).unwrap()
    }

    fn samples() -> Vec<Message> {
        let mut positions = BTreeMap::new();
        positions.insert(db("a.db"), DbPos { epoch: Epoch(3), pos: Pos { txid: 7, checksum: 1 << 63 | 5 } });
        positions.insert(db("b.db"), DbPos::default());
        let e = Epoch(9);
        vec![
            Message::StreamRequest {
                epoch: e,
                cluster_id: ClusterId(77),
                node_id: NodeId(2),
                mode: StreamMode::Recovery,
                positions: positions.clone(),
            },
            Message::Ltx { epoch: e, db: db("a.db"), offset: 3, total_bytes: 10, bytes: vec![1, 2, 3] },
            Message::Ready { epoch: e },
            Message::Heartbeat { epoch: e, wall_ms: -5 },
            Message::Ack { epoch: e, db: db("a.db"), pos: Pos { txid: 1, checksum: 2 } },
            Message::Handoff { epoch: e, to: NodeId(3) },
            Message::Error { epoch: e, code: ErrorCode::Unknown(999), detail: "nope".into() },
            Message::Error { epoch: e, code: ErrorCode::ClusterMismatch, detail: String::new() },
            Message::PositionQuery { epoch: e, cluster_id: ClusterId(1) },
            Message::PositionAnswer { epoch: e, cluster_id: ClusterId(1), positions },
            Message::Resync { epoch: e, db: db("b.db"), pos: Pos::ZERO },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            let bytes = m.encode();
            assert_eq!(Message::decode(&bytes), Ok(m.clone()), "{}", m.kind());
        }
    }

    #[test]
    fn decoding_with_known_names_gives_the_same_messages() {
        let known = [db("b.db"), db("a.db")];
        for m in samples() {
            let bytes = m.encode();
            assert_eq!(Message::decode_with_names(&bytes, &known), Ok(m.clone()), "{}", m.kind());
            assert_eq!(Message::decode_with_names(&bytes, &known[..1]), Ok(m.clone()), "{}", m.kind());
        }
        // A name that is not known is still validated.
        let mut v = Message::Ack { epoch: Epoch(1), db: db("ab"), pos: Pos::ZERO }.encode();
        v[12] = b'/';
        assert_eq!(Message::decode_with_names(&v, &known), Err(MsgError::BadDbName(DbNameError::BadCharacter)));
        // Every prefix stays a typed error with known names too, and with an owned buffer.
        for m in samples() {
            let bytes = m.encode();
            assert_eq!(Message::decode_owned_with_names(bytes.clone(), &known), Ok(m.clone()), "{}", m.kind());
            assert_eq!(Message::decode_owned_with_names(bytes.clone(), &[]), Ok(m.clone()), "{}", m.kind());
            for len in 0..bytes.len() {
                let err = Message::decode_with_names(&bytes[..len], &known).unwrap_err();
                assert!(matches!(err, MsgError::Truncated { .. }), "{} len {len}: {err:?}", m.kind());
                assert_eq!(Message::decode_owned_with_names(bytes[..len].to_vec(), &known), Err(err));
            }
        }
    }

    #[test]
    fn every_strict_prefix_is_truncated_not_a_panic() {
        for m in samples() {
            let bytes = m.encode();
            for len in 0..bytes.len() {
                let err = Message::decode(&bytes[..len]).unwrap_err();
                assert!(matches!(err, MsgError::Truncated { .. }), "{} len {len}: {err:?}", m.kind());
            }
        }
    }

    #[test]
    fn malformed_inputs_have_typed_errors() {
        let ready = Message::Ready { epoch: Epoch(1) }.encode();
        let mut v = ready.clone();
        v[0] = 2;
        assert_eq!(Message::decode(&v), Err(MsgError::UnknownVersion(2)));
        let mut v = ready.clone();
        v[1] = 200;
        assert_eq!(Message::decode(&v), Err(MsgError::UnknownTag(200)));
        let mut v = ready.clone();
        v.push(0);
        assert_eq!(Message::decode(&v), Err(MsgError::TrailingBytes(1)));
        assert_eq!(Message::decode(&vec![0; MESSAGE_BYTES_MAX + 1]), Err(MsgError::TooLarge(MESSAGE_BYTES_MAX + 1)));
        // A chunk claiming to extend past the file's end.
        let m = Message::Ltx { epoch: Epoch(1), db: db("a"), offset: 8, total_bytes: 10, bytes: vec![0; 2] };
        let mut v = m.encode();
        let total_at = v.len() - 2 - 4 - 8;
        v[total_at..total_at + 8].copy_from_slice(&9u64.to_be_bytes());
        assert_eq!(
            Message::decode(&v),
            Err(MsgError::ChunkOutOfRange { offset: 8, len: 2, total_bytes: 9 })
        );
        // A database name with a slash.
        let m = Message::Ack { epoch: Epoch(1), db: db("ab"), pos: Pos::ZERO };
        let mut v = m.encode();
        v[12] = b'/';
        assert_eq!(Message::decode(&v), Err(MsgError::BadDbName(DbNameError::BadCharacter)));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn owned_decoding_agrees_with_borrowed(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let known = [DbName::new("a").unwrap()];
            proptest::prop_assert_eq!(Message::decode_owned_with_names(bytes.clone(), &known), Message::decode(&bytes));
        }
    }
}
