//! Sizes on the command line: `1048576`, `512KiB`, `2MB`, `2MiB`, `1GiB`.

/// Parses a byte count with an optional unit: `B`; `KB`, `MB`, `GB` (powers
/// of 1000); `KiB`, `MiB`, `GiB` (powers of 1024). Units are
/// case-insensitive and may follow a space (`2 MiB`).
pub fn parse(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let bad = || format!("{text:?} is not a size like 1048576, 512KiB, 2MB or 2MiB");
    let number: u64 = number.parse().map_err(|_| bad())?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000_u64.pow(2),
        "g" | "gb" => 1000_u64.pow(3),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// [`parse`], as a `usize` (for clap).
pub fn parse_usize(text: &str) -> Result<usize, String> {
    let n = parse(text)?;
    usize::try_from(n).map_err(|_| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_are_bytes() {
        assert_eq!(parse("1048576"), Ok(1_048_576));
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("17B"), Ok(17));
    }

    #[test]
    fn units_in_powers_of_1000_and_1024() {
        assert_eq!(parse("2MiB"), Ok(2 * 1024 * 1024));
        assert_eq!(parse("2MB"), Ok(2_000_000));
        assert_eq!(parse("512KiB"), Ok(512 * 1024));
        assert_eq!(parse("3kb"), Ok(3000));
        assert_eq!(parse("1GiB"), Ok(1 << 30));
        assert_eq!(parse("1G"), Ok(1_000_000_000));
        assert_eq!(parse(" 2 mib "), Ok(2 << 20));
    }

    #[test]
    fn refuses_what_is_not_a_size() {
        for bad in ["", "MiB", "2 parsecs", "-1", "1.5MiB", "2MiBs"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("not a size"), "{bad:?}: {e}");
        }
        assert!(parse("99999999999GiB").unwrap_err().contains("too large"));
    }
}
