//! Parsers for the values of single flags (sizes, rates, -T mappings): text
//! in, a typed value or the message that says what is wrong with it out.
//! One reading of size suffixes serves every flag that takes a size.

use std::path::PathBuf;

/// PostgreSQL's 1024-based size units, as the tools spell them.
const KILO: u64 = 1024;
const MEGA: u64 = 1024 * KILO;
const GIGA: u64 = 1024 * MEGA;

/// A size as written on the command line: its number, and the multiplier
/// its suffix names (`k`, `M` or `G`, either case), if it has one.
fn split_unit(s: &str) -> (&str, Option<u64>) {
    match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], Some(KILO)),
        Some((i, 'm' | 'M')) => (&s[..i], Some(MEGA)),
        Some((i, 'g' | 'G')) => (&s[..i], Some(GIGA)),
        _ => (s, None),
    }
}

/// `--chunk-size`: a whole number of bytes, or of k, M or G (`8388608`,
/// `512k`, `8M`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = split_unit(s);
    let n: u64 = digits.parse().map_err(|_| {
        format!("invalid size \"{s}\": use a number with an optional k, M or G suffix")
    })?;
    n.checked_mul(mult.unwrap_or(1))
        .ok_or_else(|| format!("size \"{s}\" is too large"))
}

/// `-r/--max-rate`, read as pg_basebackup reads it: kB/s by default, or
/// with a `k` or `M` suffix; fractions allowed; 32 kB/s to 1 GB/s.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let invalid = || format!("invalid rate \"{s}\": use kB/s, or a k or M suffix");
    let (digits, unit) = match split_unit(s) {
        (_, Some(GIGA)) => return Err(invalid()),
        (digits, unit) => (digits, unit.unwrap_or(KILO)),
    };
    let n: f64 = digits.parse().map_err(|_| invalid())?;
    let bytes = (n * unit as f64) as u64;
    // pg_basebackup's bounds: 32 kB/s to 1 GB/s.
    if !(32 * KILO..=GIGA).contains(&bytes) {
        return Err(format!("rate \"{s}\" is out of range (32k to 1024M)"));
    }
    Ok(bytes)
}

/// `-T OLDDIR=NEWDIR`, parsed as pg_basebackup does: `\=` is a literal `=`.
pub fn parse_mapping(s: &str) -> Result<(PathBuf, PathBuf), String> {
    let mut old = String::new();
    let mut new = None::<String>;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let c = match c {
            '\\' if chars.peek() == Some(&'=') => chars.next().unwrap_or('='),
            '=' if new.is_none() => {
                new = Some(String::new());
                continue;
            }
            '=' => {
                return Err(format!(
                    "invalid tablespace mapping \"{s}\": multiple \"=\" signs"
                ));
            }
            c => c,
        };
        new.as_mut().unwrap_or(&mut old).push(c);
    }
    let new =
        new.ok_or_else(|| format!("invalid tablespace mapping \"{s}\": use OLDDIR=NEWDIR"))?;
    if !old.starts_with('/') || !new.starts_with('/') {
        return Err(format!(
            "invalid tablespace mapping \"{s}\": both directories must be absolute paths"
        ));
    }
    Ok((
        PathBuf::from(old.trim_end_matches('/')),
        PathBuf::from(new.trim_end_matches('/')),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8M").unwrap(), 8 << 20);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("8192").unwrap(), 8192);
        assert!(parse_size("8X").is_err());
        assert!(parse_size("1.5M").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
        assert!(parse_size("17179869184G").is_err(), "overflow");
    }

    #[test]
    fn rates_parse_like_pg_basebackup() {
        assert_eq!(parse_rate("100").unwrap(), 100 * 1024);
        assert_eq!(parse_rate("512k").unwrap(), 512 * 1024);
        assert_eq!(parse_rate("20M").unwrap(), 20 * 1024 * 1024);
        assert_eq!(parse_rate("1.5m").unwrap(), 1536 * 1024);
        assert!(parse_rate("1").is_err());
        assert!(parse_rate("2000M").is_err());
        assert!(parse_rate("1G").is_err(), "no G suffix for rates");
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn mappings() {
        assert_eq!(
            parse_mapping("/a/b=/c/").unwrap(),
            (PathBuf::from("/a/b"), PathBuf::from("/c"))
        );
        assert_eq!(
            parse_mapping("/a\\=b=/c").unwrap(),
            (PathBuf::from("/a=b"), PathBuf::from("/c"))
        );
        assert!(parse_mapping("/a=/b=/c").is_err());
        assert!(parse_mapping("/a").is_err());
        assert!(parse_mapping("relative=/x").is_err());
    }
}
