//! A xenstore client over the guest's xenstore ring page, using the `xenstore` crate's codec.
//!
//! One request is in flight at a time. Its message (up to 16 + 4,096 bytes) is streamed through
//! the 1 KiB request ring in pieces, notifying xenstored after each; the reply is gathered from
//! the reply ring by the codec's incremental [`Decoder`]. Watch events arrive on the same ring,
//! interleaved with replies: they are set aside (in arrival order) for
//! [`StoreClient::next_watch_event`], and a reply is matched by its request id.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::mem::offset_of;
use core::time::Duration;

use xen_types::memory::SharedRegion;
use xen_types::DomId;
use xenstore::wire::{Decoder, Message, MsgType, Reply, Request};
use xenstore::{Perm, TxId, WatchEvent, XenStore};

use crate::abi::{XenstoreDomainInterface, XENSTORE_RING_SIZE};
use crate::error::{PvError, Result};
use crate::ring::ByteRing;
use crate::time::Instant;
use crate::Doorbell;

/// How long a request may wait for xenstored (to take it, and to answer) before it fails.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to xenstored through the ring page.
#[derive(Debug)]
pub struct StoreClient<'a, D: Doorbell> {
    requests: ByteRing<'a>,
    replies: ByteRing<'a>,
    bell: D,
    state: RefCell<State>,
}

#[derive(Debug, Default)]
struct State {
    decoder: Decoder,
    events: VecDeque<WatchEvent>,
    next_id: u32,
}

impl<'a, D: Doorbell> StoreClient<'a, D> {
    /// The client of the ring page `page` (a `xenstore_domain_interface`), notifying
    /// xenstored through `bell`.
    pub fn new(page: SharedRegion<'a>, bell: D) -> StoreClient<'a, D> {
        let field = |offset| page.subregion(offset, 4);
        type I = XenstoreDomainInterface;
        StoreClient {
            requests: ByteRing::new(
                page.subregion(offset_of!(I, req), XENSTORE_RING_SIZE),
                field(offset_of!(I, req_cons)),
                field(offset_of!(I, req_prod)),
                "xenstore request",
            ),
            replies: ByteRing::new(
                page.subregion(offset_of!(I, rsp), XENSTORE_RING_SIZE),
                field(offset_of!(I, rsp_cons)),
                field(offset_of!(I, rsp_prod)),
                "xenstore reply",
            ),
            bell,
            state: RefCell::new(State::default()),
        }
    }

    /// The doorbell (the store's event channel).
    pub fn doorbell(&self) -> &D {
        &self.bell
    }

    /// Move whatever the reply ring holds into the decoder; whether anything came.
    fn pull(&self, state: &mut State) -> Result<bool> {
        let mut buf = [0u8; XENSTORE_RING_SIZE];
        let n = self.replies.consume(&mut buf)?;
        if n > 0 {
            state.decoder.feed(&buf[..n]);
            // xenstored may be waiting for room to write the rest.
            self.bell.ring();
        }
        Ok(n > 0)
    }

    /// Decode what is buffered: watch events go to the queue; the first other message is
    /// returned.
    fn next_message(state: &mut State) -> Result<Option<Message>> {
        while let Some(msg) = state.decoder.next_message()? {
            if msg.msg_type == MsgType::WatchEvent {
                let event = Reply::parse_watch_event(&msg.payload)?;
                state.events.push_back(event);
            } else {
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }

    /// Send `request` and wait for its reply; an `ERROR` reply is [`PvError::Store`].
    fn call(&self, request: &Request, tx: TxId) -> Result<Reply> {
        let mut state = self.state.borrow_mut();
        let id = state.next_id;
        state.next_id = state.next_id.wrapping_add(1);
        let bytes = request.to_message(id, tx)?.encode()?;
        let mut deadline = self.bell.now().after(REPLY_TIMEOUT);
        let mut sent = 0;
        while sent < bytes.len() {
            let n = self.requests.produce(&bytes[sent..])?;
            if n > 0 {
                sent += n;
                self.bell.ring();
                deadline = self.bell.now().after(REPLY_TIMEOUT);
                continue;
            }
            // Full: xenstored is reading. Meanwhile keep its replies (watch events) flowing.
            self.pull(&mut state)?;
            if !self.bell.wait(deadline) {
                return Err(PvError::Timeout("xenstored to take a request"));
            }
        }
        loop {
            if let Some(msg) = Self::next_message(&mut state)? {
                if msg.req_id != id {
                    return Err(PvError::StoreProtocol(alloc::format!(
                        "a reply to request {} while request {id} waits",
                        msg.req_id
                    )));
                }
                return match Reply::parse(request.msg_type(), &msg)? {
                    Reply::Error(errno) => Err(PvError::Store(errno)),
                    reply => Ok(reply),
                };
            }
            if !self.pull(&mut state)? && !self.bell.wait(deadline) {
                return Err(PvError::Timeout("a xenstore reply"));
            }
        }
    }

    fn expect_ok(&self, request: &Request, tx: TxId) -> Result<()> {
        match self.call(request, tx)? {
            Reply::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Read a node's value.
    pub fn read(&self, tx: TxId, path: &str) -> Result<Vec<u8>> {
        match self.call(&Request::Read { path: path.into() }, tx)? {
            Reply::Read(value) => Ok(value),
            other => Err(unexpected(&other)),
        }
    }

    /// Read a node's value as text (xenstore values are bytes; the keys this crate reads are
    /// numbers and paths).
    pub fn read_string(&self, tx: TxId, path: &str) -> Result<String> {
        String::from_utf8(self.read(tx, path)?)
            .map_err(|_| PvError::StoreProtocol(alloc::format!("{path} is not UTF-8")))
    }

    /// Write a node's value, creating it and its parents.
    pub fn write(&self, tx: TxId, path: &str, value: &[u8]) -> Result<()> {
        let request = Request::Write {
            path: path.into(),
            value: value.to_vec(),
        };
        self.expect_ok(&request, tx)
    }

    /// Create a node with an empty value (no error if it exists).
    pub fn mkdir(&self, tx: TxId, path: &str) -> Result<()> {
        self.expect_ok(&Request::Mkdir { path: path.into() }, tx)
    }

    /// Remove a node and everything under it.
    pub fn rm(&self, tx: TxId, path: &str) -> Result<()> {
        self.expect_ok(&Request::Rm { path: path.into() }, tx)
    }

    /// The names of a node's children.
    pub fn directory(&self, tx: TxId, path: &str) -> Result<Vec<String>> {
        match self.call(&Request::Directory { path: path.into() }, tx)? {
            Reply::Directory(names) => Ok(names),
            other => Err(unexpected(&other)),
        }
    }

    /// A node's permissions, owner first.
    pub fn get_perms(&self, tx: TxId, path: &str) -> Result<Vec<Perm>> {
        match self.call(&Request::GetPerms { path: path.into() }, tx)? {
            Reply::Perms(perms) => Ok(perms),
            other => Err(unexpected(&other)),
        }
    }

    /// Replace a node's permissions (owner first).
    pub fn set_perms(&self, tx: TxId, path: &str, perms: &[Perm]) -> Result<()> {
        let request = Request::SetPerms {
            path: path.into(),
            perms: perms.to_vec(),
        };
        self.expect_ok(&request, tx)
    }

    /// Start a transaction.
    pub fn transaction_start(&self) -> Result<TxId> {
        match self.call(&Request::TransactionStart, TxId::NONE)? {
            Reply::TransactionStarted(tx) => Ok(tx),
            other => Err(unexpected(&other)),
        }
    }

    /// Commit (`commit`) or abort a transaction; a conflicting commit is `Store(EAGAIN)`.
    pub fn transaction_end(&self, tx: TxId, commit: bool) -> Result<()> {
        self.expect_ok(&Request::TransactionEnd { commit }, tx)
    }

    /// Watch `path` (and everything under it); xenstored fires it once at once.
    pub fn watch(&self, path: &str, token: &str) -> Result<()> {
        let request = Request::Watch {
            path: path.into(),
            token: token.into(),
        };
        self.expect_ok(&request, TxId::NONE)
    }

    /// Remove a watch.
    pub fn unwatch(&self, path: &str, token: &str) -> Result<()> {
        let request = Request::Unwatch {
            path: path.into(),
            token: token.into(),
        };
        self.expect_ok(&request, TxId::NONE)
    }

    /// The home path of a domain.
    pub fn get_domain_path(&self, domid: DomId) -> Result<String> {
        match self.call(&Request::GetDomainPath { domid }, TxId::NONE)? {
            Reply::DomainPath(path) => Ok(path),
            other => Err(unexpected(&other)),
        }
    }

    /// The next watch event, waiting for one until `deadline`: `Ok(None)` if none came.
    pub fn next_watch_event(&self, deadline: Instant) -> Result<Option<WatchEvent>> {
        let mut state = self.state.borrow_mut();
        loop {
            // Decode first: events may be buffered behind the last reply (xenstored sends a new
            // watch's first event right after its OK), with no event-channel kick to come.
            if let Some(msg) = Self::next_message(&mut state)? {
                return Err(PvError::StoreProtocol(alloc::format!(
                    "an unrequested {} reply (request {})",
                    msg.msg_type,
                    msg.req_id
                )));
            }
            if let Some(event) = state.events.pop_front() {
                return Ok(Some(event));
            }
            if !self.pull(&mut state)? && !self.bell.wait(deadline) {
                return Ok(None);
            }
        }
    }
}

/// The store as the `xenstore` crate's [`XenStore`] trait (what the vchan channel core uses):
/// every call forwards to the inherent one; a wait for a watch event with no timeout waits in
/// slices of [`REPLY_TIMEOUT`] until one comes.
impl<D: Doorbell> XenStore for StoreClient<'_, D> {
    fn read(&self, tx: TxId, path: &str) -> xenstore::Result<Vec<u8>> {
        Ok(StoreClient::read(self, tx, path)?)
    }
    fn write(&self, tx: TxId, path: &str, value: &[u8]) -> xenstore::Result<()> {
        Ok(StoreClient::write(self, tx, path, value)?)
    }
    fn mkdir(&self, tx: TxId, path: &str) -> xenstore::Result<()> {
        Ok(StoreClient::mkdir(self, tx, path)?)
    }
    fn rm(&self, tx: TxId, path: &str) -> xenstore::Result<()> {
        Ok(StoreClient::rm(self, tx, path)?)
    }
    fn directory(&self, tx: TxId, path: &str) -> xenstore::Result<Vec<String>> {
        Ok(StoreClient::directory(self, tx, path)?)
    }
    fn get_perms(&self, tx: TxId, path: &str) -> xenstore::Result<Vec<Perm>> {
        Ok(StoreClient::get_perms(self, tx, path)?)
    }
    fn set_perms(&self, tx: TxId, path: &str, perms: &[Perm]) -> xenstore::Result<()> {
        Ok(StoreClient::set_perms(self, tx, path, perms)?)
    }
    fn transaction_start(&self) -> xenstore::Result<TxId> {
        Ok(StoreClient::transaction_start(self)?)
    }
    fn transaction_end(&self, tx: TxId, commit: bool) -> xenstore::Result<()> {
        Ok(StoreClient::transaction_end(self, tx, commit)?)
    }
    fn watch(&self, path: &str, token: &str) -> xenstore::Result<()> {
        Ok(StoreClient::watch(self, path, token)?)
    }
    fn unwatch(&self, path: &str, token: &str) -> xenstore::Result<()> {
        Ok(StoreClient::unwatch(self, path, token)?)
    }
    fn next_watch_event(&self, timeout: Option<Duration>) -> xenstore::Result<Option<WatchEvent>> {
        match timeout {
            Some(timeout) => {
                let deadline = self.bell.now().after(timeout);
                Ok(StoreClient::next_watch_event(self, deadline)?)
            }
            None => loop {
                let deadline = self.bell.now().after(REPLY_TIMEOUT);
                if let Some(event) = StoreClient::next_watch_event(self, deadline)? {
                    return Ok(Some(event));
                }
            },
        }
    }
    fn get_domain_path(&self, domid: DomId) -> xenstore::Result<String> {
        Ok(StoreClient::get_domain_path(self, domid)?)
    }
}

fn unexpected(reply: &Reply) -> PvError {
    PvError::StoreProtocol(alloc::format!("unexpected reply {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;
    use core::cell::Cell;
    use xenstore::store::{ConnId, Store};
    use xenstore::{Access, Errno, XenstoreError};

    #[repr(C, align(8))]
    struct Page([u8; 4096]);

    const GUEST: DomId = DomId(5);

    /// xenstored's end of the ring, running the real store's semantics; it serves whenever the
    /// guest waits (one thread: deterministic).
    struct FakeXenstored<'a> {
        requests: ByteRing<'a>,
        replies: ByteRing<'a>,
        store: RefCell<Store>,
        guest: ConnId,
        dom0: ConnId,
        incoming: RefCell<Decoder>,
        outgoing: RefCell<VecDeque<u8>>,
        clock: Cell<u64>,
        rings: Cell<u32>,
        /// Serve at most this many bytes of reply per wake-up (to split messages).
        chunk: usize,
        /// Answer nothing (a dead xenstored).
        silent: bool,
    }

    impl<'a> FakeXenstored<'a> {
        fn new(page: SharedRegion<'a>, chunk: usize) -> FakeXenstored<'a> {
            let client = StoreClient::new(page, NoBell);
            let mut store = Store::new();
            let dom0 = store.connect(DomId(0));
            let home = "/local/domain/5";
            store.mkdir(dom0, TxId::NONE, home).unwrap();
            store
                .set_perms(dom0, TxId::NONE, home, &[Perm::new(GUEST, Access::None)])
                .unwrap();
            let guest = store.connect(GUEST);
            FakeXenstored {
                requests: client.requests,
                replies: client.replies,
                store: RefCell::new(store),
                guest,
                dom0,
                incoming: RefCell::default(),
                outgoing: RefCell::default(),
                clock: Cell::new(0),
                rings: Cell::new(0),
                chunk,
                silent: false,
            }
        }

        fn serve(&self) {
            let mut buf = [0u8; 1024];
            let n = self.requests.consume(&mut buf).unwrap();
            self.incoming.borrow_mut().feed(&buf[..n]);
            let mut out = self.outgoing.borrow_mut();
            while let Some(msg) = self.incoming.borrow_mut().next_message().unwrap() {
                let handled = self.store.borrow_mut().handle_message(self.guest, &msg);
                out.extend(handled.reply.encode().unwrap());
            }
            while let Some(ev) = self.store.borrow_mut().pop_event(self.guest) {
                let msg = Reply::WatchEvent(ev).to_message(MsgType::WatchEvent, 0, TxId::NONE);
                out.extend(msg.encode().unwrap());
            }
            let take = out.len().min(self.chunk);
            let bytes: Vec<u8> = out.iter().take(take).copied().collect();
            let n = self.replies.produce(&bytes).unwrap();
            out.drain(..n);
        }
    }

    impl Doorbell for &FakeXenstored<'_> {
        fn ring(&self) {
            self.rings.set(self.rings.get() + 1);
        }
        fn wait(&self, deadline: Instant) -> bool {
            self.clock.set(self.clock.get() + 1_000_000_000);
            if !self.silent {
                self.serve();
            }
            self.now() < deadline
        }
        fn now(&self) -> Instant {
            Instant(self.clock.get())
        }
    }

    struct NoBell;
    impl Doorbell for NoBell {
        fn ring(&self) {}
        fn wait(&self, _: Instant) -> bool {
            false
        }
        fn now(&self) -> Instant {
            Instant(0)
        }
    }

    #[test]
    fn values_longer_than_the_rings_stream_through_both_ways() {
        let mut page = Page([0; 4096]);
        let region = SharedRegion::from(&mut page.0[..]);
        // Replies come back in 100-byte pieces.
        let xenstored = FakeXenstored::new(region, 100);
        let client = StoreClient::new(region, &xenstored);
        let value: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
        client.write(TxId::NONE, "data/big", &value).unwrap();
        assert_eq!(client.read(TxId::NONE, "data/big").unwrap(), value);
        assert_eq!(
            client.read(TxId::NONE, "/local/domain/5/data/big").unwrap(),
            value
        );
        assert_eq!(client.directory(TxId::NONE, "data").unwrap(), vec!["big"]);
        assert!(
            xenstored.rings.get() > 4,
            "xenstored is notified piece by piece"
        );
        // Errors come back as the errno.
        assert_eq!(
            client.read(TxId::NONE, "data/missing"),
            Err(PvError::Store(Errno::ENOENT))
        );
        client.rm(TxId::NONE, "data/big").unwrap();
        assert_eq!(
            client.directory(TxId::NONE, "data").unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn watch_events_interleaved_with_replies_are_kept_in_order() {
        let mut page = Page([0; 4096]);
        let region = SharedRegion::from(&mut page.0[..]);
        let xenstored = FakeXenstored::new(region, 37);
        let client = StoreClient::new(region, &xenstored);
        client.watch("data/w", "tok").unwrap();
        // dom0 writes twice while the guest is busy with other requests.
        let dom0 = xenstored.dom0;
        xenstored
            .store
            .borrow_mut()
            .write(dom0, TxId::NONE, "/local/domain/5/data/w/a", b"1")
            .unwrap();
        client.write(TxId::NONE, "data/other", b"x").unwrap();
        xenstored
            .store
            .borrow_mut()
            .write(dom0, TxId::NONE, "/local/domain/5/data/w/b", b"2")
            .unwrap();
        assert_eq!(client.read(TxId::NONE, "data/other").unwrap(), b"x");
        let deadline = Instant(u64::MAX);
        let mut paths = vec![];
        while let Some(ev) = client
            .next_watch_event(Instant(xenstored.clock.get() + 3_000_000_000))
            .unwrap()
        {
            assert_eq!(ev.token, "tok");
            paths.push(ev.path);
        }
        assert_eq!(paths, ["data/w", "data/w/a", "data/w/b"]);
        client.unwatch("data/w", "tok").unwrap();
        xenstored
            .store
            .borrow_mut()
            .write(dom0, TxId::NONE, "/local/domain/5/data/w/c", b"3")
            .unwrap();
        let soon = Instant(xenstored.clock.get() + 2_000_000_000);
        assert_eq!(client.next_watch_event(soon).unwrap(), None);
        let _ = deadline;
    }

    /// Regression: the first event of a new watch, sent by xenstored right behind the watch's
    /// OK and pulled into the decoder with it, was only looked at after a wait for a kick that
    /// never came (seen on real Xen: "a new watch fires at once" failed).
    #[test]
    fn a_watch_event_that_came_with_the_reply_is_returned_without_waiting() {
        let mut page = Page([0; 4096]);
        let region = SharedRegion::from(&mut page.0[..]);
        let xenstored = FakeXenstored::new(region, 1024);
        let client = StoreClient::new(region, &xenstored);
        client.watch("data/w", "tok").unwrap();
        // A deadline already passed: only what is buffered can answer.
        let event = client.next_watch_event(Instant(0)).unwrap();
        assert_eq!(event.map(|e| e.path), Some("data/w".to_string()));
    }

    #[test]
    fn transactions_permissions_and_the_domain_path() {
        let mut page = Page([0; 4096]);
        let region = SharedRegion::from(&mut page.0[..]);
        let xenstored = FakeXenstored::new(region, 1024);
        let client = StoreClient::new(region, &xenstored);
        let tx = client.transaction_start().unwrap();
        client.write(tx, "data/t/ring-ref", b"8").unwrap();
        client.write(tx, "data/t/event-channel", b"3").unwrap();
        client.transaction_end(tx, true).unwrap();
        assert_eq!(
            client.read_string(TxId::NONE, "data/t/ring-ref").unwrap(),
            "8"
        );
        let perms = [
            Perm::new(GUEST, Access::None),
            Perm::new(DomId(0), Access::Read),
        ];
        client.set_perms(TxId::NONE, "data/t", &perms).unwrap();
        assert_eq!(client.get_perms(TxId::NONE, "data/t").unwrap(), perms);
        assert_eq!(client.get_domain_path(GUEST).unwrap(), "/local/domain/5");
        client.mkdir(TxId::NONE, "data/empty").unwrap();
        assert_eq!(client.read(TxId::NONE, "data/empty").unwrap(), b"");
    }

    /// The client as the vchan core sees it: xenstore's `XenStore` trait, errnos kept, the
    /// trait's transaction helper, and a watch wait bounded by its timeout on our clock.
    #[test]
    fn the_xenstore_trait_forwards_with_errnos_and_timeouts() {
        let mut page = Page([0; 4096]);
        let region = SharedRegion::from(&mut page.0[..]);
        let xenstored = FakeXenstored::new(region, 100);
        let client = StoreClient::new(region, &xenstored);
        let xs = &client;
        let written = XenStore::transaction(xs, |tx| {
            XenStore::write(xs, tx, "data/v/ring-ref", b"8")?;
            XenStore::write(xs, tx, "data/v/event-channel", b"5")?;
            XenStore::directory(xs, tx, "data/v")
        })
        .unwrap();
        assert_eq!(written, ["ring-ref", "event-channel"]);
        assert_eq!(
            XenStore::read(xs, TxId::NONE, "data/v/ring-ref").unwrap(),
            b"8"
        );
        let missing = XenStore::read(xs, TxId::NONE, "data/none").unwrap_err();
        assert_eq!(missing.errno(), Some(Errno::ENOENT));
        assert_eq!(
            XenStore::get_domain_path(xs, GUEST).unwrap(),
            "/local/domain/5"
        );
        XenStore::watch(xs, "data/v", "t").unwrap();
        let first = XenStore::next_watch_event(xs, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(first.map(|e| e.path), Some("data/v".to_string()));
        let asked = xenstored.clock.get();
        assert_eq!(
            XenStore::next_watch_event(xs, Some(Duration::from_secs(3))).unwrap(),
            None
        );
        let waited = xenstored.clock.get() - asked;
        assert!(
            (3_000_000_000..5_000_000_000).contains(&waited),
            "waited {waited} ns for a 3 s timeout"
        );
        // A change comes through the trait too; with no timeout it waits until one does.
        let dom0 = xenstored.dom0;
        xenstored
            .store
            .borrow_mut()
            .write(dom0, TxId::NONE, "/local/domain/5/data/v/x", b"1")
            .unwrap();
        let event = XenStore::next_watch_event(xs, None).unwrap().unwrap();
        assert_eq!(event.path, "data/v/x");
    }

    #[test]
    fn store_errors_become_xenstore_errors_keeping_the_errno() {
        let e = XenstoreError::from(PvError::Store(Errno::EACCES));
        assert_eq!(e.errno(), Some(Errno::EACCES));
        let e = XenstoreError::from(PvError::Timeout("a xenstore reply"));
        assert_eq!(e.errno(), None);
        assert!(
            e.to_string()
                .contains("timed out waiting for a xenstore reply"),
            "{e}"
        );
    }

    #[test]
    fn a_silent_xenstored_is_a_timeout_not_a_hang() {
        let mut page = Page([0; 4096]);
        let region = SharedRegion::from(&mut page.0[..]);
        let mut xenstored = FakeXenstored::new(region, 1024);
        xenstored.silent = true;
        let client = StoreClient::new(region, &xenstored);
        assert_eq!(
            client.read(TxId::NONE, "domid"),
            Err(PvError::Timeout("a xenstore reply"))
        );
    }

    #[test]
    fn a_reply_to_another_request_or_corrupt_indices_are_errors() {
        let mut page = Page([0; 4096]);
        let region = SharedRegion::from(&mut page.0[..]);
        let xenstored = FakeXenstored::new(region, 1024);
        let client = StoreClient::new(region, &xenstored);
        // A stray reply (request 99) waits in the ring before the client's first request.
        let stray = Reply::Ok.to_message(MsgType::Write, 99, TxId::NONE);
        xenstored.replies.produce(&stray.encode().unwrap()).unwrap();
        let err = client.write(TxId::NONE, "data/x", b"1").unwrap_err();
        assert!(err.to_string().contains("request 99"), "{err}");
        // xenstored's producer index runs 2 KiB ahead of ours in a 1 KiB ring.
        let mut page = Page([0; 4096]);
        let region = SharedRegion::from(&mut page.0[..]);
        let xenstored = FakeXenstored::new(region, 1024);
        let client = StoreClient::new(region, &xenstored);
        region.store_u32(
            offset_of!(XenstoreDomainInterface, rsp_prod),
            2048,
            core::sync::atomic::Ordering::Relaxed,
        );
        assert_eq!(
            client.read(TxId::NONE, "domid"),
            Err(PvError::RingCorrupt("xenstore reply"))
        );
    }
}
