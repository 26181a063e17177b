//! A bounded, seeded fuzz run: many connections (dom0 and an unprivileged guest) send thousands
//! of hostile messages (random headers, oversized lengths, truncated frames, random bytes,
//! well-formed requests with poisonous arguments, transactions left open, clients that never
//! read). Afterwards a fresh connection must find the daemon alive and every key committed
//! beforehand intact. Deterministic per seed (`XS_FUZZ_SEED` overrides it); well under 20 s.

mod common;

use common::TempDir;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use xenstore::client::Client;
use xenstore::daemon::Daemon;
use xenstore::wire::{Header, Message, MsgType, Request, PAYLOAD_MAX};
use xenstore::{Access, DomId, Perm, TxId, XenStore};

const T0: TxId = TxId::NONE;
const GUEST: DomId = DomId(5);

/// xorshift64*: small, deterministic, good enough to pick hostile inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Up to `max` random bytes.
    fn some_bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max + 1) as usize;
        self.bytes(n)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Paths hostile requests aim at: the committed keys, specials, nonsense, and a playground.
fn path(rng: &mut Rng, privileged: bool) -> String {
    let mut options = vec![
        "/fuzz/a".to_string(),
        "/fuzz/a/b/c".to_string(),
        "fuzz-rel".to_string(),
        "@introduceDomain".to_string(),
        "@releaseDomain".to_string(),
        "/bad//path".to_string(),
        "/trailing/".to_string(),
        "".to_string(),
        "/spa ce".to_string(),
        "/\u{e9}t\u{e9}".to_string(),
        format!("/{}", "x".repeat(3100)),
        "a".repeat(2049),
        format!("/fuzz/{}", rng.below(50)),
    ];
    // dom0 is trusted with the committed keys' parents only through invalid requests; the guest
    // may aim anywhere (permissions must stop it).
    if !privileged {
        options.extend([
            "/keep".into(),
            "/keep/k1".into(),
            "/".into(),
            "/local/domain/0".into(),
        ]);
    }
    rng.pick(&options).clone()
}

fn random_request(rng: &mut Rng, privileged: bool, txs: &[u32]) -> Vec<u8> {
    let tx = if rng.below(4) == 0 && !txs.is_empty() {
        *rng.pick(txs)
    } else if rng.below(10) == 0 {
        rng.next() as u32
    } else {
        0
    };
    let req = match rng.below(14) {
        0 => Request::Read {
            path: path(rng, privileged),
        },
        1 => Request::Write {
            path: path(rng, privileged),
            value: rng.some_bytes(3000),
        },
        2 => Request::Mkdir {
            path: path(rng, privileged),
        },
        3 => Request::Rm {
            path: path(rng, privileged),
        },
        4 => Request::Directory {
            path: path(rng, privileged),
        },
        5 => Request::DirectoryPart {
            path: path(rng, privileged),
            offset: rng.next() as u32,
        },
        6 => Request::GetPerms {
            path: path(rng, privileged),
        },
        7 => Request::SetPerms {
            path: path(rng, privileged),
            perms: (0..rng.below(8))
                .map(|_| Perm::new(DomId(rng.below(8) as u16), Access::Both))
                .collect(),
        },
        8 => Request::Watch {
            path: path(rng, privileged),
            token: format!("t{}", rng.below(5)),
        },
        9 => Request::Unwatch {
            path: path(rng, privileged),
            token: format!("t{}", rng.below(5)),
        },
        10 => Request::TransactionStart,
        11 => Request::TransactionEnd {
            commit: rng.below(2) == 0,
        },
        // Only the guest tries to release domains (and must be refused); dom0 asks about them.
        12 if !privileged => Request::Release {
            domid: DomId(rng.below(10) as u16),
        },
        12 => Request::IsDomainIntroduced {
            domid: DomId(rng.below(10) as u16),
        },
        _ => Request::ResetWatches,
    };
    // Encode directly: over-long payloads are part of the game.
    let payload = req.payload();
    let header = Header {
        msg_type: req.msg_type().as_u32(),
        req_id: rng.next() as u32,
        tx_id: tx,
        len: payload.len() as u32,
    };
    let mut out = header.encode().to_vec();
    out.extend(payload);
    out
}

fn hostile_message(rng: &mut Rng, privileged: bool, txs: &[u32]) -> Vec<u8> {
    match rng.below(20) {
        // Pure noise.
        0 | 1 => rng.some_bytes(200),
        // A random header (any type, any ids) with a plausible length and random payload.
        2..=4 => {
            let len = rng.below(PAYLOAD_MAX as u64 + 1) as u32;
            let msg_type = match rng.below(4) {
                0 => rng.next() as u32,
                1 => MsgType::Invalid.as_u32(),
                _ => rng.below(24) as u32,
            };
            let mut out = Header {
                msg_type,
                req_id: rng.next() as u32,
                tx_id: rng.next() as u32,
                len,
            }
            .encode()
            .to_vec();
            out.extend(rng.bytes(len as usize));
            out
        }
        // A header announcing too much: the daemon must hang up.
        5 => {
            let len =
                PAYLOAD_MAX as u32 + 1 + rng.below(u32::MAX as u64 - PAYLOAD_MAX as u64) as u32;
            let mut out = Header {
                msg_type: 11,
                req_id: 1,
                tx_id: 0,
                len,
            }
            .encode()
            .to_vec();
            out.extend(rng.some_bytes(100));
            out
        }
        // A well-formed frame cut short.
        6 | 7 => {
            let mut m = random_request(rng, privileged, txs);
            let keep = rng.below(m.len() as u64) as usize;
            m.truncate(keep);
            m
        }
        // Well-formed requests with hostile arguments.
        _ => random_request(rng, privileged, txs),
    }
}

/// One hostile connection: send a burst, sometimes reading replies, sometimes not.
fn hostile_connection(sock: &PathBuf, seed: u64, privileged: bool) -> usize {
    let mut rng = Rng(seed | 1);
    let Ok(mut s) = UnixStream::connect(sock) else {
        return 0;
    };
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_read_timeout(Some(Duration::from_millis(5)));
    let reads = rng.below(3) != 0;
    let mut sent = 0;
    let mut buf = vec![0u8; 65536];
    for _ in 0..rng.below(80) + 1 {
        let msg = hostile_message(&mut rng, privileged, &[1, 2, 3]);
        if s.write_all(&msg).is_err() {
            break; // the daemon hung up on us: fair
        }
        sent += 1;
        if reads && rng.below(4) == 0 {
            let _ = s.read(&mut buf);
        }
    }
    if rng.below(2) == 0 {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    sent
}

fn threads_of_this_process() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn hostile_clients_cannot_kill_the_daemon_or_lose_committed_data() {
    let started = Instant::now();
    let seed: u64 = std::env::var("XS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_abcd);
    let dir = TempDir::new("fuzz");
    let daemon = Daemon::spawn(&dir.path().join("run")).expect("start daemon");
    let dom0_sock = daemon.socket_path(DomId(0));

    // Committed state: plain keys, a transaction, permissions, a guest with a home.
    let c = Client::open_path(&dom0_sock).unwrap();
    let mut expected = Vec::new();
    for i in 0..100 {
        let (k, v) = (
            format!("/keep/k{i}"),
            format!("value-{i}-{}", "v".repeat(i)),
        );
        c.write(T0, &k, v.as_bytes()).unwrap();
        expected.push((k, v.into_bytes()));
    }
    c.transaction(|tx| {
        for i in 0..20 {
            c.write(tx, &format!("/keep/tx/{i}"), format!("tx-{i}").as_bytes())?;
        }
        Ok(())
    })
    .unwrap();
    expected.extend((0..20).map(|i| (format!("/keep/tx/{i}"), format!("tx-{i}").into_bytes())));
    c.set_perms(T0, "/keep/k1", &[Perm::new(DomId(0), Access::Read)])
        .unwrap();
    c.introduce(GUEST, 0, 0).unwrap();
    c.mkdir(T0, "/local/domain/5").unwrap();
    c.set_perms(T0, "/local/domain/5", &[Perm::new(GUEST, Access::None)])
        .unwrap();
    c.write(T0, "/local/domain/5/data", b"guest data").unwrap();
    expected.push(("/local/domain/5/data".into(), b"guest data".to_vec()));
    let guest_sock = daemon.socket_path(GUEST);

    let baseline = threads_of_this_process();

    // The onslaught: 4 threads x 150 connections, half of them as the guest.
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (dom0_sock, guest_sock) = (dom0_sock.clone(), guest_sock.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let mut sent = 0;
                for _ in 0..150 {
                    let privileged = rng.below(2) == 0;
                    let sock = if privileged { &dom0_sock } else { &guest_sock };
                    sent += hostile_connection(sock, rng.next(), privileged);
                }
                sent
            })
        })
        .collect();
    let sent: usize = threads
        .into_iter()
        .map(|t| t.join().expect("fuzz thread"))
        .sum();
    assert!(sent > 5000, "only {sent} hostile messages were sent");

    // Every hostile connection's threads end (the daemon runs in this process).
    let deadline = Instant::now() + Duration::from_secs(15);
    while threads_of_this_process() > baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        threads_of_this_process() <= baseline,
        "connection threads leaked: {} > {baseline}",
        threads_of_this_process()
    );

    // Alive, and nothing committed was lost or changed.
    let fresh = Client::open_path(&dom0_sock).expect("daemon still accepts connections");
    for (k, v) in &expected {
        assert_eq!(
            &fresh.read(T0, k).unwrap_or_else(|e| panic!("{k}: {e}")),
            v,
            "{k} changed"
        );
    }
    assert_eq!(
        fresh.get_perms(T0, "/keep/k1").unwrap(),
        [Perm::new(DomId(0), Access::Read)]
    );
    assert_eq!(fresh.directory(T0, "/keep").unwrap().len(), 101);
    assert!(
        fresh.is_domain_introduced(GUEST).unwrap(),
        "a guest released its own domain"
    );
    let guest = Client::open_path(&guest_sock).expect("guest socket still served");
    assert_eq!(guest.read(T0, "data").unwrap(), b"guest data");
    // Transactions left open by dead clients were aborted: dom0 commits over them freely.
    fresh
        .transaction(|tx| {
            fresh.write(tx, "/fuzz/a", b"final")?;
            fresh.rm(tx, "/fuzz")
        })
        .unwrap();
    eprintln!(
        "{sent} hostile messages in {:?} (seed {seed:#x})",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "fuzz run took {:?}",
        started.elapsed()
    );
}

#[test]
fn decoder_and_dispatch_survive_random_streams() {
    // The sans-IO side of the same story, without sockets: random byte streams through the
    // decoder and the store's dispatcher.
    use xenstore::store::Store;
    use xenstore::wire::Decoder;
    let mut rng = Rng(0xdead_beef);
    let mut store = Store::new();
    let dom0 = store.connect(DomId(0));
    let guest = store.connect(GUEST);
    store.write(dom0, T0, "/keep", b"kept").unwrap();
    for _ in 0..3000 {
        let privileged = rng.below(2) == 0;
        let conn = if privileged { dom0 } else { guest };
        let mut d = Decoder::new();
        d.feed(&hostile_message(&mut rng, privileged, &[1, 2]));
        while let Ok(Some(msg)) = d.next_message() {
            let handled = store.handle_message(conn, &msg);
            assert!(handled.reply.payload.len() <= PAYLOAD_MAX);
            let _: Message = handled.reply;
        }
    }
    assert_eq!(store.read(dom0, T0, "/keep").unwrap(), b"kept");
}

/// Introduce `domid` with a home it owns; returns dom0's client.
fn introduce_guest(d: &xenstore::daemon::DaemonHandle, domid: DomId) -> Client {
    let c = Client::open_path(&d.socket_path(DomId(0))).expect("connect dom0");
    c.introduce(domid, 0, 0).unwrap();
    let home = format!("/local/domain/{domid}");
    c.mkdir(T0, &home).unwrap();
    c.set_perms(T0, &home, &[Perm::new(domid, Access::None)])
        .unwrap();
    c
}

/// Send one READ of `path` and wait for its reply; `None` if the daemon hung up instead.
fn read_once(s: &mut UnixStream, path: &str) -> Option<Message> {
    let req = Request::Read { path: path.into() };
    let bytes = req.to_message(1, T0).unwrap().encode().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&bytes).ok()?;
    let mut d = xenstore::wire::Decoder::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        d.feed(&buf[..n]);
        if let Some(m) = d.next_message().ok()? {
            return Some(m);
        }
    }
}

#[test]
fn guest_cannot_open_unbounded_connections() {
    let dir = TempDir::new("conns");
    let d = Daemon::spawn(&dir.path().join("run")).expect("start daemon");
    let _dom0 = introduce_guest(&d, DomId(7));
    let sock = d.socket_path(DomId(7));
    // Every accepted connection costs the daemon two threads: a guest must not get 300.
    let mut open = Vec::new();
    let mut served = 0;
    for _ in 0..300 {
        let Ok(mut s) = UnixStream::connect(&sock) else {
            continue;
        };
        if read_once(&mut s, "x").is_some() {
            served += 1;
        }
        open.push(s);
    }
    assert!(served >= 1);
    assert!(
        served <= xenstore::daemon::MAX_GUEST_CONNECTIONS,
        "{served} concurrent guest connections served"
    );
    // dom0 is not limited, and once the guest hangs up it may connect again.
    assert!(Client::open_path(&d.socket_path(DomId(0))).is_ok());
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut s = UnixStream::connect(&sock).unwrap();
        if read_once(&mut s, "x").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the guest cannot connect again");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn guest_that_never_reads_is_cut_off_before_queuing_megabytes() {
    let dir = TempDir::new("flood");
    let d = Daemon::spawn(&dir.path().join("run")).expect("start daemon");
    let dom0 = introduce_guest(&d, DomId(8));
    // A value as big as a guest may read, read back again and again without reading a reply.
    dom0.write(T0, "/local/domain/8/big", &vec![b'v'; 4000])
        .unwrap();
    let mut s = UnixStream::connect(d.socket_path(DomId(8))).unwrap();
    let req = Request::Read { path: "big".into() };
    let one = req.to_message(1, T0).unwrap().encode().unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    // 3000 replies of 4 KiB: 12 MiB the daemon would hold for this client.
    let mut sent = 0;
    for _ in 0..3000 {
        if s.write_all(&one).is_err() {
            break;
        }
        sent += 1;
    }
    // Now read everything the daemon is willing to send before it hangs up.
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
        if total >= sent * (16 + 4000) {
            break;
        }
    }
    assert!(
        total < 4 * 1024 * 1024,
        "the daemon queued {total} bytes for a client that did not read ({sent} requests)"
    );
    // Others are unaffected.
    assert_eq!(dom0.read(T0, "/local/domain/8/big").unwrap().len(), 4000);
}
