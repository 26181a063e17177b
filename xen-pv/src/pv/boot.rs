//! The image's Xen ELF notes, its entry point and the hypercall page, and the first Rust code
//! that runs.
//!
//! Xen enters `_start` in ring 3 with `rsi` = the virtual address of start_info and `rsp` at the
//! top of a one-page stack inside the start-of-day region, upcalls masked. `_start` switches to
//! the `.bss` boot stack and calls [`xen_pv_start`], which builds the [`Platform`] and hands it
//! to the guest's main function (declared with [`entry!`](crate::entry)).

use core::arch::global_asm;

use super::memory::{self, STACK_BYTES};
use super::{hypercall, Platform};
use crate::abi::{self, StartInfo};

global_asm!(
    // The entry point, first in the image (the linker script puts this section first).
    ".section .text.xen_pv.entry, \"ax\"",
    ".global _start",
    "_start:",
    // The stack's top: the guard page, then STACK_BYTES.
    "    lea rsp, [rip + {stack} + {top}]",
    "    mov rdi, rsi",
    "    call {start}",
    "    ud2",
    // The hypercall page: `ret` bytes until Xen fills it (checked at boot).
    ".section .text.xen_pv.hypercall_page, \"ax\"",
    ".balign 4096",
    ".global xen_pv_hypercall_page",
    "xen_pv_hypercall_page:",
    "    .fill 4096, 1, 0xc3",
    // The notes Xen's libelf reads (owner "Xen"): namesz 4, descsz, type, "Xen\0", desc.
    ".section .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4, .Lxen_pv_os_end - .Lxen_pv_os, {note_guest_os}",
    ".asciz \"Xen\"",
    ".Lxen_pv_os: .asciz \"xen-pv\"",
    ".Lxen_pv_os_end: .balign 4",
    ".long 4, .Lxen_pv_ver_end - .Lxen_pv_ver, {note_xen_version}",
    ".asciz \"Xen\"",
    ".Lxen_pv_ver: .asciz \"xen-3.0\"",
    ".Lxen_pv_ver_end: .balign 4",
    ".long 4, .Lxen_pv_ldr_end - .Lxen_pv_ldr, {note_loader}",
    ".asciz \"Xen\"",
    ".Lxen_pv_ldr: .asciz \"generic\"",
    ".Lxen_pv_ldr_end: .balign 4",
    ".long 4, 8, {note_hypercall_page}",
    ".asciz \"Xen\"",
    ".quad xen_pv_hypercall_page",
    ".long 4, 8, {note_entry}",
    ".asciz \"Xen\"",
    ".quad _start",
    ".long 4, 8, {note_virt_base}",
    ".asciz \"Xen\"",
    ".quad 0",
    ".long 4, 8, {note_paddr_offset}",
    ".asciz \"Xen\"",
    ".quad 0",
    ".text",
    stack = sym memory::XEN_PV_BOOT_STACK,
    top = const abi::PAGE_SIZE + STACK_BYTES,
    start = sym xen_pv_start,
    note_guest_os = const abi::XEN_ELFNOTE_GUEST_OS,
    note_xen_version = const abi::XEN_ELFNOTE_XEN_VERSION,
    note_loader = const abi::XEN_ELFNOTE_LOADER,
    note_hypercall_page = const abi::XEN_ELFNOTE_HYPERCALL_PAGE,
    note_entry = const abi::XEN_ELFNOTE_ENTRY,
    note_virt_base = const abi::XEN_ELFNOTE_VIRT_BASE,
    note_paddr_offset = const abi::XEN_ELFNOTE_PADDR_OFFSET,
);

extern "Rust" {
    /// The guest's main function, defined by [`entry!`](crate::entry).
    fn __xen_pv_main(platform: &'static Platform) -> !;
}

/// The first Rust code: check the hypercall page, set up the heap and the platform, run main.
extern "C" fn xen_pv_start(start_info: *const StartInfo) -> ! {
    if !hypercall::page_is_filled() {
        // Without hypercalls the guest can neither print nor shut down: fault, and Xen
        // reports the crash ("Unhandled: vec 6, #UD").
        // SAFETY: `ud2` only raises #UD, which crashes the domain (no trap table).
        unsafe { core::arch::asm!("ud2", options(noreturn)) }
    }
    super::heap::init();
    // SAFETY: Xen passed the address of start_info in rsi; the page is mapped, the guest's
    // own, and nobody writes it after boot. It is copied once, here.
    let start = unsafe { start_info.read() };
    let platform = Platform::boot(start);
    // SAFETY: declared by the guest with `entry!`, with this signature.
    unsafe { __xen_pv_main(platform) }
}
