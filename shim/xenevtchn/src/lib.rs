//! A stand-in `libxenevtchn.so.1` for the xensim simulated host.
//!
//! Exports the C API of `<xenevtchn.h>` under the symbol versions of Xen 4.17's library, so
//! unmodified C programs (libxenvchan, vchan-socket-proxy) run against the simulated host when
//! this library is first on their library path (`xensim run` arranges it). Each handle is an
//! [`xensim::XensimEvtchn`], configured from `XENSIM_DIR` and `XENSIM_DOMID`.
//!
//! The handle's fd behaves like `/dev/xen/evtchn`: readable while an event is pending;
//! [`xenevtchn_pending`] reads it (blocking unless the caller made the fd non-blocking) and the
//! port stays masked until [`xenevtchn_unmask`]. Errors are reported as in the C library: `-1` or
//! `NULL` with `errno` set.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_uint, c_void};
use std::io;
use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd};

use evtchn::EventChannel;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use xen_types::{DomId, Port};
use xensim::client::errno_of;
use xensim::XensimEvtchn;

/// `XENEVTCHN_NO_CLOEXEC`: keep the handle's fd open across `exec`.
const NO_CLOEXEC: c_uint = 1;

/// The opaque `xenevtchn_handle`.
pub struct Handle {
    events: XensimEvtchn,
}

fn set_errno(code: Errno) {
    code.set();
}

fn fail(e: io::Error) -> c_int {
    set_errno(errno_of(&e));
    -1
}

fn domid(raw: u32) -> Result<DomId, c_int> {
    u16::try_from(raw).map(DomId).map_err(|_| {
        set_errno(Errno::EINVAL);
        -1
    })
}

/// Borrow the handle behind a C pointer, or fail with `EINVAL`.
///
/// # Safety
///
/// `xce` is null or a pointer returned by [`xenevtchn_open`] and not yet closed.
unsafe fn handle<'a>(xce: *mut Handle) -> Result<&'a Handle, c_int> {
    // SAFETY: per the contract, a non-null pointer is a live handle from `xenevtchn_open`.
    unsafe { xce.as_ref() }.ok_or_else(|| {
        set_errno(Errno::EINVAL);
        -1
    })
}

/// Open an event-channel handle as the domain named by `XENSIM_DOMID`. Returns `NULL` with
/// `errno` set on failure (and says why on stderr, as the C library's default logger does).
#[no_mangle]
pub extern "C" fn xenevtchn_open(_logger: *mut c_void, open_flags: c_uint) -> *mut Handle {
    match XensimEvtchn::from_env() {
        Ok(events) => {
            if open_flags & NO_CLOEXEC != 0 {
                let fd = events.as_fd();
                // The flag is a request the C library honours on a best-effort basis too.
                if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFD) {
                    let flags = FdFlag::from_bits_retain(flags) - FdFlag::FD_CLOEXEC;
                    let _ = fcntl(fd, FcntlArg::F_SETFD(flags));
                }
            }
            Box::into_raw(Box::new(Handle { events }))
        }
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "xenevtchn (xensim): cannot open an event-channel handle: {e}"
            );
            set_errno(errno_of(&e));
            std::ptr::null_mut()
        }
    }
}

/// Adopting an existing `/dev/xen/evtchn` descriptor has no meaning on the simulated host:
/// always `NULL` with `EOPNOTSUPP`.
#[no_mangle]
pub extern "C" fn xenevtchn_fdopen(
    _logger: *mut c_void,
    _fd: c_int,
    _open_flags: c_uint,
) -> *mut Handle {
    set_errno(Errno::EOPNOTSUPP);
    std::ptr::null_mut()
}

/// Close a handle: its ports are unbound (by the host, which also keeps any port an unmap
/// notification still needs). `NULL` is accepted.
///
/// # Safety
///
/// `xce` is null or a pointer returned by [`xenevtchn_open`], not used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn xenevtchn_close(xce: *mut Handle) -> c_int {
    if !xce.is_null() {
        // SAFETY: per the contract, `xce` came from Box::into_raw in `xenevtchn_open` and is
        // given up by the caller.
        drop(unsafe { Box::from_raw(xce) });
    }
    0
}

/// The handle's pollable fd: readable while an event is pending.
///
/// # Safety
///
/// `xce` is null or a live handle from [`xenevtchn_open`].
#[no_mangle]
pub unsafe extern "C" fn xenevtchn_fd(xce: *mut Handle) -> c_int {
    // SAFETY: forwarded contract.
    match unsafe { handle(xce) } {
        Ok(h) => h.events.as_fd().as_raw_fd(),
        Err(rc) => rc,
    }
}

/// Send an event on `port`.
///
/// # Safety
///
/// `xce` is null or a live handle from [`xenevtchn_open`].
#[no_mangle]
pub unsafe extern "C" fn xenevtchn_notify(xce: *mut Handle, port: u32) -> c_int {
    // SAFETY: forwarded contract.
    let h = match unsafe { handle(xce) } {
        Ok(h) => h,
        Err(rc) => return rc,
    };
    match h.events.notify(Port(port)) {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

/// Allocate a port that `domid` may bind to.
///
/// # Safety
///
/// `xce` is null or a live handle from [`xenevtchn_open`].
#[no_mangle]
pub unsafe extern "C" fn xenevtchn_bind_unbound_port(xce: *mut Handle, domid_raw: u32) -> c_int {
    // SAFETY: forwarded contract.
    let h = match unsafe { handle(xce) } {
        Ok(h) => h,
        Err(rc) => return rc,
    };
    let remote = match domid(domid_raw) {
        Ok(d) => d,
        Err(rc) => return rc,
    };
    match h.events.bind_unbound_port(remote) {
        Ok(port) => port.0 as c_int,
        Err(e) => fail(e),
    }
}

/// Bind a local port to `remote_port` of `domid`.
///
/// # Safety
///
/// `xce` is null or a live handle from [`xenevtchn_open`].
#[no_mangle]
pub unsafe extern "C" fn xenevtchn_bind_interdomain(
    xce: *mut Handle,
    domid_raw: u32,
    remote_port: u32,
) -> c_int {
    // SAFETY: forwarded contract.
    let h = match unsafe { handle(xce) } {
        Ok(h) => h,
        Err(rc) => return rc,
    };
    let remote = match domid(domid_raw) {
        Ok(d) => d,
        Err(rc) => return rc,
    };
    match h.events.bind_interdomain(remote, Port(remote_port)) {
        Ok(port) => port.0 as c_int,
        Err(e) => fail(e),
    }
}

/// Virtual IRQs do not exist on the simulated host: always `-1` with `ENOSYS`.
#[no_mangle]
pub extern "C" fn xenevtchn_bind_virq(_xce: *mut Handle, _virq: c_uint) -> c_int {
    set_errno(Errno::ENOSYS);
    -1
}

/// Release a port.
///
/// # Safety
///
/// `xce` is null or a live handle from [`xenevtchn_open`].
#[no_mangle]
pub unsafe extern "C" fn xenevtchn_unbind(xce: *mut Handle, port: u32) -> c_int {
    // SAFETY: forwarded contract.
    let h = match unsafe { handle(xce) } {
        Ok(h) => h,
        Err(rc) => return rc,
    };
    match h.events.unbind(Port(port)) {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

/// The next port with a delivered event, waiting for one unless the fd is non-blocking
/// (then `-1` with `EAGAIN` when none is pending).
///
/// # Safety
///
/// `xce` is null or a live handle from [`xenevtchn_open`].
#[no_mangle]
pub unsafe extern "C" fn xenevtchn_pending(xce: *mut Handle) -> c_int {
    // SAFETY: forwarded contract.
    let h = match unsafe { handle(xce) } {
        Ok(h) => h,
        Err(rc) => return rc,
    };
    match h.events.take_event(true) {
        Ok(Some(port)) => port.0 as c_int,
        Ok(None) => {
            set_errno(Errno::EAGAIN);
            -1
        }
        Err(e) => fail(e),
    }
}

/// Re-arm `port` after its event was taken.
///
/// # Safety
///
/// `xce` is null or a live handle from [`xenevtchn_open`].
#[no_mangle]
pub unsafe extern "C" fn xenevtchn_unmask(xce: *mut Handle, port: u32) -> c_int {
    // SAFETY: forwarded contract.
    let h = match unsafe { handle(xce) } {
        Ok(h) => h,
        Err(rc) => return rc,
    };
    match h.events.unmask(Port(port)) {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

/// Restricting a handle to one domain is not simulated: always `-1` with `ENOSYS`.
#[no_mangle]
pub extern "C" fn xenevtchn_restrict(_xce: *mut Handle, _domid: u16) -> c_int {
    set_errno(Errno::ENOSYS);
    -1
}
