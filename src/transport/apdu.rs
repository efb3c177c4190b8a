//! ISO 7816-4 command APDUs (short and extended), responses and status words.

use alloc::vec::Vec;
use core::fmt;

/// Why a byte string is not a well-formed command APDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApduError {
    /// Fewer than the four header bytes.
    #[error("APDU shorter than its 4-byte header ({0} bytes)")]
    TooShort(usize),
    /// The body length does not match any ISO 7816-4 case.
    #[error("APDU body of {0} bytes matches no ISO 7816-4 case")]
    BadLength(usize),
    /// Data longer than an extended APDU can carry.
    #[error("APDU data of {0} bytes exceeds 65535")]
    DataTooLong(usize),
    /// Le above 65536.
    #[error("Le {0} exceeds 65536")]
    LeTooLarge(u32),
}

/// The four ISO 7816-4 command cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// No data, no Le.
    Case1,
    /// No data, Le.
    Case2,
    /// Data, no Le.
    Case3,
    /// Data and Le.
    Case4,
}

impl Case {
    /// Whether the command carries Le.
    pub fn has_le(self) -> bool {
        matches!(self, Case::Case2 | Case::Case4)
    }
}

/// A parsed view of a command APDU.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Apdu<'a> {
    /// Class byte.
    pub cla: u8,
    /// Instruction byte.
    pub ins: u8,
    /// Parameter 1.
    pub p1: u8,
    /// Parameter 2.
    pub p2: u8,
    /// Command data (empty for cases 1 and 2).
    pub data: &'a [u8],
    /// Expected response length, 1..=65536 (`None` for cases 1 and 3).
    pub le: Option<u32>,
    extended: bool,
}

impl fmt::Debug for Apdu<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Data may carry MACs or cryptograms; print only its length.
        f.debug_struct("Apdu")
            .field("cla", &self.cla)
            .field("ins", &self.ins)
            .field("p1", &self.p1)
            .field("p2", &self.p2)
            .field("data_len", &self.data.len())
            .field("le", &self.le)
            .field("extended", &self.extended)
            .finish()
    }
}

impl<'a> Apdu<'a> {
    /// A command to be encoded; it is extended if the data or Le need it.
    pub fn new(cla: u8, ins: u8, p1: u8, p2: u8, data: &'a [u8], le: Option<u32>) -> Self {
        let extended = data.len() > 255 || le.is_some_and(|l| l > 256);
        Self {
            cla,
            ins,
            p1,
            p2,
            data,
            le,
            extended,
        }
    }

    /// Parses a command APDU (ISO 7816-4 §5.1), short or extended.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ApduError> {
        if bytes.len() < 4 {
            return Err(ApduError::TooShort(bytes.len()));
        }
        let (cla, ins, p1, p2) = (bytes[0], bytes[1], bytes[2], bytes[3]);
        let body = &bytes[4..];
        let short_le = |b: u8| if b == 0 { 256 } else { u32::from(b) };
        let ext_le = |hi: u8, lo: u8| {
            let v = u32::from(u16::from_be_bytes([hi, lo]));
            if v == 0 { 65536 } else { v }
        };
        let make = |data, le, extended| Apdu {
            cla,
            ins,
            p1,
            p2,
            data,
            le,
            extended,
        };
        match body.len() {
            0 => return Ok(make(&[][..], None, false)),
            1 => return Ok(make(&[][..], Some(short_le(body[0])), false)),
            _ => {}
        }
        if body[0] != 0 {
            // Short case 3 or 4.
            let lc = usize::from(body[0]);
            return match body.len() - 1 {
                n if n == lc => Ok(make(&body[1..], None, false)),
                n if n == lc + 1 => Ok(make(&body[1..1 + lc], Some(short_le(body[lc + 1])), false)),
                _ => Err(ApduError::BadLength(body.len())),
            };
        }
        // Extended: body[0] == 0.
        if body.len() == 3 {
            return Ok(make(&[][..], Some(ext_le(body[1], body[2])), true));
        }
        if body.len() < 3 {
            return Err(ApduError::BadLength(body.len()));
        }
        let lc = usize::from(u16::from_be_bytes([body[1], body[2]]));
        if lc == 0 {
            return Err(ApduError::BadLength(body.len()));
        }
        match body.len() - 3 {
            n if n == lc => Ok(make(&body[3..], None, true)),
            n if n == lc + 2 => Ok(make(
                &body[3..3 + lc],
                Some(ext_le(body[3 + lc], body[4 + lc])),
                true,
            )),
            _ => Err(ApduError::BadLength(body.len())),
        }
    }

    /// Which ISO 7816-4 case this command is.
    pub fn case(&self) -> Case {
        match (self.data.is_empty(), self.le.is_some()) {
            (true, false) => Case::Case1,
            (true, true) => Case::Case2,
            (false, false) => Case::Case3,
            (false, true) => Case::Case4,
        }
    }

    /// Whether the command uses extended length fields.
    pub fn is_extended(&self) -> bool {
        self.extended
    }

    /// The largest raw response (data ‖ SW) this command can draw.
    pub fn max_response(&self) -> usize {
        match self.le {
            Some(le) => le as usize + 2,
            // Case 1/3: the card should answer with SW only; allow a short response anyway.
            None => 256 + 2,
        }
    }

    /// Appends the encoded command to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), ApduError> {
        if self.data.len() > 65535 {
            return Err(ApduError::DataTooLong(self.data.len()));
        }
        if let Some(le) = self.le
            && (le == 0 || le > 65536)
        {
            return Err(ApduError::LeTooLarge(le));
        }
        out.extend_from_slice(&[self.cla, self.ins, self.p1, self.p2]);
        if !self.extended {
            if !self.data.is_empty() {
                out.push(self.data.len() as u8);
                out.extend_from_slice(self.data);
            }
            if let Some(le) = self.le {
                out.push((le & 0xFF) as u8); // 256 encodes as 00
            }
        } else {
            if !self.data.is_empty() {
                out.push(0);
                out.extend_from_slice(&(self.data.len() as u16).to_be_bytes());
                out.extend_from_slice(self.data);
            }
            if let Some(le) = self.le {
                if self.data.is_empty() {
                    out.push(0);
                }
                out.extend_from_slice(&((le & 0xFFFF) as u16).to_be_bytes()); // 65536 encodes as 0000
            }
        }
        Ok(())
    }

    /// The encoded command as a new vector.
    pub fn to_vec(&self) -> Result<Vec<u8>, ApduError> {
        let mut v = Vec::with_capacity(self.data.len() + 9);
        self.encode_into(&mut v)?;
        Ok(v)
    }
}

/// A two-byte status word SW1 SW2.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusWord(pub u16);

impl StatusWord {
    /// `90 00`.
    pub const OK: StatusWord = StatusWord(0x9000);

    /// From SW1 and SW2.
    pub fn new(sw1: u8, sw2: u8) -> Self {
        StatusWord(u16::from_be_bytes([sw1, sw2]))
    }
    /// SW1.
    pub fn sw1(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// SW2.
    pub fn sw2(self) -> u8 {
        (self.0 & 0xFF) as u8
    }
    /// Whether `(sw & mask) == pattern`; e.g. `63Cx` is pattern 0x63C0, mask 0xFFF0.
    pub fn matches(self, pattern: u16, mask: u16) -> bool {
        self.0 & mask == pattern & mask
    }
}

impl fmt::Debug for StatusWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SW({:04X})", self.0)
    }
}

impl fmt::Display for StatusWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04X}", self.0)
    }
}

/// A response APDU split into data and status word.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Response<'a> {
    /// Response data.
    pub data: &'a [u8],
    /// Status word.
    pub sw: StatusWord,
}

impl<'a> Response<'a> {
    /// Splits a raw response (data ‖ SW1 SW2); `None` if shorter than two bytes.
    pub fn parse(raw: &'a [u8]) -> Option<Self> {
        let n = raw.len().checked_sub(2)?;
        Some(Response {
            data: &raw[..n],
            sw: StatusWord::new(raw[n], raw[n + 1]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_short_case() {
        let c1 = Apdu::parse(&[0x00, 0xA4, 0x04, 0x00]).unwrap();
        assert_eq!(c1.case(), Case::Case1);
        let c2 = Apdu::parse(&[0x80, 0x5C, 0x00, 0x02, 0x04]).unwrap();
        assert_eq!((c2.case(), c2.le), (Case::Case2, Some(4)));
        let c3 = Apdu::parse(&[0x00, 0xA4, 0x00, 0x00, 0x02, 0x3F, 0x00]).unwrap();
        assert_eq!((c3.case(), c3.data), (Case::Case3, &[0x3F, 0x00][..]));
        let c4 = Apdu::parse(&[0x00, 0xA4, 0x04, 0x00, 0x01, 0xAA, 0x00]).unwrap();
        assert_eq!((c4.case(), c4.le), (Case::Case4, Some(256)));
    }

    #[test]
    fn rejects_inconsistent_lengths() {
        assert_eq!(Apdu::parse(&[0, 1, 2]), Err(ApduError::TooShort(3)));
        assert_eq!(
            Apdu::parse(&[0, 1, 2, 3, 5, 1]),
            Err(ApduError::BadLength(2))
        );
        assert_eq!(
            Apdu::parse(&[0, 1, 2, 3, 0, 0]),
            Err(ApduError::BadLength(2))
        );
    }

    #[test]
    fn extended_case4_round_trips() {
        let data = alloc::vec![0x5A; 300];
        let a = Apdu::new(0x00, 0xD6, 0x00, 0x00, &data, Some(1000));
        assert!(a.is_extended());
        let bytes = a.to_vec().unwrap();
        assert_eq!(&bytes[4..7], &[0x00, 0x01, 0x2C]);
        assert_eq!(Apdu::parse(&bytes).unwrap(), a);
    }

    #[test]
    fn status_word_patterns() {
        assert!(StatusWord(0x63C2).matches(0x63C0, 0xFFF0));
        assert!(!StatusWord(0x6382).matches(0x63C0, 0xFFF0));
        assert!(StatusWord(0x6110).matches(0x6100, 0xFF00));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Apdu::parse(&bytes);
        }

        #[test]
        fn encode_parse_round_trip(cla: u8, ins: u8, p1: u8, p2: u8,
                                   data in proptest::collection::vec(any::<u8>(), 0..400),
                                   le in proptest::option::of(1u32..=65536)) {
            let a = Apdu::new(cla, ins, p1, p2, &data, le);
            let bytes = a.to_vec().unwrap();
            let b = Apdu::parse(&bytes).unwrap();
            prop_assert_eq!(b.data, &data[..]);
            prop_assert_eq!(b.le, le);
            prop_assert_eq!(b.to_vec().unwrap(), bytes);
        }
    }
}
