//! A xenstore client over the daemon's Unix socket or the `/dev/xen/xenbus` device.
//!
//! The daemon is found as libxenstore finds it: `$XENSTORED_PATH`, else
//! `$XENSTORED_RUNDIR/socket` (default `/var/run/xenstored/socket`); if that is not a socket, the
//! xenbus device (`$XENSTORED_PATH` again if set, else `/dev/xen/xenbus`, else `/proc/xen/xenbus`),
//! which speaks the same wire format through `read`/`write` (one message per `write`).
//!
//! A reader thread demultiplexes what the daemon sends: replies go to the caller waiting on that
//! request id (so one [`Client`] may be shared between threads), watch events to a queue that
//! [`XenStore::next_watch_event`] drains. The queue is pollable: [`Client`]'s file descriptor
//! ([`AsFd`]) is readable exactly while events are queued.

use crate::wire::{Decoder, Message, MsgType, Reply, Request};
use crate::{DomId, Errno, Perm, Result, TxId, WatchEvent, XenStore, XenstoreError};
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The default run directory of xenstored.
pub const DEFAULT_RUNDIR: &str = "/var/run/xenstored";

/// The socket libxenstore would use: `$XENSTORED_PATH`, else `$XENSTORED_RUNDIR/socket`, else
/// `/var/run/xenstored/socket`.
pub fn daemon_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("XENSTORED_PATH") {
        return PathBuf::from(p);
    }
    let rundir = std::env::var_os("XENSTORED_RUNDIR")
        .map_or_else(|| PathBuf::from(DEFAULT_RUNDIR), PathBuf::from);
    rundir.join("socket")
}

/// The xenbus device libxenstore would fall back to: `$XENSTORED_PATH`, else `/dev/xen/xenbus`
/// if it exists, else `/proc/xen/xenbus`.
pub fn xenbus_device_path() -> PathBuf {
    if let Some(p) = std::env::var_os("XENSTORED_PATH") {
        return PathBuf::from(p);
    }
    let dev = Path::new("/dev/xen/xenbus");
    if dev.exists() {
        dev.to_path_buf()
    } else {
        PathBuf::from("/proc/xen/xenbus")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

enum Transport {
    Socket(UnixStream),
    Device(File),
}

impl Transport {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Socket(s) => s.write_all(bytes),
            // The xenbus device wants each message in a single write.
            Transport::Device(f) => {
                let n = f.write(bytes)?;
                if n == bytes.len() {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "short write to the xenbus device",
                    ))
                }
            }
        }
    }
}

struct State {
    /// Outstanding requests by id; `Some` once the reply has arrived.
    replies: HashMap<u32, Option<Message>>,
    events: VecDeque<WatchEvent>,
    /// Why the connection is gone, once it is.
    closed: Option<String>,
    /// Write end of the notification socket: holds one byte while `events` is not empty.
    notify_wr: UnixStream,
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

/// A connection to a xenstore daemon (or the xenbus device). `Send + Sync`: requests from several
/// threads are matched to their replies by request id.
pub struct Client {
    shared: Arc<Shared>,
    transport: Mutex<Transport>,
    /// Kept to hang up the socket on drop, which stops the reader thread.
    socket: Option<UnixStream>,
    next_req: AtomicU32,
    notify_rd: UnixStream,
    reader: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.socket.is_some())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connect the way libxenstore does (see the module docs).
    pub fn open() -> Result<Client> {
        let socket = daemon_socket_path();
        match std::fs::metadata(&socket) {
            Ok(m) if m.file_type().is_socket() => Client::open_path(&socket),
            _ => Client::open_path(&xenbus_device_path()),
        }
    }

    /// Connect to the daemon socket at `path`, or open `path` as a xenbus device if it is not a
    /// socket.
    pub fn open_path(path: &Path) -> Result<Client> {
        let meta = std::fs::metadata(path).map_err(|e| with_path(path, e))?;
        if meta.file_type().is_socket() {
            let stream = UnixStream::connect(path).map_err(|e| with_path(path, e))?;
            let reader = stream.try_clone()?;
            let hangup = stream.try_clone()?;
            Client::start(Transport::Socket(stream), Box::new(reader), Some(hangup))
        } else {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| with_path(path, e))?;
            let reader = file.try_clone()?;
            Client::start(Transport::Device(file), Box::new(reader), None)
        }
    }

    /// Speak the protocol over an already connected stream (for tests and embedders).
    pub fn from_stream(stream: UnixStream) -> Result<Client> {
        let reader = stream.try_clone()?;
        let hangup = stream.try_clone()?;
        Client::start(Transport::Socket(stream), Box::new(reader), Some(hangup))
    }

    fn start(
        transport: Transport,
        reader: Box<dyn Read + Send>,
        socket: Option<UnixStream>,
    ) -> Result<Client> {
        let (notify_rd, notify_wr) = UnixStream::pair()?;
        notify_rd.set_nonblocking(true)?;
        notify_wr.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                replies: HashMap::new(),
                events: VecDeque::new(),
                closed: None,
                notify_wr,
            }),
            cond: Condvar::new(),
        });
        let thread_shared = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name("xenstore-client".into())
            .spawn(move || read_loop(reader, &thread_shared))?;
        Ok(Client {
            shared,
            transport: Mutex::new(transport),
            socket,
            next_req: AtomicU32::new(1),
            notify_rd,
            reader: Some(reader),
        })
    }

    /// Send a request and wait for its reply; an `ERROR` reply becomes `Err(Errno)`.
    pub fn request(&self, tx: TxId, req: &Request) -> Result<Reply> {
        let req_id = self.next_req.fetch_add(1, Ordering::Relaxed);
        // Like libxenstore: a request over the payload limit is E2BIG, never sent.
        let msg = req
            .to_message(req_id, tx)
            .map_err(|_| XenstoreError::Errno(Errno::E2BIG))?;
        let bytes = msg
            .encode()
            .map_err(|e| XenstoreError::Protocol(e.to_string()))?;
        {
            let mut state = lock(&self.shared.state);
            if let Some(why) = &state.closed {
                return Err(XenstoreError::Io(io::Error::new(
                    io::ErrorKind::NotConnected,
                    why.clone(),
                )));
            }
            state.replies.insert(req_id, None);
        }
        if let Err(e) = lock(&self.transport).send(&bytes) {
            lock(&self.shared.state).replies.remove(&req_id);
            return Err(e.into());
        }
        let mut state = lock(&self.shared.state);
        let reply = loop {
            if let Some(Some(_)) = state.replies.get(&req_id) {
                if let Some(Some(reply)) = state.replies.remove(&req_id) {
                    break reply;
                }
            }
            if let Some(why) = &state.closed {
                let why = why.clone();
                state.replies.remove(&req_id);
                return Err(XenstoreError::Io(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    why,
                )));
            }
            state = self
                .shared
                .cond
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        };
        drop(state);
        match Reply::parse(req.msg_type(), &reply)? {
            Reply::Error(e) => Err(XenstoreError::Errno(e)),
            other => Ok(other),
        }
    }

    fn ack(&self, tx: TxId, req: &Request) -> Result<()> {
        match self.request(tx, req)? {
            Reply::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Introduce a domain (dom0 only): the daemon starts serving it and fires `@introduceDomain`.
    pub fn introduce(&self, domid: DomId, mfn: u64, port: u32) -> Result<()> {
        self.ack(TxId::NONE, &Request::Introduce { domid, mfn, port })
    }

    /// Release a domain (dom0 only): fires `@releaseDomain`.
    pub fn release(&self, domid: DomId) -> Result<()> {
        self.ack(TxId::NONE, &Request::Release { domid })
    }

    /// Whether a domain is introduced (dom0 only).
    pub fn is_domain_introduced(&self, domid: DomId) -> Result<bool> {
        match self.request(TxId::NONE, &Request::IsDomainIntroduced { domid })? {
            Reply::Introduced(yes) => Ok(yes),
            other => Err(unexpected(&other)),
        }
    }

    /// Drop every watch and transaction of this connection.
    pub fn reset_watches(&self) -> Result<()> {
        self.ack(TxId::NONE, &Request::ResetWatches)?;
        let mut state = lock(&self.shared.state);
        state.events.clear();
        if state.closed.is_none() {
            self.drain_notify();
        }
        Ok(())
    }

    /// Let `domid` act as the owner of `target`'s nodes (dom0 only).
    pub fn set_target(&self, domid: DomId, target: DomId) -> Result<()> {
        self.ack(TxId::NONE, &Request::SetTarget { domid, target })
    }

    /// Whether watch events are queued (the file descriptor is readable then).
    pub fn has_watch_events(&self) -> bool {
        !lock(&self.shared.state).events.is_empty()
    }

    fn drain_notify(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.notify_rd).read(&mut buf), Ok(n) if n > 0) {}
    }

    /// A long directory listing, fetched in chunks with `DIRECTORY_PART` as libxenstore does.
    fn directory_in_parts(&self, tx: TxId, path: &str) -> Result<Vec<String>> {
        // A directory that keeps changing under us (or a daemon that says so) must not keep us
        // here forever.
        const MAX_RESTARTS: usize = 64;
        let mut restarts = 0;
        'restart: loop {
            let mut names = Vec::new();
            let mut offset: u32 = 0;
            let mut generation = None;
            loop {
                let reply = self.request(
                    tx,
                    &Request::DirectoryPart {
                        path: path.to_owned(),
                        offset,
                    },
                )?;
                let Reply::DirectoryPart {
                    generation: g,
                    names: chunk,
                    done,
                } = reply
                else {
                    return Err(unexpected(&reply));
                };
                if generation.is_some_and(|prev| prev != g) {
                    restarts += 1;
                    if restarts > MAX_RESTARTS {
                        return Err(XenstoreError::Errno(Errno::EAGAIN));
                    }
                    continue 'restart;
                }
                generation = Some(g);
                if chunk.is_empty() && !done {
                    return Err(XenstoreError::Protocol(
                        "DIRECTORY_PART reply without names that does not end the list".into(),
                    ));
                }
                for n in chunk {
                    offset = offset.saturating_add(n.len() as u32 + 1);
                    names.push(n);
                }
                if done {
                    return Ok(names);
                }
            }
        }
    }
}

fn unexpected(reply: &Reply) -> XenstoreError {
    XenstoreError::Protocol(format!("unexpected reply {reply:?}"))
}

fn read_loop(mut reader: Box<dyn Read + Send>, shared: &Shared) {
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 16 * 1024];
    let why = loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break "connection closed by xenstored".to_owned(),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break format!("reading from xenstored failed: {e}"),
        };
        decoder.feed(&buf[..n]);
        let mut broken = None;
        loop {
            match decoder.next_message() {
                Ok(None) => break,
                Ok(Some(msg)) => deliver(shared, msg),
                Err(e) if e.is_recoverable() => {}
                Err(e) => {
                    broken = Some(format!("xenstored broke the protocol: {e}"));
                    break;
                }
            }
        }
        if let Some(why) = broken {
            break why;
        }
    };
    let mut state = lock(&shared.state);
    state.closed = Some(why);
    // Wake pollers too: a dead connection is worth a look.
    let _ = (&state.notify_wr).write(&[1]);
    drop(state);
    shared.cond.notify_all();
}

fn deliver(shared: &Shared, msg: Message) {
    let mut state = lock(&shared.state);
    if msg.msg_type == MsgType::WatchEvent {
        // A malformed event has no one to be reported to; drop it.
        if let Ok(event) = Reply::parse_watch_event(&msg.payload) {
            if state.events.is_empty() {
                // WouldBlock only if a byte is already there, which is all we need.
                let _ = (&state.notify_wr).write(&[1]);
            }
            state.events.push_back(event);
        }
    } else if let Some(slot) = state.replies.get_mut(&msg.req_id) {
        *slot = Some(msg);
    }
    drop(state);
    shared.cond.notify_all();
}

impl AsFd for Client {
    /// A descriptor that is readable while watch events are queued (or the connection died).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.notify_rd.as_fd()
    }
}

impl AsRawFd for Client {
    fn as_raw_fd(&self) -> RawFd {
        self.notify_rd.as_raw_fd()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(socket) = &self.socket {
            // The reader thread sees EOF and exits. Errors mean it is already gone.
            let _ = socket.shutdown(Shutdown::Both);
            if let Some(reader) = self.reader.take() {
                let _ = reader.join();
            }
        }
        // A device reader cannot be interrupted: it exits at the next message or error.
    }
}

impl XenStore for Client {
    fn read(&self, tx: TxId, path: &str) -> Result<Vec<u8>> {
        match self.request(
            tx,
            &Request::Read {
                path: path.to_owned(),
            },
        )? {
            Reply::Read(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    fn write(&self, tx: TxId, path: &str, value: &[u8]) -> Result<()> {
        self.ack(
            tx,
            &Request::Write {
                path: path.to_owned(),
                value: value.to_vec(),
            },
        )
    }

    fn mkdir(&self, tx: TxId, path: &str) -> Result<()> {
        self.ack(
            tx,
            &Request::Mkdir {
                path: path.to_owned(),
            },
        )
    }

    fn rm(&self, tx: TxId, path: &str) -> Result<()> {
        self.ack(
            tx,
            &Request::Rm {
                path: path.to_owned(),
            },
        )
    }

    fn directory(&self, tx: TxId, path: &str) -> Result<Vec<String>> {
        match self.request(
            tx,
            &Request::Directory {
                path: path.to_owned(),
            },
        ) {
            Ok(Reply::Directory(names)) => Ok(names),
            Ok(other) => Err(unexpected(&other)),
            Err(XenstoreError::Errno(Errno::E2BIG)) => self.directory_in_parts(tx, path),
            Err(e) => Err(e),
        }
    }

    fn get_perms(&self, tx: TxId, path: &str) -> Result<Vec<Perm>> {
        match self.request(
            tx,
            &Request::GetPerms {
                path: path.to_owned(),
            },
        )? {
            Reply::Perms(p) => Ok(p),
            other => Err(unexpected(&other)),
        }
    }

    fn set_perms(&self, tx: TxId, path: &str, perms: &[Perm]) -> Result<()> {
        self.ack(
            tx,
            &Request::SetPerms {
                path: path.to_owned(),
                perms: perms.to_vec(),
            },
        )
    }

    fn transaction_start(&self) -> Result<TxId> {
        match self.request(TxId::NONE, &Request::TransactionStart)? {
            Reply::TransactionStarted(tx) => Ok(tx),
            other => Err(unexpected(&other)),
        }
    }

    fn transaction_end(&self, tx: TxId, commit: bool) -> Result<()> {
        self.ack(tx, &Request::TransactionEnd { commit })
    }

    fn watch(&self, path: &str, token: &str) -> Result<()> {
        self.ack(
            TxId::NONE,
            &Request::Watch {
                path: path.to_owned(),
                token: token.to_owned(),
            },
        )
    }

    fn unwatch(&self, path: &str, token: &str) -> Result<()> {
        self.ack(
            TxId::NONE,
            &Request::Unwatch {
                path: path.to_owned(),
                token: token.to_owned(),
            },
        )
    }

    fn next_watch_event(&self, timeout: Option<Duration>) -> Result<Option<WatchEvent>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut state = lock(&self.shared.state);
        loop {
            if let Some(event) = state.events.pop_front() {
                // A dead connection keeps the descriptor readable: pollers must come back to
                // learn about it.
                if state.events.is_empty() && state.closed.is_none() {
                    self.drain_notify();
                }
                return Ok(Some(event));
            }
            if let Some(why) = &state.closed {
                return Err(XenstoreError::Io(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    why.clone(),
                )));
            }
            state = match deadline {
                None => self
                    .shared
                    .cond
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(None);
                    }
                    self.shared
                        .cond
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    fn get_domain_path(&self, domid: DomId) -> Result<String> {
        match self.request(TxId::NONE, &Request::GetDomainPath { domid })? {
            Reply::DomainPath(p) => Ok(p),
            other => Err(unexpected(&other)),
        }
    }
}
