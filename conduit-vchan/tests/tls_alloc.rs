//! The TLS data path over vchan allocates nothing of its own: a vectored write to a vchan (how
//! rustls hands over its records) copies the slices into the ring with no buffer in between,
//! and a TLS write over vchan allocates exactly what the same write over a Unix socket does,
//! whose kernel gathers: rustls' own (rustls 0.23 encrypts each record into a new buffer, one
//! allocation per record). A counting global allocator checks it, in its own test binary; only
//! the writing thread is counted.

mod support;
// The counting global allocator vchan's allocation test uses.
#[path = "../../vchan/tests/common/counting_alloc.rs"]
mod counting_alloc;

use std::io::{IoSlice, Read, Write};
use std::path::PathBuf;
use std::thread;

use conduit_vchan::{AsyncConnection, Connector, Endpoint, ListenOptions, Listener};
use counting_alloc::Count;
use support::pki::{server_name, Pki};
use support::{pattern, Sim};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn parse(name: &str) -> Endpoint {
    name.parse().unwrap()
}

/// Write `data` in vectored writes of four slices each, as rustls hands over queued records.
async fn write_in_quarters(conn: &mut AsyncConnection, data: &[u8]) {
    let mut written = 0;
    while written < data.len() {
        let rest = &data[written..];
        let mut parts = rest.chunks(rest.len().div_ceil(4)).map(IoSlice::new);
        let slices: [IoSlice<'_>; 4] =
            std::array::from_fn(|_| parts.next().unwrap_or(IoSlice::new(&[])));
        let n = conn.write_vectored(&slices).await.unwrap();
        assert!(n > 0);
        written += n;
    }
}

#[test]
fn vectored_writes_to_a_vchan_allocate_nothing() {
    const WRITES: usize = 200;
    let data = pattern(64 * 1024, 1);
    let sim = Sim::new();
    let listener = Listener::bind_with(&parse("vchan://*/plain"), sim.listen_options()).unwrap();
    // The reader checks every byte, so a write that counted more than it wrote shows.
    let expected = data.repeat(2 * WRITES);
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        assert!(got == expected, "the bytes differ");
    });
    let conn = sim.connector().connect(&parse("vchan://5/plain")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let counted = rt.block_on(async {
        let mut conn = AsyncConnection::from_blocking(conn).unwrap();
        // Through a 64 KiB ring: most writes fill it, and wait for the reader.
        for _ in 0..WRITES {
            write_in_quarters(&mut conn, &data).await;
        }
        let count = Count::start();
        for _ in 0..WRITES {
            write_in_quarters(&mut conn, &data).await;
        }
        let counted = count.stop();
        conn.shutdown().await.unwrap();
        counted
    });
    server.join().unwrap();
    assert_eq!(
        counted, 0,
        "{counted} allocations in {WRITES} vectored writes"
    );
    drop(rt);
    sim.wait_clean();
}

/// Two records per write: 16 KiB is the most one carries.
const TLS_WRITE: usize = 20 * 1024;
/// Few enough that the transport never fills (a socket's buffer, a 1 MiB ring): each write
/// makes the same records every run.
const TLS_WRITES: usize = 6;

#[derive(Clone, Copy, Debug)]
enum Api {
    Blocking,
    Async,
}

/// Allocations of TLS_WRITES TLS writes from a client through `api` (each write flushed,
/// after as many to warm up and once the server has read those).
fn tls_write_allocations(
    api: Api,
    listener: Listener,
    connector: &Connector,
    target: &Endpoint,
) -> usize {
    let (warm, warmed) = std::sync::mpsc::channel();
    let data = pattern(TLS_WRITE, 2);
    let expected = data.repeat(TLS_WRITES);
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = vec![0; TLS_WRITES * TLS_WRITE];
        conn.read_exact(&mut buf).unwrap();
        warm.send(()).unwrap();
        conn.read_exact(&mut buf).unwrap();
        assert!(buf == expected, "the bytes differ");
        assert_eq!(conn.read(&mut buf).unwrap(), 0);
        conn.shutdown_write().unwrap();
    });
    let counted = match api {
        Api::Blocking => {
            let mut conn = connector.connect(target).unwrap();
            for _ in 0..TLS_WRITES {
                conn.write_all(&data).unwrap();
            }
            warmed.recv().unwrap();
            let count = Count::start();
            for _ in 0..TLS_WRITES {
                conn.write_all(&data).unwrap();
                conn.flush().unwrap();
            }
            let counted = count.stop();
            conn.shutdown_write().unwrap();
            // Read the server's end, so that no unread byte (a session ticket) resets a close.
            conn.read_to_end(&mut Vec::new()).unwrap();
            counted
        }
        Api::Async => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut conn = connector.connect_async(target).await.unwrap();
                for _ in 0..TLS_WRITES {
                    conn.write_all(&data).await.unwrap();
                    conn.flush().await.unwrap();
                }
                warmed.recv().unwrap();
                let count = Count::start();
                for _ in 0..TLS_WRITES {
                    conn.write_all(&data).await.unwrap();
                    conn.flush().await.unwrap();
                }
                let counted = count.stop();
                conn.shutdown().await.unwrap();
                conn.read_to_end(&mut Vec::new()).await.unwrap();
                counted
            })
        }
    };
    server.join().unwrap();
    counted
}

/// A socket path removed on drop.
struct SocketPath(PathBuf);

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn tls_writes_over_vchan_allocate_only_what_rustls_does() {
    let pki = Pki::new("alloc");
    let sim = Sim::new();
    for api in [Api::Blocking, Api::Async] {
        // The measure: the same writes over a Unix socket, which gathers in the kernel.
        let path = SocketPath(std::env::temp_dir().join(format!(
            "conduit-tls-alloc-{}-{api:?}.sock",
            std::process::id()
        )));
        let listener = Listener::bind_with(
            &parse(&format!("tls+unix://{}", path.0.display())),
            ListenOptions::new().tls(pki.server(&["unix.invalid"], &[])),
        )
        .unwrap();
        let target = listener.local_endpoint();
        let connector = Connector::new().tls(pki.client(&[]), server_name("unix.invalid"));
        let over_unix = tls_write_allocations(api, listener, &connector, &target);

        // A ring that holds every write, so that none waits and each makes two records.
        let listener = Listener::bind_with(
            &parse("tls+vchan://*/alloc"),
            sim.listen_options()
                .ring_sizes(vchan::RingSizes {
                    server_read: 1 << 20,
                    server_write: 4096,
                })
                .tls(pki.server(&["alloc.invalid"], &[])),
        )
        .unwrap();
        let connector = sim
            .connector()
            .tls(pki.client(&[]), server_name("alloc.invalid"));
        let over_vchan =
            tls_write_allocations(api, listener, &connector, &parse("tls+vchan://5/alloc"));
        assert_eq!(
            over_vchan, over_unix,
            "{api:?}: {TLS_WRITES} TLS writes of two records allocate {over_vchan} times over \
             vchan, {over_unix} over a Unix socket"
        );
    }
    sim.wait_clean();
}
