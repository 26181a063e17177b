//! A loom model of the notify protocol: the ring's own `Producer`, `Consumer` and `ControlPage`
//! (built with `--cfg vchan_loom`, which puts loom's atomics, fences and checked cells under the
//! same code), a writer and a reader over a ring smaller than the message, each sleeping on its
//! event channel (a loom `Notify`, which keeps a pending event as an event channel does) exactly
//! when the endpoint would: after asking for a notification and looking once more. Loom runs
//! every interleaving the memory model allows; a lost wake-up is a deadlock it reports, bytes
//! read before they were published are a data race on the ring's cells it reports, and bytes
//! out of order fail the assertion.
//!
//! ```text
//! RUSTFLAGS="--cfg vchan_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p vchan --release --test loom_notify
//! ```
//!
//! It explores every interleaving with up to three preemptions (about 20 s); with
//! `LOOM_MAX_PREEMPTIONS=N` it takes N, and without a bound (a large N) all of them (4 minutes
//! on 2 cores; passed).
#![cfg(vchan_loom)]

use loom::sync::{Arc, Notify};
use loom::thread;
use vchan::layout::Side;
use vchan::ring::loom_page::{Cells, Page};
use vchan::ring::{Consumer, ControlPage, Producer, RingGeometry, Role};
use xen_types::memory::{AsSharedRegion, SharedRegion};

/// What both ends share: the control words and the bytes of one ring.
struct Shared {
    page: Page,
    cells: Cells,
    /// Events for the reader (the server's port) and for the writer (the client's).
    to_reader: Notify,
    to_writer: Notify,
}

/// What a half holds to reach the shared memory: the model's page or its ring cells, kept alive
/// by the `Arc` (as an endpoint's halves hold the mapping they read).
#[derive(Clone)]
struct Memory {
    shared: Arc<Shared>,
    cells: bool,
}

impl AsSharedRegion for Memory {
    fn region(&self) -> SharedRegion<'_> {
        if self.cells {
            self.shared.cells.region()
        } else {
            self.shared.page.region()
        }
    }
}

/// The client writes `total` bytes into a `ring`-byte left ring; the server reads them in reads
/// of `chunk`.
fn transfer(total: u8, ring: usize, chunk: usize) {
    // Up to three preemptions unless LOOM_MAX_PREEMPTIONS says otherwise (loom's advice for
    // CI: most concurrency bugs need no more than two or three).
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(move || {
        let shared = Arc::new(Shared {
            page: Page::new(),
            cells: Cells::new(ring),
            to_reader: Notify::new(),
            to_writer: Notify::new(),
        });
        let memory = |cells| Memory {
            shared: Arc::clone(&shared),
            cells,
        };
        let page = ControlPage::new(memory(false));
        let geometry = RingGeometry {
            side: Side::Left,
            offset: 0,
            size: ring as u32,
        };
        let mut producer = Producer::new(page.clone(), memory(true), geometry, Role::Client, 0);
        let mut consumer = Consumer::new(page, memory(true), geometry, Role::Server, 0);
        let data: Vec<u8> = (1..=total).collect();

        let writer_shared = Arc::clone(&shared);
        let sent = data.clone();
        let writer = thread::spawn(move || {
            let shared = writer_shared;
            let mut done = 0;
            while done < sent.len() {
                let (n, notify) = producer.write(&sent[done..]).expect("an honest ring");
                if notify {
                    shared.to_reader.notify();
                }
                done += n;
                // Full: ask the reader for an event, look once more, then sleep (the endpoint's
                // wait loop, without its spinning).
                if n == 0 && producer.request_and_recheck().expect("an honest ring") == 0 {
                    shared.to_writer.wait();
                }
            }
        });

        let mut got = Vec::new();
        let mut buf = vec![0u8; chunk];
        while got.len() < data.len() {
            let (n, notify) = consumer.read(&mut buf).expect("an honest ring");
            if notify {
                shared.to_writer.notify();
            }
            got.extend_from_slice(&buf[..n]);
            if n == 0 && consumer.request_and_recheck().expect("an honest ring") == 0 {
                shared.to_reader.wait();
            }
        }
        writer.join().expect("the writer");
        assert_eq!(got, data, "bytes lost, duplicated or out of order");
    });
}

/// Three bytes through a two-byte ring, read one at a time: the writer must sleep on a full
/// ring and the reader on an empty one, both more than once.
#[test]
fn no_interleaving_loses_a_wake_up_or_misorders_bytes_small_reads() {
    transfer(3, 2, 1);
}

/// Four bytes through a two-byte ring, read in larger pieces (the ring wraps mid-read).
#[test]
fn no_interleaving_loses_a_wake_up_or_misorders_bytes_wrapping_reads() {
    transfer(4, 2, 3);
}
