//! dom0's half of the unikernel guest's platform self-test (`qemu-peer guest-selftest GUEST`):
//! the steps and byte patterns are those of the guest's `selftest` job
//! (guest/src/guest/selftest.rs), over the real gntdev, gntalloc, /dev/xen/evtchn and xenstored.
//! Also the stream of its vchan jobs (`qemu-peer pattern BYTES`).

use std::io::Write;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use evtchn::linux::Evtchn;
use evtchn::EventChannel;
use gnttab::linux::{Gntshr, Gnttab};
use gnttab::{SharedMemory, SharedPages, PAGE_SIZE};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use xen_types::{DomId, GrantRef, Port};
use xenstore::client::Client;
use xenstore::{Errno, TxId, XenStore, XenstoreError};

use crate::{ensure, Res};

/// How long each step waits for the guest.
const STEP_WAIT: Duration = Duration::from_secs(120);

fn pattern_a(i: usize) -> u8 {
    (i % 251) as u8
}
fn pattern_b(i: usize) -> u8 {
    (i * 3 % 251) as u8
}
fn pattern_c(i: usize) -> u8 {
    ((i + 100) % 251) as u8
}
fn pattern_d(i: usize) -> u8 {
    ((i * 5 + 1) % 251) as u8
}
fn pattern_e(i: usize) -> u8 {
    ((i * 11 + 7) % 251) as u8
}

fn check(
    mem: &impl SharedMemory,
    offset: usize,
    len: usize,
    pattern: fn(usize) -> u8,
    what: &str,
) -> Res {
    let mut bytes = vec![0u8; len];
    mem.region().copy_out(offset, &mut bytes);
    match (0..len).find(|&i| bytes[i] != pattern(i)) {
        None => Ok(()),
        Some(i) => Err(format!("{what}: byte {i} is {}, expected {}", bytes[i], pattern(i)).into()),
    }
}

fn fill(mem: &impl SharedMemory, offset: usize, len: usize, pattern: fn(usize) -> u8) {
    let bytes: Vec<u8> = (0..len).map(pattern).collect();
    mem.region().copy_in(offset, &bytes);
}

/// Wait (through the watch on the self-test directory) until `key` holds a value `accept` takes.
fn wait_for(xs: &Client, key: &str, accept: impl Fn(&str) -> bool) -> Res<String> {
    let deadline = Instant::now() + STEP_WAIT;
    loop {
        match xs.read(TxId::NONE, key) {
            Ok(value) => {
                let value = String::from_utf8(value)?;
                if accept(&value) {
                    return Ok(value);
                }
            }
            Err(XenstoreError::Errno(Errno::ENOENT)) => {}
            Err(e) => return Err(e.into()),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || xs.next_watch_event(Some(left))?.is_none() {
            return Err(format!("no acceptable {key} from the guest within {STEP_WAIT:?}").into());
        }
    }
}

/// Wait for events until every port of `ports` has delivered one (unmasking each).
fn wait_events(ev: &Evtchn, ports: &[Port]) -> Res {
    let deadline = Instant::now() + STEP_WAIT;
    let mut missing: Vec<Port> = ports.to_vec();
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(
                format!("no event from the guest on {missing:?} within {STEP_WAIT:?}").into(),
            );
        }
        let mut fds = [PollFd::new(ev.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        poll(&mut fds, PollTimeout::from(ms))?;
        while let Some(port) = ev.pending()? {
            missing.retain(|p| *p != port);
            ev.unmask(port)?;
        }
    }
    Ok(())
}

pub fn selftest(guest: DomId) -> Res {
    let xs = Client::open()?;
    let dir = format!("/local/domain/{guest}/data/selftest");
    let dom0_key = format!("{dir}/dom0");
    let step_key = format!("{dir}/guest-step");
    xs.watch(&dir, "selftest")?;

    // 3. Map the guest's grants, check them, answer with our own.
    let published = wait_for(&xs, &format!("{dir}/guest"), |_| true)?;
    let numbers: Vec<u32> = published
        .split(' ')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("the guest published {published:?}"))?;
    let [r0, r1, r2, guest_port] = numbers[..] else {
        return Err(format!("the guest published {published:?}").into());
    };
    eprintln!("guest-selftest: domain {guest} grants {r0} {r1} {r2}, port {guest_port}");
    let tab = Gnttab::open()?;
    let map = tab.map_grant_refs(guest, &[GrantRef(r0), GrantRef(r1)], true, None)?;
    check(&map, 0, PAGE_SIZE, pattern_a, "the guest's first page")?;
    check(
        &map,
        PAGE_SIZE,
        PAGE_SIZE,
        |_| 0,
        "the guest's second page (zeroed)",
    )?;
    fill(&map, PAGE_SIZE, PAGE_SIZE, pattern_c);
    ensure(
        tab.map_grant_refs(guest, &[GrantRef(r2)], true, None)
            .is_err(),
        "the guest's read-only grant mapped writable",
    )?;
    let read_only = tab.map_grant_refs(guest, &[GrantRef(r2)], false, None)?;
    check(
        &read_only,
        0,
        PAGE_SIZE,
        pattern_b,
        "the guest's read-only page",
    )?;
    let ev = Evtchn::open()?;
    let to_guest_port = ev.bind_interdomain(guest, Port(guest_port))?;
    // Xen marks a freshly bound port pending: drain that event, so that the wait below counts
    // only the guest's notify.
    let mut fds = [PollFd::new(ev.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::from(200u16))?;
    while let Some(port) = ev.pending()? {
        ev.unmask(port)?;
    }
    let shr = Gntshr::open()?;
    let mine = shr.share_pages(guest, 1, true, None)?;
    fill(&mine, 0, PAGE_SIZE / 2, pattern_d);
    let our_port = ev.bind_unbound_port(guest)?;
    xs.write(
        TxId::NONE,
        &dom0_key,
        format!("mapped {} {}", mine.refs()[0].0, our_port.0).as_bytes(),
    )?;
    ev.notify(to_guest_port)?;
    eprintln!(
        "guest-selftest: mapped, shared ref {:?}, offered port {our_port:?}",
        mine.refs()[0]
    );

    // 5. The guest mapped our page and notified both ports.
    wait_events(&ev, &[to_guest_port, our_port])?;
    wait_for(&xs, &step_key, |v| v == "mapped")?;
    check(
        &mine,
        PAGE_SIZE / 2,
        PAGE_SIZE / 2,
        pattern_e,
        "the guest's write into our page",
    )?;
    // The guest has dropped its grants by now, but we still map the pages: they must still be
    // the guest's first page as granted (a guest that reused them would have changed them).
    check(
        &map,
        0,
        PAGE_SIZE,
        pattern_a,
        "the guest's first page, still mapped",
    )?;
    drop(map);
    drop(read_only);
    xs.write(TxId::NONE, &dom0_key, b"unmapped")?;
    ev.notify(our_port)?;

    // 6. The guest ended its grants and closed its ports.
    wait_for(&xs, &step_key, |v| v == "done")?;
    drop(mine);
    ev.unbind(to_guest_port)?;
    ev.unbind(our_port)?;
    xs.unwatch(&dir, "selftest")?;
    eprintln!("guest-selftest: every step held");
    Ok(())
}

/// Write `bytes` bytes of the guest's stream (byte i = `i % 251`) to stdout.
pub fn pattern(bytes: u64) -> Res {
    let block: Vec<u8> = (0..64 * 1024 + 251).map(|i| (i % 251) as u8).collect();
    let mut out = std::io::stdout().lock();
    let mut done = 0u64;
    while done < bytes {
        let start = (done % 251) as usize;
        let n = (bytes - done).min(64 * 1024) as usize;
        out.write_all(&block[start..start + n])?;
        done += n as u64;
    }
    out.flush()?;
    Ok(())
}
