//! Key algorithms, key usages and the [`SecretKey`] container.

use core::fmt;

use zeroize::Zeroize;

use super::error::CryptoError;

/// Longest key any [`KeyAlg`] uses, in bytes.
pub const MAX_KEY_LEN: usize = 16;

/// The algorithm a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlg {
    /// Single DES, 8-byte key (parity bits ignored), 8-byte block.
    Des,
    /// Two-key triple DES (EDE, K1 ‖ K2), 16-byte key, 8-byte block.
    Des3,
    /// SM4 (GB/T 32907), 16-byte key, 16-byte block.
    Sm4,
    /// Mifare Classic sector key (6 bytes); not a block cipher.
    M1,
}

impl KeyAlg {
    /// All algorithms, in code order.
    pub const ALL: [KeyAlg; 4] = [KeyAlg::Des, KeyAlg::Des3, KeyAlg::Sm4, KeyAlg::M1];

    /// Key length in bytes: 8, 16, 16, 6.
    pub fn key_len(self) -> usize {
        match self {
            KeyAlg::Des => 8,
            KeyAlg::Des3 => 16,
            KeyAlg::Sm4 => 16,
            KeyAlg::M1 => 6,
        }
    }

    /// Block length in bytes (8, 8, 16), or `None` for [`KeyAlg::M1`].
    pub fn block_len(self) -> Option<usize> {
        match self {
            KeyAlg::Des | KeyAlg::Des3 => Some(8),
            KeyAlg::Sm4 => Some(16),
            KeyAlg::M1 => None,
        }
    }

    /// Lower-case name used in scripts and card profiles: `des`, `des3`, `sm4`, `m1`.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlg::Des => "des",
            KeyAlg::Des3 => "des3",
            KeyAlg::Sm4 => "sm4",
            KeyAlg::M1 => "m1",
        }
    }

    /// Inverse of [`KeyAlg::name`] (exact, lower case).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// One-byte code used in the binary data script: 1 des, 2 des3, 3 sm4, 4 m1.
    pub fn code(self) -> u8 {
        match self {
            KeyAlg::Des => 1,
            KeyAlg::Des3 => 2,
            KeyAlg::Sm4 => 3,
            KeyAlg::M1 => 4,
        }
    }

    /// Inverse of [`KeyAlg::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.code() == code)
    }
}

/// What a key may be used for (the key slot's label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyUsage {
    /// Load (credit) key, DLK.
    Load,
    /// Purchase (debit) key, DPK.
    Purchase,
    /// TAC key, DTK.
    Tac,
    /// Master key from which card keys are diversified.
    Master,
    /// Process (session) key derived during a transaction.
    Session,
    /// Data encryption key.
    Encrypt,
    /// Generic MAC key.
    Mac,
    /// Mifare Classic key A.
    M1A,
    /// Mifare Classic key B.
    M1B,
    /// No restriction.
    Any,
}

impl KeyUsage {
    /// All usages, in code order.
    pub const ALL: [KeyUsage; 10] = [
        KeyUsage::Load,
        KeyUsage::Purchase,
        KeyUsage::Tac,
        KeyUsage::Master,
        KeyUsage::Session,
        KeyUsage::Encrypt,
        KeyUsage::Mac,
        KeyUsage::M1A,
        KeyUsage::M1B,
        KeyUsage::Any,
    ];

    /// Lower-case name: `load`, `purchase`, `tac`, `master`, `session`, `enc`, `mac`, `m1-a`,
    /// `m1-b`, `any`.
    pub fn name(self) -> &'static str {
        match self {
            KeyUsage::Load => "load",
            KeyUsage::Purchase => "purchase",
            KeyUsage::Tac => "tac",
            KeyUsage::Master => "master",
            KeyUsage::Session => "session",
            KeyUsage::Encrypt => "enc",
            KeyUsage::Mac => "mac",
            KeyUsage::M1A => "m1-a",
            KeyUsage::M1B => "m1-b",
            KeyUsage::Any => "any",
        }
    }

    /// Inverse of [`KeyUsage::name`] (exact, lower case).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|u| u.name() == name)
    }

    /// One-byte code, 1 (`load`) to 10 (`any`) in declaration order.
    pub fn code(self) -> u8 {
        match self {
            KeyUsage::Load => 1,
            KeyUsage::Purchase => 2,
            KeyUsage::Tac => 3,
            KeyUsage::Master => 4,
            KeyUsage::Session => 5,
            KeyUsage::Encrypt => 6,
            KeyUsage::Mac => 7,
            KeyUsage::M1A => 8,
            KeyUsage::M1B => 9,
            KeyUsage::Any => 10,
        }
    }

    /// Inverse of [`KeyUsage::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|u| u.code() == code)
    }

    /// Whether a key labelled `self` may serve where `wanted` is required
    /// (same usage, or `self` is [`KeyUsage::Any`]).
    pub fn allows(self, wanted: KeyUsage) -> bool {
        self == KeyUsage::Any || self == wanted
    }
}

/// A symmetric key: algorithm, usage and up to 16 key bytes.
///
/// The bytes are wiped when the value is dropped, are never printed by `Debug`, and can only be
/// read inside this crate. There is deliberately no `Display` and no `PartialEq`.
#[derive(Clone)]
pub struct SecretKey {
    alg: KeyAlg,
    usage: KeyUsage,
    len: u8,
    bytes: [u8; MAX_KEY_LEN],
}

impl SecretKey {
    /// A key of algorithm `alg` for `usage`; `bytes` must be exactly `alg.key_len()` long.
    pub fn new(alg: KeyAlg, usage: KeyUsage, bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != alg.key_len() {
            return Err(CryptoError::WrongKeyLength {
                alg,
                len: bytes.len(),
            });
        }
        let mut key = SecretKey {
            alg,
            usage,
            len: 0,
            bytes: [0; MAX_KEY_LEN],
        };
        key.bytes[..bytes.len()].copy_from_slice(bytes);
        // key_len() <= 16, so this cannot truncate.
        key.len = bytes.len() as u8;
        Ok(key)
    }

    /// The key's algorithm.
    pub fn alg(&self) -> KeyAlg {
        self.alg
    }

    /// The key's usage label.
    pub fn usage(&self) -> KeyUsage {
        self.usage
    }

    /// Key length in bytes (always `self.alg().key_len()`).
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Always `false`: no algorithm has an empty key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw key bytes. Crate-internal: key material must only leave through a crypto
    /// operation.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.bytes[..self.len()]
    }

    /// The same key relabelled with `usage`.
    pub fn with_usage(mut self, usage: KeyUsage) -> Self {
        self.usage = usage;
        self
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl zeroize::ZeroizeOnDrop for SecretKey {}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("alg", &self.alg)
            .field("usage", &self.usage)
            .field("bytes", &format_args!("REDACTED"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn alg_tables() {
        let lens = [8, 16, 16, 6];
        let blocks = [Some(8), Some(8), Some(16), None];
        let names = ["des", "des3", "sm4", "m1"];
        for (i, alg) in KeyAlg::ALL.into_iter().enumerate() {
            assert_eq!(alg.key_len(), lens[i]);
            assert_eq!(alg.block_len(), blocks[i]);
            assert_eq!(alg.name(), names[i]);
            assert_eq!(alg.code() as usize, i + 1);
            assert_eq!(KeyAlg::from_name(names[i]), Some(alg));
            assert_eq!(KeyAlg::from_code(alg.code()), Some(alg));
        }
        assert_eq!(KeyAlg::from_code(0), None);
        assert_eq!(KeyAlg::from_code(5), None);
        assert_eq!(KeyAlg::from_name("DES"), None);
        assert_eq!(KeyAlg::from_name("aes"), None);
    }

    #[test]
    fn usage_tables() {
        let names = [
            "load", "purchase", "tac", "master", "session", "enc", "mac", "m1-a", "m1-b", "any",
        ];
        for (i, u) in KeyUsage::ALL.into_iter().enumerate() {
            assert_eq!(u.name(), names[i]);
            assert_eq!(u.code() as usize, i + 1);
            assert_eq!(KeyUsage::from_name(names[i]), Some(u));
            assert_eq!(KeyUsage::from_code(u.code()), Some(u));
        }
        assert_eq!(KeyUsage::from_code(0), None);
        assert_eq!(KeyUsage::from_code(11), None);
        assert_eq!(KeyUsage::from_name("encrypt"), None);
        assert!(KeyUsage::Any.allows(KeyUsage::Load));
        assert!(KeyUsage::Load.allows(KeyUsage::Load));
        assert!(!KeyUsage::Load.allows(KeyUsage::Purchase));
    }

    #[test]
    fn new_checks_length() {
        for alg in KeyAlg::ALL {
            let ok = [0x42u8; 16];
            let k = SecretKey::new(alg, KeyUsage::Any, &ok[..alg.key_len()]).unwrap();
            assert_eq!(k.len(), alg.key_len());
            assert!(!k.is_empty());
            assert_eq!(k.expose(), &ok[..alg.key_len()]);
            for bad in [0usize, alg.key_len() - 1, alg.key_len() + 1] {
                let bytes = [0u8; 17];
                let err = SecretKey::new(alg, KeyUsage::Any, &bytes[..bad]).unwrap_err();
                assert_eq!(err, CryptoError::WrongKeyLength { alg, len: bad });
            }
        }
        let err = SecretKey::new(KeyAlg::Des3, KeyUsage::Load, &[0; 8]).unwrap_err();
        let msg = format!("{err}");
        assert!(
            msg.contains("des3") && msg.contains('8') && msg.contains("16"),
            "{msg}"
        );
    }

    #[test]
    fn with_usage_keeps_bytes() {
        let k = SecretKey::new(KeyAlg::Sm4, KeyUsage::Master, &[7; 16]).unwrap();
        let k2 = k.clone().with_usage(KeyUsage::Tac);
        assert_eq!(k2.usage(), KeyUsage::Tac);
        assert_eq!(k2.alg(), KeyAlg::Sm4);
        assert_eq!(k2.expose(), k.expose());
    }

    #[test]
    fn debug_is_redacted() {
        let bytes = [
            0xDE, 0xAD, 0xBE, 0xEF, 0xCA, 0xFE, 0xBA, 0xBE, 0x13, 0x57, 0x9B, 0xDF, 0x24, 0x68,
            0xAC, 0xE0,
        ];
        let k = SecretKey::new(KeyAlg::Des3, KeyUsage::Load, &bytes).unwrap();
        let dbg = format!("{k:?}");
        assert_eq!(dbg, "SecretKey { alg: Des3, usage: Load, bytes: REDACTED }");
        let alt = format!("{k:#?}");
        for needle in ["dead", "DEAD", "beef", "BEEF", "222", "173", "cafe", "CAFE"] {
            assert!(!dbg.contains(needle), "{dbg}");
            assert!(!alt.contains(needle), "{alt}");
        }
        assert!(alt.contains("REDACTED"));
    }
}
