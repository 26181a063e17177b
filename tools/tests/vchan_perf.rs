//! `vchan-perf`: `table --quick` on a simulated host of its own prints every row with a positive
//! figure in every cell and writes an SVG; `report` turns measurement lines into the same table.
//! Speed is never asserted. The C columns (Debian's library and our drop-in under the same C
//! program) are measured when gcc and libxen-dev are installed, and must say n/a otherwise.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const XENSIM: &str = env!("CARGO_BIN_EXE_xensim");
const VCHAN_PERF: &str = env!("CARGO_BIN_EXE_vchan-perf");

/// The target profile directory, where cargo put `xensim` and where the stand-in libraries go.
fn profile_dir() -> PathBuf {
    Path::new(XENSIM)
        .parent()
        .expect("xensim lives in target/<profile>")
        .to_path_buf()
}

/// `xensim serve` needs the stand-in libraries next to it. They are built in a separate cargo
/// invocation: `--bin` filtering would skip a cdylib.
fn build_shims() {
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args([
        "build",
        "--quiet",
        "-p",
        "shim-xengnttab",
        "-p",
        "shim-xenevtchn",
        "--lib",
    ]);
    if profile_dir().file_name().is_some_and(|n| n == "release") {
        cargo.arg("--release");
    }
    let status = cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "cargo build of the stand-in libraries failed"
    );
}

/// Compile tests/c/vchan-perf.c when Debian's libxenvchan headers and a C compiler are present.
fn build_c_peer(out_dir: &Path) -> Option<PathBuf> {
    if !Path::new("/usr/include/libxenvchan.h").exists() {
        eprintln!("libxen-dev is not installed: the C columns are not measured");
        return None;
    }
    let out = out_dir.join("vchan-perf-c");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/c/vchan-perf.c");
    let output = match Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&source)
        .args(["-lxenvchan", "-lxenstore"])
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            eprintln!("no C compiler ({e}): the C columns are not measured");
            return None;
        }
    };
    assert!(
        output.status.success(),
        "cc failed to build {}: {}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(out)
}

/// The drop-in libxenvchan's directory (scripts/libxenvchan, in this test's profile), for its
/// column: built only when the C peer is there to run on it.
fn build_dropin() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/libxenvchan");
    let mut command = Command::new(script);
    if profile_dir().file_name().is_some_and(|n| n != "release") {
        command.arg("--debug");
    }
    let output = command.output().expect("run scripts/libxenvchan");
    assert!(
        output.status.success(),
        "scripts/libxenvchan failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("the directory, as the last line")
            .trim(),
    )
}

/// A simulated host with domain 1 in a directory of its own; stopped and removed on drop.
struct Host {
    dir: PathBuf,
    serve: Child,
}

impl Host {
    fn start(dir: PathBuf) -> Host {
        let _ = std::fs::remove_dir_all(&dir);
        let mut serve = Command::new(XENSIM)
            .args(["serve", "--dir"])
            .arg(&dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn xensim serve");
        let mut line = String::new();
        BufReader::new(serve.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read xensim's banner");
        let host = Host { dir, serve };
        assert!(
            line.starts_with("xensim: serving"),
            "xensim serve did not start: {line:?}"
        );
        let status = Command::new(XENSIM)
            .args(["create", "--domid", "1", "--dir"])
            .arg(&host.dir)
            .status()
            .expect("run xensim create");
        assert!(status.success(), "xensim create failed");
        host
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // SIGTERM lets xensim stop cleanly.
        let _ = Command::new("kill")
            .arg(self.serve.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.serve.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.serve.kill();
        let _ = self.serve.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run a command to the end, killing it after `limit`.
fn output_within(mut command: Command, limit: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect output")
}

/// The cells of the table row that starts with `| <first> | <second> |`.
fn row<'a>(table: &'a str, first: &str, second: &str) -> Vec<&'a str> {
    let cells = table
        .lines()
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect::<Vec<_>>()
        })
        .find(|c| c.len() > 2 && c[0] == first && c[1] == second)
        .unwrap_or_else(|| panic!("no row {first} / {second} in:\n{table}"));
    cells[2..].to_vec()
}

fn header<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect::<Vec<_>>()
        })
        .find(|c| c.first() == Some(&"ring") && c.get(1) == Some(&first))
        .unwrap_or_else(|| panic!("no table headed ring / {first} in:\n{table}"))[2..]
        .to_vec()
}

fn positive(cell: &str) -> bool {
    cell.parse::<f64>().is_ok_and(|v| v > 0.0 && v.is_finite())
}

#[test]
fn quick_table_has_every_row_and_a_positive_figure_in_every_cell() {
    build_shims();
    let work = std::env::temp_dir().join(format!("vchan-perf-test-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("create the work directory");
    let c_peer = build_c_peer(&work);
    let host = Host::start(work.join("xen"));
    let svg = work.join("table.svg");

    let mut command = Command::new(XENSIM);
    command
        .arg("run")
        .arg("--dir")
        .arg(&host.dir)
        .args([
            "--domid", "0", "--", VCHAN_PERF, "table", "--quick", "--svg",
        ])
        .arg(&svg);
    if let Some(c) = &c_peer {
        command.arg("--c-peer").arg(c);
        command.arg("--dropin").arg(build_dropin());
    }
    let out = output_within(command, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "vchan-perf table failed: {stderr}\n{stdout}"
    );

    assert!(stdout.contains("Machine: "), "no machine line:\n{stdout}");
    let columns = header(&stdout, "write");
    assert_eq!(
        columns,
        [
            "C",
            "drop-in",
            "drop-in/C",
            "ours",
            "ours/C",
            "C thr",
            "ours thr",
            "ours/C",
            "socketpair",
            "pipe",
            "TCP",
            "memcpy/2"
        ]
    );
    for ring in ["in-page", "64 KiB", "1 MiB"] {
        for write in ["4 KiB", "64 KiB"] {
            let cells = row(&stdout, ring, write);
            assert_eq!(cells.len(), columns.len(), "{ring} / {write}: {cells:?}");
            for (name, cell) in columns.iter().zip(&cells) {
                let c_column = matches!(*name, "C" | "drop-in" | "drop-in/C" | "ours/C" | "C thr");
                if c_column && c_peer.is_none() {
                    assert_eq!(*cell, "n/a", "{ring} / {write} {name} without a C peer");
                } else {
                    assert!(positive(cell), "{ring} / {write} {name}: {cell:?}");
                }
            }
        }
    }
    let columns = header(&stdout, "message");
    assert_eq!(
        columns,
        [
            "C",
            "drop-in",
            "ours",
            "C thr",
            "ours thr",
            "socketpair",
            "pipe",
            "TCP"
        ]
    );
    let cells = row(&stdout, "64 KiB", "64 B");
    for (name, cell) in columns.iter().zip(&cells) {
        if matches!(*name, "C" | "drop-in" | "C thr") && c_peer.is_none() {
            assert_eq!(*cell, "n/a");
            continue;
        }
        let (p50, p99) = cell.split_once(" / ").expect("p50 / p99");
        assert!(positive(p50) && positive(p99), "ping-pong {name}: {cell:?}");
    }

    // The proxy rows: the socket fed directly and our proxy pair (both ring sizes) carried the
    // stream (Xen's proxy is there when xen-utils is installed).
    for through in [
        "the Unix socket, fed directly",
        "vchan-proxy in dom0 -> vchan -> vchan-proxy in domain 1",
        "the same, the rings 1 MiB (--ring-size 1M)",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start_matches("| ").starts_with(through))
            .unwrap_or_else(|| panic!("no proxy row {through:?} in:\n{stdout}"));
        let gbs = line
            .trim()
            .trim_matches('|')
            .split('|')
            .nth(1)
            .map(str::trim);
        assert!(gbs.is_some_and(positive), "proxy row {through:?}: {line}");
    }

    let text = std::fs::read_to_string(&svg).expect("the SVG was written");
    assert!(
        text.starts_with("<svg") || text.starts_with("<?xml"),
        "not an SVG: {}",
        &text[..text.len().min(80)]
    );
    assert!(text.contains("<rect") && text.trim_end().ends_with("</svg>"));
    drop(host);
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn report_prints_the_table_from_measurement_lines_keeping_the_best_run() {
    let lines = "\
# gathered on real Xen
ours 65536 65536 stream 1000000000 500000000
ours 65536 65536 stream 1000000000 250000000
c 65536 65536 stream 1000000000 1000000000
ours 65536 64 pingpong 10000 20000 45000
c 65536 64 pingpong 10000 30000 60000
";
    let mut child = Command::new(VCHAN_PERF)
        .args(["report", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vchan-perf report");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(lines.as_bytes())
        .expect("feed the lines");
    let out = child.wait_with_output().expect("wait for vchan-perf");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(header(&stdout, "write"), ["C", "ours", "ours/C"]);
    // 4 GB/s is the better of the two runs of ours; C did 1 GB/s.
    assert_eq!(row(&stdout, "64 KiB", "64 KiB"), ["1.00", "4.00", "4.00"]);
    assert_eq!(header(&stdout, "message"), ["C", "ours"]);
    assert_eq!(
        row(&stdout, "64 KiB", "64 B"),
        ["30.0 / 60.0", "20.0 / 45.0"]
    );
}

#[test]
fn a_bad_line_is_one_error_line_naming_it() {
    let dir = std::env::temp_dir().join(format!("vchan-perf-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    let file = dir.join("lines");
    std::fs::write(
        &file,
        "ours 0 4096 stream 100 200\nours 0 4096 stream x 1\n",
    )
    .expect("write");
    let out = Command::new(VCHAN_PERF)
        .arg("report")
        .arg(&file)
        .output()
        .expect("run vchan-perf report");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("vchan-perf: ") && stderr.contains("line 2"),
        "{stderr}"
    );
}
