//! A stand-in `libxengnttab.so.1` for the xensim simulated host.
//!
//! Exports the C API of `<xengnttab.h>` (both the mapping side, `xengnttab_*`, and the sharing
//! side, `xengntshr_*`) under the symbol versions of Xen 4.17's library, so unmodified C programs
//! run against the simulated host when this library is first on their library path (`xensim run`
//! arranges it). Handles are [`xensim::XensimGnt`]s configured from `XENSIM_DIR` and
//! `XENSIM_DOMID`.
//!
//! As with the kernel devices, closing a handle ends its grants and mapping records (the host
//! carries out their unmap notifications) but leaves address ranges mapped: callers such as
//! libxenvchan release ring pages with plain `munmap`, so the range may already be gone or reused.
//! Errors are reported as in the C library: `-1` or `NULL` with `errno` set.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{c_int, c_uint, c_void};
use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

use gnttab::{GrantMap, GrantShare, SharedMemory, SharedPages, UnmapNotify};
use nix::errno::Errno;
use nix::sys::mman::ProtFlags;
use xen_types::{DomId, GrantRef, Port, PAGE_SIZE};
use xensim::client::errno_of;
use xensim::{XensimGnt, XensimMapping, XensimShared};

/// The opaque `xengnttab_handle` (mapping side).
pub struct MapHandle {
    gnt: XensimGnt,
    regions: Mutex<HashMap<usize, XensimMapping>>,
}

/// The opaque `xengntshr_handle` (sharing side).
pub struct ShareHandle {
    gnt: XensimGnt,
    regions: Mutex<HashMap<usize, XensimShared>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn set_errno(code: Errno) {
    code.set();
}

fn fail_int(code: Errno) -> c_int {
    set_errno(code);
    -1
}

fn fail_ptr(code: Errno) -> *mut c_void {
    set_errno(code);
    std::ptr::null_mut()
}

fn domid(raw: u32) -> Option<DomId> {
    u16::try_from(raw).ok().map(DomId)
}

/// The C library's notify arguments: a byte offset below a page clears that byte, a port other
/// than `-1` gets an event.
fn notify(offset: u32, port: u32) -> Option<UnmapNotify> {
    let notify = UnmapNotify {
        clear_byte: (offset < PAGE_SIZE as u32).then_some(offset as usize),
        event: (port != u32::MAX).then_some(Port(port)),
    };
    (notify != UnmapNotify::default()).then_some(notify)
}

fn writable(prot: c_int) -> bool {
    prot & ProtFlags::PROT_WRITE.bits() != 0
}

// ----- mapping side -----

/// Open a grant-mapping handle as the domain named by `XENSIM_DOMID`.
#[no_mangle]
pub extern "C" fn xengnttab_open(_logger: *mut c_void, _open_flags: c_uint) -> *mut MapHandle {
    match XensimGnt::mapper_from_env() {
        Ok(gnt) => Box::into_raw(Box::new(MapHandle {
            gnt,
            regions: Mutex::new(HashMap::new()),
        })),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "xengnttab (xensim): cannot open a grant-mapping handle: {e}"
            );
            set_errno(errno_of(&e));
            std::ptr::null_mut()
        }
    }
}

/// Close a mapping handle. Mappings stay in place (see the crate docs); their records end.
///
/// # Safety
///
/// `xgt` is null or a pointer returned by [`xengnttab_open`], not used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn xengnttab_close(xgt: *mut MapHandle) -> c_int {
    if xgt.is_null() {
        return 0;
    }
    // SAFETY: per the contract, `xgt` came from Box::into_raw in `xengnttab_open` and is given up.
    let handle = unsafe { Box::from_raw(xgt) };
    for (_, mapping) in lock(&handle.regions).drain() {
        mapping.release_keep_mapping();
    }
    0
}

/// Borrow a handle behind a C pointer.
///
/// # Safety
///
/// `ptr` is null or a live handle of type `T` created by this library.
unsafe fn borrow<'a, T>(ptr: *mut T) -> Option<&'a T> {
    // SAFETY: per the contract, a non-null pointer is a live handle.
    unsafe { ptr.as_ref() }
}

/// The handle's fd (its connection to the host).
///
/// # Safety
///
/// `xgt` is null or a live handle from [`xengnttab_open`].
#[no_mangle]
pub unsafe extern "C" fn xengnttab_fd(xgt: *mut MapHandle) -> c_int {
    // SAFETY: forwarded contract.
    match unsafe { borrow(xgt) } {
        Some(h) => h.gnt.as_fd().as_raw_fd(),
        None => fail_int(Errno::EINVAL),
    }
}

/// Accepted and ignored: the simulated host limits grants per domain, not per handle.
#[no_mangle]
pub extern "C" fn xengnttab_set_max_grants(_xgt: *mut MapHandle, _nr_grants: u32) -> c_int {
    0
}

fn map_refs(
    handle: &MapHandle,
    domid_raw: u32,
    refs: &[u32],
    prot: c_int,
    notify: Option<UnmapNotify>,
) -> *mut c_void {
    let Some(domid) = domid(domid_raw) else {
        return fail_ptr(Errno::EINVAL);
    };
    let refs: Vec<GrantRef> = refs.iter().map(|&r| GrantRef(r)).collect();
    match handle
        .gnt
        .map_grant_refs(domid, &refs, writable(prot), notify)
    {
        Ok(mapping) => {
            let addr = mapping.as_ptr().as_ptr();
            lock(&handle.regions).insert(addr as usize, mapping);
            addr.cast()
        }
        Err(e) => fail_ptr(errno_of(&e)),
    }
}

/// Read `count` grant refs from C memory.
///
/// # Safety
///
/// `refs` is null or valid for reads of `count` `u32`s.
unsafe fn read_refs(refs: *const u32, count: u32) -> Option<Vec<u32>> {
    if refs.is_null() || count == 0 || count as usize > 1 << 20 {
        return None;
    }
    // SAFETY: per the contract, `refs` points at `count` readable u32s; they are copied at once.
    Some(unsafe { std::slice::from_raw_parts(refs, count as usize) }.to_vec())
}

/// Map one grant of `domid`.
///
/// # Safety
///
/// `xgt` is null or a live handle from [`xengnttab_open`].
#[no_mangle]
pub unsafe extern "C" fn xengnttab_map_grant_ref(
    xgt: *mut MapHandle,
    domid: u32,
    gref: u32,
    prot: c_int,
) -> *mut c_void {
    // SAFETY: forwarded contract.
    match unsafe { borrow(xgt) } {
        Some(h) => map_refs(h, domid, &[gref], prot, None),
        None => fail_ptr(Errno::EINVAL),
    }
}

/// Map `count` grants into one contiguous range. The simulated host maps from one domain per
/// call: differing `domids` fail with `EINVAL`.
///
/// # Safety
///
/// `xgt` is null or a live handle from [`xengnttab_open`]; `domids` and `refs` are valid for
/// reads of `count` entries.
#[no_mangle]
pub unsafe extern "C" fn xengnttab_map_grant_refs(
    xgt: *mut MapHandle,
    count: u32,
    domids: *const u32,
    refs: *const u32,
    prot: c_int,
) -> *mut c_void {
    // SAFETY: forwarded contract.
    let (Some(h), Some(domids), Some(refs)) = (
        unsafe { borrow(xgt) },
        unsafe { read_refs(domids, count) },
        unsafe { read_refs(refs, count) },
    ) else {
        return fail_ptr(Errno::EINVAL);
    };
    if domids.iter().any(|d| *d != domids[0]) {
        return fail_ptr(Errno::EINVAL);
    }
    map_refs(h, domids[0], &refs, prot, None)
}

/// Map `count` grants of `domid` into one contiguous range.
///
/// # Safety
///
/// `xgt` is null or a live handle from [`xengnttab_open`]; `refs` is valid for reads of `count`
/// entries.
#[no_mangle]
pub unsafe extern "C" fn xengnttab_map_domain_grant_refs(
    xgt: *mut MapHandle,
    count: u32,
    domid: u32,
    refs: *const u32,
    prot: c_int,
) -> *mut c_void {
    // SAFETY: forwarded contract.
    let (Some(h), Some(refs)) = (unsafe { borrow(xgt) }, unsafe { read_refs(refs, count) }) else {
        return fail_ptr(Errno::EINVAL);
    };
    map_refs(h, domid, &refs, prot, None)
}

/// Map one grant with an unmap notification (clear byte `notify_offset` if below a page, send
/// on `notify_port` unless it is `-1`), carried out even if this process dies.
///
/// # Safety
///
/// `xgt` is null or a live handle from [`xengnttab_open`].
#[no_mangle]
pub unsafe extern "C" fn xengnttab_map_grant_ref_notify(
    xgt: *mut MapHandle,
    domid: u32,
    gref: u32,
    prot: c_int,
    notify_offset: u32,
    notify_port: u32,
) -> *mut c_void {
    // SAFETY: forwarded contract.
    match unsafe { borrow(xgt) } {
        Some(h) => map_refs(h, domid, &[gref], prot, notify(notify_offset, notify_port)),
        None => fail_ptr(Errno::EINVAL),
    }
}

/// Unmap a range returned by one of the map calls (`count` pages); its notification fires.
///
/// # Safety
///
/// `xgt` is null or a live handle from [`xengnttab_open`].
#[no_mangle]
pub unsafe extern "C" fn xengnttab_unmap(
    xgt: *mut MapHandle,
    start_address: *mut c_void,
    count: u32,
) -> c_int {
    // SAFETY: forwarded contract.
    let Some(h) = (unsafe { borrow(xgt) }) else {
        return fail_int(Errno::EINVAL);
    };
    let mut regions = lock(&h.regions);
    match regions.get(&(start_address as usize)) {
        Some(m) if m.len() == count as usize * PAGE_SIZE => {
            let mapping = regions.remove(&(start_address as usize));
            drop(regions);
            drop(mapping);
            0
        }
        _ => fail_int(Errno::EINVAL),
    }
}

/// Grant copy is not simulated: always `-1` with `ENOSYS`.
#[no_mangle]
pub extern "C" fn xengnttab_grant_copy(
    _xgt: *mut MapHandle,
    _count: u32,
    _segs: *mut c_void,
) -> c_int {
    fail_int(Errno::ENOSYS)
}

/// dma-buf export is not simulated: always `-1` with `EOPNOTSUPP`.
#[no_mangle]
pub extern "C" fn xengnttab_dmabuf_exp_from_refs(
    _xgt: *mut MapHandle,
    _domid: u32,
    _flags: u32,
    _count: u32,
    _refs: *const u32,
    _fd: *mut u32,
) -> c_int {
    fail_int(Errno::EOPNOTSUPP)
}

/// dma-buf export is not simulated: always `-1` with `EOPNOTSUPP`.
#[no_mangle]
pub extern "C" fn xengnttab_dmabuf_exp_wait_released(
    _xgt: *mut MapHandle,
    _fd: u32,
    _wait_to_ms: u32,
) -> c_int {
    fail_int(Errno::EOPNOTSUPP)
}

/// dma-buf import is not simulated: always `-1` with `EOPNOTSUPP`.
#[no_mangle]
pub extern "C" fn xengnttab_dmabuf_imp_to_refs(
    _xgt: *mut MapHandle,
    _domid: u32,
    _fd: u32,
    _count: u32,
    _refs: *mut u32,
) -> c_int {
    fail_int(Errno::EOPNOTSUPP)
}

/// dma-buf import is not simulated: always `-1` with `EOPNOTSUPP`.
#[no_mangle]
pub extern "C" fn xengnttab_dmabuf_imp_release(_xgt: *mut MapHandle, _fd: u32) -> c_int {
    fail_int(Errno::EOPNOTSUPP)
}

// ----- sharing side -----

/// Open a grant-sharing handle as the domain named by `XENSIM_DOMID`.
#[no_mangle]
pub extern "C" fn xengntshr_open(_logger: *mut c_void, _open_flags: c_uint) -> *mut ShareHandle {
    match XensimGnt::sharer_from_env() {
        Ok(gnt) => Box::into_raw(Box::new(ShareHandle {
            gnt,
            regions: Mutex::new(HashMap::new()),
        })),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "xengntshr (xensim): cannot open a grant-sharing handle: {e}"
            );
            set_errno(errno_of(&e));
            std::ptr::null_mut()
        }
    }
}

/// Close a sharing handle: every grant it made ends (their notifications fire); the memory stays
/// mapped for whoever still uses it (see the crate docs).
///
/// # Safety
///
/// `xgs` is null or a pointer returned by [`xengntshr_open`], not used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn xengntshr_close(xgs: *mut ShareHandle) -> c_int {
    if xgs.is_null() {
        return 0;
    }
    // SAFETY: per the contract, `xgs` came from Box::into_raw in `xengntshr_open` and is given up.
    let handle = unsafe { Box::from_raw(xgs) };
    for (_, shared) in lock(&handle.regions).drain() {
        shared.release_keep_mapping();
    }
    0
}

/// The handle's fd (its connection to the host).
///
/// # Safety
///
/// `xgs` is null or a live handle from [`xengntshr_open`].
#[no_mangle]
pub unsafe extern "C" fn xengntshr_fd(xgs: *mut ShareHandle) -> c_int {
    // SAFETY: forwarded contract.
    match unsafe { borrow(xgs) } {
        Some(h) => h.gnt.as_fd().as_raw_fd(),
        None => fail_int(Errno::EINVAL),
    }
}

fn share(
    handle: &ShareHandle,
    domid_raw: u32,
    count: usize,
    refs_out: *mut u32,
    writable: bool,
    notify: Option<UnmapNotify>,
) -> *mut c_void {
    let Some(domid) = domid(domid_raw) else {
        return fail_ptr(Errno::EINVAL);
    };
    if refs_out.is_null() {
        return fail_ptr(Errno::EINVAL);
    }
    match handle.gnt.share_pages(domid, count, writable, notify) {
        Ok(shared) => {
            for (i, r) in shared.refs().iter().enumerate() {
                // SAFETY: the caller provides room for `count` refs (the C API's contract), and
                // `refs()` has exactly `count` entries.
                unsafe { refs_out.add(i).write(r.0) };
            }
            let addr = shared.as_ptr().as_ptr();
            lock(&handle.regions).insert(addr as usize, shared);
            addr.cast()
        }
        Err(e) => fail_ptr(errno_of(&e)),
    }
}

/// Share `count` zeroed pages with `domid`; their grant refs are written to `refs`.
///
/// # Safety
///
/// `xgs` is null or a live handle from [`xengntshr_open`]; `refs` is valid for writes of `count`
/// entries.
#[no_mangle]
pub unsafe extern "C" fn xengntshr_share_pages(
    xgs: *mut ShareHandle,
    domid: u32,
    count: c_int,
    refs: *mut u32,
    writable: c_int,
) -> *mut c_void {
    // SAFETY: forwarded contract.
    let Some(h) = (unsafe { borrow(xgs) }) else {
        return fail_ptr(Errno::EINVAL);
    };
    let Ok(count) = usize::try_from(count) else {
        return fail_ptr(Errno::EINVAL);
    };
    share(h, domid, count, refs, writable != 0, None)
}

/// Share one zeroed page with `domid`, with an unmap notification (clear byte `notify_offset` if
/// below a page, send on `notify_port` unless it is `-1`), carried out even if this process dies.
///
/// # Safety
///
/// `xgs` is null or a live handle from [`xengntshr_open`]; `gref` is valid for one write.
#[no_mangle]
pub unsafe extern "C" fn xengntshr_share_page_notify(
    xgs: *mut ShareHandle,
    domid: u32,
    gref: *mut u32,
    writable: c_int,
    notify_offset: u32,
    notify_port: u32,
) -> *mut c_void {
    // SAFETY: forwarded contract.
    let Some(h) = (unsafe { borrow(xgs) }) else {
        return fail_ptr(Errno::EINVAL);
    };
    share(
        h,
        domid,
        1,
        gref,
        writable != 0,
        notify(notify_offset, notify_port),
    )
}

/// Unmap and stop sharing a range returned by a share call (`count` pages).
///
/// # Safety
///
/// `xgs` is null or a live handle from [`xengntshr_open`].
#[no_mangle]
pub unsafe extern "C" fn xengntshr_unshare(
    xgs: *mut ShareHandle,
    start_address: *mut c_void,
    count: u32,
) -> c_int {
    // SAFETY: forwarded contract.
    let Some(h) = (unsafe { borrow(xgs) }) else {
        return fail_int(Errno::EINVAL);
    };
    let mut regions = lock(&h.regions);
    match regions.get(&(start_address as usize)) {
        Some(s) if s.len() == count as usize * PAGE_SIZE => {
            let shared = regions.remove(&(start_address as usize));
            drop(regions);
            drop(shared);
            0
        }
        _ => fail_int(Errno::EINVAL),
    }
}
