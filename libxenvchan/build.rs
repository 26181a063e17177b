//! Link the drop-in as `libxenvchan.so.4.17`, every export versioned `VERS_4.17.0`, against the
//! libraries Debian's links (`libxenstore.so.4`, `libxengnttab.so.1`, `libxenevtchn.so.1`).

include!("../shim/link_with_xen_versions.rs");

fn main() {
    link_with_xen_versions("libxenvchan", "libxenvchan.so.4.17");
    // By soname (`-l:libxenevtchn.so.1`), so the runtime packages are enough to link; the
    // imports then carry the versions of Xen's own libraries (VERS_1.0, VERS_1.2, VERS_3.0...).
    for library in ["libxenstore.so.4", "libxengnttab.so.1", "libxenevtchn.so.1"] {
        println!("cargo:rustc-link-lib=dylib:+verbatim={library}");
    }
}
