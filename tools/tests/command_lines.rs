//! Every tool answers `--version` and `--help` (with examples and every option of its clap
//! definition), and parses the forms users type: `--opt=value` and `--opt value`, bundled short
//! flags, `--` before an argument that looks like an option. The usage mistakes themselves are
//! in `tool_errors.rs`.

use std::process::{Command, Output, Stdio};

const CAT: &str = env!("CARGO_BIN_EXE_vchan-cat");
const XENSIM: &str = env!("CARGO_BIN_EXE_xensim");
const XS: &str = env!("CARGO_BIN_EXE_xs");
const TOOLS: [(&str, &str); 6] = [
    ("vchan-bench", env!("CARGO_BIN_EXE_vchan-bench")),
    ("vchan-cat", CAT),
    ("vchan-perf", env!("CARGO_BIN_EXE_vchan-perf")),
    ("vchan-proxy", env!("CARGO_BIN_EXE_vchan-proxy")),
    ("xensim", XENSIM),
    ("xs", XS),
];

/// Run `program` with no simulated host and no xenstore in its environment.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env_remove("XENSIM_DIR")
        .env_remove("XENSIM_DOMID")
        .env("XENSTORED_PATH", "/nonexistent/command-lines/socket")
        .stdin(Stdio::null())
        .output()
        .expect("run the tool")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_tool_answers_version() {
    for (name, program) in TOOLS {
        for flag in ["--version", "-V"] {
            let out = run(program, &[flag]);
            assert!(out.status.success(), "{name} {flag}: {}", stderr(&out));
            assert_eq!(
                stdout(&out),
                format!("{name} {}\n", env!("CARGO_PKG_VERSION")),
                "{name} {flag}"
            );
        }
    }
}

#[test]
fn every_tool_helps_with_usage_examples_and_every_option() {
    let commands = tools::cli::commands();
    for (name, program) in TOOLS {
        let command = commands
            .iter()
            .find(|c| c.get_name() == name)
            .unwrap_or_else(|| panic!("{name} has no definition in tools::cli"));
        let out = run(program, &["--help"]);
        assert!(out.status.success(), "{name} --help: {}", stderr(&out));
        let help = stdout(&out);
        assert!(
            help.starts_with(&format!("usage: {name}")),
            "{name}: {help}"
        );
        assert!(help.contains("\nExamples:\n"), "{name} --help: no examples");
        for arg in command.get_arguments().filter(|a| !a.is_positional()) {
            if let Some(long) = arg.get_long() {
                assert!(help.contains(&format!("--{long}")), "{name} lacks --{long}");
            }
            if let Some(short) = arg.get_short() {
                assert!(help.contains(&format!("-{short}")), "{name} lacks -{short}");
            }
        }
        for sub in command.get_subcommands() {
            let out = run(program, &[sub.get_name(), "--help"]);
            assert!(out.status.success(), "{name} {} --help", sub.get_name());
            let help = stdout(&out);
            assert!(
                help.starts_with(&format!("usage: {name} {}", sub.get_name())),
                "{name} {}: {help}",
                sub.get_name()
            );
        }
    }
}

/// The one line `program` wrote on standard error for `args`, with its exit status.
fn refusal(program: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = run(program, args);
    let text = stderr(&out);
    assert_eq!(text.lines().count(), 1, "{args:?}: {text:?}");
    (out.status.code(), text.trim_end().to_owned())
}

#[test]
fn options_take_their_value_after_an_equals_sign_or_in_the_next_word() {
    let (status, line) = refusal(CAT, &["--wait=abc", "1", "5"]);
    assert_eq!(status, Some(2));
    assert!(
        line.contains("--wait: \"abc\" is not a number of seconds"),
        "{line}"
    );
    assert_eq!(refusal(CAT, &["--wait", "abc", "1", "5"]).1, line);

    let (status, line) = refusal(XENSIM, &["create", "--dir=/x", "--domid=40000"]);
    assert_eq!(status, Some(2));
    assert!(
        line.contains("--domid: \"40000\" is not a domain id"),
        "{line}"
    );
    let (_, spaced) = refusal(XENSIM, &["create", "--dir", "/x", "--domid", "40000"]);
    assert_eq!(spaced, line);
}

#[test]
fn short_flags_bundle_and_double_dash_ends_the_options() {
    // -lN is -l -N: a server, so --wait is refused as a client's option.
    let (status, line) = refusal(CAT, &["-lN", "--wait", "1", "1", "5"]);
    assert_eq!(status, Some(2));
    assert!(line.contains("--wait is for the client"), "{line}");
    // After --, "-5" is the DOMID argument, not an option.
    let (status, line) = refusal(CAT, &["--", "-5", "7"]);
    assert_eq!(status, Some(2));
    assert!(line.contains("\"-5\" is not a domain id"), "{line}");
    let (status, line) = refusal(CAT, &["-5", "7"]);
    assert_eq!(status, Some(2));
    assert!(line.contains("unknown option \"-5\""), "{line}");

    // xs write takes a VALUE that starts with a dash, as it always did; it then needs a store.
    let (status, line) = refusal(XS, &["write", "/x", "-1"]);
    assert_eq!(status, Some(1), "{line}");
    assert!(line.contains("cannot connect to xenstore"), "{line}");
}
