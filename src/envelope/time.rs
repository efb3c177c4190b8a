//! RFC 3339 date-times ↔ unix seconds, for envelope expiry (no clock access here).

use alloc::string::String;

/// Why a date-time string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeError {
    /// Not of the form `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
    #[error("not an RFC 3339 date-time (want e.g. 2030-01-01T00:00:00Z)")]
    Syntax,
    /// A field is out of range (month 13, 31 February, hour 24, ...).
    #[error("date-time field out of range")]
    Range,
    /// Before 1970-01-01T00:00:00Z.
    #[error("date-time before the unix epoch")]
    BeforeEpoch,
}

fn num(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |a, d| a * 10 + u64::from(d - b'0')))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u64) -> u64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses an RFC 3339 date-time to unix seconds (fractions of a second are
/// truncated; offsets are applied).
pub fn parse_rfc3339(s: &str) -> Result<u64, TimeError> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return Err(TimeError::Syntax);
    }
    let sep_ok = b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':';
    if !sep_ok {
        return Err(TimeError::Syntax);
    }
    let f = |r: core::ops::Range<usize>| num(&b[r]).ok_or(TimeError::Syntax);
    let (y, mo, d, h, mi, sec) = (
        f(0..4)?,
        f(5..7)?,
        f(8..10)?,
        f(11..13)?,
        f(14..16)?,
        f(17..19)?,
    );
    let y = y as i64;
    if !(1..=12).contains(&mo)
        || d == 0
        || d > days_in_month(y, mo)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return Err(TimeError::Range);
    }
    let mut rest = &b[19..];
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(TimeError::Syntax);
        }
        rest = &rest[1 + digits..];
    }
    let offset: i64 = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), oh1, oh2, b':', om1, om2] => {
            let oh = num(&[*oh1, *oh2]).ok_or(TimeError::Syntax)?;
            let om = num(&[*om1, *om2]).ok_or(TimeError::Syntax)?;
            if oh > 23 || om > 59 {
                return Err(TimeError::Range);
            }
            let o = (oh * 3600 + om * 60) as i64;
            if *sign == b'+' { o } else { -o }
        }
        _ => return Err(TimeError::Syntax),
    };
    let days = days_from_civil(y, mo as i64, d as i64);
    let t = days * 86_400 + (h * 3600 + mi * 60 + sec.min(59)) as i64 - offset;
    u64::try_from(t).map_err(|_| TimeError::BeforeEpoch)
}

/// Formats unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    let (y, m, d) = civil_from_days(days);
    alloc::format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Unix seconds as the 7 bytes of packed BCD `YYYYMMDD hhmmss` (UTC) that purse
/// commands and `bcd_datetime` fields carry; `None` past year 9999.
pub fn bcd_datetime(t: u64) -> Option<[u8; 7]> {
    let days = i64::try_from(t / 86_400).ok()?;
    let secs = t % 86_400;
    let (y, m, d) = civil_from_days(days);
    if y > 9999 {
        return None;
    }
    let bcd = |v: u64| ((v / 10) << 4 | (v % 10)) as u8;
    let y = y as u64;
    Some([
        bcd(y / 100),
        bcd(y % 100),
        bcd(u64::from(m)),
        bcd(u64::from(d)),
        bcd(secs / 3600),
        bcd((secs / 60) % 60),
        bcd(secs % 60),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2030-01-01T00:00:00Z"), Ok(1_893_456_000));
        assert_eq!(parse_rfc3339("2000-02-29T12:34:56Z"), Ok(951_827_696));
        assert_eq!(
            parse_rfc3339("2030-01-01T08:00:00+08:00"),
            Ok(1_893_456_000)
        );
        assert_eq!(parse_rfc3339("2030-01-01T00:00:00.999Z"), Ok(1_893_456_000));
        assert_eq!(format_rfc3339(1_893_456_000), "2030-01-01T00:00:00Z");
        assert_eq!(
            bcd_datetime(1_893_456_000 + 12 * 3600 + 34 * 60 + 56),
            Some([0x20, 0x30, 0x01, 0x01, 0x12, 0x34, 0x56])
        );
        assert_eq!(
            bcd_datetime(951_827_696),
            Some([0x20, 0x00, 0x02, 0x29, 0x12, 0x34, 0x56])
        );
        assert_eq!(bcd_datetime(253_402_300_800), None);
        assert_eq!(parse_rfc3339("2030-02-29T00:00:00Z"), Err(TimeError::Range));
        assert_eq!(parse_rfc3339("2030-13-01T00:00:00Z"), Err(TimeError::Range));
        assert_eq!(parse_rfc3339("2030-01-01 00:00:00"), Err(TimeError::Syntax));
        assert_eq!(parse_rfc3339("2030-01-01T00:00:00"), Err(TimeError::Syntax));
        assert_eq!(
            parse_rfc3339("1969-12-31T23:59:59Z"),
            Err(TimeError::BeforeEpoch)
        );
        assert_eq!(
            parse_rfc3339("２030-01-01T00:00:00Z"),
            Err(TimeError::Syntax)
        );
    }

    proptest! {
        #[test]
        fn round_trip(t in 0u64..253_402_300_799) {
            prop_assert_eq!(parse_rfc3339(&format_rfc3339(t)), Ok(t));
        }

        #[test]
        fn bcd_matches_rfc3339(t in 0u64..253_402_300_799) {
            let bcd = bcd_datetime(t).unwrap();
            let digits: String = bcd.iter().map(|b| alloc::format!("{b:02X}")).collect();
            let text: String = format_rfc3339(t).chars().filter(char::is_ascii_digit).collect();
            prop_assert_eq!(digits, text);
        }

        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = parse_rfc3339(&s);
        }
    }
}
