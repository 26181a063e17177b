//! The handshakes: [`serve`] (share, bind, write the page, publish) and [`Dial`] (find the keys,
//! bind, map, validate, join), and the key [`Publication`] they share with higher layers.
//!
//! Each is a short sequence of platform calls that never waits for the peer; the one place a
//! client must wait (its server has not published yet) is a `None` from [`Dial::attempt`], after
//! which the driver waits for the store to change (a watch) or gives up.

use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;

use xen_types::{DomId, GrantRef, Port, UnmapNotify};

use super::{Address, Channel, Device, ErrorOf, Hold, Link, Memory, Reader, RingSizes, Writer};
use crate::abi;
use crate::error::{Error, Op};
use crate::layout::{Layout, Placement, Side};
use crate::platform::{
    Access, EventChannels, GrantMap, GrantShare, GrantedPages, Perm, Platform, TxId, XenStore,
    XenstoreError,
};
use crate::ring::{Consumer, ControlPage, Producer, RingGeometry, Role};
use xen_types::memory::AsSharedRegion;
use xenstore::Errno;

/// Keys written under a path in one transaction, and the ancestors of the path that writing
/// created: [`withdraw`](Publication::withdraw) removes both (the ancestors only while empty),
/// so a sibling published at the same moment, or a directory that existed before (a guest's
/// toolstack-made `data`), is never removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    path: String,
    /// Ancestors of `path` that publishing created, deepest first.
    created: Vec<String>,
}

impl Publication {
    /// Write each `(key, value)` of `entries` at `path/key` with permissions `perms`, in one
    /// transaction (retried while it conflicts), noting the ancestors of `path` it creates.
    pub fn publish<S: XenStore>(
        store: &S,
        path: &str,
        entries: &[(&str, &str)],
        perms: &[Perm],
    ) -> Result<Publication, XenstoreError> {
        let created = store.transaction(|tx| {
            let created = missing_ancestors(store, tx, path)?;
            for (key, value) in entries {
                let key = alloc::format!("{path}/{key}");
                store.write(tx, &key, value.as_bytes())?;
                store.set_perms(tx, &key, perms)?;
            }
            Ok(created)
        })?;
        Ok(Publication {
            path: path.to_string(),
            created,
        })
    }

    /// Where the keys are.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Remove the keys and, if now empty, the directories publishing created, in one
    /// transaction. Idempotent.
    pub fn withdraw<S: XenStore>(&self, store: &S) -> Result<(), XenstoreError> {
        store.transaction(|tx| {
            match store.rm(tx, &self.path) {
                Ok(()) => {}
                Err(e) if e.errno() == Some(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
            for dir in &self.created {
                match store.directory(tx, dir) {
                    Ok(children) if children.is_empty() => store.rm(tx, dir)?,
                    Ok(_) => break,
                    Err(e) if e.errno() == Some(Errno::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    }
}

/// The ancestors of `path` that do not exist yet, deepest first, up to the first that does.
fn missing_ancestors<S: XenStore>(
    store: &S,
    tx: TxId,
    path: &str,
) -> Result<Vec<String>, XenstoreError> {
    let mut missing = Vec::new();
    let mut current = path;
    while let Some(cut) = current.rfind('/') {
        current = &current[..cut];
        if current.is_empty() {
            break;
        }
        match store.read(tx, current) {
            Err(e) if e.errno() == Some(Errno::ENOENT) => missing.push(current.to_string()),
            // It exists (or is not ours to know about): stop here.
            _ => break,
        }
    }
    Ok(missing)
}

/// This domain's id, from the store's relative `domid` key.
fn own_domid<P: Platform>(store: &P::Store) -> Result<DomId, ErrorOf<P>> {
    let raw = store.read(TxId::NONE, "domid").map_err(Error::Xenstore)?;
    let text = String::from_utf8_lossy(&raw);
    text.trim().parse().map_err(|_| Error::BadKey {
        key: "domid",
        value: text.into_owned(),
    })
}

/// Check that the platform gave at least `needed` bytes: ring bounds come from the layout, so a
/// short region would put them outside the memory.
fn check_len<P: Platform>(mem: &Memory<P>, needed: usize, op: Op) -> Result<(), ErrorOf<P>> {
    let len = mem.region().len();
    if len < needed {
        return Err(Error::ShortRegion { op, len, needed });
    }
    Ok(())
}

/// Where each ring's bytes are: `[left, right]`, each the owner of its region and the ring's
/// offset in it; in-page rings in the control page, the others in memory `external` gives
/// (shared by a server, mapped by a client) for that side and page count. Also the external
/// regions, for the endpoint to hold.
#[allow(clippy::type_complexity)]
fn place_rings<P: Platform>(
    layout: &Layout,
    control: &Memory<P>,
    mut external: impl FnMut(Side, usize) -> Result<Memory<P>, ErrorOf<P>>,
) -> Result<([(Memory<P>, usize); 2], Vec<Memory<P>>), ErrorOf<P>> {
    let mut rings = Vec::new();
    let mut place = |side| -> Result<(Memory<P>, usize), ErrorOf<P>> {
        match layout.placement(side) {
            Placement::InPage { offset } => Ok((control.clone(), offset)),
            Placement::Pages { count } => {
                let memory = external(side, count)?;
                rings.push(memory.clone());
                Ok((memory, 0))
            }
        }
    };
    let left = place(Side::Left)?;
    let right = place(Side::Right)?;
    Ok(([left, right], rings))
}

/// The two halves of an endpoint in `role`, over the rings `data` places (`[left, right]`),
/// starting from the given consumer and producer indices.
fn halves<P: Platform>(
    layout: &Layout,
    role: Role,
    page: &ControlPage<Memory<P>>,
    data: [(Memory<P>, usize); 2],
    (cons, prod): (u32, u32),
) -> (Reader<Memory<P>>, Writer<Memory<P>>) {
    let [left, right] = data;
    let (read, write) = match role {
        Role::Server => (left, right),
        Role::Client => (right, left),
    };
    let geometry = |side: Side, offset| RingGeometry {
        side,
        offset,
        size: layout.size(side) as u32,
    };
    // Each ring lies inside its region (the layout places it; the lengths were checked), so
    // building the halves cannot panic.
    let reader = Consumer::new(
        page.clone(),
        read.0,
        geometry(role.read_side(), read.1),
        role,
        cons,
    );
    let writer = Producer::new(
        page.clone(),
        write.0,
        geometry(role.write_side(), write.1),
        role,
        prod,
    );
    (Reader::new(reader), Writer::new(writer))
}

/// Serve `client` at `address`: share the control page and rings, bind a port, write the page and
/// publish the keys. The client may connect later ([`Link::state`] says when); data written
/// before it does waits in the ring.
pub fn serve<P: Platform>(
    platform: &P,
    client: DomId,
    address: &Address,
    sizes: RingSizes,
) -> Result<Channel<P>, ErrorOf<P>> {
    let layout = Layout::for_min_sizes(sizes.server_read, sizes.server_write)?;
    let store = platform.store().map_err(Error::Xenstore)?;
    let me = own_domid::<P>(&store)?;
    let sharer = platform.sharer().map_err(Error::backend(Op::OpenSharer))?;
    let events = platform.events().map_err(Error::backend(Op::OpenEvents))?;
    let port = events
        .bind_unbound_port(client)
        .map_err(Error::backend(Op::AllocatePort))?;
    events.unmask(port).map_err(Error::backend(Op::Unmask))?;
    let notify = UnmapNotify {
        clear_byte: Some(abi::SRV_LIVE),
        event: Some(port),
    };
    let control = sharer
        .share_pages(client, 1, true, Some(notify))
        .map_err(Error::backend(Op::ShareControlPage))?;
    let control_ref = control.refs().first().copied();
    let control = Memory::<P>::Granted(Arc::new(control));
    check_len(&control, abi::PAGE_SIZE, Op::ShareControlPage)?;
    let Some(control_ref) = control_ref else {
        return Err(Error::ShortRegion {
            op: Op::ShareControlPage,
            len: 0,
            needed: 1,
        });
    };
    let page = ControlPage::new(control.clone());
    page.zero();
    page.set_order(Side::Left, layout.order(Side::Left));
    page.set_order(Side::Right, layout.order(Side::Right));
    page.set_live(abi::CLI_LIVE, abi::LIVE_WAITING);
    page.set_live(abi::SRV_LIVE, abi::LIVE_CONNECTED);
    page.set_notify(abi::CLI_NOTIFY, abi::NOTIFY_WRITE);

    let (data, rings) = place_rings::<P>(&layout, &control, |side, count| {
        let pages = sharer
            .share_pages(client, count, true, None)
            .map_err(Error::backend(Op::ShareRingPages))?;
        for (index, gref) in layout.grant_indices(side).zip(pages.refs()) {
            page.set_grant(index, gref.0);
        }
        let memory = Memory::Granted(Arc::new(pages));
        check_len(&memory, count * abi::PAGE_SIZE, Op::ShareRingPages)?;
        Ok(memory)
    })?;

    let path = address.server_path(client);
    let perms = [Perm::new(me, Access::None), Perm::new(client, Access::Read)];
    let ring_ref = control_ref.0.to_string();
    let port_text = port.0.to_string();
    let publication = Publication::publish(
        &store,
        &path,
        &[("ring-ref", &ring_ref), ("event-channel", &port_text)],
        &perms,
    )
    .map_err(Error::Xenstore)?;

    let (reader, writer) = halves(&layout, Role::Server, &page, data, (0, 0));
    Ok(Channel {
        link: Link::new(page, Role::Server, port, client),
        reader,
        writer,
        events,
        hold: Hold {
            control,
            rings,
            _device: Device::Sharer(sharer),
            store: Arc::new(store),
            publication: Some(publication),
        },
    })
}

/// The watch token a waiting client uses.
const WATCH_TOKEN: &str = "vchan-client";

/// A client on its way to a server: it knows where the server's keys are, and looks for them
/// when asked ([`attempt`](Dial::attempt)); once they are there it joins the server.
pub struct Dial<P: Platform> {
    store: Arc<P::Store>,
    server: DomId,
    path: String,
    watching: bool,
}

impl<P: Platform> Dial<P> {
    /// A client of `server`'s vchan at `address` (the path is resolved for this domain).
    pub fn new(platform: &P, server: DomId, address: &Address) -> Result<Self, ErrorOf<P>> {
        let store = platform.store().map_err(Error::Xenstore)?;
        let me = own_domid::<P>(&store)?;
        Ok(Dial {
            path: address.client_path(server, me),
            store: Arc::new(store),
            server,
            watching: false,
        })
    }

    /// The path of the server's keys.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The store connection, for a driver that waits for its watch events.
    pub fn store(&self) -> &P::Store {
        &self.store
    }

    /// The error for a server that never published (for this domain).
    pub fn no_server(&self) -> ErrorOf<P> {
        Error::NoServer {
            path: self.path.clone(),
        }
    }

    /// Look for the server's keys (once each); if they are there, join the server: bind its
    /// port, map its pages, validate what it wrote, and announce ourselves. `None`: no server
    /// has published for us yet. With `watch`, a watch on the path is then in place (its first
    /// event comes at once, then one per change), so the driver can wait for the store to
    /// change and ask again.
    pub fn attempt(&mut self, platform: &P, watch: bool) -> Result<Option<Channel<P>>, ErrorOf<P>> {
        match read_server_keys::<P>(&*self.store, &self.path)? {
            Some((ring_ref, remote_port)) => {
                self.stop_watching();
                join(
                    platform,
                    Arc::clone(&self.store),
                    self.server,
                    &self.path,
                    (ring_ref, remote_port),
                )
                .map(Some)
            }
            None if watch && !self.watching => {
                self.store
                    .watch(&self.path, WATCH_TOKEN)
                    .map_err(Error::Xenstore)?;
                self.watching = true;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn stop_watching(&mut self) {
        if self.watching {
            // The keys are read (or the wait is over); a failure to remove the watch changes
            // neither.
            let _ = self.store.unwatch(&self.path, WATCH_TOKEN);
            self.watching = false;
        }
    }
}

impl<P: Platform> Drop for Dial<P> {
    fn drop(&mut self) {
        self.stop_watching();
    }
}

/// Read the server's two keys (once each) and check them: `None` if they are not there (or not
/// readable for us: like xenstored, a store answers `EACCES` for a missing node under an
/// unreadable parent, and to a client both mean "no server published for us yet").
fn read_server_keys<P: Platform>(
    store: &P::Store,
    path: &str,
) -> Result<Option<(GrantRef, Port)>, ErrorOf<P>> {
    let mut values = [0u32; 2];
    for (value, key) in values.iter_mut().zip(["ring-ref", "event-channel"]) {
        let raw = match store.read(TxId::NONE, &alloc::format!("{path}/{key}")) {
            Ok(raw) => raw,
            Err(e) if matches!(e.errno(), Some(Errno::ENOENT | Errno::EACCES)) => return Ok(None),
            Err(e) => return Err(Error::Xenstore(e)),
        };
        let text = String::from_utf8_lossy(&raw);
        *value = match text.trim().parse::<u32>() {
            Ok(v) if v != 0 => v,
            _ => {
                return Err(Error::BadKey {
                    key,
                    value: text.into_owned(),
                })
            }
        };
    }
    Ok(Some((GrantRef(values[0]), Port(values[1]))))
}

/// Join the server whose keys were just read.
fn join<P: Platform>(
    platform: &P,
    store: Arc<P::Store>,
    server: DomId,
    path: &str,
    (ring_ref, remote_port): (GrantRef, Port),
) -> Result<Channel<P>, ErrorOf<P>> {
    let mapper = platform.mapper().map_err(Error::backend(Op::OpenMapper))?;
    let events = platform.events().map_err(Error::backend(Op::OpenEvents))?;
    let port = events
        .bind_interdomain(server, remote_port)
        .map_err(Error::backend(Op::BindPort))?;
    events.unmask(port).map_err(Error::backend(Op::Unmask))?;
    // Mapped without the unmap notification: it is set once we have joined (below). Set now, a
    // failed attempt would clear the live byte of a server that is still waiting, or of another
    // client that has it, as it unmaps.
    let control = mapper
        .map_grant_refs(server, &[ring_ref], true, None)
        .map_err(Error::backend(Op::MapControlPage))?;
    let control = Arc::new(control);
    let control_mapping = Arc::clone(&control);
    let control = Memory::<P>::Mapped(control);
    check_len(&control, abi::PAGE_SIZE, Op::MapControlPage)?;
    let page = ControlPage::new(control.clone());

    // A server that already has a client, or has closed, is not ours to join (stale keys of a
    // server that is going away, or someone else's channel): two clients on one page would
    // corrupt each other's indices. A live server whose client has exited is waiting again:
    // libxenvchan serves clients in turn on one page that way (Xen's vchan-socket-proxy in
    // server mode does), and the indices carry on from where the last client left them.
    let client_slot = page.live(abi::CLI_LIVE);
    if !matches!(client_slot, abi::LIVE_WAITING | abi::LIVE_EXITED)
        || page.live(abi::SRV_LIVE) != abi::LIVE_CONNECTED
    {
        return Err(Error::NotWaiting { path: path.into() });
    }
    // A server that serves in turn keeps its keys published; a one-connection server (this
    // crate's listeners) withdraws them once its client connects. So a page whose client has
    // exited is joined only while the keys we came by still name it: stale keys, read before the
    // withdrawal, must not lead a second client into a finished connection. (Keys that cannot be
    // read again, for any reason, do not confirm it either.)
    if client_slot == abi::LIVE_EXITED
        && !matches!(read_server_keys::<P>(&store, path), Ok(Some(keys)) if keys == (ring_ref, remote_port))
    {
        return Err(Error::NotWaiting { path: path.into() });
    }
    // Everything the server wrote is read once, validated, and kept privately from here on.
    let layout = Layout::from_orders(page.order(Side::Left), page.order(Side::Right))?;
    let (data, rings) = place_rings::<P>(&layout, &control, |side, count| {
        let refs: Vec<GrantRef> = layout
            .grant_indices(side)
            .map(|i| GrantRef(page.grant(i)))
            .collect();
        // The client writes the left ring and only reads the right one.
        let writable = side == Role::Client.write_side();
        let mapping = mapper
            .map_grant_refs(server, &refs, writable, None)
            .map_err(Error::backend(Op::MapRingPages))?;
        let memory = Memory::Mapped(Arc::new(mapping));
        check_len(&memory, count * abi::PAGE_SIZE, Op::MapRingPages)?;
        Ok(memory)
    })?;
    // Start from the indices as the server left them (it may have written before we came).
    let cons = page.index_relaxed(abi::RIGHT_CONS);
    let prod = page.index_relaxed(abi::LEFT_PROD);
    let (reader, writer) = halves(&layout, Role::Client, &page, data, (cons, prod));
    // Check the indices we inherited before announcing ourselves.
    reader.available()?;
    writer.space()?;
    // Joined: from here on our death must reach the server, as our live byte cleared and an
    // event, whatever kills us. (Between this and the next line a crash would clear a byte we
    // have not set yet: the server reads a client that came and went.)
    let notify = UnmapNotify {
        clear_byte: Some(abi::CLI_LIVE),
        event: Some(port),
    };
    mapper
        .set_unmap_notify(&control_mapping, notify)
        .map_err(Error::backend(Op::ArmUnmapNotify))?;
    drop(control_mapping);
    page.set_live(abi::CLI_LIVE, abi::LIVE_CONNECTED);
    page.set_notify(abi::SRV_NOTIFY, abi::NOTIFY_WRITE);
    events
        .notify(port)
        .map_err(Error::backend(Op::NotifyConnect))?;
    Ok(Channel {
        link: Link::new(page, Role::Client, port, server),
        reader,
        writer,
        events,
        hold: Hold {
            control,
            rings,
            _device: Device::Mapper(mapper),
            store,
            publication: None,
        },
    })
}
