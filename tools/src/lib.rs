//! Pieces shared by the command-line tools.
#![forbid(unsafe_code)]

pub mod cli;

pub use cli::parse_cli;
pub use conduit_vchan::describe;

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
