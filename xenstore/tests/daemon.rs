//! Our client against our daemon: demultiplexed watch events, a pollable event fd, concurrent
//! requests, per-domain sockets, dead clients, and a store shared with in-process connections.

mod common;

use common::TempDir;
use nix::poll::{poll, PollFd, PollFlags};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;
use xenstore::client::Client;
use xenstore::daemon::{Daemon, DaemonHandle};
use xenstore::local::LocalStore;
use xenstore::wire::{Decoder, Message, MsgType, Reply, Request};
use xenstore::{Access, DomId, Errno, Perm, TxId, XenStore, XenstoreError};

const T0: TxId = TxId::NONE;
const WAIT: Option<Duration> = Some(Duration::from_secs(30));

fn start(dir: &TempDir) -> DaemonHandle {
    Daemon::spawn(&dir.path().join("run")).expect("start daemon")
}

fn dom0(d: &DaemonHandle) -> Client {
    Client::open_path(&d.socket_path(DomId(0))).expect("connect dom0")
}

fn errno<T: std::fmt::Debug>(r: xenstore::Result<T>) -> Errno {
    match r {
        Err(XenstoreError::Errno(e)) => e,
        other => panic!("expected an errno, got {other:?}"),
    }
}

/// Poll one fd for readability with a timeout (milliseconds); true if readable.
fn readable(fd: impl AsFd, timeout_ms: u16) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut fds, timeout_ms).expect("poll");
    n == 1
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
}

#[test]
fn client_round_trip_of_every_operation() {
    let dir = TempDir::new("rt");
    let d = start(&dir);
    let c = dom0(&d);
    c.write(T0, "/a/b", b"v\0with nul").unwrap();
    assert_eq!(c.read(T0, "/a/b").unwrap(), b"v\0with nul");
    c.mkdir(T0, "/a/c").unwrap();
    assert_eq!(c.directory(T0, "/a").unwrap(), ["b", "c"]);
    c.set_perms(
        T0,
        "/a/b",
        &[
            Perm::new(DomId(0), Access::Read),
            Perm::new(DomId(3), Access::Both),
        ],
    )
    .unwrap();
    assert_eq!(
        c.get_perms(T0, "/a/b").unwrap()[1],
        Perm::new(DomId(3), Access::Both)
    );
    assert_eq!(c.get_domain_path(DomId(9)).unwrap(), "/local/domain/9");
    assert_eq!(errno(c.read(T0, "/nope")), Errno::ENOENT);
    assert_eq!(errno(c.read(T0, "/bad//path")), Errno::EINVAL);
    // The payload limit, both ways: the biggest value that fits, and one byte more (E2BIG, as
    // libxenstore reports it, without sending).
    let max_value = vec![b'v'; xenstore::wire::PAYLOAD_MAX - "/big\0".len()];
    c.write(T0, "/big", &max_value).unwrap();
    assert_eq!(c.read(T0, "/big").unwrap(), max_value);
    assert_eq!(
        errno(c.write(T0, "/big", &[max_value.as_slice(), b"x"].concat())),
        Errno::E2BIG
    );
    c.rm(T0, "/a").unwrap();
    assert_eq!(errno(c.read(T0, "/a/b")), Errno::ENOENT);
    assert!(c.is_domain_introduced(DomId(0)).unwrap());
    assert!(!c.is_domain_introduced(DomId(44)).unwrap());
    // The provided transaction helper commits through the socket.
    let n = c
        .transaction(|tx| {
            c.write(tx, "/t/x", b"1")?;
            c.read(tx, "/t/x")
        })
        .unwrap();
    assert_eq!(n, b"1");
}

#[test]
fn long_directory_is_fetched_in_parts() {
    let dir = TempDir::new("dp");
    let d = start(&dir);
    let c = dom0(&d);
    let names: Vec<String> = (0..400)
        .map(|i| format!("rather-long-child-name-{i:05}"))
        .collect();
    for n in &names {
        c.write(T0, &format!("/big/{n}"), b"").unwrap();
    }
    assert_eq!(c.directory(T0, "/big").unwrap(), names);
}

#[test]
fn watch_events_come_apart_from_replies_and_the_fd_polls() {
    let dir = TempDir::new("wfd");
    let d = start(&dir);
    let watcher = dom0(&d);
    let writer = dom0(&d);
    let fd = watcher.as_fd();
    assert!(!readable(fd, 0));
    watcher.watch("/w", "tok").unwrap();
    assert!(readable(fd, 30_000), "initial event makes the fd readable");
    // Replies to later requests are not confused with the queued event.
    assert_eq!(errno(watcher.read(T0, "/w")), Errno::ENOENT);
    let ev = watcher.next_watch_event(WAIT).unwrap().unwrap();
    assert_eq!((ev.path.as_str(), ev.token.as_str()), ("/w", "tok"));
    assert!(!readable(fd, 0), "drained queue: fd no longer readable");
    writer.write(T0, "/w/x", b"1").unwrap();
    writer.write(T0, "/w/y", b"2").unwrap();
    assert!(readable(fd, 30_000));
    let paths: Vec<String> = (0..2)
        .map(|_| watcher.next_watch_event(WAIT).unwrap().unwrap().path)
        .collect();
    assert_eq!(paths, ["/w/x", "/w/y"]);
    assert_eq!(
        watcher
            .next_watch_event(Some(Duration::from_millis(1)))
            .unwrap(),
        None
    );
    watcher.unwatch("/w", "tok").unwrap();
    writer.write(T0, "/w/z", b"3").unwrap();
    // A round trip after the write: had an event been queued, it would have arrived first.
    watcher.read(T0, "/w/z").unwrap();
    assert!(!watcher.has_watch_events());
}

#[test]
fn one_client_serves_many_threads() {
    let dir = TempDir::new("mt");
    let d = start(&dir);
    let c = Arc::new(dom0(&d));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                for i in 0..100 {
                    let path = format!("/mt/{t}/{i}");
                    let value = format!("{t}-{i}");
                    c.write(T0, &path, value.as_bytes()).unwrap();
                    assert_eq!(c.read(T0, &path).unwrap(), value.as_bytes());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(c.directory(T0, "/mt").unwrap().len(), 8);
}

#[test]
fn introduce_opens_an_unprivileged_socket_and_release_closes_it() {
    let dir = TempDir::new("dom");
    let d = start(&dir);
    let c = dom0(&d);
    c.watch("@introduceDomain", "in").unwrap();
    c.watch("@releaseDomain", "out").unwrap();
    for _ in 0..2 {
        c.next_watch_event(WAIT).unwrap().unwrap();
    }
    assert!(!d.socket_path(DomId(5)).exists());
    c.introduce(DomId(5), 0x1000, 3).unwrap();
    assert_eq!(
        c.next_watch_event(WAIT).unwrap().unwrap().path,
        "@introduceDomain"
    );
    assert!(d.socket_path(DomId(5)).exists());
    c.mkdir(T0, "/local/domain/5").unwrap();
    c.set_perms(T0, "/local/domain/5", &[Perm::new(DomId(5), Access::None)])
        .unwrap();
    c.write(T0, "/private", b"dom0 only").unwrap();

    let guest = Client::open_path(&d.socket_path(DomId(5))).unwrap();
    guest.write(T0, "name", b"guest").unwrap();
    assert_eq!(c.read(T0, "/local/domain/5/name").unwrap(), b"guest");
    assert_eq!(errno(guest.read(T0, "/private")), Errno::EACCES);
    assert_eq!(errno(guest.write(T0, "/tool/x", b"")), Errno::EACCES);
    assert_eq!(errno(guest.introduce(DomId(6), 0, 0)), Errno::EACCES);
    assert_eq!(errno(guest.release(DomId(5))), Errno::EACCES);

    c.release(DomId(5)).unwrap();
    assert_eq!(
        c.next_watch_event(WAIT).unwrap().unwrap().path,
        "@releaseDomain"
    );
    assert!(!d.socket_path(DomId(5)).exists());
    assert!(
        guest.read(T0, "name").is_err(),
        "the released domain's connection is closed"
    );
    assert!(Client::open_path(&d.socket_path(DomId(5))).is_err());
    assert_eq!(errno(c.release(DomId(5))), Errno::ENOENT);
}

/// Send raw messages and read the replies (for what the typed client will not send).
fn raw_exchange(stream: &mut UnixStream, msgs: &[Message]) -> Vec<Message> {
    for m in msgs {
        stream.write_all(&m.encode().unwrap()).unwrap();
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut decoder = Decoder::new();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < msgs.len() {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "daemon hung up");
        decoder.feed(&buf[..n]);
        while let Some(m) = decoder.next_message().unwrap() {
            got.push(m);
        }
    }
    got
}

#[test]
fn bad_requests_get_error_replies_and_the_connection_survives() {
    let dir = TempDir::new("bad");
    let d = start(&dir);
    let mut s = UnixStream::connect(d.socket_path(DomId(0))).unwrap();
    let m = |t, payload: &[u8], tx| Message::new(t, 42, TxId(tx), payload.to_vec());
    let replies = raw_exchange(
        &mut s,
        &[
            m(MsgType::Read, b"/no-nul", 0),
            m(MsgType::Read, b"/\0", 777),
            m(MsgType::Write, b"bad path\0v", 0),
            m(MsgType::WatchEvent, b"/\0t\0", 0),
            m(MsgType::Invalid, b"", 0),
            m(MsgType::SetPerms, b"/\0x9\0", 0),
            m(MsgType::TransactionEnd, b"X\0", 0),
            m(MsgType::Read, b"/tool\0", 0),
        ],
    );
    let payloads: Vec<&[u8]> = replies.iter().map(|r| r.payload.as_slice()).collect();
    assert_eq!(
        payloads,
        [
            &b"EINVAL\0"[..],
            b"ENOENT\0",
            b"EINVAL\0",
            b"ENOSYS\0",
            b"ENOSYS\0",
            b"EINVAL\0",
            b"EINVAL\0",
            b""
        ]
    );
    assert!(replies.iter().all(|r| r.req_id == 42));
    assert_eq!(replies[7].msg_type, MsgType::Read);
    // An unknown type number is skipped and answered; the stream stays in step.
    let mut unknown = xenstore::wire::Header {
        msg_type: 20,
        req_id: 9,
        tx_id: 0,
        len: 2,
    }
    .encode()
    .to_vec();
    unknown.extend_from_slice(b"xx");
    s.write_all(&unknown).unwrap();
    let r = raw_exchange(&mut s, &[m(MsgType::Read, b"/tool\0", 0)]);
    assert_eq!(
        (r[0].req_id, r[0].payload.as_slice()),
        (9, &b"ENOSYS\0"[..])
    );
    // An oversized header cannot be resynchronised: that connection is closed, others live.
    let mut huge = xenstore::wire::Header {
        msg_type: 2,
        req_id: 1,
        tx_id: 0,
        len: 4097,
    }
    .encode()
    .to_vec();
    huge.extend_from_slice(&[0; 64]);
    s.write_all(&huge).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 64];
    let mut rest = Vec::new();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("expected a hang-up, got {e}"),
        }
    }
    assert!(rest.len() < 64, "the daemon answered garbage: {rest:?}");
    dom0(&d).read(T0, "/tool").unwrap();
}

#[test]
fn a_client_dying_mid_transaction_aborts_it() {
    let dir = TempDir::new("die");
    let d = start(&dir);
    let keeper = dom0(&d);
    keeper.write(T0, "/kept", b"before").unwrap();
    {
        let mut s = UnixStream::connect(d.socket_path(DomId(0))).unwrap();
        let start = Request::TransactionStart.to_message(1, T0).unwrap();
        let r = raw_exchange(&mut s, &[start]);
        let Reply::TransactionStarted(tx) = Reply::parse(MsgType::TransactionStart, &r[0]).unwrap()
        else {
            panic!("no transaction")
        };
        let w1 = Request::Write {
            path: "/kept".into(),
            value: b"during".to_vec(),
        }
        .to_message(2, tx)
        .unwrap();
        let w2 = Request::Write {
            path: "/new".into(),
            value: b"x".to_vec(),
        }
        .to_message(3, tx)
        .unwrap();
        raw_exchange(&mut s, &[w1, w2]);
        // Dropped without TRANSACTION_END.
    }
    // Whenever the daemon notices, nothing of the transaction may ever appear.
    for _ in 0..3 {
        assert_eq!(keeper.read(T0, "/kept").unwrap(), b"before");
        assert_eq!(errno(keeper.read(T0, "/new")), Errno::ENOENT);
    }
    // And a new transaction on the same nodes commits fine.
    keeper
        .transaction(|tx| {
            keeper.write(tx, "/kept", b"after")?;
            keeper.write(tx, "/new", b"y")
        })
        .unwrap();
    assert_eq!(keeper.read(T0, "/kept").unwrap(), b"after");
}

#[test]
fn daemon_and_local_connections_share_one_store() {
    let dir = TempDir::new("shr");
    let local = LocalStore::new();
    let d = Daemon::bind_with(&dir.path().join("run"), local.clone())
        .unwrap()
        .into_handle();
    let sock = dom0(&d);
    let inproc = local.connect(DomId(0));
    inproc.watch("/shared", "local").unwrap();
    sock.watch("/shared", "sock").unwrap();
    assert_eq!(
        inproc.next_watch_event(WAIT).unwrap().unwrap().token,
        "local"
    );
    assert_eq!(sock.next_watch_event(WAIT).unwrap().unwrap().token, "sock");
    sock.write(T0, "/shared/a", b"from socket").unwrap();
    assert_eq!(
        inproc.next_watch_event(WAIT).unwrap().unwrap().path,
        "/shared/a"
    );
    assert_eq!(
        sock.next_watch_event(WAIT).unwrap().unwrap().path,
        "/shared/a"
    );
    inproc.write(T0, "/shared/b", b"in process").unwrap();
    assert_eq!(
        sock.next_watch_event(WAIT).unwrap().unwrap().path,
        "/shared/b"
    );
    assert_eq!(
        inproc.next_watch_event(WAIT).unwrap().unwrap().path,
        "/shared/b"
    );
    // The in-process toolstack's introduce/release open and close sockets too.
    local.introduce_domain(DomId(8));
    assert!(d.socket_path(DomId(8)).exists());
    let guest = Client::open_path(&d.socket_path(DomId(8))).unwrap();
    assert_eq!(guest.get_domain_path(DomId(8)).unwrap(), "/local/domain/8");
    local.release_domain(DomId(8));
    assert!(!d.socket_path(DomId(8)).exists());
    drop(d);
    assert!(
        !dir.path().join("run/dom0.sock").exists(),
        "stopping removes the sockets"
    );
    // The store lives on for its in-process users.
    assert_eq!(inproc.read(T0, "/shared/a").unwrap(), b"from socket");
}

#[test]
fn stopping_the_daemon_hangs_up_clients() {
    let dir = TempDir::new("stp");
    let d = start(&dir);
    let c = dom0(&d);
    c.write(T0, "/x", b"1").unwrap();
    d.stop();
    assert!(c.read(T0, "/x").is_err());
    assert!(c.next_watch_event(WAIT).is_err());
}

#[test]
fn a_second_daemon_on_the_same_directory_is_refused() {
    let dir = TempDir::new("two");
    let _d = start(&dir);
    let err = Daemon::bind(&dir.path().join("run")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

#[test]
fn unknown_message_type_is_enosys_like_xenstored() {
    let dir = TempDir::new("enosys");
    let d = start(&dir);
    let mut s = UnixStream::connect(d.socket_path(DomId(0))).unwrap();
    let bytes = xenstore::wire::Header {
        msg_type: 1234,
        req_id: 77,
        tx_id: 5,
        len: 0,
    }
    .encode()
    .to_vec();
    s.write_all(&bytes).unwrap();
    // Two requests, so at least the first two replies are read: the unknown type's and this.
    let tx_end_outside = Message::new(MsgType::TransactionEnd, 78, T0, b"X\0".to_vec());
    let r = raw_exchange(&mut s, &[tx_end_outside.clone(), tx_end_outside]);
    let got: Vec<(MsgType, u32, u32, &[u8])> = r[..2]
        .iter()
        .map(|m| (m.msg_type, m.req_id, m.tx_id.0, m.payload.as_slice()))
        .collect();
    assert_eq!(
        got,
        [
            (MsgType::Error, 77, 5, &b"ENOSYS\0"[..]),
            // xenstored checks the argument before the (absent) transaction.
            (MsgType::Error, 78, 0, &b"EINVAL\0"[..]),
        ]
    );
}

#[test]
fn event_fd_stays_readable_after_the_daemon_dies_and_the_last_event_is_taken() {
    let dir = TempDir::new("fdd");
    let d = start(&dir);
    let c = dom0(&d);
    c.watch("/w", "t").unwrap();
    c.write(T0, "/w", b"1").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !c.has_watch_events() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    d.stop();
    // The request fails once the reader has seen the hang-up.
    assert!(c.read(T0, "/w").is_err());
    while let Ok(Some(_)) = c.next_watch_event(Some(Duration::ZERO)) {}
    // A poller must still wake up to learn that the connection is dead.
    assert!(
        readable(&c, 1000),
        "the event fd went quiet on a dead connection"
    );
    assert!(c.next_watch_event(WAIT).is_err());
}

/// A fake daemon on a socketpair: answers `DIRECTORY` with `E2BIG` and every `DIRECTORY_PART`
/// with `reply(n)` for the n-th one.
fn fake_directory_daemon(
    reply: impl Fn(u64) -> Reply + Send + 'static,
) -> (Client, std::thread::JoinHandle<()>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        let mut s = theirs;
        let mut d = Decoder::new();
        let mut buf = [0u8; 4096];
        let mut parts = 0;
        loop {
            let n = match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            d.feed(&buf[..n]);
            while let Ok(Some(m)) = d.next_message() {
                let r = if m.msg_type == MsgType::DirectoryPart {
                    parts += 1;
                    reply(parts)
                } else {
                    Reply::Error(Errno::E2BIG)
                };
                let out = r
                    .to_message(m.msg_type, m.req_id, m.tx_id)
                    .encode()
                    .unwrap();
                if s.write_all(&out).is_err() {
                    return;
                }
            }
        }
    });
    (Client::from_stream(ours).unwrap(), server)
}

fn directory_within_30s(c: Client) -> xenstore::Result<Vec<String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(c.directory(T0, "/d"));
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("directory() did not return: DIRECTORY_PART loop never ends")
}

#[test]
fn directory_part_that_makes_no_progress_is_an_error_not_a_hang() {
    let (c, _server) = fake_directory_daemon(|_| Reply::DirectoryPart {
        generation: 1,
        names: vec![],
        done: false,
    });
    assert!(directory_within_30s(c).is_err());
    // A generation that changes on every chunk restarts the listing; not forever.
    let (c, _server) = fake_directory_daemon(|n| Reply::DirectoryPart {
        generation: n,
        names: vec!["a".into()],
        done: false,
    });
    assert!(directory_within_30s(c).is_err());
}
