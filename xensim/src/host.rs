//! The cross-process front-end's server: [`Host`], the simulated hypervisor that `xensim serve`
//! runs for the processes of every simulated domain, on `<dir>/xen.sock`.
//!
//! Each connection is one device handle of the [`Hypervisor`] model: the host decodes the
//! connection's requests ([`crate::wire`]), lets the model decide, and carries out its effects
//! (an event is one message on the handle's event socket, a cleared byte a `pwrite` into the
//! memfd). When a connection ends, however its process ended, the model closes the handle.
//!
//! An event socket holds a few hundred messages. An event that finds it full waits in the
//! handle's set of waiting ports, each port at most once (Xen's pending bit: the model masks a
//! delivered port, so a port waits once however often it fires), and the host's main loop
//! ([`Host::run`]) sends the waiting ports, lowest first, as soon as the socket has room again.
//! No event is lost, however many ports a handle has pending.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::MsgFlags;
use xen_types::{DomId, GrantRef, Port};

use crate::lock;
use crate::memory::GrantedMemory;
use crate::model::{
    Effect, HandleId, HandleKind, Hypervisor, NotifyRequest, Reply, Request, Stats,
};
use crate::process;
use crate::wire::{self, op};

/// What the host keeps of a connection beyond the model's handle.
#[derive(Debug)]
struct Connection {
    /// The connected process (a pidfd, and its id), to kill when its domain is destroyed.
    process: Option<(OwnedFd, libc::pid_t)>,
    sock: Arc<OwnedFd>,
    /// Where an event-channel handle's events go.
    events: Option<EventSocket>,
}

/// An event-channel handle's event socket, and the events waiting for room in it.
#[derive(Debug)]
struct EventSocket {
    sock: Arc<OwnedFd>,
    /// Ports delivered while the socket was full, each once, sent lowest first.
    waiting: BTreeSet<Port>,
}

/// What became of an event sent to a handle's event socket.
enum Sent {
    /// It is in the socket (or its reader has gone, and nobody is left to tell).
    Done,
    /// The socket is full.
    Full,
}

impl EventSocket {
    fn send(&self, port: Port) -> Sent {
        match wire::send_small(self.sock.as_fd(), &[port.0], MsgFlags::MSG_DONTWAIT) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Sent::Full,
            // A reader that has gone is a handle being reclaimed.
            Ok(()) | Err(_) => Sent::Done,
        }
    }

    /// Send the waiting ports while the socket has room.
    fn send_waiting(&mut self) {
        while let Some(&port) = self.waiting.first() {
            match self.send(port) {
                Sent::Done => {
                    self.waiting.remove(&port);
                }
                Sent::Full => return,
            }
        }
    }
}

#[derive(Debug)]
struct State {
    hypervisor: Hypervisor<GrantedMemory>,
    connections: HashMap<HandleId, Connection>,
    /// Made readable when an event socket starts having waiting events (or the host stops), so
    /// the main loop looks again at what it waits for.
    wake: Arc<EventFd>,
}

impl State {
    /// Carry out the model's effects, in order.
    fn apply(&mut self, effects: &mut Vec<Effect<GrantedMemory>>) {
        for effect in effects.drain(..) {
            match effect {
                Effect::ClearByte { memory, offset } => memory.clear_byte(offset),
                Effect::Deliver { handle, port } => self.deliver(handle, port),
            }
        }
    }

    /// Send `port`'s event to `handle`, or keep it waiting until its socket has room.
    fn deliver(&mut self, handle: HandleId, port: Port) {
        let Some(events) = self
            .connections
            .get_mut(&handle)
            .and_then(|c| c.events.as_mut())
        else {
            return;
        };
        if events.waiting.is_empty() {
            match events.send(port) {
                Sent::Done => return,
                // The first waiting event of this socket: the main loop must watch it.
                Sent::Full => wake(&self.wake),
            }
        }
        events.waiting.insert(port);
    }

    fn close(&mut self, handle: HandleId) -> Option<Connection> {
        let mut effects = Vec::new();
        self.hypervisor.close(handle, &mut effects);
        self.apply(&mut effects);
        let connection = self.connections.remove(&handle);
        if connection
            .as_ref()
            .and_then(|c| c.events.as_ref())
            .is_some_and(|e| !e.waiting.is_empty())
        {
            // The main loop stops watching (and holding) the socket.
            wake(&self.wake);
        }
        connection
    }
}

/// Make the main loop look again.
fn wake(eventfd: &EventFd) {
    // Fails only when the counter would overflow, when it is readable anyway.
    let _ = eventfd.write(1);
}

/// A reply to send: values after the status, and the memory files with the access to pass.
type Answer = Result<(Vec<u32>, Vec<Arc<GrantedMemory>>, bool), Errno>;

struct HostInner {
    dir: PathBuf,
    /// Non-blocking: the main loop accepts only when `poll` says a connection waits.
    listener: OwnedFd,
    state: Mutex<State>,
    /// The main loop's wake-up, shared with the state.
    wake: Arc<EventFd>,
    stopping: AtomicBool,
}

/// The simulated hypervisor: event channels, grant tables and domain life for the processes of
/// every simulated domain, served on `<dir>/xen.sock`. Dom0 exists from the start.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// The reply status for an error: never 0, which says success.
fn status(code: Errno) -> u32 {
    match code {
        Errno::UnknownErrno => Errno::EIO as u32,
        code => code as u32,
    }
}

fn domid_word(raw: u32) -> Result<DomId, Errno> {
    u16::try_from(raw).map(DomId).map_err(|_| Errno::EINVAL)
}

fn decode_notify(offset: u32, port: u32) -> NotifyRequest {
    NotifyRequest {
        clear_byte: (offset != op::NO_OFFSET).then_some(offset as usize),
        event: (port != 0).then_some(Port(port)),
    }
}

impl Host {
    /// Listen on `<dir>/xen.sock` (creating `dir`). Fails with `AddrInUse` if a live host already
    /// serves the directory; a stale socket left by a dead host is replaced.
    pub fn bind(dir: &Path) -> io::Result<Host> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(wire::HOST_SOCKET);
        if wire::seqpacket_connect(&path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("a simulated host already serves {}", dir.display()),
            ));
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = wire::seqpacket_listen(&path)?;
        let wake = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        Ok(Host {
            inner: Arc::new(HostInner {
                dir: dir.to_path_buf(),
                listener,
                state: Mutex::new(State {
                    hypervisor: Hypervisor::new(),
                    connections: HashMap::new(),
                    wake: Arc::clone(&wake),
                }),
                wake,
                stopping: AtomicBool::new(false),
            }),
        })
    }

    /// The directory served.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Serve until [`stop`](Self::stop): accept connections, each served on a thread of its
    /// own, and send the events that waited for room in a full event socket as soon as it has
    /// some.
    pub fn run(&self) {
        // The event sockets with waiting events, as last seen.
        let mut watched: Vec<(HandleId, Arc<OwnedFd>)> = Vec::new();
        loop {
            watched.clear();
            watched.extend(
                lock(&self.inner.state)
                    .connections
                    .iter()
                    .filter_map(|(&handle, c)| Some((handle, c.events.as_ref()?)))
                    .filter(|(_, events)| !events.waiting.is_empty())
                    .map(|(handle, events)| (handle, Arc::clone(&events.sock))),
            );
            let mut fds = vec![
                PollFd::new(self.inner.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.inner.wake.as_fd(), PollFlags::POLLIN),
            ];
            fds.extend(
                watched
                    .iter()
                    .map(|(_, sock)| PollFd::new(sock.as_fd(), PollFlags::POLLOUT)),
            );
            match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                // Only a kernel out of memory: try again shortly rather than spin.
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
            // ORDERING: SeqCst pairs with the store in `stop`, before the wake-up and the
            // listener shutdown that ended the poll.
            if self.inner.stopping.load(Ordering::SeqCst) {
                return;
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[1]) {
                // Reset the wake-up; the next round looks at every socket afresh.
                let _ = self.inner.wake.read();
            }
            let room: Vec<HandleId> = fds[2..]
                .iter()
                .zip(&watched)
                .filter(|(fd, _)| ready(fd))
                .map(|(_, (handle, _))| *handle)
                .collect();
            let accept = ready(&fds[0]);
            drop(fds);
            if !room.is_empty() {
                let mut state = lock(&self.inner.state);
                for handle in room {
                    // A socket that hung up has room too: its events go nowhere.
                    if let Some(events) = state
                        .connections
                        .get_mut(&handle)
                        .and_then(|c| c.events.as_mut())
                    {
                        events.send_waiting();
                    }
                }
            }
            if accept {
                self.accept();
            }
        }
    }

    /// Accept a connection that `poll` announced and serve it on a thread of its own.
    fn accept(&self) {
        let sock = match wire::seqpacket_accept(self.inner.listener.as_fd()) {
            Ok(sock) => sock,
            Err(e)
                if matches!(
                    Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                    Errno::EMFILE | Errno::ENFILE
                ) =>
            {
                // The connection stays queued; the listener stays readable. Wait for a file.
                std::thread::sleep(std::time::Duration::from_millis(50));
                return;
            }
            // Gone before it was accepted (or accepted by nobody: `WouldBlock`).
            Err(_) => return,
        };
        let host = self.clone();
        let spawned = std::thread::Builder::new()
            .name("xensim-conn".into())
            .spawn(move || host.serve_connection(Arc::new(sock)));
        // Without a thread the connection is dropped (closed): the client sees the host gone.
        drop(spawned);
    }

    /// Stop serving, hang up every handle and remove the socket.
    pub fn stop(&self) {
        // ORDERING: SeqCst pairs with the load in `run`.
        self.inner.stopping.store(true, Ordering::SeqCst);
        wake(&self.inner.wake);
        wire::hang_up(self.inner.listener.as_fd());
        let state = lock(&self.inner.state);
        for c in state.connections.values() {
            wire::hang_up(c.sock.as_fd());
        }
        drop(state);
        let _ = std::fs::remove_file(self.inner.dir.join(wire::HOST_SOCKET));
    }

    /// What the host holds now.
    pub fn stats(&self) -> Stats {
        lock(&self.inner.state).hypervisor.stats()
    }

    /// Create domain `domid`.
    pub fn create_domain(&self, domid: DomId) -> io::Result<()> {
        Ok(lock(&self.inner.state).hypervisor.create_domain(domid)?)
    }

    /// Destroy domain `domid`: reclaim every handle of its processes (their unmap notifications
    /// fire), hang them up and kill the processes, as the domain's memory and vCPUs vanish.
    pub fn destroy_domain(&self, domid: DomId) -> io::Result<()> {
        let mut state = lock(&self.inner.state);
        let mut effects = Vec::new();
        let handles = state.hypervisor.destroy_domain(domid, &mut effects)?;
        state.apply(&mut effects);
        let mut processes = Vec::new();
        for handle in handles {
            if let Some(connection) = state.connections.remove(&handle) {
                wire::hang_up(connection.sock.as_fd());
                processes.extend(connection.process);
            }
        }
        drop(state);
        // Through pidfds taken when each process connected: a process that has exited since is
        // not signalled, and its id, if reused, names nobody here.
        let me = std::process::id() as libc::pid_t;
        let mut outcome = Ok(());
        for (pidfd, _) in processes.iter().filter(|(_, pid)| *pid > 1 && *pid != me) {
            // Every process is tried; the first failure (say EPERM) is the answer.
            let killed = process::kill_process(pidfd.as_fd());
            if outcome.is_ok() {
                outcome = killed;
            }
        }
        outcome
    }

    fn serve_connection(&self, sock: Arc<OwnedFd>) {
        let Ok(Some((hello, mut fds))) = wire::recv_msg(sock.as_fd()) else {
            return;
        };
        let handle = match self.register(&sock, &hello, &mut fds) {
            Ok(handle) => handle,
            Err(code) => {
                let _ = wire::send_msg(sock.as_fd(), &[status(code)], &[]);
                return;
            }
        };
        if wire::send_msg(sock.as_fd(), &[0], &[]).is_ok() {
            // One receive buffer for the connection's life: a message costs no allocation.
            let mut buf = wire::MsgBuf::new();
            loop {
                let words = match wire::recv_msg_with(sock.as_fd(), &mut buf) {
                    // Descriptors sent with requests are not expected; dropping closes them.
                    Ok(Some((words, _fds))) => words,
                    Ok(None) | Err(_) => break,
                };
                let answer = self.dispatch(handle, words);
                if !words.first().copied().is_some_and(op::has_reply) {
                    // One-way (notify, unmask): the client checked the port; nothing to say.
                    continue;
                }
                let sent = match answer {
                    Ok((mut values, memories, writable)) => {
                        values.insert(0, 0);
                        let fds: Vec<BorrowedFd<'_>> =
                            memories.iter().map(|m| m.file(writable)).collect();
                        wire::send_msg(sock.as_fd(), &values, &fds)
                    }
                    Err(code) => wire::send_msg(sock.as_fd(), &[status(code)], &[]),
                };
                if sent.is_err() {
                    break;
                }
            }
        }
        // The handle is gone (closed, or its process died): reclaim what it held.
        lock(&self.inner.state).close(handle);
    }

    fn register(
        &self,
        sock: &Arc<OwnedFd>,
        hello: &[u32],
        fds: &mut Vec<OwnedFd>,
    ) -> Result<HandleId, Errno> {
        let (kind, raw) = match hello {
            [op::HELLO, kind, domid] => (*kind, *domid),
            _ => return Err(Errno::EPROTO),
        };
        let domid = domid_word(raw)?;
        let (kind, events) = match kind {
            op::KIND_EVENTS => (HandleKind::Events, Some(fds.pop().ok_or(Errno::EINVAL)?)),
            op::KIND_SHARE => (HandleKind::Share, None),
            op::KIND_MAP => (HandleKind::Map, None),
            op::KIND_CONTROL => (HandleKind::Control, None),
            _ => return Err(Errno::EINVAL),
        };
        // Gone already (or unknowable): nothing to kill later, and nothing wrong with the handle.
        let process = process::peer_process(sock.as_fd()).ok();
        let mut state = lock(&self.inner.state);
        let handle = state.hypervisor.open(domid, kind)?;
        state.connections.insert(
            handle,
            Connection {
                process,
                sock: Arc::clone(sock),
                events: events.map(|sock| EventSocket {
                    sock: Arc::new(sock),
                    waiting: BTreeSet::new(),
                }),
            },
        );
        Ok(handle)
    }

    fn dispatch(&self, handle: HandleId, words: &[u32]) -> Answer {
        let arg = |i: usize| words.get(i).copied().ok_or(Errno::EINVAL);
        let dom_arg = |i: usize| arg(i).and_then(domid_word);
        let done = |values: Vec<u32>| Ok((values, Vec::new(), false));
        let is_control = || {
            lock(&self.inner.state)
                .hypervisor
                .handle(handle)
                .is_some_and(|(_, kind)| kind == HandleKind::Control)
        };
        let request = match arg(0)? {
            op::DOMAIN_CREATE | op::DOMAIN_DESTROY | op::STATS | op::DOMAIN_EXISTS
                if !is_control() =>
            {
                return Err(Errno::EPERM)
            }
            op::DOMAIN_CREATE => {
                let domid = dom_arg(1)?;
                lock(&self.inner.state).hypervisor.create_domain(domid)?;
                return done(vec![]);
            }
            op::DOMAIN_DESTROY => {
                let domid = dom_arg(1)?;
                return match self.destroy_domain(domid) {
                    Ok(()) => done(vec![]),
                    Err(e) => Err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
                };
            }
            op::STATS => {
                let s = self.stats();
                return done(vec![s.domains, s.handles, s.ports, s.grants, s.mappings]);
            }
            op::DOMAIN_EXISTS => {
                let domid = dom_arg(1)?;
                let exists = lock(&self.inner.state).hypervisor.domain_exists(domid);
                return done(vec![u32::from(exists)]);
            }
            op::EV_BIND_UNBOUND => Request::BindUnbound {
                remote: dom_arg(1)?,
            },
            op::EV_BIND_INTERDOMAIN => Request::BindInterdomain {
                remote: dom_arg(1)?,
                remote_port: Port(arg(2)?),
            },
            op::EV_NOTIFY => Request::Notify(Port(arg(1)?)),
            op::EV_UNMASK => Request::Unmask(Port(arg(1)?)),
            op::EV_UNBIND => Request::Unbind(Port(arg(1)?)),
            op::GNT_SHARE => {
                // Checked before any memory is made for it.
                let kind = lock(&self.inner.state).hypervisor.handle(handle);
                if !matches!(kind, Some((_, HandleKind::Share))) {
                    return Err(Errno::EBADF);
                }
                let pages = arg(2)? as usize;
                if pages == 0 || pages > crate::model::MAX_PAGES_PER_CALL {
                    return Err(Errno::EINVAL);
                }
                // The memory is made before the model decides; if it refuses, it is dropped.
                let memory = GrantedMemory::new(pages)
                    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOMEM)))?;
                Request::Share {
                    grantee: dom_arg(1)?,
                    memory: Arc::new(memory),
                    pages,
                    writable: arg(3)? != 0,
                    notify: decode_notify(arg(4)?, arg(5)?),
                }
            }
            op::GNT_UNSHARE => Request::Unshare(arg(1)?),
            op::GNT_MAP => {
                let refs: Vec<GrantRef> = words
                    .get(5..)
                    .unwrap_or_default()
                    .iter()
                    .map(|&r| GrantRef(r))
                    .collect();
                return self.map(
                    handle,
                    dom_arg(1)?,
                    &refs,
                    arg(2)? != 0,
                    decode_notify(arg(3)?, arg(4)?),
                );
            }
            op::GNT_UNMAP => Request::Unmap(arg(1)?),
            op::GNT_CANCEL => {
                let id = arg(1)?;
                let mut state = lock(&self.inner.state);
                let cancelled = match state.hypervisor.handle(handle) {
                    Some((_, HandleKind::Share)) => state.hypervisor.cancel_share(handle, id),
                    Some((_, HandleKind::Map)) => state.hypervisor.cancel_mapping(handle, id),
                    _ => Err(Errno::EBADF),
                };
                return cancelled.and_then(|()| done(vec![]));
            }
            _ => return Err(Errno::ENOSYS),
        };
        let shared_memory = match &request {
            Request::Share { memory, .. } => Some(Arc::clone(memory)),
            _ => None,
        };
        let mut state = lock(&self.inner.state);
        let mut effects = Vec::new();
        let reply = state.hypervisor.request(handle, request, &mut effects);
        state.apply(&mut effects);
        match reply? {
            Reply::Done => done(vec![]),
            Reply::Port(port) => done(vec![port.0]),
            Reply::Shared { id, refs } => {
                let mut values = vec![id];
                values.extend(refs.iter().map(|r| r.0));
                Ok((values, shared_memory.into_iter().collect(), true))
            }
            Reply::Mapped { .. } => Err(Errno::EPROTO),
        }
    }

    fn map(
        &self,
        handle: HandleId,
        granter: DomId,
        refs: &[GrantRef],
        writable: bool,
        notify: NotifyRequest,
    ) -> Answer {
        let request = Request::Map {
            granter,
            refs,
            writable,
            notify,
        };
        let mut state = lock(&self.inner.state);
        let mut effects = Vec::new();
        let reply = state.hypervisor.request(handle, request, &mut effects);
        state.apply(&mut effects);
        let Reply::Mapped { id, pages } = reply? else {
            return Err(Errno::EPROTO);
        };
        // One descriptor per distinct memory, and (descriptor index, page) per page.
        let mut memories: Vec<Arc<GrantedMemory>> = Vec::new();
        let mut values = vec![id];
        for (memory, page) in pages {
            let index = match memories.iter().position(|m| Arc::ptr_eq(m, &memory)) {
                Some(index) => index,
                None => {
                    memories.push(memory);
                    memories.len() - 1
                }
            };
            values.extend([index as u32, page as u32]);
        }
        if memories.len() > wire::MAX_FDS {
            // Too many files for one message: the mapping never happened.
            let _ = state.hypervisor.cancel_mapping(handle, id);
            return Err(Errno::E2BIG);
        }
        Ok((values, memories, writable))
    }
}
