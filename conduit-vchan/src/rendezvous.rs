//! The service rendezvous: how a client in one domain gets a fresh vchan from a listener for a
//! named service in another, any number at once, and how the listener knows who is asking.
//!
//! Keys (L: the listener's domain, C: the client's, S: the service, R: a request id):
//!
//! | path | written by | permissions | meaning |
//! |---|---|---|---|
//! | `/local/domain/L/data/conduit/S` | L (its value: a random id of the listener) | owner L; write for each allowed domain (or for all) | the service is open |
//! | `.../S/R` | C, in one transaction with its permissions (L writes `refused` into it to refuse) | owner C; none for others; read and write for L | a request |
//! | `.../S/R/vchan/{ring-ref,event-channel}` | L (a vchan server for C) | owner L; read for C | the answer: a fresh vchan |
//!
//! The listener learns who asks from the request node's **owner**, as xenstored records it,
//! never from anything the client wrote: xenstored makes an unprivileged creator the owner of
//! what it creates and lets only a privileged domain change an owner. A privileged creator's node
//! would instead inherit its parent's owner (L), so the client always sets the owner to itself in
//! the creating transaction (allowed for the owner, and for a privileged domain), and a request
//! owned by L can only come from L itself or a privileged domain, which is trusted anyway.
//!
//! Clean-up: the client removes its request once connected (or refused, or when it gives up);
//! the listener removes a request when it has been served, when it was refused and its client
//! has not removed it within the request timeout, when it has waited longer than the request
//! timeout, or when its requester's domain is gone (seen through `@releaseDomain` where the
//! listener may watch it, else through the timeout); it drops the answer of a request its
//! client removed without connecting; closing the listener removes the service and every
//! pending request.
//!
//! Any domain the service admits may write into its directory, so it may remove it: the
//! listener then publishes it again, with the requests it is answering, and goes on serving;
//! a client whose request vanished unanswered asks again. Connects keep within their domain's
//! xenstore quotas: [`MAX_CONNECTS_IN_FLIGHT`], [`MAX_TRANSACTIONS`], and retries with a
//! backoff within the connect timeout ([`ConduitError::Limit`] past it).

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vchan::{Address, Backend, RingSizes, State, Vchan, VchanError};
use xen_types::DomId;
use xenstore::{Access, Errno, Perm, TxId, XenStore, XenstoreError};

use crate::error::{ConduitError, Limit, Result};
use crate::throttle::{self, Backoff, StoreOp};

/// The directory of a service in its listener's home.
pub(crate) fn service_dir(listener: DomId, service: &str) -> String {
    format!("/local/domain/{listener}/data/conduit/{service}")
}

/// Which domains may use a service (set through [`crate::ListenOptions::allow`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Allow {
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

/// At most this many vchan connects of one process wait on xenstore at once: from the
/// creation of a service request to the connect to its answer (each holds one watch and one
/// node of its domain meanwhile), or an integer port's wait for its server's keys (a watch).
/// The others wait their turn, first come first served, within their connect timeout; past it
/// they fail with [`ConduitError::Limit`] ([`Limit::ConnectsInFlight`]). A guest may hold 128
/// watches and 1000 nodes (xenstored's defaults): a quarter of its watches at most, whatever
/// the burst, and the rest for its other programs.
pub const MAX_CONNECTS_IN_FLIGHT: usize = 32;

/// At most this many rendezvous transactions of one process are open at once. A guest may
/// hold 10 (xenstored's default, for all its programs together). The requests of one service
/// all add a child to one directory, so concurrent ones conflict with each other (`EAGAIN`)
/// anyway: one at a time is as fast, and leaves the rest of the quota to the others.
pub const MAX_TRANSACTIONS: usize = 1;

/// The value a listener writes into a request it refuses (not allowed, too many pending, or
/// the answer could not be published). The client reads it, reports
/// [`ConduitError::Refused`] and removes the request. A request that vanishes unanswered was
/// not refused: it was lost (its service's directory was removed, and published again, or the
/// listener restarted), and the client asks again.
const REFUSED: &[u8] = b"refused";

/// Ask `listener`'s service for a fresh vchan and connect to it, within `wait`. A store quota
/// or a busy store met on the way, and a request lost to a removed directory, are waited out
/// (with [`Backoff`]) and tried again until then.
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
    let ask = Ask {
        store: &store,
        dir: service_dir(listener, service),
        perms: [
            Perm::new(me, Access::None),
            Perm::new(listener, Access::Both),
        ],
        endpoint,
        deadline,
        wait,
    };
    let mut backoff = Backoff::new();
    let mut collisions = 0;
    loop {
        let Some(place) = throttle::CONNECTS.enter(deadline) else {
            return Err(ask.gave_up(Again::Limit(Limit::ConnectsInFlight)));
        };
        let again = match ask.once(backend, listener) {
            Ok(vchan) => return Ok(vchan),
            Err(Stop::Failed(e)) => return Err(e),
            Err(Stop::Again(again)) => again,
        };
        drop(place);
        let paused = match again {
            // Taken by an earlier request of ours: another id, at once.
            Again::Collision if collisions < 8 => {
                collisions += 1;
                true
            }
            Again::Collision => false,
            // Not published (yet): like a vchan client waiting for its server, look again
            // until the deadline. (A guest cannot watch a directory it may not read.)
            Again::NotPublished if Instant::now() + RETRY < deadline => {
                std::thread::sleep(RETRY);
                true
            }
            Again::NotPublished => false,
            Again::Lost | Again::Limit(_) => backoff.pause(deadline),
        };
        if !paused {
            return Err(ask.gave_up(again));
        }
    }
}

/// Why a request is to be made again.
#[derive(Debug, Clone, Copy)]
enum Again {
    /// The service is not published (yet), or not for this domain.
    NotPublished,
    /// The request id is taken.
    Collision,
    /// The request vanished unanswered, or its answer before we read it: the service's
    /// directory was removed meanwhile (and published again), or the listener restarted.
    Lost,
    /// A store quota or a busy store, or one of this process's bounds.
    Limit(Limit),
}

/// How an attempt stopped short of a connection.
enum Stop {
    Again(Again),
    Failed(ConduitError),
}

/// One client's asking: what every attempt needs.
struct Ask<'a, S> {
    store: &'a S,
    dir: String,
    perms: [Perm; 2],
    endpoint: &'a str,
    deadline: Instant,
    wait: Duration,
}

impl<S: XenStore> Ask<'_, S> {
    /// The error once the deadline has come while a request was to be made again.
    fn gave_up(&self, again: Again) -> ConduitError {
        let endpoint = self.endpoint.to_owned();
        match again {
            Again::NotPublished => ConduitError::NoService { endpoint },
            Again::Collision => ConduitError::Refused { endpoint },
            Again::Lost => self.timed_out(),
            Again::Limit(limit) => ConduitError::Limit {
                endpoint,
                limit,
                seconds: self.wait.as_secs_f64(),
            },
        }
    }

    fn timed_out(&self) -> ConduitError {
        ConduitError::TimedOut {
            endpoint: self.endpoint.to_owned(),
            seconds: self.wait.as_secs_f64(),
        }
    }

    /// A store error met while doing `op` for `what`: a limit to wait out, or a failure.
    fn store_error(&self, op: StoreOp, what: &'static str, e: XenstoreError) -> Stop {
        match throttle::limit_met(op, &e) {
            Some(limit) => Stop::Again(Again::Limit(limit)),
            None => Stop::Failed(xs_error(what, self.endpoint)(e)),
        }
    }

    /// Make a request, wait for its answer, connect to it; the request is removed after.
    fn once<B: Backend>(&self, backend: &B, listener: DomId) -> Result<Vchan<B>, Stop> {
        let node = format!("{}/{}", self.dir, request_id());
        self.create(&node)?;
        let outcome = self.await_answer(&node).and_then(|()| {
            // The answer was there a moment ago; if it has gone (the directory was removed),
            // the listener publishes it again at once, or we ask again.
            let left = self.deadline.saturating_duration_since(Instant::now());
            let wait = left.clamp(Duration::from_millis(100), Duration::from_secs(1));
            match Vchan::client(
                backend,
                listener,
                &Address::Path(format!("{node}/vchan")),
                Some(wait),
            ) {
                Ok(vchan) => Ok(vchan),
                Err(VchanError::NoServer { .. }) if Instant::now() < self.deadline => {
                    Err(Stop::Again(Again::Lost))
                }
                Err(VchanError::Xenstore(e)) => {
                    Err(self.store_error(StoreOp::Watch, "connect to", e))
                }
                Err(e) => Err(Stop::Failed(vchan_error("connect to", self.endpoint)(e))),
            }
        });
        // Served or not, the request has done its job; the listener removes it too.
        let _ = self.store.rm(TxId::NONE, &node);
        outcome
    }

    /// Create the request node with its permissions, in one transaction.
    fn create(&self, node: &str) -> Result<(), Stop> {
        let what = "send a request to";
        let Some(_place) = throttle::TRANSACTIONS.enter(self.deadline) else {
            return Err(Stop::Again(Again::Limit(Limit::Transactions)));
        };
        let store = self.store;
        let tx = store
            .transaction_start()
            .map_err(|e| self.store_error(StoreOp::StartTransaction, what, e))?;
        let body = || -> Result<(), Stop> {
            match store.read(tx, &self.dir) {
                // Published. (A guest usually may not read it: EACCES.)
                Ok(_) | Err(XenstoreError::Errno(Errno::EACCES)) => {}
                Err(XenstoreError::Errno(Errno::ENOENT)) => {
                    return Err(Stop::Again(Again::NotPublished))
                }
                Err(e) => return Err(self.store_error(StoreOp::Watch, what, e)),
            }
            match store.read(tx, node) {
                Err(XenstoreError::Errno(Errno::ENOENT | Errno::EACCES)) => {}
                Err(e) if throttle::limit_met(StoreOp::Watch, &e).is_some() => {
                    return Err(self.store_error(StoreOp::Watch, what, e))
                }
                // Taken (by an earlier request of ours): another id.
                _ => return Err(Stop::Again(Again::Collision)),
            }
            let change = |e: XenstoreError| match e {
                // The directory is missing or not writable for us: no service for us (yet).
                XenstoreError::Errno(Errno::EACCES | Errno::ENOENT) => {
                    Stop::Again(Again::NotPublished)
                }
                e => self.store_error(StoreOp::Change, what, e),
            };
            store.write(tx, node, b"").map_err(change)?;
            store.set_perms(tx, node, &self.perms).map_err(change)
        };
        if let Err(stop) = body() {
            // The body's outcome is the one worth reporting; an abort failure adds nothing.
            let _ = store.transaction_end(tx, false);
            return Err(stop);
        }
        store
            .transaction_end(tx, true)
            .map_err(|e| self.store_error(StoreOp::Change, what, e))
    }

    /// Wait for the listener to publish the vchan under our request (or refuse it).
    fn await_answer(&self, node: &str) -> Result<(), Stop> {
        let what = "wait for an answer from";
        let token = "conduit-request";
        // A watch wakes us when the answer comes. A domain at its watch quota (its other
        // programs hold them) or a busy store: look now and then instead, backing off.
        let watching = match self.store.watch(node, token) {
            Ok(()) => true,
            // The request is ours and readable while it exists; once it is gone, a guest that
            // may not read the service directory gets EACCES rather than ENOENT for it (as
            // from xenstored, which hides what a parent does not show).
            Err(XenstoreError::Errno(Errno::ENOENT | Errno::EACCES)) => {
                return Err(Stop::Again(Again::Lost))
            }
            Err(e) => match throttle::limit_met(StoreOp::Watch, &e) {
                Some(_) => false,
                None => return Err(Stop::Failed(xs_error(what, self.endpoint)(e))),
            },
        };
        let mut looks = Backoff::new();
        let outcome = loop {
            let look = self.look(node);
            match look {
                Ok(Look::Answered) => break Ok(()),
                Ok(Look::Waiting | Look::Busy) => {}
                Err(stop) => break Err(stop),
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(Stop::Failed(self.timed_out()));
            }
            if watching && matches!(look, Ok(Look::Waiting)) {
                if let Err(e) = self.store.next_watch_event(Some(left)) {
                    break Err(Stop::Failed(xs_error(what, self.endpoint)(e)));
                }
            } else if !looks.pause(self.deadline) {
                break Err(Stop::Failed(self.timed_out()));
            }
        };
        if watching {
            let _ = self.store.unwatch(node, token);
        }
        outcome
    }

    /// One look at the request: answered, refused, vanished, or still waiting.
    fn look(&self, node: &str) -> Result<Look, Stop> {
        let what = "wait for an answer from";
        let busy = |e: &XenstoreError| throttle::limit_met(StoreOp::Watch, e).is_some();
        match self.store.read(TxId::NONE, node) {
            Ok(value) if value == REFUSED => {
                return Err(Stop::Failed(ConduitError::Refused {
                    endpoint: self.endpoint.to_owned(),
                }))
            }
            Ok(_) => {}
            Err(XenstoreError::Errno(Errno::ENOENT | Errno::EACCES)) => {
                return Err(Stop::Again(Again::Lost))
            }
            Err(e) if busy(&e) => return Ok(Look::Busy),
            Err(e) => return Err(Stop::Failed(xs_error(what, self.endpoint)(e))),
        }
        match self
            .store
            .read(TxId::NONE, &format!("{node}/vchan/event-channel"))
        {
            Ok(_) => Ok(Look::Answered),
            Err(XenstoreError::Errno(Errno::ENOENT | Errno::EACCES)) => Ok(Look::Waiting),
            Err(e) if busy(&e) => Ok(Look::Busy),
            Err(e) => Err(Stop::Failed(xs_error(what, self.endpoint)(e))),
        }
    }
}

/// What one look at a request found.
#[derive(Debug, Clone, Copy)]
enum Look {
    /// The answer's keys are there.
    Answered,
    /// Not yet.
    Waiting,
    /// The store said it was busy: look again after a pause.
    Busy,
}

/// How a listener for a service behaves (set through [`crate::ListenOptions`]).
#[derive(Debug, Clone)]
pub(crate) struct ServiceOptions {
    /// Who may connect.
    pub(crate) allow: Allow,
    /// The most requests waiting for their client at once; more are refused.
    pub(crate) max_pending: usize,
    /// How long a request may wait for its client to connect before it is dropped.
    pub(crate) request_timeout: Duration,
    /// The ring sizes of each connection.
    pub(crate) sizes: RingSizes,
    /// Where errors the listener recovered from go.
    pub(crate) recovered: Recovered,
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
            recovered: Recovered::default(),
        }
    }
}

/// A program's function that reports an error (writes a line, say).
pub(crate) type Report = dyn Fn(&ConduitError) + Send + Sync;

/// The program's function for errors a listener recovered from (none: they are dropped).
#[derive(Clone, Default)]
pub(crate) struct Recovered(pub(crate) Option<Arc<Report>>);

impl Recovered {
    fn report(&self, e: &ConduitError) {
        if let Some(report) = &self.0 {
            report(e);
        }
    }
}

impl std::fmt::Debug for Recovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

/// The first restoration of a service's directory is reported at once; later ones within this
/// interval of a report are counted and reported together when it has passed, so a domain
/// that removes the directory in a loop cannot flood the program's log.
pub const RESTORE_REPORT_INTERVAL: Duration = Duration::from_secs(10);

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
    let token = request_id().into_bytes();
    let published = store.transaction(|tx| match store.read(tx, &dir) {
        Ok(_) => Ok(false),
        Err(XenstoreError::Errno(Errno::ENOENT)) => {
            store.write(tx, &dir, &token)?;
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
                me,
                dir,
                token,
                perms,
                options,
                endpoint,
                pending: BTreeMap::new(),
                refused: BTreeMap::new(),
                release_watch,
                restorations: Restorations::default(),
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
    /// The answer's keys as published (`ring-ref`, `event-channel`), to publish them again if
    /// they are removed before the client has read them. None if they were gone before the
    /// listener could read them back: the client was faster, connected and removed its request.
    keys: Option<[(&'static str, Vec<u8>); 2]>,
}

/// A store error met by a listener's writes that is this domain's quota (its other programs
/// hold it) or a busy store: worth trying again at the next round rather than giving up.
fn store_limit(e: &XenstoreError) -> bool {
    [StoreOp::StartTransaction, StoreOp::Change]
        .into_iter()
        .any(|op| throttle::limit_met(op, e).is_some())
}

/// What to do with a new request.
enum Answer<B: Backend> {
    /// Answered: wait for its client. (Boxed: a vchan endpoint is hundreds of bytes.)
    Serve(Box<Pending<B>>),
    /// Refuse it.
    Refuse,
    /// Take it again at the next round (a store quota or a busy store).
    Later,
}

/// What [`Service::list`] found.
enum Listing {
    /// The directory as we published it, and its requests.
    Ours(BTreeSet<String>),
    /// Its requests, not checked (the domain was at its transaction quota).
    Unchecked(BTreeSet<String>),
    /// Removed, or created again by someone else: see [`Service::keep_published`].
    Altered,
}

/// What [`Service::keep_published`] found.
enum Kept {
    /// The directory as published.
    Intact,
    /// Removed or altered, and published again.
    Restored,
    /// Published by another listener.
    TakenOver,
}

/// The service's directory published again, and what has not been reported yet.
#[derive(Default)]
struct Restorations {
    /// Restorations since the last report.
    unreported: u32,
    last_report: Option<Instant>,
}

struct Service<B: Backend, S> {
    backend: B,
    store: S,
    me: DomId,
    dir: String,
    /// The directory's value: a random id of this listener, so that it knows its own.
    token: Vec<u8>,
    /// The directory's permissions, as published.
    perms: Vec<Perm>,
    options: ServiceOptions,
    endpoint: String,
    /// Requests answered and waiting for their client, by request id.
    pending: BTreeMap<String, Pending<B>>,
    /// Requests refused, by request id, with when: each is marked [`REFUSED`] for its client to
    /// read and remove (or removed here after the request timeout), and never answered twice.
    refused: BTreeMap<String, Instant>,
    release_watch: bool,
    restorations: Restorations,
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
            match &event {
                Some(e) if e.token == "conduit-release" => self.forget_dead_requesters(),
                // The directory itself changed: removed, or written by someone else.
                Some(e) if e.path == self.dir => self.keep_published()?,
                _ => {}
            }
            self.take_new_requests()?;
            self.report_restorations();
            if !self.deliver(sink) {
                return Ok(());
            }
        }
    }

    /// Answer every request not seen before (or refuse it); drop the answers whose client
    /// removed its request without connecting (it gave up, or asks again).
    fn take_new_requests(&mut self) -> Result<()> {
        let (children, ours) = match self.list()? {
            Listing::Altered => return self.keep_published(),
            Listing::Ours(children) => (children, true),
            Listing::Unchecked(children) => (children, false),
        };
        if ours {
            // A client removes its request only once connected, or when it gives up. Only
            // from a listing of our own directory (one created again by a write of ours after
            // a removal lacks requests still waiting), and only requests we publish again
            // after a removal (one whose keys we could not read back may be gone with the
            // directory while its client connects).
            let abandoned: Vec<String> = self
                .pending
                .iter()
                .filter(|(id, p)| {
                    !children.contains(*id)
                        && p.keys.is_some()
                        && matches!(p.server.state(), Ok(State::WaitingForPeer))
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in abandoned {
                self.pending.remove(&id);
            }
        }
        let timeout = self.options.request_timeout;
        let dir = &self.dir;
        let store = &self.store;
        self.refused.retain(|id, since| {
            let keep = children.contains(id) && since.elapsed() <= timeout;
            if !keep {
                let _ = store.rm(TxId::NONE, &format!("{dir}/{id}"));
            }
            keep
        });
        for id in children {
            if self.pending.contains_key(&id) || self.refused.contains_key(&id) {
                continue;
            }
            let node = format!("{}/{id}", self.dir);
            let answer = match self.store.get_perms(TxId::NONE, &node) {
                // Gone already: its client gave up.
                Err(XenstoreError::Errno(Errno::ENOENT)) => continue,
                Ok(perms) => match perms.first().map(|p| p.domid) {
                    Some(domid)
                        if self.options.allow.allows(domid)
                            && self.pending.len() < self.options.max_pending =>
                    {
                        self.answer(&node, domid)
                    }
                    _ => Answer::Refuse,
                },
                Err(e) if throttle::limit_met(StoreOp::Watch, &e).is_some() => Answer::Later,
                Err(_) => Answer::Refuse,
            };
            match answer {
                Answer::Serve(pending) => {
                    self.pending.insert(id, *pending);
                }
                // This domain's store quota (its other programs) or a busy store: the request
                // stays unseen, and is taken again at the next round.
                Answer::Later => {}
                Answer::Refuse => {
                    // Not allowed, too many, or the answer could not be published: say so in
                    // the request (its client reads it and removes it). A request we cannot
                    // even mark is removed: its client sees it vanish and asks again.
                    if self.store.write(TxId::NONE, &node, REFUSED).is_err() {
                        let _ = self.store.rm(TxId::NONE, &node);
                    }
                    self.refused.insert(id, Instant::now());
                }
            }
        }
        Ok(())
    }

    /// The requests in the directory, and whether the directory is as we published it: its
    /// value and its children read in one transaction (then abandoned: it only reads), so one
    /// state of the node. A domain at its transaction quota lists without the check.
    fn list(&self) -> Result<Listing> {
        let store = &self.store;
        let failed = |e| xs_error("list the requests of", &self.endpoint)(e);
        let tx = match store.transaction_start() {
            Ok(tx) => tx,
            Err(e) if throttle::limit_met(StoreOp::StartTransaction, &e).is_some() => {
                return match store.directory(TxId::NONE, &self.dir) {
                    Ok(children) => Ok(Listing::Unchecked(children.into_iter().collect())),
                    Err(XenstoreError::Errno(Errno::ENOENT)) => Ok(Listing::Altered),
                    Err(e) => Err(failed(e)),
                };
            }
            Err(e) => return Err(failed(e)),
        };
        let value = store.read(tx, &self.dir);
        let children = store.directory(tx, &self.dir);
        let _ = store.transaction_end(tx, false);
        match (value, children) {
            (Ok(value), Ok(children)) if value == self.token => {
                Ok(Listing::Ours(children.into_iter().collect()))
            }
            (Ok(_), Ok(_)) | (Err(XenstoreError::Errno(Errno::ENOENT)), _) => Ok(Listing::Altered),
            (Err(e), _) | (_, Err(e)) => Err(failed(e)),
        }
    }

    /// Publish a fresh vchan server for `requester` under its request `node`, and read back
    /// the keys it published.
    fn answer(&self, node: &str, requester: DomId) -> Answer<B> {
        let path = format!("{node}/vchan");
        let server = match Vchan::server(
            &self.backend,
            requester,
            &Address::Path(path.clone()),
            self.options.sizes,
        ) {
            Ok(server) => server,
            Err(VchanError::Xenstore(e)) if store_limit(&e) => return Answer::Later,
            Err(_) => return Answer::Refuse,
        };
        let key = |name: &'static str| {
            self.store
                .read(TxId::NONE, &format!("{path}/{name}"))
                .ok()
                .map(|value| (name, value))
        };
        let keys = key("ring-ref")
            .zip(key("event-channel"))
            .map(|(r, e)| [r, e]);
        Answer::Serve(Box::new(Pending {
            requester,
            server,
            since: Instant::now(),
            keys,
        }))
    }

    /// See that the service's directory is as published, and publish it again if not. A
    /// domain the service admits may write into it, so it may remove it (or someone did by
    /// hand); and a write of ours under it after a removal (a vchan server publishing an
    /// answer, a refusal) creates it again with its parent's permissions, which admit nobody.
    /// Then: the directory with its value and permissions, and every request still waiting for
    /// its client (their answers' keys as before: the servers are still waiting), in one
    /// transaction; go on serving. Stop only if it cannot be written, or another listener has
    /// published the service meanwhile (its value is not ours).
    fn keep_published(&mut self) -> Result<()> {
        let store = &self.store;
        let outcome = store.transaction(|tx| {
            match store.read(tx, &self.dir) {
                Ok(value) if value == self.token => {
                    if store.get_perms(tx, &self.dir)? == self.perms {
                        return Ok(Kept::Intact);
                    }
                }
                // Created again by a write of ours under it.
                Ok(value) if value.is_empty() => {}
                Ok(_) => return Ok(Kept::TakenOver),
                Err(XenstoreError::Errno(Errno::ENOENT)) => {}
                Err(e) => return Err(e),
            }
            store.write(tx, &self.dir, &self.token)?;
            store.set_perms(tx, &self.dir, &self.perms)?;
            for (id, pending) in &self.pending {
                let Some(keys) = &pending.keys else {
                    // Its client has connected (and is delivered next), or asks again.
                    continue;
                };
                // Owned by the listener (only a privileged domain may give a node away), its
                // client may read and remove it, as it may its own.
                let node = format!("{}/{id}", self.dir);
                store.write(tx, &node, b"")?;
                store.set_perms(
                    tx,
                    &node,
                    &[
                        Perm::new(self.me, Access::None),
                        Perm::new(pending.requester, Access::Both),
                    ],
                )?;
                // As the vchan server published them.
                let key_perms = [
                    Perm::new(self.me, Access::None),
                    Perm::new(pending.requester, Access::Read),
                ];
                for (name, value) in keys {
                    let key = format!("{node}/vchan/{name}");
                    store.write(tx, &key, value)?;
                    store.set_perms(tx, &key, &key_perms)?;
                }
            }
            Ok(Kept::Restored)
        });
        match outcome {
            Ok(Kept::Intact) => Ok(()),
            Ok(Kept::Restored) => {
                // Refused requests went with the directory; their clients ask again.
                self.refused.clear();
                self.restorations.unreported = self.restorations.unreported.saturating_add(1);
                self.report_restorations();
                Ok(())
            }
            Ok(Kept::TakenOver) => Err(ConduitError::ListenerStopped {
                endpoint: self.endpoint.clone(),
                reason: "its service directory was removed, and published again by another \
                         listener"
                    .to_owned(),
            }),
            // The next round lists the directory, finds it altered and tries again.
            Err(e) if store_limit(&e) => Ok(()),
            Err(e) => Err(xs_error(
                "publish again the removed directory of",
                &self.endpoint,
            )(e)),
        }
    }

    /// Report the restorations not reported yet, unless one was reported less than
    /// [`RESTORE_REPORT_INTERVAL`] ago.
    fn report_restorations(&mut self) {
        let r = &mut self.restorations;
        let due = r
            .last_report
            .is_none_or(|last| last.elapsed() >= RESTORE_REPORT_INTERVAL);
        if r.unreported == 0 || !due {
            return;
        }
        self.options
            .recovered
            .report(&ConduitError::ServiceRestored {
                endpoint: self.endpoint.clone(),
                times: r.unreported,
            });
        r.unreported = 0;
        r.last_report = Some(Instant::now());
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
