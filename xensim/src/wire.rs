//! The cross-process host's wire protocol and its sockets.
//!
//! The simulated hypervisor is a process (`xensim serve`) listening on a `SOCK_SEQPACKET` Unix
//! socket, `<XENSIM_DIR>/xen.sock`. Every device handle a simulated domain opens (an event-channel
//! handle, a grant-sharing or a grant-mapping handle) is one connection to it, and the connection
//! is the handle's whole life: when the handle is closed, or the process holding it dies by any
//! means (even `SIGKILL`), the kernel closes the socket and the host reclaims what the handle held
//! and carries out its unmap notifications. No cooperation from a dying process is needed, as
//! with the real kernel drivers.
//!
//! An event-channel handle also owns one end of a socket pair whose other end it gave the host
//! when it connected; the host writes one 4-byte message (the port, little-endian) for each
//! delivered event. That end is the handle's pollable fd: readable means "an event is pending",
//! reading it is `xenevtchn_pending`, exactly like `/dev/xen/evtchn`.
//!
//! Messages are sequences of little-endian `u32` words: a request is `[op, args...]`, a reply
//! `[status, values...]` where `status` is 0 or an errno value; file descriptors travel as
//! `SCM_RIGHTS`. The protocol is private to this workspace (host and clients are built together).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use xen_types::DomId;

/// The environment variable naming the simulated host's directory.
pub const ENV_DIR: &str = "XENSIM_DIR";
/// The environment variable naming the caller's simulated domain.
pub const ENV_DOMID: &str = "XENSIM_DOMID";
/// The host's socket, inside its directory.
pub const HOST_SOCKET: &str = "xen.sock";
/// The largest message either side sends, in bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The most descriptors one message carries (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_FDS: usize = 250;
/// The most descriptors the kernel passes in one message.
const SCM_MAX_FD: usize = 253;

/// Operation codes of the host protocol.
pub mod op {
    /// `[HELLO, kind, domid]` (+ the event socket for [`KIND_EVENTS`]): the first message.
    pub const HELLO: u32 = 1;
    /// `[EV_BIND_UNBOUND, remote]` -> `[0, port]`.
    pub const EV_BIND_UNBOUND: u32 = 2;
    /// `[EV_BIND_INTERDOMAIN, remote, remote_port]` -> `[0, port]`.
    pub const EV_BIND_INTERDOMAIN: u32 = 3;
    /// `[EV_NOTIFY, port]`, one way: the host sends no reply (the client has checked the port
    /// is bound by this handle, so the host has nothing to report; it ignores a port that is
    /// not, as a stale notify).
    pub const EV_NOTIFY: u32 = 4;
    /// `[EV_UNMASK, port]`, one way, as `EV_NOTIFY`.
    pub const EV_UNMASK: u32 = 5;
    /// `[EV_UNBIND, port]` -> `[0]`.
    pub const EV_UNBIND: u32 = 6;
    /// `[GNT_SHARE, grantee, count, writable, notify_offset, notify_port]` ->
    /// `[0, share_id, refs...]` + the memory file.
    pub const GNT_SHARE: u32 = 7;
    /// `[GNT_UNSHARE, share_id]` -> `[0]`.
    pub const GNT_UNSHARE: u32 = 8;
    /// `[GNT_MAP, granter, writable, notify_offset, notify_port, refs...]` ->
    /// `[0, map_id, (file_index, page) per ref]` + the memory files.
    pub const GNT_MAP: u32 = 9;
    /// `[GNT_UNMAP, map_id]` -> `[0]`.
    pub const GNT_UNMAP: u32 = 10;
    /// `[DOMAIN_CREATE, domid]` -> `[0]` (dom0 only).
    pub const DOMAIN_CREATE: u32 = 11;
    /// `[DOMAIN_DESTROY, domid]` -> `[0]` (dom0 only).
    pub const DOMAIN_DESTROY: u32 = 12;
    /// `[STATS]` -> `[0, domains, handles, ports, grants, mappings]` (dom0's control handle
    /// only).
    pub const STATS: u32 = 13;
    /// `[DOMAIN_EXISTS, domid]` -> `[0, 0 or 1]` (dom0's control handle only).
    pub const DOMAIN_EXISTS: u32 = 14;
    /// `[GNT_CANCEL, id]` -> `[0]`: forget a share or mapping this handle could not complete
    /// (its mmap failed), without its unmap notification, which was never in force.
    pub const GNT_CANCEL: u32 = 15;

    /// Whether the host answers `op` (all but the one-way [`EV_NOTIFY`] and [`EV_UNMASK`]).
    pub fn has_reply(op: u32) -> bool {
        !matches!(op, EV_NOTIFY | EV_UNMASK)
    }

    /// HELLO kind: an event-channel handle.
    pub const KIND_EVENTS: u32 = 1;
    /// HELLO kind: a grant-sharing handle.
    pub const KIND_SHARE: u32 = 2;
    /// HELLO kind: a grant-mapping handle.
    pub const KIND_MAP: u32 = 3;
    /// HELLO kind: the toolstack (domain life, statistics).
    pub const KIND_CONTROL: u32 = 4;

    /// "No byte to clear" in a notify request.
    pub const NO_OFFSET: u32 = u32::MAX;
}

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
pub fn seqpacket_connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket_socket(SockFlag::empty())?;
    let addr = unix_addr(path)?;
    socket::connect(fd.as_raw_fd(), &addr)?;
    Ok(fd)
}

/// Bind and listen on a non-blocking `SOCK_SEQPACKET` socket at `path` (the connections it
/// accepts block).
pub fn seqpacket_listen(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket_socket(SockFlag::SOCK_NONBLOCK)?;
    socket::bind(fd.as_raw_fd(), &unix_addr(path)?)?;
    socket::listen(&fd, Backlog::new(128)?)?;
    Ok(fd)
}

/// Accept one connection (close-on-exec), retrying on `EINTR`.
pub fn seqpacket_accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    retry(|| socket::accept4(listener, SockFlag::SOCK_CLOEXEC))
}

/// A connected pair of `SOCK_SEQPACKET` sockets (close-on-exec).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Hang up a socket in both directions (a blocked `accept` or `recv` on it returns).
pub fn hang_up(sock: BorrowedFd<'_>) {
    // It fails only for a descriptor that is not a connected socket: nothing to hang up then.
    let _ = socket::shutdown(sock.as_raw_fd(), socket::Shutdown::Both);
}

/// Send one message of `words` with `fds` attached. Never raises `SIGPIPE`.
pub fn send_msg(sock: BorrowedFd<'_>, words: &[u32], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    if bytes.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
        return Err(Errno::E2BIG.into());
    }
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let iov = [IoSlice::new(&bytes)];
    retry(|| socket::sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None))
        .map(drop)
}

/// Receive buffers for [`recv_msg_with`], kept by a caller that receives many messages (the
/// host), so receiving allocates nothing once they exist.
pub struct MsgBuf {
    bytes: Vec<u8>,
    control: Vec<u8>,
    words: Vec<u32>,
}

impl MsgBuf {
    /// Buffers for the largest message and the most descriptors.
    pub fn new() -> MsgBuf {
        MsgBuf {
            bytes: vec![0u8; MAX_MESSAGE],
            // Room for the kernel's most (SCM_MAX_FD), not just the most we send: a truncated
            // control message would leave received descriptors that nobody closes.
            control: nix::cmsg_space!([RawFd; SCM_MAX_FD]),
            words: Vec::with_capacity(MAX_MESSAGE / 4),
        }
    }
}

impl Default for MsgBuf {
    fn default() -> Self {
        MsgBuf::new()
    }
}

/// Receive one message into `buf`: its words (borrowed from `buf`) and attached descriptors, or
/// `None` at end of stream. A message whose length is not a whole number of words is an
/// `InvalidData` error. Allocates only for descriptors that arrive.
pub fn recv_msg_with<'b>(
    sock: BorrowedFd<'_>,
    buf: &'b mut MsgBuf,
) -> io::Result<Option<(&'b [u32], Vec<OwnedFd>)>> {
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
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    if len % 4 != 0 || truncated {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed xensim message",
        ));
    }
    buf.words.clear();
    buf.words.extend(
        buf.bytes[..len]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
    Ok(Some((&buf.words, fds)))
}

/// Receive one message: its words and attached descriptors, or `None` at end of stream (see
/// [`recv_msg_with`], which this calls with fresh buffers).
pub fn recv_msg(sock: BorrowedFd<'_>) -> io::Result<Option<(Vec<u32>, Vec<OwnedFd>)>> {
    let mut buf = MsgBuf::new();
    Ok(recv_msg_with(sock, &mut buf)?.map(|(words, fds)| (words.to_vec(), fds)))
}

/// Send a message of at most 4 words with no descriptors and no allocation (the one-way event
/// operations, and event deliveries with `MSG_DONTWAIT`). Never raises `SIGPIPE`.
pub fn send_small(sock: BorrowedFd<'_>, words: &[u32], flags: MsgFlags) -> io::Result<()> {
    let mut bytes = [0u8; 16];
    if words.len() > 4 {
        return Err(Errno::E2BIG.into());
    }
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    let len = words.len() * 4;
    retry(|| {
        socket::send(
            sock.as_raw_fd(),
            &bytes[..len],
            flags | MsgFlags::MSG_NOSIGNAL,
        )
    })
    .map(drop)
}

/// Receive one word (an event's port) from an event socket: `Ok(None)` when nothing is queued
/// and `block` is false (or the socket is non-blocking).
pub fn recv_word(sock: BorrowedFd<'_>, block: bool) -> io::Result<Option<u32>> {
    let mut word = [0u8; 4];
    let flags = if block {
        MsgFlags::empty()
    } else {
        MsgFlags::MSG_DONTWAIT
    };
    match retry(|| socket::recv(sock.as_raw_fd(), &mut word, flags)) {
        Ok(4) => Ok(Some(u32::from_le_bytes(word))),
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

impl std::fmt::Debug for MsgBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgBuf").finish_non_exhaustive()
    }
}
