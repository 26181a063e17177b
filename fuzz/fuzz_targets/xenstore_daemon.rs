//! The xenstore daemon's request handling fed any sequence of messages from three guest
//! connections (two domains): it never panics, and afterwards every key dom0 committed, with its
//! permissions, is intact (a guest may read them, not change them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_types::DomId;
use xenstore::store::{ConnId, Store};
use xenstore::wire::{decode, Decoded};
use xenstore::{Access, Perm, TxId};

/// dom0's keys: (path, value, what guests may do).
const PRECIOUS: [(&str, &[u8], Access); 4] = [
    ("/precious/a", b"alpha", Access::Read),
    ("/precious/b/c", b"gamma", Access::None),
    ("/tool/settings", b"one", Access::Read),
    ("/vm/secret", b"two", Access::None),
];

fuzz_target!(|data: &[u8]| {
    let mut store = Store::new();
    let dom0 = store.connect(DomId::DOM0);
    for domid in [DomId(1), DomId(2)] {
        store.introduce_domain(domid);
    }
    for (path, value, access) in PRECIOUS {
        store
            .write(dom0, TxId::NONE, path, value)
            .expect("dom0 writes");
        let perms = [Perm::new(DomId::DOM0, access)];
        store
            .set_perms(dom0, TxId::NONE, path, &perms)
            .expect("dom0 sets perms");
    }
    let guests: [ConnId; 3] = [
        store.connect(DomId(1)),
        store.connect(DomId(1)),
        store.connect(DomId(2)),
    ];
    // Each message: one byte choosing the connection, then a wire message.
    let mut rest = data;
    while let Some((&which, tail)) = rest.split_first() {
        let conn = guests[usize::from(which) % guests.len()];
        match decode(tail) {
            Ok(Decoded::Message(message, used)) => {
                let _ = store.handle_message(conn, &message);
                while store.pop_event(conn).is_some() {}
                rest = &tail[used..];
            }
            _ => break,
        }
    }
    for (path, value, access) in PRECIOUS {
        let now = store.read(dom0, TxId::NONE, path);
        assert_eq!(now.as_deref(), Ok(value), "{path} changed");
        let perms = store.get_perms(dom0, TxId::NONE, path).expect("perms");
        assert_eq!(
            perms,
            [Perm::new(DomId::DOM0, access)],
            "{path}'s permissions changed"
        );
    }
});
