//! The two endpoints of a vchan and the stream they share.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use evtchn::EventChannel;
use gnttab::{GrantMap, GrantShare, SharedMemory, SharedPages, UnmapNotify};
use xen_types::memory::{AsSharedRegion, SharedRegion};
use xen_types::{DomId, GrantRef, Port};
use xenstore::{Access, Errno, Perm, TxId, XenStore, XenstoreError};

use crate::abi;
use crate::backend::Backend;
use crate::error::{Result, VchanError};
use crate::layout::{Layout, Placement, Side};
use crate::ring::{Consumer, ControlPage, Producer, RingGeometry, Role};
use crate::wait::Waiter;

/// Where a server publishes itself in xenstore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// The conventional path for an integer port: the server publishes at
    /// `/local/domain/<server>/data/vchan/<client>/<port>`.
    Port(u32),
    /// An explicit xenstore path (relative paths resolve under the caller's own domain).
    Path(String),
}

impl Address {
    /// The path a server serving `client` publishes at.
    pub fn server_path(&self, client: DomId) -> String {
        match self {
            Address::Port(port) => format!("data/vchan/{client}/{port}"),
            Address::Path(path) => path.clone(),
        }
    }

    /// The path a client (`me`) looks up to find `server`.
    pub fn client_path(&self, server: DomId, me: DomId) -> String {
        match self {
            Address::Port(port) => format!("/local/domain/{server}/data/vchan/{me}/{port}"),
            Address::Path(path) => path.clone(),
        }
    }
}

impl FromStr for Address {
    type Err = std::convert::Infallible;
    /// All digits is a port; anything else a path.
    fn from_str(s: &str) -> std::result::Result<Address, Self::Err> {
        Ok(match s.parse::<u32>() {
            Ok(port) if s.bytes().all(|b| b.is_ascii_digit()) => Address::Port(port),
            _ => Address::Path(s.to_owned()),
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Port(port) => write!(f, "{port}"),
            Address::Path(path) => f.write_str(path),
        }
    }
}

/// The minimum ring sizes a server asks for. The actual sizes follow libxenvchan's rule and may
/// be larger; `(0, 0)` gives the smallest channel (1024 and 2048 bytes inside one page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingSizes {
    /// Bytes the server can receive without the client waiting (the left ring).
    pub server_read: usize,
    /// Bytes the server can send without waiting (the right ring).
    pub server_write: usize,
}

/// Where a connection stands, from the peer's live byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A server whose client has not connected yet.
    WaitingForPeer,
    /// Both sides are connected.
    Connected,
    /// The peer closed the channel or died. What it wrote may still be read.
    PeerClosed,
}

/// The owner of one region of an endpoint's shared memory: the server's granted pages or the
/// client's mapping. The views that use a region each hold a clone (the control page's is held
/// by all three, and by an in-page ring), so none of them can reach the memory once it is
/// released; `shutdown` drops the views before `Resources`, whose clone is then the last.
enum Memory<B: Backend> {
    Granted(Arc<<B::Sharer as GrantShare>::Pages>),
    Mapped(Arc<<B::Mapper as GrantMap>::Mapping>),
}

impl<B: Backend> Clone for Memory<B> {
    fn clone(&self) -> Self {
        match self {
            Memory::Granted(pages) => Memory::Granted(Arc::clone(pages)),
            Memory::Mapped(mapping) => Memory::Mapped(Arc::clone(mapping)),
        }
    }
}

impl<B: Backend> AsSharedRegion for Memory<B> {
    #[inline]
    fn region(&self) -> SharedRegion<'_> {
        match self {
            Memory::Granted(pages) => pages.region(),
            Memory::Mapped(mapping) => mapping.region(),
        }
    }
}

/// The views of an open endpoint's shared memory, and what keeps it: taken apart, in order, by
/// `shutdown`.
struct Channel<B: Backend> {
    page: ControlPage<Memory<B>>,
    /// The two halves on cache lines of their own: a reading thread and a writing thread take
    /// their locks and move their private indices without bouncing one line between CPUs.
    reader: CachePadded<Mutex<Consumer<Memory<B>>>>,
    writer: CachePadded<Mutex<Producer<Memory<B>>>>,
    resources: Resources<B>,
}

/// The memory and handles an endpoint holds, released in a fixed order by `shutdown`.
enum Resources<B: Backend> {
    Server {
        rings: Vec<Arc<<B::Sharer as GrantShare>::Pages>>,
        control: Arc<<B::Sharer as GrantShare>::Pages>,
        store: B::Store,
        path: String,
        /// Ancestors of `path` that publishing created, deepest first: removed on close if empty.
        created: Vec<String>,
        _sharer: B::Sharer,
    },
    Client {
        rings: Vec<Arc<<B::Mapper as GrantMap>::Mapping>>,
        control: Arc<<B::Mapper as GrantMap>::Mapping>,
        /// Kept to ask whether the server's domain still exists (see `peer_domain_alive`).
        store: B::Store,
        _mapper: B::Mapper,
    },
}

impl<B: Backend> Resources<B> {
    fn store(&self) -> &B::Store {
        match self {
            Resources::Server { store, .. } | Resources::Client { store, .. } => store,
        }
    }
}

/// One end of a vchan: a byte stream (or a packet channel) to the peer domain.
///
/// Like `TcpStream`, `Read` and `Write` are implemented for the value and for a shared reference,
/// so one thread can read while another writes. Blocking by default; see
/// [`set_nonblocking`](Vchan::set_nonblocking). The fd from [`AsFd`] becomes readable when the peer
/// sends an event.
pub struct Vchan<B: Backend> {
    role: Role,
    read_capacity: usize,
    write_capacity: usize,
    events: B::Events,
    port: Port,
    waiter: Waiter,
    nonblocking: AtomicBool,
    read_timeout: AtomicU64,
    write_timeout: AtomicU64,
    /// Set when a notify failed after data was committed; reported by the next call.
    notify_failed: AtomicBool,
    deferred: Mutex<Option<VchanError>>,
    /// Set by `shutdown_write`: writes fail with `ShutDown`.
    write_shut: AtomicBool,
    /// The other end's domain.
    peer_domain: DomId,
    /// Set once that domain has been seen destroyed (its xenstore home gone): the peer is closed
    /// though its live byte never changed (no unmap notification runs in a destroyed domain).
    peer_gone: AtomicBool,
    /// The shared memory's views and owners: `Some` from construction until `shutdown` (run by
    /// `close` or `drop`, after which nothing uses the endpoint).
    channel: Option<Channel<B>>,
}

/// Which ring a data operation uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// What the shared wait loop needs from either half of a ring.
trait RingHalf {
    /// Ask the peer for an event when it makes progress on this ring.
    fn request_event(&self);
    /// Whether an operation on `wanted` bytes can complete without reading the control page
    /// (from what this half last saw of the peer's index).
    fn answers_privately(&self, wanted: usize) -> bool;
    /// This half's own index (the consumer's or the producer's).
    fn own_index(&self) -> u32;
}

impl<M: AsSharedRegion> RingHalf for Consumer<M> {
    fn request_event(&self) {
        self.request_write_notify();
    }
    fn answers_privately(&self, _wanted: usize) -> bool {
        false
    }
    fn own_index(&self) -> u32 {
        self.index()
    }
}

impl<M: AsSharedRegion> RingHalf for Producer<M> {
    fn request_event(&self) {
        self.request_read_notify();
    }
    fn answers_privately(&self, wanted: usize) -> bool {
        self.known_room_covers(wanted)
    }
    fn own_index(&self) -> u32 {
        self.index()
    }
}

const NO_TIMEOUT: u64 = u64::MAX;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read_domid<S: XenStore>(store: &S) -> Result<DomId> {
    let raw = store.read(TxId::NONE, "domid")?;
    let text = String::from_utf8_lossy(&raw);
    text.trim().parse().map_err(|_| VchanError::BadKey {
        key: "domid",
        value: text.into_owned(),
    })
}

/// Where ring `side` of `layout` is: `offset` bytes into the region that holds it.
fn geometry(layout: &Layout, side: Side, offset: usize) -> RingGeometry {
    RingGeometry {
        side,
        offset,
        size: layout.size(side) as u32,
    }
}

/// Release a region whose views are gone: this is its last owner, so the memory goes now.
fn release<T>(region: Arc<T>) {
    let last = Arc::into_inner(region);
    debug_assert!(last.is_some(), "a view outlived the endpoint's shutdown");
    drop(last);
}

/// Check that a backend gave us at least `needed` bytes: ring bounds are derived from the layout,
/// so a short region would put them outside the memory.
fn check_len(mem: &impl SharedMemory, needed: usize, op: &'static str) -> Result<()> {
    if mem.len() < needed {
        return Err(VchanError::Backend {
            op,
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the backend gave {} bytes where {needed} were needed",
                    mem.len()
                ),
            ),
        });
    }
    Ok(())
}

impl<B: Backend> Vchan<B> {
    /// Serve `client` at `address`: share the control page and rings, publish the keys and
    /// return at once. The client may connect later: see [`state`](Self::state) and
    /// [`wait_connected`](Self::wait_connected). Data written before it connects waits in the ring.
    pub fn server(backend: &B, client: DomId, address: &Address, sizes: RingSizes) -> Result<Self> {
        let layout = Layout::for_min_sizes(sizes.server_read, sizes.server_write)?;
        let store = backend.open_store()?;
        let me = read_domid(&store)?;
        let sharer = backend
            .open_sharer()
            .map_err(VchanError::backend("open the grant-sharing device"))?;
        let events = backend
            .open_events()
            .map_err(VchanError::backend("open the event-channel device"))?;
        let port = events
            .bind_unbound_port(client)
            .map_err(VchanError::backend("allocate an event channel"))?;
        events
            .unmask(port)
            .map_err(VchanError::backend("unmask the event channel"))?;
        let notify = UnmapNotify {
            clear_byte: Some(abi::SRV_LIVE),
            event: Some(port),
        };
        let control = sharer
            .share_pages(client, 1, true, Some(notify))
            .map_err(VchanError::backend("share the control page"))?;
        check_len(&control, abi::PAGE_SIZE, "share the control page")?;
        let control = Arc::new(control);
        let control_memory = Memory::<B>::Granted(Arc::clone(&control));
        let page = ControlPage::new(control_memory.clone());
        page.zero();
        page.set_order(Side::Left, layout.order(Side::Left));
        page.set_order(Side::Right, layout.order(Side::Right));
        page.set_live(abi::CLI_LIVE, abi::LIVE_WAITING);
        page.set_live(abi::SRV_LIVE, abi::LIVE_CONNECTED);
        page.set_notify(abi::CLI_NOTIFY, abi::NOTIFY_WRITE);

        let mut rings = Vec::new();
        // Where each ring's bytes are: the region's owner and the offset in it.
        let mut data = [(control_memory.clone(), 0), (control_memory, 0)];
        for (slot, side) in [Side::Left, Side::Right].into_iter().enumerate() {
            match layout.placement(side) {
                Placement::InPage { offset } => data[slot].1 = offset,
                Placement::Pages { count } => {
                    let pages = sharer
                        .share_pages(client, count, true, None)
                        .map_err(VchanError::backend("share the ring pages"))?;
                    check_len(&pages, count * abi::PAGE_SIZE, "share the ring pages")?;
                    for (index, gref) in layout.grant_indices(side).zip(pages.refs()) {
                        page.set_grant(index, gref.0);
                    }
                    let pages = Arc::new(pages);
                    data[slot] = (Memory::Granted(Arc::clone(&pages)), 0);
                    rings.push(pages);
                }
            }
        }

        let path = address.server_path(client);
        let ring_ref = control.refs()[0].to_string();
        let port_text = port.to_string();
        let perms = [Perm::new(me, Access::None), Perm::new(client, Access::Read)];
        let created = store.transaction(|tx| {
            let created = missing_ancestors(&store, tx, &path)?;
            for (key, value) in [("ring-ref", &ring_ref), ("event-channel", &port_text)] {
                let key = format!("{path}/{key}");
                store.write(tx, &key, value.as_bytes())?;
                store.set_perms(tx, &key, &perms)?;
            }
            Ok(created)
        })?;

        // Each ring lies inside its region (the layout places it; the lengths were checked), so
        // building the halves cannot panic.
        let [(left, left_offset), (right, right_offset)] = data;
        let reader = Consumer::new(
            page.clone(),
            left,
            geometry(&layout, Side::Left, left_offset),
            Role::Server,
            0,
        );
        let writer = Producer::new(
            page.clone(),
            right,
            geometry(&layout, Side::Right, right_offset),
            Role::Server,
            0,
        );
        Ok(Self::assemble(
            Role::Server,
            page,
            reader,
            writer,
            (events, port),
            Resources::Server {
                rings,
                control,
                store,
                path,
                created,
                _sharer: sharer,
            },
            client,
        ))
    }

    /// Connect to `server`'s vchan at `address`. With `wait` set, wait up to that long for the
    /// server to publish itself; with `None`, fail at once if it has not.
    pub fn client(
        backend: &B,
        server: DomId,
        address: &Address,
        wait: Option<Duration>,
    ) -> Result<Self> {
        let store = backend.open_store()?;
        let me = read_domid(&store)?;
        let path = address.client_path(server, me);
        let (ring_ref, remote_port) = read_server_keys(&store, &path, wait)?;

        let mapper = backend
            .open_mapper()
            .map_err(VchanError::backend("open the grant-mapping device"))?;
        let events = backend
            .open_events()
            .map_err(VchanError::backend("open the event-channel device"))?;
        let port = events
            .bind_interdomain(server, remote_port)
            .map_err(VchanError::backend("bind the server's event channel"))?;
        events
            .unmask(port)
            .map_err(VchanError::backend("unmask the event channel"))?;
        let notify = UnmapNotify {
            clear_byte: Some(abi::CLI_LIVE),
            event: Some(port),
        };
        let control = mapper
            .map_grant_refs(server, &[ring_ref], true, Some(notify))
            .map_err(VchanError::backend("map the control page"))?;
        check_len(&control, abi::PAGE_SIZE, "map the control page")?;
        let control = Arc::new(control);
        let control_memory = Memory::<B>::Mapped(Arc::clone(&control));
        let page = ControlPage::new(control_memory.clone());

        // A server that already has a client, or has closed, is not ours to join (stale keys
        // of a server that is going away, or someone else's channel): two clients on one page
        // would corrupt each other's indices. A live server whose client has exited is waiting
        // again: libxenvchan serves clients in turn on one page that way (Xen's
        // vchan-socket-proxy in server mode does), and the indices carry on from where the
        // last client left them.
        let client_slot = page.live(abi::CLI_LIVE);
        if !matches!(client_slot, abi::LIVE_WAITING | abi::LIVE_EXITED)
            || page.live(abi::SRV_LIVE) != abi::LIVE_CONNECTED
        {
            return Err(VchanError::NotWaiting { path });
        }
        // A server that serves in turn keeps its keys published; a one-connection server (this
        // crate's listeners) withdraws them once its client connects. So a page whose client
        // has exited is joined only while the keys we came by still name it: stale keys, read
        // before the withdrawal, must not lead a second client into a finished connection.
        // (Keys that cannot be read again, for any reason, do not confirm it either.)
        if client_slot == abi::LIVE_EXITED
            && !matches!(try_read_server_keys(&store, &path), Ok(Some(keys)) if keys == (ring_ref, remote_port))
        {
            return Err(VchanError::NotWaiting { path });
        }
        // Everything the server wrote is read once, validated, and kept privately from here on.
        let layout = Layout::from_orders(page.order(Side::Left), page.order(Side::Right))?;
        let mut rings = Vec::new();
        let mut data = [(control_memory.clone(), 0), (control_memory, 0)];
        for (slot, side) in [Side::Left, Side::Right].into_iter().enumerate() {
            match layout.placement(side) {
                Placement::InPage { offset } => data[slot].1 = offset,
                Placement::Pages { count } => {
                    let refs: Vec<GrantRef> = layout
                        .grant_indices(side)
                        .map(|i| GrantRef(page.grant(i)))
                        .collect();
                    let writable = side == Role::Client.write_side();
                    let mapping = mapper
                        .map_grant_refs(server, &refs, writable, None)
                        .map_err(VchanError::backend("map the ring pages"))?;
                    check_len(&mapping, count * abi::PAGE_SIZE, "map the ring pages")?;
                    let mapping = Arc::new(mapping);
                    data[slot] = (Memory::Mapped(Arc::clone(&mapping)), 0);
                    rings.push(mapping);
                }
            }
        }
        // Start from the indices as the server left them (it may have written before we came).
        let cons = page.index_relaxed(abi::RIGHT_CONS);
        let prod = page.index_relaxed(abi::LEFT_PROD);
        // Each ring lies inside its region (the validated layout places it; the lengths were
        // checked), so building the halves cannot panic. The read ring is only read.
        let [(left, left_offset), (right, right_offset)] = data;
        let reader = Consumer::new(
            page.clone(),
            right,
            geometry(&layout, Side::Right, right_offset),
            Role::Client,
            cons,
        );
        let writer = Producer::new(
            page.clone(),
            left,
            geometry(&layout, Side::Left, left_offset),
            Role::Client,
            prod,
        );
        let vchan = Self::assemble(
            Role::Client,
            page,
            reader,
            writer,
            (events, port),
            Resources::Client {
                rings,
                control,
                store,
                _mapper: mapper,
            },
            server,
        );
        // Check the indices we inherited before announcing ourselves.
        let channel = vchan.channel();
        lock(&channel.reader).available()?;
        lock(&channel.writer).space()?;
        channel.page.set_live(abi::CLI_LIVE, abi::LIVE_CONNECTED);
        channel.page.set_notify(abi::SRV_NOTIFY, abi::NOTIFY_WRITE);
        vchan
            .events
            .notify(vchan.port)
            .map_err(VchanError::backend("notify the server"))?;
        Ok(vchan)
    }

    fn assemble(
        role: Role,
        page: ControlPage<Memory<B>>,
        reader: Consumer<Memory<B>>,
        writer: Producer<Memory<B>>,
        (events, port): (B::Events, Port),
        resources: Resources<B>,
        peer_domain: DomId,
    ) -> Self {
        Vchan {
            role,
            read_capacity: reader.capacity(),
            write_capacity: writer.capacity(),
            events,
            port,
            waiter: Waiter::new(),
            nonblocking: AtomicBool::new(false),
            read_timeout: AtomicU64::new(NO_TIMEOUT),
            write_timeout: AtomicU64::new(NO_TIMEOUT),
            notify_failed: AtomicBool::new(false),
            deferred: Mutex::new(None),
            write_shut: AtomicBool::new(false),
            peer_domain,
            peer_gone: AtomicBool::new(false),
            channel: Some(Channel {
                page,
                reader: CachePadded::new(Mutex::new(reader)),
                writer: CachePadded::new(Mutex::new(writer)),
                resources,
            }),
        }
    }

    /// The open channel. It is there from construction until `shutdown`, which only `close`
    /// (taking the endpoint) and `drop` run: no call can come after it.
    #[inline]
    fn channel(&self) -> &Channel<B> {
        match &self.channel {
            Some(channel) => channel,
            None => unreachable!("an endpoint is used only until close or drop"),
        }
    }

    /// Whether this is the serving end.
    pub fn is_server(&self) -> bool {
        self.role == Role::Server
    }

    /// This end's event-channel port.
    pub fn port(&self) -> Port {
        self.port
    }

    /// The capacity of the ring this end reads.
    pub fn read_capacity(&self) -> usize {
        self.read_capacity
    }

    /// The capacity of the ring this end writes.
    pub fn write_capacity(&self) -> usize {
        self.write_capacity
    }

    /// The connection's state, from the peer's live byte.
    pub fn state(&self) -> Result<State> {
        // ORDERING: Acquire pairs with the Release store in `peer_domain_alive`; the flag
        // carries no other data.
        if self.peer_gone.load(Ordering::Acquire) {
            return Ok(State::PeerClosed);
        }
        match (self.role, self.channel().page.live(self.role.peer_live())) {
            (_, abi::LIVE_EXITED) => Ok(State::PeerClosed),
            (_, abi::LIVE_CONNECTED) => Ok(State::Connected),
            (Role::Server, abi::LIVE_WAITING) => Ok(State::WaitingForPeer),
            (_, other) => Err(VchanError::BadLiveByte(other)),
        }
    }

    /// Switch between blocking (the default) and non-blocking mode, where operations that cannot
    /// proceed fail with `WouldBlock` and the caller polls the fd.
    pub fn set_nonblocking(&self, nonblocking: bool) {
        self.nonblocking.store(nonblocking, Ordering::Relaxed);
    }

    /// Limit how long a blocking read or `recv` waits (`None`: for ever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) {
        self.read_timeout
            .store(encode_timeout(timeout), Ordering::Relaxed);
    }

    /// Limit how long a blocking write or `send` waits (`None`: for ever).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) {
        self.write_timeout
            .store(encode_timeout(timeout), Ordering::Relaxed);
    }

    /// Bytes ready to read now; also asks the peer for an event when it writes more. Never waits
    /// for a blocked `read` or `recv` on another thread.
    pub fn data_ready(&self) -> Result<usize> {
        Ok(lock(&self.channel().reader).request_and_recheck()?)
    }

    /// Bytes that can be written now; also asks the peer for an event when it frees more. Never
    /// waits for a blocked `write` or `send` on another thread.
    pub fn buffer_space(&self) -> Result<usize> {
        Ok(lock(&self.channel().writer).request_and_recheck()?)
    }

    /// Read what is available, up to `buf.len()` bytes. Blocks (in blocking mode) until at least
    /// one byte is ready; `Ok(0)` means the peer closed and everything it wrote has been read.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize> {
        if buf.is_empty() {
            return self.check_deferred().map(|()| 0);
        }
        let wanted = buf.len();
        self.transfer(
            &self.channel().reader,
            Direction::Read,
            wanted,
            |reader| Ok(reader.read(buf)?).map(|(n, wanted)| (n > 0).then_some((n, wanted))),
            |reader| Ok(reader.available()? > 0),
            || Ok(0),
        )
    }

    /// Receive exactly `buf.len()` bytes as one unit, or nothing. Fails with `MessageTooLarge`
    /// if the ring can never hold that much, and `PeerClosed` if the peer closed with fewer
    /// bytes left in the ring.
    pub fn recv(&self, buf: &mut [u8]) -> Result<()> {
        if buf.len() > self.read_capacity {
            return Err(VchanError::MessageTooLarge {
                len: buf.len(),
                capacity: self.read_capacity,
            });
        }
        let len = buf.len();
        self.transfer(
            &self.channel().reader,
            Direction::Read,
            len,
            |reader| Ok(reader.read_exact(buf)?.map(|wanted| ((), wanted))),
            |reader| Ok(reader.available()? >= len),
            || Err(VchanError::PeerClosed),
        )
    }

    /// Write as much of `buf` as fits now. Blocks (in blocking mode) until at least one byte fits.
    /// Fails with `PeerClosed` once the peer has gone.
    pub fn write(&self, buf: &[u8]) -> Result<usize> {
        if buf.is_empty() {
            return self.check_deferred().map(|()| 0);
        }
        self.transfer(
            &self.channel().writer,
            Direction::Write,
            buf.len(),
            |writer| Ok(writer.write(buf)?).map(|(n, wanted)| (n > 0).then_some((n, wanted))),
            |writer| Ok(writer.space()? > 0),
            || Err(VchanError::PeerClosed),
        )
    }

    /// Send all of `buf` as one unit, or nothing. Fails with `MessageTooLarge` if the ring can
    /// never hold it (in either mode), and `PeerClosed` once the peer has gone.
    pub fn send(&self, buf: &[u8]) -> Result<()> {
        if buf.len() > self.write_capacity {
            return Err(VchanError::MessageTooLarge {
                len: buf.len(),
                capacity: self.write_capacity,
            });
        }
        self.transfer(
            &self.channel().writer,
            Direction::Write,
            buf.len(),
            |writer| Ok(writer.write_all_or_nothing(buf)?.map(|wanted| ((), wanted))),
            |writer| Ok(writer.space()? >= buf.len()),
            || Err(VchanError::PeerClosed),
        )
    }

    /// The wait loop shared by `read`, `recv`, `write` and `send`.
    ///
    /// `attempt` tries the operation on the half (`None`: not enough data or space yet; `Some`
    /// carries the result and whether the peer asked for an event). `ready` says whether an
    /// attempt would now succeed. `closed` is the outcome once the peer has gone and the ring
    /// cannot answer.
    ///
    /// The order of the steps is what makes this fast and free of lost wake-ups:
    /// 1. Try. While the peer keeps up, this is all that happens: no system call, no event.
    /// 2. Poll the ring for a bounded time (`SPIN_BUDGET`) *without* asking the peer for an
    ///    event, so a peer that answers within microseconds never pays for a notify.
    /// 3. Take a ticket from the waiter, then set the notify request in the peer's byte and look
    ///    once more (`request_and_recheck`: a full fence between the two, paired with the
    ///    peer's fence between publishing its index and reading our request). Either that look
    ///    sees the peer's progress, or the peer sees the request and sends an event.
    /// 4. Sleep on the event fd until that event, or any event taken by another thread after
    ///    the ticket, and start again.
    ///
    /// The half's mutex is held only while trying and looking, never while spinning or
    /// sleeping, so `data_ready`, `buffer_space` and the other direction never wait for a
    /// sleeper. In non-blocking mode step 2 is replaced by taking the pending events (so the fd
    /// turns readable only for news after the final look) and step 4 by `WouldBlock`.
    fn transfer<H: RingHalf, T>(
        &self,
        half: &Mutex<H>,
        direction: Direction,
        wanted: usize,
        mut attempt: impl FnMut(&mut H) -> Result<Option<(T, bool)>>,
        ready: impl Fn(&H) -> Result<bool>,
        closed: impl Fn() -> Result<T>,
    ) -> Result<T> {
        self.check_deferred()?;
        let timeout = match direction {
            Direction::Read => &self.read_timeout,
            Direction::Write => &self.write_timeout,
        };
        let deadline = self.deadline(timeout);
        let mut final_look = false;
        let mut next_check = None;
        loop {
            let ticket = self.waiter.ticket();
            let mut guard = lock(half);
            // A write that fits the room already known reads no shared cache line before it
            // copies (the peer's live byte shares the line with its index); it looks afterwards.
            if direction == Direction::Write
                && (self.write_shut.load(Ordering::Acquire)
                    || !guard.answers_privately(wanted) && self.write_is_over()?)
            {
                return self.refuse_write(closed);
            }
            let written_from = guard.own_index();
            if let Some((outcome, wanted)) = attempt(&mut guard)? {
                drop(guard);
                self.notify_if(wanted);
                // A write that skipped the look at the peer's live byte looks now, when the line
                // holding it is in our cache (we just published our index in it): a peer that
                // has gone will never read what we wrote, and the writer hears so at once. Unless
                // it read everything first: a peer that takes our last bytes and closes at once
                // (a TLS peer after our close_notify) got them, and the write succeeded.
                if direction == Direction::Write
                    && self.write_is_over()?
                    && !lock(&self.channel().writer).consumed_since(written_from)?
                {
                    return self.refuse_write(closed);
                }
                return Ok(outcome);
            }
            let nonblocking = self.nonblocking.load(Ordering::Relaxed);
            if !final_look {
                drop(guard);
                if nonblocking {
                    self.waiter.take_pending(&self.events)?;
                } else if spin_until(|| {
                    if self.read_is_over(direction).unwrap_or(true) {
                        // Straight to the final look, which handles the close (or the error).
                        Some(false)
                    } else {
                        // An error is reported by the attempt that follows.
                        ready(&lock(half)).unwrap_or(true).then_some(true)
                    }
                }) {
                    continue;
                }
                final_look = true;
                continue;
            }
            final_look = false;
            guard.request_event();
            if ready(&guard)? {
                continue;
            }
            if self.read_is_over(direction)? {
                // Close race: the peer may have written and then closed after our last look.
                // The live byte is read with SeqCst, so this look sees everything written
                // before the close.
                if let Some((outcome, wanted)) = attempt(&mut guard)? {
                    drop(guard);
                    self.notify_if(wanted);
                    return Ok(outcome);
                }
                return closed();
            }
            drop(guard);
            if nonblocking {
                return Err(VchanError::WouldBlock);
            }
            self.sleep(ticket, deadline, &mut next_check)?;
        }
    }

    /// Sleep until an event after `ticket`, `deadline` (`TimedOut`), or the next look at whether
    /// the peer's domain still exists (every [`LIVENESS_CHECK`] of sleep; `next_check` keeps the
    /// time across calls). Returns early on any wake: the caller looks at its ring again.
    fn sleep(
        &self,
        ticket: u64,
        deadline: Option<Instant>,
        next_check: &mut Option<Instant>,
    ) -> Result<()> {
        let check_at = *next_check.get_or_insert_with(|| Instant::now() + LIVENESS_CHECK);
        let wake_by = deadline.map_or(check_at, |d| d.min(check_at));
        match self.waiter.wait(&self.events, ticket, Some(wake_by)) {
            Err(VchanError::TimedOut) if deadline.is_none_or(|d| Instant::now() < d) => {}
            other => other?,
        }
        let now = Instant::now();
        if now >= check_at {
            *next_check = Some(now + LIVENESS_CHECK);
            self.peer_domain_alive();
        }
        Ok(())
    }

    /// Whether the peer's domain still exists, as far as this domain can tell; records the
    /// answer "no" for `state`. A destroyed domain runs no unmap notification, so neither its
    /// live byte nor an event says it went; the toolstack removes its xenstore home, which a
    /// privileged domain (dom0) can see. A guest cannot read another guest's home (xenstored
    /// answers EACCES whether it exists or not), so there this always says yes.
    fn peer_domain_alive(&self) -> bool {
        let resources = &self.channel().resources;
        // A server's client may not have been created yet (a toolstack can start the server
        // first): only a client that has connected, so whose domain existed, can be gone.
        if self.role == Role::Server
            && self.channel().page.live(self.role.peer_live()) == abi::LIVE_WAITING
        {
            return true;
        }
        let home = format!("/local/domain/{}", self.peer_domain);
        match resources.store().read(xenstore::TxId::NONE, &home) {
            Err(xenstore::XenstoreError::Errno(xenstore::Errno::ENOENT)) => {
                // ORDERING: Release pairs with the Acquire load in `state`.
                self.peer_gone.store(true, Ordering::Release);
                false
            }
            _ => true,
        }
    }

    /// The waiter's generation: it moves whenever some thread or task takes events.
    #[cfg(feature = "tokio")]
    pub(crate) fn waiter_ticket(&self) -> u64 {
        self.waiter.ticket()
    }

    /// Take the pending events without waiting (for a caller that then looks at the state).
    #[cfg(feature = "tokio")]
    pub(crate) fn take_pending_events(&self) -> Result<usize> {
        self.waiter.take_pending(&self.events)
    }

    /// Whether a reader can expect nothing more than what the ring holds: the peer has closed,
    /// or shut down its writing side. A nonsense live byte is an error.
    fn read_is_over(&self, direction: Direction) -> Result<bool> {
        Ok(direction == Direction::Read
            && (self.channel().page.write_shut(self.role.own_notify())
                || self.state()? == State::PeerClosed))
    }

    /// The error for a write once writing is over: `ShutDown` after our own `shutdown_write`,
    /// else the caller's (`PeerClosed`).
    fn refuse_write<T>(&self, closed: impl Fn() -> Result<T>) -> Result<T> {
        if self.write_shut.load(Ordering::Acquire) {
            Err(VchanError::ShutDown)
        } else {
            closed()
        }
    }

    /// Whether writing is over: the peer has closed, or this end has hung up. A nonsense live
    /// byte is an error.
    fn write_is_over(&self) -> Result<bool> {
        Ok(self.write_shut.load(Ordering::Acquire) || self.state()? == State::PeerClosed)
    }

    /// Wait until the client has connected (server) or the peer has closed, up to `timeout`.
    pub fn wait_connected(&self, timeout: Option<Duration>) -> Result<State> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut next_check = None;
        loop {
            let ticket = self.waiter.ticket();
            let state = self.state()?;
            if state != State::WaitingForPeer {
                return Ok(state);
            }
            self.sleep(ticket, deadline, &mut next_check)?;
        }
    }

    /// Wait until there is data to read or the peer has closed, up to `timeout`. Returns the
    /// bytes ready (0 means the peer closed with nothing left).
    pub fn wait_readable(&self, timeout: Option<Duration>) -> Result<usize> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let ticket = self.waiter.ticket();
            let ready = self.data_ready()?;
            if ready > 0 {
                return Ok(ready);
            }
            if self.state()? == State::PeerClosed {
                return self.data_ready();
            }
            self.waiter.wait(&self.events, ticket, deadline)?;
        }
    }

    /// Wait for the next event from the peer, up to `timeout` (libxenvchan_wait): `Ok(false)` if
    /// the timeout passed first. For callers that poll the fd themselves: after it becomes
    /// readable, call this with a zero timeout to take the event, then look at the ring.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        let ticket = self.waiter.ticket();
        let deadline = timeout.map(|t| Instant::now() + t);
        match self.waiter.wait(&self.events, ticket, deadline) {
            Ok(()) => Ok(true),
            Err(VchanError::TimedOut) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Remove a server's xenstore keys now, rather than at close: once its client has
    /// connected, nobody else should find them (a second client would join a channel that is
    /// taken, or, later, one that is closing). Idempotent; a client has nothing to remove.
    pub fn unpublish(&self) -> Result<()> {
        match &self.channel().resources {
            Resources::Server {
                store,
                path,
                created,
                ..
            } => Ok(unpublish(store, path, created)?),
            Resources::Client { .. } => Ok(()),
        }
    }

    /// Shut down the writing side (half-close): writes fail with `ShutDown` from now on, and a
    /// peer of this crate reads end-of-stream once it has read everything written before, while
    /// both sides can go on reading what the other writes. The flag travels in the peer's notify
    /// byte ([`abi::NOTIFY_WRITE_SHUT`]); a libxenvchan peer ignores it and sees the end of the
    /// stream only when the channel closes. Idempotent.
    pub fn shutdown_write(&self) -> Result<()> {
        if self.write_shut.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // A write in progress on another thread finishes first; any later one sees the flag
        // under the same lock and writes nothing.
        drop(lock(&self.channel().writer));
        self.channel().page.set_write_shut(self.role.peer_notify());
        self.events
            .notify(self.port)
            .map_err(VchanError::backend("notify the peer of the shutdown"))
    }

    /// Close the channel: release the rings, mark this side gone, tell the peer, and (server)
    /// remove the xenstore keys. The peer can still read what was written before. Dropping the
    /// endpoint does the same but cannot report errors.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(Channel {
            page,
            reader,
            writer,
            resources,
        }) = self.channel.take()
        else {
            return Ok(());
        };
        page.set_live(self.role.own_live(), abi::LIVE_EXITED);
        // The views go first, so that `resources` holds the last owner of each region and
        // releasing it below unmaps (or ungrants) the memory at this step, before the event and
        // the unbind, as libxenvchan does.
        drop((page, reader, writer));
        let mut first_error: Option<VchanError> = None;
        match resources {
            Resources::Server {
                rings,
                control,
                store,
                path,
                created,
                _sharer,
            } => {
                rings.into_iter().for_each(release);
                release(control);
                if let Err(e) = self.events.notify(self.port) {
                    first_error.get_or_insert(VchanError::Backend {
                        op: "notify the peer of the close",
                        source: e,
                    });
                }
                if let Err(e) = unpublish(&store, &path, &created) {
                    first_error.get_or_insert(e.into());
                }
            }
            Resources::Client {
                rings,
                control,
                store: _,
                _mapper,
            } => {
                rings.into_iter().for_each(release);
                release(control);
                if let Err(e) = self.events.notify(self.port) {
                    first_error.get_or_insert(VchanError::Backend {
                        op: "notify the peer of the close",
                        source: e,
                    });
                }
            }
        }
        if let Err(e) = self.events.unbind(self.port) {
            first_error.get_or_insert(VchanError::Backend {
                op: "unbind the event channel",
                source: e,
            });
        }
        first_error.map_or(Ok(()), Err)
    }

    fn deadline(&self, timeout: &AtomicU64) -> Option<Instant> {
        match timeout.load(Ordering::Relaxed) {
            NO_TIMEOUT => None,
            nanos => Some(Instant::now() + Duration::from_nanos(nanos)),
        }
    }

    /// Send the peer an event if it asked for one. The data is already committed, so a failure
    /// cannot be reported as "nothing written": it is kept and reported by the next call.
    fn notify_if(&self, wanted: bool) {
        if !wanted {
            return;
        }
        if let Err(source) = self.events.notify(self.port) {
            *lock(&self.deferred) = Some(VchanError::Backend {
                op: "notify the peer",
                source,
            });
            self.notify_failed.store(true, Ordering::Release);
        }
    }

    fn check_deferred(&self) -> Result<()> {
        if !self.notify_failed.load(Ordering::Acquire) {
            return Ok(());
        }
        self.notify_failed.store(false, Ordering::Relaxed);
        match lock(&self.deferred).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// How often a sleeping endpoint looks whether the peer's domain still exists (a destroyed
/// domain says nothing on the ring or the event channel): a peer domain's death is noticed
/// within this, plus one xenstore round trip.
const LIVENESS_CHECK: Duration = Duration::from_millis(500);

/// How long a blocking call polls the ring before it asks the peer for an event and sleeps. A
/// peer on another CPU that is keeping up answers well within this (a ring round trip takes
/// well under a microsecond); one that does not costs us this much CPU before we sleep. Sleeping
/// and waking through the event channel costs tens of microseconds on any backend.
const SPIN_BUDGET: Duration = Duration::from_micros(50);

/// Poll `look` for up to `SPIN_BUDGET` until it has an answer (`Some`), and return that answer;
/// false once the budget is spent, and at once on a machine with one CPU, where the peer cannot
/// make progress while we spin.
fn spin_until(look: impl Fn() -> Option<bool>) -> bool {
    static MANY_CPUS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let many =
        *MANY_CPUS.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1));
    if !many {
        return false;
    }
    let started = Instant::now();
    loop {
        for _ in 0..64 {
            if let Some(answer) = look() {
                return answer;
            }
            for _ in 0..8 {
                std::hint::spin_loop();
            }
        }
        if started.elapsed() >= SPIN_BUDGET {
            return false;
        }
    }
}

fn encode_timeout(timeout: Option<Duration>) -> u64 {
    match timeout {
        None => NO_TIMEOUT,
        Some(t) => u64::try_from(t.as_nanos())
            .unwrap_or(NO_TIMEOUT - 1)
            .min(NO_TIMEOUT - 1),
    }
}

/// The ancestors of `path` that do not exist yet, deepest first, up to the first that does.
fn missing_ancestors<S: XenStore>(
    store: &S,
    tx: TxId,
    path: &str,
) -> xenstore::Result<Vec<String>> {
    let mut missing = Vec::new();
    let mut current = path;
    while let Some(cut) = current.rfind('/') {
        current = &current[..cut];
        if current.is_empty() {
            break;
        }
        match store.read(tx, current) {
            Err(XenstoreError::Errno(Errno::ENOENT)) => missing.push(current.to_owned()),
            // It exists (or is not ours to know about): stop here.
            _ => break,
        }
    }
    Ok(missing)
}

/// Remove the server's keys and, if now empty, the directories publishing created. One
/// transaction, so a sibling published at the same moment is never removed with them.
fn unpublish<S: XenStore>(store: &S, path: &str, created: &[String]) -> xenstore::Result<()> {
    store.transaction(|tx| {
        match store.rm(tx, path) {
            Ok(()) | Err(XenstoreError::Errno(Errno::ENOENT)) => {}
            Err(e) => return Err(e),
        }
        for dir in created {
            match store.directory(tx, dir) {
                Ok(children) if children.is_empty() => store.rm(tx, dir)?,
                Ok(_) => break,
                Err(XenstoreError::Errno(Errno::ENOENT)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
}

/// Read the server's two keys (once each) and check them, waiting for them to appear if asked.
fn read_server_keys<S: XenStore>(
    store: &S,
    path: &str,
    wait: Option<Duration>,
) -> Result<(GrantRef, Port)> {
    let deadline = wait.map(|t| Instant::now() + t);
    let token = "vchan-client";
    let mut watching = false;
    let outcome = loop {
        match try_read_server_keys(store, path) {
            Ok(Some(keys)) => break Ok(keys),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        let Some(deadline) = deadline else {
            break Err(VchanError::NoServer {
                path: path.to_owned(),
            });
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(VchanError::NoServer {
                path: path.to_owned(),
            });
        }
        if !watching {
            // The watch fires once at once and then on every change under the path; the loop
            // re-reads the keys after each, so a publish between the read and the watch is seen.
            if let Err(e) = store.watch(path, token) {
                break Err(e.into());
            }
            watching = true;
            continue;
        }
        if let Err(e) = store.next_watch_event(Some(left)) {
            break Err(e.into());
        }
    };
    if watching {
        // The keys are read (or the wait failed); a failure to remove the watch changes neither.
        let _ = store.unwatch(path, token);
    }
    outcome
}

fn try_read_server_keys<S: XenStore>(store: &S, path: &str) -> Result<Option<(GrantRef, Port)>> {
    let mut values = [0u32; 2];
    for (value, key) in values.iter_mut().zip(["ring-ref", "event-channel"]) {
        let raw = match store.read(TxId::NONE, &format!("{path}/{key}")) {
            Ok(raw) => raw,
            // Like xenstored, our store answers EACCES for a missing node under an unreadable
            // parent: to a client both mean "no server published for us (yet)".
            Err(XenstoreError::Errno(Errno::ENOENT | Errno::EACCES)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let text = String::from_utf8_lossy(&raw);
        *value = match text.trim().parse::<u32>() {
            Ok(v) if v != 0 => v,
            _ => {
                return Err(VchanError::BadKey {
                    key,
                    value: text.into_owned(),
                })
            }
        };
    }
    Ok(Some((GrantRef(values[0]), Port(values[1]))))
}

impl<B: Backend> Drop for Vchan<B> {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; `close` reports them.
        let _ = self.shutdown();
    }
}

impl<B: Backend> fmt::Debug for Vchan<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vchan")
            .field("role", &self.role)
            .field("port", &self.port)
            .field("open", &self.channel.is_some())
            .finish()
    }
}

impl<B: Backend> AsFd for Vchan<B> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}

impl<B: Backend> AsRawFd for Vchan<B> {
    fn as_raw_fd(&self) -> RawFd {
        self.events.as_fd().as_raw_fd()
    }
}

impl<B: Backend> io::Read for &Vchan<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(Vchan::read(self, buf)?)
    }
}

impl<B: Backend> io::Read for Vchan<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(Vchan::read(self, buf)?)
    }
}

impl<B: Backend> io::Write for &Vchan<B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(Vchan::write(self, buf)?)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<B: Backend> io::Write for Vchan<B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(Vchan::write(self, buf)?)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
