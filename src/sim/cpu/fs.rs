//! The ISO 7816-4 file system of the simulated CPU card (epurse.md "APDUs" rows SELECT by
//! AID, SELECT by FID, READ BINARY (SFI), READ RECORD (SFI), GET CHALLENGE, VERIFY PIN;
//! "Card files").
//!
//! ```text
//! MF 3F00 ("1PAY.SYS.DDF01")
//! └── DF 1001, AID A00000000386980701 (the purse)
//!     ├── EF 0015 (SFI 15) public information, 30 bytes binary
//!     ├── EF 0017 (SFI 17) CAPP records, 4 × 48 bytes
//!     └── EF 0018 (SFI 18) transaction log, cyclic, 10 × 23 bytes, newest first
//! ```

use alloc::vec::Vec;

use super::{Core, Df, PURSE_AID};
use crate::transport::Apdu;

const MF_NAME: &[u8] = b"1PAY.SYS.DDF01";
/// FID of EF 0015 / SFI 0x15.
pub(crate) const EF_PUBLIC: u16 = 0x0015;
/// FID of the CAPP file / SFI 0x17.
pub(crate) const EF_CAPP: u16 = 0x0017;
/// FID of EF 0018 / SFI 0x18.
pub(crate) const EF_LOG: u16 = 0x0018;

impl Core {
    /// The 30 bytes of EF 0015 (layout in [`super::PublicInfo`]).
    pub(crate) fn public_info_bytes(&self) -> [u8; 30] {
        let p = &self.state.public_info;
        let mut b = [0u8; 30];
        b[0..2].copy_from_slice(&p.issuer);
        b[2..4].copy_from_slice(&p.city);
        b[4..6].copy_from_slice(&p.industry);
        b[8] = p.card_type;
        b[9] = p.app_version;
        // Serial right-aligned in bytes 10..20, so an 8-byte serial is at bytes 12–19.
        let sn = &self.state.card_number;
        let n = sn.len().min(10);
        b[20 - n..20].copy_from_slice(&sn[sn.len() - n..]);
        b[20..24].copy_from_slice(&p.valid_from);
        b[24..28].copy_from_slice(&p.valid_to);
        b
    }

    fn push_fci(out: &mut Vec<u8>, name: &[u8], prop: &[u8]) {
        // 6F L 84 L name A5 L prop
        let inner = 2 + name.len() + 2 + prop.len();
        out.extend_from_slice(&[0x6F, inner as u8, 0x84, name.len() as u8]);
        out.extend_from_slice(name);
        out.extend_from_slice(&[0xA5, prop.len() as u8]);
        out.extend_from_slice(prop);
    }

    fn select_mf(&mut self, out: &mut Vec<u8>) -> u16 {
        self.vol.df = Df::Mf;
        self.vol.ef = None;
        // A verified PIN lasts for the current selection only.
        self.vol.pin_ok = false;
        // A5: 88 01 01 (SFI of the directory file).
        Self::push_fci(out, MF_NAME, &[0x88, 0x01, 0x01]);
        0x9000
    }

    fn select_purse(&mut self, out: &mut Vec<u8>) -> u16 {
        self.vol.df = Df::Purse;
        self.vol.ef = None;
        // A verified PIN lasts for the current selection only.
        self.vol.pin_ok = false;
        // A5: 9F08 01 02 (application version).
        Self::push_fci(
            out,
            &PURSE_AID,
            &[0x9F, 0x08, 0x01, self.state.public_info.app_version],
        );
        0x9000
    }

    /// SELECT: `00 A4 04 00 Lc AID 00` or `00 A4 00 00 02 FID`.
    pub(crate) fn select(&mut self, apdu: &Apdu<'_>, out: &mut Vec<u8>) -> u16 {
        match (apdu.p1, apdu.p2) {
            (0x04, 0x00) => {
                if apdu.data.is_empty() {
                    return 0x6700;
                }
                if apdu.data == PURSE_AID {
                    self.select_purse(out)
                } else if apdu.data == MF_NAME {
                    self.select_mf(out)
                } else {
                    0x6A82
                }
            }
            (0x00, 0x00) => {
                let [hi, lo] = apdu.data else {
                    return 0x6700;
                };
                match (u16::from_be_bytes([*hi, *lo]), self.vol.df) {
                    (0x3F00, _) => self.select_mf(out),
                    (0x1001, _) => self.select_purse(out),
                    (fid @ (EF_PUBLIC | EF_CAPP | EF_LOG), Df::Purse) => {
                        // EFs answer without FCI.
                        self.vol.ef = Some(fid);
                        0x9000
                    }
                    _ => 0x6A82,
                }
            }
            _ => 0x6A86,
        }
    }

    /// The EF addressed by an SFI (5 bits) or the current EF, if it exists here.
    fn ef_for(&self, sfi: Option<u8>) -> Result<u16, u16> {
        let fid = match sfi {
            Some(s) => u16::from(s),
            None => self.vol.ef.ok_or(0x6986u16)?,
        };
        if self.vol.df != Df::Purse || !matches!(fid, EF_PUBLIC | EF_CAPP | EF_LOG) {
            return Err(0x6A82);
        }
        Ok(fid)
    }

    /// READ BINARY: `00 B0 (80+SFI) offset Le` or `00 B0 P1P2=offset Le` on the current EF.
    pub(crate) fn read_binary(&mut self, apdu: &Apdu<'_>, out: &mut Vec<u8>) -> u16 {
        if !apdu.data.is_empty() {
            return 0x6700;
        }
        let (sfi, offset) = if apdu.p1 & 0x80 != 0 {
            if apdu.p1 & 0x60 != 0 {
                return 0x6A86;
            }
            (Some(apdu.p1 & 0x1F), usize::from(apdu.p2))
        } else {
            (None, usize::from(u16::from_be_bytes([apdu.p1, apdu.p2])))
        };
        let fid = match self.ef_for(sfi) {
            Ok(f) => f,
            Err(sw) => return sw,
        };
        if fid != EF_PUBLIC {
            return 0x6981; // command incompatible with file structure
        }
        self.vol.ef = Some(fid);
        let file = self.public_info_bytes();
        let Some(rest) = file.get(offset..).filter(|r| !r.is_empty()) else {
            return 0x6B00;
        };
        match apdu.le {
            None | Some(256) => out.extend_from_slice(rest),
            Some(le) if le as usize <= rest.len() => out.extend_from_slice(&rest[..le as usize]),
            // Le longer than what remains: ask for the right Le (epurse.md 6Cxx).
            Some(_) => return 0x6C00 | rest.len() as u16,
        }
        0x9000
    }

    /// READ RECORD: `00 B2 rec ((SFI<<3)+4) Le`.
    pub(crate) fn read_record(&mut self, apdu: &Apdu<'_>, out: &mut Vec<u8>) -> u16 {
        if !apdu.data.is_empty() {
            return 0x6700;
        }
        let sfi = apdu.p2 >> 3;
        if apdu.p2 & 0x07 != 0x04 {
            return 0x6A86;
        }
        let sfi = if sfi == 0 { None } else { Some(sfi) };
        let fid = match self.ef_for(sfi) {
            Ok(f) => f,
            Err(sw) => return sw,
        };
        let rec = usize::from(apdu.p1);
        let purse = &self.state.purse;
        let record: &[u8] = match fid {
            EF_LOG => match rec.checked_sub(1).and_then(|i| purse.log.get(i)) {
                Some(r) => r,
                None => return 0x6A83,
            },
            EF_CAPP => match rec.checked_sub(1).and_then(|i| purse.capp.get(i)) {
                Some(r) => r,
                None => return 0x6A83,
            },
            _ => return 0x6981,
        };
        match apdu.le {
            None | Some(256) => {}
            Some(le) if le as usize == record.len() => {}
            Some(_) => return 0x6C00 | record.len() as u16,
        }
        out.extend_from_slice(record);
        self.vol.ef = Some(fid);
        0x9000
    }

    /// GET CHALLENGE: `00 84 00 00 04/08`.
    pub(crate) fn get_challenge(&mut self, apdu: &Apdu<'_>, out: &mut Vec<u8>) -> u16 {
        if apdu.p1 != 0 || apdu.p2 != 0 {
            return 0x6A86;
        }
        match (apdu.data.is_empty(), apdu.le) {
            (true, Some(4)) => out.extend_from_slice(&self.random4()),
            (true, Some(8)) => {
                let a = self.random4();
                let b = self.random4();
                out.extend_from_slice(&a);
                out.extend_from_slice(&b);
            }
            _ => return 0x6700,
        }
        0x9000
    }

    /// VERIFY PIN: `00 20 00 00 Lc PIN`; 63Cx tries left, 6983 blocked. Without data it
    /// reports the tries left.
    pub(crate) fn verify_pin(&mut self, apdu: &Apdu<'_>) -> u16 {
        if apdu.p1 != 0 || apdu.p2 != 0 {
            return 0x6A86;
        }
        let left = self.state.pin_tries_left;
        if left == 0 {
            return 0x6983;
        }
        if apdu.data.is_empty() {
            return if self.vol.pin_ok {
                0x9000
            } else {
                0x63C0 | u16::from(left.min(15))
            };
        }
        if apdu.data.len() > 8 {
            return 0x6700;
        }
        if super::algo::ct_eq(apdu.data, &self.state.pin) {
            self.state.pin_tries_left = self.state.pin_tries_max;
            self.vol.pin_ok = true;
            0x9000
        } else {
            self.vol.pin_ok = false;
            let left = left - 1;
            self.state.pin_tries_left = left;
            if left == 0 {
                0x6983
            } else {
                0x63C0 | u16::from(left.min(15))
            }
        }
    }
}
