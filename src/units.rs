//! Parsing of the human-friendly units used by flags and the config file:
//! durations such as `30s` or `5m` and sizes such as `16k` or `1m`.

use std::time::Duration;

/// The longest duration a flag takes: a year. Deadlines are the time now
/// plus a duration, which for the largest ones humantime reads would not
/// be a time at all (the process would stop on it).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a duration such as `30s`, `5m`, `1h30m` or `250ms`, up to
/// [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}); use forms like 30s, 5m, 250ms"))?;
    if duration > MAX_DURATION {
        return Err(format!("duration {text:?} is longer than a year"));
    }
    Ok(duration)
}

/// As [`parse_duration`], for a timeout: zero would time everything out at
/// once (every connection dropped, every request answered 504), which is
/// never what was meant.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!(
            "timeout {text:?} would end everything at once; give a duration above zero"
        )),
        duration => Ok(duration),
    }
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
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_past_a_year_and_zero_timeouts_are_refused() {
        assert_eq!(parse_duration("365d"), Ok(MAX_DURATION));
        let error = parse_duration("18446744073709551615s").unwrap_err();
        assert!(error.contains("longer than a year"), "{error}");
        assert!(parse_duration("366d").is_err());
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        let error = parse_timeout("0s").unwrap_err();
        assert!(error.contains("\"0s\""), "{error}");
        assert!(parse_timeout("0").is_err());
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
