//! Shared pieces of the drop-in libxenvchan's tests (included with `#[path]` by each
//! `libxenvchan_*` test, after `xensim_support.rs` as `support`; a subdirectory, so cargo does
//! not take it for a test of its own): the drop-in built by
//! `scripts/libxenvchan`, the C programs of `tests/c` compiled against Debian's header, and
//! commands that run a program on one library or the other.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use super::support::{require, Host};

/// Which libxenvchan a program runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lib {
    /// Ours, by `LD_LIBRARY_PATH`.
    Dropin,
    /// Debian's `/usr/lib/x86_64-linux-gnu/libxenvchan.so.4.17`.
    Debian,
}

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The directory `scripts/libxenvchan` prints (built once per test process, in the profile the
/// tests were built in): it holds `libxenvchan.so.4.17`.
pub fn dropin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test knows its own path");
        let release = exe
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .is_some_and(|n| n == "release");
        let mut script = Command::new(workspace().join("scripts/libxenvchan"));
        if !release {
            script.arg("--debug");
        }
        let out = script.output().expect("run scripts/libxenvchan");
        assert!(
            out.status.success(),
            "scripts/libxenvchan failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).expect("the script prints a path");
        let dir = PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("the script prints the directory"),
        );
        assert!(
            dir.join("libxenvchan.so.4.17").exists(),
            "{} holds no libxenvchan.so.4.17",
            dir.display()
        );
        dir
    })
}

/// The drop-in's file itself.
pub fn dropin_library() -> PathBuf {
    dropin_dir()
        .join("libxenvchan.so.4.17")
        .canonicalize()
        .expect("resolve the drop-in's link")
}

/// `tests/c/NAME.c` compiled against Debian's headers and libraries, once per test process.
pub fn c_program(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    require(super::support::LIBXENVCHAN, "libxenvchan4.17");
    require("/usr/include/libxenvchan.h", "libxen-dev");
    let exe = std::env::current_exe().expect("the test knows its own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("libxenvchan-c");
    std::fs::create_dir_all(&dir).expect("create the C build directory");
    let out = dir.join(format!("{name}-{}", std::process::id()));
    let source = workspace().join(format!("tests/c/{name}.c"));
    let cc = Command::new("cc")
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&out)
        .arg(&source)
        .args(["-lxenvchan", "-lxenstore", "-lxenevtchn"])
        .output()
        .expect("run cc (install the Debian package gcc)");
    assert!(
        cc.status.success(),
        "cc failed to build {}: {}",
        source.display(),
        String::from_utf8_lossy(&cc.stderr)
    );
    built.insert(name.into(), out.clone());
    out
}

/// A command that runs `program args` as `domid` on `lib`.
pub fn run_on(host: &Host, domid: u16, lib: Lib, program: &Path, args: &[&str]) -> Command {
    let mut cmd = host.run_as(domid, program, args);
    match lib {
        // xensim run puts the stand-in Xen libraries first and keeps what follows.
        Lib::Dropin => cmd.env("LD_LIBRARY_PATH", dropin_dir()),
        Lib::Debian => cmd.env_remove("LD_LIBRARY_PATH"),
    };
    cmd
}

/// Wait until `domid`'s store holds `key` (a C client fails at once if the server has not
/// published yet).
pub fn wait_for_key(host: &Host, key: &str) {
    use xenstore::{TxId, XenStore};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let found = xenstore::client::Client::open_path(&host.dir.join("dom0.sock"))
            .ok()
            .and_then(|c| c.read(TxId::NONE, key).ok());
        if found.is_some() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nobody published {key}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The lines a probe printed, as "name value..." pairs.
pub fn lines(output: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(output)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The value a probe printed for `name` ("name value"), panicking with everything it printed if
/// it printed none.
pub fn value<'a>(lines: &'a [String], name: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("the probe printed no {name:?}: {lines:#?}"))
}

/// Every vchan server that served domain 1 from dom0 removed its keys at its close (C servers
/// remove their path, ours also the directories publishing created): nothing is left under
/// `/local/domain/0/data/vchan/1`.
pub fn assert_no_server_keys(host: &Host) {
    use xenstore::{Errno, TxId, XenStore};
    let store = xenstore::client::Client::open_path(&host.dir.join("dom0.sock"))
        .expect("connect to dom0's store");
    match store.directory(TxId::NONE, "/local/domain/0/data/vchan/1") {
        Ok(children) => assert!(children.is_empty(), "servers' keys left: {children:?}"),
        Err(e) if e.errno() == Some(Errno::ENOENT) => {}
        Err(e) => panic!("cannot list dom0's vchan directory: {e}"),
    }
}
