//! What `libxenvchan_*_init` hands out, and how a call gets back to it.
//!
//! One heap block: the public `struct libxenvchan` first (so the pointer the program holds is a
//! pointer to it), then the driver and the library's own copy of `xs_path`, which the program
//! knows nothing of (programs never allocate the struct, so growing it is safe; moving a field
//! would not be). The public part belongs to the program as much as to us: it writes the flags
//! between calls, and may write anything else. So it sits in an `UnsafeCell`, is reached only
//! through raw pointers, and only its flag byte is ever read back, afresh on every call; nothing
//! else in it is trusted. The driver is reached by a shared reference to its own field only.

use std::cell::UnsafeCell;
use std::ffi::{c_char, CStr};
use std::ptr::{self, addr_of, NonNull};

use nix::errno::Errno;

use crate::abi::{Libxenvchan, FLAGS_OFFSET, FLAG_BLOCKING, FLAG_SERVER_PERSIST};
use crate::driver::{Dropin, Mode};

/// A copy of the server's `xs_path`, made with `strdup` (the program may read it as
/// `ctrl->xs_path`, a C string on the C heap, as the C library's is); freed on drop.
pub struct CPath(NonNull<c_char>);

impl CPath {
    /// `strdup(path)`; `ENOMEM` if it fails.
    pub fn dup(path: &CStr) -> Result<CPath, Errno> {
        // SAFETY: `path` is a valid NUL-terminated string.
        let copy = unsafe { libc::strdup(path.as_ptr()) };
        NonNull::new(copy).map(CPath).ok_or(Errno::ENOMEM)
    }

    /// The string, for the public field.
    pub fn as_ptr(&self) -> *mut c_char {
        self.0.as_ptr()
    }
}

impl Drop for CPath {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `strdup` and is freed once, here.
        unsafe { libc::free(self.0.as_ptr().cast()) };
    }
}

/// The heap block behind a `struct libxenvchan *`.
#[repr(C)]
pub struct Ctrl {
    /// At offset 0: what the program sees.
    public: UnsafeCell<Libxenvchan>,
    driver: Dropin,
    xs_path: Option<CPath>,
}

impl Ctrl {
    /// Allocate the block and give the program its pointer.
    pub fn into_raw(
        public: Libxenvchan,
        driver: Dropin,
        xs_path: Option<CPath>,
    ) -> *mut Libxenvchan {
        let block = Box::new(Ctrl {
            public: UnsafeCell::new(public),
            driver,
            xs_path,
        });
        // `repr(C)`: the public struct is at offset 0 of the block.
        Box::into_raw(block).cast()
    }

    /// Take the block back from the program (`libxenvchan_close`): `None` for NULL.
    ///
    /// # Safety
    ///
    /// `ctrl` is NULL or a pointer from [`into_raw`](Self::into_raw) not taken back before, and
    /// no other call on it is running or will run (the C API's contract).
    pub unsafe fn from_raw(ctrl: *mut Libxenvchan) -> Option<(Dropin, Option<CPath>)> {
        let ctrl = NonNull::new(ctrl.cast::<Ctrl>())?;
        // SAFETY: per the contract, the block came from `Box::into_raw` in `into_raw` and is
        // ours again.
        let block = unsafe { Box::from_raw(ctrl.as_ptr()) };
        let Ctrl {
            driver, xs_path, ..
        } = *block;
        Some((driver, xs_path))
    }

    /// The driver behind `ctrl` and the mode of this call, from the flag byte as the program
    /// left it: `EINVAL` for NULL.
    ///
    /// # Safety
    ///
    /// `ctrl` is NULL or a live pointer from [`into_raw`](Self::into_raw) (not yet closed), and
    /// the reference is used only during the current call, which `close` must not overlap.
    pub unsafe fn driver<'a>(ctrl: *mut Libxenvchan) -> Result<(&'a Dropin, Mode), Errno> {
        let ctrl = NonNull::new(ctrl.cast::<Ctrl>()).ok_or(Errno::EINVAL)?;
        // SAFETY: per the contract the block is live. The flag byte is read through a raw
        // pointer into the `UnsafeCell` (the program writes it with plain C stores between
        // calls; volatile so it is read now, every time); the driver is borrowed through a
        // reference to its own field only, which the program never touches.
        let (flags, driver) = unsafe {
            let public = UnsafeCell::raw_get(addr_of!((*ctrl.as_ptr()).public));
            let flags = public.cast::<u8>().add(FLAGS_OFFSET).read_volatile();
            (flags, &*addr_of!((*ctrl.as_ptr()).driver))
        };
        let mode = Mode {
            blocking: flags & FLAG_BLOCKING != 0,
            persist: flags & FLAG_SERVER_PERSIST != 0,
        };
        Ok((driver, mode))
    }

    /// Free the server's `xs_path` now and clear the public field (`close_xs_srv`; the C
    /// library freed it without clearing it, so its close freed it again).
    ///
    /// # Safety
    ///
    /// As for [`driver`](Self::driver).
    pub unsafe fn forget_xs_path(ctrl: *mut Libxenvchan) {
        let Some(ctrl) = NonNull::new(ctrl.cast::<Ctrl>()) else {
            return;
        };
        // SAFETY: per the contract the block is live and no other call runs on it now; the
        // public field is written through the `UnsafeCell`'s raw pointer, and `xs_path` is our
        // own field, reached through a raw pointer to it (the driver may be borrowed
        // elsewhere in this call, the path is not).
        unsafe {
            let public = UnsafeCell::raw_get(addr_of!((*ctrl.as_ptr()).public));
            ptr::addr_of_mut!((*public).xs_path).write(ptr::null_mut());
            drop(ptr::addr_of_mut!((*ctrl.as_ptr()).xs_path).replace(None));
        }
    }
}
