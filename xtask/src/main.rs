//! The workspace's build tasks, run from the source tree: `cargo xtask TASK` (an alias of `cargo
//! run --package xtask --`, in `.cargo/config.toml`).
//!
//! `generate DIR` writes the man pages and the bash, zsh and fish completions of every tool,
//! made from the same clap definitions the tools parse with (`tools::cli`), laid out as under
//! `/usr/share` (or `~/.local/share`):
//!
//! ```text
//! DIR/man/man1/vchan-cat.1 ...                 one page per command and subcommand (xs-read.1)
//! DIR/bash-completion/completions/vchan-cat   loaded on demand by bash-completion
//! DIR/zsh/site-functions/_vchan-cat           on zsh's $fpath
//! DIR/fish/vendor_completions.d/vchan-cat.fish
//! ```
//!
//! A packager runs it once on the build machine and installs the tree; it needs no target
//! binary, so it works for a cross build too.
#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Command, Parser, Subcommand};
use clap_complete::Shell;
use clap_mangen::roff::{roman, Roff};
use clap_mangen::Man;

const EXAMPLES: &str = "\
Examples:
  cargo xtask generate target/share                 look at what would be installed
  cargo xtask generate ~/.local/share               for this user (man, bash-completion and fish
                                                    look there; zsh needs it on $fpath)
  cargo xtask generate debian/tmp/usr/share         a package's tree";

/// The workspace's build tasks.
#[derive(Parser)]
#[command(name = "xtask", version, after_help = EXAMPLES)]
struct Cli {
    /// The task.
    #[command(subcommand)]
    task: Task,
}

/// The tasks.
#[derive(Subcommand)]
enum Task {
    /// Write every tool's man pages and shell completions under DIR, laid out as under
    /// /usr/share: man/man1, bash-completion/completions, zsh/site-functions,
    /// fish/vendor_completions.d.
    Generate {
        /// Where to write (created if missing; files of the same names are replaced).
        #[arg(value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
        dir: PathBuf,
    },
}

/// The shells with completions, and where each looks for them under a `share` directory.
const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "bash-completion/completions"),
    (Shell::Zsh, "zsh/site-functions"),
    (Shell::Fish, "fish/vendor_completions.d"),
];

/// The file name a shell's completion of `tool` has in its directory.
fn completion_file(shell: Shell, tool: &str) -> String {
    match shell {
        // bash-completion loads `completions/NAME` when NAME is first completed.
        Shell::Bash => tool.to_owned(),
        Shell::Zsh => format!("_{tool}"),
        Shell::Fish => format!("{tool}.fish"),
        other => format!("{tool}.{other}"),
    }
}

/// What `generate` wrote.
#[derive(Default)]
struct Written {
    pages: usize,
    completions: usize,
}

fn generate(dir: &Path) -> io::Result<Written> {
    let mut written = Written::default();
    let man1 = dir.join("man/man1");
    create_dir(&man1)?;
    for (_, sub) in SHELLS {
        create_dir(&dir.join(sub))?;
    }
    for command in tools::cli::commands() {
        let mut command = command.disable_help_subcommand(true);
        command.build();
        written.pages += man_pages(&command, &man1)?;
        let name = command.get_name().to_owned();
        for (shell, sub) in SHELLS {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, &name, &mut script);
            write_file(&dir.join(sub).join(completion_file(shell, &name)), &script)?;
            written.completions += 1;
        }
    }
    Ok(written)
}

fn create_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display())))
}

fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    fs::write(path, bytes)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

/// The man page of `command` (built) and of each of its subcommands (`xs-read.1`, as git's
/// are), in `man1`; returns how many.
fn man_pages(command: &Command, man1: &Path) -> io::Result<usize> {
    let mut pages = 0;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages += man_pages(sub, man1)?;
    }
    // clap_mangen sets the text after the options as one filled paragraph (EXTRA): the
    // examples get sections of their own, before VERSION.
    let after = command
        .get_after_long_help()
        .or(command.get_after_help())
        .map(|text| after_help(&text.to_string()).to_roff());
    let bare = command
        .clone()
        .after_help(None::<&str>)
        .after_long_help(None::<&str>);
    let man = Man::new(bare)
        .source(concat!("vchan-rs ", env!("CARGO_PKG_VERSION")))
        .manual("vchan-rs");
    let mut page = Vec::new();
    man.render(&mut page)?;
    let mut page = String::from_utf8_lossy(&page).into_owned();
    if let Some(after) = after {
        let at = page.find("\n.SH VERSION").map_or(page.len(), |i| i + 1);
        page.insert_str(at, &after);
    }
    write_file(&man1.join(man.get_filename()), page.as_bytes())?;
    Ok(pages + 1)
}

/// The text after the options in `--help`, as man sections: its `Examples:` block as EXAMPLES,
/// set as written (no filling: each example keeps its line), and what follows it as NOTES, in
/// filled paragraphs.
fn after_help(text: &str) -> Roff {
    let mut roff = Roff::new();
    let mut lines = text.lines().peekable();
    if lines.peek().is_some_and(|l| l.trim_end() == "Examples:") {
        lines.next();
        roff.control("SH", ["EXAMPLES"]);
        roff.control("nf", []);
        // The examples are indented lines, and blank lines between them.
        let mut examples = Vec::new();
        while let Some(line) = lines.next_if(|l| l.is_empty() || l.starts_with(' ')) {
            examples.push(line);
        }
        while examples.last().is_some_and(|l| l.is_empty()) {
            examples.pop();
        }
        for line in examples {
            roff.text([roman(line)]);
        }
        roff.control("fi", []);
    }
    let mut started = false;
    for line in lines {
        if !started {
            if line.trim().is_empty() {
                continue;
            }
            roff.control("SH", ["NOTES"]);
            started = true;
        }
        if line.trim().is_empty() {
            roff.control("PP", []);
        } else {
            roff.text([roman(line.trim())]);
        }
    }
    roff
}

fn main() -> ExitCode {
    let cli: Cli = match tools::parse_cli(tools::cli::plain_words) {
        Ok(cli) => cli,
        Err(status) => return status,
    };
    match cli.task {
        Task::Generate { dir } => match generate(&dir) {
            Ok(written) => {
                let _ = writeln!(
                    io::stdout(),
                    "xtask: {} man pages and {} completion scripts under {}",
                    written.pages,
                    written.completions,
                    dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                let _ = writeln!(io::stderr(), "xtask: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
