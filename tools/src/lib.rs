//! Pieces shared by the command-line tools.
#![forbid(unsafe_code)]

pub use conduit_vchan::describe;

/// Parse the command line with clap, the way every tool reports it: `--help` and `--version`
/// print to standard output and exit 0; a usage error is one line on standard error,
/// `PROGRAM: what is wrong (see 'PROGRAM --help')`, and exit status 2.
pub fn parse_cli<C: clap::Parser>(program: &str) -> Result<C, std::process::ExitCode> {
    use std::io::Write;
    match C::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if !e.use_stderr() => {
            let _ = write!(std::io::stdout(), "{e}");
            Err(std::process::ExitCode::SUCCESS)
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // clap would print the help (on one line, its first sentence): say what is missing.
            let _ = writeln!(
                std::io::stderr(),
                "{program}: {} (see '{program} --help')",
                missing_command(&C::command())
            );
            Err(std::process::ExitCode::from(2))
        }
        Err(e) => {
            // clap's message up to its usage section, on one line.
            let text = e.to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let message = message.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            let _ = writeln!(
                std::io::stderr(),
                "{program}: {message} (see '{program} --help')"
            );
            Err(std::process::ExitCode::from(2))
        }
    }
}

/// `missing a command: a, b or c` for the deepest command named on the command line.
fn missing_command(top: &clap::Command) -> String {
    let mut command = top;
    let mut path = Vec::new();
    for arg in std::env::args_os().skip(1) {
        if let Some(sub) = command.find_subcommand(&arg) {
            path.push(sub.get_name().to_owned());
            command = sub;
        }
    }
    let mut names: Vec<&str> = command
        .get_subcommands()
        .map(clap::Command::get_name)
        .filter(|n| *n != "help")
        .collect();
    let list = match names.pop() {
        Some(last) if !names.is_empty() => format!("{} or {last}", names.join(", ")),
        Some(last) => last.to_owned(),
        None => return "missing arguments".to_owned(),
    };
    if path.is_empty() {
        format!("missing a command: {list}")
    } else {
        format!("{} needs a command: {list}", path.join(" "))
    }
}

/// Parse a number of seconds (`10`, `0.5`): finite, not negative.
pub fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .map(std::time::Duration::from_secs_f64)
        .ok_or_else(|| format!("{text:?} is not a number of seconds"))
}

/// Parse a byte count with an optional binary suffix: `4096`, `64k`, `1M`, `2G` (powers of 1024).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let trimmed = text.trim();
    let (digits, shift) = match trimmed.char_indices().last() {
        Some((i, 'k' | 'K')) => (&trimmed[..i], 10),
        Some((i, 'm' | 'M')) => (&trimmed[..i], 20),
        Some((i, 'g' | 'G')) => (&trimmed[..i], 30),
        _ => (trimmed, 0),
    };
    let value: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 4096, 64k, 1M, 2G)"))?;
    value
        .checked_mul(1usize << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_suffixes_and_reject_nonsense() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        for bad in ["", "k", "-1", "1.5M", "12x", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
