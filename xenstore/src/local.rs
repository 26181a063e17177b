//! The in-process store: a [`Store`] behind a mutex, shared by the simulated domains of one
//! process and by unit tests.
//!
//! ```
//! use std::time::Duration;
//! use xenstore::local::LocalStore;
//! use xenstore::{DomId, TxId, XenStore};
//!
//! let store = LocalStore::new();
//! let dom0 = store.connect(DomId(0));
//! let guest = store.connect(DomId(5));
//! // The toolstack gives the guest its home (owned by the guest: "n5").
//! dom0.mkdir(TxId::NONE, "/local/domain/5").unwrap();
//! dom0.set_perms(TxId::NONE, "/local/domain/5", &["n5".parse().unwrap()]).unwrap();
//! dom0.write(TxId::NONE, "/local/domain/5/name", b"guest").unwrap();
//! guest.watch("name", "tok").unwrap();
//! // A new watch fires once at once, with the path as registered.
//! let ev = guest.next_watch_event(Some(Duration::from_secs(5))).unwrap().unwrap();
//! assert_eq!((ev.path.as_str(), ev.token.as_str()), ("name", "tok"));
//! assert_eq!(guest.read(TxId::NONE, "name").unwrap(), b"guest");
//! ```

use crate::store::{ConnId, Effect, Store};
use crate::{DomId, Errno, Perm, Result, TxId, WatchEvent, XenStore, XenstoreError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Something else serving the same store (the daemon) that must hear about watch events for its
/// connections and about domains coming and going. Called with the store locked.
pub(crate) trait Observer: Send + Sync {
    /// These connections gained watch events.
    fn woken(&self, store: &mut Store, conns: &[ConnId]);
    /// A domain was introduced.
    fn introduced(&self, store: &mut Store, domid: DomId);
    /// A domain was released; these were its connections (already closed in the store).
    fn released(&self, store: &mut Store, domid: DomId, conns: &[ConnId]);
}

pub(crate) struct Shared {
    store: Mutex<Store>,
    /// Signalled whenever watch events may have been queued or a connection closed.
    events: Condvar,
    observer: Mutex<Option<Arc<dyn Observer>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the tree half-updated in a way later
        // operations trip over (every mutation is a whole insert/remove), so keep going.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn observer(&self) -> Option<Arc<dyn Observer>> {
        self.observer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Tell the observer about a domain coming or going (store still locked).
    pub(crate) fn apply_effect(&self, store: &mut Store, effect: &Effect) {
        if let Some(obs) = self.observer() {
            match effect {
                Effect::Introduced(d) => obs.introduced(store, *d),
                Effect::Released(d, conns) => obs.released(store, *d, conns),
            }
        }
        self.events.notify_all();
    }

    /// After an operation (store still locked): apply its effect, then hand queued watch events
    /// to the observer and wake the local waiters.
    pub(crate) fn after_op(&self, store: &mut Store, effect: Option<&Effect>) {
        if let Some(effect) = effect {
            self.apply_effect(store, effect);
        }
        let woken = store.take_woken();
        if !woken.is_empty() {
            if let Some(obs) = self.observer() {
                obs.woken(store, &woken);
            }
            self.events.notify_all();
        }
    }
}

/// An in-process xenstore shared by every clone (an `Arc` inside).
#[derive(Debug, Clone)]
pub struct LocalStore {
    shared: Arc<Shared>,
}

impl Default for LocalStore {
    fn default() -> LocalStore {
        LocalStore::new()
    }
}

impl LocalStore {
    /// A store with xenstored's initial tree (`/`, `/local`, `/local/domain`, `/tool`) and dom0
    /// introduced.
    pub fn new() -> LocalStore {
        LocalStore::from_store(Store::new())
    }

    /// Serve an existing store (for instance one built with custom quotas).
    pub fn from_store(store: Store) -> LocalStore {
        LocalStore {
            shared: Arc::new(Shared {
                store: Mutex::new(store),
                events: Condvar::new(),
                observer: Mutex::new(None),
            }),
        }
    }

    #[cfg(feature = "daemon")]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Install (or with `None` remove) the observer; fails if another one is installed.
    #[cfg(feature = "daemon")]
    pub(crate) fn set_observer(&self, observer: Option<Arc<dyn Observer>>) -> bool {
        let mut slot = self
            .shared
            .observer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if observer.is_some() && slot.is_some() {
            return false;
        }
        *slot = observer;
        true
    }

    /// Open a connection as domain `domid`.
    pub fn connect(&self, domid: DomId) -> LocalConnection {
        let id = self.shared.lock().connect(domid);
        LocalConnection {
            shared: Arc::clone(&self.shared),
            id,
            domid,
        }
    }

    /// Introduce a domain, as the toolstack's `INTRODUCE` does: fires `@introduceDomain`.
    /// Introducing a domain twice is harmless (and fires nothing).
    pub fn introduce_domain(&self, domid: DomId) {
        let mut store = self.shared.lock();
        if store.introduce_domain(domid) {
            self.shared
                .after_op(&mut store, Some(&Effect::Introduced(domid)));
        }
    }

    /// Release a domain: fires `@releaseDomain` and closes the domain's connections (their
    /// watches and transactions go; further calls on them fail with `EIO`). Releasing a domain
    /// that is not introduced does nothing.
    pub fn release_domain(&self, domid: DomId) {
        let mut store = self.shared.lock();
        // ENOENT (not introduced) and EINVAL (dom0) leave nothing to do.
        if let Ok(conns) = store.release_domain(domid) {
            self.shared
                .after_op(&mut store, Some(&Effect::Released(domid, conns)));
        }
    }

    /// Whether a domain is introduced.
    pub fn is_domain_introduced(&self, domid: DomId) -> bool {
        self.shared.lock().is_domain_introduced(domid)
    }

    /// Every node path, sorted (for leak checks).
    pub fn paths(&self) -> Vec<String> {
        self.shared.lock().paths()
    }

    /// Run `f` with the store locked (for tests and tools that need more than the trait).
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = self.shared.lock();
        let out = f(&mut store);
        self.shared.after_op(&mut store, None);
        self.shared.events.notify_all();
        out
    }
}

/// One domain's connection to a [`LocalStore`], with its own watches and transactions.
///
/// Dropping it drops its watches and aborts its transactions.
#[derive(Debug)]
pub struct LocalConnection {
    shared: Arc<Shared>,
    id: ConnId,
    domid: DomId,
}

impl LocalConnection {
    /// The domain this connection speaks for.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// Drop every watch and transaction of this connection (`XS_RESET_WATCHES`).
    pub fn reset_watches(&self) -> Result<()> {
        self.run(|s, id| s.reset_watches(id))
    }

    /// Run one store operation and wake the watchers it may have fired.
    fn run<T>(
        &self,
        op: impl FnOnce(&mut Store, ConnId) -> std::result::Result<T, Errno>,
    ) -> Result<T> {
        let mut store = self.shared.lock();
        let out = op(&mut store, self.id);
        self.shared.after_op(&mut store, None);
        out.map_err(XenstoreError::from)
    }
}

impl Drop for LocalConnection {
    fn drop(&mut self) {
        self.shared.lock().disconnect(self.id);
    }
}

impl XenStore for LocalConnection {
    fn read(&self, tx: TxId, path: &str) -> Result<Vec<u8>> {
        self.run(|s, id| s.read(id, tx, path))
    }

    fn write(&self, tx: TxId, path: &str, value: &[u8]) -> Result<()> {
        self.run(|s, id| s.write(id, tx, path, value))
    }

    fn mkdir(&self, tx: TxId, path: &str) -> Result<()> {
        self.run(|s, id| s.mkdir(id, tx, path))
    }

    fn rm(&self, tx: TxId, path: &str) -> Result<()> {
        self.run(|s, id| s.rm(id, tx, path))
    }

    fn directory(&self, tx: TxId, path: &str) -> Result<Vec<String>> {
        self.run(|s, id| s.directory(id, tx, path))
    }

    fn get_perms(&self, tx: TxId, path: &str) -> Result<Vec<Perm>> {
        self.run(|s, id| s.get_perms(id, tx, path))
    }

    fn set_perms(&self, tx: TxId, path: &str, perms: &[Perm]) -> Result<()> {
        self.run(|s, id| s.set_perms(id, tx, path, perms))
    }

    fn transaction_start(&self) -> Result<TxId> {
        self.run(|s, id| s.transaction_start(id))
    }

    fn transaction_end(&self, tx: TxId, commit: bool) -> Result<()> {
        self.run(|s, id| s.transaction_end(id, tx, commit))
    }

    fn watch(&self, path: &str, token: &str) -> Result<()> {
        self.run(|s, id| s.watch(id, path, token))
    }

    fn unwatch(&self, path: &str, token: &str) -> Result<()> {
        self.run(|s, id| s.unwatch(id, path, token))
    }

    fn next_watch_event(&self, timeout: Option<Duration>) -> Result<Option<WatchEvent>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut store = self.shared.lock();
        loop {
            if let Some(event) = store.pop_event(self.id) {
                return Ok(Some(event));
            }
            if !store.is_connected(self.id) {
                return Err(XenstoreError::Errno(Errno::EIO));
            }
            store = match (timeout, deadline) {
                (None, _) | (Some(_), None) => self
                    .shared
                    .events
                    .wait(store)
                    .unwrap_or_else(PoisonError::into_inner),
                (Some(_), Some(deadline)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(None);
                    }
                    self.shared
                        .events
                        .wait_timeout(store, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    fn get_domain_path(&self, domid: DomId) -> Result<String> {
        Ok(self.shared.lock().get_domain_path(domid))
    }
}
