//! The cross-process host's wire protocol: its messages as types, encoded and decoded here and
//! nowhere else, and the sockets that carry them.
//!
//! The simulated hypervisor is a process (`xensim serve`) listening on a `SOCK_SEQPACKET` Unix
//! socket, `<XENSIM_DIR>/xen.sock`. Every device handle a simulated domain opens (an event-channel
//! handle, a grant-sharing or a grant-mapping handle) is one connection to it, and the connection
//! is the handle's whole life: when the handle is closed, or the process holding it dies by any
//! means (even `SIGKILL`), the kernel closes the socket and the host reclaims what the handle held
//! and carries out its unmap notifications. No cooperation from a dying process is needed, as
//! with the real kernel drivers.
//!
//! A connection opens with a [`Hello`] (which domain, which kind of handle); then each
//! [`Request`] gets a [`Reply`] or an errno, except the one-way [`Request::Notify`] and
//! [`Request::Unmask`]. An event-channel handle also owns one end of a socket pair whose other
//! end it gave the host in its greeting; the host writes one 4-byte message (the port) for each
//! delivered event. That end is the handle's pollable fd: readable means "an event is pending",
//! reading it is `xenevtchn_pending`, exactly like `/dev/xen/evtchn`.
//!
//! On the wire a message is a sequence of little-endian `u32` words: a request is `[op, args...]`,
//! a reply `[0, values...]` or `[errno]`; file descriptors travel as `SCM_RIGHTS`. A message the
//! host cannot decode is a [`RequestError`], answered with an errno as the Linux drivers answer
//! a bad ioctl (`EINVAL`; `ENOSYS` for an unknown operation, as the evtchn driver answers an
//! unknown ioctl), unless the operation is one of the one-way ones, whose sender waits for no
//! answer. The protocol is private to this crate: host and clients are built together.

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use xen_types::{DomId, GrantRef, Port};

use crate::model::{HandleKind, NotifyRequest, Stats};

/// The environment variable naming the simulated host's directory.
pub const ENV_DIR: &str = "XENSIM_DIR";
/// The environment variable naming the caller's simulated domain.
pub const ENV_DOMID: &str = "XENSIM_DOMID";
/// The host's socket, inside its directory.
pub(crate) const HOST_SOCKET: &str = "xen.sock";
/// The largest message either side sends, in bytes.
const MAX_MESSAGE: usize = 64 * 1024;
/// The most descriptors one message carries (the kernel's `SCM_MAX_FD` is 253).
pub(crate) const MAX_FDS: usize = 250;
/// The most descriptors the kernel passes in one message.
const SCM_MAX_FD: usize = 253;

/// Where the simulated host lives and which domain the caller is, from `XENSIM_DIR` and
/// `XENSIM_DOMID`.
pub fn env_config() -> io::Result<(PathBuf, DomId)> {
    let dir = std::env::var_os(ENV_DIR).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{ENV_DIR} is not set (not running under xensim)"),
        )
    })?;
    let domid = match std::env::var(ENV_DOMID) {
        Ok(text) => text
            .trim()
            .parse::<DomId>()
            .ok()
            .filter(|d| d.is_normal())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{ENV_DOMID}={text:?} is not a domain id"),
                )
            })?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{ENV_DOMID} is not set"),
            ))
        }
    };
    Ok((PathBuf::from(dir), domid))
}

/// The operation codes: the first word of a request.
mod op {
    pub const HELLO: u32 = 1;
    pub const EV_BIND_UNBOUND: u32 = 2;
    pub const EV_BIND_INTERDOMAIN: u32 = 3;
    pub const EV_NOTIFY: u32 = 4;
    pub const EV_UNMASK: u32 = 5;
    pub const EV_UNBIND: u32 = 6;
    pub const GNT_SHARE: u32 = 7;
    pub const GNT_UNSHARE: u32 = 8;
    pub const GNT_MAP: u32 = 9;
    pub const GNT_UNMAP: u32 = 10;
    pub const DOMAIN_CREATE: u32 = 11;
    pub const DOMAIN_DESTROY: u32 = 12;
    pub const STATS: u32 = 13;
    pub const DOMAIN_EXISTS: u32 = 14;
    pub const GNT_CANCEL: u32 = 15;
    pub const GNT_SET_NOTIFY: u32 = 16;

    /// Whether the sender of `op` waits for an answer (all but notify and unmask).
    pub fn has_reply(op: u32) -> bool {
        !matches!(op, EV_NOTIFY | EV_UNMASK)
    }
}

/// The handle kinds of a greeting.
fn kind_code(kind: HandleKind) -> u32 {
    match kind {
        HandleKind::Events => 1,
        HandleKind::Share => 2,
        HandleKind::Map => 3,
        HandleKind::Control => 4,
    }
}

fn kind_of(code: u32) -> Result<HandleKind, Malformed> {
    Ok(match code {
        1 => HandleKind::Events,
        2 => HandleKind::Share,
        3 => HandleKind::Map,
        4 => HandleKind::Control,
        other => return Err(Malformed::Kind(other)),
    })
}

/// The first message of a connection: `[HELLO, kind, domid]`, with the event socket attached
/// for an event-channel handle (and nothing for the others). Answered like [`Request`]s whose
/// reply is [`Reply::Done`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello<F> {
    /// The domain the handle acts for.
    pub domid: DomId,
    /// What the handle is for.
    pub kind: HandleKind,
    /// Where an event-channel handle's events go: `Some` exactly for [`HandleKind::Events`].
    pub events: Option<F>,
}

/// An unmap notification as the wire carries it: `[flags, offset, port]`, flag 1 for the
/// byte, flag 2 for the event (an absent one's word is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Notify {
    /// Byte offset within the region to clear.
    pub clear_byte: Option<u32>,
    /// A port of the caller's domain to send on.
    pub event: Option<Port>,
}

const NOTIFY_CLEAR: u32 = 1;
const NOTIFY_EVENT: u32 = 2;

impl From<Notify> for NotifyRequest {
    fn from(notify: Notify) -> NotifyRequest {
        NotifyRequest {
            clear_byte: notify.clear_byte.map(|b| b as usize),
            event: notify.event,
        }
    }
}

/// A request a handle makes of the host, after its greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// `[EV_BIND_UNBOUND, remote]` -> a port.
    BindUnbound { remote: DomId },
    /// `[EV_BIND_INTERDOMAIN, remote, remote_port]` -> a port.
    BindInterdomain { remote: DomId, remote_port: Port },
    /// `[EV_NOTIFY, port]`, one way: the client has checked that its handle bound the port,
    /// and the host ignores one it did not, as a stale notify.
    Notify(Port),
    /// `[EV_UNMASK, port]`, one way, as `Notify`.
    Unmask(Port),
    /// `[EV_UNBIND, port]` -> done.
    Unbind(Port),
    /// `[GNT_SHARE, grantee, pages, writable, notify...]` -> the share's id, its refs and its
    /// memory file.
    Share {
        grantee: DomId,
        pages: u32,
        writable: bool,
        notify: Notify,
    },
    /// `[GNT_UNSHARE, id]` -> done.
    Unshare(u32),
    /// `[GNT_MAP, granter, writable, notify..., refs...]` -> the mapping's id, where each page
    /// lies and the memory files.
    Map {
        granter: DomId,
        writable: bool,
        notify: Notify,
        refs: Vec<GrantRef>,
    },
    /// `[GNT_UNMAP, id]` -> done.
    Unmap(u32),
    /// `[GNT_SET_NOTIFY, id, notify...]` -> done: a notification for a mapping made without.
    SetMapNotify { id: u32, notify: Notify },
    /// `[GNT_CANCEL, id]` -> done: forget a share or mapping this handle could not complete
    /// (its mmap failed), without its unmap notification, which was never in force.
    Cancel(u32),
    /// `[DOMAIN_CREATE, domid]` -> done (the control handle only).
    CreateDomain(DomId),
    /// `[DOMAIN_DESTROY, domid]` -> done (the control handle only).
    DestroyDomain(DomId),
    /// `[STATS]` -> the counts (the control handle only).
    Stats,
    /// `[DOMAIN_EXISTS, domid]` -> whether it does (the control handle only).
    DomainExists(DomId),
}

/// The shape of the reply a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyKind {
    Done,
    Port,
    Shared,
    Mapped,
    Stats,
    Exists,
}

/// Where one page of a mapping lies: a page of one of the reply's memory files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FilePage {
    /// Index of the file among the reply's files.
    pub file: u32,
    /// The page within that file.
    pub page: u32,
}

/// A successful reply, with the files it passes as `F` (the host's memory files; the client's
/// received descriptors).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply<F> {
    /// `[0]`.
    Done,
    /// `[0, port]`.
    Port(Port),
    /// `[0, id, refs...]` + the memory file.
    Shared {
        id: u32,
        refs: Vec<GrantRef>,
        memory: F,
    },
    /// `[0, id, (file, page) per page...]` + the memory files.
    Mapped {
        id: u32,
        pages: Vec<FilePage>,
        files: Vec<F>,
    },
    /// `[0, domains, handles, ports, grants, mappings]`.
    Stats(Stats),
    /// `[0, 0 or 1]`.
    Exists(bool),
}

/// What is wrong with a message that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// No first word (operation or status).
    Empty,
    /// A length that is not a whole number of words.
    Unaligned { bytes: usize },
    /// Longer than the largest message: the kernel cut it.
    TooLong,
    /// An operation code nobody defined.
    UnknownOp(u32),
    /// A greeting after the greeting, or anything else instead of it.
    OutOfTurn(u32),
    /// The wrong number of words after the first for what the message is.
    Length { words: usize },
    /// A domain id that does not fit 16 bits.
    DomainId(u32),
    /// A flag word that is neither 0 nor 1, or unknown notification flags.
    Flag(u32),
    /// A greeting's unknown handle kind.
    Kind(u32),
    /// A reply's status that is no errno value.
    Status(u32),
    /// A message with the wrong number of descriptors.
    Descriptors { expected: usize, got: usize },
    /// A mapping's page in a file the reply did not pass.
    FileIndex(u32),
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::Empty => write!(f, "an empty message"),
            Malformed::Unaligned { bytes } => write!(f, "{bytes} bytes, not a whole word count"),
            Malformed::TooLong => write!(f, "longer than {MAX_MESSAGE} bytes"),
            Malformed::UnknownOp(op) => write!(f, "unknown operation {op}"),
            Malformed::OutOfTurn(op) => write!(f, "operation {op} out of turn"),
            Malformed::Length { words } => write!(f, "the wrong length ({words} words)"),
            Malformed::DomainId(raw) => write!(f, "domain id {raw} out of range"),
            Malformed::Flag(raw) => write!(f, "flag word {raw:#x}"),
            Malformed::Kind(raw) => write!(f, "unknown handle kind {raw}"),
            Malformed::Status(raw) => write!(f, "status {raw}, no errno value"),
            Malformed::Descriptors { expected, got } => {
                write!(f, "{got} descriptors where {expected} belong")
            }
            Malformed::FileIndex(index) => write!(f, "a page in file {index}, never passed"),
        }
    }
}

/// A request (or greeting) the host cannot decode: what was wrong, and the operation it
/// claimed, if it got that far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestError {
    /// The first word, if there was one.
    pub op: Option<u32>,
    /// What is wrong.
    pub malformed: Malformed,
}

impl RequestError {
    /// The errno the host answers with: `ENOSYS` for an unknown operation (the evtchn driver's
    /// answer to an unknown ioctl), `EPROTO` for a greeting out of turn, `EINVAL` otherwise (a
    /// driver's answer to a bad argument).
    pub fn errno(&self) -> Errno {
        match self.malformed {
            Malformed::UnknownOp(_) => Errno::ENOSYS,
            Malformed::OutOfTurn(_) => Errno::EPROTO,
            _ => Errno::EINVAL,
        }
    }

    /// Whether the sender waits for an answer: unless the operation is a one-way one.
    pub fn wants_answer(&self) -> bool {
        self.op.is_none_or(op::has_reply)
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            Some(op) => write!(f, "request {op}: {}", self.malformed),
            None => write!(f, "request: {}", self.malformed),
        }
    }
}

/// The words of a received message after the first, taken one at a time.
struct Words<'a> {
    words: std::slice::ChunksExact<'a, u8>,
    count: usize,
}

impl<'a> Words<'a> {
    /// The message's first word and a reader of the rest.
    fn open(
        bytes: &'a [u8],
        truncated: bool,
    ) -> Result<(u32, Words<'a>), (Option<u32>, Malformed)> {
        let first = bytes.first_chunk::<4>().map(|w| u32::from_le_bytes(*w));
        if truncated {
            return Err((first, Malformed::TooLong));
        }
        let Some(first) = first else {
            return Err((None, Malformed::Empty));
        };
        if !bytes.len().is_multiple_of(4) {
            return Err((Some(first), Malformed::Unaligned { bytes: bytes.len() }));
        }
        let rest = &bytes[4..];
        Ok((
            first,
            Words {
                words: rest.chunks_exact(4),
                count: rest.len() / 4,
            },
        ))
    }

    fn next(&mut self) -> Result<u32, Malformed> {
        self.words
            .next()
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .ok_or(Malformed::Length { words: self.count })
    }

    fn domid(&mut self) -> Result<DomId, Malformed> {
        let raw = self.next()?;
        u16::try_from(raw)
            .map(DomId)
            .map_err(|_| Malformed::DomainId(raw))
    }

    fn flag(&mut self) -> Result<bool, Malformed> {
        match self.next()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(Malformed::Flag(other)),
        }
    }

    fn notify(&mut self) -> Result<Notify, Malformed> {
        let (flags, offset, port) = (self.next()?, self.next()?, self.next()?);
        if flags & !(NOTIFY_CLEAR | NOTIFY_EVENT) != 0
            || (flags & NOTIFY_CLEAR == 0 && offset != 0)
            || (flags & NOTIFY_EVENT == 0 && port != 0)
        {
            return Err(Malformed::Flag(flags));
        }
        Ok(Notify {
            clear_byte: (flags & NOTIFY_CLEAR != 0).then_some(offset),
            event: (flags & NOTIFY_EVENT != 0).then_some(Port(port)),
        })
    }

    /// The rest, each word through `f`.
    fn rest<T>(&mut self, f: impl Fn(u32) -> T) -> Vec<T> {
        self.words
            .by_ref()
            .map(|w| f(u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
            .collect()
    }

    /// Fails unless every word was taken.
    fn end(self) -> Result<(), Malformed> {
        if self.words.len() == 0 {
            Ok(())
        } else {
            Err(Malformed::Length { words: self.count })
        }
    }
}

/// Checks that a message came with `expected` descriptors.
fn descriptors<F>(fds: &[F], expected: usize) -> Result<(), Malformed> {
    if fds.len() == expected {
        Ok(())
    } else {
        Err(Malformed::Descriptors {
            expected,
            got: fds.len(),
        })
    }
}

impl<F> Hello<F> {
    /// Its words, given to `word` one by one.
    fn encode_words(&self, word: &mut impl FnMut(u32)) {
        word(op::HELLO);
        word(kind_code(self.kind));
        word(u32::from(self.domid.0));
    }
}

impl Hello<OwnedFd> {
    /// Decode a greeting and its descriptors.
    pub fn decode(
        bytes: &[u8],
        truncated: bool,
        mut fds: Vec<OwnedFd>,
    ) -> Result<Hello<OwnedFd>, RequestError> {
        let (op, mut words) = Words::open(bytes, truncated)
            .map_err(|(op, malformed)| RequestError { op, malformed })?;
        let decoded = (|| {
            if op != op::HELLO {
                return Err(Malformed::OutOfTurn(op));
            }
            let kind = kind_of(words.next()?)?;
            let domid = words.domid()?;
            words.end()?;
            let events = if kind == HandleKind::Events {
                descriptors(&fds, 1)?;
                fds.pop()
            } else {
                descriptors(&fds, 0)?;
                None
            };
            Ok(Hello {
                domid,
                kind,
                events,
            })
        })();
        decoded.map_err(|malformed| RequestError {
            op: Some(op),
            malformed,
        })
    }
}

impl Request {
    /// Its words, given to `word` one by one.
    fn encode_words(&self, word: &mut impl FnMut(u32)) {
        fn notify(word: &mut impl FnMut(u32), notify: &Notify) {
            let flags = notify.clear_byte.map_or(0, |_| NOTIFY_CLEAR)
                | notify.event.map_or(0, |_| NOTIFY_EVENT);
            word(flags);
            word(notify.clear_byte.unwrap_or(0));
            word(notify.event.map_or(0, |p| p.0));
        }
        let dom = |d: DomId| u32::from(d.0);
        match self {
            Request::BindUnbound { remote } => {
                word(op::EV_BIND_UNBOUND);
                word(dom(*remote));
            }
            Request::BindInterdomain {
                remote,
                remote_port,
            } => {
                word(op::EV_BIND_INTERDOMAIN);
                word(dom(*remote));
                word(remote_port.0);
            }
            Request::Notify(port) => {
                word(op::EV_NOTIFY);
                word(port.0);
            }
            Request::Unmask(port) => {
                word(op::EV_UNMASK);
                word(port.0);
            }
            Request::Unbind(port) => {
                word(op::EV_UNBIND);
                word(port.0);
            }
            Request::Share {
                grantee,
                pages,
                writable,
                notify: n,
            } => {
                word(op::GNT_SHARE);
                word(dom(*grantee));
                word(*pages);
                word(u32::from(*writable));
                notify(word, n);
            }
            Request::Unshare(id) => {
                word(op::GNT_UNSHARE);
                word(*id);
            }
            Request::Map {
                granter,
                writable,
                notify: n,
                refs,
            } => {
                word(op::GNT_MAP);
                word(dom(*granter));
                word(u32::from(*writable));
                notify(word, n);
                refs.iter().for_each(|r| word(r.0));
            }
            Request::Unmap(id) => {
                word(op::GNT_UNMAP);
                word(*id);
            }
            Request::SetMapNotify { id, notify: n } => {
                word(op::GNT_SET_NOTIFY);
                word(*id);
                notify(word, n);
            }
            Request::Cancel(id) => {
                word(op::GNT_CANCEL);
                word(*id);
            }
            Request::CreateDomain(domid) => {
                word(op::DOMAIN_CREATE);
                word(dom(*domid));
            }
            Request::DestroyDomain(domid) => {
                word(op::DOMAIN_DESTROY);
                word(dom(*domid));
            }
            Request::Stats => word(op::STATS),
            Request::DomainExists(domid) => {
                word(op::DOMAIN_EXISTS);
                word(dom(*domid));
            }
        }
    }

    /// Decode a request that came with `fds` (requests carry none: any is an error, and
    /// dropping them closes them).
    pub fn decode(bytes: &[u8], truncated: bool, fds: &[OwnedFd]) -> Result<Request, RequestError> {
        let (op, mut w) = Words::open(bytes, truncated)
            .map_err(|(op, malformed)| RequestError { op, malformed })?;
        let decoded = (|| {
            let request = match op {
                op::EV_BIND_UNBOUND => Request::BindUnbound { remote: w.domid()? },
                op::EV_BIND_INTERDOMAIN => Request::BindInterdomain {
                    remote: w.domid()?,
                    remote_port: Port(w.next()?),
                },
                op::EV_NOTIFY => Request::Notify(Port(w.next()?)),
                op::EV_UNMASK => Request::Unmask(Port(w.next()?)),
                op::EV_UNBIND => Request::Unbind(Port(w.next()?)),
                op::GNT_SHARE => Request::Share {
                    grantee: w.domid()?,
                    pages: w.next()?,
                    writable: w.flag()?,
                    notify: w.notify()?,
                },
                op::GNT_UNSHARE => Request::Unshare(w.next()?),
                op::GNT_MAP => Request::Map {
                    granter: w.domid()?,
                    writable: w.flag()?,
                    notify: w.notify()?,
                    refs: w.rest(GrantRef),
                },
                op::GNT_UNMAP => Request::Unmap(w.next()?),
                op::GNT_SET_NOTIFY => Request::SetMapNotify {
                    id: w.next()?,
                    notify: w.notify()?,
                },
                op::GNT_CANCEL => Request::Cancel(w.next()?),
                op::DOMAIN_CREATE => Request::CreateDomain(w.domid()?),
                op::DOMAIN_DESTROY => Request::DestroyDomain(w.domid()?),
                op::STATS => Request::Stats,
                op::DOMAIN_EXISTS => Request::DomainExists(w.domid()?),
                op::HELLO => return Err(Malformed::OutOfTurn(op)),
                other => return Err(Malformed::UnknownOp(other)),
            };
            w.end()?;
            descriptors(fds, 0)?;
            Ok(request)
        })();
        decoded.map_err(|malformed| RequestError {
            op: Some(op),
            malformed,
        })
    }

    /// The reply this request gets, or `None` for the one-way ones.
    pub fn reply_kind(&self) -> Option<ReplyKind> {
        Some(match self {
            Request::Notify(_) | Request::Unmask(_) => return None,
            Request::BindUnbound { .. } | Request::BindInterdomain { .. } => ReplyKind::Port,
            Request::Share { .. } => ReplyKind::Shared,
            Request::Map { .. } => ReplyKind::Mapped,
            Request::Stats => ReplyKind::Stats,
            Request::DomainExists(_) => ReplyKind::Exists,
            Request::Unbind(_)
            | Request::Unshare(_)
            | Request::Unmap(_)
            | Request::SetMapNotify { .. }
            | Request::Cancel(_)
            | Request::CreateDomain(_)
            | Request::DestroyDomain(_) => ReplyKind::Done,
        })
    }
}

/// Encode an answer (a reply or an errno) and list the descriptors it passes.
pub(crate) fn encode_answer<'f, F: AsFd>(
    answer: &'f Result<Reply<F>, Errno>,
    fds: &mut Vec<BorrowedFd<'f>>,
) -> Vec<u8> {
    let mut words = Vec::new();
    let mut word = |w: u32| words.push(w);
    match answer {
        Err(code) => word(status(*code)),
        Ok(reply) => {
            word(0);
            match reply {
                Reply::Done => {}
                Reply::Port(port) => word(port.0),
                Reply::Shared { id, refs, memory } => {
                    word(*id);
                    refs.iter().for_each(|r| word(r.0));
                    fds.push(memory.as_fd());
                }
                Reply::Mapped { id, pages, files } => {
                    word(*id);
                    for page in pages {
                        word(page.file);
                        word(page.page);
                    }
                    fds.extend(files.iter().map(AsFd::as_fd));
                }
                Reply::Stats(s) => {
                    [s.domains, s.handles, s.ports, s.grants, s.mappings]
                        .into_iter()
                        .for_each(&mut word);
                }
                Reply::Exists(exists) => word(u32::from(*exists)),
            }
        }
    }
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// The status word for an error: never 0, which says success.
fn status(code: Errno) -> u32 {
    match code {
        Errno::UnknownErrno => Errno::EIO as u32,
        code => code as u32,
    }
}

/// Decode the answer to a request whose reply is of `kind`.
pub(crate) fn decode_answer(
    kind: ReplyKind,
    bytes: &[u8],
    truncated: bool,
    mut fds: Vec<OwnedFd>,
) -> Result<Result<Reply<OwnedFd>, Errno>, Malformed> {
    let (status, mut w) = Words::open(bytes, truncated).map_err(|(_, malformed)| malformed)?;
    if status != 0 {
        w.end()?;
        descriptors(&fds, 0)?;
        return match i32::try_from(status).map(Errno::from_raw) {
            Ok(Errno::UnknownErrno) | Err(_) => Err(Malformed::Status(status)),
            Ok(code) => Ok(Err(code)),
        };
    }
    let reply = match kind {
        ReplyKind::Done => Reply::Done,
        ReplyKind::Port => Reply::Port(Port(w.next()?)),
        ReplyKind::Shared => {
            let id = w.next()?;
            let refs = w.rest(GrantRef);
            descriptors(&fds, 1)?;
            let memory = fds.pop().ok_or(Malformed::Empty)?;
            Reply::Shared { id, refs, memory }
        }
        ReplyKind::Mapped => {
            let id = w.next()?;
            let words = w.rest(|word| word);
            if !words.len().is_multiple_of(2) {
                return Err(Malformed::Length { words: w.count });
            }
            let pages: Vec<FilePage> = words
                .chunks_exact(2)
                .map(|pair| FilePage {
                    file: pair[0],
                    page: pair[1],
                })
                .collect();
            if let Some(bad) = pages.iter().find(|p| p.file as usize >= fds.len()) {
                return Err(Malformed::FileIndex(bad.file));
            }
            let files = std::mem::take(&mut fds);
            Reply::Mapped { id, pages, files }
        }
        ReplyKind::Stats => Reply::Stats(Stats {
            domains: w.next()?,
            handles: w.next()?,
            ports: w.next()?,
            grants: w.next()?,
            mappings: w.next()?,
        }),
        ReplyKind::Exists => Reply::Exists(w.flag()?),
    };
    w.end()?;
    // Mapped took every descriptor; every other reply but Shared passes none.
    descriptors(&fds, 0)?;
    Ok(Ok(reply))
}

/// Retry `call` while it fails with `EINTR`.
pub(crate) fn retry<T>(mut call: impl FnMut() -> nix::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

fn seqpacket_socket(flags: SockFlag) -> io::Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | flags,
        None,
    )?)
}

fn unix_addr(path: &Path) -> io::Result<UnixAddr> {
    UnixAddr::new(path).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path {} is too long for a Unix socket",
                path.display()
            ),
        )
    })
}

/// Connect a `SOCK_SEQPACKET` socket to `path`.
pub(crate) fn seqpacket_connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket_socket(SockFlag::empty())?;
    let addr = unix_addr(path)?;
    socket::connect(fd.as_raw_fd(), &addr)?;
    Ok(fd)
}

/// Bind and listen on a non-blocking `SOCK_SEQPACKET` socket at `path` (the connections it
/// accepts block).
pub(crate) fn seqpacket_listen(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket_socket(SockFlag::SOCK_NONBLOCK)?;
    socket::bind(fd.as_raw_fd(), &unix_addr(path)?)?;
    socket::listen(&fd, Backlog::new(128)?)?;
    Ok(fd)
}

/// Accept one connection (close-on-exec), retrying on `EINTR`.
pub(crate) fn seqpacket_accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    retry(|| socket::accept4(listener, SockFlag::SOCK_CLOEXEC))
}

/// A connected pair of `SOCK_SEQPACKET` sockets (close-on-exec).
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Hang up a socket in both directions (a blocked `accept` or `recv` on it returns).
pub(crate) fn hang_up(sock: BorrowedFd<'_>) {
    // It fails only for a descriptor that is not a connected socket: nothing to hang up then.
    let _ = socket::shutdown(sock.as_raw_fd(), socket::Shutdown::Both);
}

/// Send one message of `bytes` with `fds` attached. Never raises `SIGPIPE`.
fn send_bytes(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if bytes.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
        return Err(Errno::E2BIG.into());
    }
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let iov = [IoSlice::new(bytes)];
    retry(|| socket::sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None))
        .map(drop)
}

fn to_bytes(encode: impl FnOnce(&mut dyn FnMut(u32))) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode(&mut |w: u32| bytes.extend_from_slice(&w.to_le_bytes()));
    bytes
}

/// Send a greeting, with the event socket for an event-channel handle.
pub(crate) fn send_hello(sock: BorrowedFd<'_>, hello: &Hello<BorrowedFd<'_>>) -> io::Result<()> {
    let bytes = to_bytes(|word| hello.encode_words(&mut |w| word(w)));
    let fds: Vec<BorrowedFd<'_>> = hello.events.into_iter().collect();
    send_bytes(sock, &bytes, &fds)
}

/// Send a request that waits for a reply.
pub(crate) fn send_request(sock: BorrowedFd<'_>, request: &Request) -> io::Result<()> {
    let bytes = to_bytes(|word| request.encode_words(&mut |w| word(w)));
    send_bytes(sock, &bytes, &[])
}

/// Send a one-way request (notify, unmask) with no allocation. Never raises `SIGPIPE`.
pub(crate) fn send_one_way(sock: BorrowedFd<'_>, request: &Request) -> io::Result<()> {
    let mut bytes = [0u8; 8];
    let mut len = 0;
    let mut fits = request.reply_kind().is_none();
    request.encode_words(&mut |w| match bytes.get_mut(len..len + 4) {
        Some(slot) => {
            slot.copy_from_slice(&w.to_le_bytes());
            len += 4;
        }
        None => fits = false,
    });
    if !fits {
        return Err(Errno::EINVAL.into());
    }
    retry(|| socket::send(sock.as_raw_fd(), &bytes[..len], MsgFlags::MSG_NOSIGNAL)).map(drop)
}

/// Send an answer, with the files it passes.
pub(crate) fn send_answer<F: AsFd>(
    sock: BorrowedFd<'_>,
    answer: &Result<Reply<F>, Errno>,
) -> io::Result<()> {
    let mut fds = Vec::new();
    let bytes = encode_answer(answer, &mut fds);
    send_bytes(sock, &bytes, &fds)
}

/// Receive buffers, kept by a caller that receives many messages (the host), so receiving
/// allocates nothing once they exist.
pub(crate) struct MsgBuf {
    bytes: Vec<u8>,
    control: Vec<u8>,
}

impl MsgBuf {
    /// Buffers for the largest message and the most descriptors.
    pub fn new() -> MsgBuf {
        MsgBuf {
            bytes: vec![0u8; MAX_MESSAGE],
            // Room for the kernel's most (SCM_MAX_FD), not just the most we send: a truncated
            // control message would leave received descriptors that nobody closes.
            control: nix::cmsg_space!([RawFd; SCM_MAX_FD]),
        }
    }
}

impl fmt::Debug for MsgBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsgBuf").finish_non_exhaustive()
    }
}

/// One received message, its bytes borrowed from the [`MsgBuf`].
#[derive(Debug)]
pub(crate) struct Received<'b> {
    /// What arrived (cut at the buffer's size).
    pub bytes: &'b [u8],
    /// Whether the message was longer than the buffer.
    pub truncated: bool,
    /// The descriptors attached.
    pub fds: Vec<OwnedFd>,
}

/// Receive one message into `buf`, or `None` at end of stream. An empty message with no
/// descriptors reads as the end too: `SOCK_SEQPACKET` cannot tell them apart, and only a
/// broken client sends one. Allocates only for descriptors that arrive.
#[allow(unsafe_code)] // Taking ownership of the descriptors the kernel passed.
pub(crate) fn recv<'b>(
    sock: BorrowedFd<'_>,
    buf: &'b mut MsgBuf,
) -> io::Result<Option<Received<'b>>> {
    let (len, truncated, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf.bytes)];
        match socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut buf.control),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(msg) => {
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        // SAFETY: descriptors received with SCM_RIGHTS are new and ours alone.
                        fds.extend(
                            received
                                .into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
                break (msg.bytes, truncated, fds);
            }
        }
    };
    if len == 0 && fds.is_empty() && !truncated {
        return Ok(None);
    }
    Ok(Some(Received {
        bytes: &buf.bytes[..len],
        truncated,
        fds,
    }))
}

/// Send one event (its port) to an event socket, without waiting for room: `WouldBlock` when
/// the socket is full. Never raises `SIGPIPE`.
pub(crate) fn send_event(sock: BorrowedFd<'_>, port: Port) -> io::Result<()> {
    retry(|| {
        socket::send(
            sock.as_raw_fd(),
            &port.0.to_le_bytes(),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        )
    })
    .map(drop)
}

/// Receive one event (its port) from an event socket: `Ok(None)` when nothing is queued and
/// `block` is false (or the socket is non-blocking).
pub(crate) fn recv_event(sock: BorrowedFd<'_>, block: bool) -> io::Result<Option<Port>> {
    let mut word = [0u8; 4];
    let flags = if block {
        MsgFlags::empty()
    } else {
        MsgFlags::MSG_DONTWAIT
    };
    match retry(|| socket::recv(sock.as_raw_fd(), &mut word, flags)) {
        Ok(4) => Ok(Some(Port(u32::from_le_bytes(word)))),
        Ok(0) => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the simulated Xen host (xensim serve) has gone",
        )),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed event from the xensim host",
        )),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && !block => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use nix::sys::stat::fstat;

    use super::*;

    fn bytes_of(request: &Request) -> Vec<u8> {
        to_bytes(|word| request.encode_words(&mut |w| word(w)))
    }

    fn words(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn notifies() -> [Notify; 4] {
        [
            Notify::default(),
            Notify {
                clear_byte: Some(0),
                event: None,
            },
            Notify {
                clear_byte: None,
                event: Some(Port(7)),
            },
            Notify {
                clear_byte: Some(u32::MAX),
                event: Some(Port(u32::MAX)),
            },
        ]
    }

    /// One of each request, with edge values.
    fn requests() -> Vec<Request> {
        let mut all = vec![
            Request::BindUnbound {
                remote: DomId(u16::MAX),
            },
            Request::BindInterdomain {
                remote: DomId(0),
                remote_port: Port(u32::MAX),
            },
            Request::Notify(Port(1)),
            Request::Unmask(Port(0)),
            Request::Unbind(Port(4095)),
            Request::Unshare(0),
            Request::Unmap(u32::MAX),
            Request::Cancel(3),
            Request::SetMapNotify {
                id: 7,
                notify: Notify {
                    clear_byte: Some(20),
                    event: Some(Port(3)),
                },
            },
            Request::CreateDomain(DomId(5)),
            Request::DestroyDomain(DomId(0x7fef)),
            Request::Stats,
            Request::DomainExists(DomId(9)),
        ];
        for notify in notifies() {
            all.push(Request::Share {
                grantee: DomId(1),
                pages: 4096,
                writable: true,
                notify,
            });
            for refs in [0, 1, 4096] {
                all.push(Request::Map {
                    granter: DomId(2),
                    writable: false,
                    notify,
                    refs: (0..refs).map(|r| GrantRef(r * 7)).collect(),
                });
            }
        }
        all
    }

    fn malformed(bytes: &[u8]) -> RequestError {
        Request::decode(bytes, false, &[]).expect_err("malformed")
    }

    #[test]
    fn every_request_decodes_to_what_was_encoded() {
        for request in requests() {
            let bytes = bytes_of(&request);
            assert_eq!(Request::decode(&bytes, false, &[]), Ok(request));
        }
    }

    #[test]
    fn a_request_of_the_wrong_length_is_einval_naming_its_operation() {
        for request in requests() {
            let bytes = bytes_of(&request);
            let op = u32::from_le_bytes(bytes[..4].try_into().unwrap());
            // Every shorter message: too few words (a map's refs may be cut: still a map).
            for cut in (4..bytes.len()).step_by(4) {
                match Request::decode(&bytes[..cut], false, &[]) {
                    Ok(Request::Map { .. }) if cut >= 24 => {}
                    Ok(other) => panic!("{request:?} cut to {cut} bytes decoded as {other:?}"),
                    Err(e) => {
                        assert_eq!(e.op, Some(op));
                        assert!(matches!(e.malformed, Malformed::Length { .. }), "{e}");
                        assert_eq!(e.errno(), Errno::EINVAL);
                    }
                }
            }
            // One word more: too many (a map's is one ref more).
            let longer = [&bytes[..], &[0, 0, 0, 0]].concat();
            match Request::decode(&longer, false, &[]) {
                Ok(Request::Map { .. }) => assert!(matches!(request, Request::Map { .. })),
                Ok(other) => panic!("{request:?} plus a word decoded as {other:?}"),
                Err(e) => assert!(matches!(e.malformed, Malformed::Length { .. }), "{e}"),
            }
            // A part of a word.
            for extra in 1..4 {
                let e = malformed(&[&bytes[..], &vec![0u8; extra]].concat());
                assert_eq!(
                    e.malformed,
                    Malformed::Unaligned {
                        bytes: bytes.len() + extra
                    }
                );
                assert_eq!(e.op, Some(op));
            }
            // Cut by the kernel, or with descriptors.
            let e = Request::decode(&bytes, true, &[]).unwrap_err();
            assert_eq!((e.op, e.malformed), (Some(op), Malformed::TooLong));
            let (a, b) = seqpacket_pair().unwrap();
            let e = Request::decode(&bytes, false, &[a, b]).unwrap_err();
            assert_eq!(
                e.malformed,
                Malformed::Descriptors {
                    expected: 0,
                    got: 2
                }
            );
        }
    }

    #[test]
    fn bad_fields_are_typed_errors_and_one_way_operations_get_no_answer() {
        let e = malformed(&[]);
        assert_eq!((e.op, e.malformed), (None, Malformed::Empty));
        assert!(e.wants_answer());
        assert_eq!(e.errno(), Errno::EINVAL);
        let e = malformed(&[1, 2]);
        assert_eq!(e.malformed, Malformed::Empty, "no whole first word");

        let e = malformed(&words(&[99]));
        assert_eq!(e.malformed, Malformed::UnknownOp(99));
        assert_eq!(
            e.errno(),
            Errno::ENOSYS,
            "as evtchn answers an unknown ioctl"
        );
        assert!(e.wants_answer());
        let e = malformed(&words(&[op::HELLO, 1, 0]));
        assert_eq!(e.malformed, Malformed::OutOfTurn(op::HELLO));
        assert_eq!(e.errno(), Errno::EPROTO);

        let e = malformed(&words(&[op::EV_BIND_UNBOUND, 0x1_0000]));
        assert_eq!(e.malformed, Malformed::DomainId(0x1_0000));
        let e = malformed(&words(&[op::GNT_SHARE, 1, 1, 2, 0, 0, 0]));
        assert_eq!(e.malformed, Malformed::Flag(2), "writable is 0 or 1");
        let e = malformed(&words(&[op::GNT_SHARE, 1, 1, 1, 4, 0, 0]));
        assert_eq!(e.malformed, Malformed::Flag(4), "an unknown notify flag");
        let e = malformed(&words(&[op::GNT_MAP, 1, 0, NOTIFY_EVENT, 5, 3, 1]));
        assert_eq!(
            e.malformed,
            Malformed::Flag(NOTIFY_EVENT),
            "an offset without its flag"
        );

        for one_way in [op::EV_NOTIFY, op::EV_UNMASK] {
            let e = malformed(&words(&[one_way]));
            assert!(!e.wants_answer(), "its sender waits for nothing");
            let e = malformed(&[&words(&[one_way, 1])[..], &[0]].concat());
            assert!(!e.wants_answer());
        }
    }

    fn inode(fd: impl AsFd) -> u64 {
        fstat(fd.as_fd()).expect("fstat").st_ino
    }

    /// Send `answer` across a socket pair and decode what arrives, files as their inodes.
    fn through_a_socket(
        kind: ReplyKind,
        answer: &Result<Reply<OwnedFd>, Errno>,
    ) -> Result<Result<Reply<u64>, Errno>, Malformed> {
        let (host, client) = seqpacket_pair().unwrap();
        send_answer(host.as_fd(), answer).expect("send");
        let mut buf = MsgBuf::new();
        let msg = recv(client.as_fd(), &mut buf).unwrap().expect("a message");
        let decoded = decode_answer(kind, msg.bytes, msg.truncated, msg.fds)?;
        Ok(decoded.map(inodes))
    }

    fn inodes(reply: Reply<OwnedFd>) -> Reply<u64> {
        match reply {
            Reply::Done => Reply::Done,
            Reply::Port(port) => Reply::Port(port),
            Reply::Shared { id, refs, memory } => Reply::Shared {
                id,
                refs,
                memory: inode(memory),
            },
            Reply::Mapped { id, pages, files } => Reply::Mapped {
                id,
                pages,
                files: files.into_iter().map(inode).collect(),
            },
            Reply::Stats(stats) => Reply::Stats(stats),
            Reply::Exists(exists) => Reply::Exists(exists),
        }
    }

    fn file() -> OwnedFd {
        seqpacket_pair().unwrap().0
    }

    #[test]
    fn every_reply_and_error_arrives_as_sent_with_its_files() {
        let (a, b) = (file(), file());
        let (ia, ib) = (inode(&a), inode(&b));
        let stats = Stats {
            domains: 1,
            handles: 2,
            ports: 3,
            grants: 4,
            mappings: u32::MAX,
        };
        // What to send, and what arrives (files as their inodes).
        type Case = (
            ReplyKind,
            Result<Reply<OwnedFd>, Errno>,
            Result<Reply<u64>, Errno>,
        );
        let cases: Vec<Case> = vec![
            (ReplyKind::Done, Ok(Reply::Done), Ok(Reply::Done)),
            (
                ReplyKind::Port,
                Ok(Reply::Port(Port(9))),
                Ok(Reply::Port(Port(9))),
            ),
            (
                ReplyKind::Stats,
                Ok(Reply::Stats(stats)),
                Ok(Reply::Stats(stats)),
            ),
            (
                ReplyKind::Exists,
                Ok(Reply::Exists(true)),
                Ok(Reply::Exists(true)),
            ),
            (ReplyKind::Port, Err(Errno::ENOTCONN), Err(Errno::ENOTCONN)),
            (ReplyKind::Mapped, Err(Errno::E2BIG), Err(Errno::E2BIG)),
            (ReplyKind::Done, Err(Errno::UnknownErrno), Err(Errno::EIO)),
            (
                ReplyKind::Shared,
                Ok(Reply::Shared {
                    id: 4,
                    refs: vec![GrantRef(1), GrantRef(2)],
                    memory: a,
                }),
                Ok(Reply::Shared {
                    id: 4,
                    refs: vec![GrantRef(1), GrantRef(2)],
                    memory: ia,
                }),
            ),
        ];
        let pages = vec![
            FilePage { file: 1, page: 3 },
            FilePage { file: 0, page: 0 },
            FilePage { file: 1, page: 4 },
        ];
        let mapped = (
            ReplyKind::Mapped,
            Ok(Reply::Mapped {
                id: 6,
                pages: pages.clone(),
                files: vec![b, file()],
            }),
        );
        for (kind, answer, expected) in cases {
            assert_eq!(through_a_socket(kind, &answer), Ok(expected), "{answer:?}");
        }
        let Ok(Ok(Reply::Mapped {
            id: 6,
            pages: got,
            files,
        })) = through_a_socket(mapped.0, &mapped.1)
        else {
            panic!("a mapping")
        };
        assert_eq!(got, pages);
        assert_eq!(files[0], ib);
        assert_eq!(files.len(), 2);
    }

    #[test]
    fn a_malformed_reply_is_a_typed_error() {
        let decode = |kind, w: &[u32], fds: Vec<OwnedFd>| {
            decode_answer(kind, &words(w), false, fds).map(|answer| answer.map(inodes))
        };
        assert_eq!(decode(ReplyKind::Done, &[], vec![]), Err(Malformed::Empty));
        assert_eq!(
            decode(ReplyKind::Done, &[4000], vec![]),
            Err(Malformed::Status(4000))
        );
        assert_eq!(
            decode(ReplyKind::Done, &[Errno::EINVAL as u32, 1], vec![]),
            Err(Malformed::Length { words: 1 })
        );
        assert_eq!(
            decode(ReplyKind::Port, &[0], vec![]),
            Err(Malformed::Length { words: 0 })
        );
        assert_eq!(
            decode(ReplyKind::Stats, &[0, 1, 2, 3, 4], vec![]),
            Err(Malformed::Length { words: 4 })
        );
        assert_eq!(
            decode(ReplyKind::Exists, &[0, 2], vec![]),
            Err(Malformed::Flag(2))
        );
        assert_eq!(
            decode(ReplyKind::Shared, &[0, 1, 5], vec![]),
            Err(Malformed::Descriptors {
                expected: 1,
                got: 0
            })
        );
        assert_eq!(
            decode(ReplyKind::Done, &[0], vec![file()]),
            Err(Malformed::Descriptors {
                expected: 0,
                got: 1
            })
        );
        assert_eq!(
            decode(ReplyKind::Mapped, &[0, 1, 0, 0, 1], vec![file()]),
            Err(Malformed::Length { words: 4 })
        );
        assert_eq!(
            decode(ReplyKind::Mapped, &[0, 1, 0, 0, 1, 0], vec![file()]),
            Err(Malformed::FileIndex(1))
        );
        assert_eq!(
            decode_answer(ReplyKind::Done, &words(&[0]), true, vec![]).map(|a| a.map(inodes)),
            Err(Malformed::TooLong)
        );
    }

    #[test]
    fn a_greeting_arrives_with_its_event_socket_and_nothing_else_is_one() {
        let (host, client) = seqpacket_pair().unwrap();
        let events = file();
        let hello = Hello {
            domid: DomId(3),
            kind: HandleKind::Events,
            events: Some(events.as_fd()),
        };
        send_hello(client.as_fd(), &hello).unwrap();
        let mut buf = MsgBuf::new();
        let msg = recv(host.as_fd(), &mut buf).unwrap().unwrap();
        let got = Hello::decode(msg.bytes, msg.truncated, msg.fds).unwrap();
        assert_eq!((got.domid, got.kind), (DomId(3), HandleKind::Events));
        assert_eq!(got.events.map(inode), Some(inode(&events)));

        for kind in [HandleKind::Share, HandleKind::Map, HandleKind::Control] {
            let hello = Hello::<BorrowedFd<'_>> {
                domid: DomId(0),
                kind,
                events: None,
            };
            let bytes = to_bytes(|word| hello.encode_words(&mut |w| word(w)));
            let got = Hello::decode(&bytes, false, vec![]).unwrap();
            assert_eq!(
                (got.domid, got.kind, got.events.is_none()),
                (DomId(0), kind, true)
            );
            let e = Hello::decode(&bytes, false, vec![file()]).unwrap_err();
            assert!(matches!(e.malformed, Malformed::Descriptors { .. }), "{e}");
        }
        let e = Hello::decode(&words(&[op::HELLO, 1, 3]), false, vec![]).unwrap_err();
        assert_eq!(
            e.malformed,
            Malformed::Descriptors {
                expected: 1,
                got: 0
            },
            "an event handle without its socket"
        );
        let e = Hello::decode(&words(&[op::HELLO, 9, 3]), false, vec![]).unwrap_err();
        assert_eq!(e.malformed, Malformed::Kind(9));
        let e = Hello::decode(&words(&[op::STATS]), false, vec![]).unwrap_err();
        assert_eq!(
            (e.malformed, e.errno()),
            (Malformed::OutOfTurn(op::STATS), Errno::EPROTO)
        );
    }

    #[test]
    fn a_one_way_send_refuses_a_request_that_waits_for_a_reply() {
        let (a, _b) = seqpacket_pair().unwrap();
        let e = send_one_way(a.as_fd(), &Request::Stats).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(Errno::EINVAL as i32));
        send_one_way(a.as_fd(), &Request::Notify(Port(1))).unwrap();
    }
}
