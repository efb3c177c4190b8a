//! What a reader's signed query receipt says about a card.
//!
//! The reader runs the city's query script (sealed by the issuer, no keys, no commit
//! point) and signs the receipt: its fields are the card's own data as the card returned
//! it. The issuer reads them here, by name, after it has verified the receipt's
//! signature and the reader's certificate ([`crate::issuer::Issuer::verify_query`]).
//!
//! | field | CPU card | M1 card |
//! |---|---|---|
//! | `card_id` | application serial (8 bytes, EF 0015) | UID |
//! | `balance` | EP balance (fen) | value block (fen), when readable |
//! | `online_atc`, `offline_atc` | counters | — |
//! | `valid_from`, `valid_until` | BCD YYYYMMDD | — |
//! | `issuer_id`, `card_type` | EF 0015 | — |
//! | `now` | the reader's clock (BCD YYYYMMDDhhmmss, UTC) | same |
//! | `nonce` | the caller's challenge, echoed | same |

use crate::receipt::{FieldValue, Receipt};

/// A card as its query receipt describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardQuery {
    /// City of the query script.
    pub city: u32,
    /// The card's id (application serial or UID).
    pub card_id: Vec<u8>,
    /// Purse balance (fen), when the script read it.
    pub balance: Option<u64>,
    /// Online (load) counter.
    pub online_atc: Option<u64>,
    /// Offline (purchase) counter.
    pub offline_atc: Option<u64>,
    /// First valid day (BCD YYYYMMDD).
    pub valid_from: Option<[u8; 4]>,
    /// Last valid day (BCD YYYYMMDD).
    pub valid_until: Option<[u8; 4]>,
    /// When the reader ran it, unix seconds (from the signed `now` field).
    pub queried_at: u64,
    /// The echoed challenge.
    pub nonce: Vec<u8>,
}

/// Why a receipt is not a usable query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A field is missing or of the wrong type.
    #[error("query receipt field `{field}`: {problem}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

fn field_err(field: &'static str, problem: impl Into<String>) -> QueryError {
    QueryError::Field {
        field,
        problem: problem.into(),
    }
}

fn int(r: &Receipt, name: &'static str) -> Result<Option<u64>, QueryError> {
    match r.field(name) {
        None => Ok(None),
        Some(FieldValue::Int(v)) => Ok(Some(*v)),
        Some(FieldValue::Bytes(_)) => Err(field_err(name, "bytes where an integer belongs")),
    }
}

fn bytes<'a>(r: &'a Receipt, name: &'static str) -> Result<Option<&'a [u8]>, QueryError> {
    match r.field(name) {
        None => Ok(None),
        Some(FieldValue::Bytes(b)) => Ok(Some(b)),
        Some(FieldValue::Int(_)) => Err(field_err(name, "an integer where bytes belong")),
    }
}

fn date4(r: &Receipt, name: &'static str) -> Result<Option<[u8; 4]>, QueryError> {
    bytes(r, name)?
        .map(|b| {
            <[u8; 4]>::try_from(b).map_err(|_| field_err(name, format!("{} bytes, not 4", b.len())))
        })
        .transpose()
}

impl CardQuery {
    /// Reads the query fields of a receipt (whose signature the caller verified).
    pub fn from_receipt(r: &Receipt) -> Result<Self, QueryError> {
        let card_id = match bytes(r, "card_id")? {
            Some(b) if !b.is_empty() => b.to_vec(),
            _ => r.card_id.clone(),
        };
        if card_id.is_empty() {
            return Err(field_err(
                "card_id",
                "missing: the query did not read the card's id",
            ));
        }
        let now = bytes(r, "now")?.ok_or_else(|| field_err("now", "missing"))?;
        let queried_at = bcd_datetime_to_unix(now)
            .ok_or_else(|| field_err("now", "not a BCD date-time YYYYMMDDhhmmss"))?;
        Ok(CardQuery {
            city: r.city,
            card_id,
            balance: int(r, "balance")?,
            online_atc: int(r, "online_atc")?,
            offline_atc: int(r, "offline_atc")?,
            valid_from: date4(r, "valid_from")?,
            valid_until: date4(r, "valid_until")?,
            queried_at,
            nonce: bytes(r, "nonce")?.map(<[u8]>::to_vec).unwrap_or_default(),
        })
    }
}

fn bcd(b: u8) -> Option<u32> {
    let (hi, lo) = (b >> 4, b & 0x0F);
    (hi < 10 && lo < 10).then_some(u32::from(hi) * 10 + u32::from(lo))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A BCD date (`YYYYMMDD`, 4 bytes) or date-time (`YYYYMMDDhhmmss`, 7 bytes) as unix
/// seconds, UTC; `None` when a digit or a field is out of range.
pub fn bcd_datetime_to_unix(b: &[u8]) -> Option<u64> {
    if b.len() != 7 && b.len() != 4 {
        return None;
    }
    let year = bcd(b[0])? * 100 + bcd(b[1])?;
    let (month, day) = (bcd(b[2])?, bcd(b[3])?);
    let (h, mi, s) = if b.len() == 7 {
        (bcd(b[4])?, bcd(b[5])?, bcd(b[6])?)
    } else {
        (0, 0, 0)
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + s);
    u64::try_from(secs).ok()
}

/// Unix seconds as BCD `YYYYMMDDhhmmss` (UTC).
pub fn unix_to_bcd_datetime(t: u64) -> [u8; 7] {
    let days = i64::try_from(t / 86_400).unwrap_or(0);
    let rem = t % 86_400;
    // civil_from_days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let to_bcd = |v: i64| -> u8 {
        let v = v.rem_euclid(100) as u8;
        ((v / 10) << 4) | (v % 10)
    };
    [
        to_bcd(y / 100),
        to_bcd(y),
        to_bcd(m),
        to_bcd(d),
        to_bcd((rem / 3600) as i64),
        to_bcd((rem % 3600 / 60) as i64),
        to_bcd((rem % 60) as i64),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcd_datetime_round_trips() {
        // 2026-11-23T12:00:00Z = 1795435200.
        assert_eq!(
            bcd_datetime_to_unix(&[0x20, 0x26, 0x11, 0x23, 0x12, 0x00, 0x00]),
            Some(1_795_435_200)
        );
        for t in [0u64, 951_782_400, 1_795_435_200, 4_102_444_799] {
            assert_eq!(
                bcd_datetime_to_unix(&unix_to_bcd_datetime(t)),
                Some(t),
                "{t}"
            );
        }
        assert_eq!(
            bcd_datetime_to_unix(&[0x20, 0x26, 0x13, 0x01, 0, 0, 0]),
            None
        );
        assert_eq!(
            bcd_datetime_to_unix(&[0x20, 0x2A, 0x01, 0x01, 0, 0, 0]),
            None
        );
        assert_eq!(bcd_datetime_to_unix(&[0x20, 0x26, 0x01]), None);
    }

    #[test]
    fn query_needs_card_id_and_time() {
        let mut r = Receipt::new(731, 6, 1, "R1", crate::receipt::Outcome::Committed);
        assert!(matches!(
            CardQuery::from_receipt(&r),
            Err(QueryError::Field {
                field: "card_id",
                ..
            })
        ));
        r.fields.push((
            "card_id".into(),
            FieldValue::Bytes(vec![1, 2, 3, 4, 5, 6, 7, 8]),
        ));
        assert!(matches!(
            CardQuery::from_receipt(&r),
            Err(QueryError::Field { field: "now", .. })
        ));
        r.fields.push((
            "now".into(),
            FieldValue::Bytes(vec![0x20, 0x26, 0x11, 0x23, 0x12, 0x00, 0x00]),
        ));
        r.fields.push(("balance".into(), FieldValue::Int(500)));
        let q = CardQuery::from_receipt(&r).expect("query");
        assert_eq!(q.balance, Some(500));
        assert_eq!(q.queried_at, 1_795_435_200);
        r.fields
            .push(("online_atc".into(), FieldValue::Bytes(vec![1])));
        assert!(CardQuery::from_receipt(&r).is_err());
    }
}
