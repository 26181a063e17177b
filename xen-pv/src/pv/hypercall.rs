//! Hypercalls through the hypercall page, and the typed wrappers this crate uses.
//!
//! Xen fills the page (at the address of the `HYPERCALL_PAGE` note) with one 32-byte stub per
//! hypercall: it saves `rcx` and `r11`, loads the number into `eax` and executes `syscall`.
//! Arguments go in `rdi`, `rsi`, `rdx`, `r10`, `r8`; the result comes back in `rax` (a negated
//! errno on failure). The asm is not `nostack` (the `call` and the stub push), clobbers memory
//! (Xen reads and writes the argument structs), and marks every argument register clobbered: a
//! debug Xen poisons them on the way out (`clobber_regs()`).

use core::arch::asm;
use core::ptr::addr_of;

use crate::abi::{self, HYPERCALL_STUB_SIZE};
use crate::error::{PvError, Result};

extern "C" {
    /// The hypercall page (boot.rs), which Xen fills at load time.
    static xen_pv_hypercall_page: [u8; 4096];
}

/// Whether Xen filled the hypercall page: the linker leaves it as `ret` (0xc3) bytes, and
/// every stub starts with `push %rcx` (0x51).
pub fn page_is_filled() -> bool {
    // SAFETY: the page is a 4 KiB static of this image, mapped and readable; Xen wrote it
    // before the guest ran and nobody writes it since. A volatile read, so the compiler cannot
    // assume the linker's contents.
    let first = unsafe { core::ptr::read_volatile(addr_of!(xen_pv_hypercall_page).cast::<u8>()) };
    first != 0xc3
}

/// Make hypercall `nr` with five arguments.
///
/// # Safety
///
/// The arguments must be valid for the hypercall: every pointer among them points to memory of
/// the layout that hypercall expects, valid for the reads and writes Xen makes for the whole
/// call, and the operation must not break the memory Rust uses (no unmapping of live memory).
#[inline]
unsafe fn hypercall(nr: usize, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let entry = addr_of!(xen_pv_hypercall_page) as usize + nr * HYPERCALL_STUB_SIZE;
    let ret: i64;
    // SAFETY: `entry` is the stub of hypercall `nr` in the page Xen filled (checked at boot);
    // the stub returns with every register but rax (and the poisoned argument registers, marked
    // clobbered) preserved; the caller vouches for the arguments.
    unsafe {
        asm!(
            "call {entry}",
            entry = in(reg) entry,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _,
            inlateout("r8") a5 => _,
            lateout("r9") _,
            lateout("rcx") _,
            lateout("r11") _,
            lateout("rax") ret,
        );
    }
    ret
}

fn check(op: &'static str, rc: i64) -> Result<i64> {
    if rc < 0 {
        Err(PvError::Hypercall { op, code: rc })
    } else {
        Ok(rc)
    }
}

/// `xen_version(XENVER_version)`: `(major, minor)`.
pub fn xen_version() -> (u16, u16) {
    // SAFETY: XENVER_version takes no argument buffer (a null pointer) and changes nothing.
    let v = unsafe {
        hypercall(
            abi::HYPERVISOR_XEN_VERSION,
            u64::from(abi::XENVER_VERSION),
            0,
            0,
            0,
            0,
        )
    };
    ((v >> 16) as u16, v as u16)
}

/// Point the page-table entry of `va` at `pte` (a machine address and flags; 0 unmaps), and
/// flush the address from the TLB.
///
/// # Safety
///
/// Nothing Rust uses may be at `va` unless `pte` maps the same memory again; memory newly
/// mapped at `va` must be treated as shared (reached only through `SharedRegion`) if anyone
/// else can write it.
pub unsafe fn update_va_mapping(va: usize, pte: u64) -> Result<()> {
    // SAFETY: the caller vouches for what leaves and enters the address space.
    let rc = unsafe {
        hypercall(
            abi::HYPERVISOR_UPDATE_VA_MAPPING,
            va as u64,
            pte,
            abi::UVMF_INVLPG,
            0,
            0,
        )
    };
    check("update_va_mapping", rc).map(drop)
}

/// `GNTTABOP_setup_table`: fill `frames` with the MFNs of our grant table's first
/// `frames.len()` frames.
pub fn gnttab_setup_table(frames: &mut [u64]) -> Result<()> {
    let mut op = abi::GnttabSetupTable {
        dom: abi::DOMID_SELF,
        nr_frames: frames.len() as u32,
        status: 0,
        frame_list: frames.as_mut_ptr() as u64,
    };
    // SAFETY: `op` is a gnttab_setup_table whose frame list has room for `nr_frames` u64s;
    // both live across the call. Setting up the table changes no mapping of ours.
    let rc = unsafe {
        hypercall(
            abi::HYPERVISOR_GRANT_TABLE_OP,
            u64::from(abi::GNTTABOP_SETUP_TABLE),
            (&raw mut op) as u64,
            1,
            0,
            0,
        )
    };
    check("GNTTABOP_setup_table", rc)?;
    if op.status != abi::GNTST_OKAY {
        return Err(PvError::Grant {
            op: "setup_table",
            status: op.status,
        });
    }
    Ok(())
}

/// `GNTTABOP_map_grant_ref` over `ops` (their `status` and `handle` are filled in).
///
/// # Safety
///
/// Each op's `host_addr` is a page of this address space whose current contents nobody uses
/// (the mapping replaces it) and which is reached only through `SharedRegion` afterwards.
pub unsafe fn gnttab_map(ops: &mut [abi::GnttabMapGrantRef]) -> Result<()> {
    // SAFETY: `ops` is an array of gnttab_map_grant_ref, live across the call; the caller
    // vouches for the addresses.
    let rc = unsafe {
        hypercall(
            abi::HYPERVISOR_GRANT_TABLE_OP,
            u64::from(abi::GNTTABOP_MAP_GRANT_REF),
            ops.as_mut_ptr() as u64,
            ops.len() as u64,
            0,
            0,
        )
    };
    check("GNTTABOP_map_grant_ref", rc).map(drop)
}

/// `GNTTABOP_unmap_grant_ref` over `ops` (their `status` is filled in).
///
/// # Safety
///
/// Nothing may use the mapped pages after the call (their addresses become unmapped).
pub unsafe fn gnttab_unmap(ops: &mut [abi::GnttabUnmapGrantRef]) -> Result<()> {
    // SAFETY: `ops` is an array of gnttab_unmap_grant_ref, live across the call; the caller
    // vouches that the pages are unused.
    let rc = unsafe {
        hypercall(
            abi::HYPERVISOR_GRANT_TABLE_OP,
            u64::from(abi::GNTTABOP_UNMAP_GRANT_REF),
            ops.as_mut_ptr() as u64,
            ops.len() as u64,
            0,
            0,
        )
    };
    check("GNTTABOP_unmap_grant_ref", rc).map(drop)
}

/// `MMUEXT_TLB_FLUSH_LOCAL`: flush this vCPU's TLB (after grant mappings replaced present
/// entries, whose old translations may still be cached).
pub fn flush_tlb() -> Result<()> {
    let mut op = abi::MmuextOp {
        cmd: abi::MMUEXT_TLB_FLUSH_LOCAL,
        arg1: 0,
        arg2: 0,
    };
    // SAFETY: one mmuext_op, live across the call; a TLB flush changes no mapping.
    let rc = unsafe {
        hypercall(
            abi::HYPERVISOR_MMUEXT_OP,
            (&raw mut op) as u64,
            1,
            0,
            u64::from(abi::DOMID_SELF),
            0,
        )
    };
    check("MMUEXT_TLB_FLUSH_LOCAL", rc).map(drop)
}

fn event_channel_op<T>(op: &'static str, cmd: u32, arg: &mut T) -> Result<()> {
    // SAFETY: every caller passes the struct of its command (abi.rs, checked against the
    // headers), live across the call; event-channel operations change no mapping.
    let rc = unsafe {
        hypercall(
            abi::HYPERVISOR_EVENT_CHANNEL_OP,
            u64::from(cmd),
            (arg as *mut T) as u64,
            0,
            0,
            0,
        )
    };
    check(op, rc).map(drop)
}

/// `EVTCHNOP_alloc_unbound`: a new port that `remote` may bind.
pub fn evtchn_alloc_unbound(remote: u16) -> Result<u32> {
    let mut arg = abi::EvtchnAllocUnbound {
        dom: abi::DOMID_SELF,
        remote_dom: remote,
        port: 0,
    };
    event_channel_op(
        "EVTCHNOP_alloc_unbound",
        abi::EVTCHNOP_ALLOC_UNBOUND,
        &mut arg,
    )?;
    Ok(arg.port)
}

/// `EVTCHNOP_bind_interdomain`: bind `remote`'s unbound port; our new port.
pub fn evtchn_bind_interdomain(remote: u16, remote_port: u32) -> Result<u32> {
    let mut arg = abi::EvtchnBindInterdomain {
        remote_dom: remote,
        remote_port,
        local_port: 0,
    };
    event_channel_op(
        "EVTCHNOP_bind_interdomain",
        abi::EVTCHNOP_BIND_INTERDOMAIN,
        &mut arg,
    )?;
    Ok(arg.local_port)
}

/// `EVTCHNOP_send`.
pub fn evtchn_send(port: u32) -> Result<()> {
    event_channel_op(
        "EVTCHNOP_send",
        abi::EVTCHNOP_SEND,
        &mut abi::EvtchnPort { port },
    )
}

/// `EVTCHNOP_unmask`.
pub fn evtchn_unmask(port: u32) -> Result<()> {
    event_channel_op(
        "EVTCHNOP_unmask",
        abi::EVTCHNOP_UNMASK,
        &mut abi::EvtchnPort { port },
    )
}

/// `EVTCHNOP_close`.
pub fn evtchn_close(port: u32) -> Result<()> {
    event_channel_op(
        "EVTCHNOP_close",
        abi::EVTCHNOP_CLOSE,
        &mut abi::EvtchnPort { port },
    )
}

/// `SCHEDOP_poll`: block until one of `ports` is pending or system time `timeout` (0: none).
pub fn sched_poll(ports: &[u32], timeout: u64) -> Result<()> {
    let mut arg = abi::SchedPoll {
        ports: ports.as_ptr() as u64,
        nr_ports: ports.len() as u32,
        timeout,
    };
    // SAFETY: a sched_poll whose port array (read by Xen) lives across the call.
    let rc = unsafe {
        hypercall(
            abi::HYPERVISOR_SCHED_OP,
            u64::from(abi::SCHEDOP_POLL),
            (&raw mut arg) as u64,
            0,
            0,
            0,
        )
    };
    check("SCHEDOP_poll", rc).map(drop)
}

/// `SCHEDOP_shutdown` with `reason`; does not return (if Xen refused, the vCPU spins on the
/// request).
pub fn shutdown(reason: u32) -> ! {
    loop {
        let mut arg = abi::SchedShutdown { reason };
        // SAFETY: a sched_shutdown, live across the call.
        unsafe {
            hypercall(
                abi::HYPERVISOR_SCHED_OP,
                u64::from(abi::SCHEDOP_SHUTDOWN),
                (&raw mut arg) as u64,
                0,
                0,
                0,
            );
        }
    }
}
