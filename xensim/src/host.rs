//! The cross-process front-end's server: [`Host`], the simulated hypervisor that `xensim serve`
//! runs for the processes of every simulated domain, on `<dir>/xen.sock`.
//!
//! Each connection is one device handle of the [`Hypervisor`] model: the host decodes the
//! connection's messages into typed requests (the crate's private `wire` module), lets the model
//! decide, and carries out its effects (an event is one message on the handle's event socket, a
//! cleared byte a `pwrite` into the memfd). When a connection ends, however its process ended,
//! the model closes the handle.
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
use xen_types::{DomId, GrantRef, Port};

use crate::lock;
use crate::memory::GrantedMemory;
use crate::model::{self, Effect, HandleId, HandleKind, Hypervisor, NotifyRequest, Stats};
use crate::process;
use crate::wire::{self, FilePage, Hello, Reply, Request};

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
        match wire::send_event(self.sock.as_fd(), port) {
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

    /// Let the model decide `request` of `handle` and carry out its effects.
    fn request(
        &mut self,
        handle: HandleId,
        request: model::Request<'_, GrantedMemory>,
    ) -> Result<model::Reply<GrantedMemory>, Errno> {
        let mut effects = Vec::new();
        let reply = self.hypervisor.request(handle, request, &mut effects);
        self.apply(&mut effects);
        reply
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

/// An answer to send: a reply, whose files are the memory it passes, or an errno.
type Answer = Result<Reply<PassedFile>, Errno>;

/// A memory file a reply passes, with the access it gives.
#[derive(Debug)]
struct PassedFile {
    memory: Arc<GrantedMemory>,
    writable: bool,
}

impl AsFd for PassedFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.memory.file(self.writable)
    }
}

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
        // One receive buffer for the connection's life: a message costs no allocation.
        let mut buf = wire::MsgBuf::new();
        let hello = match wire::recv(sock.as_fd(), &mut buf) {
            Ok(Some(msg)) => Hello::decode(msg.bytes, msg.truncated, msg.fds),
            Ok(None) | Err(_) => return,
        };
        let registered = hello
            .map_err(|e| e.errno())
            .and_then(|hello| self.register(&sock, hello));
        let answer = registered.map(|_| Reply::<PassedFile>::Done);
        let handle = match (wire::send_answer(sock.as_fd(), &answer), registered) {
            (Ok(()), Ok(handle)) => handle,
            (Err(_), Ok(handle)) => {
                lock(&self.inner.state).close(handle);
                return;
            }
            (_, Err(_)) => return,
        };
        loop {
            let msg = match wire::recv(sock.as_fd(), &mut buf) {
                Ok(Some(msg)) => msg,
                Ok(None) | Err(_) => break,
            };
            // Descriptors sent with a request are an error; dropping them closes them.
            let answer = match Request::decode(msg.bytes, msg.truncated, &msg.fds) {
                Ok(request) if request.reply_kind().is_none() => {
                    // One way (notify, unmask): the client checked the port; nothing to say.
                    let _ = self.dispatch(handle, request);
                    continue;
                }
                Ok(request) => self.dispatch(handle, request),
                Err(malformed) if malformed.wants_answer() => Err(malformed.errno()),
                Err(_) => continue,
            };
            if wire::send_answer(sock.as_fd(), &answer).is_err() {
                break;
            }
        }
        // The handle is gone (closed, or its process died): reclaim what it held.
        lock(&self.inner.state).close(handle);
    }

    fn register(&self, sock: &Arc<OwnedFd>, hello: Hello<OwnedFd>) -> Result<HandleId, Errno> {
        // Gone already (or unknowable): nothing to kill later, and nothing wrong with the handle.
        let process = process::peer_process(sock.as_fd()).ok();
        let mut state = lock(&self.inner.state);
        let handle = state.hypervisor.open(hello.domid, hello.kind)?;
        state.connections.insert(
            handle,
            Connection {
                process,
                sock: Arc::clone(sock),
                events: hello.events.map(|sock| EventSocket {
                    sock: Arc::new(sock),
                    waiting: BTreeSet::new(),
                }),
            },
        );
        Ok(handle)
    }

    /// Carry out one request of `handle`.
    fn dispatch(&self, handle: HandleId, request: Request) -> Answer {
        // Looked up only by the requests that depend on it (not by a notify).
        let kind = || {
            lock(&self.inner.state)
                .hypervisor
                .handle(handle)
                .map(|(_, kind)| kind)
        };
        let control = || match kind() {
            Some(HandleKind::Control) => Ok(()),
            _ => Err(Errno::EPERM),
        };
        match request {
            Request::CreateDomain(domid) => {
                control()?;
                lock(&self.inner.state).hypervisor.create_domain(domid)?;
                Ok(Reply::Done)
            }
            Request::DestroyDomain(domid) => {
                control()?;
                self.destroy_domain(domid)
                    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
                Ok(Reply::Done)
            }
            Request::Stats => {
                control()?;
                Ok(Reply::Stats(self.stats()))
            }
            Request::DomainExists(domid) => {
                control()?;
                let exists = lock(&self.inner.state).hypervisor.domain_exists(domid);
                Ok(Reply::Exists(exists))
            }
            Request::BindUnbound { remote } => {
                self.model(handle, model::Request::BindUnbound { remote })
            }
            Request::BindInterdomain {
                remote,
                remote_port,
            } => self.model(
                handle,
                model::Request::BindInterdomain {
                    remote,
                    remote_port,
                },
            ),
            Request::Notify(port) => self.model(handle, model::Request::Notify(port)),
            Request::Unmask(port) => self.model(handle, model::Request::Unmask(port)),
            Request::Unbind(port) => {
                let mut state = lock(&self.inner.state);
                let done = state.request(handle, model::Request::Unbind(port))?;
                // A waiting event of the closed port is never sent (in process, unbinding drops
                // the port's queued events); one already in the socket stays, as in the Linux
                // driver's ring.
                if let Some(events) = state
                    .connections
                    .get_mut(&handle)
                    .and_then(|c| c.events.as_mut())
                {
                    events.waiting.remove(&port);
                }
                reply(done)
            }
            Request::Share {
                grantee,
                pages,
                writable,
                notify,
            } => {
                // Checked before any memory is made for it.
                if kind() != Some(HandleKind::Share) {
                    return Err(Errno::EBADF);
                }
                let pages = pages as usize;
                if pages == 0 || pages > model::MAX_PAGES_PER_CALL {
                    return Err(Errno::EINVAL);
                }
                // The memory is made before the model decides; if it refuses, it is dropped.
                let memory = Arc::new(
                    GrantedMemory::new(pages)
                        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOMEM)))?,
                );
                let request = model::Request::Share {
                    grantee,
                    memory: Arc::clone(&memory),
                    pages,
                    writable,
                    notify: notify.into(),
                };
                match lock(&self.inner.state).request(handle, request)? {
                    model::Reply::Shared { id, refs } => Ok(Reply::Shared {
                        id,
                        refs,
                        // The sharer maps its pages writable: it fills them.
                        memory: PassedFile {
                            memory,
                            writable: true,
                        },
                    }),
                    _ => Err(Errno::EPROTO),
                }
            }
            Request::Unshare(id) => self.model(handle, model::Request::Unshare(id)),
            Request::Map {
                granter,
                writable,
                notify,
                refs,
            } => self.map(handle, granter, &refs, writable, notify.into()),
            Request::Unmap(id) => self.model(handle, model::Request::Unmap(id)),
            Request::SetMapNotify { id, notify } => self.model(
                handle,
                model::Request::SetMapNotify {
                    id,
                    notify: notify.into(),
                },
            ),
            Request::Cancel(id) => {
                let mut state = lock(&self.inner.state);
                match state.hypervisor.handle(handle).map(|(_, kind)| kind) {
                    Some(HandleKind::Share) => state.hypervisor.cancel_share(handle, id)?,
                    Some(HandleKind::Map) => state.hypervisor.cancel_mapping(handle, id)?,
                    _ => return Err(Errno::EBADF),
                }
                Ok(Reply::Done)
            }
        }
    }

    /// A request the model answers with `Done` or a port.
    fn model(&self, handle: HandleId, request: model::Request<'_, GrantedMemory>) -> Answer {
        reply(lock(&self.inner.state).request(handle, request)?)
    }

    fn map(
        &self,
        handle: HandleId,
        granter: DomId,
        refs: &[GrantRef],
        writable: bool,
        notify: NotifyRequest,
    ) -> Answer {
        let request = model::Request::Map {
            granter,
            refs,
            writable,
            notify,
        };
        let mut state = lock(&self.inner.state);
        let model::Reply::Mapped { id, pages } = state.request(handle, request)? else {
            return Err(Errno::EPROTO);
        };
        // One file per distinct memory, and (file index, page) per page.
        let mut files: Vec<PassedFile> = Vec::new();
        let mut placed = Vec::with_capacity(pages.len());
        for (memory, page) in pages {
            let file = match files.iter().position(|f| Arc::ptr_eq(&f.memory, &memory)) {
                Some(index) => index,
                None => {
                    files.push(PassedFile { memory, writable });
                    files.len() - 1
                }
            };
            placed.push(FilePage {
                file: file as u32,
                page: page as u32,
            });
        }
        if files.len() > wire::MAX_FDS {
            // Too many files for one message: the mapping never happened.
            let _ = state.hypervisor.cancel_mapping(handle, id);
            return Err(Errno::E2BIG);
        }
        Ok(Reply::Mapped {
            id,
            pages: placed,
            files,
        })
    }
}

/// The wire's reply for the model's `Done` or port.
fn reply(reply: model::Reply<GrantedMemory>) -> Answer {
    match reply {
        model::Reply::Done => Ok(Reply::Done),
        model::Reply::Port(port) => Ok(Reply::Port(port)),
        // Shares and mappings take their own paths, which pass their files.
        model::Reply::Shared { .. } | model::Reply::Mapped { .. } => Err(Errno::EPROTO),
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::socket::{self, MsgFlags};

    use super::*;
    use crate::wire::ReplyKind;

    /// Send raw bytes as one message.
    fn send_raw(sock: &OwnedFd, bytes: &[u8]) {
        socket::send(
            std::os::fd::AsRawFd::as_raw_fd(sock),
            bytes,
            MsgFlags::MSG_NOSIGNAL,
        )
        .expect("send");
    }

    fn words(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// The host's answer, decoded as a reply of `kind`.
    fn answer(sock: &OwnedFd, kind: ReplyKind) -> Result<Reply<OwnedFd>, Errno> {
        let mut buf = wire::MsgBuf::new();
        let msg = wire::recv(sock.as_fd(), &mut buf)
            .expect("recv")
            .expect("an answer, not a hang-up");
        wire::decode_answer(kind, msg.bytes, msg.truncated, msg.fds).expect("a well-formed answer")
    }

    #[test]
    fn malformed_messages_are_answered_as_the_drivers_answer_and_the_handle_serves_on() {
        let dir = std::env::temp_dir().join(format!("xensim-host-unit-{}", std::process::id()));
        let host = Host::bind(&dir).expect("bind");
        let runner = host.clone();
        let thread = std::thread::spawn(move || runner.run());
        let path = dir.join(wire::HOST_SOCKET);

        // Anything but a greeting first: EPROTO, and the host hangs up.
        let sock = wire::seqpacket_connect(&path).unwrap();
        send_raw(&sock, &words(&[13]));
        assert_eq!(answer(&sock, ReplyKind::Done).unwrap_err(), Errno::EPROTO);
        let mut buf = wire::MsgBuf::new();
        assert!(wire::recv(sock.as_fd(), &mut buf).unwrap().is_none());
        // An event handle's greeting without its socket: EINVAL.
        let sock = wire::seqpacket_connect(&path).unwrap();
        send_raw(&sock, &words(&[1, 1, 0]));
        assert_eq!(answer(&sock, ReplyKind::Done).unwrap_err(), Errno::EINVAL);

        // A grant-sharing handle (it needs no event socket).
        let sock = wire::seqpacket_connect(&path).unwrap();
        send_raw(&sock, &words(&[1, 2, 0]));
        assert!(matches!(answer(&sock, ReplyKind::Done), Ok(Reply::Done)));
        let einval = [
            vec![8, 0, 0],                 // not a whole number of words
            words(&[8]),                   // unshare without its id
            words(&[8, 1, 2]),             // and with one word too many
            words(&[2, 70_000]),           // a domain id past 16 bits
            words(&[7, 1, 1, 5, 0, 0, 0]), // share, writable neither 0 nor 1
            vec![0; 64 * 1024 + 4],        // longer than any message
        ];
        for message in &einval {
            send_raw(&sock, message);
            assert_eq!(
                answer(&sock, ReplyKind::Done).unwrap_err(),
                Errno::EINVAL,
                "{message:?}"
            );
        }
        send_raw(&sock, &words(&[99]));
        assert_eq!(answer(&sock, ReplyKind::Done).unwrap_err(), Errno::ENOSYS);
        send_raw(&sock, &words(&[1, 2, 0]));
        assert_eq!(
            answer(&sock, ReplyKind::Done).unwrap_err(),
            Errno::EPROTO,
            "a second greeting"
        );
        // A malformed one-way request gets no answer: the next answer is the next request's.
        send_raw(&sock, &words(&[4]));
        send_raw(&sock, &words(&[5, 1, 1]));
        send_raw(&sock, &words(&[8, 12345]));
        assert_eq!(
            answer(&sock, ReplyKind::Done).unwrap_err(),
            Errno::EINVAL,
            "no share 12345"
        );
        // The handle serves on.
        let share = words(&[7, 0, 1, 1, 0, 0, 0]);
        send_raw(&sock, &share);
        let Ok(Reply::Shared { id, refs, .. }) = answer(&sock, ReplyKind::Shared) else {
            panic!("a share")
        };
        assert_eq!(refs.len(), 1);
        send_raw(&sock, &words(&[8, id]));
        assert!(matches!(answer(&sock, ReplyKind::Done), Ok(Reply::Done)));
        drop(sock);

        host.stop();
        thread.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
