//! The store itself: an in-memory tree with xenstored's semantics and no I/O.
//!
//! One [`Store`] holds the nodes, the introduced domains and every connection's watches,
//! transactions and queued watch events. Callers (the in-process [`crate::local`] store, the
//! [`crate::daemon`]) identify a connection by the [`ConnId`] that [`Store::connect`] handed out;
//! the store knows its domain and applies permissions and quotas accordingly.
//!
//! Semantics follow the C xenstored:
//! - dom0 is privileged; a node's owner (first permission entry) has full access; another domain
//!   gets the entry naming it, else the first entry's access;
//! - an operation on a missing node answers `ENOENT` only if the nearest existing ancestor grants
//!   the access asked for, `EACCES` otherwise (so nothing leaks about hidden nodes);
//! - writing a missing node creates it and any missing parents; each new node inherits its
//!   parent's permissions, and a node an unprivileged domain creates is owned by that domain;
//! - removing a node removes its subtree; removing a missing node whose parent exists succeeds;
//! - transactions see a private copy of every node they touch (copied on first access); commit
//!   fails with `EAGAIN` if any touched node changed meanwhile;
//! - a watch fires once when registered, then for every change at or under its path; removing a
//!   subtree fires the removed node and, exactly, every removed descendant; relative watches get
//!   relative paths; `@introduceDomain` and `@releaseDomain` fire on domain introduction/release;
//! - quotas bind unprivileged domains only (except the transaction limit, which binds all).
//!
//! Errors are the wire's [`Errno`]s. Operations on a closed connection (disconnected, or its
//! domain released) fail with `EIO`. Quota failures use the names the reference daemons use:
//! `ENOSPC` for the node count, the permission-list length and open transactions (C xenstored),
//! `E2BIG` for an over-long value (oxenstored; C xenstored says `ENOSPC`) and for too many watches
//! (C xenstored).
//!
//! ```
//! use xenstore::store::Store;
//! use xenstore::{DomId, TxId};
//!
//! let mut store = Store::new();
//! let dom0 = store.connect(DomId(0));
//! store.write(dom0, TxId::NONE, "/vm/name", b"guest").unwrap();
//! assert_eq!(store.read(dom0, TxId::NONE, "/vm/name").unwrap(), b"guest");
//! let tx = store.transaction_start(dom0).unwrap();
//! store.write(dom0, tx, "/vm/name", b"other").unwrap();
//! store.write(dom0, TxId::NONE, "/vm/name", b"racer").unwrap();
//! assert_eq!(store.transaction_end(dom0, tx, true), Err(xenstore::Errno::EAGAIN));
//! ```

use crate::wire::{self, is_special, Message, PathKind, Reply, Request};
use crate::{Access, DomId, Errno, Perm, TxId, WatchEvent};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Identifies one connection to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Per-domain limits, applied to unprivileged domains (defaults as in xenstored 4.17).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own (`-E`, default 1000); beyond it writes fail with `ENOSPC`.
    pub max_nodes: usize,
    /// Largest value a domain may write (`-S`, default 2048 bytes); beyond it `E2BIG`.
    pub max_value_size: usize,
    /// Watches a domain may hold (`-W`, default 128); beyond it `E2BIG`.
    pub max_watches: usize,
    /// Transactions open at once (`-t`, default 10): per domain for an unprivileged domain (all
    /// its connections together), per connection for dom0; beyond it `ENOSPC`.
    pub max_transactions: usize,
    /// Entries in one permission list (`-A`, default 5); beyond it `ENOSPC`.
    pub max_perms: usize,
    /// Nodes one transaction of an unprivileged domain may touch (read, write or look up, present
    /// or not; `-Q transaction-nodes`, default 1024); beyond it the operation fails with `ENOSPC`
    /// and so does the transaction's commit.
    pub max_transaction_nodes: usize,
    /// Watch events queued for one connection before the oldest are dropped.
    pub max_queued_events: usize,
}

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas {
            max_nodes: 1000,
            max_value_size: 2048,
            max_watches: 128,
            max_transactions: 10,
            max_perms: 5,
            max_transaction_nodes: 1024,
            max_queued_events: 65536,
        }
    }
}

const READ: u8 = 1;
const WRITE: u8 = 2;
const OWNER: u8 = 4;

#[derive(Debug, Clone)]
struct Node {
    value: Vec<u8>,
    perms: Vec<Perm>,
    /// Child names in creation order, as xenstored keeps them.
    children: Vec<String>,
    generation: u64,
}

#[derive(Debug, Default)]
struct Tree {
    nodes: HashMap<String, Node>,
    generation: u64,
    /// Nodes owned by each domain (the first permission entry).
    owned: HashMap<DomId, usize>,
}

impl Tree {
    fn put(&mut self, path: String, mut node: Node) {
        self.generation += 1;
        node.generation = self.generation;
        *self.owned.entry(node.perms[0].domid).or_default() += 1;
        if let Some(old) = self.nodes.insert(path, node) {
            self.disown(old.perms[0].domid);
        }
    }

    fn remove(&mut self, path: &str) {
        if let Some(old) = self.nodes.remove(path) {
            self.generation += 1;
            self.disown(old.perms[0].domid);
        }
    }

    fn disown(&mut self, domid: DomId) {
        if let Some(n) = self.owned.get_mut(&domid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.owned.remove(&domid);
            }
        }
    }
}

/// A watch firing to deliver once the operation (or its transaction) completes.
#[derive(Debug, Clone)]
enum Fire {
    /// The node changed: watches at or above it fire.
    Subtree { path: String, perms: Vec<Vec<Perm>> },
    /// A removed descendant: only watches on exactly this path fire.
    Exact { path: String, perms: Vec<Perm> },
}

#[derive(Debug, Default)]
struct Tx {
    /// Private copies of every node touched, `None` for "absent".
    overlay: HashMap<String, Option<Node>>,
    /// The generation of each touched node when first touched (`None`: it did not exist).
    base: HashMap<String, Option<u64>>,
    modified: BTreeSet<String>,
    fires: Vec<Fire>,
    owned_delta: HashMap<DomId, isize>,
    /// An operation went over [`Quotas::max_transaction_nodes`]: the view is incomplete, so the
    /// transaction can only be aborted (its commit fails with `ENOSPC`).
    failed: bool,
}

#[derive(Debug)]
struct Watch {
    /// The canonical (absolute or special) path.
    path: String,
    /// The path as registered (relative watches report relative paths).
    relative: bool,
    token: String,
}

#[derive(Debug)]
struct Conn {
    domid: DomId,
    watches: Vec<Watch>,
    transactions: HashMap<TxId, Tx>,
    events: VecDeque<WatchEvent>,
}

/// Who is asking: the domain and the domain it may act for (`SET_TARGET`).
#[derive(Debug, Clone, Copy)]
struct Who {
    domid: DomId,
    target: Option<DomId>,
}

impl Who {
    fn privileged(self) -> bool {
        self.domid == DomId::DOM0
    }

    /// `perm_for_conn`: the READ/WRITE/OWNER bits this domain has under `perms`.
    fn bits(self, perms: &[Perm]) -> u8 {
        let Some(owner) = perms.first() else {
            return if self.privileged() {
                READ | WRITE | OWNER
            } else {
                0
            };
        };
        if self.privileged() || owner.domid == self.domid || Some(owner.domid) == self.target {
            return READ | WRITE | OWNER;
        }
        let access = perms[1..]
            .iter()
            .find(|p| p.domid == self.domid || Some(p.domid) == self.target)
            .map_or(owner.access, |p| p.access);
        match access {
            Access::None => 0,
            Access::Read => READ,
            Access::Write => WRITE,
            Access::Both => READ | WRITE,
        }
    }
}

/// The nodes as one operation sees them: the tree itself, or a transaction's private view.
struct View<'a> {
    tree: &'a mut Tree,
    tx: Option<&'a mut Tx>,
    fires: Vec<Fire>,
    /// How many nodes the transaction may hold copies of (`None`: no limit).
    tx_node_limit: Option<usize>,
    /// A node was looked at that the transaction had no room to record.
    tx_node_limit_hit: bool,
}

impl View<'_> {
    fn get(&mut self, path: &str) -> Option<Node> {
        let Some(tx) = self.tx.as_deref_mut() else {
            return self.tree.nodes.get(path).cloned();
        };
        if let Some(copy) = tx.overlay.get(path) {
            return copy.clone();
        }
        let current = self.tree.nodes.get(path).cloned();
        if self
            .tx_node_limit
            .is_some_and(|max| tx.overlay.len() >= max)
        {
            // No room to record it: the operation fails and poisons the transaction, so an
            // answer not taken from the snapshot can never be committed.
            self.tx_node_limit_hit = true;
            return current;
        }
        tx.base
            .insert(path.to_owned(), current.as_ref().map(|n| n.generation));
        tx.overlay.insert(path.to_owned(), current.clone());
        current
    }

    fn exists(&mut self, path: &str) -> bool {
        self.get(path).is_some()
    }

    fn put(&mut self, path: &str, node: Node) {
        if self.tx.is_none() {
            self.tree.put(path.to_owned(), node);
            return;
        }
        let old_owner = self.get(path).map(|n| n.perms[0].domid);
        if let Some(tx) = self.tx.as_deref_mut() {
            if let Some(d) = old_owner {
                *tx.owned_delta.entry(d).or_default() -= 1;
            }
            *tx.owned_delta.entry(node.perms[0].domid).or_default() += 1;
            tx.overlay.insert(path.to_owned(), Some(node));
            tx.modified.insert(path.to_owned());
        }
    }

    fn remove(&mut self, path: &str) {
        if self.tx.is_none() {
            self.tree.remove(path);
            return;
        }
        let old_owner = self.get(path).map(|n| n.perms[0].domid);
        if let Some(tx) = self.tx.as_deref_mut() {
            if let Some(d) = old_owner {
                *tx.owned_delta.entry(d).or_default() -= 1;
            }
            tx.overlay.insert(path.to_owned(), None);
            tx.modified.insert(path.to_owned());
        }
    }

    fn owned(&self, domid: DomId) -> usize {
        let base = self.tree.owned.get(&domid).copied().unwrap_or(0) as isize;
        let delta = self
            .tx
            .as_ref()
            .and_then(|tx| tx.owned_delta.get(&domid).copied())
            .unwrap_or(0);
        usize::try_from(base + delta).unwrap_or(0)
    }

    fn fire(&mut self, fire: Fire) {
        match self.tx.as_deref_mut() {
            Some(tx) => tx.fires.push(fire),
            None => self.fires.push(fire),
        }
    }

    /// `get_node` with `errno_from_parents`: the node if `who` has `need` on it.
    fn get_checked(&mut self, who: Who, path: &str, need: u8) -> Result<Node, Errno> {
        match self.get(path) {
            Some(node) if who.bits(&node.perms) & need == need => Ok(node),
            Some(_) => Err(Errno::EACCES),
            None => Err(self.errno_from_parents(who, path, Errno::ENOENT, need)),
        }
    }

    /// Report `errnum` only if the nearest existing ancestor grants `need`; `EACCES` otherwise.
    fn errno_from_parents(&mut self, who: Who, path: &str, errnum: Errno, need: u8) -> Errno {
        let mut cur = path;
        while let Some(parent) = parent_of(cur) {
            if let Some(node) = self.get(parent) {
                return if who.bits(&node.perms) & need != 0 {
                    errnum
                } else {
                    Errno::EACCES
                };
            }
            cur = parent;
        }
        Errno::EACCES
    }
}

/// The parent of an absolute path; `None` for the root.
fn parent_of(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn child_path(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Whether `path` is `watched` or under it (`is_child` in xenstored).
fn is_at_or_under(path: &str, watched: &str) -> bool {
    if watched == "/" {
        return path.starts_with('/');
    }
    path == watched
        || (path.starts_with(watched) && path.as_bytes().get(watched.len()) == Some(&b'/'))
}

/// The home of a domain: `/local/domain/<domid>`.
pub fn domain_path(domid: DomId) -> String {
    format!("/local/domain/{domid}")
}

/// Validate `path` and resolve a relative one under the domain's home.
pub fn canonicalize(domid: DomId, path: &str, kind: PathKind) -> Result<String, Errno> {
    wire::validate_path(path, kind)?;
    if path.starts_with('/') || is_special(path) {
        return Ok(path.to_owned());
    }
    let abs = format!("{}/{path}", domain_path(domid));
    if abs.len() > wire::ABS_PATH_MAX {
        return Err(Errno::EINVAL);
    }
    Ok(abs)
}

/// What the transport must do after [`Store::handle_message`], besides sending the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A domain was introduced (the daemon opens its socket).
    Introduced(DomId),
    /// A domain was released: close these connections of it (the daemon removes its socket).
    Released(DomId, Vec<ConnId>),
}

/// The outcome of one wire request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// The reply to send (an `ERROR` message when the request failed).
    pub reply: Message,
    /// What else the transport must do.
    pub effect: Option<Effect>,
}

/// The xenstore tree, the domains and every connection's state.
#[derive(Debug)]
pub struct Store {
    tree: Tree,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: u64,
    next_tx: u32,
    introduced: BTreeSet<DomId>,
    targets: HashMap<DomId, DomId>,
    special_perms: HashMap<&'static str, Vec<Perm>>,
    quotas: Quotas,
    /// Connections that gained watch events since the last [`Store::take_woken`].
    woken: BTreeSet<ConnId>,
}

impl Default for Store {
    fn default() -> Store {
        Store::new()
    }
}

impl Store {
    /// xenstored's initial tree (`/`, `/local`, `/local/domain`, `/tool`, all owned by dom0 with
    /// no access for anyone else) with dom0 introduced and default quotas.
    pub fn new() -> Store {
        Store::with_quotas(Quotas::default())
    }

    /// The initial tree with these quotas.
    pub fn with_quotas(quotas: Quotas) -> Store {
        let n0 = vec![Perm::new(DomId::DOM0, Access::None)];
        let mut store = Store {
            tree: Tree::default(),
            conns: BTreeMap::new(),
            next_conn: 1,
            next_tx: 1,
            introduced: BTreeSet::from([DomId::DOM0]),
            targets: HashMap::new(),
            special_perms: HashMap::from([
                (wire::INTRODUCE_DOMAIN, n0.clone()),
                (wire::RELEASE_DOMAIN, n0.clone()),
            ]),
            quotas,
            woken: BTreeSet::new(),
        };
        let node = |children: &[&str]| Node {
            value: Vec::new(),
            perms: n0.clone(),
            children: children.iter().map(|c| c.to_string()).collect(),
            generation: 0,
        };
        store.tree.put("/".into(), node(&["local", "tool"]));
        store.tree.put("/local".into(), node(&["domain"]));
        store.tree.put("/local/domain".into(), node(&[]));
        store.tree.put("/tool".into(), node(&[]));
        store
    }

    /// The quotas in force.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// Open a connection for `domid`.
    pub fn connect(&mut self, domid: DomId) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                domid,
                watches: Vec::new(),
                transactions: HashMap::new(),
                events: VecDeque::new(),
            },
        );
        id
    }

    /// Close a connection: its watches go and its open transactions are aborted.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.woken.remove(&conn);
    }

    /// Whether the connection is still open.
    pub fn is_connected(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// The domain of a connection.
    pub fn conn_domid(&self, conn: ConnId) -> Option<DomId> {
        self.conns.get(&conn).map(|c| c.domid)
    }

    /// The open connections of a domain.
    pub fn conns_of(&self, domid: DomId) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.domid == domid)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Every node path, sorted.
    pub fn paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.tree.nodes.keys().cloned().collect();
        paths.sort();
        paths
    }

    /// How many nodes a domain owns.
    pub fn nodes_owned_by(&self, domid: DomId) -> usize {
        self.tree.owned.get(&domid).copied().unwrap_or(0)
    }

    fn who(&self, conn: ConnId) -> Result<Who, Errno> {
        // A closed connection (e.g. its domain was released) can do nothing more.
        let c = self.conns.get(&conn).ok_or(Errno::EIO)?;
        Ok(Who {
            domid: c.domid,
            target: self.targets.get(&c.domid).copied(),
        })
    }

    /// The view for an operation of `conn`, inside transaction `tx` if it is not `NONE`.
    fn view(&mut self, conn: ConnId, tx: TxId) -> Result<View<'_>, Errno> {
        let c = self.conns.get_mut(&conn).ok_or(Errno::EIO)?;
        let tx = if tx == TxId::NONE {
            None
        } else {
            Some(c.transactions.get_mut(&tx).ok_or(Errno::ENOENT)?)
        };
        let domid = c.domid;
        Ok(View {
            tree: &mut self.tree,
            tx,
            fires: Vec::new(),
            tx_node_limit: (domid != DomId::DOM0).then_some(self.quotas.max_transaction_nodes),
            tx_node_limit_hit: false,
        })
    }

    /// Run `op` on the view of `conn`/`tx` for the node path `path`, then deliver the watch
    /// events it raised (unless it ran in a transaction, which delivers them at commit).
    fn with_view<T>(
        &mut self,
        conn: ConnId,
        tx: TxId,
        path: &str,
        op: impl FnOnce(&mut View<'_>, Who, &str, &Quotas) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let who = self.who(conn)?;
        let path = canonicalize(who.domid, path, PathKind::Node)?;
        let quotas = self.quotas.clone();
        let mut view = self.view(conn, tx)?;
        let mut result = op(&mut view, who, &path, &quotas);
        if view.tx_node_limit_hit {
            if let Some(tx) = view.tx.as_deref_mut() {
                tx.failed = true;
            }
            result = Err(Errno::ENOSPC);
        }
        let fires = std::mem::take(&mut view.fires);
        drop(view);
        self.deliver(fires);
        result
    }

    /// Read a node's value.
    pub fn read(&mut self, conn: ConnId, tx: TxId, path: &str) -> Result<Vec<u8>, Errno> {
        self.with_view(conn, tx, path, |v, who, path, _| {
            Ok(v.get_checked(who, path, READ)?.value)
        })
    }

    /// Write a node's value, creating it and its missing parents.
    pub fn write(&mut self, conn: ConnId, tx: TxId, path: &str, value: &[u8]) -> Result<(), Errno> {
        // What a client could not send over the wire, the in-process store refuses the same way.
        if path.len() + 1 + value.len() > wire::PAYLOAD_MAX {
            return Err(Errno::E2BIG);
        }
        self.with_view(conn, tx, path, |v, who, path, quotas| {
            if !who.privileged() && value.len() > quotas.max_value_size {
                return Err(Errno::E2BIG);
            }
            match v.get_checked(who, path, WRITE) {
                Ok(mut node) => {
                    node.value = value.to_vec();
                    let perms = node.perms.clone();
                    v.put(path, node);
                    v.fire(Fire::Subtree {
                        path: path.to_owned(),
                        perms: vec![perms],
                    });
                    Ok(())
                }
                Err(Errno::ENOENT) => {
                    let perms = create(v, who, path, value, quotas)?;
                    v.fire(Fire::Subtree {
                        path: path.to_owned(),
                        perms: vec![perms],
                    });
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })
    }

    /// Create a node with an empty value; no error (and no watch event) if it exists.
    pub fn mkdir(&mut self, conn: ConnId, tx: TxId, path: &str) -> Result<(), Errno> {
        self.with_view(conn, tx, path, |v, who, path, quotas| {
            match v.get_checked(who, path, WRITE) {
                Ok(_) => Ok(()),
                Err(Errno::ENOENT) => {
                    let perms = create(v, who, path, b"", quotas)?;
                    v.fire(Fire::Subtree {
                        path: path.to_owned(),
                        perms: vec![perms],
                    });
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })
    }

    /// Remove a node and its subtree. Removing a missing node whose parent exists succeeds.
    pub fn rm(&mut self, conn: ConnId, tx: TxId, path: &str) -> Result<(), Errno> {
        self.with_view(conn, tx, path, |v, who, path, _| {
            let Some(parent) = parent_of(path) else {
                return Err(Errno::EINVAL);
            };
            let node = match v.get_checked(who, path, WRITE) {
                Ok(node) => node,
                Err(Errno::ENOENT) if v.exists(parent) => return Ok(()),
                Err(e) => return Err(e),
            };
            // Remove every descendant, firing each one's exact watches.
            let mut stack: Vec<String> =
                node.children.iter().map(|c| child_path(path, c)).collect();
            while let Some(p) = stack.pop() {
                if let Some(child) = v.get(&p) {
                    stack.extend(child.children.iter().map(|c| child_path(&p, c)));
                    v.remove(&p);
                    v.fire(Fire::Exact {
                        path: p,
                        perms: child.perms,
                    });
                }
            }
            v.remove(path);
            if let Some(mut parent_node) = v.get(parent) {
                let name = basename(path);
                parent_node.children.retain(|c| c != name);
                v.put(parent, parent_node);
            }
            v.fire(Fire::Subtree {
                path: path.to_owned(),
                perms: vec![node.perms],
            });
            Ok(())
        })
    }

    /// The names of a node's children, in creation order.
    pub fn directory(&mut self, conn: ConnId, tx: TxId, path: &str) -> Result<Vec<String>, Errno> {
        self.with_view(conn, tx, path, |v, who, path, _| {
            Ok(v.get_checked(who, path, READ)?.children)
        })
    }

    /// One chunk of a node's child list, starting at byte `offset` of the NUL-separated list, as
    /// `XS_DIRECTORY_PART` returns it: `(generation, names, done)`.
    pub fn directory_part(
        &mut self,
        conn: ConnId,
        tx: TxId,
        path: &str,
        offset: u32,
    ) -> Result<(u64, Vec<String>, bool), Errno> {
        self.with_view(conn, tx, path, |v, who, path, _| {
            let node = v.get_checked(who, path, READ)?;
            let mut all = Vec::new();
            for c in &node.children {
                all.extend_from_slice(c.as_bytes());
                all.push(0);
            }
            let off = offset as usize;
            if off >= all.len() {
                return Ok((node.generation, Vec::new(), true));
            }
            let genlen = node.generation.to_string().len() + 1;
            let maxlen = wire::PAYLOAD_MAX - genlen - 1;
            let mut len = 0;
            while off + len < all.len() {
                let rest = &all[off + len..];
                let n = rest
                    .iter()
                    .position(|b| *b == 0)
                    .map_or(rest.len(), |i| i + 1);
                if len + n > maxlen {
                    break;
                }
                len += n;
            }
            let chunk = &all[off..off + len];
            let names = chunk
                .split(|b| *b == 0)
                .filter(|n| !n.is_empty())
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect();
            Ok((node.generation, names, off + len == all.len()))
        })
    }

    /// A node's permission list (owner first). Special watch paths have their own lists.
    pub fn get_perms(&mut self, conn: ConnId, tx: TxId, path: &str) -> Result<Vec<Perm>, Errno> {
        if is_special(path) {
            let who = self.who(conn)?;
            let perms = self.special_perms.get(path).ok_or(Errno::ENOENT)?;
            if who.bits(perms) & READ == 0 {
                return Err(Errno::EACCES);
            }
            return Ok(perms.clone());
        }
        self.with_view(conn, tx, path, |v, who, path, _| {
            Ok(v.get_checked(who, path, READ)?.perms)
        })
    }

    /// Replace a node's permission list. Needs ownership (or dom0); only dom0 may change the
    /// owner (`EPERM`) or the permissions of the special watch paths.
    pub fn set_perms(
        &mut self,
        conn: ConnId,
        tx: TxId,
        path: &str,
        perms: &[Perm],
    ) -> Result<(), Errno> {
        let who = self.who(conn)?;
        if perms.is_empty() {
            return Err(Errno::EINVAL);
        }
        if !who.privileged() && perms.len() > self.quotas.max_perms {
            return Err(Errno::ENOSPC);
        }
        if is_special(path) {
            let current = self.special_perms.get_mut(path).ok_or(Errno::ENOENT)?;
            if who.bits(current) & (WRITE | OWNER) != (WRITE | OWNER) {
                return Err(Errno::EACCES);
            }
            *current = perms.to_vec();
            return Ok(());
        }
        self.with_view(conn, tx, path, |v, who, path, _| {
            let mut node = v.get_checked(who, path, WRITE | OWNER)?;
            if !who.privileged() && perms[0].domid != node.perms[0].domid {
                return Err(Errno::EPERM);
            }
            let old = std::mem::replace(&mut node.perms, perms.to_vec());
            v.put(path, node);
            v.fire(Fire::Subtree {
                path: path.to_owned(),
                perms: vec![old, perms.to_vec()],
            });
            Ok(())
        })
    }

    /// Begin a transaction on `conn`.
    pub fn transaction_start(&mut self, conn: ConnId) -> Result<TxId, Errno> {
        let who = self.who(conn)?;
        let max = self.quotas.max_transactions;
        // A guest's limit covers all its connections (a real guest has one ring; here it could
        // open many sockets); dom0's binds each connection.
        let open = if who.privileged() {
            self.conns.get(&conn).map_or(0, |c| c.transactions.len())
        } else {
            self.conns
                .values()
                .filter(|c| c.domid == who.domid)
                .map(|c| c.transactions.len())
                .sum()
        };
        if open >= max {
            return Err(Errno::ENOSPC);
        }
        let mut id = self.next_tx;
        let c = self.conns.get_mut(&conn).ok_or(Errno::EIO)?;
        // Ids are unique per connection; skip 0 (no transaction) and ids still in use.
        while id == 0 || c.transactions.contains_key(&TxId(id)) {
            id = id.wrapping_add(1);
        }
        self.next_tx = id.wrapping_add(1);
        c.transactions.insert(TxId(id), Tx::default());
        Ok(TxId(id))
    }

    /// Commit or abort a transaction; a commit fails with `EAGAIN` if anything it touched changed
    /// since. The transaction is gone afterwards either way.
    pub fn transaction_end(&mut self, conn: ConnId, tx: TxId, commit: bool) -> Result<(), Errno> {
        let c = self.conns.get_mut(&conn).ok_or(Errno::EIO)?;
        let privileged = c.domid == DomId::DOM0;
        let t = c.transactions.remove(&tx).ok_or(Errno::ENOENT)?;
        if !commit {
            return Ok(());
        }
        if t.failed {
            return Err(Errno::ENOSPC);
        }
        // The node quota was checked against the tree as it was when each node was created;
        // other transactions may have committed since (xenstored's `transaction_fix_domains`).
        if !privileged {
            let over = t.owned_delta.iter().any(|(domid, delta)| {
                *delta > 0
                    && self
                        .nodes_owned_by(*domid)
                        .saturating_add(delta.unsigned_abs())
                        > self.quotas.max_nodes
            });
            if over {
                return Err(Errno::ENOSPC);
            }
        }
        let conflict = t
            .base
            .iter()
            .any(|(path, gen)| self.tree.nodes.get(path).map(|n| n.generation) != *gen);
        if conflict {
            return Err(Errno::EAGAIN);
        }
        let mut overlay = t.overlay;
        for path in t.modified {
            match overlay.remove(&path).flatten() {
                Some(node) => self.tree.put(path, node),
                None => self.tree.remove(&path),
            }
        }
        self.deliver(t.fires);
        Ok(())
    }

    /// Register a watch; it fires once at once.
    pub fn watch(&mut self, conn: ConnId, path: &str, token: &str) -> Result<(), Errno> {
        let who = self.who(conn)?;
        let canon = canonicalize(who.domid, path, PathKind::AllowSpecial)?;
        let domain_watches: usize = self
            .conns
            .values()
            .filter(|c| c.domid == who.domid)
            .map(|c| c.watches.len())
            .sum();
        let max_watches = self.quotas.max_watches;
        let c = self.conns.get_mut(&conn).ok_or(Errno::EIO)?;
        if c.watches
            .iter()
            .any(|w| w.path == canon && w.token == token)
        {
            return Err(Errno::EEXIST);
        }
        if !who.privileged() && domain_watches >= max_watches {
            return Err(Errno::E2BIG);
        }
        let relative = !path.starts_with('/') && !is_special(path);
        c.watches.push(Watch {
            path: canon,
            relative,
            token: token.to_owned(),
        });
        self.queue_event(
            conn,
            WatchEvent {
                path: path.to_owned(),
                token: token.to_owned(),
            },
        );
        Ok(())
    }

    /// Remove a watch (`ENOENT` if there is no such watch).
    pub fn unwatch(&mut self, conn: ConnId, path: &str, token: &str) -> Result<(), Errno> {
        let who = self.who(conn)?;
        let canon = canonicalize(who.domid, path, PathKind::AllowSpecial)?;
        let c = self.conns.get_mut(&conn).ok_or(Errno::EIO)?;
        let i = c
            .watches
            .iter()
            .position(|w| w.path == canon && w.token == token)
            .ok_or(Errno::ENOENT)?;
        c.watches.remove(i);
        Ok(())
    }

    /// Drop every watch and transaction of the connection (`XS_RESET_WATCHES`).
    pub fn reset_watches(&mut self, conn: ConnId) -> Result<(), Errno> {
        let c = self.conns.get_mut(&conn).ok_or(Errno::EIO)?;
        c.watches.clear();
        c.transactions.clear();
        Ok(())
    }

    /// Take the oldest queued watch event of a connection.
    pub fn pop_event(&mut self, conn: ConnId) -> Option<WatchEvent> {
        self.conns.get_mut(&conn)?.events.pop_front()
    }

    /// Whether a connection has watch events queued.
    pub fn has_events(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| !c.events.is_empty())
    }

    /// The connections that gained watch events since the last call.
    pub fn take_woken(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.woken).into_iter().collect()
    }

    /// The home path of a domain.
    pub fn get_domain_path(&self, domid: DomId) -> String {
        domain_path(domid)
    }

    /// Mark a domain introduced and fire `@introduceDomain`; `false` if it already was.
    pub fn introduce_domain(&mut self, domid: DomId) -> bool {
        if !self.introduced.insert(domid) {
            return false;
        }
        self.deliver_special(wire::INTRODUCE_DOMAIN);
        true
    }

    /// Release a domain: fire `@releaseDomain`, forget its target, close its connections
    /// (returned so the transport can hang them up). `ENOENT` if it was not introduced, `EINVAL`
    /// for dom0.
    pub fn release_domain(&mut self, domid: DomId) -> Result<Vec<ConnId>, Errno> {
        if domid == DomId::DOM0 {
            return Err(Errno::EINVAL);
        }
        if !self.introduced.remove(&domid) {
            return Err(Errno::ENOENT);
        }
        self.targets.remove(&domid);
        let conns = self.conns_of(domid);
        for c in &conns {
            self.disconnect(*c);
        }
        self.deliver_special(wire::RELEASE_DOMAIN);
        Ok(conns)
    }

    /// The introduced domains, in order.
    pub fn introduced_domains(&self) -> Vec<DomId> {
        self.introduced.iter().copied().collect()
    }

    /// Whether a domain has been introduced (and not released).
    pub fn is_domain_introduced(&self, domid: DomId) -> bool {
        self.introduced.contains(&domid)
    }

    /// Let `domid` act as the owner of `target`'s nodes (a device model serving a guest).
    pub fn set_target(&mut self, domid: DomId, target: DomId) {
        self.targets.insert(domid, target);
    }

    fn queue_event(&mut self, conn: ConnId, event: WatchEvent) {
        // `path\0token\0` must fit one message: xenstored drops longer events, and so do we
        // (turned into an `E2BIG` error message it would look like a reply).
        if event.path.len() + event.token.len() + 2 > wire::PAYLOAD_MAX {
            return;
        }
        let max = self.quotas.max_queued_events;
        if let Some(c) = self.conns.get_mut(&conn) {
            if c.events.len() >= max {
                c.events.pop_front();
            }
            c.events.push_back(event);
            self.woken.insert(conn);
        }
    }

    fn deliver(&mut self, fires: Vec<Fire>) {
        for fire in fires {
            let mut events = Vec::new();
            for (id, c) in &self.conns {
                let who = Who {
                    domid: c.domid,
                    target: self.targets.get(&c.domid).copied(),
                };
                for w in &c.watches {
                    let (path, readable) = match &fire {
                        Fire::Subtree { path, perms } => {
                            if !is_at_or_under(path, &w.path) {
                                continue;
                            }
                            (path, perms.iter().any(|p| who.bits(p) & READ != 0))
                        }
                        Fire::Exact { path, perms } => {
                            if *path != w.path {
                                continue;
                            }
                            (path, who.bits(perms) & READ != 0)
                        }
                    };
                    if !readable {
                        continue;
                    }
                    let prefix = format!("{}/", domain_path(c.domid));
                    let shown = match path.strip_prefix(&prefix) {
                        Some(rel) if w.relative => rel.to_owned(),
                        _ => path.clone(),
                    };
                    events.push((
                        *id,
                        WatchEvent {
                            path: shown,
                            token: w.token.clone(),
                        },
                    ));
                }
            }
            for (id, ev) in events {
                self.queue_event(id, ev);
            }
        }
    }

    fn deliver_special(&mut self, special: &'static str) {
        let perms = self.special_perms.get(special).cloned().unwrap_or_default();
        let mut events = Vec::new();
        for (id, c) in &self.conns {
            let who = Who {
                domid: c.domid,
                target: self.targets.get(&c.domid).copied(),
            };
            if who.bits(&perms) & READ == 0 {
                continue;
            }
            for w in c.watches.iter().filter(|w| w.path == special) {
                events.push((
                    *id,
                    WatchEvent {
                        path: special.to_owned(),
                        token: w.token.clone(),
                    },
                ));
            }
        }
        for (id, ev) in events {
            self.queue_event(id, ev);
        }
    }

    /// Answer one wire request from `conn`: parse it, check privileges, run it and build the
    /// reply (an `ERROR` message on failure), as xenstored's `process_message` does.
    pub fn handle_message(&mut self, conn: ConnId, msg: &Message) -> Handled {
        let (reply, effect) = match self.admit(conn, msg) {
            Ok(tx) => match Request::parse(msg) {
                Ok(req) => self.execute(conn, tx, req),
                Err(e) => (Reply::Error(e), None),
            },
            Err(e) => (Reply::Error(e), None),
        };
        Handled {
            reply: reply.to_message(msg.msg_type, msg.req_id, msg.tx_id),
            effect,
        }
    }

    /// The checks of xenstored's `process_message` that precede the payload, in its order: a
    /// type only the daemon sends is `ENOSYS`; a privileged type from a guest is `EACCES`; then
    /// the transaction id must name one of the connection's transactions (`ENOENT`), except for
    /// `WATCH` and `UNWATCH`, which ignore it (`XS_FLAG_NOTID`). Returns the transaction to use.
    fn admit(&self, conn: ConnId, msg: &Message) -> Result<TxId, Errno> {
        use wire::MsgType as T;
        if matches!(msg.msg_type, T::WatchEvent | T::Error | T::Invalid) {
            return Err(Errno::ENOSYS);
        }
        let who = self.who(conn)?;
        let privileged_only = matches!(
            msg.msg_type,
            T::Introduce | T::Release | T::IsDomainIntroduced | T::Resume | T::SetTarget
        );
        if privileged_only && !who.privileged() {
            return Err(Errno::EACCES);
        }
        let tx = msg.tx_id;
        if matches!(msg.msg_type, T::Watch | T::Unwatch) {
            return Ok(TxId::NONE);
        }
        if tx == TxId::NONE {
            return Ok(tx); // TRANSACTION_END outside one: EINVAL or ENOENT after parsing
        }
        let known = self
            .conns
            .get(&conn)
            .is_some_and(|c| c.transactions.contains_key(&tx));
        if known {
            Ok(tx)
        } else {
            Err(Errno::ENOENT)
        }
    }

    fn execute(&mut self, conn: ConnId, tx: TxId, req: Request) -> (Reply, Option<Effect>) {
        let who = match self.who(conn) {
            Ok(who) => who,
            Err(e) => return (Reply::Error(e), None),
        };
        // A transaction id must name one of this connection's open transactions.
        if tx != TxId::NONE
            && !self
                .conns
                .get(&conn)
                .is_some_and(|c| c.transactions.contains_key(&tx))
        {
            return (Reply::Error(Errno::ENOENT), None);
        }
        let ok = |r: Result<(), Errno>| r.map(|()| Reply::Ok);
        let privileged_only = matches!(
            req,
            Request::Introduce { .. }
                | Request::Release { .. }
                | Request::IsDomainIntroduced { .. }
                | Request::Resume { .. }
                | Request::SetTarget { .. }
                | Request::Control(_)
        );
        if privileged_only && !who.privileged() {
            return (Reply::Error(Errno::EACCES), None);
        }
        let mut effect = None;
        let result = match req {
            Request::Read { path } => self.read(conn, tx, &path).map(Reply::Read),
            Request::Write { path, value } => ok(self.write(conn, tx, &path, &value)),
            Request::Mkdir { path } => ok(self.mkdir(conn, tx, &path)),
            Request::Rm { path } => ok(self.rm(conn, tx, &path)),
            Request::Directory { path } => self.directory(conn, tx, &path).map(Reply::Directory),
            Request::DirectoryPart { path, offset } => self
                .directory_part(conn, tx, &path, offset)
                .map(|(generation, names, done)| Reply::DirectoryPart {
                    generation,
                    names,
                    done,
                }),
            Request::GetPerms { path } => self.get_perms(conn, tx, &path).map(Reply::Perms),
            Request::SetPerms { path, perms } => ok(self.set_perms(conn, tx, &path, &perms)),
            Request::Watch { path, token } => ok(self.watch(conn, &path, &token)),
            Request::Unwatch { path, token } => ok(self.unwatch(conn, &path, &token)),
            Request::TransactionStart if tx != TxId::NONE => Err(Errno::EBUSY),
            Request::TransactionStart => {
                self.transaction_start(conn).map(Reply::TransactionStarted)
            }
            Request::TransactionEnd { .. } if tx == TxId::NONE => Err(Errno::ENOENT),
            Request::TransactionEnd { commit } => ok(self.transaction_end(conn, tx, commit)),
            Request::GetDomainPath { domid } => Ok(Reply::DomainPath(domain_path(domid))),
            Request::ResetWatches => ok(self.reset_watches(conn)),
            Request::Introduce { domid, .. } if !domid.is_normal() => Err(Errno::EINVAL),
            Request::Introduce { domid, .. } => {
                if self.introduce_domain(domid) {
                    effect = Some(Effect::Introduced(domid));
                }
                Ok(Reply::Ok)
            }
            Request::Release { domid } => self.release_domain(domid).map(|conns| {
                effect = Some(Effect::Released(domid, conns));
                Reply::Ok
            }),
            Request::IsDomainIntroduced { domid } => {
                Ok(Reply::Introduced(self.is_domain_introduced(domid)))
            }
            Request::Resume { domid } if self.is_domain_introduced(domid) => Ok(Reply::Ok),
            Request::Resume { .. } => Err(Errno::ENOENT),
            Request::SetTarget { domid, target } => {
                self.set_target(domid, target);
                Ok(Reply::Ok)
            }
            Request::Control(_) => Err(Errno::ENOSYS),
        };
        (result.unwrap_or_else(Reply::Error), effect)
    }
}

/// Create `path` (known to be missing, with write access on its nearest ancestor) and its
/// missing parents. Returns the new node's permissions.
fn create(
    v: &mut View<'_>,
    who: Who,
    path: &str,
    value: &[u8],
    quotas: &Quotas,
) -> Result<Vec<Perm>, Errno> {
    // Missing ancestors, nearest first, then the first existing one.
    let mut missing = vec![path.to_owned()];
    let mut cur = path.to_owned();
    let mut ancestor = loop {
        let Some(parent) = parent_of(&cur).map(str::to_owned) else {
            return Err(Errno::EINVAL);
        };
        if let Some(node) = v.get(&parent) {
            break (parent, node);
        }
        missing.push(parent.clone());
        cur = parent;
    };
    if !who.privileged() && v.owned(who.domid) + missing.len() > quotas.max_nodes {
        return Err(Errno::ENOSPC);
    }
    let mut perms = Vec::new();
    while let Some(p) = missing.pop() {
        let (parent_path, mut parent) = ancestor;
        perms = parent.perms.clone();
        if !who.privileged() {
            perms[0].domid = who.domid;
        }
        parent.children.push(basename(&p).to_owned());
        v.put(&parent_path, parent);
        let node = Node {
            value: if missing.is_empty() {
                value.to_vec()
            } else {
                Vec::new()
            },
            perms: perms.clone(),
            children: Vec::new(),
            generation: 0,
        };
        v.put(&p, node.clone());
        ancestor = (p, node);
    }
    Ok(perms)
}

#[cfg(test)]
mod tests;
