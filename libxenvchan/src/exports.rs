//! The C API: the twelve functions of `<libxenvchan.h>` and `close_xs_srv`, with Xen 4.17's
//! signatures (the version script gives each `VERS_4.17.0`).
//!
//! Each one runs its body under `catch_unwind` (a panic is a bug of ours; it must never unwind
//! into C) and turns a failure into the C library's failure value with `errno` set: `-1` (`NULL`
//! from the init calls, 0 from the size queries, which callers use as lengths).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{self, AssertUnwindSafe};
use std::ptr;

use nix::errno::Errno;
use vchan::channel::{self, Address, Dial, RingSizes};
use vchan::ring::Role;
use xen_types::DomId;

use crate::abi::Libxenvchan;
use crate::ctrl::{CPath, Ctrl};
use crate::driver::{vchan_errno, Dropin};
use crate::sys::Libs;

/// Run `body`; on failure set `errno` and return `failed`. A panic is reported as `EIO`.
fn boundary<T>(failed: T, body: impl FnOnce() -> Result<T, Errno>) -> T {
    match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => value,
        Ok(Err(errno)) => {
            errno.set();
            failed
        }
        Err(_) => {
            Errno::EIO.set();
            failed
        }
    }
}

/// The C library's int results: a count fits (rings are at most 1 MiB; reads and writes are
/// cut to `INT_MAX`).
fn count(n: usize) -> c_int {
    c_int::try_from(n).unwrap_or(c_int::MAX)
}

/// At most `INT_MAX` bytes per call, so the count fits the int result.
fn clamp(size: usize) -> usize {
    size.min(c_int::MAX as usize)
}

fn domain(raw: c_int) -> Result<DomId, Errno> {
    u16::try_from(raw).map(DomId).map_err(|_| Errno::EINVAL)
}

/// The caller's path: `EINVAL` for NULL or text that is not UTF-8 (xenstore paths are ASCII).
///
/// # Safety
///
/// `path` is NULL or a NUL-terminated string that outlives `'a`.
unsafe fn path<'a>(path: *const c_char) -> Result<(&'a CStr, &'a str), Errno> {
    if path.is_null() {
        return Err(Errno::EINVAL);
    }
    // SAFETY: per the contract.
    let c = unsafe { CStr::from_ptr(path) };
    let text = c.to_str().map_err(|_| Errno::EINVAL)?;
    Ok((c, text))
}

/// The caller's buffer, to fill.
///
/// # Safety
///
/// `data` is valid for writes of `size` bytes (or `size` is 0), and nothing else uses it during
/// the call.
unsafe fn buffer_mut<'a>(data: *mut c_void, size: usize) -> Result<&'a mut [u8], Errno> {
    if size == 0 {
        return Ok(&mut []);
    }
    if data.is_null() {
        return Err(Errno::EFAULT);
    }
    // SAFETY: per the contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(data.cast::<u8>(), size) })
}

/// The caller's bytes, to send.
///
/// # Safety
///
/// `data` is valid for reads of `size` bytes (or `size` is 0), and nothing writes it during the
/// call.
unsafe fn buffer<'a>(data: *const c_void, size: usize) -> Result<&'a [u8], Errno> {
    if size == 0 {
        return Ok(&[]);
    }
    if data.is_null() {
        return Err(Errno::EFAULT);
    }
    // SAFETY: per the contract.
    Ok(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size) })
}

/// Serve `domain` at `xs_path` (relative paths resolve under this domain's home), with rings of
/// at least `read_min` bytes toward us and `write_min` toward the client (at most 1 MiB each:
/// `EINVAL` otherwise). Returns at once; `libxenvchan_is_open` says 2 until the client comes.
/// `NULL` with `errno` set on failure.
///
/// # Safety
///
/// `logger` is NULL or a valid `struct xentoollog_logger *`; `xs_path` is NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn libxenvchan_server_init(
    logger: *mut c_void,
    domain_id: c_int,
    xs_path: *const c_char,
    read_min: usize,
    write_min: usize,
) -> *mut Libxenvchan {
    boundary(ptr::null_mut(), || {
        let client = domain(domain_id)?;
        // SAFETY: per the contract.
        let (c_path, text) = unsafe { path(xs_path) }?;
        // The copy first: once served, a failure would have to undo the publication.
        let copy = CPath::dup(c_path)?;
        let platform = Libs::new(logger);
        let sizes = RingSizes {
            server_read: read_min,
            server_write: write_min,
        };
        let channel = channel::serve(&platform, client, &Address::Path(text.into()), sizes)
            .map_err(|e| vchan_errno(&e, Role::Server))?;
        let driver = Dropin::new(channel);
        let fields = driver.fields(copy.as_ptr());
        Ok(Ctrl::into_raw(fields, driver, Some(copy)))
    })
}

/// Connect to `domain`'s server at `xs_path`, which must have published its keys already
/// (`ENOENT` otherwise, as in C). `NULL` with `errno` set on failure: `EPROTO` when the server
/// published or wrote nonsense, `EBUSY` when it has a client already or is closing.
///
/// # Safety
///
/// As for [`libxenvchan_server_init`].
#[no_mangle]
pub unsafe extern "C" fn libxenvchan_client_init(
    logger: *mut c_void,
    domain_id: c_int,
    xs_path: *const c_char,
) -> *mut Libxenvchan {
    boundary(ptr::null_mut(), || {
        let server = domain(domain_id)?;
        // SAFETY: per the contract.
        let (_, text) = unsafe { path(xs_path) }?;
        let platform = Libs::new(logger);
        let address = Address::Path(text.into());
        let fail = |e| vchan_errno(&e, Role::Client);
        let mut dial = Dial::new(&platform, server, &address).map_err(fail)?;
        // Once, without waiting: a server that has not published is `ENOENT`, as in C.
        let channel = dial
            .attempt(&platform, false)
            .map_err(fail)?
            .ok_or(Errno::ENOENT)?;
        let driver = Dropin::new(channel);
        let fields = driver.fields(ptr::null_mut());
        Ok(Ctrl::into_raw(fields, driver, None))
    })
}

/// Close the channel: the peer can still read what was written, then sees the end; a server's
/// keys are removed. NULL is accepted. `errno` is left as it was.
///
/// # Safety
///
/// `ctrl` is NULL or a pointer from an init call, not closed before, and no other call on it is
/// running (the C library's contract).
#[no_mangle]
pub unsafe extern "C" fn libxenvchan_close(ctrl: *mut Libxenvchan) {
    let saved = Errno::last_raw();
    boundary((), || {
        // SAFETY: per the contract.
        if let Some((driver, xs_path)) = unsafe { Ctrl::from_raw(ctrl) } {
            driver.close();
            drop(xs_path);
        }
        Ok(())
    });
    Errno::set_raw(saved);
}

/// Remove a server's xenstore keys and free `ctrl->xs_path` (private in C, but exported by
/// Debian's library, so kept). The close that follows does neither again.
///
/// # Safety
///
/// As for [`libxenvchan_close`].
#[no_mangle]
pub unsafe extern "C" fn close_xs_srv(ctrl: *mut Libxenvchan) {
    boundary((), || {
        // SAFETY: per the contract.
        let (driver, _) = unsafe { Ctrl::driver(ctrl) }?;
        driver.unpublish();
        // SAFETY: per the contract; the driver's reference is not used past this point.
        unsafe { Ctrl::forget_xs_path(ctrl) };
        Ok(())
    });
}

/// Receive exactly `size` bytes: `size`, or 0 (non-blocking, not enough data), or -1 with
/// `errno` (`EMSGSIZE` if the ring can never hold `size` bytes, `EPIPE` once the peer closed
/// with fewer, `EPROTO` if it corrupted the ring, `EINTR`).
///
/// # Safety
///
/// `ctrl` is a live pointer from an init call (see [`libxenvchan_close`]); `data` is valid for
/// writes of `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn libxenvchan_recv(
    ctrl: *mut Libxenvchan,
    data: *mut c_void,
    size: usize,
) -> c_int {
    boundary(-1, || {
        // SAFETY: per the contract.
        let (driver, mode) = unsafe { Ctrl::driver(ctrl) }?;
        if size > c_int::MAX as usize {
            return Err(Errno::EMSGSIZE);
        }
        // SAFETY: per the contract.
        let buf = unsafe { buffer_mut(data, size) }?;
        driver.recv(buf, mode).map(count)
    })
}

/// Read up to `size` bytes: the count, or 0 (non-blocking, nothing there), or -1 with `errno`
/// (`EPIPE` once the peer closed and everything it wrote was read, `EPROTO`, `EINTR`).
///
/// # Safety
///
/// As for [`libxenvchan_recv`].
#[no_mangle]
pub unsafe extern "C" fn libxenvchan_read(
    ctrl: *mut Libxenvchan,
    data: *mut c_void,
    size: usize,
) -> c_int {
    boundary(-1, || {
        // SAFETY: per the contract.
        let (driver, mode) = unsafe { Ctrl::driver(ctrl) }?;
        // SAFETY: per the contract (a shorter buffer than the caller's is still valid).
        let buf = unsafe { buffer_mut(data, clamp(size)) }?;
        driver.read(buf, mode).map(count)
    })
}

/// Send `size` bytes as one unit: `size`, or 0 (non-blocking, no room), or -1 with `errno`
/// (`EMSGSIZE`, `EPIPE`, `EPROTO`, `EINTR`).
///
/// # Safety
///
/// `ctrl` as for [`libxenvchan_recv`]; `data` is valid for reads of `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn libxenvchan_send(
    ctrl: *mut Libxenvchan,
    data: *const c_void,
    size: usize,
) -> c_int {
    boundary(-1, || {
        // SAFETY: per the contract.
        let (driver, mode) = unsafe { Ctrl::driver(ctrl) }?;
        if size > c_int::MAX as usize {
            return Err(Errno::EMSGSIZE);
        }
        // SAFETY: per the contract.
        let buf = unsafe { buffer(data, size) }?;
        driver.send(buf, mode).map(count)
    })
}

/// Write `size` bytes: blocking, all of them (or, cut short by a signal, a close or a corrupt
/// ring, the count written so far; the next call fails); non-blocking, what fits (0 when
/// full); -1 with `errno` if nothing was written.
///
/// # Safety
///
/// As for [`libxenvchan_send`].
#[no_mangle]
pub unsafe extern "C" fn libxenvchan_write(
    ctrl: *mut Libxenvchan,
    data: *const c_void,
    size: usize,
) -> c_int {
    boundary(-1, || {
        // SAFETY: per the contract.
        let (driver, mode) = unsafe { Ctrl::driver(ctrl) }?;
        // SAFETY: per the contract (a shorter buffer than the caller's is still valid).
        let buf = unsafe { buffer(data, clamp(size)) }?;
        driver.write(buf, mode).map(count)
    })
}

/// Wait for one event and re-arm the port: 0, or -1 with `errno` (`EINTR` from a signal
/// handler without `SA_RESTART`). Events coalesce and may be spurious.
///
/// # Safety
///
/// `ctrl` as for [`libxenvchan_recv`].
#[no_mangle]
pub unsafe extern "C" fn libxenvchan_wait(ctrl: *mut Libxenvchan) -> c_int {
    boundary(-1, || {
        // SAFETY: per the contract.
        let (driver, _) = unsafe { Ctrl::driver(ctrl) }?;
        driver.wait().map(|()| 0)
    })
}

/// The fd to `select()` or `poll()` for readability before `libxenvchan_wait`:
/// `xenevtchn_fd(ctrl->event)`.
///
/// # Safety
///
/// `ctrl` as for [`libxenvchan_recv`].
#[no_mangle]
pub unsafe extern "C" fn libxenvchan_fd_for_select(ctrl: *mut Libxenvchan) -> c_int {
    boundary(-1, || {
        // SAFETY: per the contract.
        let (driver, _) = unsafe { Ctrl::driver(ctrl) }?;
        Ok(driver.fd())
    })
}

/// 2 (a server waiting for its client), 1 (connected) or 0 (closed, the peer's domain gone, or
/// the ring corrupt: `errno` `EPROTO`). Always 1 for a server with `server_persist` set.
///
/// # Safety
///
/// `ctrl` as for [`libxenvchan_recv`].
#[no_mangle]
pub unsafe extern "C" fn libxenvchan_is_open(ctrl: *mut Libxenvchan) -> c_int {
    boundary(0, || {
        // SAFETY: per the contract.
        let (driver, mode) = unsafe { Ctrl::driver(ctrl) }?;
        driver.is_open(mode)
    })
}

/// Bytes ready to read (0..=the ring's size); asks the peer for an event when it writes more.
/// 0 with `errno` `EPROTO` on a corrupt ring.
///
/// # Safety
///
/// `ctrl` as for [`libxenvchan_recv`].
#[no_mangle]
pub unsafe extern "C" fn libxenvchan_data_ready(ctrl: *mut Libxenvchan) -> c_int {
    boundary(0, || {
        // SAFETY: per the contract.
        let (driver, _) = unsafe { Ctrl::driver(ctrl) }?;
        driver.data_ready().map(count)
    })
}

/// Bytes that can be written (0..=the ring's size); asks the peer for an event when it frees
/// more. 0 with `errno` `EPROTO` on a corrupt ring.
///
/// # Safety
///
/// `ctrl` as for [`libxenvchan_recv`].
#[no_mangle]
pub unsafe extern "C" fn libxenvchan_buffer_space(ctrl: *mut Libxenvchan) -> c_int {
    boundary(0, || {
        // SAFETY: per the contract.
        let (driver, _) = unsafe { Ctrl::driver(ctrl) }?;
        driver.buffer_space().map(count)
    })
}
