//! The `/dev/xen` backends on their own, in dom0 against itself: event channels (bind, notify,
//! pending, unmask, unbind), grant sharing and mapping (many refs into one region, in any order,
//! read-only grants, bogus refs) and both kinds of unmap notification.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use evtchn::linux::Evtchn;
use evtchn::EventChannel;
use gnttab::linux::{Gntshr, Gnttab};
use gnttab::{SharedMemory, SharedPages, UnmapNotify, PAGE_SIZE};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use xen_types::{DomId, GrantRef, Port};

use crate::{ensure, Res};

const SELF: DomId = DomId::DOM0;

/// The byte at `offset` of a live region (an atomic load through its bounds-checked view).
fn get(mem: &impl SharedMemory, offset: usize) -> u8 {
    mem.region().load_u8(offset, Ordering::SeqCst)
}

/// Store the byte at `offset` of a live region (an atomic store through its view).
fn set(mem: &impl SharedMemory, offset: usize, value: u8) {
    mem.region().store_u8(offset, value, Ordering::SeqCst)
}

/// Wait up to a second for `handle`'s fd to become readable, then take one event.
fn next_event(handle: &Evtchn) -> Res<Option<Port>> {
    let mut fds = [PollFd::new(handle.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::from(1000u16))?;
    Ok(handle.pending()?)
}

pub fn check() -> Res {
    // Event channels: a port offered to ourselves, bound from a second handle.
    let a = Evtchn::open()?;
    let b = Evtchn::open()?;
    let pa = a.bind_unbound_port(SELF)?;
    let pb = b.bind_interdomain(SELF, pa)?;
    a.unmask(pa)?;
    b.unmask(pb)?;
    ensure(a.pending()?.is_none(), "an event before any notify")?;
    b.notify(pb)?;
    ensure(next_event(&a)? == Some(pa), "notify reaches the other end")?;
    ensure(a.pending()?.is_none(), "one event per notify while masked")?;
    b.notify(pb)?;
    std::thread::sleep(Duration::from_millis(100));
    ensure(a.pending()?.is_none(), "a masked port delivers nothing")?;
    a.unmask(pa)?;
    ensure(
        next_event(&a)? == Some(pa),
        "unmask delivers the event that waited",
    )?;
    a.unmask(pa)?;
    a.notify(pa)?;
    ensure(next_event(&b)? == Some(pb), "the other direction")?;
    b.unmask(pb)?;
    eprintln!("devices: evtchn ports {pa:?} <-> {pb:?} ok");

    // Grant sharing and mapping.
    let shr = Gntshr::open()?;
    let tab = Gnttab::open()?;
    match tab.set_max_grants(64) {
        Ok(()) => eprintln!("devices: SET_MAX_GRANTS accepted"),
        Err(e) => eprintln!("devices: SET_MAX_GRANTS refused by this kernel: {e}"),
    }
    let pages = shr.share_pages(SELF, 3, true, None)?;
    let refs = pages.refs().to_vec();
    ensure(
        refs.len() == 3 && refs.iter().all(|r| !r.is_reserved()),
        "three real refs",
    )?;
    for page in 0..3 {
        set(&pages, page * PAGE_SIZE + 1, 0x10 + page as u8);
    }
    let reversed: Vec<GrantRef> = refs.iter().rev().copied().collect();
    let map = tab.map_grant_refs(SELF, &reversed, true, None)?;
    ensure(map.len() == 3 * PAGE_SIZE, "mapping length")?;
    for page in 0..3 {
        ensure(
            get(&map, page * PAGE_SIZE + 1) == 0x12 - page as u8,
            "pages in the order asked",
        )?;
    }
    set(&map, 2 * PAGE_SIZE + 9, 0x77);
    ensure(
        get(&pages, 9) == 0x77,
        "writes through the mapping reach the sharer",
    )?;
    drop(map);
    eprintln!("devices: 3 refs mapped in reverse order into one region ok");

    let ro = shr.share_pages(SELF, 1, false, None)?;
    set(&ro, 0, 0x42);
    ensure(
        tab.map_grant_refs(SELF, ro.refs(), true, None).is_err(),
        "a read-only grant mapped writable",
    )?;
    let ro_map = tab.map_grant_refs(SELF, ro.refs(), false, None)?;
    ensure(get(&ro_map, 0) == 0x42, "read-only mapping reads")?;
    drop(ro_map);
    let bogus = tab.map_grant_refs(SELF, &[GrantRef(0x7ffff)], false, None);
    ensure(bogus.is_err(), "a bogus grant ref mapped")?;
    eprintln!(
        "devices: read-only grant and bogus ref refused: {}",
        bogus.err().map_or(String::new(), |e| e.to_string())
    );

    // gntdev's unmap notification: clear a byte and send an event when the mapping goes.
    let notify = UnmapNotify {
        clear_byte: Some(5),
        event: Some(pb),
    };
    let map = tab.map_grant_refs(SELF, &refs[..1], true, Some(notify))?;
    set(&map, 5, 1);
    drop(map);
    ensure(get(&pages, 5) == 0, "gntdev cleared the byte on unmap")?;
    ensure(
        next_event(&a)? == Some(pa),
        "gntdev sent the event on unmap",
    )?;
    a.unmask(pa)?;

    // gntalloc's: the same when the sharer lets go, even after its handle was dropped.
    let notify = UnmapNotify {
        clear_byte: Some(PAGE_SIZE + 7),
        event: Some(pa),
    };
    let shared = shr.share_pages(SELF, 2, true, Some(notify))?;
    let watcher = tab.map_grant_refs(SELF, shared.refs(), false, None)?;
    set(&shared, PAGE_SIZE + 7, 1);
    ensure(
        get(&watcher, PAGE_SIZE + 7) == 1,
        "the watcher sees the live byte",
    )?;
    drop(shr);
    drop(shared);
    ensure(
        get(&watcher, PAGE_SIZE + 7) == 0,
        "gntalloc cleared the byte on release",
    )?;
    ensure(
        next_event(&b)? == Some(pb),
        "gntalloc sent the event on release",
    )?;
    drop(watcher);
    drop(pages);
    drop(ro);

    a.unbind(pa)?;
    ensure(a.unbind(pa).is_err(), "a second unbind of the same port")?;
    eprintln!("devices: unmap notifications and unbind ok");
    Ok(())
}
