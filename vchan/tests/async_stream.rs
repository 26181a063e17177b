//! The tokio stream: split halves in separate tasks, both directions at once, every ring
//! placement; `copy_bidirectional` between two channels; waiting for a server without blocking
//! the runtime; and the leak check after each.
#![cfg(feature = "tokio")]

mod common;

use std::future::Future;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vchan::sim::SimDomain;
use vchan::{Address, AsyncVchan, RingSizes, State, Vchan};

/// No test may hang: each runs under this bound and fails if it passes.
const LIMIT: Duration = Duration::from_secs(10);

type AsyncEndpoint = AsyncVchan<SimDomain>;

async fn bounded<T>(what: &str, work: impl Future<Output = T>) -> T {
    match tokio::time::timeout(LIMIT, work).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: still running after {LIMIT:?}"),
    }
}

async fn async_pair(host: &Host, port: u32, sizes: RingSizes) -> (AsyncEndpoint, AsyncEndpoint) {
    let address = Address::Port(port);
    let server = AsyncVchan::server(&host.server_dom, CLIENT, &address, sizes)
        .await
        .unwrap();
    let client = AsyncVchan::client(&host.client_dom, SERVER, &address, None)
        .await
        .unwrap();
    (server, client)
}

/// Write all of `data` then hang up; read everything until EOF. Returns what was read.
async fn exchange(
    endpoint: AsyncEndpoint,
    data: Vec<u8>,
    chunk: usize,
) -> (Vec<u8>, AsyncEndpoint) {
    let (mut reader, mut writer) = tokio::io::split(endpoint);
    let writing = async move {
        for piece in data.chunks(chunk) {
            writer.write_all(piece).await.unwrap();
        }
        writer
    };
    let reading = async {
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        (got, reader)
    };
    // The halves run as separate tasks, so the reader and the writer wait on the one event
    // channel from different tasks (and, on this runtime, different threads).
    let writing = tokio::spawn(writing);
    let ((got, reader), writer) = tokio::join!(reading, async { writing.await.unwrap() });
    (got, reader.unsplit(writer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_halves_in_separate_tasks_carry_both_directions_at_once_over_every_placement() {
    for (index, (read, write, name)) in PLACEMENTS.into_iter().enumerate() {
        let host = Host::new();
        let sizes = RingSizes {
            server_read: read,
            server_write: write,
        };
        let (server, client) = async_pair(&host, index as u32 + 1, sizes).await;
        let up = pattern(3 << 20, index as u64);
        let down = pattern(2 << 20, 100 + index as u64);
        let work = async {
            // Each side writes its data and hangs up once the other side's data has all come
            // back, so neither write meets a closed peer.
            let server_side = tokio::spawn({
                let down = down.clone();
                async move {
                    let (mut reader, mut writer) = tokio::io::split(server);
                    let sending = tokio::spawn(async move {
                        for piece in down.chunks(5000) {
                            writer.write_all(piece).await.unwrap();
                        }
                        writer
                    });
                    let mut got = vec![0u8; 3 << 20];
                    reader.read_exact(&mut got).await.unwrap();
                    let writer = sending.await.unwrap();
                    (got, reader.unsplit(writer))
                }
            });
            let (mut reader, mut writer) = tokio::io::split(client);
            let sending = tokio::spawn({
                let up = up.clone();
                async move {
                    for piece in up.chunks(7000) {
                        writer.write_all(piece).await.unwrap();
                    }
                    writer
                }
            });
            let mut got = vec![0u8; 2 << 20];
            reader.read_exact(&mut got).await.unwrap();
            let client = reader.unsplit(sending.await.unwrap());
            let (server_got, server) = server_side.await.unwrap();
            (got, server_got, server, client)
        };
        let (client_got, server_got, server, client) = bounded(name, work).await;
        assert!(client_got == down, "{name}: server to client bytes differ");
        assert!(server_got == up, "{name}: client to server bytes differ");
        drop((server, client));
        host.assert_clean();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_a_half_close_the_peer_reads_as_eof_and_the_reply_still_comes() {
    let host = Host::new();
    let (mut server, mut client) = async_pair(&host, 1, RingSizes::default()).await;
    let reply = pattern(1 << 20, 3);
    let server_task = tokio::spawn({
        let reply = reply.clone();
        async move {
            // The whole request, then end-of-stream, as over TCP.
            let mut request = Vec::new();
            server.read_to_end(&mut request).await.unwrap();
            server.write_all(&reply).await.unwrap();
            server.shutdown().await.unwrap();
            (request, server)
        }
    });
    client.write_all(b"GET /").await.unwrap();
    client.shutdown().await.unwrap();
    let err = client.write_all(b"more").await.unwrap_err();
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::BrokenPipe,
        "write after shutdown"
    );
    let mut got = Vec::new();
    bounded("the reply", client.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(got == reply, "the client lost bytes of the reply");
    let (request, server) = bounded("server", server_task).await.unwrap();
    assert_eq!(request, b"GET /");
    drop((server, client));
    host.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_bidirectional_joins_two_channels() {
    // a_client <-> a_server ==copy== b_client <-> b_server
    let host = Host::new();
    let small = RingSizes::default();
    let (a_server, a_client) = async_pair(&host, 1, small).await;
    let (b_server, b_client) = async_pair(
        &host,
        2,
        RingSizes {
            server_read: 65536,
            server_write: 65536,
        },
    )
    .await;
    let there = pattern(2 << 20, 8);
    let back = pattern(1 << 20, 9);
    let relay = tokio::spawn(async move {
        let (mut left, mut right) = (a_server, b_client);
        let moved = tokio::io::copy_bidirectional(&mut left, &mut right).await;
        (moved, left, right)
    });
    let far_end = tokio::spawn({
        let back = back.clone();
        async move {
            let (got, mut b_server) = exchange(b_server, back, 4096).await;
            b_server.shutdown().await.unwrap();
            (got, b_server)
        }
    });
    let (got_back, a_client, (moved, a_server, b_client), (got_there, b_server)) =
        bounded("relay", async {
            let (mut reader, mut writer) = tokio::io::split(a_client);
            let sending = async {
                writer.write_all(&there).await.unwrap();
                writer
            };
            let receiving = async {
                let mut got = vec![0u8; back.len()];
                reader.read_exact(&mut got).await.unwrap();
                got
            };
            let (writer, got) = tokio::join!(sending, receiving);
            let mut a_client = reader.unsplit(writer);
            // Both directions are complete: hang up, which ends the relay.
            a_client.shutdown().await.unwrap();
            let (moved, left, right) = relay.await.unwrap();
            (got, a_client, (moved, left, right), far_end.await.unwrap())
        })
        .await;
    assert!(got_there == there, "bytes differ after the relay, outward");
    assert!(got_back == back, "bytes differ after the relay, back");
    let (out, home) = moved.unwrap();
    assert_eq!((out as usize, home as usize), (there.len(), back.len()));
    drop((a_server, a_client, b_client, b_server));
    host.assert_clean();
}

#[tokio::test(flavor = "current_thread")]
async fn waiting_for_a_server_does_not_block_the_runtime() {
    let host = Host::new();
    // On a one-thread runtime, the server below can only be created while the client waits if
    // the client's wait runs off the runtime's thread.
    let client = tokio::spawn({
        let dom = host.client_dom.clone();
        async move { AsyncVchan::client(&dom, SERVER, &Address::Port(4), Some(LIMIT)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let server = AsyncVchan::server(
        &host.server_dom,
        CLIENT,
        &Address::Port(4),
        RingSizes::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        bounded("connect", server.wait_connected()).await.unwrap(),
        State::Connected
    );
    let mut client = bounded("client", client).await.unwrap().unwrap();
    let mut server = server;
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    bounded("read", server.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"ping");
    drop((server, client));
    host.assert_clean();
}

#[tokio::test(flavor = "current_thread")]
async fn a_blocking_endpoint_can_be_wrapped_and_taken_back() {
    let host = Host::new();
    let (server, client) = host.pair(RingSizes::default());
    let mut server = AsyncVchan::new(server).unwrap();
    (&client).write_all_sync(b"sync to async");
    let mut buf = [0u8; 13];
    bounded("read", server.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"sync to async");
    let server: Vchan<SimDomain> = server.into_inner();
    drop((server, client));
    host.assert_clean();
}

/// `std::io::Write::write_all` under a name that does not clash with tokio's extension trait.
trait WriteAllSync {
    fn write_all_sync(self, data: &[u8]);
}

impl WriteAllSync for &Vchan<SimDomain> {
    fn write_all_sync(mut self, data: &[u8]) {
        std::io::Write::write_all(&mut self, data).unwrap();
    }
}
