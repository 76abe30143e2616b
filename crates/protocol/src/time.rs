//! RFC 3339 timestamps with millisecond precision, in UTC.
//!
//! Events carry their time as milliseconds since the Unix epoch; this is the
//! one place that turns that number into the text clients see.

/// Formats `ms` (milliseconds since 1970-01-01T00:00:00Z) as
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_ms(ms: u64) -> String {
    let mut out = Vec::with_capacity(24);
    push_rfc3339_ms(&mut out, ms);
    // Only ASCII digits and separators were written.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends `ms` as [`rfc3339_ms`] formats it, without allocating: encoders
/// write a timestamp per field of every answer, and `format!` was a visible
/// share of their time.
pub fn push_rfc3339_ms(out: &mut Vec<u8>, ms: u64) {
    let secs = ms / 1000;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(secs / 86_400);
    if year > 9999 {
        // Wider than four digits: the rare slow path, same text.
        use std::io::Write;
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60,
            ms % 1000
        );
        return;
    }
    let mut buf = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut n: u64| {
        for i in (at..at + width).rev() {
            // `n % 10` is a single decimal digit.
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, rem / 3600);
    put(14, 2, (rem % 3600) / 60);
    put(17, 2, rem % 60);
    put(20, 3, ms % 1000);
    out.extend_from_slice(&buf);
}

/// Converts a count of days since 1970-01-01 to a proleptic Gregorian date,
/// using the well-known era-based algorithm (400-year cycles of 146,097 days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::rfc3339_ms;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_001), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(253_402_300_800_000), "10000-01-01T00:00:00.000Z");
    }

    /// The digit writer gives what `format!` gave, across eras and leap days.
    #[test]
    fn matches_the_formatted_text() {
        let mut ms = 7u64;
        while ms < 400_000_000_000_000 {
            let secs = ms / 1000;
            let rem = secs % 86_400;
            let (y, mo, d) = super::civil_from_days(secs / 86_400);
            let want = format!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                rem / 3600,
                (rem % 3600) / 60,
                rem % 60,
                ms % 1000
            );
            assert_eq!(rfc3339_ms(ms), want);
            ms = ms * 3 + 12_345_677;
        }
    }
}
