//! An in-process simulation of event channels between simulated domains.
//!
//! A [`SimEventHub`] plays the hypervisor: it owns every port of every simulated domain. Each
//! [`SimEvtchn`] handle plays `/dev/xen/evtchn` for one domain: it owns the ports it bound, queues
//! delivered events, and exposes an eventfd that is readable while its queue is not empty.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::{DomId, EventChannel, Port};

/// The highest port number the simulation hands out (Xen's 2-level ABI limit, less one).
const MAX_PORT: u32 = 4095;

/// The simulated hypervisor's event-channel table, shared by every handle opened from it.
#[derive(Clone, Default)]
pub struct SimEventHub {
    inner: Arc<Mutex<HubState>>,
}

#[derive(Default)]
struct HubState {
    ports: HashMap<(DomId, Port), PortEntry>,
}

struct PortEntry {
    owner: Arc<HandleQueue>,
    binding: Binding,
    /// An event arrived while the port was masked: deliver it on unmask.
    pending: bool,
    masked: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Binding {
    /// Waiting for `remote` to bind to it.
    Unbound { remote: DomId },
    /// Connected to `remote`'s `port`.
    Interdomain { remote: DomId, port: Port },
}

/// The delivery queue of one handle, and the eventfd that mirrors whether it is empty.
struct HandleQueue {
    id: u64,
    domid: DomId,
    queue: Mutex<VecDeque<Port>>,
    eventfd: File,
}

impl HandleQueue {
    /// Queue `port` and make the fd readable.
    fn deliver(&self, port: Port) {
        let mut queue = lock(&self.queue);
        if queue.is_empty() {
            // An eventfd write only fails on counter overflow, impossible with one unit queued.
            let _ = (&self.eventfd).write(&1u64.to_ne_bytes());
        }
        queue.push_back(port);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these tables half-updated in a way that matters
    // more than losing the whole simulation: keep going.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SimEventHub {
    /// An empty hub: no domain has any port.
    pub fn new() -> SimEventHub {
        SimEventHub::default()
    }

    /// Open an event-channel handle for `domid` (as that domain's `/dev/xen/evtchn`).
    pub fn open(&self, domid: DomId) -> io::Result<SimEvtchn> {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let queue = Arc::new(HandleQueue {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            domid,
            queue: Mutex::new(VecDeque::new()),
            eventfd: new_eventfd()?,
        });
        Ok(SimEvtchn {
            hub: self.clone(),
            queue,
        })
    }

    /// Send an event on `domid`'s `port` as that domain's kernel would (for unmap notifications).
    /// An unbound or unconnected port is ignored, as the hypervisor does.
    pub fn notify_from(&self, domid: DomId, port: Port) -> io::Result<()> {
        let mut state = lock(&self.inner);
        let Some(entry) = state.ports.get(&(domid, port)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        if let Binding::Interdomain { remote, port } = entry.binding {
            state.raise(remote, port);
        }
        Ok(())
    }

    /// How many ports are bound, over all domains (for leak checks).
    pub fn bound_ports(&self) -> usize {
        lock(&self.inner).ports.len()
    }

    /// Unbind every port that `domid` holds, as when the domain is destroyed.
    pub fn destroy_domain(&self, domid: DomId) {
        let mut state = lock(&self.inner);
        let ports: Vec<Port> = state
            .ports
            .keys()
            .filter(|(d, _)| *d == domid)
            .map(|(_, p)| *p)
            .collect();
        for port in ports {
            state.close_port(domid, port);
        }
    }
}

impl HubState {
    /// Mark `domid`'s `port` pending and deliver it unless it is masked.
    fn raise(&mut self, domid: DomId, port: Port) {
        let Some(entry) = self.ports.get_mut(&(domid, port)) else {
            return;
        };
        if entry.masked {
            entry.pending = true;
        } else {
            // The Linux driver masks a port as it delivers it; user space unmasks to re-arm.
            entry.masked = true;
            entry.owner.deliver(port);
        }
    }

    fn alloc_port(&self, domid: DomId) -> io::Result<Port> {
        (1..=MAX_PORT)
            .map(Port)
            .find(|p| !self.ports.contains_key(&(domid, *p)))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOSPC))
    }

    /// Remove a port; its peer, if connected, goes back to waiting for a binding (as in Xen).
    fn close_port(&mut self, domid: DomId, port: Port) -> Option<PortEntry> {
        let entry = self.ports.remove(&(domid, port))?;
        if let Binding::Interdomain {
            remote,
            port: remote_port,
        } = entry.binding
        {
            if let Some(peer) = self.ports.get_mut(&(remote, remote_port)) {
                peer.binding = Binding::Unbound { remote: domid };
            }
        }
        Some(entry)
    }
}

fn new_eventfd() -> io::Result<File> {
    // SAFETY: eventfd takes no pointers; the result is checked before use.
    #[allow(unsafe_code)]
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
    #[allow(unsafe_code)]
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(File::from(owned))
}

/// One domain's event-channel handle on a [`SimEventHub`]. Dropping it unbinds its ports.
pub struct SimEvtchn {
    hub: SimEventHub,
    queue: Arc<HandleQueue>,
}

impl SimEvtchn {
    /// The domain this handle belongs to.
    pub fn domid(&self) -> DomId {
        self.queue.domid
    }

    /// Check that `port` belongs to this handle and return the hub state locked.
    fn owned<'a>(&self, state: &'a mut HubState, port: Port) -> io::Result<&'a mut PortEntry> {
        match state.ports.get_mut(&(self.queue.domid, port)) {
            Some(entry) if entry.owner.id == self.queue.id => Ok(entry),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    fn insert(&self, state: &mut HubState, port: Port, binding: Binding) {
        state.ports.insert(
            (self.queue.domid, port),
            PortEntry {
                owner: Arc::clone(&self.queue),
                binding,
                pending: false,
                masked: false,
            },
        );
    }
}

impl EventChannel for SimEvtchn {
    fn bind_unbound_port(&self, remote: DomId) -> io::Result<Port> {
        let mut state = lock(&self.hub.inner);
        let port = state.alloc_port(self.queue.domid)?;
        self.insert(&mut state, port, Binding::Unbound { remote });
        Ok(port)
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> io::Result<Port> {
        let me = self.queue.domid;
        let mut state = lock(&self.hub.inner);
        match state.ports.get(&(remote, remote_port)) {
            Some(entry) if entry.binding == Binding::Unbound { remote: me } => {}
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
        let port = state.alloc_port(me)?;
        self.insert(
            &mut state,
            port,
            Binding::Interdomain {
                remote,
                port: remote_port,
            },
        );
        if let Some(peer) = state.ports.get_mut(&(remote, remote_port)) {
            peer.binding = Binding::Interdomain { remote: me, port };
        }
        Ok(port)
    }

    fn notify(&self, port: Port) -> io::Result<()> {
        let mut state = lock(&self.hub.inner);
        if let Binding::Interdomain { remote, port } = self.owned(&mut state, port)?.binding {
            state.raise(remote, port);
        }
        Ok(())
    }

    fn pending(&self) -> io::Result<Option<Port>> {
        let mut queue = lock(&self.queue.queue);
        let port = queue.pop_front();
        if port.is_some() && queue.is_empty() {
            let mut counter = [0u8; 8];
            // Resets the eventfd to "not readable"; it was readable since the queue was not empty.
            match (&self.queue.eventfd).read(&mut counter) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(port)
    }

    fn unmask(&self, port: Port) -> io::Result<()> {
        let mut state = lock(&self.hub.inner);
        let entry = self.owned(&mut state, port)?;
        entry.masked = false;
        if std::mem::take(&mut entry.pending) {
            let domid = self.queue.domid;
            state.raise(domid, port);
        }
        Ok(())
    }

    fn unbind(&self, port: Port) -> io::Result<()> {
        let mut state = lock(&self.hub.inner);
        self.owned(&mut state, port)?;
        state.close_port(self.queue.domid, port);
        drop(state);
        lock(&self.queue.queue).retain(|p| *p != port);
        Ok(())
    }
}

impl AsFd for SimEvtchn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.queue.eventfd.as_fd()
    }
}

impl Drop for SimEvtchn {
    fn drop(&mut self) {
        let mut state = lock(&self.hub.inner);
        let mine: Vec<Port> = state
            .ports
            .iter()
            .filter(|(_, e)| e.owner.id == self.queue.id)
            .map(|((_, p), _)| *p)
            .collect();
        for port in mine {
            state.close_port(self.queue.domid, port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (SimEventHub, SimEvtchn, SimEvtchn, Port, Port) {
        let hub = SimEventHub::new();
        let a = hub.open(DomId(0)).unwrap();
        let b = hub.open(DomId(3)).unwrap();
        let pa = a.bind_unbound_port(DomId(3)).unwrap();
        let pb = b.bind_interdomain(DomId(0), pa).unwrap();
        (hub, a, b, pa, pb)
    }

    fn readable(fd: BorrowedFd<'_>) -> bool {
        let mut counter = [0u8; 8];
        let dup = fd.try_clone_to_owned().unwrap();
        let mut file = File::from(dup);
        match file.read(&mut counter) {
            Ok(_) => {
                // Put the unit back so the probe does not change the state.
                file.write_all(&u64::from_ne_bytes(counter).to_ne_bytes())
                    .unwrap();
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn port_zero_is_never_handed_out() {
        let (_hub, _a, _b, pa, pb) = pair();
        assert!(!pa.is_reserved());
        assert!(!pb.is_reserved());
    }

    #[test]
    fn events_coalesce_while_masked_and_redeliver_on_unmask() {
        let (_hub, a, b, pa, pb) = pair();
        assert!(!readable(a.as_fd()));
        b.notify(pb).unwrap();
        b.notify(pb).unwrap();
        assert!(readable(a.as_fd()));
        assert_eq!(a.pending().unwrap(), Some(pa));
        assert_eq!(
            a.pending().unwrap(),
            None,
            "two events while masked coalesce"
        );
        assert!(!readable(a.as_fd()));
        a.unmask(pa).unwrap();
        assert_eq!(
            a.pending().unwrap(),
            Some(pa),
            "the masked event is redelivered"
        );
        a.unmask(pa).unwrap();
        assert_eq!(a.pending().unwrap(), None);
    }

    #[test]
    fn binding_needs_a_port_offered_to_the_caller() {
        let hub = SimEventHub::new();
        let a = hub.open(DomId(0)).unwrap();
        let b = hub.open(DomId(3)).unwrap();
        let c = hub.open(DomId(4)).unwrap();
        let pa = a.bind_unbound_port(DomId(3)).unwrap();
        assert!(c.bind_interdomain(DomId(0), pa).is_err());
        assert!(b.bind_interdomain(DomId(0), Port(99)).is_err());
        b.bind_interdomain(DomId(0), pa).unwrap();
        assert!(b.bind_interdomain(DomId(0), pa).is_err(), "already bound");
    }

    #[test]
    fn dropping_a_handle_unbinds_its_ports_and_peer_notifies_go_nowhere() {
        let (hub, a, b, _pa, pb) = pair();
        assert_eq!(hub.bound_ports(), 2);
        drop(a);
        assert_eq!(hub.bound_ports(), 1);
        b.notify(pb).unwrap();
        drop(b);
        assert_eq!(hub.bound_ports(), 0);
    }

    #[test]
    fn a_handle_cannot_use_another_handles_port() {
        let (hub, _a, _b, pa, _pb) = pair();
        let other = hub.open(DomId(0)).unwrap();
        assert!(other.notify(pa).is_err());
        assert!(other.unmask(pa).is_err());
        assert!(other.unbind(pa).is_err());
    }

    #[test]
    fn notify_from_plays_the_kernel_for_unmap_notifications() {
        let (hub, a, _b, pa, pb) = pair();
        hub.notify_from(DomId(3), pb).unwrap();
        assert_eq!(a.pending().unwrap(), Some(pa));
    }
}
