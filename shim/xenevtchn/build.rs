//! Link the stand-in as `libxenevtchn.so.1` with Xen's symbol versions.

include!("../link_with_xen_versions.rs");

fn main() {
    link_with_xen_versions("libxenevtchn", "libxenevtchn.so.1");
}
