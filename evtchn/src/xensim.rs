//! Event channels on the cross-process simulated host (`xensim`), and the host's wire protocol.
//!
//! The simulated hypervisor is a process (`xensim serve`) listening on a `SOCK_SEQPACKET` Unix
//! socket, `<XENSIM_DIR>/xen.sock`. Every device handle a simulated domain opens (an event-channel
//! handle here, a grant-sharing or grant-mapping handle in `gnttab::xensim`) is one connection to
//! it, and the connection is the handle's whole life: when the handle is closed, or the process
//! holding it dies by any means (even `SIGKILL`), the kernel closes the socket and the host reclaims
//! what the handle held and carries out its unmap notifications. No cooperation from a dying process
//! is needed, as with the real kernel drivers.
//!
//! An [`XensimEvtchn`] handle also owns one end of a socket pair whose other end it gave the host when
//! it connected; the host writes one 4-byte message (the port, little-endian) for each delivered
//! event. That end is the handle's pollable fd: readable means "an event is pending", reading it is
//! `xenevtchn_pending`, exactly like `/dev/xen/evtchn`.
//!
//! Messages are sequences of little-endian `u32` words: a request is `[op, args...]`, a reply
//! `[status, values...]` where `status` is 0 or an errno value; file descriptors travel as
//! `SCM_RIGHTS`. The protocol is private to this workspace (host and clients are built together).
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::{DomId, EventChannel, Port};

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

    /// Whether the host answers `op` (all but the one-way [`EV_NOTIFY`] and [`EV_UNMASK`]).
    pub fn has_reply(op: u32) -> bool {
        !matches!(op, EV_NOTIFY | EV_UNMASK)
    }
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
    /// `[STATS]` -> `[0, domains, handles, ports, grants, mappings]`.
    pub const STATS: u32 = 13;
    /// `[DOMAIN_EXISTS, domid]` -> `[0, 0 or 1]`.
    pub const DOMAIN_EXISTS: u32 = 14;

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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn cvt_size(rc: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// A new `SOCK_SEQPACKET` Unix socket (close-on-exec).
fn seqpacket_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers; the result is checked.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path {} is too long for a Unix socket",
                path.display()
            ),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// Connect a `SOCK_SEQPACKET` socket to `path`.
pub fn seqpacket_connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket_socket()?;
    let (addr, len) = sockaddr(path)?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes for the call's duration.
    cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })?;
    Ok(fd)
}

/// Bind and listen on a `SOCK_SEQPACKET` socket at `path`.
pub fn seqpacket_listen(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket_socket()?;
    let (addr, len) = sockaddr(path)?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes for the call's duration.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })?;
    // SAFETY: plain syscall on an fd we own.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
    Ok(fd)
}

/// Accept one connection (close-on-exec), retrying on `EINTR`.
pub fn seqpacket_accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: null address pointers are allowed (the peer address is not wanted).
        let rc = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        match cvt(rc) {
            // SAFETY: `fd` was just returned by accept4 and is owned by nobody else.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A connected pair of `SOCK_SEQPACKET` sockets (close-on-exec).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for the call to fill.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both fds were just returned by socketpair and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The process id of a Unix socket's peer (`SO_PEERCRED`).
pub fn peer_pid(fd: BorrowedFd<'_>) -> io::Result<libc::pid_t> {
    // SAFETY: ucred is plain data; all-zero is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(cred.pid)
}

/// The process at the other end of a Unix socket, as a pidfd, and its process id: what the
/// host needs to kill a destroyed domain's processes without ever signalling a process that
/// merely reuses a dead one's id.
///
/// `SO_PEERPIDFD` (Linux 6.5) names the very process that connected. Older kernels (Debian 12
/// runs 6.1) give only the id (`SO_PEERCRED`); the pidfd is then opened from it at once and kept
/// only if the connection is still open afterwards, so the process was alive (and its id not yet
/// reusable) when the pidfd was taken. What remains: a process that handed its connection to a
/// child and exited in that instant; the host then kills nothing of it rather than a stranger.
pub fn peer_process(fd: BorrowedFd<'_>) -> io::Result<(OwnedFd, libc::pid_t)> {
    /// `SO_PEERPIDFD` from Linux's `asm-generic/socket.h` (not in every libc yet).
    const SO_PEERPIDFD: libc::c_int = 77;
    let pid = peer_pid(fd)?;
    let mut raw: libc::c_int = -1;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `raw` and `len` are valid for writes of the sizes given.
    let direct = cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut raw as *mut libc::c_int).cast(),
            &mut len,
        )
    });
    if direct.is_ok() && raw >= 0 {
        // SAFETY: the kernel just returned this fd to us; nobody else owns it.
        return Ok((unsafe { OwnedFd::from_raw_fd(raw) }, pid));
    }
    // SAFETY: pidfd_open takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let rc = libc::c_int::try_from(rc).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: on success pidfd_open returned a new fd that nobody else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(cvt(rc)?) };
    if !still_connected(fd)? {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok((pidfd, pid))
}

/// Whether the peer of a socket still holds its end (no hang-up pending).
fn still_connected(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: `pollfd` is one valid entry for the call's duration.
    cvt(unsafe { libc::poll(&mut pollfd, 1, 0) })?;
    Ok(pollfd.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) == 0)
}

/// Send SIGKILL to the process a pidfd names (a no-op if it has exited).
pub fn kill_process(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a null siginfo takes no other pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    match rc {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            e => Err(e),
        },
    }
}

/// Send one message of `words` with `fds` attached. Never raises `SIGPIPE`.
pub fn send_msg(sock: BorrowedFd<'_>, words: &[u32], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    if bytes.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
        return Err(io::Error::from_raw_os_error(libc::E2BIG));
    }
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let data_len = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(data_len as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg` points at a control buffer of `space` bytes, enough for one header with
        // `data_len` bytes of data, so CMSG_FIRSTHDR is non-null and CMSG_DATA has room for them.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                data_len,
            );
        }
    }
    loop {
        // SAFETY: `msg` and everything it points at (iov, bytes, control) live across the call.
        let rc = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        match cvt_size(rc) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Receive buffers for [`recv_msg_with`], kept by a caller that receives many messages (the
/// host), so receiving allocates nothing once they exist.
pub struct MsgBuf {
    bytes: Vec<u8>,
    control: Vec<u64>,
    words: Vec<u32>,
}

impl MsgBuf {
    /// Buffers for the largest message and the most descriptors.
    pub fn new() -> MsgBuf {
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<RawFd>()) as u32) } as usize;
        MsgBuf {
            bytes: vec![0u8; MAX_MESSAGE],
            control: vec![0u64; space.div_ceil(8)],
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
    let mut iov = libc::iovec {
        iov_base: buf.bytes.as_mut_ptr().cast(),
        iov_len: buf.bytes.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = buf.control.as_mut_ptr().cast();
    msg.msg_controllen = (buf.control.len() * 8) as _;
    let len = loop {
        // SAFETY: `msg` points at live buffers of the sizes it states.
        let rc = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        match cvt_size(rc) {
            Ok(len) => break len,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg.msg_control` with `msg_controllen` bytes of well-formed
    // headers; CMSG_FIRSTHDR/CMSG_NXTHDR walk them and stop at the end. SCM_RIGHTS data is an
    // array of fds that are now ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let header = libc::CMSG_LEN(0) as usize;
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(header) / size_of::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    if len % 4 != 0 || msg.msg_flags & libc::MSG_TRUNC != 0 {
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
/// operations). Never raises `SIGPIPE`.
pub fn send_small(sock: BorrowedFd<'_>, words: &[u32]) -> io::Result<()> {
    let mut bytes = [0u8; 16];
    if words.len() > 4 {
        return Err(io::Error::from_raw_os_error(libc::E2BIG));
    }
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    let len = words.len() * 4;
    loop {
        // SAFETY: `bytes` is valid for reads of `len` (at most 16) bytes for the call's duration.
        let rc = unsafe {
            libc::send(
                sock.as_raw_fd(),
                bytes.as_ptr().cast(),
                len,
                libc::MSG_NOSIGNAL,
            )
        };
        match cvt_size(rc) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One connection to the simulated hypervisor: a device handle's life line.
#[derive(Debug)]
pub struct HostConn {
    sock: OwnedFd,
    /// Serialises request/reply pairs from several threads.
    calls: Mutex<()>,
    domid: DomId,
}

fn host_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the simulated Xen host (xensim serve) has gone",
    )
}

impl HostConn {
    /// Connect to the host in `dir` as `domid`, opening a handle of `kind` (see [`op`]), with
    /// `fds` attached to the greeting.
    pub fn connect(
        dir: &Path,
        domid: DomId,
        kind: u32,
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<HostConn> {
        let path = dir.join(HOST_SOCKET);
        let sock = seqpacket_connect(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot reach the simulated Xen host at {} ({e}); is `xensim serve` running?",
                    path.display()
                ),
            )
        })?;
        let conn = HostConn {
            sock,
            calls: Mutex::new(()),
            domid,
        };
        match conn.call_with_fds(&[op::HELLO, kind, u32::from(domid.0)], fds) {
            Ok(_) => Ok(conn),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "domain {domid} does not exist on the simulated Xen host in {}",
                    dir.display()
                ),
            )),
            Err(e) => Err(e),
        }
    }

    /// The domain this connection speaks for.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// Send a request that has no reply ([`op::has_reply`] is false for it), allocating nothing.
    pub fn send_one_way(&self, request: &[u32]) -> io::Result<()> {
        debug_assert!(request.first().is_some_and(|&op| !op::has_reply(op)));
        send_small(self.sock.as_fd(), request).map_err(|e| match e.raw_os_error() {
            Some(libc::EPIPE) | Some(libc::ECONNRESET) => host_gone(),
            _ => e,
        })
    }

    /// Send a request and wait for its reply; returns the reply's values (after the status).
    pub fn call(&self, request: &[u32]) -> io::Result<Vec<u32>> {
        Ok(self.call_with_fds(request, &[])?.0)
    }

    /// Send a request with descriptors attached; returns the reply's values and descriptors.
    pub fn call_with_fds(
        &self,
        request: &[u32],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<(Vec<u32>, Vec<OwnedFd>)> {
        let _serial = lock(&self.calls);
        send_msg(self.sock.as_fd(), request, fds).map_err(|e| match e.raw_os_error() {
            Some(libc::EPIPE) | Some(libc::ECONNRESET) => host_gone(),
            _ => e,
        })?;
        let (mut words, fds) = recv_msg(self.sock.as_fd())?.ok_or_else(host_gone)?;
        match words.first() {
            Some(0) => {
                words.remove(0);
                Ok((words, fds))
            }
            Some(&errno) => Err(io::Error::from_raw_os_error(errno as i32)),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "empty reply from the xensim host",
            )),
        }
    }
}

impl AsFd for HostConn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

fn one(values: Vec<u32>) -> io::Result<u32> {
    values.first().copied().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "short reply from the xensim host",
        )
    })
}

/// An event-channel handle on the simulated host (`/dev/xen/evtchn` for one process).
#[derive(Debug)]
pub struct XensimEvtchn {
    conn: HostConn,
    /// Our end of the delivery socket: one message per delivered event.
    events: OwnedFd,
    /// The ports this handle has bound, so the one-way notify and unmask can refuse any other
    /// port here, as the Linux driver does, without waiting for the host.
    bound: Mutex<Vec<Port>>,
}

impl XensimEvtchn {
    /// Open a handle as `domid` on the host in `dir`.
    pub fn open(dir: &Path, domid: DomId) -> io::Result<XensimEvtchn> {
        let (mine, theirs) = seqpacket_pair()?;
        let conn = HostConn::connect(dir, domid, op::KIND_EVENTS, &[theirs.as_fd()])?;
        drop(theirs);
        Ok(XensimEvtchn {
            conn,
            events: mine,
            bound: Mutex::new(Vec::new()),
        })
    }

    /// Open a handle as configured by `XENSIM_DIR` and `XENSIM_DOMID`.
    pub fn from_env() -> io::Result<XensimEvtchn> {
        let (dir, domid) = env_config()?;
        XensimEvtchn::open(&dir, domid)
    }

    /// The domain this handle belongs to.
    pub fn domid(&self) -> DomId {
        self.conn.domid()
    }

    fn bound(&self, port: Port) -> io::Result<Port> {
        if lock(&self.bound).contains(&port) {
            Ok(port)
        } else {
            // What the Linux driver answers for a port this handle has not bound.
            Err(io::Error::from_raw_os_error(libc::ENOTCONN))
        }
    }

    fn remember(&self, port: io::Result<Port>) -> io::Result<Port> {
        let port = port?;
        lock(&self.bound).push(port);
        Ok(port)
    }

    /// Take the next delivered event. With `block`, wait for one (unless the fd was made
    /// non-blocking, when this fails with `WouldBlock` as `read` on `/dev/xen/evtchn` does); without,
    /// `Ok(None)` when nothing is pending.
    pub fn take_event(&self, block: bool) -> io::Result<Option<Port>> {
        let mut word = [0u8; 4];
        let flags = if block { 0 } else { libc::MSG_DONTWAIT };
        loop {
            // SAFETY: `word` is valid for writes of 4 bytes for the call's duration.
            let rc = unsafe {
                libc::recv(
                    self.events.as_raw_fd(),
                    word.as_mut_ptr().cast(),
                    word.len(),
                    flags,
                )
            };
            match cvt_size(rc) {
                Ok(4) => return Ok(Some(Port(u32::from_le_bytes(word)))),
                Ok(0) => return Err(host_gone()),
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed event from the xensim host",
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !block => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

impl EventChannel for XensimEvtchn {
    fn bind_unbound_port(&self, remote: DomId) -> io::Result<Port> {
        self.remember(
            self.conn
                .call(&[op::EV_BIND_UNBOUND, u32::from(remote.0)])
                .and_then(one)
                .map(Port),
        )
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> io::Result<Port> {
        self.remember(
            self.conn
                .call(&[op::EV_BIND_INTERDOMAIN, u32::from(remote.0), remote_port.0])
                .and_then(one)
                .map(Port),
        )
    }

    fn notify(&self, port: Port) -> io::Result<()> {
        let port = self.bound(port)?;
        self.conn.send_one_way(&[op::EV_NOTIFY, port.0])
    }

    fn pending(&self) -> io::Result<Option<Port>> {
        self.take_event(false)
    }

    fn unmask(&self, port: Port) -> io::Result<()> {
        let port = self.bound(port)?;
        self.conn.send_one_way(&[op::EV_UNMASK, port.0])
    }

    fn unbind(&self, port: Port) -> io::Result<()> {
        let port = self.bound(port)?;
        self.conn.call(&[op::EV_UNBIND, port.0])?;
        lock(&self.bound).retain(|&p| p != port);
        Ok(())
    }
}

impl AsFd for XensimEvtchn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_process_is_named_by_a_pidfd_and_a_gone_process_is_not_signalled() {
        let (mine, theirs) = seqpacket_pair().expect("socketpair");
        let (pidfd, pid) = peer_process(mine.as_fd()).expect("the peer (this process)");
        assert_eq!(pid, std::process::id() as libc::pid_t);
        drop((pidfd, theirs));

        // A child that has exited and been reaped: its pidfd signals nobody, and says so as Ok.
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        // SAFETY: pidfd_open takes no pointers.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        let raw = cvt(libc::c_int::try_from(raw).unwrap()).expect("pidfd_open");
        // SAFETY: the fd was just returned by pidfd_open.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
        child.wait().expect("reap the child");
        kill_process(pidfd.as_fd()).expect("no error for a process that has gone");
    }
}
