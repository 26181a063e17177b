//! `cargo xtask generate DIR` writes, for every tool, a man page per command and subcommand and
//! bash, zsh and fish completions, and each of them names every option, short and long, and
//! every subcommand of the tool's clap definition: what a packager installs documents the whole
//! command line. The man pages go through groff with its warnings on; bash's completion is run
//! the way bash runs it.

use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output};

use clap::Command;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("xtask-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every tool's command line, built (bin names and help flags filled in), as `generate` sees it.
fn tools() -> Vec<Command> {
    tools::cli::commands()
        .into_iter()
        .map(|command| {
            let mut command = command.disable_help_subcommand(true);
            command.build();
            command
        })
        .collect()
}

/// `command` and every subcommand below it.
fn all_commands(command: &Command) -> Vec<&Command> {
    let mut all = vec![command];
    for sub in command.get_subcommands() {
        all.extend(all_commands(sub));
    }
    all
}

/// A command's options as a shell user types them: `--wait`, `-N`.
fn options(command: &Command) -> Vec<(Option<char>, Option<&str>)> {
    command
        .get_arguments()
        .filter(|a| !a.is_positional() && !a.is_hide_set())
        .map(|a| (a.get_short(), a.get_long()))
        .collect()
}

fn generate(dir: &Path) -> Output {
    let out = Process::new(XTASK)
        .arg("generate")
        .arg(dir)
        .output()
        .expect("run xtask");
    assert!(
        out.status.success(),
        "xtask generate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The page as a reader sees it: groff's text rendering, warnings (`-ww`) an error.
fn render_man(page: &Path) -> String {
    let out = Process::new("groff")
        // Plain text: no escape sequences, no overstriking for bold and underlined words.
        .args(["-man", "-Tutf8", "-ww", "-rLL=200n", "-P-cbu"])
        .arg(page)
        .output()
        .unwrap_or_else(|e| panic!("groff ({e}): apt-get install groff-base"));
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && warnings.is_empty(),
        "{}: {warnings}",
        page.display()
    );
    // Hyphens, minus signs and quotes as typed.
    String::from_utf8_lossy(&out.stdout)
        .replace(['\u{2010}', '\u{2212}'], "-")
        .replace('\u{2018}', "`")
        .replace('\u{2019}', "'")
}

#[test]
fn every_man_page_and_completion_names_every_option_and_subcommand() {
    let dir = TempDir::new("all");
    let out = generate(&dir.0);
    let said = String::from_utf8_lossy(&out.stdout);
    let tools = tools();
    let pages: usize = tools.iter().map(|t| all_commands(t).len()).sum();
    assert!(
        said.contains(&format!(
            "{pages} man pages and {} completion",
            3 * tools.len()
        )),
        "{said}"
    );
    let names: Vec<&str> = tools.iter().map(Command::get_name).collect();
    assert_eq!(
        names,
        [
            "vchan-bench",
            "vchan-cat",
            "vchan-perf",
            "vchan-proxy",
            "xensim",
            "xs"
        ]
    );

    for tool in &tools {
        let name = tool.get_name();
        // One page per command, named as git names its subcommands' (xs-read.1), each naming
        // its own options and its subcommands.
        for command in all_commands(tool) {
            let page_name = command.get_display_name().unwrap_or(name);
            let page = dir.0.join(format!("man/man1/{page_name}.1"));
            let text = render_man(&page);
            let header = text.lines().next().unwrap_or_default();
            assert!(header.starts_with(&format!("{page_name}(1)")), "{header}");
            for (short, long) in options(command) {
                if let Some(long) = long {
                    assert!(
                        text.contains(&format!("--{long}")),
                        "{page_name}.1 lacks --{long}"
                    );
                }
                if let Some(short) = short {
                    assert!(
                        text.contains(&format!("-{short}")),
                        "{page_name}.1 lacks -{short}"
                    );
                }
            }
            for sub in command.get_subcommands() {
                let sub_page = format!("{page_name}-{}(1)", sub.get_name());
                assert!(text.contains(&sub_page), "{page_name}.1 lacks {sub_page}");
            }
        }
        // The top page carries the examples of --help, each line as written.
        let top = render_man(&dir.0.join(format!("man/man1/{name}.1")));
        let after_help = tool.get_after_help().map(ToString::to_string);
        let examples = after_help
            .as_deref()
            .and_then(|t| t.strip_prefix("Examples:\n"))
            .unwrap_or_else(|| panic!("{name} --help has no examples"));
        assert!(top.contains("\nEXAMPLES\n"), "{name}.1 has no EXAMPLES");
        // Each on a line of its own, as in --help (not run together into a paragraph).
        for line in examples.lines().take_while(|l| l.starts_with(' ')) {
            assert!(
                top.lines().any(|shown| shown.trim() == line.trim()),
                "{name}.1 lacks the example line {line:?}"
            );
        }

        let bash = read(&dir.0.join(format!("bash-completion/completions/{name}")));
        let zsh = read(&dir.0.join(format!("zsh/site-functions/_{name}")));
        let fish = read(&dir.0.join(format!("fish/vendor_completions.d/{name}.fish")));
        assert!(bash.contains(&format!("complete -F _{}", name.replace('-', "__"))));
        assert!(zsh.starts_with(&format!("#compdef {name}")), "_{name}");
        for command in all_commands(tool) {
            for (short, long) in options(command) {
                if let Some(long) = long {
                    let flag = format!("--{long}");
                    assert!(
                        bash.contains(&flag),
                        "bash completion of {name} lacks {flag}"
                    );
                    assert!(zsh.contains(&flag), "zsh completion of {name} lacks {flag}");
                    let fish_flag = format!("-l {long}");
                    assert!(fish.contains(&fish_flag), "fish: {name} lacks {fish_flag}");
                }
                if let Some(short) = short {
                    let flag = format!("-{short}");
                    assert!(
                        bash.contains(&flag),
                        "bash completion of {name} lacks {flag}"
                    );
                    assert!(zsh.contains(&flag), "zsh completion of {name} lacks {flag}");
                    let fish_flag = format!("-s {short}");
                    assert!(fish.contains(&fish_flag), "fish: {name} lacks {fish_flag}");
                }
            }
            for sub in command.get_subcommands() {
                for (shell, script) in [("bash", &bash), ("zsh", &zsh), ("fish", &fish)] {
                    assert!(
                        script.contains(sub.get_name()),
                        "{shell} completion of {name} lacks {}",
                        sub.get_name()
                    );
                }
            }
        }
    }
}

/// What bash's completion offers for `words`, the last being the word being completed.
fn bash_completes(script: &Path, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let program = format!(
        "source {script}\n\
         COMP_WORDS=({words})\n\
         COMP_CWORD={cword}\n\
         COMP_LINE='{line}'\n\
         COMP_POINT={point}\n\
         complete -p {tool} | grep -q -- '-F' || exit 3\n\
         func=$(complete -p {tool} | sed -E 's/.*-F ([^ ]+).*/\\1/')\n\
         \"$func\" {tool} '{current}' '{previous}'\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script = script.display(),
        words = words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        cword = words.len() - 1,
        point = line.len(),
        tool = words[0],
        current = words[words.len() - 1],
        previous = words[words.len().saturating_sub(2)],
    );
    let out = Process::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut offered: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    offered.sort();
    offered
}

#[test]
fn bash_completes_subcommands_and_their_options() {
    let dir = TempDir::new("bash");
    generate(&dir.0);
    let script = |tool: &str| dir.0.join(format!("bash-completion/completions/{tool}"));

    let offered = bash_completes(&script("xs"), &["xs", ""]);
    for sub in ["read", "write", "ls", "rm", "chmod", "watch"] {
        assert!(offered.iter().any(|o| o == sub), "xs <TAB>: {offered:?}");
    }
    let offered = bash_completes(&script("xensim"), &["xensim", "create", "--d"]);
    assert_eq!(offered, ["--dir", "--domid"], "xensim create --d<TAB>");
    let offered = bash_completes(&script("vchan-cat"), &["vchan-cat", "--w"]);
    assert_eq!(offered, ["--wait", "--write-min"], "vchan-cat --w<TAB>");
    let offered = bash_completes(&script("vchan-proxy"), &["vchan-proxy", "--max"]);
    assert_eq!(offered, ["--max-connections"], "vchan-proxy --max<TAB>");
}
