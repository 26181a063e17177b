//! For a guest (`target_os = "none"`): put the image's linker script, `xen-pv.ld`, on the link
//! search path of whatever binary links this crate, which then links with `-Txen-pv.ld`.

fn main() {
    println!("cargo:rerun-if-changed=link/xen-pv.ld");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("link");
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
}
