//! The envelope AEAD: SM4-CTR, then HMAC-SM3 over everything (encrypt-then-MAC).
//!
//! From the 16-byte random content key CK two independent keys are derived:
//! `K_enc = SM3("cardvm/envelope/v1/enc" ‖ CK)[..16]` and
//! `K_mac = SM3("cardvm/envelope/v1/mac" ‖ CK)`. The counter block is the 16-byte
//! nonce taken as a big-endian integer, incremented (mod 2^128) per block.

use sm3::Digest;
use sm4::Sm4;
use sm4::cipher::{Array, BlockCipherEncrypt, KeyInit};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use hmac::{Mac, SimpleHmac};

/// Length of the content key.
pub const CONTENT_KEY_LEN: usize = 16;

/// The two keys derived from a content key; zeroized on drop.
pub struct DerivedKeys {
    enc: Zeroizing<[u8; 16]>,
    mac: Zeroizing<[u8; 32]>,
}

impl core::fmt::Debug for DerivedKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("DerivedKeys(REDACTED)")
    }
}

impl DerivedKeys {
    /// Derives the encryption and MAC keys from a content key.
    pub fn derive(content_key: &[u8; CONTENT_KEY_LEN]) -> Self {
        let mut h = sm3::Sm3::new();
        h.update(b"cardvm/envelope/v1/enc");
        h.update(content_key);
        let d = Zeroizing::new(<[u8; 32]>::from(h.finalize()));
        let mut enc = Zeroizing::new([0u8; 16]);
        enc.copy_from_slice(&d[..16]);
        let mut h = sm3::Sm3::new();
        h.update(b"cardvm/envelope/v1/mac");
        h.update(content_key);
        let mac = Zeroizing::new(<[u8; 32]>::from(h.finalize()));
        DerivedKeys { enc, mac }
    }

    /// XORs `data` with the SM4-CTR keystream starting at counter block `nonce`.
    pub fn ctr_xor(&self, nonce: &[u8; 16], data: &mut [u8]) {
        ctr_xor(&self.enc, nonce, data);
    }

    /// HMAC-SM3 of `data` under the MAC key.
    pub fn tag(&self, data: &[u8]) -> [u8; 32] {
        hmac_sm3(&self.mac[..], data)
    }

    /// Checks `tag` against the HMAC-SM3 of `data` in constant time.
    pub fn check_tag(&self, data: &[u8], tag: &[u8; 32]) -> bool {
        bool::from(self.tag(data).ct_eq(tag))
    }
}

/// SM4-CTR: XORs `data` with the keystream for `key` from counter block `nonce`.
pub fn ctr_xor(key: &[u8; 16], nonce: &[u8; 16], data: &mut [u8]) {
    let cipher = Sm4::new(&Array::from(*key));
    let mut counter = u128::from_be_bytes(*nonce);
    for chunk in data.chunks_mut(16) {
        let mut block = Zeroizing::new(Array::from(counter.to_be_bytes()));
        cipher.encrypt_block(&mut block);
        for (d, k) in chunk.iter_mut().zip(block.iter()) {
            *d ^= k;
        }
        counter = counter.wrapping_add(1);
    }
}

/// HMAC-SM3 (RFC 2104 with SM3, 64-byte block).
pub fn hmac_sm3(key: &[u8], data: &[u8]) -> [u8; 32] {
    // `new_from_slice` accepts keys of any length for HMAC.
    match <SimpleHmac<sm3::Sm3> as hmac::KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().into()
        }
        // Unreachable for HMAC; fail closed with an all-zero tag that the
        // constant-time comparison will treat like any other mismatch.
        Err(_) => [0u8; 32],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> alloc::vec::Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// SM4 vector from reference/epurse.md (GB/T 32907): key = plaintext =
    /// 0123456789ABCDEFFEDCBA9876543210 → 681EDF34D206965E86B3E94F536E4246.
    /// With that plaintext as counter block and zero data, CTR yields SM4(block).
    #[test]
    fn ctr_first_block_is_sm4_of_counter() {
        let k: [u8; 16] = hex("0123456789ABCDEFFEDCBA9876543210").try_into().unwrap();
        let mut data = [0u8; 20];
        ctr_xor(&k, &k, &mut data);
        assert_eq!(data[..16], hex("681EDF34D206965E86B3E94F536E4246")[..]);
        // Second block uses counter + 1, so it differs from the first.
        assert_ne!(data[16..20], data[..4]);
        // CTR is an involution.
        ctr_xor(&k, &k, &mut data);
        assert_eq!(data, [0u8; 20]);
    }

    /// HMAC-SM3 computed from its definition with the SM3 vector-checked digest.
    #[test]
    fn hmac_matches_definition() {
        // SM3("abc") from reference/epurse.md, to pin the hash itself.
        assert_eq!(
            crate::crypto::sm3(b"abc")[..],
            hex("66C7F0F462EEEDD9D1F2D46BDC10E4E24167C4875CF2F7A2297DA02B8F4BA8E0")[..]
        );
        for key_len in [0usize, 16, 64, 100] {
            let key: alloc::vec::Vec<u8> = (0..key_len as u8).collect();
            let mut k0 = [0u8; 64];
            if key_len > 64 {
                k0[..32].copy_from_slice(&crate::crypto::sm3(&key));
            } else {
                k0[..key_len].copy_from_slice(&key);
            }
            let mut inner = alloc::vec::Vec::new();
            inner.extend(k0.iter().map(|b| b ^ 0x36));
            inner.extend_from_slice(b"message");
            let ih = crate::crypto::sm3(&inner);
            let mut outer = alloc::vec::Vec::new();
            outer.extend(k0.iter().map(|b| b ^ 0x5C));
            outer.extend_from_slice(&ih);
            assert_eq!(hmac_sm3(&key, b"message"), crate::crypto::sm3(&outer));
        }
    }

    #[test]
    fn derived_keys_are_distinct_and_tag_checks() {
        let keys = DerivedKeys::derive(&[7; 16]);
        assert_ne!(keys.enc[..], keys.mac[..16]);
        let t = keys.tag(b"data");
        assert!(keys.check_tag(b"data", &t));
        assert!(!keys.check_tag(b"datb", &t));
        let other = DerivedKeys::derive(&[8; 16]);
        assert!(!other.check_tag(b"data", &t));
        assert_eq!(alloc::format!("{keys:?}"), "DerivedKeys(REDACTED)");
    }
}
