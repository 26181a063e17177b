//! `struct libxenvchan` as Xen 4.17's `<libxenvchan.h>` lays it out on x86-64, checked by the
//! compiler below and, against the header itself, by `tests/tests/libxenvchan_abi.rs` (which
//! includes this file and compares it with what gcc says of Debian's header).
//!
//! Programs read and write these fields directly (libxenvchan/ABI.md §5): `blocking` and
//! `server_persist` between calls, `is_server`, `event` and `event_port` to notify through
//! libxenevtchn, `ring` to reach the shared page. No field here is ever trusted: the library
//! keeps its own copy of everything it needs, and reads only the flag byte from this struct,
//! afresh on every call.
//!
//! Self-contained (core only) so a test can include it with `#[path]`.

use core::ffi::{c_char, c_int, c_void};
use core::mem::{align_of, offset_of, size_of};

/// `struct libxenvchan_ring`: one ring as the C library describes it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RingDescriptor {
    /// `struct ring_shared *shr`: the ring's two indices in the control page (`left` at byte 0,
    /// `right` at byte 8).
    pub shr: *mut c_void,
    /// `void *buffer`: the ring's bytes (in the control page at 1024 or 2048, or its own pages).
    pub buffer: *mut c_void,
    /// `int order`: log2 of the ring's size.
    pub order: c_int,
}

/// `struct libxenvchan`.
#[repr(C)]
#[derive(Debug)]
pub struct Libxenvchan {
    /// `union { xengntshr_handle *gntshr; xengnttab_handle *gnttab; }`: the server's sharing
    /// handle or the client's mapping handle.
    pub gnt: *mut c_void,
    /// `struct vchan_interface *ring`: the shared control page, as mapped in this process.
    pub ring: *mut c_void,
    /// `xenevtchn_handle *event`: a handle of the process's own libxenevtchn.
    pub event: *mut c_void,
    /// `uint32_t event_port`: our port, bound on `event`.
    pub event_port: u32,
    /// `int is_server:1; int server_persist:1; int blocking:1;`: bits 0, 1 and 2 of the first
    /// byte (see [`FLAG_IS_SERVER`] and the others).
    pub flags: u32,
    /// `struct libxenvchan_ring read`: the ring this end reads.
    pub read: RingDescriptor,
    /// `struct libxenvchan_ring write`: the ring this end writes.
    pub write: RingDescriptor,
    /// `char *xs_path`: the server's xenstore path (malloc'd); NULL on a client.
    pub xs_path: *mut c_char,
}

/// Where the flag bits are.
pub const FLAGS_OFFSET: usize = offset_of!(Libxenvchan, flags);
/// `is_server`: set on a server.
pub const FLAG_IS_SERVER: u8 = 0x01;
/// `server_persist`: a server that stays open when its client leaves (written by programs).
pub const FLAG_SERVER_PERSIST: u8 = 0x02;
/// `blocking`: calls wait instead of returning 0 (written by programs, read on every call).
pub const FLAG_BLOCKING: u8 = 0x04;

/// Offset of `left` (`struct ring_shared`, the client-to-server ring's indices) in the control
/// page, for `RingDescriptor::shr`.
pub const LEFT_INDICES: usize = 0;
/// Offset of `right` (the server-to-client ring's indices).
pub const RIGHT_INDICES: usize = 8;

const _: () = assert!(size_of::<RingDescriptor>() == 24);
const _: () = assert!(offset_of!(RingDescriptor, shr) == 0);
const _: () = assert!(offset_of!(RingDescriptor, buffer) == 8);
const _: () = assert!(offset_of!(RingDescriptor, order) == 16);
const _: () = assert!(size_of::<Libxenvchan>() == 88);
const _: () = assert!(align_of::<Libxenvchan>() == 8);
const _: () = assert!(offset_of!(Libxenvchan, gnt) == 0);
const _: () = assert!(offset_of!(Libxenvchan, ring) == 8);
const _: () = assert!(offset_of!(Libxenvchan, event) == 16);
const _: () = assert!(offset_of!(Libxenvchan, event_port) == 24);
const _: () = assert!(offset_of!(Libxenvchan, flags) == 28);
const _: () = assert!(offset_of!(Libxenvchan, read) == 32);
const _: () = assert!(offset_of!(Libxenvchan, write) == 56);
const _: () = assert!(offset_of!(Libxenvchan, xs_path) == 80);
