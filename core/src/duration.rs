//! Durations as operators write them on the command line and in settings.

use crate::Invalid;
use std::time::Duration;

/// `500ms`, `5s`, `10m`, `1h`, `90d` (key ages); a bare number is seconds.
pub fn parse(text: &str) -> Result<Duration, Invalid> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 5s or 10m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(format!("`{text}`: use ms, s, m, h or d").into()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| Invalid(format!("`{text}` is out of range")))
}

/// As operators write them, in the largest unit that divides it: `26h`, `90s`,
/// `500ms` (what [`parse`] reads back).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatted_durations_read_back() {
        for text in ["26h", "90m", "45s", "500ms", "0s"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert!(parse("5x").is_err());
        assert!(parse("99999999999999999999999h").is_err());
    }
}
