//! The drop-in `libxenvchan.so.4.17` against Debian's: the same soname, exports and symbol
//! versions (`objdump -T`, `readelf -V`), the needed libraries, the struct's layout as gcc reads
//! Debian's header, Xen's own program binding every import to it, and the fields a live handle
//! shows a C program, on both ends of a channel whose other end is either library.

#[path = "xensim_support.rs"]
mod support;

#[path = "libxenvchan/support.rs"]
mod dropin;

// The drop-in's own declaration of the struct, to compare with what gcc makes of the header.
#[path = "../../libxenvchan/src/abi.rs"]
#[allow(dead_code)]
mod dropin_abi;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use dropin::{
    assert_no_server_keys, c_program, dropin_dir, dropin_library, lines, run_on, value,
    wait_for_key, Lib,
};
use support::{require, wait_for, Host, LIBXENVCHAN, SOCKET_PROXY};

fn tool(program: &str, args: &[&str], file: &Path) -> String {
    require(&format!("/usr/bin/{program}"), "binutils");
    let out = Command::new(program)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(name, version)` of every symbol the library defines (`objdump -T`, not `*UND*`).
fn exports(file: &Path) -> BTreeSet<(String, String)> {
    tool("objdump", &["-T"], file)
        .lines()
        .filter(|l| l.contains(" g ") && !l.contains("*UND*"))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let name = words.last()?;
            let version = words.get(words.len().checked_sub(2)?)?;
            Some((name.to_string(), version.to_string()))
        })
        .collect()
}

/// The dynamic section's entries of one tag (`NEEDED`, `SONAME`, `FLAGS`), values only.
fn dynamic(file: &Path, tag: &str) -> BTreeSet<String> {
    tool("readelf", &["-d"], file)
        .lines()
        .filter(|l| l.contains(&format!("({tag})")))
        .map(|l| {
            let value = l.split(&format!("({tag})")).nth(1).unwrap_or("").trim();
            value
                .trim_start_matches("Shared library: ")
                .trim_start_matches("Library soname: ")
                .trim_matches(['[', ']'])
                .to_string()
        })
        .collect()
}

/// The version definitions (`readelf -V`): "Flags: BASE ... Name: libxenvchan.so.4.17" etc.
fn version_definitions(file: &Path) -> Vec<String> {
    let text = tool("readelf", &["-V"], file);
    text.lines()
        .skip_while(|l| !l.starts_with("Version definition section"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.contains("Name:"))
        .map(|l| {
            let flags = l
                .split("Flags:")
                .nth(1)
                .and_then(|r| r.split_whitespace().next());
            let name = l.split("Name:").nth(1).map(str::trim);
            format!("{} {}", flags.unwrap_or("?"), name.unwrap_or("?"))
        })
        .collect()
}

#[test]
fn the_soname_exports_and_symbol_versions_are_debians() {
    require(LIBXENVCHAN, "libxenvchan4.17");
    let ours = dropin_library();
    let debian = Path::new(LIBXENVCHAN);

    assert_eq!(dynamic(&ours, "SONAME"), dynamic(debian, "SONAME"));
    assert_eq!(
        dynamic(&ours, "SONAME").into_iter().collect::<Vec<_>>(),
        ["libxenvchan.so.4.17"]
    );

    let (our_exports, debian_exports) = (exports(&ours), exports(debian));
    assert_eq!(
        our_exports, debian_exports,
        "the exported symbols and their versions differ from Debian's"
    );
    assert_eq!(
        our_exports.len(),
        14,
        "12 functions, close_xs_srv and the version node"
    );
    assert!(our_exports.iter().all(|(_, v)| v == "VERS_4.17.0"));

    assert_eq!(version_definitions(&ours), version_definitions(debian));
    assert_eq!(
        version_definitions(&ours),
        ["BASE libxenvchan.so.4.17", "none VERS_4.17.0"]
    );

    // Debian's needed libraries, all of them; beyond them only what Rust's runtime brings.
    let (needed, debian_needed) = (dynamic(&ours, "NEEDED"), dynamic(debian, "NEEDED"));
    assert!(
        debian_needed.is_subset(&needed),
        "ours needs {needed:?}, Debian's {debian_needed:?}"
    );
    let extra: BTreeSet<&str> = needed
        .difference(&debian_needed)
        .map(String::as_str)
        .collect();
    assert!(
        extra.is_subset(&BTreeSet::from(["libgcc_s.so.1", "ld-linux-x86-64.so.2"])),
        "unexpected needed libraries: {extra:?}"
    );
    // Bound at load, as Debian's is.
    assert!(dynamic(&ours, "FLAGS")
        .iter()
        .any(|f| f.contains("BIND_NOW")));
}

#[test]
fn the_struct_is_laid_out_as_debians_header_says() {
    use core::mem::{align_of, offset_of, size_of};
    use dropin_abi::{Libxenvchan, RingDescriptor};

    let out = Command::new(c_program("vchan-probe"))
        .arg("layout")
        .output()
        .expect("run the probe");
    assert!(out.status.success());
    let lines = lines(&out.stdout);
    let number = |name: &str| -> usize { value(&lines, name).parse().expect("a number") };
    assert_eq!(number("sizeof"), size_of::<Libxenvchan>());
    assert_eq!(number("alignof"), align_of::<Libxenvchan>());
    assert_eq!(number("gnt"), offset_of!(Libxenvchan, gnt));
    assert_eq!(number("gnttab"), offset_of!(Libxenvchan, gnt));
    assert_eq!(number("ring"), offset_of!(Libxenvchan, ring));
    assert_eq!(number("event"), offset_of!(Libxenvchan, event));
    assert_eq!(number("event_port"), offset_of!(Libxenvchan, event_port));
    assert_eq!(number("read"), offset_of!(Libxenvchan, read));
    assert_eq!(number("write"), offset_of!(Libxenvchan, write));
    assert_eq!(number("xs_path"), offset_of!(Libxenvchan, xs_path));
    assert_eq!(number("ring.shr"), offset_of!(RingDescriptor, shr));
    assert_eq!(number("ring.buffer"), offset_of!(RingDescriptor, buffer));
    assert_eq!(number("ring.order"), offset_of!(RingDescriptor, order));
    assert_eq!(number("ring.sizeof"), size_of::<RingDescriptor>());
    // The flag bits: byte offset * 256 + the bit, as the probe prints them.
    let flag = |byte: u8| dropin_abi::FLAGS_OFFSET * 256 + usize::from(byte);
    assert_eq!(number("is_server"), flag(dropin_abi::FLAG_IS_SERVER));
    assert_eq!(
        number("server_persist"),
        flag(dropin_abi::FLAG_SERVER_PERSIST)
    );
    assert_eq!(number("blocking"), flag(dropin_abi::FLAG_BLOCKING));
    assert_eq!(number("vchan_interface.left"), dropin_abi::LEFT_INDICES);
    assert_eq!(number("vchan_interface.right"), dropin_abi::RIGHT_INDICES);
}

/// Xen's own program (versioned imports, `BIND_NOW`, no RUNPATH) loads the drop-in by library
/// path alone: every libxenvchan import binds to it at `VERS_4.17.0`, and ld.so says nothing.
#[test]
fn vchan_socket_proxy_binds_every_import_to_the_dropin_silently() {
    require(SOCKET_PROXY, "xen-utils-4.17");
    let imports: BTreeSet<String> = tool("objdump", &["-T"], Path::new(SOCKET_PROXY))
        .lines()
        .filter(|l| l.contains("*UND*") && l.contains("libxenvchan_"))
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    assert_eq!(imports.len(), 9, "{imports:?}");
    let out = Command::new(SOCKET_PROXY)
        .arg("--no-such-option")
        .env("LD_LIBRARY_PATH", dropin_dir())
        .env("LD_DEBUG", "bindings")
        .output()
        .expect("run vchan-socket-proxy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("no version information"), "{stderr}");
    assert!(!stderr.contains("not found"), "{stderr}");
    let ours = dropin_dir().join("libxenvchan.so.4.17");
    let bound: BTreeSet<String> = stderr
        .lines()
        .filter(|l| l.contains(&format!("to {} [0]", ours.display())))
        .filter(|l| l.contains("[VERS_4.17.0]"))
        .filter_map(|l| l.split('`').nth(1)?.split('\'').next().map(str::to_owned))
        .collect();
    assert_eq!(
        bound, imports,
        "imports bound to the drop-in at VERS_4.17.0"
    );
    // It ran as far as its usage message: the library loaded.
    assert!(stderr.contains("usage:"), "{stderr}");
}

/// The expected order of the ring an end reads and writes, for the server's minimums.
fn orders(sizes: (usize, usize), server: bool) -> (u32, u32) {
    let layout = vchan::layout::Layout::for_min_sizes(sizes.0, sizes.1).expect("a valid layout");
    let (left, right) = (
        layout.order(vchan::layout::Side::Left) as u32,
        layout.order(vchan::layout::Side::Right) as u32,
    );
    if server {
        (left, right)
    } else {
        (right, left)
    }
}

/// Where an end's ring bytes are, as the probe prints them: in the control page (+offset) or on
/// pages of their own.
fn buffer(order: u32) -> String {
    match order {
        10 => "+1024".into(),
        11 => "+2048".into(),
        _ => "pages".into(),
    }
}

/// One end's fields and conversation, checked. Fixes the C library lacks are checked on the
/// drop-in only (Debian's leaves errno unset at the close, say).
fn check_end(lines: &[String], lib: Lib, server: bool, sizes: (usize, usize), path: &str) {
    let ctx = format!(
        "{lib:?} {}: {lines:#?}",
        if server { "server" } else { "client" }
    );
    let (read, write) = orders(sizes, server);
    let expect = |name: &str, want: &str| assert_eq!(value(lines, name), want, "{name}: {ctx}");
    expect("is_server", if server { "1" } else { "0" });
    expect("read.order", &read.to_string());
    expect("write.order", &write.to_string());
    expect("read.shr", if server { "+0" } else { "+8" });
    expect("write.shr", if server { "+8" } else { "+0" });
    expect("read.buffer", &buffer(read));
    expect("write.buffer", &buffer(write));
    expect("xs_path", if server { path } else { "NULL" });
    expect("live", if server { "cli 2 srv 1" } else { "cli 1 srv 1" });
    expect("gnt", "set");
    expect("fd_for_select", "matches");
    expect("notify-through-event", "0");
    expect("event_port", "set");
    expect("is_open", if server { "2" } else { "1" });
    if lib == Lib::Dropin {
        // The C library leaves both uninitialised; ours clears them.
        expect("blocking", "0");
        expect("server_persist", "0");
        assert!(value(lines, "cloexec").starts_with("all"), "{ctx}");
    }
    if server {
        expect("is_open-connected", "1");
        expect("nonblocking-read", "0");
        expect("nonblocking-recv", "0");
        expect("blocking-recv", "6 second");
        expect("is_open-after-close", "0");
        let after = value(lines, "read-after-close");
        assert!(after.starts_with("-1 "), "{ctx}");
        if lib == Lib::Dropin {
            assert_eq!(after, "-1 EPIPE", "{ctx}");
        }
    } else {
        assert!(lines.iter().any(|l| l == "sent second"), "{ctx}");
    }
    assert_eq!(lines.last().map(String::as_str), Some("done"), "{ctx}");
}

/// A server and a client probe at `path`, on the libraries given, each checking its fields and
/// talking to the other.
fn fields(host: &Host, server_lib: Lib, client_lib: Lib, sizes: (usize, usize), path: &str) {
    let probe = c_program("vchan-probe");
    let (rmin, wmin) = (sizes.0.to_string(), sizes.1.to_string());
    let mut server = run_on(
        host,
        0,
        server_lib,
        &probe,
        &["server", "1", path, &rmin, &wmin, "fields"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn the server probe");
    let absolute = format!("/local/domain/0/{path}");
    wait_for_key(host, &format!("{absolute}/event-channel"));
    let client = run_on(
        host,
        1,
        client_lib,
        &probe,
        &["client", "0", &absolute, "fields"],
    )
    .output()
    .expect("run the client probe");
    let status = wait_for(&mut server, Duration::from_secs(60), "the server probe");
    let mut server_out = Vec::new();
    std::io::Read::read_to_end(&mut server.stdout.take().unwrap(), &mut server_out).unwrap();
    let server_err = support::stderr_of(&mut server);
    assert!(status.success(), "server: {status}: {server_err}");
    assert!(
        client.status.success(),
        "client: {}: {}",
        client.status,
        String::from_utf8_lossy(&client.stderr)
    );
    check_end(&lines(&server_out), server_lib, true, sizes, path);
    check_end(&lines(&client.stdout), client_lib, false, sizes, path);
}

#[test]
fn a_handles_fields_are_true_on_both_ends_whichever_library_is_on_the_other() {
    let host = Host::start("dropin-fields", &[1]);
    let mut port = 20;
    for sizes in [(0, 0), (4096, 65536)] {
        for (server, client) in [
            (Lib::Dropin, Lib::Debian),
            (Lib::Debian, Lib::Dropin),
            (Lib::Dropin, Lib::Dropin),
        ] {
            fields(
                &host,
                server,
                client,
                sizes,
                &format!("data/vchan/1/{port}"),
            );
            port += 1;
        }
    }
    host.assert_clean();
    assert_no_server_keys(&host);
}

/// The C library builds `PATH/ring-ref` in 64-byte buffers, so a path over 49 characters is cut
/// short on both sides (libxenvchan/ABI.md §6). The drop-in takes any path xenstore does.
#[test]
fn a_long_xenstore_path_is_used_whole() {
    let host = Host::start("dropin-longpath", &[1]);
    let path = format!("data/vchan/1/{}", "long-path-".repeat(20));
    assert!(path.len() > 200);
    fields(&host, Lib::Dropin, Lib::Dropin, (0, 0), &path);
    host.assert_clean();
    assert_no_server_keys(&host);
}

/// Every failure of the init calls sets errno: a ring over 1 MiB is `EINVAL` (the C library
/// returns NULL with errno untouched), a path nobody published is `ENOENT`.
#[test]
fn init_failures_set_errno() {
    let host = Host::start("dropin-initerr", &[1]);
    let probe = c_program("vchan-probe");
    let run = |lib| {
        let out = run_on(&host, 0, lib, &probe, &["init-errors", "0"])
            .output()
            .expect("run the probe");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        lines(&out.stdout)
    };
    let ours = run(Lib::Dropin);
    assert_eq!(value(&ours, "server_init-oversize"), "NULL EINVAL");
    assert_eq!(value(&ours, "client_init-missing"), "NULL ENOENT");
    // What the fix is for: Debian's library says nothing about the first.
    let debian = run(Lib::Debian);
    assert_eq!(value(&debian, "server_init-oversize"), "NULL 0");
    assert_eq!(value(&debian, "client_init-missing"), "NULL ENOENT");
    host.assert_clean();
}

/// `server_persist`, written by the program between calls, as C programs (tklengyel/vchan-aes)
/// use it: the server stays open (`is_open` 1, a non-blocking read 0, not -1) when its first
/// client leaves, serves the next one on the same page, and ends once the flag is cleared.
/// Debian's library runs the same steps to the same results (but leaves errno at 0).
#[test]
fn server_persist_keeps_a_server_open_for_its_next_client() {
    use std::io::{BufRead, BufReader, Write};
    use vchan::xensim::XensimDomain;
    use vchan::{Address, Vchan};
    use xen_types::DomId;

    let host = Host::start("dropin-persist", &[1]);
    let guest = XensimDomain::new(&host.dir, DomId(1));
    for (lib, port) in [(Lib::Dropin, 40u32), (Lib::Debian, 41)] {
        let path = format!("data/vchan/1/{port}");
        let mut server = run_on(
            &host,
            0,
            lib,
            &c_program("vchan-probe"),
            &["server", "1", &path, "0", "0", "persist"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the probe");
        let mut out = BufReader::new(server.stdout.take().unwrap());
        let mut next_line = || {
            let mut line = String::new();
            out.read_line(&mut line).expect("read the probe");
            line.trim_end().to_owned()
        };
        wait_for_key(&host, &format!("/local/domain/0/{path}/event-channel"));
        let connect = || {
            Vchan::client(
                &guest,
                DomId(0),
                &Address::Port(port),
                Some(Duration::from_secs(20)),
            )
            .expect("connect to the probe")
        };
        let mut first = connect();
        first.write_all(b"one").unwrap();
        first.close().unwrap();
        assert_eq!(next_line(), "first one", "{lib:?}");
        assert_eq!(next_line(), "is_open-persist 1", "{lib:?}");
        assert_eq!(next_line(), "nonblocking-read-persist 0", "{lib:?}");
        let mut second = connect();
        second.write_all(b"two").unwrap();
        assert_eq!(next_line(), "second two", "{lib:?}");
        second.close().unwrap();
        let after = next_line();
        assert!(after.starts_with("read-after-close -1"), "{lib:?}: {after}");
        if lib == Lib::Dropin {
            assert_eq!(after, "read-after-close -1 EPIPE");
        }
        assert_eq!(next_line(), "is_open-after-close 0", "{lib:?}");
        assert_eq!(next_line(), "done", "{lib:?}");
        let status = wait_for(&mut server, Duration::from_secs(60), "the probe");
        assert!(
            status.success(),
            "{lib:?}: {}",
            support::stderr_of(&mut server)
        );
    }
    host.assert_clean();
    assert_no_server_keys(&host);
}
