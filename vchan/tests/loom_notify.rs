//! A loom model of the channel core's data path: the core's own `Reader` and `Writer` (over the
//! ring's `Consumer`, `Producer` and `ControlPage`, built with `--cfg vchan_loom`, which puts
//! loom's atomics, fences and checked cells under the same code), driven the way every driver
//! drives them: a quick look, then the final look, then sleep on the event channel (a loom
//! `Notify`, which keeps a pending event as an event channel does) until the peer's event. A
//! writer and a reader over a ring smaller than the message; in the second model the writer
//! closes right after its last byte. Loom runs every interleaving the memory model allows; a
//! lost wake-up is a deadlock it reports, bytes read before they were published are a data race
//! on the ring's cells it reports, and bytes lost, out of order or an end before the last byte
//! fail the assertions.
//!
//! ```text
//! RUSTFLAGS="--cfg vchan_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p vchan --release --test loom_notify
//! ```
//!
//! It explores every interleaving with up to three preemptions (seconds); with
//! `LOOM_MAX_PREEMPTIONS=N` it takes N.
#![cfg(vchan_loom)]

use loom::sync::{Arc, Notify};
use loom::thread;
use vchan::abi;
use vchan::channel::{Link, Look, Reader, Step, Writer};
use vchan::layout::Side;
use vchan::ring::loom_page::{Cells, Page};
use vchan::ring::{Consumer, ControlPage, Producer, RingGeometry, Role};
use xen_types::memory::{AsSharedRegion, SharedRegion};
use xen_types::{DomId, Port};

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
fn transfer(total: u8, ring: usize, chunk: usize, close: bool) {
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
        // The client writes the left ring, the server reads it.
        let mut writer = Writer::new(Producer::new(
            page.clone(),
            memory(true),
            geometry,
            Role::Client,
            0,
        ));
        let writer_link = Link::new(page.clone(), Role::Client, Port(1), DomId(0));
        let mut reader = Reader::new(Consumer::new(
            page.clone(),
            memory(true),
            geometry,
            Role::Server,
            0,
        ));
        let reader_link = Link::new(page, Role::Server, Port(2), DomId(1));
        let data: Vec<u8> = (1..=total).collect();

        let writer_shared = Arc::clone(&shared);
        let sent = data.clone();
        let writing = thread::spawn(move || {
            let shared = writer_shared;
            let mut done = 0;
            let mut look = Look::Quick;
            while done < sent.len() {
                match writer.write(&writer_link, &sent[done..], look) {
                    Ok(Step::Done(n, notify)) => {
                        if notify.is_owed() {
                            shared.to_reader.notify();
                        }
                        done += n;
                        look = Look::Quick;
                    }
                    Ok(Step::Blocked) if look == Look::Quick => look = Look::Final,
                    Ok(Step::Blocked) => {
                        shared.to_writer.wait();
                        look = Look::Quick;
                    }
                    Err(e) => panic!("an honest ring: {e}"),
                }
            }
            if close {
                // A close: our live byte 0, then the event (Channel::close's order).
                writer_link.page().set_live(abi::CLI_LIVE, abi::LIVE_EXITED);
                shared.to_reader.notify();
            }
        });

        let mut got = Vec::new();
        let mut buf = vec![0u8; chunk];
        let mut look = Look::Quick;
        loop {
            if !close && got.len() == data.len() {
                break;
            }
            match reader.read(&reader_link, &mut buf, look) {
                Ok(Step::Done(0, _)) => break,
                Ok(Step::Done(n, notify)) => {
                    if notify.is_owed() {
                        shared.to_writer.notify();
                    }
                    got.extend_from_slice(&buf[..n]);
                    look = Look::Quick;
                }
                Ok(Step::Blocked) if look == Look::Quick => look = Look::Final,
                Ok(Step::Blocked) => {
                    shared.to_reader.wait();
                    look = Look::Quick;
                }
                Err(e) => panic!("an honest ring: {e}"),
            }
        }
        writing.join().expect("the writer");
        assert_eq!(got, data, "bytes lost, duplicated or out of order");
    });
}

/// Three bytes through a two-byte ring, read one at a time: the writer must sleep on a full
/// ring and the reader on an empty one, both more than once.
#[test]
fn no_interleaving_loses_a_wake_up_or_misorders_bytes_small_reads() {
    transfer(3, 2, 1, false);
}

/// Four bytes through a two-byte ring, read in larger pieces (the ring wraps mid-read).
#[test]
fn no_interleaving_loses_a_wake_up_or_misorders_bytes_wrapping_reads() {
    transfer(4, 2, 3, false);
}

/// Three bytes through a two-byte ring, then a close at once: the reader gets every byte
/// before the end of the stream (the close race: it must look at the ring again after seeing
/// the close), whatever the interleaving.
#[test]
fn no_interleaving_ends_the_stream_before_the_last_byte_of_a_close() {
    transfer(3, 2, 1, true);
}
