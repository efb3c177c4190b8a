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
///
/// A usage is fixed where the key enters: by the data script for a declared key, and by the
/// derivation rules of [`KeyUsage::derive`] for a derived one. Nothing relabels a key, and
/// no script chooses the usage of a key it derives:
///
/// | source | `divkey` | `pkey` | `tackey` |
/// |---|---|---|---|
/// | `load-master` | `load` | — | — |
/// | `purchase-master` | `purchase` | — | — |
/// | `tac-master` | `tac` | — | — |
/// | `load` | — | `load-session` | — |
/// | `purchase` | — | `purchase-session` | — |
/// | `tac` | — | — | `tac` |
///
/// `enc` keys (the only ones `enc`/`dec` accept, and so the only ones whose ECB results a
/// script can read) are never derived and never a derivation source: since diversification
/// and process keys *are* ECB encryptions, a derivation source usable for `enc` would hand
/// the derived key to the script. There is no "any" usage.
///
/// Codes 4 (`master`), 5 (`session`) and 10 (`any`) belonged to retired usages and are
/// refused when parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyUsage {
    /// Load (credit) key, DLK.
    Load,
    /// Purchase (debit) key, DPK.
    Purchase,
    /// TAC key, DTK (and the TAC key derived from it).
    Tac,
    /// Data encryption key: the only usage `enc`/`dec` accept; never derived, never a
    /// derivation source.
    Encrypt,
    /// Generic MAC key.
    Mac,
    /// Mifare Classic key A.
    M1A,
    /// Mifare Classic key B.
    M1B,
    /// Master key from which load keys (DLK) are diversified.
    LoadMaster,
    /// Master key from which purchase keys (DPK) are diversified.
    PurchaseMaster,
    /// Master key from which TAC keys (DTK) are diversified.
    TacMaster,
    /// Process (session) key of a load, derived from a load key during the transaction.
    LoadSession,
    /// Process (session) key of a purchase, derived from a purchase key during the
    /// transaction.
    PurchaseSession,
}

/// How one key slot is filled from another: the derivations of [`KeyUsage::derive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Derivation {
    /// Card-key diversification from a master key (`divkey`, [`crate::crypto::diversify`]).
    Diversify,
    /// Process (session) key from a purse key (`pkey`, [`crate::crypto::process_key`]).
    Process,
    /// TAC key from a DTK (`tackey`, [`crate::crypto::tac_key`]).
    Tac,
}

impl Derivation {
    /// All derivations.
    pub const ALL: [Derivation; 3] = [Derivation::Diversify, Derivation::Process, Derivation::Tac];

    /// The crypto operation's name, for errors: `diversify`, `process_key`, `tac_key`.
    pub fn name(self) -> &'static str {
        match self {
            Derivation::Diversify => "diversify",
            Derivation::Process => "process_key",
            Derivation::Tac => "tac_key",
        }
    }
}

impl KeyUsage {
    /// All usages, in code order.
    pub const ALL: [KeyUsage; 12] = [
        KeyUsage::Load,
        KeyUsage::Purchase,
        KeyUsage::Tac,
        KeyUsage::Encrypt,
        KeyUsage::Mac,
        KeyUsage::M1A,
        KeyUsage::M1B,
        KeyUsage::LoadMaster,
        KeyUsage::PurchaseMaster,
        KeyUsage::TacMaster,
        KeyUsage::LoadSession,
        KeyUsage::PurchaseSession,
    ];

    /// Lower-case name: `load`, `purchase`, `tac`, `enc`, `mac`, `m1-a`, `m1-b`,
    /// `load-master`, `purchase-master`, `tac-master`, `load-session`, `purchase-session`.
    pub fn name(self) -> &'static str {
        match self {
            KeyUsage::Load => "load",
            KeyUsage::Purchase => "purchase",
            KeyUsage::Tac => "tac",
            KeyUsage::Encrypt => "enc",
            KeyUsage::Mac => "mac",
            KeyUsage::M1A => "m1-a",
            KeyUsage::M1B => "m1-b",
            KeyUsage::LoadMaster => "load-master",
            KeyUsage::PurchaseMaster => "purchase-master",
            KeyUsage::TacMaster => "tac-master",
            KeyUsage::LoadSession => "load-session",
            KeyUsage::PurchaseSession => "purchase-session",
        }
    }

    /// Inverse of [`KeyUsage::name`] (exact, lower case).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|u| u.name() == name)
    }

    /// One-byte code used in the binary formats: 1 `load`, 2 `purchase`, 3 `tac`, 6 `enc`,
    /// 7 `mac`, 8 `m1-a`, 9 `m1-b`, 11 `load-master`, 12 `purchase-master`, 13
    /// `tac-master`, 14 `load-session`, 15 `purchase-session` (4, 5 and 10 are retired).
    pub fn code(self) -> u8 {
        match self {
            KeyUsage::Load => 1,
            KeyUsage::Purchase => 2,
            KeyUsage::Tac => 3,
            KeyUsage::Encrypt => 6,
            KeyUsage::Mac => 7,
            KeyUsage::M1A => 8,
            KeyUsage::M1B => 9,
            KeyUsage::LoadMaster => 11,
            KeyUsage::PurchaseMaster => 12,
            KeyUsage::TacMaster => 13,
            KeyUsage::LoadSession => 14,
            KeyUsage::PurchaseSession => 15,
        }
    }

    /// Inverse of [`KeyUsage::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|u| u.code() == code)
    }

    /// Whether a data script (or a command script's `key(ALG, USAGE)` input) may declare a
    /// key of this usage. Session usages are only ever derived in a transaction.
    pub fn is_declarable(self) -> bool {
        !matches!(self, KeyUsage::LoadSession | KeyUsage::PurchaseSession)
    }

    /// The usage of the key `derivation` makes from a key of this usage, or `None` when a
    /// key of this usage is not a source for it (see the table on [`KeyUsage`]). The only
    /// place a derived key's usage comes from.
    pub const fn derive(self, derivation: Derivation) -> Option<KeyUsage> {
        match (derivation, self) {
            (Derivation::Diversify, KeyUsage::LoadMaster) => Some(KeyUsage::Load),
            (Derivation::Diversify, KeyUsage::PurchaseMaster) => Some(KeyUsage::Purchase),
            (Derivation::Diversify, KeyUsage::TacMaster) => Some(KeyUsage::Tac),
            (Derivation::Process, KeyUsage::Load) => Some(KeyUsage::LoadSession),
            (Derivation::Process, KeyUsage::Purchase) => Some(KeyUsage::PurchaseSession),
            (Derivation::Tac, KeyUsage::Tac) => Some(KeyUsage::Tac),
            _ => None,
        }
    }
}

/// A symmetric key: algorithm, usage and up to 16 key bytes.
///
/// The bytes are wiped when the value is dropped, are never printed by `Debug`, and can only be
/// read inside this crate. There is deliberately no `Display`, no `PartialEq`, and no way to
/// change a key's usage: a derived key gets its usage from [`KeyUsage::derive`].
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
    use alloc::vec::Vec;

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
            "load",
            "purchase",
            "tac",
            "enc",
            "mac",
            "m1-a",
            "m1-b",
            "load-master",
            "purchase-master",
            "tac-master",
            "load-session",
            "purchase-session",
        ];
        let codes = [1, 2, 3, 6, 7, 8, 9, 11, 12, 13, 14, 15];
        for (i, u) in KeyUsage::ALL.into_iter().enumerate() {
            assert_eq!(u.name(), names[i]);
            assert_eq!(u.code(), codes[i]);
            assert_eq!(KeyUsage::from_name(names[i]), Some(u));
            assert_eq!(KeyUsage::from_code(u.code()), Some(u));
        }
        // Retired codes and names stay refused: an old `any`/`master` key does not parse.
        for retired in [0, 4, 5, 10, 16] {
            assert_eq!(KeyUsage::from_code(retired), None, "{retired}");
        }
        for retired in ["any", "master", "session", "encrypt"] {
            assert_eq!(KeyUsage::from_name(retired), None, "{retired}");
        }
        assert!(KeyUsage::Load.is_declarable());
        assert!(!KeyUsage::LoadSession.is_declarable());
        assert!(!KeyUsage::PurchaseSession.is_declarable());
    }

    /// Every key reachable by derivations from a usage, the usage itself included.
    fn closure(from: KeyUsage) -> Vec<KeyUsage> {
        let mut seen = alloc::vec![from];
        let mut i = 0;
        while i < seen.len() {
            for d in Derivation::ALL {
                if let Some(u) = seen[i].derive(d)
                    && !seen.contains(&u)
                {
                    seen.push(u);
                }
            }
            i += 1;
        }
        seen
    }

    #[test]
    fn no_derivation_chain_reaches_an_encryption_key() {
        for u in KeyUsage::ALL {
            let reach = closure(u);
            if u != KeyUsage::Encrypt {
                assert!(!reach.contains(&KeyUsage::Encrypt), "{u:?} -> {reach:?}");
            }
        }
        // An encryption key is no derivation source, and nothing derives one.
        for d in Derivation::ALL {
            assert_eq!(KeyUsage::Encrypt.derive(d), None);
            for u in KeyUsage::ALL {
                assert_ne!(u.derive(d), Some(KeyUsage::Encrypt), "{u:?} {d:?}");
            }
        }
    }

    #[test]
    fn derived_usages_follow_their_source() {
        use Derivation::{Diversify, Process};
        use KeyUsage::*;
        let table = [
            (LoadMaster, Diversify, Load),
            (PurchaseMaster, Diversify, Purchase),
            (TacMaster, Diversify, Tac),
            (Load, Process, LoadSession),
            (Purchase, Process, PurchaseSession),
            (Tac, Derivation::Tac, Tac),
        ];
        let mut sources = 0;
        for u in KeyUsage::ALL {
            for d in Derivation::ALL {
                let want = table
                    .iter()
                    .find(|(s, dd, _)| *s == u && *dd == d)
                    .map(|t| t.2);
                assert_eq!(u.derive(d), want, "{u:?} {d:?}");
                sources += usize::from(want.is_some());
            }
        }
        assert_eq!(sources, table.len());
        // A purse key never comes back as a master, and a session key derives nothing.
        for d in Derivation::ALL {
            assert_eq!(LoadSession.derive(d), None);
            assert_eq!(PurchaseSession.derive(d), None);
            assert_eq!(Mac.derive(d), None);
        }
    }

    #[test]
    fn new_checks_length() {
        for alg in KeyAlg::ALL {
            let ok = [0x42u8; 16];
            let k = SecretKey::new(alg, KeyUsage::Mac, &ok[..alg.key_len()]).unwrap();
            assert_eq!(k.len(), alg.key_len());
            assert!(!k.is_empty());
            assert_eq!(k.expose(), &ok[..alg.key_len()]);
            for bad in [0usize, alg.key_len() - 1, alg.key_len() + 1] {
                let bytes = [0u8; 17];
                let err = SecretKey::new(alg, KeyUsage::Mac, &bytes[..bad]).unwrap_err();
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
