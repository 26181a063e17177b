//! Our vchan client on the in-process simulation, connected to a server played by the fuzzer,
//! which writes what it likes into the shared pages between every operation. Whatever it writes,
//! each operation must return at once (non-blocking mode) with a typed error or a result inside
//! its bounds: never a panic, an out-of-bounds access (the sanitizer watches the copies) or a
//! hang.
#![no_main]

use std::sync::atomic::Ordering::SeqCst;

use evtchn::EventChannel;
use gnttab::{GrantShare, SharedMemory, SharedPages, UnmapNotify};
use libfuzzer_sys::fuzz_target;
use vchan::abi;
use vchan::sim::SimXen;
use vchan::{Address, Backend, Vchan};
use xen_types::DomId;
use xenstore::{Access, Perm, TxId, XenStore};

const SERVER: DomId = DomId(0);
const CLIENT: DomId = DomId(7);

/// The fuzzer's bytes, consumed from the front; zeros once they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn word(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let xen = SimXen::new();
    let server_dom = xen.domain(SERVER);
    let client_dom = xen
        .create_domain(CLIENT)
        .expect("create the client's domain");

    // The server's page, honest at first: orders from the input (in-page, one or two pages).
    let orders = [10u16, 11, 12, 13];
    let left = orders[usize::from(input.byte()) % orders.len()];
    let mut right = orders[usize::from(input.byte()) % orders.len()];
    if left < 12 && right < 12 {
        right = 21 - left; // the two in-page rings take the two halves
    }
    let sharer = server_dom.open_sharer().expect("sharer");
    let events = server_dom.open_events().expect("events");
    let port = events.bind_unbound_port(CLIENT).expect("port");
    let notify = UnmapNotify {
        clear_byte: Some(abi::SRV_LIVE),
        event: Some(port),
    };
    let control = sharer
        .share_pages(CLIENT, 1, true, Some(notify))
        .expect("share the control page");
    // The peer's view of its page: every access atomic (SeqCst: the peer's own order is
    // whatever it likes; ours must cope with any).
    let page = control.region();
    page.store_u16(abi::LEFT_ORDER, left, SeqCst);
    page.store_u16(abi::RIGHT_ORDER, right, SeqCst);
    page.store_u8(abi::CLI_LIVE, abi::LIVE_WAITING, SeqCst);
    page.store_u8(abi::SRV_LIVE, abi::LIVE_CONNECTED, SeqCst);
    page.store_u8(abi::CLI_NOTIFY, abi::NOTIFY_WRITE, SeqCst);
    let mut rings = Vec::new();
    let mut grant = 0;
    for order in [left, right] {
        if order >= 12 {
            let pages = sharer
                .share_pages(CLIENT, 1 << (order - 12), true, None)
                .expect("share ring pages");
            for gref in pages.refs() {
                page.store_u32(abi::GRANTS + 4 * grant, gref.0, SeqCst);
                grant += 1;
            }
            rings.push(pages);
        }
    }
    let store = server_dom.open_store().expect("store");
    let path = format!("data/vchan/{CLIENT}/1");
    let perms = [
        Perm::new(SERVER, Access::None),
        Perm::new(CLIENT, Access::Read),
    ];
    for (key, value) in [
        ("ring-ref", control.refs()[0].0.to_string()),
        ("event-channel", port.0.to_string()),
    ] {
        let key = format!("{path}/{key}");
        store
            .write(TxId::NONE, &key, value.as_bytes())
            .expect("write a key");
        store
            .set_perms(TxId::NONE, &key, &perms)
            .expect("set its perms");
    }
    let client = match Vchan::client(&client_dom, SERVER, &Address::Port(1), None) {
        Ok(client) => client,
        Err(e) => panic!("an honest page was refused: {e}"),
    };
    client.set_nonblocking(true);
    let (read_cap, write_cap) = (client.read_capacity(), client.write_capacity());

    let mut buf = vec![0u8; 3 * 4096];
    while !input.is_empty() {
        match input.byte() % 10 {
            // The peer scribbles on an index, an order word, a live or notify byte.
            0 => {
                let offset = usize::from(input.byte() % 4) * 4;
                page.store_u32(offset, input.word(), SeqCst);
            }
            1 => page.store_u16(
                abi::LEFT_ORDER + 2 * usize::from(input.byte() % 2),
                input.word() as u16,
                SeqCst,
            ),
            2 => page.store_u8(
                abi::CLI_LIVE + usize::from(input.byte() % 4),
                input.byte(),
                SeqCst,
            ),
            // ... or on the data of a ring (in the control page, or in ring pages).
            3 => {
                let offset = usize::from(input.byte()) * 16;
                let value = input.byte();
                match rings.get(usize::from(input.byte()) % (rings.len() + 1)) {
                    Some(pages) => pages.region().store_u8(offset % pages.len(), value, SeqCst),
                    None => page.store_u8(1024 + offset % 3072, value, SeqCst),
                }
            }
            // ... or kicks the event channel.
            4 => {
                let _ = events.notify(port);
            }
            // Our side: every operation answers at once, inside its bounds.
            5 => {
                let want = usize::from(input.byte()) * 48 + 1;
                if let Ok(n) = client.read(&mut buf[..want]) {
                    assert!(n <= want, "read {n} into {want}");
                }
            }
            6 => {
                let len = usize::from(input.byte()) * 48 + 1;
                if let Ok(n) = client.write(&buf[..len]) {
                    assert!(n <= len, "wrote {n} of {len}");
                }
            }
            7 => {
                if let Ok(n) = client.data_ready() {
                    assert!(n <= read_cap, "{n} ready in a {read_cap}-byte ring");
                }
                if let Ok(n) = client.buffer_space() {
                    assert!(n <= write_cap, "{n} free in a {write_cap}-byte ring");
                }
                let _ = client.state();
            }
            8 => {
                let len = usize::from(input.byte()) * 16 + 1;
                let _ = client.recv(&mut buf[..len]);
                let _ = client.send(&buf[..len.min(64)]);
            }
            _ => {
                let _ = client.shutdown_write();
            }
        }
    }
    let _ = client.close();
    drop((rings, control));
});
