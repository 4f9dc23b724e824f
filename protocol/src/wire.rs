//! The binary encoding of the work port and the link (see the crate docs for
//! the layout): length-prefixed frames whose body starts with a kind byte,
//! integers as LEB128 varints, strings as a varint length and UTF-8 bytes.
//! Hand-written rather than derived: the message types keep their JSON shapes
//! (internally tagged, optional fields left out) for the control channel and
//! for people, which a non-self-describing serde format cannot encode, and
//! explicit kind bytes keep the wire independent of Rust declaration order.

use crate::{
    FeatureSet, Hello, LinkMsg, Operation, ProtocolError, Role, UnitState, WorkReply, WorkRequest, WorkUnit, MAX_FRAME,
    PROTOCOL_VERSION,
};
use std::collections::BTreeMap;

/// First bytes each side of a link connection, and a client on the work port,
/// sends: `HLP` and the [`PROTOCOL_VERSION`] it speaks.
pub const PREAMBLE: [u8; 4] = [b'H', b'L', b'P', PROTOCOL_VERSION as u8];

/// Check a peer's or client's [`PREAMBLE`].
pub fn check_preamble(got: &[u8; 4]) -> Result<(), ProtocolError> {
    match got {
        [b'H', b'L', b'P', v] if u32::from(*v) == PROTOCOL_VERSION => Ok(()),
        [b'H', b'L', b'P', v] => Err(ProtocolError::Version(format!("protocol {v}"))),
        // Protocol 1 sent newline-delimited JSON objects from the first byte on.
        [b'{', ..] => Err(ProtocolError::Version("protocol 1 (newline-delimited JSON)".into())),
        _ => Err(ProtocolError::Version(format!("no hitless protocol (first bytes {got:02x?})"))),
    }
}

/// A message with a binary encoding.
pub trait Wire: Sized {
    /// Append the body (kind byte first) to `out`.
    fn put(&self, out: &mut Vec<u8>);
    /// Read the body; bytes after the fields this version knows are ignored.
    fn get(r: &mut Reader<'_>) -> Result<Self, ProtocolError>;
}

/// Append `msg` as one frame (length, body) to `out`.
pub fn frame_into<T: Wire>(msg: &T, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    msg.put(out);
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// `msg` as one frame.
pub fn to_frame<T: Wire>(msg: &T) -> Vec<u8> {
    let mut out = Vec::new();
    frame_into(msg, &mut out);
    out
}

/// Decode one whole frame (length prefix included).
pub fn from_frame<T: Wire>(frame: &[u8]) -> Result<T, ProtocolError> {
    match frame_len(frame)? {
        Some(n) if n == frame.len() => T::get(&mut Reader::new(&frame[4..])),
        _ => Err(malformed("frame length does not match its header")),
    }
}

/// The length (header included) of the frame at the start of `buf`, if all of it is there.
fn frame_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let Some(header) = buf.get(..4) else { return Ok(None) };
    let body = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if body > MAX_FRAME {
        return Err(ProtocolError::TooLong(body));
    }
    Ok((buf.len() >= 4 + body).then_some(4 + body))
}

/// A receive buffer that hands out whole frames as they complete.
#[derive(Debug, Default)]
pub struct Frames {
    buf: Vec<u8>,
    start: usize,
}

impl Frames {
    /// How much a read asks for at least.
    const READ: usize = 64 * 1024;

    /// An empty buffer.
    pub fn new() -> Frames {
        Frames { buf: Vec::with_capacity(Self::READ), start: 0 }
    }

    /// The buffer to read into (append-only), with room for a read.
    pub fn spare(&mut self) -> &mut Vec<u8> {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.buf.capacity() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(Self::READ);
        &mut self.buf
    }

    /// The next whole frame (length prefix included), if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, ProtocolError> {
        let rest = &self.buf[self.start..];
        let Some(n) = frame_len(rest)? else { return Ok(None) };
        self.start += n;
        Ok(Some(&rest[..n]))
    }

    /// True when no byte of a next frame has arrived.
    pub fn is_empty(&self) -> bool {
        self.start == self.buf.len()
    }
}

fn malformed(what: &str) -> ProtocolError {
    ProtocolError::Malformed(what.to_string())
}

fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_map(out: &mut Vec<u8>, m: &BTreeMap<String, String>) {
    put_u64(out, m.len() as u64);
    for (k, v) in m {
        put_str(out, k);
        put_str(out, v);
    }
}

fn put_set(out: &mut Vec<u8>, s: &FeatureSet) {
    put_u64(out, s.len() as u64);
    for f in s {
        put_str(out, f);
    }
}

fn role_byte(r: Role) -> u8 {
    match r {
        Role::OutOfService => 0,
        Role::Standby => 1,
        Role::Active => 2,
    }
}

/// Reads a frame's body.
pub struct Reader<'a> {
    /// What is left to read.
    buf: &'a [u8],
    /// The rest of the body from the first string on, if it is all UTF-8
    /// (`buf` is always a suffix of it). Checked once in one pass: a work
    /// request or update is a few short strings, and checking each alone cost
    /// the active agent ~300 instructions per work unit (callgrind), about as
    /// much as the rest of decoding. Where a binary field follows the strings
    /// (an ack's seq from 128 on, a priority, a step-up's chain) the pass fails
    /// and the strings are checked one by one as before: those messages pay
    /// for both, the work path's requests and updates for the pass alone.
    text: Option<&'a str>,
    /// True once `text` was looked for (it stays `None` when the rest is not
    /// UTF-8: the strings are then checked one by one).
    checked: bool,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, text: None, checked: false }
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| malformed("truncated"))?;
        self.buf = rest;
        Ok(b)
    }

    fn u64(&mut self) -> Result<u64, ProtocolError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed("varint too long"))
    }

    fn fixed64(&mut self) -> Result<u64, ProtocolError> {
        let b = self.bytes(8)?;
        Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }

    fn len(&mut self) -> Result<usize, ProtocolError> {
        let n = self.u64()?;
        // Every element takes at least a byte: a count beyond the rest is corrupt.
        usize::try_from(n).ok().filter(|n| *n <= self.buf.len()).ok_or_else(|| malformed("length beyond the frame"))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if n > self.buf.len() {
            return Err(malformed("truncated"));
        }
        let (b, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(b)
    }

    fn string(&mut self) -> Result<String, ProtocolError> {
        let n = self.len()?;
        if !self.checked {
            self.checked = true;
            self.text = std::str::from_utf8(self.buf).ok();
        }
        let b = self.bytes(n)?;
        if let Some(text) = self.text {
            // `get` also refuses a string that starts or ends inside a character.
            let end = text.len() - self.buf.len();
            if let Some(s) = text.get(end - n..end) {
                return Ok(s.to_string());
            }
        }
        std::str::from_utf8(b).map(str::to_string).map_err(|_| malformed("string is not UTF-8"))
    }

    fn opt_string(&mut self) -> Result<Option<String>, ProtocolError> {
        Ok(if self.bool()? { Some(self.string()?) } else { None })
    }

    fn bool(&mut self) -> Result<bool, ProtocolError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(malformed("bad flag")),
        }
    }

    fn map(&mut self) -> Result<BTreeMap<String, String>, ProtocolError> {
        let n = self.len()?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = self.string()?;
            m.insert(k, self.string()?);
        }
        Ok(m)
    }

    fn set(&mut self) -> Result<FeatureSet, ProtocolError> {
        let n = self.len()?;
        (0..n).map(|_| self.string()).collect()
    }

    fn role(&mut self) -> Result<Role, ProtocolError> {
        match self.u8()? {
            0 => Ok(Role::OutOfService),
            1 => Ok(Role::Standby),
            2 => Ok(Role::Active),
            _ => Err(malformed("unknown role")),
        }
    }

    /// A nested record with its own length: what follows its known fields is skipped.
    fn nested<T>(&mut self, f: impl FnOnce(&mut Reader<'a>) -> Result<T, ProtocolError>) -> Result<T, ProtocolError> {
        let n = self.len()?;
        f(&mut Reader::new(self.bytes(n)?))
    }
}

/// Write a nested record with its own length (a varint; records are small).
fn put_nested(out: &mut Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) {
    let mut body = Vec::new();
    f(&mut body);
    put_u64(out, body.len() as u64);
    out.extend_from_slice(&body);
}

// Kind bytes. Never reuse or renumber one: append new kinds.
const OP_OPEN: u8 = 1;
const OP_UPDATE: u8 = 2;
const OP_CLOSE: u8 = 3;
const OP_SET_PRIORITY: u8 = 4;

const WORK_REQUEST: u8 = 1;

const REPLY_ACK: u8 = 1;
const REPLY_NOT_ACTIVE: u8 = 2;
const REPLY_REJECTED: u8 = 3;

const LINK_HELLO: u8 = 1;
const LINK_STEP_UP: u8 = 2;
const LINK_CONTINUE: u8 = 3;
const LINK_UPDATE: u8 = 4;
const LINK_REGISTERED: u8 = 5;
const LINK_HEARTBEAT: u8 = 6;
const LINK_RESYNC: u8 = 7;

/// Ack flags.
const ACK_REGISTERED: u8 = 1;
const ACK_DUPLICATE: u8 = 2;

fn put_op(out: &mut Vec<u8>, op: &Operation) {
    match op {
        Operation::Open { unit, fields } => {
            out.push(OP_OPEN);
            put_str(out, unit);
            put_map(out, fields);
        }
        Operation::Update { unit, fields } => {
            out.push(OP_UPDATE);
            put_str(out, unit);
            put_map(out, fields);
        }
        Operation::Close { unit } => {
            out.push(OP_CLOSE);
            put_str(out, unit);
        }
        Operation::SetPriority { unit, priority } => {
            out.push(OP_SET_PRIORITY);
            put_str(out, unit);
            out.push(*priority);
        }
    }
}

fn get_op(r: &mut Reader<'_>) -> Result<Operation, ProtocolError> {
    Ok(match r.u8()? {
        OP_OPEN => Operation::Open { unit: r.string()?, fields: r.map()? },
        OP_UPDATE => Operation::Update { unit: r.string()?, fields: r.map()? },
        OP_CLOSE => Operation::Close { unit: r.string()? },
        OP_SET_PRIORITY => Operation::SetPriority { unit: r.string()?, priority: r.u8()? },
        k => return Err(ProtocolError::Malformed(format!("unknown operation kind {k}"))),
    })
}

/// A request's fields, after its kind byte (also the tail of a link update).
fn put_request(out: &mut Vec<u8>, req: &WorkRequest) {
    put_str(out, &req.id);
    put_op(out, &req.op);
}

fn get_request(r: &mut Reader<'_>) -> Result<WorkRequest, ProtocolError> {
    Ok(WorkRequest { id: r.string()?, op: get_op(r)? })
}

impl Wire for WorkRequest {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(WORK_REQUEST);
        put_request(out, self);
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        match r.u8()? {
            WORK_REQUEST => get_request(r),
            k => Err(ProtocolError::Malformed(format!("unknown work request kind {k}"))),
        }
    }
}

impl Wire for WorkReply {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            WorkReply::Ack { id, seq, registered, duplicate } => {
                out.push(REPLY_ACK);
                put_str(out, id);
                put_u64(out, *seq);
                out.push(if *registered { ACK_REGISTERED } else { 0 } | if *duplicate { ACK_DUPLICATE } else { 0 });
            }
            WorkReply::NotActive { id, role, active } => {
                out.push(REPLY_NOT_ACTIVE);
                put_str(out, id);
                out.push(role_byte(*role));
                out.push(u8::from(active.is_some()));
                if let Some(a) = active {
                    put_str(out, a);
                }
            }
            WorkReply::Rejected { id, reason } => {
                out.push(REPLY_REJECTED);
                put_str(out, id);
                put_str(out, reason);
            }
        }
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        Ok(match r.u8()? {
            REPLY_ACK => {
                let (id, seq, flags) = (r.string()?, r.u64()?, r.u8()?);
                WorkReply::Ack {
                    id,
                    seq,
                    registered: flags & ACK_REGISTERED != 0,
                    duplicate: flags & ACK_DUPLICATE != 0,
                }
            }
            REPLY_NOT_ACTIVE => WorkReply::NotActive { id: r.string()?, role: r.role()?, active: r.opt_string()? },
            REPLY_REJECTED => WorkReply::Rejected { id: r.string()?, reason: r.string()? },
            k => return Err(ProtocolError::Malformed(format!("unknown work reply kind {k}"))),
        })
    }
}

fn put_unit(out: &mut Vec<u8>, u: &WorkUnit) {
    put_nested(out, |out| {
        put_str(out, &u.id);
        out.push(match u.state {
            UnitState::Open => 0,
            UnitState::Closed => 1,
        });
        put_map(out, &u.fields);
        match u.priority {
            Some(p) => out.extend_from_slice(&[1, p]),
            None => out.push(0),
        }
        put_u64(out, u.ops.len() as u64);
        for op in &u.ops {
            put_str(out, op);
        }
    })
}

fn get_unit(r: &mut Reader<'_>) -> Result<WorkUnit, ProtocolError> {
    r.nested(|r| {
        let id = r.string()?;
        let state = match r.u8()? {
            0 => UnitState::Open,
            1 => UnitState::Closed,
            _ => return Err(malformed("unknown unit state")),
        };
        let fields = r.map()?;
        let priority = if r.bool()? { Some(r.u8()?) } else { None };
        let n = r.len()?;
        let ops = (0..n).map(|_| r.string()).collect::<Result<_, _>>()?;
        Ok(WorkUnit { id, state, fields, priority, ops })
    })
}

impl Wire for LinkMsg {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            LinkMsg::Hello(h) => {
                out.push(LINK_HELLO);
                put_u64(out, u64::from(h.proto));
                put_str(out, &h.name);
                put_str(out, &h.version);
                put_set(out, &h.supported);
                put_set(out, &h.enabled);
                out.push(role_byte(h.role));
                put_u64(out, h.epoch);
                match h.seq {
                    Some(s) => {
                        out.push(1);
                        put_u64(out, s);
                    }
                    None => out.push(0),
                }
            }
            LinkMsg::StepUp { generation, seq, units, chain } => {
                out.push(LINK_STEP_UP);
                put_u64(out, *generation);
                put_u64(out, *seq);
                out.extend_from_slice(&chain.to_le_bytes());
                put_u64(out, units.len() as u64);
                for u in units {
                    put_unit(out, u);
                }
            }
            LinkMsg::Continue { generation, seq, chain } => {
                out.push(LINK_CONTINUE);
                put_u64(out, *generation);
                put_u64(out, *seq);
                out.extend_from_slice(&chain.to_le_bytes());
            }
            LinkMsg::Update { generation, seq, request } => {
                out.push(LINK_UPDATE);
                put_u64(out, *generation);
                put_u64(out, *seq);
                put_request(out, request);
            }
            LinkMsg::Registered { generation, seq } => {
                out.push(LINK_REGISTERED);
                put_u64(out, *generation);
                put_u64(out, *seq);
            }
            LinkMsg::Heartbeat => out.push(LINK_HEARTBEAT),
            LinkMsg::Resync { reason } => {
                out.push(LINK_RESYNC);
                put_str(out, reason);
            }
        }
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        Ok(match r.u8()? {
            LINK_HELLO => {
                let proto = u32::try_from(r.u64()?).map_err(|_| malformed("protocol version out of range"))?;
                LinkMsg::Hello(Hello {
                    proto,
                    name: r.string()?,
                    version: r.string()?,
                    supported: r.set()?,
                    enabled: r.set()?,
                    role: r.role()?,
                    epoch: r.u64()?,
                    seq: if r.bool()? { Some(r.u64()?) } else { None },
                })
            }
            LINK_STEP_UP => {
                let (generation, seq, chain) = (r.u64()?, r.u64()?, r.fixed64()?);
                let n = r.len()?;
                let units = (0..n).map(|_| get_unit(r)).collect::<Result<_, _>>()?;
                LinkMsg::StepUp { generation, seq, units, chain }
            }
            LINK_CONTINUE => LinkMsg::Continue { generation: r.u64()?, seq: r.u64()?, chain: r.fixed64()? },
            LINK_UPDATE => LinkMsg::Update { generation: r.u64()?, seq: r.u64()?, request: get_request(r)? },
            LINK_REGISTERED => LinkMsg::Registered { generation: r.u64()?, seq: r.u64()? },
            LINK_HEARTBEAT => LinkMsg::Heartbeat,
            LINK_RESYNC => LinkMsg::Resync { reason: r.string()? },
            k => return Err(ProtocolError::Malformed(format!("unknown link message kind {k}"))),
        })
    }
}
