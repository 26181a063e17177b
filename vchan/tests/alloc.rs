//! The data path allocates nothing: once connected, `read`, `write`, `send` and `recv` (including
//! the ones that notify the peer, and blocking ones that sleep on the event channel and are woken)
//! make no heap allocation. A counting global allocator checks it, in its own test binary so no
//! other test's allocations are counted.

use std::sync::Barrier;
use std::thread;
use std::time::Duration;

mod common;
#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use common::Host;
use counting_alloc::{allocations_during, count_this_thread, counting_this_thread};
use vchan::RingSizes;

#[test]
fn read_write_send_and_recv_allocate_nothing_once_connected() {
    let host = Host::new();
    let (server, client) = host.pair(RingSizes {
        server_read: 4096,
        server_write: 4096,
    });
    let message = [7u8; 512];
    let mut buf = [0u8; 512];
    let mut ops = |rounds: usize| {
        for _ in 0..rounds {
            // Ask for events first, so the writes below notify (the event path is counted too).
            server.data_ready().unwrap();
            assert_eq!(client.write(&message).unwrap(), message.len());
            assert_eq!(server.read(&mut buf).unwrap(), message.len());
            client.data_ready().unwrap();
            server.send(&message).unwrap();
            client.recv(&mut buf).unwrap();
            assert_eq!(buf, message);
        }
    };
    // Warm up: lazily created state (event queues, the CPU-count probe) comes into being here.
    ops(16);
    let counted = allocations_during(|| ops(1000));
    assert_eq!(
        counted, 0,
        "{counted} allocations in 1000 rounds of the data path"
    );
    drop((server, client));
    host.assert_clean();
}

#[test]
fn blocking_calls_that_sleep_and_wake_allocate_nothing() {
    let host = Host::new();
    let (server, client) = host.pair(RingSizes::default());
    let capacity = client.write_capacity();
    // The writer fills the ring many times over, and each side pauses now and then for longer
    // than the spin budget, so the other finds the ring empty or full and sleeps on the event
    // channel until it is woken.
    let total = capacity * 2000;
    let started = Barrier::new(2);
    let finished = Barrier::new(2);
    let rounds = 2;
    thread::scope(|s| {
        // Spawned (and its buffer allocated) before counting starts; the barriers allocate
        // nothing.
        s.spawn(|| {
            let chunk = vec![1u8; capacity];
            for round in 0..rounds {
                started.wait();
                count_this_thread(round > 0);
                let mut sent = 0;
                for write in 0.. {
                    if sent == total {
                        break;
                    }
                    if write % 200 == 199 {
                        // Longer than the spin budget: the reader goes to sleep on the event.
                        thread::sleep(Duration::from_millis(1));
                    }
                    sent += client.write(&chunk[..capacity.min(total - sent)]).unwrap();
                }
                count_this_thread(false);
                finished.wait();
            }
        });
        let mut buf = [0u8; 100];
        let mut transfer = || {
            started.wait();
            let mut got = 0;
            for read in 0.. {
                if got == total {
                    break;
                }
                if read % 5000 == 4999 {
                    // And the other way round: the writer finds the ring full and sleeps.
                    thread::sleep(Duration::from_millis(1));
                }
                let n = server.read(&mut buf).unwrap();
                assert!(n > 0, "early EOF after {got} bytes");
                got += n;
            }
            finished.wait();
        };
        // The first round warms up what is created lazily (the event queues' storage).
        transfer();
        let counted = allocations_during(transfer);
        assert_eq!(
            counted, 0,
            "{counted} allocations while blocking reads and writes woke each other"
        );
    });
    drop((server, client));
    host.assert_clean();
}

#[test]
fn zero_copy_fills_and_drains_allocate_nothing() {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    let host = Host::new();
    let (server, client) = host.pair(RingSizes {
        server_read: 65536,
        server_write: 65536,
    });
    // Socket -> client's ring -> server's ring... -> socket: the kernel moves the bytes.
    let (mut feed, source) = UnixStream::pair().unwrap();
    let (sink, mut out) = UnixStream::pair().unwrap();
    let chunk = [5u8; 4096];
    let mut buf = [0u8; 4096];
    let mut rounds = |n: usize| {
        for _ in 0..n {
            server.data_ready().unwrap();
            feed.write_all(&chunk).unwrap();
            let mut moved = 0;
            while moved < chunk.len() {
                moved += client.fill_from(source.as_fd(), 65536).unwrap();
            }
            let mut drained = 0;
            while drained < chunk.len() {
                drained += server.drain_to(sink.as_fd(), 65536).unwrap();
            }
            out.read_exact(&mut buf).unwrap();
            assert_eq!(buf, chunk);
        }
    };
    rounds(16);
    let counted = allocations_during(|| rounds(1000));
    assert_eq!(counted, 0, "{counted} allocations in 1000 zero-copy rounds");
    drop((server, client));
    host.assert_clean();
}

#[test]
fn the_async_driver_allocates_nothing_once_connected() {
    use std::future::poll_fn;
    use std::pin::Pin;
    use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use vchan::AsyncVchan;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let host = Host::new();
    let (server, client) = host.pair(RingSizes {
        server_read: 65536,
        server_write: 65536,
    });
    let (mut server, mut client) = runtime.block_on(async {
        (
            AsyncVchan::new(server).unwrap(),
            AsyncVchan::new(client).unwrap(),
        )
    });
    let (feed, source) = std::os::unix::net::UnixStream::pair().unwrap();
    let (sink, out) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut rounds = |n: usize| {
        // `allocations_during` counts from its start: not the set-up below.
        let counting = counting_this_thread();
        count_this_thread(false);
        // Unconstrained: tokio's own budget, spent by the test's socket reads, would defer a wake
        // into a list that grows once per `block_on` (tokio's allocation, not the driver's).
        runtime.block_on(tokio::task::unconstrained(async {
            let source = tokio::net::UnixStream::from_std({
                source.set_nonblocking(true).unwrap();
                source.try_clone().unwrap()
            })
            .unwrap();
            let sink = tokio::net::UnixStream::from_std({
                sink.set_nonblocking(true).unwrap();
                sink.try_clone().unwrap()
            })
            .unwrap();
            let mut feed = tokio::net::UnixStream::from_std({
                feed.set_nonblocking(true).unwrap();
                feed.try_clone().unwrap()
            })
            .unwrap();
            let mut out = tokio::net::UnixStream::from_std({
                out.set_nonblocking(true).unwrap();
                out.try_clone().unwrap()
            })
            .unwrap();
            let message = [9u8; 2048];
            let mut buf = [0u8; 2048];
            // Counted from here: the sockets above were registered before.
            count_this_thread(counting);
            for _ in 0..n {
                // Read and write through the stream traits; a vectored write of two slices.
                server.data_ready().unwrap();
                client.write_all(&message).await.unwrap();
                server.read_exact(&mut buf).await.unwrap();
                let halves = [
                    std::io::IoSlice::new(&message[..1000]),
                    std::io::IoSlice::new(&message[1000..]),
                ];
                let n = poll_fn(|cx| Pin::new(&mut server).poll_write_vectored(cx, &halves))
                    .await
                    .unwrap();
                client.read_exact(&mut buf[..n]).await.unwrap();
                // Zero-copy both ways: socket -> ring, ring -> socket.
                feed.write_all(&message).await.unwrap();
                let mut moved = 0;
                while moved < message.len() {
                    moved += poll_fn(|cx| client.poll_fill_from(cx, &source, 65536))
                        .await
                        .unwrap();
                }
                let mut drained = 0;
                while drained < message.len() {
                    drained += poll_fn(|cx| server.poll_drain_to(cx, &sink, 65536))
                        .await
                        .unwrap();
                }
                out.read_exact(&mut buf).await.unwrap();
                assert_eq!(buf, message);
            }
            count_this_thread(false);
        }));
    };
    rounds(16);
    let counted = allocations_during(|| rounds(1000));
    assert_eq!(
        counted, 0,
        "{counted} allocations in 1000 rounds of the async data path"
    );
    runtime.block_on(async { drop((server, client)) });
    host.assert_clean();
}
