//! The command lines of the tools, each defined once with clap's derive. The tools parse their
//! arguments with these definitions, and their man pages and shell completions are generated
//! from the same ones (`cargo xtask generate DIR`, see the README), so the three cannot drift
//! apart.
//!
//! Every tool reports a usage mistake the same way ([`parse_cli`]): one line on standard error,
//! `PROGRAM: what is wrong (see 'PROGRAM --help')`, and exit status 2. The line comes in one of
//! two wordings, each kept from before the tools shared a parser, so that the scripts and tests
//! that match those lines go on working: clap's own first sentence ([`clap_words`]: vchan-proxy
//! and vchan-perf, which were on clap already), or the plain words of the hand-written parsers
//! ([`plain_words`]: `unknown option "--x"`, `--dir is required`; vchan-cat, xensim, xs and
//! vchan-bench), which xensim and xs adjust where they always said it differently.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ColorChoice, Command, CommandFactory, FromArgMatches};
use xen_types::DomId;

pub mod vchan_bench;
pub mod vchan_cat;
pub mod vchan_perf;
pub mod vchan_proxy;
pub mod xensim;
pub mod xs;

/// Help opens with the usage, as Unix tools' does; the examples close it.
const HELP_TEMPLATE: &str = "usage: {usage}\n\n{about-with-newline}\n{all-args}{after-help}";

/// Every tool's command line, as its binary parses it: what the man pages and the shell
/// completions are generated from.
pub fn commands() -> Vec<Command> {
    vec![
        command::<vchan_bench::Cli>(),
        command::<vchan_cat::Cli>(),
        command::<vchan_perf::Cli>(),
        command::<vchan_proxy::Cli>(),
        command::<xensim::Cli>(),
        command::<xs::Cli>(),
    ]
}

/// The command line of `C` as the tools parse and show it: no colours (the lines end up in logs
/// and scripts), and the same help layout in every command and subcommand.
pub fn command<C: CommandFactory>() -> Command {
    styled(C::command())
}

fn styled(command: Command) -> Command {
    command
        .color(ColorChoice::Never)
        .help_template(HELP_TEMPLATE)
        .mut_subcommands(styled)
}

/// Parse this process's command line as `C`'s. `--help` and `--version` print to standard output
/// and give `Err(ExitCode::SUCCESS)`; a usage mistake is one line on standard error, `PROGRAM:
/// what is wrong (see 'PROGRAM --help')` worded by `word`, and `Err` with exit status 2.
///
/// ```no_run
/// # use std::process::ExitCode;
/// fn main() -> ExitCode {
///     let cli: tools::cli::xs::Cli = match tools::parse_cli(tools::cli::xs::word) {
///         Ok(cli) => cli,
///         Err(status) => return status,
///     };
///     // ... run the command
///     # let _ = cli;
///     ExitCode::SUCCESS
/// }
/// ```
pub fn parse_cli<C: CommandFactory + FromArgMatches>(
    word: fn(&Mistake) -> String,
) -> Result<C, ExitCode> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let mut command = command::<C>();
    let parsed = command
        .try_get_matches_from_mut(&args)
        .and_then(|matches| C::from_arg_matches(&matches).map_err(|e| e.format(&mut command)));
    let error = match parsed {
        Ok(cli) => return Ok(cli),
        Err(error) => error,
    };
    if !error.use_stderr() {
        // --help or --version.
        let _ = write!(std::io::stdout(), "{error}");
        return Err(ExitCode::SUCCESS);
    }
    let mistake = Mistake {
        error: &error,
        command: &command,
        args: args.get(1..).unwrap_or_default(),
    };
    let program = command.get_name();
    let _ = writeln!(
        std::io::stderr(),
        "{program}: {} (see '{program} --help')",
        word(&mistake)
    );
    Err(ExitCode::from(2))
}

/// Parse a domain id a tool can address: `0` to `32751` (DOMID_FIRST_RESERVED excluded).
pub fn parse_domid(text: &str) -> Result<DomId, String> {
    text.parse::<DomId>()
        .ok()
        .filter(|d| d.is_normal())
        .ok_or_else(|| format!("{text:?} is not a domain id (0 to 32751)"))
}

/// A usage mistake clap found on a command line, with what a tool needs to word it.
pub struct Mistake<'a> {
    error: &'a clap::Error,
    /// The tool's whole command (not only the subcommand the mistake is in).
    command: &'a Command,
    /// The command line, without the program's name.
    args: &'a [OsString],
}

impl Mistake<'_> {
    /// What kind of mistake.
    pub fn kind(&self) -> ErrorKind {
        self.error.kind()
    }

    /// The subcommands named on the command line, outermost first (`["peer", "server"]`).
    pub fn subcommands(&self) -> Vec<&str> {
        self.named_commands().1
    }

    /// The innermost subcommand named on the command line, the one the mistake is in.
    pub fn subcommand(&self) -> Option<&str> {
        self.subcommands().last().copied()
    }

    /// The innermost command named on the command line and the names that lead to it.
    fn named_commands(&self) -> (&Command, Vec<&str>) {
        let mut command = self.command;
        let mut path = Vec::new();
        for arg in self.args {
            if let Some(sub) = command.find_subcommand(arg) {
                path.push(sub.get_name());
                command = sub;
            }
        }
        (command, path)
    }

    /// The arguments concerned, named as the help names them (`--wait`, `-n`, `PATH`): the one
    /// given a bad value or none, or the required ones missing. Empty for an unknown argument or
    /// subcommand (see [`Mistake::value`]).
    pub fn arguments(&self) -> Vec<String> {
        if matches!(
            self.kind(),
            ErrorKind::UnknownArgument | ErrorKind::InvalidSubcommand
        ) {
            return Vec::new();
        }
        match self.error.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(arg)) => vec![argument_name(arg)],
            Some(ContextValue::Strings(args)) => args.iter().map(|a| argument_name(a)).collect(),
            _ => Vec::new(),
        }
    }

    /// The text at fault: the unknown argument or subcommand as given, or the value refused
    /// (empty when an option was given none).
    pub fn value(&self) -> Option<&str> {
        let context = match self.kind() {
            ErrorKind::UnknownArgument => ContextKind::InvalidArg,
            ErrorKind::InvalidSubcommand => ContextKind::InvalidSubcommand,
            _ => ContextKind::InvalidValue,
        };
        match self.error.get(context) {
            Some(ContextValue::String(value)) => Some(value),
            _ => None,
        }
    }

    /// Why a value was refused, in the words of its parser (`"12x" is not a size`).
    pub fn reason(&self) -> Option<String> {
        std::error::Error::source(self.error).map(ToString::to_string)
    }

    /// `missing command: a, b or c`, or `peer needs a command: server or client` when a
    /// subcommand was named (`head` is the first words of the first form).
    fn missing_command(&self, head: &str) -> String {
        let (command, path) = self.named_commands();
        let mut names: Vec<&str> = command
            .get_subcommands()
            .map(Command::get_name)
            .filter(|n| *n != "help")
            .collect();
        let list = match names.pop() {
            Some(last) if !names.is_empty() => format!("{} or {last}", names.join(", ")),
            Some(last) => last.to_owned(),
            None => return "missing arguments".to_owned(),
        };
        if path.is_empty() {
            format!("{head}: {list}")
        } else {
            format!("{} needs a command: {list}", path.join(" "))
        }
    }
}

/// clap's message, its first paragraph on one line (`unexpected argument '--bogus' found`).
pub fn clap_words(mistake: &Mistake) -> String {
    if mistake.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // clap would print the whole help: say what is missing instead.
        return mistake.missing_command("missing a command");
    }
    let text = mistake.error.to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = message.join(" ");
    message
        .strip_prefix("error: ")
        .unwrap_or(&message)
        .to_owned()
}

/// The plain wording: `unknown option "--x"`, `unknown command "x"`, `missing command: a or
/// b`, `--dir needs a value`, `--dir is required`, `--wait: "x" is not a number of seconds`;
/// clap's for the rarer mistakes.
pub fn plain_words(mistake: &Mistake) -> String {
    let arguments = mistake.arguments();
    let value = mistake.value().unwrap_or_default();
    match mistake.kind() {
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            mistake.missing_command("missing command")
        }
        ErrorKind::InvalidSubcommand => format!("unknown command {value:?}"),
        ErrorKind::UnknownArgument if value.starts_with('-') => {
            format!("unknown option {value:?}")
        }
        ErrorKind::UnknownArgument => format!("unexpected argument {value:?}"),
        ErrorKind::InvalidValue if value.is_empty() => match arguments.first() {
            Some(argument) => format!("{argument} needs a value"),
            None => clap_words(mistake),
        },
        ErrorKind::InvalidValue => {
            let valid = match mistake.error.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(valid)) => valid.join(", "),
                _ => return clap_words(mistake),
            };
            let argument = arguments.first().map_or("", String::as_str);
            format!("{argument}: {value:?} is not one of {valid}")
        }
        ErrorKind::ValueValidation => {
            let reason = mistake.reason().unwrap_or_default();
            // Our parsers name the value; clap's own (integers) do not.
            let reason = if reason.contains(&format!("{value:?}")) {
                reason
            } else {
                format!("{value:?}: {reason}")
            };
            match arguments.first() {
                Some(option) if option.starts_with('-') => format!("{option}: {reason}"),
                _ => reason,
            }
        }
        ErrorKind::MissingRequiredArgument => match arguments.split_first() {
            Some((first, rest)) if first.starts_with('-') => {
                let mut line = format!("{first} is required");
                match rest.split_last() {
                    None => {}
                    Some((last, [])) => line.push_str(&format!(", and so is {last}")),
                    Some((last, others)) => {
                        line.push_str(&format!(", and so are {} and {last}", others.join(", ")))
                    }
                }
                line
            }
            Some((first, _)) => match mistake.subcommand() {
                Some(sub) => format!("{sub} needs {first}"),
                None => format!("{first} is missing"),
            },
            None => clap_words(mistake),
        },
        _ => clap_words(mistake),
    }
}

/// An argument's name as the help gives it, from clap's rendering of it: `--wait <SECS>` is
/// `--wait`, `<PATH>` and `[PATH]` are `PATH`, `-- <COMMAND>...` is `COMMAND`.
fn argument_name(rendered: &str) -> String {
    let word = rendered
        .split_whitespace()
        .find(|w| *w != "--")
        .unwrap_or(rendered);
    word.trim_matches(|c| matches!(c, '<' | '>' | '[' | ']' | '.'))
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_names_lose_their_value_placeholders() {
        assert_eq!(argument_name("--wait <SECS>"), "--wait");
        assert_eq!(argument_name("-n <COUNT>"), "-n");
        assert_eq!(argument_name("<PATH>"), "PATH");
        assert_eq!(argument_name("[PATH]"), "PATH");
        assert_eq!(argument_name("<PERM>..."), "PERM");
        assert_eq!(argument_name("-- <COMMAND>..."), "COMMAND");
    }

    #[test]
    fn every_tool_definition_passes_clap_checks() {
        // clap checks a definition (duplicate names, bad settings) when it is built.
        for command in commands() {
            command.debug_assert();
        }
    }
}
