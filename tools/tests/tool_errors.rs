//! Every failure vchan-cat, xs, xensim and vchan-perf can meet is one line on standard error that
//! says what happened and to what, once, with a status that says which kind: 2 for bad
//! arguments, 1 (or non-zero) for the rest. Bad arguments, no Xen, no server on a simulated
//! host, a peer killed mid-transfer, a full disk on standard output, a host that is not there, a
//! report file that is not there or is malformed. (vchan-proxy's are in `vchan_proxy_cli.rs`.)

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const CAT: &str = env!("CARGO_BIN_EXE_vchan-cat");
const XS: &str = env!("CARGO_BIN_EXE_xs");
const XENSIM: &str = env!("CARGO_BIN_EXE_xensim");
const PERF: &str = env!("CARGO_BIN_EXE_vchan-perf");
/// How long a program may take to fail.
const LIMIT: Duration = Duration::from_secs(10);
/// A xenstore that is nowhere, so that no daemon of this machine answers.
const NO_STORE: &str = "/nonexistent/tool-errors/socket";

/// A command with no simulated host and no xenstore daemon in its environment.
fn command(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove("XENSIM_DIR")
        .env_remove("XENSIM_DOMID")
        .env("XENSTORED_PATH", NO_STORE)
        .env("XENSTORED_RUNDIR", "/nonexistent/tool-errors")
        .stdin(Stdio::null());
    cmd
}

fn run(program: &str, args: &[&str]) -> Output {
    command(program, args).output().expect("run the program")
}

/// What is said twice in `line`, if anything: two consecutive `: `-separated parts alike
/// ("X: Y: Y"), or a part of 12 characters or more found twice in the line.
fn said_twice(line: &str) -> Option<String> {
    let parts: Vec<&str> = line.split(": ").map(str::trim).collect();
    if let Some(pair) = parts.windows(2).find(|pair| pair[0] == pair[1]) {
        return Some(pair[0].to_owned());
    }
    parts
        .into_iter()
        .find(|part| part.chars().count() >= 12 && line.matches(part).count() > 1)
        .map(str::to_owned)
}

/// The one line `tool` wrote on standard error, checked to be said once.
fn one_line(tool: &str, stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr).into_owned();
    assert_eq!(text.lines().count(), 1, "not one line: {text:?}");
    let line = text.trim_end().to_owned();
    assert!(line.starts_with(&format!("{tool}: ")), "{line}");
    if let Some(twice) = said_twice(&line) {
        panic!("{twice:?} said twice: {line}");
    }
    // Shown with --nocapture: the lines a user meets.
    eprintln!("{line}");
    line
}

/// Expect exit status `status` and one line containing every piece of `says`; returns the line.
fn fails(out: &Output, status: i32, tool: &str, says: &[&str]) -> String {
    let line = one_line(tool, &out.stderr);
    assert_eq!(out.status.code(), Some(status), "{line}");
    for piece in says {
        assert!(line.contains(piece), "no {piece:?} in: {line}");
    }
    line
}

#[test]
fn the_check_catches_a_cause_said_twice() {
    assert_eq!(said_twice("xs: cannot read /x: permission denied"), None);
    for (line, twice) in [
        ("tool: cannot open x: gone: gone", "gone"),
        (
            "xs: cannot connect: /nonexistent/sock: gone (no socket at /nonexistent/sock)",
            "/nonexistent/sock",
        ),
    ] {
        assert_eq!(said_twice(line).as_deref(), Some(twice), "{line}");
    }
}

#[test]
fn bad_arguments_are_one_line_status_2_and_point_at_help() {
    let cases: &[(&str, &str, &[&str], &str)] = &[
        (
            CAT,
            "vchan-cat",
            &["--bogus", "1", "2"],
            "unknown option \"--bogus\"",
        ),
        (CAT, "vchan-cat", &[], "got 0 arguments"),
        (CAT, "vchan-cat", &["1", "2", "3"], "got 3 arguments"),
        (CAT, "vchan-cat", &["x", "5"], "\"x\" is not a domain id"),
        (
            CAT,
            "vchan-cat",
            &["99999", "5"],
            "\"99999\" is not a domain id",
        ),
        (CAT, "vchan-cat", &["1", ""], "PORT|PATH argument is empty"),
        (
            CAT,
            "vchan-cat",
            &["-l", "--read-min", "12x", "1", "5"],
            "\"12x\" is not a size",
        ),
        (
            CAT,
            "vchan-cat",
            &["--wait", "abc", "1", "5"],
            "--wait: \"abc\" is not a number",
        ),
        (CAT, "vchan-cat", &["--wait"], "--wait needs a value"),
        (
            CAT,
            "vchan-cat",
            &["--read-min", "4k", "1", "5"],
            "are for the server (-l)",
        ),
        (
            CAT,
            "vchan-cat",
            &["-l", "--wait", "1", "1", "5"],
            "--wait is for the client",
        ),
        (
            CAT,
            "vchan-cat",
            &["vchan:/5"],
            "\"vchan:/5\" is not an endpoint",
        ),
        (CAT, "vchan-cat", &["tls+tcp://h:1"], "need certificates"),
        (XS, "xs", &[], "missing command"),
        (XS, "xs", &["bogus"], "unknown command \"bogus\""),
        (XS, "xs", &["read"], "wrong number of arguments for read"),
        (
            XS,
            "xs",
            &["write", "/x"],
            "wrong number of arguments for write",
        ),
        (
            XS,
            "xs",
            &["ls", "-q"],
            "ls takes [-p] and at most one PATH",
        ),
        (
            XS,
            "xs",
            &["chmod", "/x", "zz"],
            "invalid permission \"zz\"",
        ),
        (
            XS,
            "xs",
            &["watch", "/x", "-n", "abc"],
            "invalid count \"abc\"",
        ),
        (XS, "xs", &["watch", "-q"], "unknown option \"-q\""),
        (XENSIM, "xensim", &[], "missing command: serve, create"),
        (XENSIM, "xensim", &["bogus"], "unknown command \"bogus\""),
        (XENSIM, "xensim", &["create"], "--dir is required"),
        (
            XENSIM,
            "xensim",
            &["create", "--dir", "/nonexistent"],
            "--domid is required",
        ),
        (
            XENSIM,
            "xensim",
            &["create", "--dir", "/x", "--domid", "abc"],
            "\"abc\" is not a domain id",
        ),
        (
            XENSIM,
            "xensim",
            &["create", "--dir", "/x", "--domid", "40000"],
            "\"40000\" is not a domain id",
        ),
        (
            XENSIM,
            "xensim",
            &["create", "--bogus"],
            "unexpected argument \"--bogus\"",
        ),
        (XENSIM, "xensim", &["stats", "--dir"], "--dir needs a value"),
        (
            XENSIM,
            "xensim",
            &["run", "--dir", "/x", "--domid", "1"],
            "run needs a command after --",
        ),
        (
            XENSIM,
            "xensim",
            &["destroy", "--dir", "/x", "--domid", "0"],
            "dom0 cannot be destroyed",
        ),
        (
            PERF,
            "vchan-perf",
            &[],
            "missing a command: peer, table or report",
        ),
        (
            PERF,
            "vchan-perf",
            &["peer"],
            "peer needs a command: server, client, ops or loopback",
        ),
        (
            PERF,
            "vchan-perf",
            &["bogus"],
            "unrecognized subcommand 'bogus'",
        ),
        (
            PERF,
            "vchan-perf",
            &["report"],
            "required arguments were not provided: <FILE>",
        ),
        (
            PERF,
            "vchan-perf",
            &["report", "a", "b"],
            "unexpected argument 'b'",
        ),
        (
            PERF,
            "vchan-perf",
            &["table", "--bogus"],
            "unexpected argument '--bogus'",
        ),
        (
            PERF,
            "vchan-perf",
            &["table", "--runs", "0"],
            "0 is not in 1..=100",
        ),
        (
            PERF,
            "vchan-perf",
            &["peer", "server", "x", "1", "0", "stream", "3", "4"],
            "\"x\" is not a domain id",
        ),
        (
            PERF,
            "vchan-perf",
            &["peer", "client", "1", "x", "stream", "3", "4"],
            "invalid value 'x' for '<PORT>'",
        ),
        (
            PERF,
            "vchan-perf",
            &["peer", "client", "1", "1", "nope", "3", "4"],
            "invalid value 'nope' for '<MODE>'",
        ),
    ];
    for &(program, tool, args, says) in cases {
        let out = run(program, args);
        let line = fails(&out, 2, tool, &[says]);
        assert!(
            line.ends_with(&format!("(see '{tool} --help')")),
            "{tool} {args:?}: {line}"
        );
    }
}

#[test]
fn without_xen_or_xenstore_the_line_names_what_is_missing() {
    for args in [&["1", "5"][..], &["-l", "1", "5"]] {
        fails(
            &run(CAT, args),
            1,
            "vchan-cat",
            &["no Xen available", "/dev/xen/", "xensim run"],
        );
    }
    for name in ["vchan://5/7", "vchan://*/svc"] {
        let args: &[&str] = if name.contains('*') {
            &["-l", name]
        } else {
            &[name]
        };
        fails(
            &run(CAT, args),
            1,
            "vchan-cat",
            &[&format!("no Xen platform for {name}"), "xensim run"],
        );
    }
    // XENSIM_DIR set, but not by `xensim run`.
    let out = command(CAT, &["1", "5"])
        .env("XENSIM_DIR", "/nonexistent/tool-errors")
        .output()
        .unwrap();
    fails(
        &out,
        1,
        "vchan-cat",
        &["cannot use the simulated host", "XENSIM_DOMID"],
    );

    for args in [
        &["read", "/x"][..],
        &["write", "/x", "1"],
        &["ls"],
        &["watch", "/x"],
    ] {
        fails(
            &run(XS, args),
            1,
            "xs",
            &["cannot connect to xenstore", NO_STORE, "No such file"],
        );
    }
    // No XENSTORED_PATH: the socket in XENSTORED_RUNDIR, then the xenbus device.
    let out = command(XS, &["read", "/x"])
        .env_remove("XENSTORED_PATH")
        .output()
        .unwrap();
    let xenbus = ["/dev/xen/xenbus", "/proc/xen/xenbus"];
    if xenbus.iter().any(|p| Path::new(p).exists()) {
        // A Xen machine: its xenstore answers, and /x is not there or not readable.
        fails(&out, 1, "xs", &["/x"]);
    } else {
        fails(
            &out,
            1,
            "xs",
            &[
                "xenbus",
                "no daemon socket at /nonexistent/tool-errors/socket",
            ],
        );
    }

    fails(
        &run(PERF, &["table", "--quick"]),
        1,
        "vchan-perf",
        &["`table` runs on the simulated host", "xensim run"],
    );
}

#[test]
fn vchan_cat_cannot_reach_a_tcp_or_unix_endpoint() {
    // A port nobody listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("tcp://127.0.0.1:{port}");
    fails(
        &run(CAT, &[&target]),
        1,
        "vchan-cat",
        &[&format!("cannot connect to {target}: ")],
    );
    let socket = "unix:///nonexistent/tool-errors.sock";
    fails(
        &run(CAT, &[socket]),
        1,
        "vchan-cat",
        &[&format!("cannot connect to {socket}: No such file")],
    );
    fails(
        &run(CAT, &["-l", socket]),
        1,
        "vchan-cat",
        &[&format!("cannot listen on {socket}: No such file")],
    );
}

#[test]
fn xensim_without_a_host_says_where_it_looked() {
    let dir = "/nonexistent/tool-errors-host";
    let sock = format!("cannot reach the simulated Xen host at {dir}/xen.sock");
    for args in [
        &["stats", "--dir", dir][..],
        &["create", "--dir", dir, "--domid", "1"],
        &["destroy", "--dir", dir, "--domid", "1"],
        &["run", "--dir", dir, "--domid", "1", "--", "true"],
    ] {
        fails(&run(XENSIM, args), 1, "xensim", &[&sock, "xensim serve"]);
    }
    fails(
        &run(XENSIM, &["serve", "--dir", "/proc/tool-errors"]),
        1,
        "xensim",
        &["cannot start the host in /proc/tool-errors"],
    );
}

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tool-errors-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn vchan_perf_report_names_the_file_and_the_line() {
    fails(
        &run(PERF, &["report", "/nonexistent"]),
        1,
        "vchan-perf",
        &["cannot open /nonexistent: No such file"],
    );
    let dir = TempDir::new("report");
    let file = |name: &str, text: &str| {
        let path = dir.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let good = "ours 0 64 stream 1000 2000\n";
    let bad = file(
        "bad.txt",
        &format!("# figures\n{good}ours 0 64 strem 1 2\n"),
    );
    fails(
        &run(PERF, &["report", &bad]),
        1,
        "vchan-perf",
        &[
            &format!("{bad} line 3: expected IMPL"),
            "\"ours 0 64 strem 1 2\"",
        ],
    );
    let bad = file("number.txt", &format!("{good}\nours x 64 stream 1 2\n"));
    fails(
        &run(PERF, &["report", &bad]),
        1,
        "vchan-perf",
        &[&format!(
            "{bad} line 3: \"x\" is not a non-negative integer"
        )],
    );
    let bad = file("impl.txt", "rust 0 64 stream 1 2\n");
    fails(
        &run(PERF, &["report", &bad]),
        1,
        "vchan-perf",
        &[&format!("{bad} line 1: it does not start with ours")],
    );
    let empty = file("empty.txt", "# nothing\n\n");
    fails(
        &run(PERF, &["report", &empty]),
        1,
        "vchan-perf",
        &[&format!("{empty} holds no measurement lines")],
    );
    // The table is printed; the SVG cannot be written.
    let good = file("good.txt", good);
    let svg = "/nonexistent/tool-errors.svg";
    fails(
        &run(PERF, &["report", &good, "--svg", svg]),
        1,
        "vchan-perf",
        &[&format!("cannot write {svg}: No such file")],
    );
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = command(PERF, &["report", &good])
        .stdout(full)
        .output()
        .unwrap();
    fails(
        &out,
        1,
        "vchan-perf",
        &["cannot write standard output: No space left on device"],
    );
}

/// A child process killed (and reaped) on drop.
struct Kid(Child);

impl Kid {
    /// Wait for the exit, at most `LIMIT`; returns the status and standard error (if piped).
    fn finish(&mut self) -> (i32, Vec<u8>) {
        let deadline = Instant::now() + LIMIT;
        let status = loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "still running after {LIMIT:?}");
            thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = Vec::new();
        if let Some(mut pipe) = self.0.stderr.take() {
            pipe.read_to_end(&mut stderr).unwrap();
        }
        (status.code().expect("exited, not killed"), stderr)
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A simulated host (`xensim serve`) with domain 1, in a temporary directory. The Rust tools
/// load no C library, so empty stand-ins satisfy `xensim serve`'s check for them.
struct Host {
    serve: Kid,
    dir: TempDir,
}

impl Host {
    fn start(tag: &str) -> Host {
        let dir = TempDir::new(tag);
        let lib = dir.0.join("stand-ins");
        std::fs::create_dir_all(&lib).unwrap();
        for name in ["libxengnttab.so", "libxenevtchn.so"] {
            std::fs::write(lib.join(name), b"").unwrap();
        }
        let mut serve = Kid(command(XENSIM, &["serve", "--dir"])
            .arg(dir.0.join("host"))
            .env("XENSIM_LIB_DIR", &lib)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn xensim serve"));
        let mut banner = [0u8; 15];
        let read = serve.0.stdout.take().unwrap().read_exact(&mut banner);
        assert!(
            read.is_ok() && &banner == b"xensim: serving",
            "xensim serve did not start"
        );
        let host = Host { serve, dir };
        let out = host.xensim(&["create", "--domid", "1", "--name", "guest1"]);
        assert!(out.status.success(), "{out:?}");
        host
    }

    fn dir(&self) -> PathBuf {
        self.dir.0.join("host")
    }

    fn xensim(&self, args: &[&str]) -> Output {
        command(XENSIM, &args[..1])
            .arg("--dir")
            .arg(self.dir())
            .args(&args[1..])
            .output()
            .expect("run xensim")
    }

    /// `program args` as domain `domid` (`xensim run` execs it: the child is the program).
    fn run_as(&self, domid: u16, program: &str, args: &[&str]) -> Command {
        let mut cmd = command(XENSIM, &["run", "--dir"]);
        cmd.arg(self.dir())
            .args(["--domid", &domid.to_string(), "--", program])
            .args(args);
        cmd
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // SIGTERM lets it stop cleanly; Kid's drop kills it if it has not.
        let _ = Command::new("kill")
            .arg(self.serve.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && matches!(self.serve.0.try_wait(), Ok(None)) {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn on_a_simulated_host_no_server_no_domain_and_no_node_are_one_line() {
    let host = Host::start("noserver");
    let path = "no vchan server at /local/domain/1/data/vchan/0/9";
    let out = host.run_as(0, CAT, &["1", "9"]).output().unwrap();
    fails(
        &out,
        1,
        "vchan-cat",
        &["cannot connect to domain 1 at 9: ", path],
    );

    let started = Instant::now();
    let out = host
        .run_as(0, CAT, &["--wait", "0.5", "1", "9"])
        .output()
        .unwrap();
    fails(
        &out,
        1,
        "vchan-cat",
        &["cannot connect to domain 1 at 9: ", path],
    );
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "did not wait"
    );

    let out = host
        .run_as(0, CAT, &["--wait", "1", "vchan://1/nosuch"])
        .output()
        .unwrap();
    fails(&out, 1, "vchan-cat", &["no service at vchan://1/nosuch"]);
    let out = host
        .run_as(1, CAT, &["--wait", "0.2", "vchan://0/9"])
        .output()
        .unwrap();
    fails(
        &out,
        1,
        "vchan-cat",
        &[
            "cannot connect to vchan://0/9: ",
            "/local/domain/0/data/vchan/1/9",
        ],
    );

    // xs on the host: a node that is not there, one domain 1 may not read or write.
    let out = host.run_as(0, XS, &["read", "/nosuch"]).output().unwrap();
    fails(&out, 1, "xs", &["cannot read /nosuch: "]);
    let out = host
        .run_as(1, XS, &["read", "/local/domain/0/name"])
        .output()
        .unwrap();
    fails(&out, 1, "xs", &["cannot read /local/domain/0/name: "]);
    let out = host
        .run_as(1, XS, &["write", "/local/domain/0/x", "1"])
        .output()
        .unwrap();
    fails(&out, 1, "xs", &["cannot write /local/domain/0/x: "]);
    let out = host.run_as(0, XS, &["ls", "/nosuch"]).output().unwrap();
    fails(&out, 1, "xs", &["cannot list /nosuch: "]);

    // xensim against a host that does not know the domain, or knows it already.
    let out = host.run_as(7, CAT, &["1", "9"]).output().unwrap();
    fails(
        &out,
        1,
        "xensim",
        &["domain 7 does not exist", "xensim create"],
    );
    let out = host.xensim(&["create", "--domid", "1"]);
    fails(&out, 1, "xensim", &["domain 1 already exists"]);
    let out = host.xensim(&["destroy", "--domid", "5"]);
    fails(&out, 1, "xensim", &["domain 5 does not exist"]);
    let out = host
        .run_as(0, "/nonexistent/program", &[])
        .output()
        .unwrap();
    fails(
        &out,
        1,
        "xensim",
        &["cannot run /nonexistent/program: No such file"],
    );
}

#[test]
fn a_peer_killed_while_the_server_sends_is_one_line_said_once() {
    let host = Host::start("deadpeer");
    let mut server = Kid(host
        .run_as(0, CAT, &["-l", "1", "5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap());
    // 64 MiB, far more than the rings and pipes hold; EPIPE once the server is gone ends it.
    let mut input = server.0.stdin.take().unwrap();
    let feeder = thread::spawn(move || {
        let chunk = vec![0x5a_u8; 1 << 20];
        for _ in 0..64 {
            if input.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    // The client's standard input stays open; its standard output is read only a little, so the
    // server is still sending when the client dies.
    let mut client = Kid(host
        .run_as(1, CAT, &["--wait", "5", "0", "5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let mut first = [0u8; 4096];
    client
        .0
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .expect("the client receives");
    client.0.kill().unwrap(); // SIGKILL
    let (status, stderr) = server.finish();
    let line = one_line("vchan-cat", &stderr);
    assert_ne!(status, 0, "{line}");
    assert_eq!(line.matches("peer closed").count(), 1, "{line}");
    feeder.join().unwrap();
}

#[test]
fn a_full_disk_on_standard_output_is_one_line() {
    let host = Host::start("full");
    let mut server = Kid(host
        .run_as(0, CAT, &["-l", "1", "5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    server
        .0
        .stdin
        .as_mut()
        .unwrap()
        .write_all(&[b'x'; 1000])
        .unwrap();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut client = Kid(host
        .run_as(1, CAT, &["--wait", "5", "0", "5"])
        .stdin(Stdio::piped())
        .stdout(full)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap());
    let (status, stderr) = client.finish();
    let line = one_line("vchan-cat", &stderr);
    assert_eq!(status, 1, "{line}");
    assert!(
        line.starts_with("vchan-cat: cannot write standard output: "),
        "{line}"
    );
    assert_eq!(line.matches("No space left on device").count(), 1, "{line}");
}
