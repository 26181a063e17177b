//! The kernel ABI of `/dev/xen/gntalloc` and `/dev/xen/gntdev`.
//!
//! Transcribed from Linux's `include/uapi/xen/gntalloc.h` and `include/uapi/xen/gntdev.h`
//! (installed by `linux-libc-dev` as `/usr/include/xen/{gntalloc,gntdev}.h`). Every struct's size
//! and field offsets, and every ioctl number, are checked against the C definitions at compile
//! time below (the numbers were taken from a C program compiled against those headers).
//!
//! Two requests end in a variable-length array (`gref_ids[1]`, `refs[1]`): the structs here hold
//! the one-element form so that `size_of` matches the C `sizeof` used in the ioctl number, and
//! [`VarIoctl`] builds the real, longer argument in an 8-byte-aligned buffer.

use std::mem::{align_of, offset_of, size_of};

/// `_IOC(_IOC_NONE, type, nr, size)` on Linux (x86, arm, riscv: none = 0, size at bit 16).
const fn ioc_none(kind: u8, nr: u8, size: usize) -> u64 {
    ((size as u64) << 16) | ((kind as u64) << 8) | nr as u64
}

/// `struct ioctl_gntalloc_alloc_gref`: allocate `count` pages granted to `domid`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GntallocAllocGref {
    /// In: the domain given access.
    pub domid: u16,
    /// In: [`GNTALLOC_FLAG_WRITABLE`] or 0.
    pub flags: u16,
    /// In: the number of pages.
    pub count: u32,
    /// Out: the offset to pass to `mmap`.
    pub index: u64,
    /// Out: one grant ref per page (really `count` entries).
    pub gref_ids: [u32; 1],
}
const _: () = assert!(size_of::<GntallocAllocGref>() == 24);
const _: () = assert!(align_of::<GntallocAllocGref>() == 8);
const _: () = assert!(offset_of!(GntallocAllocGref, domid) == 0);
const _: () = assert!(offset_of!(GntallocAllocGref, flags) == 2);
const _: () = assert!(offset_of!(GntallocAllocGref, count) == 4);
const _: () = assert!(offset_of!(GntallocAllocGref, index) == 8);
const _: () = assert!(offset_of!(GntallocAllocGref, gref_ids) == 16);

/// `GNTALLOC_FLAG_WRITABLE`: the grantee may map the pages writable.
pub const GNTALLOC_FLAG_WRITABLE: u16 = 1;

/// `struct ioctl_gntalloc_dealloc_gref`: drop the grants of a region (deferred until unmapped).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GntallocDeallocGref {
    /// In: the index returned by the allocation.
    pub index: u64,
    /// In: the number of pages.
    pub count: u32,
}
const _: () = assert!(size_of::<GntallocDeallocGref>() == 16);
const _: () = assert!(offset_of!(GntallocDeallocGref, index) == 0);
const _: () = assert!(offset_of!(GntallocDeallocGref, count) == 8);

/// `struct ioctl_gntalloc_unmap_notify` and `struct ioctl_gntdev_unmap_notify` (identical).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UnmapNotifyArg {
    /// In: mmap offset of the byte to clear (any byte of the page when not clearing).
    pub index: u64,
    /// In: [`UNMAP_NOTIFY_CLEAR_BYTE`] and/or [`UNMAP_NOTIFY_SEND_EVENT`].
    pub action: u32,
    /// In: the local port to send the event on.
    pub event_channel_port: u32,
}
const _: () = assert!(size_of::<UnmapNotifyArg>() == 16);
const _: () = assert!(offset_of!(UnmapNotifyArg, index) == 0);
const _: () = assert!(offset_of!(UnmapNotifyArg, action) == 8);
const _: () = assert!(offset_of!(UnmapNotifyArg, event_channel_port) == 12);

/// Clear one byte when the region goes away.
pub const UNMAP_NOTIFY_CLEAR_BYTE: u32 = 0x1;
/// Send an event when the region goes away.
pub const UNMAP_NOTIFY_SEND_EVENT: u32 = 0x2;

/// `struct ioctl_gntdev_grant_ref`: one grant to map.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GntdevGrantRef {
    /// The granting domain.
    pub domid: u32,
    /// Its grant ref.
    pub r#ref: u32,
}
const _: () = assert!(size_of::<GntdevGrantRef>() == 8);
const _: () = assert!(offset_of!(GntdevGrantRef, domid) == 0);
const _: () = assert!(offset_of!(GntdevGrantRef, r#ref) == 4);

/// `struct ioctl_gntdev_map_grant_ref`: reserve an mmap range for `count` grants.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GntdevMapGrantRef {
    /// In: the number of grants.
    pub count: u32,
    /// Padding.
    pub pad: u32,
    /// Out: the offset to pass to `mmap`.
    pub index: u64,
    /// In: the grants (really `count` entries).
    pub refs: [GntdevGrantRef; 1],
}
const _: () = assert!(size_of::<GntdevMapGrantRef>() == 24);
const _: () = assert!(align_of::<GntdevMapGrantRef>() == 8);
const _: () = assert!(offset_of!(GntdevMapGrantRef, count) == 0);
const _: () = assert!(offset_of!(GntdevMapGrantRef, index) == 8);
const _: () = assert!(offset_of!(GntdevMapGrantRef, refs) == 16);

/// `struct ioctl_gntdev_unmap_grant_ref`: release a range reserved by a map.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GntdevUnmapGrantRef {
    /// In: the index returned by the map.
    pub index: u64,
    /// In: the number of pages.
    pub count: u32,
    /// Padding.
    pub pad: u32,
}
const _: () = assert!(size_of::<GntdevUnmapGrantRef>() == 16);
const _: () = assert!(offset_of!(GntdevUnmapGrantRef, index) == 0);
const _: () = assert!(offset_of!(GntdevUnmapGrantRef, count) == 8);

/// `struct ioctl_gntdev_set_max_grants`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GntdevSetMaxGrants {
    /// In: the most grants this handle may map at once.
    pub count: u32,
}
const _: () = assert!(size_of::<GntdevSetMaxGrants>() == 4);

/// `IOCTL_GNTALLOC_ALLOC_GREF`.
pub const IOCTL_GNTALLOC_ALLOC_GREF: u64 = ioc_none(b'G', 5, size_of::<GntallocAllocGref>());
/// `IOCTL_GNTALLOC_DEALLOC_GREF`.
pub const IOCTL_GNTALLOC_DEALLOC_GREF: u64 = ioc_none(b'G', 6, size_of::<GntallocDeallocGref>());
/// `IOCTL_GNTALLOC_SET_UNMAP_NOTIFY`.
pub const IOCTL_GNTALLOC_SET_UNMAP_NOTIFY: u64 = ioc_none(b'G', 7, size_of::<UnmapNotifyArg>());
/// `IOCTL_GNTDEV_MAP_GRANT_REF`.
pub const IOCTL_GNTDEV_MAP_GRANT_REF: u64 = ioc_none(b'G', 0, size_of::<GntdevMapGrantRef>());
/// `IOCTL_GNTDEV_UNMAP_GRANT_REF`.
pub const IOCTL_GNTDEV_UNMAP_GRANT_REF: u64 = ioc_none(b'G', 1, size_of::<GntdevUnmapGrantRef>());
/// `IOCTL_GNTDEV_SET_MAX_GRANTS`.
pub const IOCTL_GNTDEV_SET_MAX_GRANTS: u64 = ioc_none(b'G', 3, size_of::<GntdevSetMaxGrants>());
/// `IOCTL_GNTDEV_SET_UNMAP_NOTIFY`.
pub const IOCTL_GNTDEV_SET_UNMAP_NOTIFY: u64 = ioc_none(b'G', 7, size_of::<UnmapNotifyArg>());

// The values `gcc` computes from the headers on x86-64.
const _: () = assert!(IOCTL_GNTALLOC_ALLOC_GREF == 0x18_4705);
const _: () = assert!(IOCTL_GNTALLOC_DEALLOC_GREF == 0x10_4706);
const _: () = assert!(IOCTL_GNTALLOC_SET_UNMAP_NOTIFY == 0x10_4707);
const _: () = assert!(IOCTL_GNTDEV_MAP_GRANT_REF == 0x18_4700);
const _: () = assert!(IOCTL_GNTDEV_UNMAP_GRANT_REF == 0x10_4701);
const _: () = assert!(IOCTL_GNTDEV_SET_MAX_GRANTS == 0x4_4703);
const _: () = assert!(IOCTL_GNTDEV_SET_UNMAP_NOTIFY == 0x10_4707);

/// An ioctl argument made of a fixed header `H` followed by `count` elements `E`, laid out as the
/// kernel reads it: zeroed, 8-byte aligned, the array right after the header, and at least
/// `min_size` bytes (the C `sizeof` of the one-element struct, which the kernel may copy whole).
pub struct VarIoctl<H, E> {
    words: Vec<u64>,
    count: usize,
    _types: std::marker::PhantomData<(H, E)>,
}

impl<H: Copy, E: Copy> VarIoctl<H, E> {
    const LAYOUT_OK: () = assert!(
        align_of::<H>() <= align_of::<u64>()
            && align_of::<E>() <= align_of::<u64>()
            && size_of::<H>() & (align_of::<E>() - 1) == 0
    );

    /// A zeroed argument with room for `count` elements; `None` if the size overflows.
    pub fn new(count: usize, min_size: usize) -> Option<VarIoctl<H, E>> {
        // Evaluated at compile time for every instantiation: the pointer casts below rely on it.
        #[allow(clippy::let_unit_value)]
        let () = Self::LAYOUT_OK;
        let bytes = count
            .checked_mul(size_of::<E>())?
            .checked_add(size_of::<H>())?
            .max(min_size);
        let words = vec![0u64; bytes.div_ceil(size_of::<u64>())];
        Some(VarIoctl {
            words,
            count,
            _types: std::marker::PhantomData,
        })
    }

    /// The whole argument, for the ioctl call.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.words.as_mut_ptr().cast()
    }

    /// Write the fixed header.
    pub fn set_header(&mut self, header: H) {
        // SAFETY: the buffer holds at least `size_of::<H>()` bytes, is 8-byte aligned, which
        // satisfies `H` (checked by `LAYOUT_OK`), and is exclusively borrowed.
        unsafe { self.as_mut_ptr().cast::<H>().write(header) }
    }

    /// Read the fixed header back (after the kernel filled its out fields).
    pub fn header(&self) -> H {
        // SAFETY: as in `set_header`; the buffer is initialised (zeroed, then written by us or
        // the kernel) and the headers used here are plain integers, valid for any bits.
        unsafe { self.words.as_ptr().cast::<H>().read() }
    }

    /// Write the array from `values`; extra values beyond `count` are ignored.
    pub fn fill(&mut self, values: impl IntoIterator<Item = E>) {
        let count = self.count;
        let base = self.as_mut_ptr();
        for (i, value) in values.into_iter().take(count).enumerate() {
            // SAFETY: `i < count`, so the element lies within the buffer (sized in `new` for
            // `count` elements after the header); the offset `size_of::<H>() + i * size_of::<E>()`
            // is aligned for `E` (`LAYOUT_OK`); the buffer is exclusively borrowed.
            unsafe { base.add(size_of::<H>()).cast::<E>().add(i).write(value) }
        }
    }

    /// Element `i` of the array, `None` past the end.
    pub fn get(&self, i: usize) -> Option<E> {
        if i >= self.count {
            return None;
        }
        // SAFETY: in bounds and aligned as in `fill`; the buffer is initialised and the element
        // types used here are plain integers, valid for any bits.
        Some(unsafe {
            self.words
                .as_ptr()
                .cast::<u8>()
                .add(size_of::<H>())
                .cast::<E>()
                .add(i)
                .read()
        })
    }

    /// The argument's size in bytes.
    pub fn byte_len(&self) -> usize {
        self.words.len() * size_of::<u64>()
    }
}

/// The fixed part of [`GntallocAllocGref`] (everything before `gref_ids`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GntallocAllocGrefHeader {
    /// See [`GntallocAllocGref::domid`].
    pub domid: u16,
    /// See [`GntallocAllocGref::flags`].
    pub flags: u16,
    /// See [`GntallocAllocGref::count`].
    pub count: u32,
    /// See [`GntallocAllocGref::index`].
    pub index: u64,
}
const _: () =
    assert!(size_of::<GntallocAllocGrefHeader>() == offset_of!(GntallocAllocGref, gref_ids));
const _: () =
    assert!(offset_of!(GntallocAllocGrefHeader, index) == offset_of!(GntallocAllocGref, index));
const _: () =
    assert!(offset_of!(GntallocAllocGrefHeader, count) == offset_of!(GntallocAllocGref, count));

/// The fixed part of [`GntdevMapGrantRef`] (everything before `refs`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GntdevMapGrantRefHeader {
    /// See [`GntdevMapGrantRef::count`].
    pub count: u32,
    /// Padding.
    pub pad: u32,
    /// See [`GntdevMapGrantRef::index`].
    pub index: u64,
}
const _: () = assert!(size_of::<GntdevMapGrantRefHeader>() == offset_of!(GntdevMapGrantRef, refs));
const _: () =
    assert!(offset_of!(GntdevMapGrantRefHeader, index) == offset_of!(GntdevMapGrantRef, index));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_length_alloc_argument_is_large_enough_for_every_ref() {
        let mut arg =
            VarIoctl::<GntallocAllocGrefHeader, u32>::new(5, size_of::<GntallocAllocGref>())
                .unwrap();
        assert_eq!(arg.byte_len(), 40);
        arg.set_header(GntallocAllocGrefHeader {
            domid: 3,
            flags: GNTALLOC_FLAG_WRITABLE,
            count: 5,
            index: 0,
        });
        arg.fill((0..9).map(|i| 100 + i));
        let header = arg.header();
        assert_eq!((header.domid, header.flags, header.count), (3, 1, 5));
        assert_eq!(arg.get(4), Some(104));
        assert_eq!(arg.get(5), None);
        // The bytes are where the C struct puts them.
        let bytes: Vec<u8> = arg.words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(&bytes[0..2], &3u16.to_ne_bytes());
        assert_eq!(&bytes[16..20], &100u32.to_ne_bytes());
        assert_eq!(&bytes[32..36], &104u32.to_ne_bytes());
    }

    #[test]
    fn a_single_element_argument_is_as_large_as_the_c_struct() {
        let arg = VarIoctl::<GntdevMapGrantRefHeader, GntdevGrantRef>::new(
            1,
            size_of::<GntdevMapGrantRef>(),
        )
        .unwrap();
        assert_eq!(arg.byte_len(), size_of::<GntdevMapGrantRef>());
        let empty = VarIoctl::<GntallocAllocGrefHeader, u32>::new(0, 24).unwrap();
        assert_eq!(empty.byte_len(), 24);
    }

    #[test]
    fn an_overflowing_count_is_refused() {
        assert!(
            VarIoctl::<GntdevMapGrantRefHeader, GntdevGrantRef>::new(usize::MAX / 4, 24).is_none()
        );
    }
}
