//! Parsing of the human-friendly units used by flags and the config file:
//! durations such as `30s` or `5m` and sizes such as `16k` or `1m`.

use std::time::Duration;

/// Parses a duration such as `30s`, `5m`, `1h30m` or `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}); use forms like 30s, 5m, 250ms"))
}

/// Parses a byte size: a whole number with an optional binary suffix
/// `k`, `m` or `g` (case-insensitive, an optional trailing `b`/`ib`).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let error = || format!("invalid size {text:?}; use forms like 16k, 1m, 65536");
    let lower = text.trim().to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (digits, suffix) = lower.split_at(digits_end);
    let number: usize = digits.parse().map_err(|_| error())?;
    let multiplier: usize = match suffix.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(error()),
    };
    number.checked_mul(multiplier).ok_or_else(error)
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_common_forms() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn sizes_accept_suffixes_and_reject_garbage() {
        assert_eq!(parse_size("16k"), Ok(16 * 1024));
        assert_eq!(parse_size("1m"), Ok(1024 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("k").is_err());
        assert!(parse_size("12q").is_err());
        assert!(parse_size("99999999999999999999g").is_err());
    }
}
