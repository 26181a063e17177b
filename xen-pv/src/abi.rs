//! The x86-64 PV ABI: every structure this crate shares with Xen or passes to a hypercall, and
//! every number it uses, as Xen 4.17's public headers define them (`xen/include/public/`, as
//! Debian's libxen-dev installs them under `/usr/include/xen/`).
//!
//! The `const` assertions under each structure pin its size and field offsets; the test
//! `tests/abi_headers.rs` compiles a C program against the installed headers and compares the
//! same figures, and the constants, with these.
//!
//! The structures of pages that Xen or a peer writes (`shared_info`, the console and xenstore
//! rings, grant entries) are here only to give offsets: such pages are reached through
//! `xen_types::memory::SharedRegion` at these offsets, never through a reference to the struct.

use core::mem::{offset_of, size_of};

// ---- Hypercalls (`xen.h`) --------------------------------------------------------------------

/// `__HYPERVISOR_mmu_update`.
pub const HYPERVISOR_MMU_UPDATE: usize = 1;
/// `__HYPERVISOR_update_va_mapping`.
pub const HYPERVISOR_UPDATE_VA_MAPPING: usize = 14;
/// `__HYPERVISOR_mmuext_op`.
pub const HYPERVISOR_MMUEXT_OP: usize = 26;
/// `__HYPERVISOR_xen_version`.
pub const HYPERVISOR_XEN_VERSION: usize = 17;
/// `__HYPERVISOR_grant_table_op`.
pub const HYPERVISOR_GRANT_TABLE_OP: usize = 20;
/// `__HYPERVISOR_sched_op` (the new ABI, which takes a pointer to its argument).
pub const HYPERVISOR_SCHED_OP: usize = 29;
/// `__HYPERVISOR_event_channel_op` (the new ABI: command and pointer).
pub const HYPERVISOR_EVENT_CHANNEL_OP: usize = 32;

/// The size of one hypercall's stub in the hypercall page: call `page + 32 * number`.
pub const HYPERCALL_STUB_SIZE: usize = 32;

/// `UVMF_INVLPG`: flush this address from the TLB after `update_va_mapping`.
pub const UVMF_INVLPG: u64 = 2;

/// `MMUEXT_TLB_FLUSH_LOCAL`: flush this vCPU's TLB.
pub const MMUEXT_TLB_FLUSH_LOCAL: u32 = 6;

/// `struct mmuext_op`: an extended MMU operation.
#[repr(C)]
pub struct MmuextOp {
    /// `MMUEXT_*`.
    pub cmd: u32,
    /// `mfn` or `linear_addr`, by command.
    pub arg1: u64,
    /// `nr_ents`, `vcpumask` or `src_mfn`, by command.
    pub arg2: u64,
}

const _: () = assert!(size_of::<MmuextOp>() == 24);
const _: () = assert!(offset_of!(MmuextOp, arg1) == 8);
const _: () = assert!(offset_of!(MmuextOp, arg2) == 16);

/// `XENVER_version` (`version.h`): returns `major << 16 | minor`.
pub const XENVER_VERSION: u32 = 0;

/// `DOMID_SELF`: the calling domain.
pub const DOMID_SELF: u16 = 0x7ff0;

/// The start of the read-only machine-to-physical table in every x86-64 PV guest
/// (`MACH2PHYS_VIRT_START`, `arch-x86/xen-x86_64.h`): `m2p[mfn]` is the guest's pfn of `mfn`.
pub const MACH2PHYS_VIRT_START: u64 = 0xFFFF_8000_0000_0000;

/// The page size of x86.
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// Page-table entry flags: present.
pub const PTE_PRESENT: u64 = 0x001;
/// Page-table entry flags: writable.
pub const PTE_RW: u64 = 0x002;
/// Page-table entry flags: accessed (set up front, as Mini-OS does).
pub const PTE_ACCESSED: u64 = 0x020;
/// The flags of an ordinary read-write kernel mapping (Mini-OS `L1_PROT` without `_PAGE_USER`,
/// which Xen adds to a 64-bit PV kernel's entries itself).
pub const PTE_KERNEL_RW: u64 = PTE_PRESENT | PTE_RW | PTE_ACCESSED;

// ---- ELF notes (`elfnote.h`) -----------------------------------------------------------------

/// `XEN_ELFNOTE_ENTRY`.
pub const XEN_ELFNOTE_ENTRY: u32 = 1;
/// `XEN_ELFNOTE_HYPERCALL_PAGE`.
pub const XEN_ELFNOTE_HYPERCALL_PAGE: u32 = 2;
/// `XEN_ELFNOTE_VIRT_BASE`.
pub const XEN_ELFNOTE_VIRT_BASE: u32 = 3;
/// `XEN_ELFNOTE_PADDR_OFFSET`.
pub const XEN_ELFNOTE_PADDR_OFFSET: u32 = 4;
/// `XEN_ELFNOTE_XEN_VERSION`.
pub const XEN_ELFNOTE_XEN_VERSION: u32 = 5;
/// `XEN_ELFNOTE_GUEST_OS`.
pub const XEN_ELFNOTE_GUEST_OS: u32 = 6;
/// `XEN_ELFNOTE_LOADER`.
pub const XEN_ELFNOTE_LOADER: u32 = 8;

// ---- start_info (`xen.h`) --------------------------------------------------------------------

/// `struct start_info`: what the domain builder tells a PV guest at boot. The page is the
/// guest's own and nobody writes it after boot; the guest copies it out once.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StartInfo {
    /// `"xen-<version>-<platform>"`, NUL-padded (`xen-3.0-x86_64`).
    pub magic: [u8; 32],
    /// Total pages allocated to this domain.
    pub nr_pages: u64,
    /// Machine address of the shared-info structure.
    pub shared_info: u64,
    /// `SIF_*` flags.
    pub flags: u32,
    /// The machine frame of the xenstore ring page.
    pub store_mfn: u64,
    /// The event channel of the xenstore ring.
    pub store_evtchn: u32,
    /// `console.domU.mfn`: the machine frame of the console ring page.
    pub console_mfn: u64,
    /// `console.domU.evtchn`: the event channel of the console ring.
    pub console_evtchn: u32,
    /// Virtual address of the bootstrap page tables.
    pub pt_base: u64,
    /// Number of bootstrap page-table frames.
    pub nr_pt_frames: u64,
    /// Virtual address of the page-frame list (`mfn_list[pfn]` is the machine frame of `pfn`).
    pub mfn_list: u64,
    /// Virtual address of a pre-loaded module (the ramdisk), if any.
    pub mod_start: u64,
    /// Size of the module in bytes.
    pub mod_len: u64,
    /// The command line (xl's `extra=`), NUL-terminated.
    pub cmd_line: [u8; MAX_GUEST_CMDLINE],
    /// The first pfn of the p2m table, if the builder placed it apart.
    pub first_p2m_pfn: u64,
    /// The number of p2m frames.
    pub nr_p2m_frames: u64,
}

/// `MAX_GUEST_CMDLINE`.
pub const MAX_GUEST_CMDLINE: usize = 1024;
/// The magic a 64-bit PV guest finds at the start of its start_info.
pub const START_INFO_MAGIC_PREFIX: &[u8] = b"xen-3.0-x86_64";

const _: () = assert!(size_of::<StartInfo>() == 1168);
const _: () = assert!(offset_of!(StartInfo, nr_pages) == 32);
const _: () = assert!(offset_of!(StartInfo, shared_info) == 40);
const _: () = assert!(offset_of!(StartInfo, flags) == 48);
const _: () = assert!(offset_of!(StartInfo, store_mfn) == 56);
const _: () = assert!(offset_of!(StartInfo, store_evtchn) == 64);
const _: () = assert!(offset_of!(StartInfo, console_mfn) == 72);
const _: () = assert!(offset_of!(StartInfo, console_evtchn) == 80);
const _: () = assert!(offset_of!(StartInfo, pt_base) == 88);
const _: () = assert!(offset_of!(StartInfo, nr_pt_frames) == 96);
const _: () = assert!(offset_of!(StartInfo, mfn_list) == 104);
const _: () = assert!(offset_of!(StartInfo, mod_start) == 112);
const _: () = assert!(offset_of!(StartInfo, mod_len) == 120);
const _: () = assert!(offset_of!(StartInfo, cmd_line) == 128);
const _: () = assert!(offset_of!(StartInfo, first_p2m_pfn) == 1152);
const _: () = assert!(offset_of!(StartInfo, nr_p2m_frames) == 1160);

// ---- shared_info and vcpu_info (`xen.h`, `arch-x86/xen.h`, `arch-x86/xen-x86_64.h`) ---------

/// `struct vcpu_time_info`: Xen's system time at a TSC stamp, and the TSC's scale. Xen bumps
/// `version` to an odd value before it rewrites the rest and to an even one after.
#[repr(C)]
pub struct VcpuTimeInfo {
    /// The seqlock's version: odd while Xen updates the record.
    pub version: u32,
    /// Padding.
    pub pad0: u32,
    /// The TSC when `system_time` was taken.
    pub tsc_timestamp: u64,
    /// Nanoseconds since Xen booted, at `tsc_timestamp`.
    pub system_time: u64,
    /// TSC ticks to nanoseconds: `ns = ((ticks << shift) * mul) >> 32` (a right shift if
    /// negative).
    pub tsc_to_system_mul: u32,
    /// The shift of the scale.
    pub tsc_shift: i8,
    /// `XEN_PVCLOCK_*` flags.
    pub flags: u8,
    /// Padding.
    pub pad1: [u8; 2],
}

const _: () = assert!(size_of::<VcpuTimeInfo>() == 32);
const _: () = assert!(offset_of!(VcpuTimeInfo, tsc_timestamp) == 8);
const _: () = assert!(offset_of!(VcpuTimeInfo, system_time) == 16);
const _: () = assert!(offset_of!(VcpuTimeInfo, tsc_to_system_mul) == 24);
const _: () = assert!(offset_of!(VcpuTimeInfo, tsc_shift) == 28);

/// `struct vcpu_info` (x86-64).
#[repr(C)]
pub struct VcpuInfo {
    /// Set by Xen when an unmasked event is pending.
    pub evtchn_upcall_pending: u8,
    /// Upcalls masked (1 from boot: this crate never unmasks them; it polls).
    pub evtchn_upcall_mask: u8,
    /// Padding.
    pub pad: [u8; 6],
    /// Which words of `evtchn_pending` have bits set (for the upcall handler).
    pub evtchn_pending_sel: u64,
    /// `struct arch_vcpu_info`: `cr2` and a pad word.
    pub arch: [u64; 2],
    /// The time record.
    pub time: VcpuTimeInfo,
}

const _: () = assert!(size_of::<VcpuInfo>() == 64);
const _: () = assert!(offset_of!(VcpuInfo, evtchn_upcall_mask) == 1);
const _: () = assert!(offset_of!(VcpuInfo, evtchn_pending_sel) == 8);
const _: () = assert!(offset_of!(VcpuInfo, time) == 32);

/// `XEN_LEGACY_MAX_VCPUS` on x86.
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;
/// The number of `xen_ulong_t` words of the 2-level event bitmaps.
pub const EVTCHN_WORDS: usize = 64;
/// The number of ports of the 2-level ABI (`EVTCHN_2L_NR_CHANNELS`).
pub const EVTCHN_2L_NR_CHANNELS: u32 = (EVTCHN_WORDS * 64) as u32;

/// `struct shared_info` (x86-64): the page Xen shares with every domain.
#[repr(C)]
pub struct SharedInfo {
    /// One record per legacy vCPU.
    pub vcpu_info: [VcpuInfo; XEN_LEGACY_MAX_VCPUS],
    /// Port `p` is pending when bit `p % 64` of word `p / 64` is set.
    pub evtchn_pending: [u64; EVTCHN_WORDS],
    /// Port `p` is masked when its bit is set here.
    pub evtchn_mask: [u64; EVTCHN_WORDS],
    /// The wallclock's seqlock version.
    pub wc_version: u32,
    /// Wallclock seconds at system time 0.
    pub wc_sec: u32,
    /// Wallclock nanoseconds.
    pub wc_nsec: u32,
    /// High 32 bits of `wc_sec` (x86-64).
    pub wc_sec_hi: u32,
    /// `struct arch_shared_info`: `max_pfn`, the p2m frame list's list, `nmi_reason`,
    /// `p2m_cr3`, `p2m_vaddr`, `p2m_generation`.
    pub arch: [u64; 6],
}

const _: () = assert!(size_of::<SharedInfo>() == 3136);
const _: () = assert!(offset_of!(SharedInfo, evtchn_pending) == 2048);
const _: () = assert!(offset_of!(SharedInfo, evtchn_mask) == 2560);
const _: () = assert!(offset_of!(SharedInfo, wc_version) == 3072);
const _: () = assert!(offset_of!(SharedInfo, arch) == 3088);

/// The offset of vCPU 0's time record in `shared_info`.
pub const VCPU0_TIME: usize = offset_of!(SharedInfo, vcpu_info) + offset_of!(VcpuInfo, time);
/// The offset of vCPU 0's upcall mask in `shared_info`.
pub const VCPU0_UPCALL_MASK: usize = offset_of!(VcpuInfo, evtchn_upcall_mask);

// ---- The console ring (`io/console.h`) -------------------------------------------------------

/// `struct xencons_interface`: the console page, shared with xenconsoled.
#[repr(C)]
pub struct XenconsInterface {
    /// Input ring (dom0 to guest).
    pub input: [u8; XENCONS_IN_SIZE],
    /// Output ring (guest to dom0).
    pub output: [u8; XENCONS_OUT_SIZE],
    /// Input consumer index (free-running).
    pub in_cons: u32,
    /// Input producer index.
    pub in_prod: u32,
    /// Output consumer index (xenconsoled's).
    pub out_cons: u32,
    /// Output producer index (ours).
    pub out_prod: u32,
}

/// The input ring's size.
pub const XENCONS_IN_SIZE: usize = 1024;
/// The output ring's size.
pub const XENCONS_OUT_SIZE: usize = 2048;

const _: () = assert!(size_of::<XenconsInterface>() == 3088);
const _: () = assert!(offset_of!(XenconsInterface, output) == 1024);
const _: () = assert!(offset_of!(XenconsInterface, in_cons) == 3072);
const _: () = assert!(offset_of!(XenconsInterface, out_cons) == 3080);
const _: () = assert!(offset_of!(XenconsInterface, out_prod) == 3084);

// ---- The xenstore ring (`io/xs_wire.h`) ------------------------------------------------------

/// `struct xenstore_domain_interface`: the xenstore page, shared with xenstored.
#[repr(C)]
pub struct XenstoreDomainInterface {
    /// Requests (guest to xenstored).
    pub req: [u8; XENSTORE_RING_SIZE],
    /// Replies and watch events (xenstored to guest).
    pub rsp: [u8; XENSTORE_RING_SIZE],
    /// Request consumer index (xenstored's).
    pub req_cons: u32,
    /// Request producer index (ours).
    pub req_prod: u32,
    /// Reply consumer index (ours).
    pub rsp_cons: u32,
    /// Reply producer index (xenstored's).
    pub rsp_prod: u32,
    /// `XENSTORE_SERVER_FEATURE_*` bits.
    pub server_features: u32,
    /// `XENSTORE_CONNECTED` or `XENSTORE_RECONNECT`.
    pub connection: u32,
    /// `XENSTORE_ERROR_*`.
    pub error: u32,
}

/// `XENSTORE_RING_SIZE`.
pub const XENSTORE_RING_SIZE: usize = 1024;

const _: () = assert!(size_of::<XenstoreDomainInterface>() == 2076);
const _: () = assert!(offset_of!(XenstoreDomainInterface, rsp) == 1024);
const _: () = assert!(offset_of!(XenstoreDomainInterface, req_cons) == 2048);
const _: () = assert!(offset_of!(XenstoreDomainInterface, rsp_prod) == 2060);
const _: () = assert!(offset_of!(XenstoreDomainInterface, error) == 2072);

// ---- Grant tables (`grant_table.h`) ----------------------------------------------------------

/// `GNTTABOP_map_grant_ref`.
pub const GNTTABOP_MAP_GRANT_REF: u32 = 0;
/// `GNTTABOP_unmap_grant_ref`.
pub const GNTTABOP_UNMAP_GRANT_REF: u32 = 1;
/// `GNTTABOP_setup_table`.
pub const GNTTABOP_SETUP_TABLE: u32 = 2;

/// `GTF_permit_access`: the grantee may map the frame.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// `GTF_readonly`: only read-only mappings.
pub const GTF_READONLY: u16 = 1 << 2;
/// `GTF_reading`: Xen sets it while the grantee maps the frame.
pub const GTF_READING: u16 = 1 << 3;
/// `GTF_writing`: Xen sets it while the grantee maps the frame writable.
pub const GTF_WRITING: u16 = 1 << 4;

/// `GNTMAP_host_map`: map into the caller's address space.
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// `GNTMAP_readonly`.
pub const GNTMAP_READONLY: u32 = 1 << 2;

/// `GNTTAB_NR_RESERVED_ENTRIES`: refs below this belong to the toolstack (console 0, xenstore 1).
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;

/// `GNTST_okay`.
pub const GNTST_OKAY: i16 = 0;

/// `grant_entry_v1_t`: one entry of our grant table (Xen sets the `GTF_reading`/`GTF_writing`
/// bits of `flags` while the grantee maps the frame).
#[repr(C)]
pub struct GrantEntryV1 {
    /// `GTF_*` flags.
    pub flags: u16,
    /// The domain being granted access.
    pub domid: u16,
    /// The machine frame (for a PV guest).
    pub frame: u32,
}

const _: () = assert!(size_of::<GrantEntryV1>() == 8);
const _: () = assert!(offset_of!(GrantEntryV1, domid) == 2);
const _: () = assert!(offset_of!(GrantEntryV1, frame) == 4);

/// `struct gnttab_setup_table`.
#[repr(C)]
pub struct GnttabSetupTable {
    /// `DOMID_SELF`.
    pub dom: u16,
    /// Frames wanted.
    pub nr_frames: u32,
    /// `GNTST_*` (out).
    pub status: i16,
    /// Guest handle of a `u64` array receiving the frames' MFNs.
    pub frame_list: u64,
}

const _: () = assert!(size_of::<GnttabSetupTable>() == 24);
const _: () = assert!(offset_of!(GnttabSetupTable, nr_frames) == 4);
const _: () = assert!(offset_of!(GnttabSetupTable, status) == 8);
const _: () = assert!(offset_of!(GnttabSetupTable, frame_list) == 16);

/// `struct gnttab_map_grant_ref`.
#[repr(C)]
pub struct GnttabMapGrantRef {
    /// With `GNTMAP_host_map` and no `GNTMAP_contains_pte`: the virtual address to map at.
    pub host_addr: u64,
    /// `GNTMAP_*`.
    pub flags: u32,
    /// The granter's ref.
    pub gref: u32,
    /// The granting domain.
    pub dom: u16,
    /// `GNTST_*` (out).
    pub status: i16,
    /// The mapping's handle, for the unmap (out).
    pub handle: u32,
    /// For device mappings (out).
    pub dev_bus_addr: u64,
}

const _: () = assert!(size_of::<GnttabMapGrantRef>() == 32);
const _: () = assert!(offset_of!(GnttabMapGrantRef, flags) == 8);
const _: () = assert!(offset_of!(GnttabMapGrantRef, gref) == 12);
const _: () = assert!(offset_of!(GnttabMapGrantRef, dom) == 16);
const _: () = assert!(offset_of!(GnttabMapGrantRef, status) == 18);
const _: () = assert!(offset_of!(GnttabMapGrantRef, handle) == 20);
const _: () = assert!(offset_of!(GnttabMapGrantRef, dev_bus_addr) == 24);

/// `struct gnttab_unmap_grant_ref`.
#[repr(C)]
pub struct GnttabUnmapGrantRef {
    /// The virtual address mapped.
    pub host_addr: u64,
    /// 0 for a host mapping.
    pub dev_bus_addr: u64,
    /// The handle the map returned.
    pub handle: u32,
    /// `GNTST_*` (out).
    pub status: i16,
}

const _: () = assert!(size_of::<GnttabUnmapGrantRef>() == 24);
const _: () = assert!(offset_of!(GnttabUnmapGrantRef, handle) == 16);
const _: () = assert!(offset_of!(GnttabUnmapGrantRef, status) == 20);

// ---- Event channels (`event_channel.h`) ------------------------------------------------------

/// `EVTCHNOP_bind_interdomain`.
pub const EVTCHNOP_BIND_INTERDOMAIN: u32 = 0;
/// `EVTCHNOP_close`.
pub const EVTCHNOP_CLOSE: u32 = 3;
/// `EVTCHNOP_send`.
pub const EVTCHNOP_SEND: u32 = 4;
/// `EVTCHNOP_alloc_unbound`.
pub const EVTCHNOP_ALLOC_UNBOUND: u32 = 6;
/// `EVTCHNOP_unmask`.
pub const EVTCHNOP_UNMASK: u32 = 9;

/// `struct evtchn_alloc_unbound`.
#[repr(C)]
pub struct EvtchnAllocUnbound {
    /// `DOMID_SELF`.
    pub dom: u16,
    /// The domain that may bind the other end.
    pub remote_dom: u16,
    /// The new port (out).
    pub port: u32,
}

const _: () = assert!(size_of::<EvtchnAllocUnbound>() == 8);
const _: () = assert!(offset_of!(EvtchnAllocUnbound, remote_dom) == 2);
const _: () = assert!(offset_of!(EvtchnAllocUnbound, port) == 4);

/// `struct evtchn_bind_interdomain`.
#[repr(C)]
pub struct EvtchnBindInterdomain {
    /// The domain that offered the port.
    pub remote_dom: u16,
    /// Its unbound port.
    pub remote_port: u32,
    /// Our new port (out).
    pub local_port: u32,
}

const _: () = assert!(size_of::<EvtchnBindInterdomain>() == 12);
const _: () = assert!(offset_of!(EvtchnBindInterdomain, remote_port) == 4);
const _: () = assert!(offset_of!(EvtchnBindInterdomain, local_port) == 8);

/// `struct evtchn_close`, `struct evtchn_send` and `struct evtchn_unmask`: one port.
#[repr(C)]
pub struct EvtchnPort {
    /// The port.
    pub port: u32,
}

const _: () = assert!(size_of::<EvtchnPort>() == 4);

// ---- Scheduling (`sched.h`) ------------------------------------------------------------------

/// `SCHEDOP_shutdown`.
pub const SCHEDOP_SHUTDOWN: u32 = 2;
/// `SCHEDOP_poll`.
pub const SCHEDOP_POLL: u32 = 3;
/// `SHUTDOWN_poweroff`.
pub const SHUTDOWN_POWEROFF: u32 = 0;
/// `SHUTDOWN_crash`.
pub const SHUTDOWN_CRASH: u32 = 3;
/// The most ports one `SCHEDOP_poll` takes (`do_poll`'s limit).
pub const SCHED_POLL_MAX_PORTS: usize = 128;

/// `struct sched_shutdown`.
#[repr(C)]
pub struct SchedShutdown {
    /// `SHUTDOWN_*`.
    pub reason: u32,
}

/// `struct sched_poll`.
#[repr(C)]
pub struct SchedPoll {
    /// Guest handle of the `u32` ports.
    pub ports: u64,
    /// How many.
    pub nr_ports: u32,
    /// Absolute system time (ns) to give up at; 0 for none.
    pub timeout: u64,
}

const _: () = assert!(size_of::<SchedShutdown>() == 4);
const _: () = assert!(size_of::<SchedPoll>() == 24);
const _: () = assert!(offset_of!(SchedPoll, nr_ports) == 8);
const _: () = assert!(offset_of!(SchedPoll, timeout) == 16);
