//! Conformance: Xen's own programs talking to OUR daemon.
//!
//! Each test starts a private daemon in a temp dir and points the program at its dom0 socket with
//! `XENSTORED_PATH`. A missing program fails the test with the Debian package to install:
//! `xen-utils-4.17` (test-xenstore), `xenstore-utils` (xenstore-read & co), `libxen-dev` (the C
//! library and headers), `python3-pyxs`.

mod common;

use common::{require, run, run_ok, LineChild, TempDir};
use std::path::Path;
use std::process::Command;
use xenstore::client::Client;
use xenstore::daemon::{Daemon, DaemonHandle};
use xenstore::{Access, DomId, Perm, TxId, XenStore};

const TEST_XENSTORE: &str = "/usr/lib/xen-4.17/bin/test-xenstore";

fn start(dir: &TempDir) -> DaemonHandle {
    Daemon::spawn(&dir.path().join("run")).expect("start our daemon")
}

/// A command pointed at the daemon's dom0 socket.
fn cmd(daemon: &DaemonHandle, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    c.env("XENSTORED_PATH", daemon.socket_path(DomId(0)));
    c.env_remove("XENSTORED_RUNDIR");
    c
}

fn utils(daemon: &DaemonHandle, tool: &str) -> Command {
    let path = require(&format!("/usr/bin/{tool}"), "xenstore-utils");
    cmd(daemon, path)
}

fn client(daemon: &DaemonHandle) -> Client {
    Client::open_path(&daemon.socket_path(DomId(0))).expect("connect")
}

/// Every test of Xen's test-xenstore, once and repeated, and two instances at once.
#[test]
fn xen_test_xenstore_passes_all_its_tests() {
    let program = require(TEST_XENSTORE, "xen-utils-4.17");
    let dir = TempDir::new("txs");
    let daemon = start(&dir);

    let listing = run_ok(cmd(&daemon, &program).arg("-l"));
    let names: Vec<String> = listing
        .lines()
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_owned())
        .collect();
    assert!(
        names.len() >= 12,
        "test-xenstore lists {} tests:\n{listing}",
        names.len()
    );

    let out = run_ok(&mut cmd(&daemon, &program));
    for name in &names {
        let line = out
            .lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name.as_str()))
            .unwrap_or_else(|| panic!("test {name:?} did not run:\n{out}"));
        assert!(!line.contains("failed"), "test {name:?} failed: {line}");
    }

    // Each test 25 times, and two instances racing (their transactions conflict and retry).
    let a = cmd(&daemon, &program)
        .args(["-i", "25"])
        .stdout(std::process::Stdio::piped())
        .spawn();
    let b = run(cmd(&daemon, &program).args(["-i", "25"]));
    let a = common::wait_bounded(
        a.expect("start test-xenstore"),
        "test-xenstore -i 25",
        common::TIMEOUT,
    );
    for out in [a, b] {
        assert!(
            out.status.success(),
            "test-xenstore -i 25: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // Its random mode for a second.
    run_ok(cmd(&daemon, &program).args(["-r", "1"]));

    // It cleans up after itself; so must the daemon have let it.
    let leftovers: Vec<String> = daemon
        .paths()
        .into_iter()
        .filter(|p| p.contains("xenstore-test"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[test]
fn xenstore_utils_read_write_ls_list_exists_chmod_rm() {
    let dir = TempDir::new("utl");
    let daemon = start(&dir);

    run_ok(utils(&daemon, "xenstore-write").args(["/conf/a", "1", "/conf/b", "two words"]));
    assert_eq!(
        run_ok(utils(&daemon, "xenstore-read").args(["/conf/a", "/conf/b"])),
        "1\ntwo words\n"
    );
    assert!(run(utils(&daemon, "xenstore-exists").arg("/conf/a"))
        .status
        .success());
    assert!(!run(utils(&daemon, "xenstore-exists").arg("/conf/zz"))
        .status
        .success());
    assert_eq!(
        run_ok(utils(&daemon, "xenstore-list").arg("/conf")),
        "a\nb\n"
    );
    assert_eq!(
        run_ok(utils(&daemon, "xenstore-ls").arg("/conf")),
        "a = \"1\"\nb = \"two words\"\n"
    );
    let tree = run_ok(&mut utils(&daemon, "xenstore-ls"));
    assert!(
        tree.starts_with("local = \"\"\n domain = \"\"\ntool = \"\"\n"),
        "xenstore-ls /:\n{tree}"
    );

    run_ok(utils(&daemon, "xenstore-chmod").args(["/conf/a", "n0", "r5"]));
    let perms = client(&daemon).get_perms(TxId::NONE, "/conf/a").unwrap();
    assert_eq!(
        perms,
        [
            Perm::new(DomId(0), Access::None),
            Perm::new(DomId(5), Access::Read)
        ]
    );
    let ls = run_ok(utils(&daemon, "xenstore-ls").args(["-p", "/conf"]));
    assert!(
        ls.lines().next().is_some_and(|l| l.ends_with("(n0,r5)")),
        "xenstore-ls -p:\n{ls}"
    );

    // Relative paths are dom0's home.
    run_ok(utils(&daemon, "xenstore-write").args(["rel/key", "v"]));
    assert_eq!(
        client(&daemon)
            .read(TxId::NONE, "/local/domain/0/rel/key")
            .unwrap(),
        b"v"
    );

    run_ok(utils(&daemon, "xenstore-rm").arg("/conf/a"));
    assert!(!run(utils(&daemon, "xenstore-exists").arg("/conf/a"))
        .status
        .success());
    let failed = run(utils(&daemon, "xenstore-read").arg("/conf/a"));
    assert!(!failed.status.success());
    // Invalid paths are refused by the daemon (EINVAL), not just by the tool.
    assert!(
        !run(utils(&daemon, "xenstore-write").args(["/bad path", "v"]))
            .status
            .success()
    );
    run_ok(utils(&daemon, "xenstore-rm").arg("/conf"));
    assert!(!daemon.paths().iter().any(|p| p.starts_with("/conf")));
}

#[test]
fn xenstore_watch_sees_the_initial_event_and_later_changes() {
    let dir = TempDir::new("wat");
    let daemon = start(&dir);
    let watch = require("/usr/bin/xenstore-watch", "xenstore-utils");
    let mut watcher = LineChild::spawn(cmd(&daemon, watch).args(["-n", "3", "/w"]));
    assert_eq!(watcher.next_line(), "/w");
    let c = client(&daemon);
    c.write(TxId::NONE, "/w/x", b"1").unwrap();
    c.write(TxId::NONE, "/elsewhere", b"1").unwrap();
    c.rm(TxId::NONE, "/w/x").unwrap();
    assert_eq!(watcher.next_line(), "/w/x");
    assert_eq!(watcher.next_line(), "/w/x");
    let status = watcher.wait();
    assert!(status.success(), "xenstore-watch exited with {status}");
}

/// A C program using Xen's libxenstore: transactions (retry and conflict), watches, permissions,
/// DIRECTORY_PART, introduce/release. Compiled at test time.
#[test]
fn libxenstore_c_program_transactions_watches_and_domains() {
    require("/usr/include/xenstore.h", "libxen-dev");
    let cc = ["/usr/bin/cc", "/usr/bin/gcc"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| panic!("no C compiler: install the Debian package gcc"));
    let dir = TempDir::new("cpr");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/xs_txn_watch.c");
    let exe = dir.path().join("xs_txn_watch");
    run_ok(
        Command::new(cc)
            .arg("-o")
            .arg(&exe)
            .arg(&source)
            .arg("-lxenstore"),
    );

    let daemon = start(&dir);
    let out = run_ok(&mut cmd(&daemon, &exe));
    assert!(out.ends_with("ALL OK\n"), "{out}");
    assert!(
        !daemon.socket_path(DomId(7)).exists(),
        "released domain's socket was removed"
    );
    assert!(!daemon
        .paths()
        .iter()
        .any(|p| p.starts_with("/cprog") || p.starts_with("/cbig")));
}

#[test]
fn pyxs_client_read_write_perms_transaction_watch() {
    require(
        "/usr/lib/python3/dist-packages/pyxs/__init__.py",
        "python3-pyxs",
    );
    // Debian's interpreter, where the package lives (not whatever python3 is first on PATH).
    let python = require("/usr/bin/python3", "python3");
    let dir = TempDir::new("pyx");
    let daemon = start(&dir);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/pyxs_check.py");
    let out = run_ok(
        cmd(&daemon, python)
            .arg(script)
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME"),
    );
    assert!(out.ends_with("ALL OK\n"), "{out}");
}

/// A guest domain introduced over the wire gets its own socket, sees relative paths under its
/// home and cannot read dom0's nodes; xenstore-read through that socket obeys the same rules.
#[test]
fn introduced_guest_socket_is_unprivileged_for_xen_tools() {
    let dir = TempDir::new("gst");
    let daemon = start(&dir);
    let c = client(&daemon);
    c.write(TxId::NONE, "/secret", b"s").unwrap();
    c.introduce(DomId(12), 0, 0).unwrap();
    c.mkdir(TxId::NONE, "/local/domain/12").unwrap();
    c.set_perms(
        TxId::NONE,
        "/local/domain/12",
        &[Perm::new(DomId(12), Access::None)],
    )
    .unwrap();
    let guest_sock = daemon.socket_path(DomId(12));
    let as_guest = |tool: &str| {
        let mut c = utils(&daemon, tool);
        c.env("XENSTORED_PATH", &guest_sock);
        c
    };
    run_ok(as_guest("xenstore-write").args(["data", "mine"]));
    assert_eq!(
        c.read(TxId::NONE, "/local/domain/12/data").unwrap(),
        b"mine"
    );
    assert_eq!(
        c.get_perms(TxId::NONE, "/local/domain/12/data").unwrap(),
        [Perm::new(DomId(12), Access::None)]
    );
    let denied = run(as_guest("xenstore-read").arg("/secret"));
    assert!(!denied.status.success(), "a guest read dom0's node");
    c.release(DomId(12)).unwrap();
    assert!(!guest_sock.exists());
}
