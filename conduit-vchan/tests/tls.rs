//! `tls+` endpoints: TLS over TCP and over vchan on the in-process simulation, blocking and
//! async; a certificate or server name the client does not accept is refused at connect with
//! rustls' reason, and neither end hangs.

mod support;

use std::io::{Read, Write};
use std::thread;
use std::time::Duration;

use conduit_vchan::describe;
use conduit_vchan::{AsyncListener, ConduitError, Connector, Endpoint, Listener, Peer};
use support::pki::{server_name, Pki};
use support::{pattern, runtime, Sim, CLIENT, SERVER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn parse(name: &str) -> Endpoint {
    name.parse().unwrap()
}

/// Listen on `listen`, serve one echo-with-a-twist, connect with `connector` to `connect`
/// (or the listener's own endpoint): a request far larger than a vchan ring, a half-close, and
/// a larger reply.
fn request_reply_over_tls(
    listener: Listener,
    connector: &Connector,
    connect: Option<Endpoint>,
) -> (Peer, Peer) {
    let target = connect.unwrap_or_else(|| listener.local_endpoint());
    let request = pattern(200_000, 1);
    let reply = pattern(500_000, 2);
    thread::scope(|s| {
        let serving = s.spawn(|| {
            let (mut conn, peer) = listener.accept().unwrap();
            assert!(conn.is_tls());
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap();
            assert!(got == request, "the request differs");
            conn.write_all(&reply).unwrap();
            conn.shutdown_write().unwrap();
            // A TLS 1.3 half-close: the client's close_notify did not stop our reply.
            peer
        });
        let mut conn = connector.connect(&target).unwrap();
        assert!(conn.is_tls());
        conn.write_all(&request).unwrap();
        conn.shutdown_write().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        assert!(got == reply, "the reply differs");
        (serving.join().unwrap(), conn.peer().clone())
    })
}

#[test]
fn tls_over_tcp_carries_a_request_a_half_close_and_the_reply() {
    let pki = Pki::new("tcp");
    let listener = Listener::bind_with(
        &parse("tls+tcp://127.0.0.1:0"),
        conduit_vchan::ListenOptions::new().tls(pki.server(&["127.0.0.1"], &[])),
    )
    .unwrap();
    let connector = Connector::new().tls(pki.client(&[]), server_name("127.0.0.1"));
    let (server_saw, _) = request_reply_over_tls(listener, &connector, None);
    assert!(matches!(server_saw, Peer::Tcp(_)));
}

#[test]
fn tls_over_a_vchan_service_carries_a_request_a_half_close_and_the_reply() {
    let sim = Sim::new();
    let pki = Pki::new("vchan");
    // A vchan peer has no DNS name: the certificate names the service, and the client says so.
    let listener = Listener::bind_with(
        &parse("tls+vchan://*/secure"),
        sim.listen_options()
            .tls(pki.server(&["secure.domain-5.invalid"], &[])),
    )
    .unwrap();
    let connector = sim
        .connector()
        .tls(pki.client(&[]), server_name("secure.domain-5.invalid"));
    let (server_saw, client_saw) =
        request_reply_over_tls(listener, &connector, Some(parse("tls+vchan://5/secure")));
    assert_eq!(server_saw, Peer::Vchan(CLIENT));
    assert_eq!(client_saw, Peer::Vchan(SERVER));
    sim.assert_clean();
}

#[test]
fn tls_over_an_integer_vchan_port_works_too() {
    let sim = Sim::new();
    let pki = Pki::new("port");
    let listener = Listener::bind_with(
        &parse("tls+vchan://0/9"),
        sim.listen_options()
            .tls(pki.server(&["port9.invalid"], &[])),
    )
    .unwrap();
    let connector = sim
        .connector()
        .tls(pki.client(&[]), server_name("port9.invalid"));
    request_reply_over_tls(listener, &connector, Some(parse("tls+vchan://5/9")));
    sim.assert_clean();
}

#[test]
fn one_tls_connection_is_read_and_written_from_two_threads_at_once() {
    let sim = Sim::new();
    let pki = Pki::new("duplex");
    let listener = Listener::bind_with(
        &parse("tls+vchan://*/duplex"),
        sim.listen_options()
            .tls(pki.server(&["duplex.invalid"], &[])),
    )
    .unwrap();
    let connector = sim
        .connector()
        .tls(pki.client(&[]), server_name("duplex.invalid"));
    let up = pattern(4 << 20, 3);
    let down = pattern(3 << 20, 4);
    // Both ends write far more than a ring (and than rustls buffers) before reading anything:
    // a reader that held the session while it waited would deadlock this.
    thread::scope(|s| {
        s.spawn(|| {
            let (conn, _) = listener.accept().unwrap();
            thread::scope(|t| {
                t.spawn(|| {
                    (&conn).write_all(&down).unwrap();
                    conn.shutdown_write().unwrap();
                });
                let mut got = Vec::new();
                (&conn).read_to_end(&mut got).unwrap();
                assert!(got == up, "the upload differs");
            });
        });
        let conn = connector.connect(&parse("tls+vchan://5/duplex")).unwrap();
        thread::scope(|t| {
            t.spawn(|| {
                for piece in up.chunks(70_001) {
                    (&conn).write_all(piece).unwrap();
                }
                conn.shutdown_write().unwrap();
            });
            let mut got = Vec::new();
            (&conn).read_to_end(&mut got).unwrap();
            assert!(got == down, "the download differs");
        });
    });
    drop(listener);
    sim.assert_clean();
}

/// A client that does not accept the server: connect fails with `ConduitError::Tls` naming the
/// reason; the server's first read fails too, with the client's alert; nobody hangs.
///
/// Regression: the alert was lost. rustls queues a ChangeCipherSpec and the alert, and makes one
/// last vectored write; a transport that took only the first slice sent the ChangeCipherSpec
/// alone, and the server saw a bare end of stream instead of the reason.
fn refused(pki_server: &Pki, server_names: &[&str], pki_client: &Pki, asked: &str, says: &str) {
    let sim = Sim::new();
    let listener = Listener::bind_with(
        &parse("tls+vchan://*/strict"),
        sim.listen_options()
            .tls(pki_server.server(server_names, &[])),
    )
    .unwrap();
    let connector = sim
        .connector()
        .tls(pki_client.client(&[]), server_name(asked));
    thread::scope(|s| {
        let serving = s.spawn(|| {
            let (mut conn, _) = listener.accept().unwrap();
            conn.read(&mut [0; 16]).unwrap_err()
        });
        let err = connector
            .connect(&parse("tls+vchan://5/strict"))
            .unwrap_err();
        assert!(matches!(err, ConduitError::Tls { .. }), "{err:?}");
        let text = describe(&err);
        assert!(text.contains(says), "{text}");
        assert!(
            text.starts_with("TLS with tls+vchan://5/strict failed"),
            "{text}"
        );
        let server_err = serving.join().unwrap();
        assert!(
            describe(&server_err).contains("received fatal alert"),
            "{server_err}"
        );
    });
    drop(listener);
    sim.assert_clean();
}

#[test]
fn a_certificate_from_an_unknown_authority_is_refused_with_the_reason() {
    refused(
        &Pki::new("real"),
        &["strict.invalid"],
        &Pki::new("other"),
        "strict.invalid",
        "invalid peer certificate: UnknownIssuer",
    );
}

#[test]
fn a_certificate_for_another_name_is_refused_with_the_reason() {
    let pki = Pki::new("names");
    refused(
        &pki,
        &["strict.invalid"],
        &pki,
        "someone-else.invalid",
        "certificate not valid for name",
    );
}

#[test]
fn tls_endpoints_without_a_configuration_say_so() {
    let sim = Sim::new();
    let err = Listener::bind_with(&parse("tls+vchan://*/x"), sim.listen_options()).unwrap_err();
    assert!(matches!(err, ConduitError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("ListenOptions::tls"), "{err}");
    let err = sim
        .connector()
        .connect(&parse("tls+vchan://5/x"))
        .unwrap_err();
    assert!(matches!(err, ConduitError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("Connector::tls"), "{err}");
    let err = runtime()
        .block_on(
            sim.connector()
                .connect_async(&parse("tls+tcp://127.0.0.1:1")),
        )
        .unwrap_err();
    assert!(matches!(err, ConduitError::Unsupported { .. }), "{err}");
}

/// The async case: `count` clients at once through one listener, each echoing a transfer far
/// larger than a ring through split halves.
async fn async_echo(listener: AsyncListener, connector: Connector, target: Endpoint, count: u64) {
    let serving = async {
        let mut tasks = Vec::new();
        for _ in 0..count {
            let (conn, _) = listener.accept().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let (mut reader, mut writer) = tokio::io::split(conn);
                tokio::io::copy(&mut reader, &mut writer).await.unwrap();
                writer.shutdown().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    };
    let clients = async {
        let mut tasks = Vec::new();
        for i in 0..count {
            let (connector, target) = (connector.clone(), target.clone());
            tasks.push(tokio::spawn(async move {
                let conn = connector.connect_async(&target).await.unwrap();
                assert!(conn.is_tls());
                let data = pattern(if i == 0 { 2 << 20 } else { 50_000 }, i);
                let (mut reader, mut writer) = tokio::io::split(conn);
                let sent = data.clone();
                let sending = tokio::spawn(async move {
                    writer.write_all(&sent).await.unwrap();
                    writer.shutdown().await.unwrap();
                });
                let mut got = Vec::new();
                reader.read_to_end(&mut got).await.unwrap();
                sending.await.unwrap();
                assert!(got == data, "connection {i}: the echo differs");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(serving, clients);
    })
    .await
    .expect("the async TLS echo hung");
    listener.close().await;
}

#[test]
fn async_tls_over_tcp_and_over_vchan_echoes_many_connections_at_once() {
    let rt = runtime();
    let pki = Pki::new("async");
    // TCP.
    rt.block_on(async {
        let listener = AsyncListener::bind_with(
            &parse("tls+tcp://127.0.0.1:0"),
            conduit_vchan::ListenOptions::new().tls(pki.server(&["localhost"], &[])),
        )
        .await
        .unwrap();
        let target = listener.local_endpoint();
        let connector = Connector::new().tls(pki.client(&[]), server_name("localhost"));
        async_echo(listener, connector, target, 8).await;
    });
    // vchan, through the service's rendezvous.
    let sim = Sim::new();
    rt.block_on(async {
        let listener = AsyncListener::bind_with(
            &parse("tls+vchan://*/echo"),
            sim.listen_options().tls(pki.server(&["echo.invalid"], &[])),
        )
        .await
        .unwrap();
        let connector = sim
            .connector()
            .tls(pki.client(&[]), server_name("echo.invalid"));
        async_echo(listener, connector, parse("tls+vchan://5/echo"), 8).await;
    });
    sim.wait_clean();
}

#[test]
fn async_tls_refuses_an_unknown_authority_and_the_server_sees_the_alert() {
    let rt = runtime();
    let sim = Sim::new();
    rt.block_on(async {
        let listener = AsyncListener::bind_with(
            &parse("tls+vchan://*/strict"),
            sim.listen_options()
                .tls(Pki::new("real").server(&["strict.invalid"], &[])),
        )
        .await
        .unwrap();
        let connector = sim
            .connector()
            .tls(Pki::new("other").client(&[]), server_name("strict.invalid"));
        let work = async {
            let serving = async {
                let (mut conn, _) = listener.accept().await.unwrap();
                conn.read(&mut [0; 16]).await.unwrap_err()
            };
            let target = parse("tls+vchan://5/strict");
            tokio::join!(serving, connector.connect_async(&target))
        };
        let (server_err, client) = tokio::time::timeout(Duration::from_secs(20), work)
            .await
            .expect("a refused handshake hung");
        let err = client.unwrap_err();
        assert!(matches!(err, ConduitError::Tls { .. }), "{err:?}");
        assert!(
            describe(&err).contains("UnknownIssuer"),
            "{}",
            describe(&err)
        );
        assert!(
            describe(&server_err).contains("received fatal alert"),
            "{server_err}"
        );
        listener.close().await;
    });
    sim.wait_clean();
}

#[test]
fn a_client_that_never_says_hello_does_not_hold_up_the_next() {
    let rt = runtime();
    let pki = Pki::new("lazy");
    rt.block_on(async {
        let listener = AsyncListener::bind_with(
            &parse("tls+tcp://127.0.0.1:0"),
            conduit_vchan::ListenOptions::new().tls(pki.server(&["localhost"], &[])),
        )
        .await
        .unwrap();
        let target = listener.local_endpoint();
        // A plain connection to the TLS port that sends nothing.
        let plain = Endpoint {
            tls: false,
            ..target.clone()
        };
        let silent = Connector::new().connect_async(&plain).await.unwrap();
        let (first, _) = listener.accept().await.unwrap();
        // The next client is accepted and served while the first still owes its hello.
        let connector = Connector::new().tls(pki.client(&[]), server_name("localhost"));
        let work = async {
            let serving = async {
                let (mut conn, _) = listener.accept().await.unwrap();
                conn.write_all(b"served").await.unwrap();
                conn.shutdown().await.unwrap();
            };
            let calling = async {
                let mut conn = connector.connect_async(&target).await.unwrap();
                let mut got = Vec::new();
                conn.read_to_end(&mut got).await.unwrap();
                got
            };
            tokio::join!(serving, calling).1
        };
        let got = tokio::time::timeout(Duration::from_secs(20), work)
            .await
            .expect("the silent client held up the listener");
        assert_eq!(got, b"served");
        drop((first, silent));
    });
}

/// A short handshake timeout for the tests whose peer never completes its handshake. Honest
/// handshakes under it take milliseconds; the silent ones take it whole.
const SHORT: Duration = Duration::from_secs(2);

/// Whether `e` is a handshake's timeout, as the crate reports it.
fn is_handshake_timeout(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::TimedOut
        && describe(e).contains("the handshake did not complete within 2s")
}

/// Run `work` on its own thread and wait for it at most `limit`: a hang (a handshake that waits
/// for ever) fails the test instead of holding it for ever.
fn bounded<T: Send + 'static>(limit: Duration, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let _worker = thread::spawn(move || tx.send(work()));
    rx.recv_timeout(limit).expect("the test hung")
}

/// A runtime with I/O and no timer: `tokio::time` would panic in it.
fn runtime_without_timers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap()
}

#[test]
fn a_silent_client_times_out_its_handshake_and_frees_the_integer_port_for_the_next() {
    bounded(Duration::from_secs(60), || {
        let sim = Sim::new();
        let pki = Pki::new("silent");
        // An integer port serves one connection at a time: the silent client holds it until its
        // handshake times out and the server drops it.
        let listener = Listener::bind_with(
            &parse("tls+vchan://0/9"),
            sim.listen_options()
                .tls(pki.server(&["port9.invalid"], &[]))
                .handshake_timeout(SHORT),
        )
        .unwrap();
        let connector = sim
            .connector()
            .tls(pki.client(&[]), server_name("port9.invalid"));
        thread::scope(|s| {
            let serving = s.spawn(|| {
                let (mut silent, _) = listener.accept().unwrap();
                let err = silent.read(&mut [0; 16]).unwrap_err();
                assert!(is_handshake_timeout(&err), "{}", describe(&err));
                // After a failed handshake the connection stays failed.
                assert!(silent.write(b"x").is_err());
                drop(silent);
                let (mut honest, _) = listener.accept().unwrap();
                honest.write_all(b"served").unwrap();
                honest.shutdown_write().unwrap();
            });
            // A plain vchan to the TLS port: it connects, and never says hello.
            let silent = sim.connector().connect(&parse("vchan://5/9")).unwrap();
            let mut honest = connector.connect(&parse("tls+vchan://5/9")).unwrap();
            let mut got = String::new();
            honest.read_to_string(&mut got).unwrap();
            assert_eq!(got, "served");
            serving.join().unwrap();
            drop(silent);
        });
        drop(listener);
        sim.assert_clean();
    });
}

#[test]
fn a_client_that_sends_a_byte_now_and_then_still_meets_the_handshake_deadline() {
    bounded(Duration::from_secs(60), || {
        let pki = Pki::new("drip");
        let listener = Listener::bind_with(
            &parse("tls+tcp://127.0.0.1:0"),
            conduit_vchan::ListenOptions::new()
                .tls(pki.server(&["127.0.0.1"], &[]))
                .handshake_timeout(SHORT),
        )
        .unwrap();
        let plain = Endpoint {
            tls: false,
            ..listener.local_endpoint()
        };
        let mut drip = Connector::new().connect(&plain).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        thread::scope(|s| {
            // A TLS record header, one byte at a time: each read gets something well within the
            // timeout, and the handshake never completes.
            s.spawn(|| {
                for byte in [0x16u8, 0x03, 0x01, 0x40, 0x00].iter().cycle() {
                    if stop.load(std::sync::atomic::Ordering::Relaxed)
                        || drip.write(&[*byte]).is_err()
                    {
                        break;
                    }
                    thread::sleep(Duration::from_millis(200));
                }
            });
            let (mut conn, _) = listener.accept().unwrap();
            let err = conn.read(&mut [0; 16]).unwrap_err();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(is_handshake_timeout(&err), "{}", describe(&err));
        });
    });
}

#[test]
fn a_server_that_never_answers_the_client_hello_fails_connect_with_a_timeout() {
    bounded(Duration::from_secs(60), || {
        let sim = Sim::new();
        let pki = Pki::new("mute");
        // A plain service: it reads what the client sends and never answers.
        let listener = Listener::bind_with(&parse("vchan://*/mute"), sim.listen_options()).unwrap();
        let connector = sim
            .connector()
            .tls(pki.client(&[]), server_name("mute.invalid"))
            .handshake_timeout(SHORT);
        thread::scope(|s| {
            let serving = s.spawn(|| {
                let (mut conn, _) = listener.accept().unwrap();
                let mut hello = Vec::new();
                conn.read_to_end(&mut hello).unwrap();
                hello
            });
            let err = connector.connect(&parse("tls+vchan://5/mute")).unwrap_err();
            assert!(matches!(err, ConduitError::Tls { .. }), "{err:?}");
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::TimedOut,
                "{}",
                describe(&err)
            );
            assert!(
                describe(&err).contains("the handshake did not complete within 2s"),
                "{}",
                describe(&err)
            );
            // The client did say hello (a TLS handshake record), and then went away.
            assert_eq!(serving.join().unwrap().first(), Some(&0x16));
        });
        drop(listener);
        sim.assert_clean();
    });
}

#[test]
fn async_tls_drops_a_silent_client_after_the_timeout_on_a_runtime_without_timers() {
    let sim = Sim::new();
    let pki = Pki::new("silent-async");
    let (listen_options, connector, plain) = (
        sim.listen_options()
            .tls(pki.server(&["port9.invalid"], &[]))
            .handshake_timeout(SHORT),
        sim.connector()
            .tls(pki.client(&[]), server_name("port9.invalid")),
        sim.connector(),
    );
    bounded(Duration::from_secs(60), move || {
        runtime_without_timers().block_on(async {
            let listener = AsyncListener::bind_with(&parse("tls+vchan://0/9"), listen_options)
                .await
                .unwrap();
            let serving = async {
                let (mut silent, _) = listener.accept().await.unwrap();
                let err = silent.read(&mut [0; 16]).await.unwrap_err();
                assert!(is_handshake_timeout(&err), "{}", describe(&err));
                assert!(silent.write(b"x").await.is_err());
                // The integer port's one connection is free again once this goes.
                drop(silent);
                let (mut honest, _) = listener.accept().await.unwrap();
                honest.handshake().await.unwrap();
                honest.write_all(b"served").await.unwrap();
                honest.shutdown().await.unwrap();
            };
            let calling = async {
                let silent = plain.connect_async(&parse("vchan://5/9")).await.unwrap();
                let mut honest = connector
                    .connect_async(&parse("tls+vchan://5/9"))
                    .await
                    .unwrap();
                let mut got = Vec::new();
                honest.read_to_end(&mut got).await.unwrap();
                drop(silent);
                got
            };
            let ((), got) = tokio::join!(serving, calling);
            assert_eq!(got, b"served");
            listener.close().await;
        });
    });
    sim.wait_clean();
}

#[test]
fn async_connect_to_a_server_that_never_answers_times_out_on_a_runtime_without_timers() {
    let pki = Pki::new("mute-async");
    let connector = Connector::new()
        .tls(pki.client(&[]), server_name("localhost"))
        .handshake_timeout(SHORT);
    bounded(Duration::from_secs(60), move || {
        runtime_without_timers().block_on(async {
            let listener = AsyncListener::bind(&parse("tcp://127.0.0.1:0"))
                .await
                .unwrap();
            let target = Endpoint {
                tls: true,
                ..listener.local_endpoint()
            };
            let serving = async {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut hello = Vec::new();
                conn.read_to_end(&mut hello).await.unwrap();
                hello
            };
            let (hello, outcome) = tokio::join!(serving, connector.connect_async(&target));
            let err = outcome.unwrap_err();
            assert!(matches!(err, ConduitError::Tls { .. }), "{err:?}");
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::TimedOut,
                "{}",
                describe(&err)
            );
            assert_eq!(hello.first(), Some(&0x16));
        });
    });
}

/// Both ways over `listen`: one side writes and drops its connection without `shutdown_write`;
/// the other reads everything and a clean end of stream (not rustls' unexpected EOF).
fn a_dropped_blocking_connection_ends_cleanly(
    listen: Endpoint,
    options: conduit_vchan::ListenOptions,
    connector: &Connector,
    connect: Option<Endpoint>,
) {
    let listener = Listener::bind_with(&listen, options).unwrap();
    let target = connect.unwrap_or_else(|| listener.local_endpoint());
    let message = pattern(100_000, 7);
    for server_drops in [true, false] {
        thread::scope(|s| {
            let serving = s.spawn(|| {
                let (mut conn, _) = listener.accept().unwrap();
                if server_drops {
                    conn.write_all(&message).unwrap();
                    drop(conn);
                    None
                } else {
                    let mut got = Vec::new();
                    Some(conn.read_to_end(&mut got).map(|_| got))
                }
            });
            let mut conn = connector.connect(&target).unwrap();
            if server_drops {
                let mut got = Vec::new();
                let read = conn.read_to_end(&mut got);
                assert!(read.is_ok(), "{}", describe(&read.unwrap_err()));
                assert!(got == message, "the message differs");
                serving.join().unwrap();
            } else {
                conn.write_all(&message).unwrap();
                drop(conn);
                let read = serving.join().unwrap().unwrap();
                assert!(read.is_ok(), "{}", describe(&read.as_ref().unwrap_err()));
                assert!(read.unwrap() == message, "the message differs");
            }
        });
    }
}

#[test]
fn dropping_a_blocking_tls_connection_sends_close_notify() {
    let pki = Pki::new("drop");
    a_dropped_blocking_connection_ends_cleanly(
        parse("tls+tcp://127.0.0.1:0"),
        conduit_vchan::ListenOptions::new().tls(pki.server(&["127.0.0.1"], &[])),
        &Connector::new().tls(pki.client(&[]), server_name("127.0.0.1")),
        None,
    );
    let sim = Sim::new();
    a_dropped_blocking_connection_ends_cleanly(
        parse("tls+vchan://*/drop"),
        sim.listen_options().tls(pki.server(&["drop.invalid"], &[])),
        &sim.connector()
            .tls(pki.client(&[]), server_name("drop.invalid")),
        Some(parse("tls+vchan://5/drop")),
    );
    sim.assert_clean();
}

/// The async case of [`a_dropped_blocking_connection_ends_cleanly`].
async fn a_dropped_async_connection_ends_cleanly(
    listener: AsyncListener,
    connector: &Connector,
    target: Endpoint,
) {
    let message = pattern(100_000, 8);
    for server_drops in [true, false] {
        let serving = async {
            let (mut conn, _) = listener.accept().await.unwrap();
            if server_drops {
                conn.write_all(&message).await.unwrap();
                conn.flush().await.unwrap();
                drop(conn);
                None
            } else {
                let mut got = Vec::new();
                Some(conn.read_to_end(&mut got).await.map(|_| got))
            }
        };
        let calling = async {
            let mut conn = connector.connect_async(&target).await.unwrap();
            if server_drops {
                let mut got = Vec::new();
                Some(conn.read_to_end(&mut got).await.map(|_| got))
            } else {
                conn.write_all(&message).await.unwrap();
                conn.flush().await.unwrap();
                drop(conn);
                None
            }
        };
        let (served, called) = tokio::join!(serving, calling);
        let read = served.or(called).unwrap();
        assert!(read.is_ok(), "{}", describe(&read.as_ref().unwrap_err()));
        assert!(read.unwrap() == message, "the message differs");
    }
    listener.close().await;
}

#[test]
fn dropping_an_async_tls_connection_sends_close_notify() {
    let rt = runtime();
    let pki = Pki::new("drop-async");
    rt.block_on(async {
        let listener = AsyncListener::bind_with(
            &parse("tls+tcp://127.0.0.1:0"),
            conduit_vchan::ListenOptions::new().tls(pki.server(&["localhost"], &[])),
        )
        .await
        .unwrap();
        let target = listener.local_endpoint();
        let connector = Connector::new().tls(pki.client(&[]), server_name("localhost"));
        tokio::time::timeout(
            Duration::from_secs(60),
            a_dropped_async_connection_ends_cleanly(listener, &connector, target),
        )
        .await
        .expect("the TCP case hung");
    });
    let sim = Sim::new();
    rt.block_on(async {
        let listener = AsyncListener::bind_with(
            &parse("tls+vchan://*/drop"),
            sim.listen_options().tls(pki.server(&["drop.invalid"], &[])),
        )
        .await
        .unwrap();
        let connector = sim
            .connector()
            .tls(pki.client(&[]), server_name("drop.invalid"));
        tokio::time::timeout(
            Duration::from_secs(60),
            a_dropped_async_connection_ends_cleanly(
                listener,
                &connector,
                parse("tls+vchan://5/drop"),
            ),
        )
        .await
        .expect("the vchan case hung");
    });
    sim.wait_clean();
}
