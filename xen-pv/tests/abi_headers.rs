//! The ABI of `xen_pv::abi`, checked against Xen's own C headers as Debian's libxen-dev
//! installs them: a C program compiled against `/usr/include/xen/*.h` prints sizes, offsets and
//! constants, and every one must equal the Rust side's. Needs gcc and libxen-dev (`.ci/run`
//! installs both).

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use xen_pv::abi::*;

const PROBE: &str = r#"
#define __XEN_TOOLS__ 1 /* else xen-compat.h gives the old compat hypercall numbers */
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <xen/xen.h>
#include <xen/elfnote.h>
#include <xen/version.h>
#include <xen/grant_table.h>
#include <xen/event_channel.h>
#include <xen/sched.h>
#include <xen/io/console.h>
#include <xen/io/xs_wire.h>

#define SIZE(t) printf("size %s %zu\n", #t, sizeof(t))
#define OFF(t, f) printf("offset %s.%s %zu\n", #t, #f, offsetof(t, f))
#define CONST(c) printf("const %s %lld\n", #c, (long long)(c))

int main(void)
{
    SIZE(struct start_info);
    OFF(struct start_info, nr_pages); OFF(struct start_info, shared_info);
    OFF(struct start_info, flags); OFF(struct start_info, store_mfn);
    OFF(struct start_info, store_evtchn); OFF(struct start_info, console.domU.mfn);
    OFF(struct start_info, console.domU.evtchn); OFF(struct start_info, pt_base);
    OFF(struct start_info, nr_pt_frames); OFF(struct start_info, mfn_list);
    OFF(struct start_info, mod_start); OFF(struct start_info, mod_len);
    OFF(struct start_info, cmd_line); OFF(struct start_info, first_p2m_pfn);
    OFF(struct start_info, nr_p2m_frames);
    CONST(MAX_GUEST_CMDLINE);

    SIZE(struct vcpu_time_info);
    OFF(struct vcpu_time_info, version); OFF(struct vcpu_time_info, tsc_timestamp);
    OFF(struct vcpu_time_info, system_time); OFF(struct vcpu_time_info, tsc_to_system_mul);
    OFF(struct vcpu_time_info, tsc_shift); OFF(struct vcpu_time_info, flags);
    SIZE(struct vcpu_info);
    OFF(struct vcpu_info, evtchn_upcall_pending); OFF(struct vcpu_info, evtchn_upcall_mask);
    OFF(struct vcpu_info, evtchn_pending_sel); OFF(struct vcpu_info, arch);
    OFF(struct vcpu_info, time);
    SIZE(struct shared_info);
    OFF(struct shared_info, vcpu_info); OFF(struct shared_info, evtchn_pending);
    OFF(struct shared_info, evtchn_mask); OFF(struct shared_info, wc_version);
    OFF(struct shared_info, wc_sec); OFF(struct shared_info, wc_nsec);
    OFF(struct shared_info, wc_sec_hi); OFF(struct shared_info, arch);
    CONST(XEN_LEGACY_MAX_VCPUS);

    SIZE(struct xencons_interface);
    OFF(struct xencons_interface, in); OFF(struct xencons_interface, out);
    OFF(struct xencons_interface, in_cons); OFF(struct xencons_interface, in_prod);
    OFF(struct xencons_interface, out_cons); OFF(struct xencons_interface, out_prod);
    SIZE(struct xenstore_domain_interface);
    OFF(struct xenstore_domain_interface, req); OFF(struct xenstore_domain_interface, rsp);
    OFF(struct xenstore_domain_interface, req_cons); OFF(struct xenstore_domain_interface, req_prod);
    OFF(struct xenstore_domain_interface, rsp_cons); OFF(struct xenstore_domain_interface, rsp_prod);
    OFF(struct xenstore_domain_interface, server_features);
    OFF(struct xenstore_domain_interface, connection);
    OFF(struct xenstore_domain_interface, error);
    CONST(XENSTORE_RING_SIZE);

    SIZE(grant_entry_v1_t);
    OFF(grant_entry_v1_t, flags); OFF(grant_entry_v1_t, domid); OFF(grant_entry_v1_t, frame);
    SIZE(struct gnttab_setup_table);
    OFF(struct gnttab_setup_table, dom); OFF(struct gnttab_setup_table, nr_frames);
    OFF(struct gnttab_setup_table, status); OFF(struct gnttab_setup_table, frame_list);
    SIZE(struct gnttab_map_grant_ref);
    OFF(struct gnttab_map_grant_ref, host_addr); OFF(struct gnttab_map_grant_ref, flags);
    OFF(struct gnttab_map_grant_ref, ref); OFF(struct gnttab_map_grant_ref, dom);
    OFF(struct gnttab_map_grant_ref, status); OFF(struct gnttab_map_grant_ref, handle);
    OFF(struct gnttab_map_grant_ref, dev_bus_addr);
    SIZE(struct gnttab_unmap_grant_ref);
    OFF(struct gnttab_unmap_grant_ref, host_addr); OFF(struct gnttab_unmap_grant_ref, dev_bus_addr);
    OFF(struct gnttab_unmap_grant_ref, handle); OFF(struct gnttab_unmap_grant_ref, status);

    SIZE(struct evtchn_alloc_unbound);
    OFF(struct evtchn_alloc_unbound, dom); OFF(struct evtchn_alloc_unbound, remote_dom);
    OFF(struct evtchn_alloc_unbound, port);
    SIZE(struct evtchn_bind_interdomain);
    OFF(struct evtchn_bind_interdomain, remote_dom);
    OFF(struct evtchn_bind_interdomain, remote_port);
    OFF(struct evtchn_bind_interdomain, local_port);
    SIZE(struct evtchn_close); SIZE(struct evtchn_send); SIZE(struct evtchn_unmask);
    SIZE(struct sched_shutdown); SIZE(struct sched_poll);
    OFF(struct sched_poll, ports); OFF(struct sched_poll, nr_ports); OFF(struct sched_poll, timeout);

    SIZE(struct mmuext_op); OFF(struct mmuext_op, arg1); OFF(struct mmuext_op, arg2);
    CONST(MMUEXT_TLB_FLUSH_LOCAL); CONST(__HYPERVISOR_mmuext_op);
    CONST(__HYPERVISOR_mmu_update); CONST(__HYPERVISOR_update_va_mapping);
    CONST(__HYPERVISOR_xen_version); CONST(__HYPERVISOR_grant_table_op);
    CONST(__HYPERVISOR_sched_op); CONST(__HYPERVISOR_event_channel_op);
    CONST(UVMF_INVLPG); CONST(XENVER_version); CONST(DOMID_SELF);
    CONST(MACH2PHYS_VIRT_START);
    CONST(XEN_ELFNOTE_ENTRY); CONST(XEN_ELFNOTE_HYPERCALL_PAGE); CONST(XEN_ELFNOTE_VIRT_BASE);
    CONST(XEN_ELFNOTE_PADDR_OFFSET); CONST(XEN_ELFNOTE_XEN_VERSION);
    CONST(XEN_ELFNOTE_GUEST_OS); CONST(XEN_ELFNOTE_LOADER);
    CONST(GNTTABOP_map_grant_ref); CONST(GNTTABOP_unmap_grant_ref); CONST(GNTTABOP_setup_table);
    CONST(GTF_permit_access); CONST(GTF_readonly); CONST(GTF_reading); CONST(GTF_writing);
    CONST(GNTMAP_host_map); CONST(GNTMAP_readonly); CONST(GNTTAB_NR_RESERVED_ENTRIES);
    CONST(GNTST_okay);
    CONST(EVTCHNOP_bind_interdomain); CONST(EVTCHNOP_close); CONST(EVTCHNOP_send);
    CONST(EVTCHNOP_alloc_unbound); CONST(EVTCHNOP_unmask);
    CONST(SCHEDOP_shutdown); CONST(SCHEDOP_poll); CONST(SHUTDOWN_poweroff); CONST(SHUTDOWN_crash);
    return 0;
}
"#;

/// The same figures from the Rust side, under the C names.
fn rust_side() -> BTreeMap<String, i128> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: i128| {
        assert!(m.insert(k.to_string(), v).is_none(), "{k} twice");
    };
    macro_rules! size {
        ($c:literal, $t:ty) => {
            put(concat!("size ", $c), size_of::<$t>() as i128)
        };
    }
    macro_rules! off {
        ($c:literal, $t:ty, $f:ident) => {
            put(concat!("offset ", $c), offset_of!($t, $f) as i128)
        };
    }
    macro_rules! cnst {
        ($c:literal, $v:expr) => {
            put(concat!("const ", $c), $v as i128)
        };
    }

    size!("struct start_info", StartInfo);
    off!("struct start_info.nr_pages", StartInfo, nr_pages);
    off!("struct start_info.shared_info", StartInfo, shared_info);
    off!("struct start_info.flags", StartInfo, flags);
    off!("struct start_info.store_mfn", StartInfo, store_mfn);
    off!("struct start_info.store_evtchn", StartInfo, store_evtchn);
    off!("struct start_info.console.domU.mfn", StartInfo, console_mfn);
    off!(
        "struct start_info.console.domU.evtchn",
        StartInfo,
        console_evtchn
    );
    off!("struct start_info.pt_base", StartInfo, pt_base);
    off!("struct start_info.nr_pt_frames", StartInfo, nr_pt_frames);
    off!("struct start_info.mfn_list", StartInfo, mfn_list);
    off!("struct start_info.mod_start", StartInfo, mod_start);
    off!("struct start_info.mod_len", StartInfo, mod_len);
    off!("struct start_info.cmd_line", StartInfo, cmd_line);
    off!("struct start_info.first_p2m_pfn", StartInfo, first_p2m_pfn);
    off!("struct start_info.nr_p2m_frames", StartInfo, nr_p2m_frames);
    cnst!("MAX_GUEST_CMDLINE", MAX_GUEST_CMDLINE);

    size!("struct vcpu_time_info", VcpuTimeInfo);
    off!("struct vcpu_time_info.version", VcpuTimeInfo, version);
    off!(
        "struct vcpu_time_info.tsc_timestamp",
        VcpuTimeInfo,
        tsc_timestamp
    );
    off!(
        "struct vcpu_time_info.system_time",
        VcpuTimeInfo,
        system_time
    );
    off!(
        "struct vcpu_time_info.tsc_to_system_mul",
        VcpuTimeInfo,
        tsc_to_system_mul
    );
    off!("struct vcpu_time_info.tsc_shift", VcpuTimeInfo, tsc_shift);
    off!("struct vcpu_time_info.flags", VcpuTimeInfo, flags);
    size!("struct vcpu_info", VcpuInfo);
    off!(
        "struct vcpu_info.evtchn_upcall_pending",
        VcpuInfo,
        evtchn_upcall_pending
    );
    off!(
        "struct vcpu_info.evtchn_upcall_mask",
        VcpuInfo,
        evtchn_upcall_mask
    );
    off!(
        "struct vcpu_info.evtchn_pending_sel",
        VcpuInfo,
        evtchn_pending_sel
    );
    off!("struct vcpu_info.arch", VcpuInfo, arch);
    off!("struct vcpu_info.time", VcpuInfo, time);
    size!("struct shared_info", SharedInfo);
    off!("struct shared_info.vcpu_info", SharedInfo, vcpu_info);
    off!(
        "struct shared_info.evtchn_pending",
        SharedInfo,
        evtchn_pending
    );
    off!("struct shared_info.evtchn_mask", SharedInfo, evtchn_mask);
    off!("struct shared_info.wc_version", SharedInfo, wc_version);
    off!("struct shared_info.wc_sec", SharedInfo, wc_sec);
    off!("struct shared_info.wc_nsec", SharedInfo, wc_nsec);
    off!("struct shared_info.wc_sec_hi", SharedInfo, wc_sec_hi);
    off!("struct shared_info.arch", SharedInfo, arch);
    cnst!("XEN_LEGACY_MAX_VCPUS", XEN_LEGACY_MAX_VCPUS);

    size!("struct xencons_interface", XenconsInterface);
    off!("struct xencons_interface.in", XenconsInterface, input);
    off!("struct xencons_interface.out", XenconsInterface, output);
    off!(
        "struct xencons_interface.in_cons",
        XenconsInterface,
        in_cons
    );
    off!(
        "struct xencons_interface.in_prod",
        XenconsInterface,
        in_prod
    );
    off!(
        "struct xencons_interface.out_cons",
        XenconsInterface,
        out_cons
    );
    off!(
        "struct xencons_interface.out_prod",
        XenconsInterface,
        out_prod
    );
    type Xs = XenstoreDomainInterface;
    size!("struct xenstore_domain_interface", Xs);
    off!("struct xenstore_domain_interface.req", Xs, req);
    off!("struct xenstore_domain_interface.rsp", Xs, rsp);
    off!("struct xenstore_domain_interface.req_cons", Xs, req_cons);
    off!("struct xenstore_domain_interface.req_prod", Xs, req_prod);
    off!("struct xenstore_domain_interface.rsp_cons", Xs, rsp_cons);
    off!("struct xenstore_domain_interface.rsp_prod", Xs, rsp_prod);
    off!(
        "struct xenstore_domain_interface.server_features",
        Xs,
        server_features
    );
    off!(
        "struct xenstore_domain_interface.connection",
        Xs,
        connection
    );
    off!("struct xenstore_domain_interface.error", Xs, error);
    cnst!("XENSTORE_RING_SIZE", XENSTORE_RING_SIZE);

    size!("grant_entry_v1_t", GrantEntryV1);
    off!("grant_entry_v1_t.flags", GrantEntryV1, flags);
    off!("grant_entry_v1_t.domid", GrantEntryV1, domid);
    off!("grant_entry_v1_t.frame", GrantEntryV1, frame);
    size!("struct gnttab_setup_table", GnttabSetupTable);
    off!("struct gnttab_setup_table.dom", GnttabSetupTable, dom);
    off!(
        "struct gnttab_setup_table.nr_frames",
        GnttabSetupTable,
        nr_frames
    );
    off!("struct gnttab_setup_table.status", GnttabSetupTable, status);
    off!(
        "struct gnttab_setup_table.frame_list",
        GnttabSetupTable,
        frame_list
    );
    size!("struct gnttab_map_grant_ref", GnttabMapGrantRef);
    off!(
        "struct gnttab_map_grant_ref.host_addr",
        GnttabMapGrantRef,
        host_addr
    );
    off!(
        "struct gnttab_map_grant_ref.flags",
        GnttabMapGrantRef,
        flags
    );
    off!("struct gnttab_map_grant_ref.ref", GnttabMapGrantRef, gref);
    off!("struct gnttab_map_grant_ref.dom", GnttabMapGrantRef, dom);
    off!(
        "struct gnttab_map_grant_ref.status",
        GnttabMapGrantRef,
        status
    );
    off!(
        "struct gnttab_map_grant_ref.handle",
        GnttabMapGrantRef,
        handle
    );
    off!(
        "struct gnttab_map_grant_ref.dev_bus_addr",
        GnttabMapGrantRef,
        dev_bus_addr
    );
    size!("struct gnttab_unmap_grant_ref", GnttabUnmapGrantRef);
    off!(
        "struct gnttab_unmap_grant_ref.host_addr",
        GnttabUnmapGrantRef,
        host_addr
    );
    off!(
        "struct gnttab_unmap_grant_ref.dev_bus_addr",
        GnttabUnmapGrantRef,
        dev_bus_addr
    );
    off!(
        "struct gnttab_unmap_grant_ref.handle",
        GnttabUnmapGrantRef,
        handle
    );
    off!(
        "struct gnttab_unmap_grant_ref.status",
        GnttabUnmapGrantRef,
        status
    );

    size!("struct evtchn_alloc_unbound", EvtchnAllocUnbound);
    off!("struct evtchn_alloc_unbound.dom", EvtchnAllocUnbound, dom);
    off!(
        "struct evtchn_alloc_unbound.remote_dom",
        EvtchnAllocUnbound,
        remote_dom
    );
    off!("struct evtchn_alloc_unbound.port", EvtchnAllocUnbound, port);
    size!("struct evtchn_bind_interdomain", EvtchnBindInterdomain);
    off!(
        "struct evtchn_bind_interdomain.remote_dom",
        EvtchnBindInterdomain,
        remote_dom
    );
    off!(
        "struct evtchn_bind_interdomain.remote_port",
        EvtchnBindInterdomain,
        remote_port
    );
    off!(
        "struct evtchn_bind_interdomain.local_port",
        EvtchnBindInterdomain,
        local_port
    );
    size!("struct evtchn_close", EvtchnPort);
    size!("struct evtchn_send", EvtchnPort);
    size!("struct evtchn_unmask", EvtchnPort);
    size!("struct sched_shutdown", SchedShutdown);
    size!("struct sched_poll", SchedPoll);
    off!("struct sched_poll.ports", SchedPoll, ports);
    off!("struct sched_poll.nr_ports", SchedPoll, nr_ports);
    off!("struct sched_poll.timeout", SchedPoll, timeout);

    size!("struct mmuext_op", MmuextOp);
    off!("struct mmuext_op.arg1", MmuextOp, arg1);
    off!("struct mmuext_op.arg2", MmuextOp, arg2);
    cnst!("MMUEXT_TLB_FLUSH_LOCAL", MMUEXT_TLB_FLUSH_LOCAL);
    cnst!("__HYPERVISOR_mmuext_op", HYPERVISOR_MMUEXT_OP);
    cnst!("__HYPERVISOR_mmu_update", HYPERVISOR_MMU_UPDATE);
    cnst!(
        "__HYPERVISOR_update_va_mapping",
        HYPERVISOR_UPDATE_VA_MAPPING
    );
    cnst!("__HYPERVISOR_xen_version", HYPERVISOR_XEN_VERSION);
    cnst!("__HYPERVISOR_grant_table_op", HYPERVISOR_GRANT_TABLE_OP);
    cnst!("__HYPERVISOR_sched_op", HYPERVISOR_SCHED_OP);
    cnst!("__HYPERVISOR_event_channel_op", HYPERVISOR_EVENT_CHANNEL_OP);
    cnst!("UVMF_INVLPG", UVMF_INVLPG);
    cnst!("XENVER_version", XENVER_VERSION);
    cnst!("DOMID_SELF", DOMID_SELF);
    // The C constant is an unsigned long that prints as a negative long long.
    cnst!("MACH2PHYS_VIRT_START", MACH2PHYS_VIRT_START as i64);
    cnst!("XEN_ELFNOTE_ENTRY", XEN_ELFNOTE_ENTRY);
    cnst!("XEN_ELFNOTE_HYPERCALL_PAGE", XEN_ELFNOTE_HYPERCALL_PAGE);
    cnst!("XEN_ELFNOTE_VIRT_BASE", XEN_ELFNOTE_VIRT_BASE);
    cnst!("XEN_ELFNOTE_PADDR_OFFSET", XEN_ELFNOTE_PADDR_OFFSET);
    cnst!("XEN_ELFNOTE_XEN_VERSION", XEN_ELFNOTE_XEN_VERSION);
    cnst!("XEN_ELFNOTE_GUEST_OS", XEN_ELFNOTE_GUEST_OS);
    cnst!("XEN_ELFNOTE_LOADER", XEN_ELFNOTE_LOADER);
    cnst!("GNTTABOP_map_grant_ref", GNTTABOP_MAP_GRANT_REF);
    cnst!("GNTTABOP_unmap_grant_ref", GNTTABOP_UNMAP_GRANT_REF);
    cnst!("GNTTABOP_setup_table", GNTTABOP_SETUP_TABLE);
    cnst!("GTF_permit_access", GTF_PERMIT_ACCESS);
    cnst!("GTF_readonly", GTF_READONLY);
    cnst!("GTF_reading", GTF_READING);
    cnst!("GTF_writing", GTF_WRITING);
    cnst!("GNTMAP_host_map", GNTMAP_HOST_MAP);
    cnst!("GNTMAP_readonly", GNTMAP_READONLY);
    cnst!("GNTTAB_NR_RESERVED_ENTRIES", GNTTAB_NR_RESERVED_ENTRIES);
    cnst!("GNTST_okay", GNTST_OKAY);
    cnst!("EVTCHNOP_bind_interdomain", EVTCHNOP_BIND_INTERDOMAIN);
    cnst!("EVTCHNOP_close", EVTCHNOP_CLOSE);
    cnst!("EVTCHNOP_send", EVTCHNOP_SEND);
    cnst!("EVTCHNOP_alloc_unbound", EVTCHNOP_ALLOC_UNBOUND);
    cnst!("EVTCHNOP_unmask", EVTCHNOP_UNMASK);
    cnst!("SCHEDOP_shutdown", SCHEDOP_SHUTDOWN);
    cnst!("SCHEDOP_poll", SCHEDOP_POLL);
    cnst!("SHUTDOWN_poweroff", SHUTDOWN_POWEROFF);
    cnst!("SHUTDOWN_crash", SHUTDOWN_CRASH);
    m
}

/// Compile and run the probe; its figures.
fn c_side() -> BTreeMap<String, i128> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("xen-pv-abi-probe");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("probe.c");
    let exe = dir.join("probe");
    std::fs::write(&src, PROBE).unwrap();
    let cc = Command::new("gcc")
        .args(["-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("gcc runs (install gcc and libxen-dev: .ci/run does)");
    assert!(
        cc.status.success(),
        "the probe does not compile against /usr/include/xen (is libxen-dev installed?):\n{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (key, value) = line.rsplit_once(' ').unwrap();
            (key.to_string(), value.parse().unwrap())
        })
        .collect()
}

#[test]
fn every_struct_offset_and_constant_matches_xens_headers() {
    let c = c_side();
    let rust = rust_side();
    let mut wrong = Vec::new();
    for (key, c_value) in &c {
        match rust.get(key) {
            Some(r) if r == c_value => {}
            Some(r) => wrong.push(format!("{key}: C {c_value}, Rust {r}")),
            None => wrong.push(format!("{key}: C {c_value}, not checked on the Rust side")),
        }
    }
    for key in rust.keys().filter(|k| !c.contains_key(*k)) {
        wrong.push(format!("{key}: not printed by the C probe"));
    }
    assert!(wrong.is_empty(), "ABI mismatches:\n{}", wrong.join("\n"));
    assert!(c.len() > 100, "the probe printed {} figures", c.len());
}
