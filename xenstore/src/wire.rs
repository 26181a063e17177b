//! The xenstore wire format, as a sans-IO codec: bytes in, typed messages out, and back.
//!
//! Every message is a 16-byte header of four native-endian `u32`s `{type, req_id, tx_id, len}`
//! (`struct xsd_sockmsg` in `xen/io/xs_wire.h`) followed by `len` payload bytes, at most
//! [`PAYLOAD_MAX`]. Nothing here reads or writes a file descriptor: the client, the store's
//! dispatcher and the daemon feed byte slices in and take byte vectors out.
//!
//! Payload conventions follow the C daemon exactly:
//! - requests carry NUL-terminated strings (`path\0`, `path\0token\0`, ...), except that a
//!   `WRITE` is `path\0` followed by the raw value (no terminator);
//! - a `READ` reply is the raw value with no NUL; mutations reply `OK\0`;
//! - an `ERROR` reply is the error name and a NUL (`ENOENT\0`);
//! - a `WATCH_EVENT` is `path\0token\0`;
//! - a `DIRECTORY` reply is the child names, each NUL-terminated (empty when there are none);
//! - a `GET_PERMS` reply is the permission strings, each NUL-terminated.
//!
//! ```
//! use xenstore::wire::{Decoder, Message, MsgType, Request};
//! use xenstore::TxId;
//!
//! let req = Request::Write { path: "/vm/name".into(), value: b"guest".to_vec() };
//! let bytes = req.to_message(7, TxId::NONE).unwrap().encode().unwrap();
//! let mut decoder = Decoder::new();
//! decoder.feed(&bytes[..5]);
//! assert_eq!(decoder.next_message().unwrap(), None); // needs more bytes
//! decoder.feed(&bytes[5..]);
//! let msg = decoder.next_message().unwrap().unwrap();
//! assert_eq!(msg.msg_type, MsgType::Write);
//! assert_eq!(Request::parse(&msg).unwrap(), req);
//! ```

use crate::{DomId, Errno, Perm, TxId, WatchEvent};
use alloc::borrow::ToOwned;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use alloc::{format, vec};
use core::fmt;
use zerocopy::FromBytes;

/// The size of a message header in bytes.
pub const HEADER_LEN: usize = 16;
/// The largest payload either side may send (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;
/// The longest absolute path (`XENSTORE_ABS_PATH_MAX`).
pub const ABS_PATH_MAX: usize = 3072;
/// The longest relative path (`XENSTORE_REL_PATH_MAX`).
pub const REL_PATH_MAX: usize = 2048;
/// The special watch path fired when a domain is introduced.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// The special watch path fired when a domain is released.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// A message type (`enum xsd_sockmsg_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MsgType {
    /// `XS_CONTROL` (formerly `XS_DEBUG`): daemon control commands.
    Control = 0,
    /// `XS_DIRECTORY`: list a node's children.
    Directory = 1,
    /// `XS_READ`: read a node's value.
    Read = 2,
    /// `XS_GET_PERMS`: read a node's permissions.
    GetPerms = 3,
    /// `XS_WATCH`: register a watch.
    Watch = 4,
    /// `XS_UNWATCH`: remove a watch.
    Unwatch = 5,
    /// `XS_TRANSACTION_START`.
    TransactionStart = 6,
    /// `XS_TRANSACTION_END`.
    TransactionEnd = 7,
    /// `XS_INTRODUCE`: the toolstack announces a domain.
    Introduce = 8,
    /// `XS_RELEASE`: the toolstack retires a domain.
    Release = 9,
    /// `XS_GET_DOMAIN_PATH`.
    GetDomainPath = 10,
    /// `XS_WRITE`.
    Write = 11,
    /// `XS_MKDIR`.
    Mkdir = 12,
    /// `XS_RM`.
    Rm = 13,
    /// `XS_SET_PERMS`.
    SetPerms = 14,
    /// `XS_WATCH_EVENT`: sent by the daemon when a watch fires.
    WatchEvent = 15,
    /// `XS_ERROR`: the daemon's error reply.
    Error = 16,
    /// `XS_IS_DOMAIN_INTRODUCED`.
    IsDomainIntroduced = 17,
    /// `XS_RESUME`.
    Resume = 18,
    /// `XS_SET_TARGET`.
    SetTarget = 19,
    /// `XS_RESET_WATCHES` (20 was `XS_RESTRICT`, removed).
    ResetWatches = 21,
    /// `XS_DIRECTORY_PART`: one chunk of a long directory listing.
    DirectoryPart = 22,
    /// `XS_INVALID`: guaranteed never to be a valid type.
    Invalid = 0xffff,
}

impl MsgType {
    /// Every type, in wire order.
    pub const ALL: [MsgType; 23] = [
        MsgType::Control,
        MsgType::Directory,
        MsgType::Read,
        MsgType::GetPerms,
        MsgType::Watch,
        MsgType::Unwatch,
        MsgType::TransactionStart,
        MsgType::TransactionEnd,
        MsgType::Introduce,
        MsgType::Release,
        MsgType::GetDomainPath,
        MsgType::Write,
        MsgType::Mkdir,
        MsgType::Rm,
        MsgType::SetPerms,
        MsgType::WatchEvent,
        MsgType::Error,
        MsgType::IsDomainIntroduced,
        MsgType::Resume,
        MsgType::SetTarget,
        MsgType::ResetWatches,
        MsgType::DirectoryPart,
        MsgType::Invalid,
    ];

    /// The type with this wire number, if there is one.
    pub fn from_u32(raw: u32) -> Option<MsgType> {
        MsgType::ALL.into_iter().find(|t| *t as u32 == raw)
    }

    /// The wire number.
    pub const fn as_u32(self) -> u32 {
        self as u32
    }
}

/// The fixed header in front of every message (`struct xsd_sockmsg`), as raw numbers.
///
/// Laid out exactly like the C struct: four native-endian `u32`s, 16 bytes, no padding (checked
/// at compile time). xenstored and libxenstore use the host's byte order; on every target Xen runs
/// Linux guests on (x86, Arm) that is little-endian.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    zerocopy::FromBytes,
    zerocopy::IntoBytes,
    zerocopy::Immutable,
    zerocopy::KnownLayout,
)]
#[repr(C)]
pub struct Header {
    /// The message type number (not necessarily a known [`MsgType`]).
    pub msg_type: u32,
    /// The request id, echoed by the daemon in its reply.
    pub req_id: u32,
    /// The transaction id (0 outside a transaction).
    pub tx_id: u32,
    /// The payload length.
    pub len: u32,
}

const _: () = assert!(size_of::<Header>() == HEADER_LEN);

impl Header {
    /// The header as it goes on the wire (native endian, like the C struct).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        zerocopy::transmute!(*self)
    }

    /// Read a header from its 16 wire bytes.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Header {
        zerocopy::transmute!(*bytes)
    }
}

/// A framing or typing error found while decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The header announces more than [`PAYLOAD_MAX`] bytes: the stream cannot be trusted any more.
    #[error("message payload of {len} bytes exceeds the {PAYLOAD_MAX}-byte limit")]
    PayloadTooLong {
        /// The announced length.
        len: u32,
    },
    /// The header names no known message type. The frame was consumed, so the stream is still in
    /// step; the peer deserves an `ENOSYS` reply (xenstored's answer to an unknown operation).
    #[error("unknown message type {}", header.msg_type)]
    UnknownType {
        /// The header of the offending frame.
        header: Header,
    },
    /// A payload over [`PAYLOAD_MAX`] was about to be encoded.
    #[error("payload of {len} bytes is too long to send")]
    EncodeTooLong {
        /// The payload length.
        len: usize,
    },
}

impl WireError {
    /// Whether the byte stream is still in step after this error (the peer can get an error reply).
    pub fn is_recoverable(&self) -> bool {
        matches!(self, WireError::UnknownType { .. })
    }
}

/// One whole message: a known type, the ids and the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The type.
    pub msg_type: MsgType,
    /// The request id.
    pub req_id: u32,
    /// The transaction id.
    pub tx_id: TxId,
    /// The payload (at most [`PAYLOAD_MAX`] bytes when it came off the wire).
    pub payload: Vec<u8>,
}

impl Message {
    /// A message with these parts.
    pub fn new(msg_type: MsgType, req_id: u32, tx_id: TxId, payload: Vec<u8>) -> Message {
        Message {
            msg_type,
            req_id,
            tx_id,
            payload,
        }
    }

    /// The header this message goes out with.
    pub fn header(&self) -> Header {
        Header {
            msg_type: self.msg_type.as_u32(),
            req_id: self.req_id,
            tx_id: self.tx_id.0,
            // Cannot truncate for payloads that pass `encode`'s length check.
            len: u32::try_from(self.payload.len()).unwrap_or(u32::MAX),
        }
    }

    /// The whole message (header and payload) in one buffer; a payload over [`PAYLOAD_MAX`] is
    /// refused, as the daemon would drop the connection.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Append the encoded message to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        if self.payload.len() > PAYLOAD_MAX {
            return Err(WireError::EncodeTooLong {
                len: self.payload.len(),
            });
        }
        out.extend_from_slice(&self.header().encode());
        out.extend_from_slice(&self.payload);
        Ok(())
    }
}

/// What [`decode`] found at the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The buffer holds only part of a message: at least this many more bytes are needed.
    NeedMore(usize),
    /// A whole message, and how many bytes of the buffer it used.
    Message(Message, usize),
}

/// Decode the message at the front of `buf`, if it is all there.
///
/// On [`WireError::UnknownType`] the frame is well formed and its length is `HEADER_LEN +
/// header.len`: a caller may skip it and carry on. [`WireError::PayloadTooLong`] is fatal to the
/// stream.
pub fn decode(buf: &[u8]) -> Result<Decoded, WireError> {
    // A copy, so the buffer need not be aligned for the `u32`s.
    let Ok((header, _)) = Header::read_from_prefix(buf) else {
        return Ok(Decoded::NeedMore(HEADER_LEN - buf.len()));
    };
    let len = header.len as usize;
    if len > PAYLOAD_MAX {
        return Err(WireError::PayloadTooLong { len: header.len });
    }
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Ok(Decoded::NeedMore(total - buf.len()));
    }
    let Some(msg_type) = MsgType::from_u32(header.msg_type) else {
        return Err(WireError::UnknownType { header });
    };
    let message = Message {
        msg_type,
        req_id: header.req_id,
        tx_id: TxId(header.tx_id),
        payload: buf[HEADER_LEN..total].to_vec(),
    };
    Ok(Decoded::Message(message, total))
}

/// An incremental decoder: feed it bytes as they arrive, take whole messages out.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    poisoned: bool,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Append bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.poisoned {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// How many bytes are buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    ///
    /// A recoverable error consumes its frame; after a fatal one the decoder refuses everything.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        if self.poisoned {
            return Err(WireError::PayloadTooLong { len: u32::MAX });
        }
        match decode(&self.buf) {
            Ok(Decoded::NeedMore(_)) => Ok(None),
            Ok(Decoded::Message(msg, used)) => {
                self.buf.drain(..used);
                Ok(Some(msg))
            }
            Err(WireError::UnknownType { header }) => {
                self.buf.drain(..HEADER_LEN + header.len as usize);
                Err(WireError::UnknownType { header })
            }
            Err(e) => {
                self.poisoned = true;
                self.buf = Vec::new();
                Err(e)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Paths

/// Where a path may name one of the special watch nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Only ordinary (absolute or relative) node paths.
    Node,
    /// Ordinary paths and `@introduceDomain` / `@releaseDomain`.
    AllowSpecial,
}

/// Whether `path` is one of the special watch paths.
pub fn is_special(path: &str) -> bool {
    path == INTRODUCE_DOMAIN || path == RELEASE_DOMAIN
}

/// Check a path the way xenstored does: only alphanumerics and `-/_@`, no `//`, no trailing `/`
/// except for the root, at most [`ABS_PATH_MAX`] bytes absolute or [`REL_PATH_MAX`] relative, and
/// the special `@...` names only where allowed. Returns `EINVAL` otherwise.
pub fn validate_path(path: &str, kind: PathKind) -> Result<(), Errno> {
    if kind == PathKind::AllowSpecial && is_special(path) {
        return Ok(());
    }
    if path.is_empty() || path.starts_with('@') {
        return Err(Errno::EINVAL);
    }
    let max = if path.starts_with('/') {
        ABS_PATH_MAX
    } else {
        REL_PATH_MAX
    };
    if path.len() > max {
        return Err(Errno::EINVAL);
    }
    if path.contains("//") || (path.ends_with('/') && path != "/") {
        return Err(Errno::EINVAL);
    }
    let ok = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(Errno::EINVAL)
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// A request, as a client sends it, with its payload decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `CONTROL`: the raw NUL-separated command words.
    Control(Vec<u8>),
    /// `DIRECTORY path`.
    Directory {
        /// The node.
        path: String,
    },
    /// `DIRECTORY_PART path offset`: children from byte `offset` of the NUL-separated list.
    DirectoryPart {
        /// The node.
        path: String,
        /// Byte offset into the child list.
        offset: u32,
    },
    /// `READ path`.
    Read {
        /// The node.
        path: String,
    },
    /// `GET_PERMS path`.
    GetPerms {
        /// The node (or a special watch path).
        path: String,
    },
    /// `WATCH path token`.
    Watch {
        /// The watched node (or a special watch path).
        path: String,
        /// The caller's token.
        token: String,
    },
    /// `UNWATCH path token`.
    Unwatch {
        /// The watched node.
        path: String,
        /// The token.
        token: String,
    },
    /// `TRANSACTION_START`.
    TransactionStart,
    /// `TRANSACTION_END T|F`.
    TransactionEnd {
        /// `T` commits, `F` aborts.
        commit: bool,
    },
    /// `INTRODUCE domid mfn port`.
    Introduce {
        /// The domain.
        domid: DomId,
        /// The frame of its xenstore ring page.
        mfn: u64,
        /// The event channel of its ring.
        port: u32,
    },
    /// `RELEASE domid`.
    Release {
        /// The domain.
        domid: DomId,
    },
    /// `GET_DOMAIN_PATH domid`.
    GetDomainPath {
        /// The domain.
        domid: DomId,
    },
    /// `WRITE path value`.
    Write {
        /// The node.
        path: String,
        /// The raw value.
        value: Vec<u8>,
    },
    /// `MKDIR path`.
    Mkdir {
        /// The node.
        path: String,
    },
    /// `RM path`.
    Rm {
        /// The node.
        path: String,
    },
    /// `SET_PERMS path perm...`.
    SetPerms {
        /// The node (or a special watch path).
        path: String,
        /// The new permission list, owner first.
        perms: Vec<Perm>,
    },
    /// `IS_DOMAIN_INTRODUCED domid`.
    IsDomainIntroduced {
        /// The domain.
        domid: DomId,
    },
    /// `RESUME domid`.
    Resume {
        /// The domain.
        domid: DomId,
    },
    /// `SET_TARGET domid target`: `domid` may act as the owner of `target`'s nodes.
    SetTarget {
        /// The (device-model) domain gaining rights.
        domid: DomId,
        /// The domain it serves.
        target: DomId,
    },
    /// `RESET_WATCHES`: drop every watch and transaction of the connection.
    ResetWatches,
}

/// Split a payload into NUL-terminated strings; `None` if the last one lacks its NUL.
fn nul_strings(payload: &[u8]) -> Option<Vec<&[u8]>> {
    if payload.is_empty() {
        return Some(Vec::new());
    }
    let body = payload.strip_suffix(b"\0")?;
    Some(body.split(|b| *b == 0).collect())
}

fn utf8(bytes: &[u8]) -> Result<String, Errno> {
    core::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| Errno::EINVAL)
}

fn number<T: core::str::FromStr>(bytes: &[u8]) -> Result<T, Errno> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return Err(Errno::EINVAL);
    }
    core::str::from_utf8(bytes)
        .map_err(|_| Errno::EINVAL)?
        .parse()
        .map_err(|_| Errno::EINVAL)
}

fn domid(bytes: &[u8]) -> Result<DomId, Errno> {
    number::<u16>(bytes).map(DomId)
}

/// Exactly `n` NUL-terminated strings.
fn exactly(payload: &[u8], n: usize) -> Result<Vec<&[u8]>, Errno> {
    let parts = nul_strings(payload).ok_or(Errno::EINVAL)?;
    if parts.len() == n {
        Ok(parts)
    } else {
        Err(Errno::EINVAL)
    }
}

fn path_arg(bytes: &[u8], kind: PathKind) -> Result<String, Errno> {
    let path = utf8(bytes)?;
    validate_path(&path, kind)?;
    Ok(path)
}

fn parse_perm(bytes: &[u8]) -> Result<Perm, Errno> {
    core::str::from_utf8(bytes)
        .map_err(|_| Errno::EINVAL)?
        .parse()
        .map_err(|_| Errno::EINVAL)
}

impl Request {
    /// Decode a request from a message a client sent. Anything malformed (missing NUL, invalid
    /// path, bad number) is `EINVAL`, as xenstored answers it; a type only the daemon sends
    /// (`WATCH_EVENT`, `ERROR`, `INVALID`) is `ENOSYS`, xenstored's answer to a type it has no
    /// handler for.
    pub fn parse(msg: &Message) -> Result<Request, Errno> {
        let p = msg.payload.as_slice();
        let one_path = |kind| -> Result<String, Errno> { path_arg(exactly(p, 1)?[0], kind) };
        Ok(match msg.msg_type {
            MsgType::Control => Request::Control(p.to_vec()),
            MsgType::Directory => Request::Directory {
                path: one_path(PathKind::Node)?,
            },
            MsgType::DirectoryPart => {
                let parts = exactly(p, 2)?;
                Request::DirectoryPart {
                    path: path_arg(parts[0], PathKind::Node)?,
                    offset: number(parts[1])?,
                }
            }
            MsgType::Read => Request::Read {
                path: one_path(PathKind::Node)?,
            },
            MsgType::GetPerms => Request::GetPerms {
                path: one_path(PathKind::AllowSpecial)?,
            },
            MsgType::Watch | MsgType::Unwatch => {
                let parts = exactly(p, 2)?;
                let path = path_arg(parts[0], PathKind::AllowSpecial)?;
                let token = utf8(parts[1])?;
                if msg.msg_type == MsgType::Watch {
                    Request::Watch { path, token }
                } else {
                    Request::Unwatch { path, token }
                }
            }
            // xenstored ignores the payload (libxenstore sends "\0", some clients nothing).
            MsgType::TransactionStart => Request::TransactionStart,
            MsgType::TransactionEnd => match exactly(p, 1)?[0] {
                b"T" => Request::TransactionEnd { commit: true },
                b"F" => Request::TransactionEnd { commit: false },
                _ => return Err(Errno::EINVAL),
            },
            MsgType::Introduce => {
                let parts = exactly(p, 3)?;
                Request::Introduce {
                    domid: domid(parts[0])?,
                    mfn: number(parts[1])?,
                    port: number(parts[2])?,
                }
            }
            MsgType::Release => Request::Release {
                domid: domid(exactly(p, 1)?[0])?,
            },
            MsgType::GetDomainPath => Request::GetDomainPath {
                domid: domid(exactly(p, 1)?[0])?,
            },
            MsgType::Write => {
                let nul = p.iter().position(|b| *b == 0).ok_or(Errno::EINVAL)?;
                Request::Write {
                    path: path_arg(&p[..nul], PathKind::Node)?,
                    value: p[nul + 1..].to_vec(),
                }
            }
            MsgType::Mkdir => Request::Mkdir {
                path: one_path(PathKind::Node)?,
            },
            MsgType::Rm => Request::Rm {
                path: one_path(PathKind::Node)?,
            },
            MsgType::SetPerms => {
                let parts = nul_strings(p).ok_or(Errno::EINVAL)?;
                let (first, rest) = parts.split_first().ok_or(Errno::EINVAL)?;
                if rest.is_empty() {
                    return Err(Errno::EINVAL);
                }
                let path = path_arg(first, PathKind::AllowSpecial)?;
                let perms = rest
                    .iter()
                    .map(|s| parse_perm(s))
                    .collect::<Result<Vec<_>, _>>()?;
                Request::SetPerms { path, perms }
            }
            MsgType::IsDomainIntroduced => Request::IsDomainIntroduced {
                domid: domid(exactly(p, 1)?[0])?,
            },
            MsgType::Resume => Request::Resume {
                domid: domid(exactly(p, 1)?[0])?,
            },
            MsgType::SetTarget => {
                let parts = exactly(p, 2)?;
                Request::SetTarget {
                    domid: domid(parts[0])?,
                    target: domid(parts[1])?,
                }
            }
            MsgType::ResetWatches => Request::ResetWatches,
            MsgType::WatchEvent | MsgType::Error | MsgType::Invalid => return Err(Errno::ENOSYS),
        })
    }

    /// The message type of this request.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Request::Control(_) => MsgType::Control,
            Request::Directory { .. } => MsgType::Directory,
            Request::DirectoryPart { .. } => MsgType::DirectoryPart,
            Request::Read { .. } => MsgType::Read,
            Request::GetPerms { .. } => MsgType::GetPerms,
            Request::Watch { .. } => MsgType::Watch,
            Request::Unwatch { .. } => MsgType::Unwatch,
            Request::TransactionStart => MsgType::TransactionStart,
            Request::TransactionEnd { .. } => MsgType::TransactionEnd,
            Request::Introduce { .. } => MsgType::Introduce,
            Request::Release { .. } => MsgType::Release,
            Request::GetDomainPath { .. } => MsgType::GetDomainPath,
            Request::Write { .. } => MsgType::Write,
            Request::Mkdir { .. } => MsgType::Mkdir,
            Request::Rm { .. } => MsgType::Rm,
            Request::SetPerms { .. } => MsgType::SetPerms,
            Request::IsDomainIntroduced { .. } => MsgType::IsDomainIntroduced,
            Request::Resume { .. } => MsgType::Resume,
            Request::SetTarget { .. } => MsgType::SetTarget,
            Request::ResetWatches => MsgType::ResetWatches,
        }
    }

    /// The payload bytes, laid out as libxenstore sends them.
    pub fn payload(&self) -> Vec<u8> {
        fn strings(parts: &[&[u8]]) -> Vec<u8> {
            let mut out = Vec::new();
            for part in parts {
                out.extend_from_slice(part);
                out.push(0);
            }
            out
        }
        match self {
            Request::Control(raw) => raw.clone(),
            Request::Directory { path }
            | Request::Read { path }
            | Request::GetPerms { path }
            | Request::Mkdir { path }
            | Request::Rm { path } => strings(&[path.as_bytes()]),
            Request::DirectoryPart { path, offset } => {
                strings(&[path.as_bytes(), offset.to_string().as_bytes()])
            }
            Request::Watch { path, token } | Request::Unwatch { path, token } => {
                strings(&[path.as_bytes(), token.as_bytes()])
            }
            Request::TransactionStart | Request::ResetWatches => strings(&[b""]),
            Request::TransactionEnd { commit } => strings(&[if *commit { b"T" } else { b"F" }]),
            Request::Introduce { domid, mfn, port } => strings(&[
                domid.to_string().as_bytes(),
                mfn.to_string().as_bytes(),
                port.to_string().as_bytes(),
            ]),
            Request::Release { domid }
            | Request::GetDomainPath { domid }
            | Request::IsDomainIntroduced { domid }
            | Request::Resume { domid } => strings(&[domid.to_string().as_bytes()]),
            Request::Write { path, value } => {
                let mut out = strings(&[path.as_bytes()]);
                out.extend_from_slice(value);
                out
            }
            Request::SetPerms { path, perms } => {
                let perms: Vec<String> = perms.iter().map(Perm::to_string).collect();
                let mut parts: Vec<&[u8]> = vec![path.as_bytes()];
                parts.extend(perms.iter().map(|p| p.as_bytes()));
                strings(&parts)
            }
            Request::SetTarget { domid, target } => {
                strings(&[domid.to_string().as_bytes(), target.to_string().as_bytes()])
            }
        }
    }

    /// The request as a message; fails if the payload would exceed [`PAYLOAD_MAX`].
    pub fn to_message(&self, req_id: u32, tx_id: TxId) -> Result<Message, WireError> {
        let payload = self.payload();
        if payload.len() > PAYLOAD_MAX {
            return Err(WireError::EncodeTooLong { len: payload.len() });
        }
        Ok(Message {
            msg_type: self.msg_type(),
            req_id,
            tx_id,
            payload,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Replies

/// A reply or an unsolicited message from the daemon, with its payload decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `OK\0`: a mutation (or watch, unwatch, transaction end, ...) succeeded.
    Ok,
    /// `ERROR`: the request failed with this name.
    Error(Errno),
    /// A `READ` reply: the raw value.
    Read(Vec<u8>),
    /// A `DIRECTORY` reply: the child names.
    Directory(Vec<String>),
    /// A `DIRECTORY_PART` reply.
    DirectoryPart {
        /// The node's generation (a client restarts if it changes between chunks).
        generation: u64,
        /// The names in this chunk.
        names: Vec<String>,
        /// Whether this chunk ends the list.
        done: bool,
    },
    /// A `GET_PERMS` reply.
    Perms(Vec<Perm>),
    /// A `TRANSACTION_START` reply.
    TransactionStarted(TxId),
    /// A `GET_DOMAIN_PATH` reply.
    DomainPath(String),
    /// An `IS_DOMAIN_INTRODUCED` reply.
    Introduced(bool),
    /// A `CONTROL` reply: raw bytes.
    Control(Vec<u8>),
    /// A `WATCH_EVENT`.
    WatchEvent(WatchEvent),
}

fn bad_reply(what: &str) -> crate::XenstoreError {
    crate::XenstoreError::Protocol(format!("malformed {what} reply"))
}

fn reply_strings(payload: &[u8], what: &str) -> crate::Result<Vec<String>> {
    let parts = nul_strings(payload).ok_or_else(|| bad_reply(what))?;
    parts
        .into_iter()
        .map(|p| {
            core::str::from_utf8(p)
                .map(str::to_owned)
                .map_err(|_| bad_reply(what))
        })
        .collect()
}

fn single_string(payload: &[u8], what: &str) -> crate::Result<String> {
    let mut parts = reply_strings(payload, what)?;
    if parts.len() == 1 {
        Ok(parts.remove(0))
    } else {
        Err(bad_reply(what))
    }
}

impl Reply {
    /// The message type this reply goes out with, given the request type it answers.
    pub fn msg_type(&self, request: MsgType) -> MsgType {
        match self {
            Reply::Error(_) => MsgType::Error,
            Reply::WatchEvent(_) => MsgType::WatchEvent,
            _ => request,
        }
    }

    /// The payload bytes, laid out as xenstored sends them.
    pub fn payload(&self) -> Vec<u8> {
        fn strings<S: AsRef<[u8]>>(parts: impl IntoIterator<Item = S>) -> Vec<u8> {
            let mut out = Vec::new();
            for part in parts {
                out.extend_from_slice(part.as_ref());
                out.push(0);
            }
            out
        }
        match self {
            Reply::Ok => b"OK\0".to_vec(),
            Reply::Error(e) => strings([e.name()]),
            Reply::Read(value) | Reply::Control(value) => value.clone(),
            Reply::Directory(names) => strings(names),
            Reply::DirectoryPart {
                generation,
                names,
                done,
            } => {
                let mut out = strings([generation.to_string()]);
                out.extend(strings(names));
                if *done {
                    out.push(0);
                }
                out
            }
            Reply::Perms(perms) => strings(perms.iter().map(Perm::to_string)),
            Reply::TransactionStarted(tx) => strings([tx.0.to_string()]),
            Reply::DomainPath(path) => strings([path]),
            Reply::Introduced(yes) => strings([if *yes { "T" } else { "F" }]),
            Reply::WatchEvent(ev) => strings([&ev.path, &ev.token]),
        }
    }

    /// The reply as a message answering a request of type `request` with ids `req_id`, `tx_id`.
    /// A payload over [`PAYLOAD_MAX`] becomes an `E2BIG` error, as in xenstored.
    pub fn to_message(&self, request: MsgType, req_id: u32, tx_id: TxId) -> Message {
        let payload = self.payload();
        if payload.len() > PAYLOAD_MAX {
            return Reply::Error(Errno::E2BIG).to_message(request, req_id, tx_id);
        }
        Message {
            msg_type: self.msg_type(request),
            req_id,
            tx_id,
            payload,
        }
    }

    /// Decode a watch event message.
    pub fn parse_watch_event(payload: &[u8]) -> crate::Result<WatchEvent> {
        // xenstored sends exactly `path\0token\0`; tolerate nothing else.
        let parts = reply_strings(payload, "watch event")?;
        match <[String; 2]>::try_from(parts) {
            Ok([path, token]) => Ok(WatchEvent { path, token }),
            Err(_) => Err(bad_reply("watch event")),
        }
    }

    /// Decode the daemon's message answering a request of type `request`.
    pub fn parse(request: MsgType, msg: &Message) -> crate::Result<Reply> {
        let p = msg.payload.as_slice();
        match msg.msg_type {
            MsgType::Error => {
                let name = single_string(p, "error")?;
                return name.parse().map(Reply::Error).map_err(|_| {
                    crate::XenstoreError::Protocol(format!("unknown error name {name:?}"))
                });
            }
            MsgType::WatchEvent => return Reply::parse_watch_event(p).map(Reply::WatchEvent),
            t if t != request => {
                return Err(crate::XenstoreError::Protocol(format!(
                    "reply of type {t:?} to a {request:?} request"
                )))
            }
            _ => {}
        }
        Ok(match request {
            MsgType::Read => Reply::Read(p.to_vec()),
            MsgType::Control => Reply::Control(p.to_vec()),
            MsgType::Directory => Reply::Directory(reply_strings(p, "directory")?),
            MsgType::DirectoryPart => {
                let bad = || bad_reply("directory part");
                let gen_end = p.iter().position(|b| *b == 0).ok_or_else(bad)?;
                let generation = core::str::from_utf8(&p[..gen_end])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(bad)?;
                // After the generation: names each NUL-terminated, plus one more NUL on the last
                // chunk.
                let rest = &p[gen_end + 1..];
                let (names, done) = if rest.is_empty() {
                    (rest, false)
                } else if rest == b"\0" {
                    (&rest[..0], true)
                } else if let Some(names) = rest.strip_suffix(b"\0\0") {
                    (names, true)
                } else {
                    (rest.strip_suffix(b"\0").ok_or_else(bad)?, false)
                };
                let names = if names.is_empty() {
                    Vec::new()
                } else {
                    names
                        .split(|b| *b == 0)
                        .map(|n| {
                            core::str::from_utf8(n)
                                .map(str::to_owned)
                                .map_err(|_| bad())
                        })
                        .collect::<crate::Result<Vec<_>>>()?
                };
                Reply::DirectoryPart {
                    generation,
                    names,
                    done,
                }
            }
            MsgType::GetPerms => {
                let perms = reply_strings(p, "permissions")?
                    .iter()
                    .map(|s| s.parse::<Perm>())
                    .collect::<crate::Result<Vec<_>>>()?;
                Reply::Perms(perms)
            }
            MsgType::TransactionStart => {
                let id = single_string(p, "transaction start")?;
                Reply::TransactionStarted(TxId(
                    id.parse().map_err(|_| bad_reply("transaction start"))?,
                ))
            }
            MsgType::GetDomainPath => Reply::DomainPath(single_string(p, "domain path")?),
            MsgType::IsDomainIntroduced => match single_string(p, "is-domain-introduced")?.as_str()
            {
                "T" => Reply::Introduced(true),
                "F" => Reply::Introduced(false),
                _ => return Err(bad_reply("is-domain-introduced")),
            },
            _ => {
                if p == b"OK\0" {
                    Reply::Ok
                } else {
                    return Err(bad_reply("acknowledgement"));
                }
            }
        })
    }
}

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::Access;
    use proptest::prelude::*;

    #[test]
    fn header_is_four_native_words() {
        let h = Header {
            msg_type: 2,
            req_id: 0x01020304,
            tx_id: 9,
            len: 5,
        };
        let bytes = h.encode();
        assert_eq!(&bytes[0..4], &2u32.to_ne_bytes());
        assert_eq!(&bytes[4..8], &0x01020304u32.to_ne_bytes());
        assert_eq!(&bytes[8..12], &9u32.to_ne_bytes());
        assert_eq!(&bytes[12..16], &5u32.to_ne_bytes());
        assert_eq!(Header::decode(&bytes), h);
    }

    #[test]
    fn short_and_misaligned_buffers_decode() {
        let msg = Message::new(MsgType::Read, 3, TxId(4), b"/a\0".to_vec());
        let bytes = msg.encode().unwrap();
        for n in 0..HEADER_LEN {
            assert_eq!(decode(&bytes[..n]), Ok(Decoded::NeedMore(HEADER_LEN - n)));
        }
        assert_eq!(decode(&bytes[..HEADER_LEN]), Ok(Decoded::NeedMore(3)));
        // The header is copied out, so it may start at any offset of the buffer.
        for offset in 1..4 {
            let mut shifted = vec![0xaa; offset];
            shifted.extend_from_slice(&bytes);
            assert_eq!(
                decode(&shifted[offset..]),
                Ok(Decoded::Message(msg.clone(), bytes.len()))
            );
        }
    }

    #[test]
    fn message_type_numbers_match_xs_wire_h() {
        assert_eq!(MsgType::SetTarget.as_u32(), 19);
        assert_eq!(MsgType::ResetWatches.as_u32(), 21);
        assert_eq!(MsgType::DirectoryPart.as_u32(), 22);
        assert_eq!(MsgType::Invalid.as_u32(), 0xffff);
        assert_eq!(MsgType::from_u32(20), None);
        assert_eq!(MsgType::from_u32(23), None);
        for t in MsgType::ALL {
            assert_eq!(MsgType::from_u32(t.as_u32()), Some(t));
        }
    }

    #[test]
    fn replies_carry_nuls_like_xenstored() {
        assert_eq!(Reply::Read(b"abc".to_vec()).payload(), b"abc");
        assert_eq!(Reply::Ok.payload(), b"OK\0");
        assert_eq!(Reply::Error(Errno::ENOENT).payload(), b"ENOENT\0");
        assert_eq!(
            Reply::Directory(vec!["a".into(), "bc".into()]).payload(),
            b"a\0bc\0"
        );
        assert_eq!(Reply::Directory(vec![]).payload(), b"");
        let ev = WatchEvent {
            path: "/a".into(),
            token: "t".into(),
        };
        assert_eq!(Reply::WatchEvent(ev).payload(), b"/a\0t\0");
        assert_eq!(
            Reply::Perms(vec![
                Perm::new(DomId(0), Access::None),
                Perm::new(DomId(5), Access::Read)
            ])
            .payload(),
            b"n0\0r5\0"
        );
        assert_eq!(
            Reply::DirectoryPart {
                generation: 7,
                names: vec!["a".into()],
                done: true
            }
            .payload(),
            b"7\0a\0\0"
        );
        assert_eq!(
            Reply::DirectoryPart {
                generation: 7,
                names: vec![],
                done: true
            }
            .payload(),
            b"7\0\0"
        );
    }

    #[test]
    fn oversized_reply_becomes_e2big() {
        let names: Vec<String> = (0..1000).map(|i| format!("child{i}")).collect();
        let msg = Reply::Directory(names).to_message(MsgType::Directory, 3, TxId(4));
        assert_eq!(msg.msg_type, MsgType::Error);
        assert_eq!(msg.payload, b"E2BIG\0");
        assert_eq!(msg.req_id, 3);
    }

    #[test]
    fn write_payload_is_path_nul_raw_value() {
        let req = Request::Write {
            path: "/a".into(),
            value: b"x\0y".to_vec(),
        };
        assert_eq!(req.payload(), b"/a\0x\0y");
        let msg = req.to_message(1, TxId::NONE).unwrap();
        assert_eq!(Request::parse(&msg).unwrap(), req);
    }

    #[test]
    fn missing_nul_is_einval() {
        let msg = Message::new(MsgType::Read, 0, TxId::NONE, b"/a".to_vec());
        assert_eq!(Request::parse(&msg), Err(Errno::EINVAL));
        let msg = Message::new(MsgType::Watch, 0, TxId::NONE, b"/a\0tok".to_vec());
        assert_eq!(Request::parse(&msg), Err(Errno::EINVAL));
        let msg = Message::new(MsgType::Write, 0, TxId::NONE, b"/a".to_vec());
        assert_eq!(Request::parse(&msg), Err(Errno::EINVAL));
    }

    #[test]
    fn path_rules_follow_xenstored() {
        use PathKind::*;
        for ok in ["/", "/a", "/a/b-c_d@e", "rel/path", "/local/domain/0", "a"] {
            assert_eq!(validate_path(ok, Node), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/a/",
            "//",
            "/a//b",
            "/a b",
            "/a\u{e9}",
            "/a.b",
            "rel/",
            "@introduceDomain",
            "@foo",
        ] {
            assert_eq!(validate_path(bad, Node), Err(Errno::EINVAL), "{bad}");
        }
        assert_eq!(validate_path("@introduceDomain", AllowSpecial), Ok(()));
        assert_eq!(validate_path("@releaseDomain", AllowSpecial), Ok(()));
        assert_eq!(validate_path("@other", AllowSpecial), Err(Errno::EINVAL));
        let abs = format!("/{}", "a".repeat(ABS_PATH_MAX - 1));
        assert_eq!(validate_path(&abs, Node), Ok(()));
        assert_eq!(validate_path(&format!("{abs}b"), Node), Err(Errno::EINVAL));
        let rel = "a".repeat(REL_PATH_MAX);
        assert_eq!(validate_path(&rel, Node), Ok(()));
        assert_eq!(validate_path(&format!("{rel}b"), Node), Err(Errno::EINVAL));
    }

    #[test]
    fn payload_over_the_limit_is_fatal_both_ways() {
        let h = Header {
            msg_type: 2,
            req_id: 0,
            tx_id: 0,
            len: PAYLOAD_MAX as u32 + 1,
        };
        assert_eq!(
            decode(&h.encode()),
            Err(WireError::PayloadTooLong {
                len: PAYLOAD_MAX as u32 + 1
            })
        );
        let msg = Message::new(MsgType::Write, 0, TxId::NONE, vec![0; PAYLOAD_MAX + 1]);
        assert!(msg.encode().is_err());
        let req = Request::Write {
            path: "/a".into(),
            value: vec![b'v'; PAYLOAD_MAX],
        };
        assert!(req.to_message(0, TxId::NONE).is_err());
        let mut d = Decoder::new();
        d.feed(&h.encode());
        assert!(d.next_message().is_err());
        d.feed(
            &Message::new(MsgType::Read, 0, TxId::NONE, b"/\0".to_vec())
                .encode()
                .unwrap(),
        );
        assert!(
            d.next_message().is_err(),
            "a poisoned decoder stays poisoned"
        );
    }

    #[test]
    fn unknown_type_is_skipped_and_the_stream_stays_in_step() {
        let mut bytes = Header {
            msg_type: 20,
            req_id: 5,
            tx_id: 0,
            len: 3,
        }
        .encode()
        .to_vec();
        bytes.extend_from_slice(b"abc");
        let good = Message::new(MsgType::Read, 6, TxId::NONE, b"/\0".to_vec());
        bytes.extend(good.encode().unwrap());
        let mut d = Decoder::new();
        d.feed(&bytes);
        match d.next_message() {
            Err(e @ WireError::UnknownType { header }) => {
                assert!(e.is_recoverable());
                assert_eq!(header.req_id, 5);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(d.next_message().unwrap(), Some(good));
        assert_eq!(d.next_message().unwrap(), None);
    }

    #[test]
    fn directory_part_reply_round_trips() {
        for (names, done) in [
            (vec![], true),
            (vec!["a".to_string(), "b".into()], true),
            (vec!["x".into()], false),
        ] {
            let r = Reply::DirectoryPart {
                generation: 42,
                names,
                done,
            };
            let msg = r.to_message(MsgType::DirectoryPart, 1, TxId::NONE);
            assert_eq!(Reply::parse(MsgType::DirectoryPart, &msg).unwrap(), r);
        }
    }

    fn arb_path() -> impl Strategy<Value = String> {
        prop_oneof![
            "(/[a-zA-Z0-9_@-]{1,12}){1,6}",
            "[a-zA-Z0-9_-]{1,12}(/[a-zA-Z0-9_@-]{1,12}){0,4}",
            Just("/".to_string()),
        ]
    }

    fn arb_perm() -> impl Strategy<Value = Perm> {
        (any::<u16>(), 0..4u8).prop_map(|(d, a)| {
            let access = [Access::None, Access::Read, Access::Write, Access::Both][a as usize];
            Perm::new(DomId(d), access)
        })
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        let token = "[ -~]{0,20}";
        prop_oneof![
            arb_path().prop_map(|path| Request::Read { path }),
            arb_path().prop_map(|path| Request::Directory { path }),
            (arb_path(), any::<u32>())
                .prop_map(|(path, offset)| Request::DirectoryPart { path, offset }),
            arb_path().prop_map(|path| Request::GetPerms { path }),
            arb_path().prop_map(|path| Request::Mkdir { path }),
            arb_path().prop_map(|path| Request::Rm { path }),
            (arb_path(), proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(path, value)| Request::Write { path, value }),
            (arb_path(), token).prop_map(|(path, token)| Request::Watch { path, token }),
            (arb_path(), token).prop_map(|(path, token)| Request::Unwatch { path, token }),
            (arb_path(), proptest::collection::vec(arb_perm(), 1..6))
                .prop_map(|(path, perms)| Request::SetPerms { path, perms }),
            Just(Request::TransactionStart),
            any::<bool>().prop_map(|commit| Request::TransactionEnd { commit }),
            (any::<u16>(), any::<u64>(), any::<u32>()).prop_map(|(d, mfn, port)| {
                Request::Introduce {
                    domid: DomId(d),
                    mfn,
                    port,
                }
            }),
            any::<u16>().prop_map(|d| Request::Release { domid: DomId(d) }),
            any::<u16>().prop_map(|d| Request::GetDomainPath { domid: DomId(d) }),
            any::<u16>().prop_map(|d| Request::IsDomainIntroduced { domid: DomId(d) }),
            any::<u16>().prop_map(|d| Request::Resume { domid: DomId(d) }),
            (any::<u16>(), any::<u16>()).prop_map(|(d, t)| Request::SetTarget {
                domid: DomId(d),
                target: DomId(t)
            }),
            Just(Request::ResetWatches),
        ]
    }

    fn arb_reply() -> impl Strategy<Value = (MsgType, Reply)> {
        let name = "[a-zA-Z0-9_-]{1,10}";
        prop_oneof![
            Just((MsgType::Write, Reply::Ok)),
            (0..16usize).prop_map(|i| (MsgType::Read, Reply::Error(Errno::ALL[i]))),
            proptest::collection::vec(any::<u8>(), 0..100)
                .prop_map(|v| (MsgType::Read, Reply::Read(v))),
            proptest::collection::vec(name, 0..10)
                .prop_map(|n| (MsgType::Directory, Reply::Directory(n))),
            (
                any::<u64>(),
                proptest::collection::vec(name, 0..10),
                any::<bool>()
            )
                .prop_map(|(generation, names, done)| {
                    (
                        MsgType::DirectoryPart,
                        Reply::DirectoryPart {
                            generation,
                            names,
                            done,
                        },
                    )
                }),
            proptest::collection::vec(arb_perm(), 1..6)
                .prop_map(|p| (MsgType::GetPerms, Reply::Perms(p))),
            any::<u32>().prop_map(|t| (
                MsgType::TransactionStart,
                Reply::TransactionStarted(TxId(t))
            )),
            arb_path().prop_map(|p| (MsgType::GetDomainPath, Reply::DomainPath(p))),
            any::<bool>().prop_map(|b| (MsgType::IsDomainIntroduced, Reply::Introduced(b))),
            (arb_path(), name).prop_map(|(path, token)| {
                (
                    MsgType::Read,
                    Reply::WatchEvent(WatchEvent {
                        path,
                        token: token.to_string(),
                    }),
                )
            }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(req in arb_request(), req_id: u32, tx: u32) {
            let msg = req.to_message(req_id, TxId(tx)).unwrap();
            let bytes = msg.encode().unwrap();
            let Decoded::Message(back, used) = decode(&bytes).unwrap() else { panic!("short") };
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(&back, &msg);
            prop_assert_eq!(Request::parse(&back).unwrap(), req);
        }

        #[test]
        fn replies_round_trip((req_type, reply) in arb_reply(), req_id: u32) {
            let msg = reply.to_message(req_type, req_id, TxId::NONE);
            let bytes = msg.encode().unwrap();
            let Decoded::Message(back, _) = decode(&bytes).unwrap() else { panic!("short") };
            prop_assert_eq!(Reply::parse(req_type, &back).unwrap(), reply);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
            let mut d = Decoder::new();
            d.feed(&bytes);
            while let Ok(Some(msg)) = d.next_message() {
                let _ = Request::parse(&msg);
                for t in MsgType::ALL {
                    let _ = Reply::parse(t, &msg);
                }
            }
        }

        #[test]
        fn parsing_arbitrary_payloads_never_panics(t in 0..23usize, payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let msg = Message::new(MsgType::ALL[t], 1, TxId::NONE, payload);
            let _ = Request::parse(&msg);
            for rt in MsgType::ALL {
                let _ = Reply::parse(rt, &msg);
            }
        }

        #[test]
        fn split_delivery_decodes_the_same(reqs in proptest::collection::vec(arb_request(), 1..8), cut in 1..64usize) {
            let mut bytes = Vec::new();
            for (i, r) in reqs.iter().enumerate() {
                r.to_message(i as u32, TxId::NONE).unwrap().encode_into(&mut bytes).unwrap();
            }
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for chunk in bytes.chunks(cut) {
                d.feed(chunk);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(Request::parse(&m).unwrap());
                }
            }
            prop_assert_eq!(got, reqs);
        }
    }
}
