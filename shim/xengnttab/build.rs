//! Link the stand-in as `libxengnttab.so.1` with Xen's symbol versions.

include!("../link_with_xen_versions.rs");

fn main() {
    link_with_xen_versions("libxengnttab", "libxengnttab.so.1");
}
