//! A xenstore daemon serving a [`LocalStore`] over Unix sockets, one socket per domain.
//!
//! A Unix socket cannot tell the daemon which Xen domain is calling, so each domain gets its own
//! socket in the daemon's directory and every connection on it speaks for that domain:
//! `<dir>/dom0.sock` is dom0's (privileged); an `INTRODUCE` from dom0 (payload
//! `domid\0mfn\0port\0`, the frame and port accepted and ignored) opens `<dir>/dom<N>.sock` and
//! fires `@introduceDomain`; `RELEASE` removes that socket, closes the domain's connections and
//! fires `@releaseDomain`. Point libxenstore at dom0 with `XENSTORED_PATH=<dir>/dom0.sock`.
//!
//! Each connection has a reader thread (decode, run against the store, queue the reply) and a
//! writer thread draining a bounded queue of replies and watch events. Hostile input is contained
//! per connection: a malformed request gets an `ERROR` reply; a header announcing more than 4096
//! bytes cannot be resynchronised, so that connection is closed; a client that stops reading
//! until its queue fills (4096 messages, or 1 MiB for a guest) is hung up; a guest may have at
//! most [`MAX_GUEST_CONNECTIONS`] connections open at once. A closed connection's watches go and its transactions are
//! aborted; nothing committed is lost.
//!
//! The daemon can share its store with in-process users: [`Daemon::bind_with`] takes a
//! [`LocalStore`] whose [`LocalConnection`](crate::local::LocalConnection)s see the same tree,
//! fire each other's watches, and whose `introduce_domain`/`release_domain` open and close
//! sockets too.
//!
//! ```
//! use xenstore::daemon::Daemon;
//! use xenstore::client::Client;
//! use xenstore::{TxId, XenStore};
//!
//! let dir = std::env::temp_dir().join(format!("xs-doc-{}", std::process::id()));
//! let daemon = Daemon::spawn(&dir).unwrap();
//! let client = Client::open_path(&daemon.socket_path(xenstore::DomId(0))).unwrap();
//! client.write(TxId::NONE, "/a", b"1").unwrap();
//! assert_eq!(client.read(TxId::NONE, "/a").unwrap(), b"1");
//! drop(client);
//! drop(daemon); // stops it and removes its sockets
//! # let _ = std::fs::remove_dir_all(&dir);
//! ```

use crate::local::{LocalStore, Observer, Shared as LocalShared};
use crate::store::{ConnId, Store};
use crate::wire::{Decoder, Message, MsgType, Reply, Request, WireError};
use crate::{DomId, Errno, TxId};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;

/// Messages (replies and events) queued for one client before it counts as not reading.
const OUT_QUEUE: usize = 4096;

/// Bytes queued for one connection of an unprivileged domain before it counts as not reading
/// (at most [`OUT_QUEUE`] messages of up to 4 KiB would otherwise be 16 MiB per connection).
const GUEST_OUT_BYTES: usize = 1 << 20;

/// Connections an unprivileged domain may have open at once on its socket (each costs the
/// daemon two threads); further ones are closed at once. A real guest has one ring, which its
/// kernel shares among every open of `/dev/xen/xenbus`; here each open is a connection, and each
/// vchan server keeps one for its life (to remove its keys when it closes), so a guest serving a
/// conduit service to a hundred clients at once needs a hundred.
pub const MAX_GUEST_CONNECTIONS: usize = 256;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The socket of a domain inside the daemon directory.
pub fn socket_path(dir: &Path, domid: DomId) -> PathBuf {
    dir.join(format!("dom{domid}.sock"))
}

struct ConnHandle {
    stream: UnixStream,
    out: SyncSender<Vec<u8>>,
    /// Bytes in `out` not yet written to the socket.
    queued: Arc<AtomicUsize>,
    /// How many bytes may be queued before the client is hung up.
    max_queued: usize,
}

struct Listener {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Stop accepting: raise the flag, wake `accept` with a throw-away connection, join, and
    /// remove the socket file.
    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // If the connect fails the listener is already gone (or never blocked): nothing to wake.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

struct Inner {
    dir: PathBuf,
    local: LocalStore,
    conns: Mutex<HashMap<ConnId, ConnHandle>>,
    listeners: Mutex<HashMap<DomId, Listener>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stopping: AtomicBool,
    /// Open (or being opened) connections per unprivileged domain.
    guest_conns: Mutex<HashMap<DomId, usize>>,
}

impl Inner {
    fn store(&self) -> &LocalShared {
        self.local.shared()
    }

    /// Queue bytes for a connection; a client whose queue is full is hung up.
    fn send(&self, conns: &HashMap<ConnId, ConnHandle>, conn: ConnId, bytes: Vec<u8>) {
        let Some(handle) = conns.get(&conn) else {
            return;
        };
        let len = bytes.len();
        let queued = handle.queued.fetch_add(len, Ordering::Relaxed) + len;
        let full = if queued > handle.max_queued {
            true
        } else {
            match handle.out.try_send(bytes) {
                Ok(()) => return,
                Err(TrySendError::Disconnected(_)) => false,
                Err(TrySendError::Full(_)) => true,
            }
        };
        handle.queued.fetch_sub(len, Ordering::Relaxed);
        if full {
            // Not reading its replies: cut it off (its reader thread cleans up).
            let _ = handle.stream.shutdown(Shutdown::Both);
        }
    }

    fn drain_events(&self, store: &mut Store, woken: &[ConnId]) {
        let conns = lock(&self.conns);
        for conn in woken {
            if !conns.contains_key(conn) {
                continue; // an in-process connection: its owner polls the store
            }
            while let Some(ev) = store.pop_event(*conn) {
                let msg = Reply::WatchEvent(ev).to_message(MsgType::WatchEvent, 0, TxId::NONE);
                match msg.encode() {
                    Ok(bytes) => self.send(&conns, *conn, bytes),
                    Err(_) => continue, // cannot happen: paths and tokens fit a payload
                }
            }
        }
    }

    /// Count a new connection of `domid`; `false` if an unprivileged domain has too many.
    fn admit_guest_conn(&self, domid: DomId) -> bool {
        if domid == DomId::DOM0 {
            return true;
        }
        let mut counts = lock(&self.guest_conns);
        let n = counts.entry(domid).or_default();
        if *n >= MAX_GUEST_CONNECTIONS {
            return false;
        }
        *n += 1;
        true
    }

    fn release_guest_conn(&self, domid: DomId) {
        if domid == DomId::DOM0 {
            return;
        }
        let mut counts = lock(&self.guest_conns);
        if let Some(n) = counts.get_mut(&domid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&domid);
            }
        }
    }

    fn open_listener(self: &Arc<Self>, domid: DomId) -> io::Result<()> {
        if self.stopping.load(Ordering::SeqCst) || lock(&self.listeners).contains_key(&domid) {
            return Ok(());
        }
        let path = socket_path(&self.dir, domid);
        let listener = bind_socket(&path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let weak = Arc::downgrade(self);
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("xenstored-dom{domid}"))
            .spawn(move || accept_loop(&weak, &listener, domid, &thread_stop))?;
        lock(&self.listeners).insert(
            domid,
            Listener {
                path,
                stop,
                thread: Some(thread),
            },
        );
        Ok(())
    }
}

struct DaemonObserver(Weak<Inner>);

impl Observer for DaemonObserver {
    fn woken(&self, store: &mut Store, conns: &[ConnId]) {
        if let Some(inner) = self.0.upgrade() {
            inner.drain_events(store, conns);
        }
    }

    fn introduced(&self, _store: &mut Store, domid: DomId) {
        if let Some(inner) = self.0.upgrade() {
            // A socket that cannot be created leaves the domain introduced but unreachable;
            // the wire path checks this before introducing (see `serve`).
            let _ = inner.open_listener(domid);
        }
    }

    fn released(&self, _store: &mut Store, domid: DomId, conns: &[ConnId]) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        if let Some(l) = lock(&inner.listeners).remove(&domid) {
            l.stop();
        }
        let handles = lock(&inner.conns);
        for c in conns {
            if let Some(h) = handles.get(c) {
                let _ = h.stream.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Bind a listening socket at `path`, replacing a stale socket file nobody serves.
fn bind_socket(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{}: another daemon is serving this socket", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists and is not a socket", path.display()),
            ))
        }
        Err(_) => {}
    }
    UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn accept_loop(inner: &Weak<Inner>, listener: &UnixListener, domid: DomId, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Some(inner) = inner.upgrade() else { return };
        if inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        match stream {
            Ok(stream) => {
                if !inner.admit_guest_conn(domid) {
                    drop(stream); // over the limit: hang up at once
                    continue;
                }
                let thread_inner = Arc::clone(&inner);
                let spawned = std::thread::Builder::new()
                    .name(format!("xenstored-conn-dom{domid}"))
                    .spawn(move || {
                        serve(&thread_inner, stream, domid);
                        thread_inner.release_guest_conn(domid);
                    });
                match spawned {
                    Ok(t) => {
                        let mut threads = lock(&inner.threads);
                        threads.retain(|t| !t.is_finished());
                        threads.push(t);
                    }
                    Err(_) => inner.release_guest_conn(domid),
                }
            }
            // Out of descriptors or similar: back off briefly rather than spin.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

/// Serve one client connection until it closes or breaks the protocol.
fn serve(inner: &Arc<Inner>, stream: UnixStream, domid: DomId) {
    let (Ok(write_half), Ok(handle_stream)) = (stream.try_clone(), stream.try_clone()) else {
        return;
    };
    let (out_tx, out_rx) = mpsc::sync_channel::<Vec<u8>>(OUT_QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    let max_queued = if domid == DomId::DOM0 {
        usize::MAX
    } else {
        GUEST_OUT_BYTES
    };
    let conn = {
        let mut store = inner.store().lock();
        if !store.is_domain_introduced(domid) || inner.stopping.load(Ordering::SeqCst) {
            return; // released (or stopping) while this connection was being accepted
        }
        let conn = store.connect(domid);
        lock(&inner.conns).insert(
            conn,
            ConnHandle {
                stream: handle_stream,
                out: out_tx,
                queued: Arc::clone(&queued),
                max_queued,
            },
        );
        conn
    };
    let writer = std::thread::Builder::new()
        .name("xenstored-writer".into())
        .spawn(move || {
            let mut w = write_half;
            for bytes in out_rx {
                if w.write_all(&bytes).is_err() {
                    let _ = w.shutdown(Shutdown::Both);
                    break;
                }
                queued.fetch_sub(bytes.len(), Ordering::Relaxed);
            }
        });
    if writer.is_err() {
        // Without a writer every reply would be dropped and the client would wait forever:
        // hang up instead.
        let mut store = inner.store().lock();
        store.disconnect(conn);
        lock(&inner.conns).remove(&conn);
        let _ = stream.shutdown(Shutdown::Both);
        return;
    }

    let mut reader = &stream;
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 8192];
    'conn: loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        decoder.feed(&buf[..n]);
        loop {
            match decoder.next_message() {
                Ok(None) => break,
                Ok(Some(msg)) => handle(inner, conn, domid, &msg),
                Err(WireError::UnknownType { header }) => {
                    let reply = Reply::Error(Errno::ENOSYS).to_message(
                        MsgType::Error,
                        header.req_id,
                        TxId(header.tx_id),
                    );
                    if let Ok(bytes) = reply.encode() {
                        inner.send(&lock(&inner.conns), conn, bytes);
                    }
                }
                // Cannot resynchronise: hang up on this client only.
                Err(_) => break 'conn,
            }
        }
    }

    {
        let mut store = inner.store().lock();
        store.disconnect(conn);
        lock(&inner.conns).remove(&conn);
    }
    let _ = stream.shutdown(Shutdown::Both);
    if let Ok(w) = writer {
        let _ = w.join();
    }
}

fn handle(inner: &Arc<Inner>, conn: ConnId, domid: DomId, msg: &Message) {
    // Open a newly introduced domain's socket before the store says yes, so a failure to create
    // it becomes an error reply instead of an unreachable domain.
    let mut pre_opened = None;
    if domid == DomId::DOM0 && msg.msg_type == MsgType::Introduce {
        if let Ok(Request::Introduce { domid: new, .. }) = Request::parse(msg) {
            let known = inner.store().lock().is_domain_introduced(new);
            if !known && new.is_normal() {
                if inner.open_listener(new).is_err() {
                    let reply =
                        Reply::Error(Errno::EIO).to_message(msg.msg_type, msg.req_id, msg.tx_id);
                    if let Ok(bytes) = reply.encode() {
                        inner.send(&lock(&inner.conns), conn, bytes);
                    }
                    return;
                }
                pre_opened = Some(new);
            }
        }
    }
    let mut store = inner.store().lock();
    let handled = store.handle_message(conn, msg);
    if let Some(new) = pre_opened {
        if !store.is_domain_introduced(new) {
            // The request failed after all (say, a bad transaction id): close the socket again.
            if let Some(l) = lock(&inner.listeners).remove(&new) {
                l.stop();
            }
        }
    }
    // Sockets open or close before the client hears the answer.
    if let Some(effect) = &handled.effect {
        inner.store().apply_effect(&mut store, effect);
    }
    if let Ok(bytes) = handled.reply.encode() {
        inner.send(&lock(&inner.conns), conn, bytes);
    }
    inner.store().after_op(&mut store, None);
}

/// A bound daemon, ready to [`run`](Daemon::run).
pub struct Daemon {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Create `dir` if needed and listen on `<dir>/dom0.sock`, serving a fresh store.
    pub fn bind(dir: &Path) -> io::Result<Daemon> {
        Daemon::bind_with(dir, LocalStore::new())
    }

    /// Like [`bind`](Daemon::bind), serving an existing in-process store (shared with its
    /// local connections). Every domain the store knows as introduced gets its socket. A store
    /// serves at most one daemon at a time.
    pub fn bind_with(dir: &Path, local: LocalStore) -> io::Result<Daemon> {
        std::fs::create_dir_all(dir)?;
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            local: local.clone(),
            conns: Mutex::new(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            guest_conns: Mutex::new(HashMap::new()),
        });
        let observer: Arc<dyn Observer> = Arc::new(DaemonObserver(Arc::downgrade(&inner)));
        if !local.set_observer(Some(observer)) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "this store is already served by a daemon",
            ));
        }
        let daemon = Daemon { inner };
        for d in local.with_store(|s| s.introduced_domains()) {
            // On error, dropping `daemon` shuts down what was opened.
            daemon.inner.open_listener(d)?;
        }
        Ok(daemon)
    }

    /// Bind and serve in the background; the handle stops the daemon when dropped.
    pub fn spawn(dir: &Path) -> io::Result<DaemonHandle> {
        Ok(Daemon::bind(dir)?.into_handle())
    }

    /// Serve an already bound daemon in the background (it already accepts: the sockets have
    /// their own threads); the handle stops it when dropped.
    pub fn into_handle(self) -> DaemonHandle {
        DaemonHandle { daemon: self }
    }

    /// The store being served.
    pub fn store(&self) -> &LocalStore {
        &self.inner.local
    }

    /// The socket of a domain (whether or not it is introduced).
    pub fn socket_path(&self, domid: DomId) -> PathBuf {
        socket_path(&self.inner.dir, domid)
    }

    /// A handle that can stop this daemon from another thread.
    pub fn control(&self) -> DaemonControl {
        DaemonControl {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Serve until [`DaemonControl::stop`] is called. The accepting and serving happen on
    /// per-socket and per-connection threads; this thread waits for the stop.
    pub fn run(self) {
        let mut threads = Vec::new();
        loop {
            let dom0 = lock(&self.inner.listeners)
                .get_mut(&DomId::DOM0)
                .and_then(|l| l.thread.take());
            match dom0 {
                Some(t) => threads.push(t),
                None => break,
            }
        }
        for t in threads {
            let _ = t.join(); // returns once the dom0 socket stops accepting
        }
        // Dropping `self` shuts the rest down.
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        shutdown(&self.inner);
    }
}

/// Stop everything: listeners, connections, threads; remove the sockets; detach the store.
fn shutdown(inner: &Arc<Inner>) {
    {
        // Under the store lock, so no connection registers after the hang-up below.
        let _store = inner.store().lock();
        inner.stopping.store(true, Ordering::SeqCst);
        for h in lock(&inner.conns).values() {
            let _ = h.stream.shutdown(Shutdown::Both);
        }
    }
    inner.local.set_observer(None);
    let listeners: Vec<Listener> = lock(&inner.listeners).drain().map(|(_, l)| l).collect();
    for l in listeners {
        l.stop();
    }
    let threads: Vec<JoinHandle<()>> = lock(&inner.threads).drain(..).collect();
    for t in threads {
        let _ = t.join();
    }
}

/// Stops a daemon from another thread.
#[derive(Debug, Clone)]
pub struct DaemonControl {
    inner: Weak<Inner>,
}

impl DaemonControl {
    /// Stop the daemon: no new connections, existing ones closed, sockets removed.
    pub fn stop(&self) {
        if let Some(inner) = self.inner.upgrade() {
            shutdown(&inner);
        }
    }
}

/// A daemon serving in the background; dropping it stops the daemon.
#[derive(Debug)]
pub struct DaemonHandle {
    daemon: Daemon,
}

impl DaemonHandle {
    /// The daemon's directory.
    pub fn dir(&self) -> &Path {
        &self.daemon.inner.dir
    }

    /// The socket of a domain (`<dir>/dom<N>.sock`).
    pub fn socket_path(&self, domid: DomId) -> PathBuf {
        self.daemon.socket_path(domid)
    }

    /// The store being served.
    pub fn store(&self) -> &LocalStore {
        self.daemon.store()
    }

    /// Every node path, sorted.
    pub fn paths(&self) -> Vec<String> {
        self.store().paths()
    }

    /// A handle that can stop the daemon from another thread.
    pub fn control(&self) -> DaemonControl {
        self.daemon.control()
    }

    /// Stop the daemon and wait for its threads (dropping the handle does the same).
    pub fn stop(self) {}
}
