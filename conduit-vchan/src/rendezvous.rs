//! The service rendezvous: how a client in one domain gets a fresh vchan from a listener for a
//! named service in another, any number at once, and how the listener knows who is asking.
//!
//! Keys (L: the listener's domain, C: the client's, S: the service, R: a request id):
//!
//! | path | written by | permissions | meaning |
//! |---|---|---|---|
//! | `/local/domain/L/data/conduit/S` | L | owner L; write for each allowed domain (or for all) | the service is open |
//! | `.../S/R` | C, in one transaction with its permissions | owner C; none for others; read and write for L | a request |
//! | `.../S/R/vchan/{ring-ref,event-channel}` | L (a vchan server for C) | owner L; read for C | the answer: a fresh vchan |
//!
//! The listener learns who asks from the request node's **owner**, as xenstored records it,
//! never from anything the client wrote: xenstored makes an unprivileged creator the owner of
//! what it creates and lets only a privileged domain change an owner. A privileged creator's node
//! would instead inherit its parent's owner (L), so the client always sets the owner to itself in
//! the creating transaction (allowed for the owner, and for a privileged domain), and a request
//! owned by L can only come from L itself or a privileged domain, which is trusted anyway.
//!
//! Clean-up: the client removes its request once connected (or when it gives up); the listener
//! removes a request when it has been served, refused (policy or too many pending), has waited
//! longer than the request timeout, or its requester's domain is gone (seen through
//! `@releaseDomain` where the listener may watch it, else through the timeout); closing the
//! listener removes the service and every pending request.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vchan::{Address, Backend, RingSizes, State, Vchan};
use xen_types::DomId;
use xenstore::{Access, Errno, Perm, TxId, XenStore, XenstoreError};

use crate::error::{ConduitError, Result};

/// The directory of a service in its listener's home.
pub(crate) fn service_dir(listener: DomId, service: &str) -> String {
    format!("/local/domain/{listener}/data/conduit/{service}")
}

/// Which domains may use a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    /// Any domain.
    Any,
    /// Only these.
    Domains(Vec<DomId>),
}

impl Allow {
    fn allows(&self, domid: DomId) -> bool {
        match self {
            Allow::Any => true,
            Allow::Domains(list) => list.contains(&domid),
        }
    }
}

pub(crate) fn xs_error<'a>(
    op: &'static str,
    endpoint: &'a str,
) -> impl FnOnce(XenstoreError) -> ConduitError + 'a {
    move |source| ConduitError::Xenstore {
        op,
        endpoint: endpoint.to_owned(),
        source,
    }
}

pub(crate) fn vchan_error<'a>(
    op: &'static str,
    endpoint: &'a str,
) -> impl FnOnce(vchan::VchanError) -> ConduitError + 'a {
    move |source| ConduitError::Vchan {
        op,
        endpoint: endpoint.to_owned(),
        source,
    }
}

/// This domain's id, from the store's relative `domid` key.
pub(crate) fn own_domid<S: XenStore>(store: &S, endpoint: &str) -> Result<DomId> {
    let raw = store
        .read(TxId::NONE, "domid")
        .map_err(xs_error("learn this domain's id for", endpoint))?;
    String::from_utf8_lossy(&raw)
        .trim()
        .parse()
        .map_err(|_| ConduitError::Xenstore {
            op: "learn this domain's id for",
            endpoint: endpoint.to_owned(),
            source: XenstoreError::Errno(Errno::EINVAL),
        })
}

/// The id of the domain the toolstack named `name` (`/local/domain/<id>/name`).
pub(crate) fn resolve_name<S: XenStore>(store: &S, name: &str) -> Result<DomId> {
    let not_found = || ConduitError::NoSuchDomain {
        name: name.to_owned(),
    };
    let ids = store
        .directory(TxId::NONE, "/local/domain")
        .map_err(|_| not_found())?;
    for id in ids {
        let Ok(domid) = id.parse::<DomId>() else {
            continue;
        };
        if let Ok(value) = store.read(TxId::NONE, &format!("/local/domain/{id}/name")) {
            if value == name.as_bytes() {
                return Ok(domid);
            }
        }
    }
    Err(not_found())
}

/// How often a client looks again for a service that is not published yet.
const RETRY: Duration = Duration::from_millis(50);

/// Wait up to `wait` for a server at `server`'s integer `port` for this domain: its
/// `event-channel` key, the last it publishes, readable at the conventional path.
pub(crate) fn await_port_keys<B: Backend>(
    backend: &B,
    server: DomId,
    port: u32,
    wait: Duration,
    endpoint: &str,
) -> Result<()> {
    let deadline = Instant::now() + wait;
    let store = backend
        .open_store()
        .map_err(xs_error("open xenstore for", endpoint))?;
    let me = own_domid(&store, endpoint)?;
    let key = format!(
        "{}/event-channel",
        Address::Port(port).client_path(server, me)
    );
    loop {
        match store.read(TxId::NONE, &key) {
            Ok(_) => return Ok(()),
            Err(XenstoreError::Errno(Errno::ENOENT | Errno::EACCES)) => {}
            Err(e) => return Err(xs_error("look up", endpoint)(e)),
        }
        if Instant::now() + RETRY >= deadline {
            return Err(ConduitError::TimedOut {
                endpoint: endpoint.to_owned(),
                seconds: wait.as_secs_f64(),
            });
        }
        std::thread::sleep(RETRY);
    }
}

/// A request id: unique enough that two live requests never collide (a collision is retried).
fn request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// Ask `listener`'s service for a fresh vchan and connect to it, within `wait`.
pub(crate) fn request<B: Backend>(
    backend: &B,
    listener: DomId,
    service: &str,
    wait: Duration,
    endpoint: &str,
) -> Result<Vchan<B>> {
    let deadline = Instant::now() + wait;
    let store = backend
        .open_store()
        .map_err(xs_error("open xenstore for", endpoint))?;
    let me = own_domid(&store, endpoint)?;
    let dir = service_dir(listener, service);
    let perms = [
        Perm::new(me, Access::None),
        Perm::new(listener, Access::Both),
    ];
    let mut attempts = 0;
    let node = loop {
        attempts += 1;
        let id = request_id();
        let node = format!("{dir}/{id}");
        let created = store.transaction(|tx| {
            match store.read(tx, &dir) {
                // Published. (A guest usually may not read it: EACCES, below.)
                Ok(_) => {}
                Err(XenstoreError::Errno(Errno::ENOENT)) => {
                    return Ok(Err(ConduitError::NoService {
                        endpoint: endpoint.to_owned(),
                    }))
                }
                Err(XenstoreError::Errno(Errno::EACCES)) => {}
                Err(e) => return Err(e),
            }
            match store.read(tx, &node) {
                Err(XenstoreError::Errno(Errno::ENOENT | Errno::EACCES)) => {}
                // Taken (by an earlier request of ours): another id.
                _ => return Ok(Ok(false)),
            }
            store.write(tx, &node, b"")?;
            store.set_perms(tx, &node, &perms)?;
            Ok(Ok(true))
        });
        match created {
            Ok(Ok(true)) => break node,
            Ok(Ok(false)) if attempts < 8 => continue,
            // Not published (yet): like a vchan client waiting for its server, look again
            // until the deadline. (A guest cannot watch a directory it may not read.)
            Ok(Err(ConduitError::NoService { .. }))
            | Err(XenstoreError::Errno(Errno::EACCES | Errno::ENOENT))
                if Instant::now() + RETRY < deadline =>
            {
                std::thread::sleep(RETRY);
                continue;
            }
            Ok(Ok(false)) => {
                return Err(ConduitError::Refused {
                    endpoint: endpoint.to_owned(),
                })
            }
            Ok(Err(e)) => return Err(e),
            // The service directory is missing or not writable for us: no service for us.
            Err(XenstoreError::Errno(Errno::EACCES | Errno::ENOENT)) => {
                return Err(ConduitError::NoService {
                    endpoint: endpoint.to_owned(),
                })
            }
            Err(e) => return Err(xs_error("send a request to", endpoint)(e)),
        }
    };
    let outcome = await_answer(&store, backend, listener, &node, deadline, wait, endpoint);
    // Served or not, the request has done its job; the listener removes it too.
    let _ = store.rm(TxId::NONE, &node);
    outcome
}

/// Wait for the listener to publish the vchan under our request, then connect to it.
fn await_answer<B: Backend, S: XenStore>(
    store: &S,
    backend: &B,
    listener: DomId,
    node: &str,
    deadline: Instant,
    wait: Duration,
    endpoint: &str,
) -> Result<Vchan<B>> {
    let token = "conduit-request";
    // The request is ours and readable while it exists; once the listener removed it, a guest
    // that may not read the service directory gets EACCES rather than ENOENT for it (as from
    // xenstored, which hides what a parent does not show): both mean "refused".
    let refused = || ConduitError::Refused {
        endpoint: endpoint.to_owned(),
    };
    match store.watch(node, token) {
        Ok(()) => {}
        Err(XenstoreError::Errno(Errno::ENOENT | Errno::EACCES)) => return Err(refused()),
        Err(e) => return Err(xs_error("wait for an answer from", endpoint)(e)),
    }
    let answered = loop {
        match store.read(TxId::NONE, node) {
            Ok(_) => {}
            Err(XenstoreError::Errno(Errno::ENOENT | Errno::EACCES)) => {
                break Err(ConduitError::Refused {
                    endpoint: endpoint.to_owned(),
                })
            }
            Err(e) => break Err(xs_error("wait for an answer from", endpoint)(e)),
        }
        match store.read(TxId::NONE, &format!("{node}/vchan/event-channel")) {
            Ok(_) => break Ok(()),
            Err(XenstoreError::Errno(Errno::ENOENT | Errno::EACCES)) => {}
            Err(e) => break Err(xs_error("wait for an answer from", endpoint)(e)),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(ConduitError::TimedOut {
                endpoint: endpoint.to_owned(),
                seconds: wait.as_secs_f64(),
            });
        }
        if let Err(e) = store.next_watch_event(Some(left)) {
            break Err(xs_error("wait for an answer from", endpoint)(e));
        }
    };
    let _ = store.unwatch(node, token);
    answered?;
    let left = deadline.saturating_duration_since(Instant::now());
    Vchan::client(
        backend,
        listener,
        &Address::Path(format!("{node}/vchan")),
        Some(left.max(Duration::from_millis(100))),
    )
    .map_err(vchan_error("connect to", endpoint))
}

/// How a listener for a service behaves.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Who may connect.
    pub allow: Allow,
    /// The most requests waiting for their client at once; more are refused.
    pub max_pending: usize,
    /// How long a request may wait for its client to connect before it is dropped.
    pub request_timeout: Duration,
    /// The ring sizes of each connection.
    pub sizes: RingSizes,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            allow: Allow::Any,
            max_pending: 128,
            request_timeout: Duration::from_secs(10),
            sizes: RingSizes {
                server_read: 64 * 1024,
                server_write: 64 * 1024,
            },
        }
    }
}

/// A connection the rendezvous established, and who is on the other end.
pub(crate) type Accepted<B> = (Vchan<B>, DomId);

/// Publish `service` and serve requests on a thread of its own, handing each connected vchan to
/// `sink` (which returns false once nobody accepts any more). Returns once the service is
/// published, with the flag that stops the thread.
pub(crate) fn serve<B>(
    backend: B,
    service: String,
    options: ServiceOptions,
    endpoint: String,
    mut sink: impl FnMut(Result<Accepted<B>>) -> bool + Send + 'static,
) -> Result<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>
where
    B: Backend + Send + 'static,
    Vchan<B>: Send,
{
    let store = backend
        .open_store()
        .map_err(xs_error("open xenstore for", &endpoint))?;
    let me = own_domid(&store, &endpoint)?;
    let dir = service_dir(me, &service);
    let mut perms = match &options.allow {
        Allow::Any => vec![Perm::new(me, Access::Write)],
        Allow::Domains(list) => {
            let mut p = vec![Perm::new(me, Access::None)];
            p.extend(list.iter().map(|&d| Perm::new(d, Access::Write)));
            p
        }
    };
    perms.dedup();
    let published = store.transaction(|tx| match store.read(tx, &dir) {
        Ok(_) => Ok(false),
        Err(XenstoreError::Errno(Errno::ENOENT)) => {
            store.write(tx, &dir, b"")?;
            store.set_perms(tx, &dir, &perms)?;
            Ok(true)
        }
        Err(e) => Err(e),
    });
    match published {
        Ok(true) => {}
        Ok(false) => return Err(ConduitError::InUse { endpoint }),
        Err(e) => return Err(xs_error("publish", &endpoint)(e)),
    }
    if let Err(e) = store.watch(&dir, "conduit-service") {
        let _ = store.rm(TxId::NONE, &dir);
        return Err(xs_error("watch", &endpoint)(e));
    }
    // Only a privileged listener may watch this; others rely on the request timeout.
    let release_watch = store.watch("@releaseDomain", "conduit-release").is_ok();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name(format!("conduit {service}"))
        .spawn(move || {
            let mut state = Service {
                backend,
                store,
                dir,
                options,
                endpoint,
                pending: BTreeMap::new(),
                refused: Default::default(),
                release_watch,
            };
            let outcome = state.run(&stopping, &mut sink);
            state.shut();
            if let Err(e) = outcome {
                sink(Err(e));
            }
        })
        .map_err(|source| ConduitError::Io {
            op: "start the rendezvous of",
            endpoint: String::new(),
            source,
        })?;
    Ok((stop, thread))
}

/// How often the rendezvous thread looks at timeouts and the stop flag when nothing happens.
const TICK: Duration = Duration::from_millis(50);

struct Pending<B: Backend> {
    requester: DomId,
    server: Vchan<B>,
    since: Instant,
}

struct Service<B: Backend, S> {
    backend: B,
    store: S,
    dir: String,
    options: ServiceOptions,
    endpoint: String,
    /// Requests answered and waiting for their client, by request id.
    pending: BTreeMap<String, Pending<B>>,
    /// Requests refused, whose removal the client may not have seen yet (not answered twice).
    refused: std::collections::BTreeSet<String>,
    release_watch: bool,
}

impl<B: Backend, S: XenStore> Service<B, S> {
    fn run(
        &mut self,
        stop: &AtomicBool,
        sink: &mut impl FnMut(Result<Accepted<B>>) -> bool,
    ) -> Result<()> {
        loop {
            // ORDERING: Relaxed: the flag carries no data; the thread only has to stop soon.
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let event = self
                .store
                .next_watch_event(Some(TICK))
                .map_err(xs_error("watch", &self.endpoint))?;
            if event.as_ref().is_some_and(|e| e.token == "conduit-release") {
                self.forget_dead_requesters();
            }
            self.take_new_requests()?;
            if !self.deliver(sink) {
                return Ok(());
            }
        }
    }

    /// Answer every request not seen before (or refuse it).
    fn take_new_requests(&mut self) -> Result<()> {
        let children = match self.store.directory(TxId::NONE, &self.dir) {
            Ok(children) => children,
            Err(XenstoreError::Errno(Errno::ENOENT)) => {
                return Err(ConduitError::ListenerStopped {
                    endpoint: self.endpoint.clone(),
                    reason: "its service directory was removed".to_owned(),
                })
            }
            Err(e) => return Err(xs_error("list the requests of", &self.endpoint)(e)),
        };
        self.refused.retain(|id| children.contains(id));
        for id in children {
            if self.pending.contains_key(&id) || self.refused.contains(&id) {
                continue;
            }
            let node = format!("{}/{id}", self.dir);
            let requester = match self.store.get_perms(TxId::NONE, &node) {
                Ok(perms) => perms.first().map(|p| p.domid),
                Err(_) => None,
            };
            let server = match requester {
                Some(domid)
                    if self.options.allow.allows(domid)
                        && self.pending.len() < self.options.max_pending =>
                {
                    Vchan::server(
                        &self.backend,
                        domid,
                        &Address::Path(format!("{node}/vchan")),
                        self.options.sizes,
                    )
                    .ok()
                    .map(|server| (domid, server))
                }
                _ => None,
            };
            match server {
                Some((requester, server)) => {
                    self.pending.insert(
                        id,
                        Pending {
                            requester,
                            server,
                            since: Instant::now(),
                        },
                    );
                }
                None => {
                    // Not allowed, too many, or the answer could not be published: say so by
                    // removing the request (the client sees it vanish).
                    let _ = self.store.rm(TxId::NONE, &node);
                    self.refused.insert(id);
                }
            }
        }
        Ok(())
    }

    /// Hand over the connected, drop the abandoned and the late. False once `sink` refuses.
    fn deliver(&mut self, sink: &mut impl FnMut(Result<Accepted<B>>) -> bool) -> bool {
        let ids: Vec<String> = self.pending.keys().cloned().collect();
        for id in ids {
            let node = format!("{}/{id}", self.dir);
            let Some(entry) = self.pending.get(&id) else {
                continue;
            };
            let state = entry.server.state();
            let expired = entry.since.elapsed() > self.options.request_timeout;
            match state {
                Ok(State::Connected) | Ok(State::PeerClosed) => {
                    let entry = self.pending.remove(&id).expect("present");
                    let _ = self.store.rm(TxId::NONE, &node);
                    // A client that connected and closed at once still counts: it may have
                    // written before closing.
                    if !sink(Ok((entry.server, entry.requester))) {
                        return false;
                    }
                }
                Ok(State::WaitingForPeer) if !expired => {}
                _ => {
                    // Timed out, or the peer scribbled its live byte: drop it.
                    self.pending.remove(&id);
                    let _ = self.store.rm(TxId::NONE, &node);
                }
            }
        }
        true
    }

    /// After `@releaseDomain`: drop requests whose domain is gone (its home was removed).
    fn forget_dead_requesters(&mut self) {
        if !self.release_watch {
            return;
        }
        let gone: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                matches!(
                    self.store
                        .read(TxId::NONE, &format!("/local/domain/{}", p.requester)),
                    Err(XenstoreError::Errno(Errno::ENOENT))
                )
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.pending.remove(&id);
            let _ = self.store.rm(TxId::NONE, &format!("{}/{id}", self.dir));
        }
    }

    /// Close every pending server and remove the service.
    fn shut(&mut self) {
        self.pending.clear();
        let _ = self.store.unwatch(&self.dir, "conduit-service");
        if self.release_watch {
            let _ = self.store.unwatch("@releaseDomain", "conduit-release");
        }
        let _ = self.store.rm(TxId::NONE, &self.dir);
    }
}
