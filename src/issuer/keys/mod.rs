//! The card company's per-city master keys, and the per-card keys diversified from them.
//!
//! A city's purse keys come in three roles ([`KeyRole`]: load, purchase, TAC), one master
//! each, 3DES or SM4. A card holds keys diversified from those masters by its application
//! serial (`/work/shared/reference/epurse.md`, "Key diversification"). A bundle for one card
//! carries only that card's diversified keys (DESIGN §4.11): the masters never leave the
//! store that holds them.
//!
//! * [`MasterKeyStore`] is what the issuer service calls: [`MasterKeyStore::card_key`] returns
//!   a card's key for a role, labelled [`KeyUsage::Load`] / [`KeyUsage::Purchase`] /
//!   [`KeyUsage::Tac`]. No store has an API that returns a master.
//! * [`FileKeyStore`] is the default store: one file, encrypted and authenticated under a
//!   key derived from a passphrase (Argon2id; see [`mod@file`] and `docs/keys.md`).
//! * `Pkcs11KeyStore` (cargo feature `pkcs11`) keeps the masters as non-extractable
//!   secret-key objects in a PKCS#11 token (an HSM) and diversifies 3DES keys inside it.
//! * [`MasterKeys`] is the import format: a `CITY.toml` with `alg` and one hex master per
//!   role ([`MasterKeys::from_toml`]).
//!
//! Every buffer that holds key bytes is zeroized when dropped, and the `Debug` of every
//! key-holding type prints `REDACTED`. Errors carry the city, role or path, never key bytes.

pub mod file;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;

pub use file::{FileKeyStore, KdfParams};
#[cfg(feature = "pkcs11")]
pub use pkcs11::Pkcs11KeyStore;

use core::fmt;

use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{CryptoError, Derivation, KeyAlg, KeyUsage, SecretKey, diversify};

/// Shortest application serial a card key is diversified from, in bytes.
pub const MIN_SERIAL_LEN: usize = 8;
/// Longest application serial a card key is diversified from, in bytes.
pub const MAX_SERIAL_LEN: usize = 10;
/// Length of every master key (two-key 3DES and SM4 both use 16 bytes).
pub const MASTER_LEN: usize = 16;

/// One of a city's three purse key roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyRole {
    /// Load (credit) keys: DLK on the card.
    Load,
    /// Purchase (debit) keys: DPK on the card.
    Purchase,
    /// TAC keys: DTK on the card.
    Tac,
}

impl KeyRole {
    /// All roles, in file order.
    pub const ALL: [KeyRole; 3] = [KeyRole::Load, KeyRole::Purchase, KeyRole::Tac];

    /// Lower-case name: `load`, `purchase`, `tac` (the `CITY.toml` fields and the PKCS#11
    /// labels use it).
    pub fn name(self) -> &'static str {
        match self {
            KeyRole::Load => "load",
            KeyRole::Purchase => "purchase",
            KeyRole::Tac => "tac",
        }
    }

    /// Inverse of [`KeyRole::name`] (exact, lower case).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The usage of this role's master: [`KeyUsage::LoadMaster`], [`KeyUsage::PurchaseMaster`]
    /// or [`KeyUsage::TacMaster`].
    pub fn master_usage(self) -> KeyUsage {
        match self {
            KeyRole::Load => KeyUsage::LoadMaster,
            KeyRole::Purchase => KeyUsage::PurchaseMaster,
            KeyRole::Tac => KeyUsage::TacMaster,
        }
    }

    /// The usage of a card key of this role: [`KeyUsage::Load`], [`KeyUsage::Purchase`] or
    /// [`KeyUsage::Tac`] (what [`KeyUsage::derive`] gives for a diversification of
    /// [`KeyRole::master_usage`]).
    pub fn card_usage(self) -> KeyUsage {
        match self {
            KeyRole::Load => KeyUsage::Load,
            KeyRole::Purchase => KeyUsage::Purchase,
            KeyRole::Tac => KeyUsage::Tac,
        }
    }

    /// The card usage as the derivation table gives it (one source of truth for labels).
    fn derived_usage(self) -> KeyUsage {
        self.master_usage()
            .derive(Derivation::Diversify)
            .unwrap_or(self.card_usage())
    }
}

impl fmt::Display for KeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a key store or a master-key file was refused: one line, with the city, role or path
/// it is about, never key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// The store file could not be read or written.
    #[error("key store {path}: cannot {op}: {detail}")]
    Io {
        /// The store file.
        path: String,
        /// What was being done (`read`, `create`, `rename onto`, …).
        op: &'static str,
        /// The operating system's message.
        detail: String,
    },
    /// The file's MAC does not verify: the passphrase is wrong, or a byte of the file was
    /// changed, truncated or appended. The two are deliberately indistinguishable.
    #[error("key store {path}: wrong passphrase or tampered file")]
    WrongPassphraseOrTampered {
        /// The store file.
        path: String,
    },
    /// The file does not start with the key store's magic.
    #[error("key store {path}: not a cardvm key store")]
    NotAKeyStore {
        /// The file.
        path: String,
    },
    /// A key store of a format version this build does not read.
    #[error("key store {path}: unsupported format version {version}")]
    UnsupportedVersion {
        /// The store file.
        path: String,
        /// The version byte found.
        version: u8,
    },
    /// KDF parameters outside what this build accepts (a hostile header must not make the
    /// issuer allocate gigabytes).
    #[error("key store {path}: {reason}")]
    KdfParams {
        /// The store file (or `(new)` for parameters given to create one).
        path: String,
        /// Which parameter, and its bounds.
        reason: String,
    },
    /// Contents that authenticate but do not parse (written by another build, or a bug).
    #[error("key store {path}: unreadable contents: {reason}")]
    Contents {
        /// The store file.
        path: String,
        /// What does not parse.
        reason: String,
    },
    /// `create` on a path that already exists.
    #[error("key store {path}: already exists (refusing to overwrite it)")]
    AlreadyExists {
        /// The store file.
        path: String,
    },
    /// An empty passphrase.
    #[error("key store {path}: empty passphrase")]
    EmptyPassphrase {
        /// The store file.
        path: String,
    },
    /// The store holds no masters for this city.
    #[error("no master keys for city {city}")]
    UnknownCity {
        /// The city asked for.
        city: u32,
    },
    /// Import of a city that already has masters, without `replace`.
    #[error(
        "city {city} already has master keys in the store (import with replace to change them)"
    )]
    CityExists {
        /// The city.
        city: u32,
    },
    /// An application serial that is not 8 to 10 bytes long.
    #[error("application serial of {len} bytes: expected {MIN_SERIAL_LEN} to {MAX_SERIAL_LEN}")]
    BadSerial {
        /// Its length.
        len: usize,
    },
    /// A master-key file (`CITY.toml`) that does not parse or is not acceptable.
    #[error("master-key file: {reason}")]
    MasterFile {
        /// What is wrong, naming the field.
        reason: String,
    },
    /// A crypto operation refused a key (should not happen for keys the store built).
    #[error("city {city} {role} key: {source}")]
    Crypto {
        /// The city.
        city: u32,
        /// The role.
        role: KeyRole,
        /// The crypto layer's reason.
        source: CryptoError,
    },
    /// The PKCS#11 module or token failed.
    #[error("PKCS#11 {op}: {detail}")]
    Pkcs11 {
        /// What was being done (`load module`, `login`, `C_Encrypt`, …), with the city/role
        /// where there is one.
        op: String,
        /// The module's error.
        detail: String,
    },
    /// The token cannot hold or use a city's masters: it lacks the mechanism the city's
    /// algorithm needs.
    #[error(
        "city {city}: the token has no {mechanism} mechanism ({alg} masters cannot be kept in it)"
    )]
    MechanismUnsupported {
        /// The city.
        city: u32,
        /// The algorithm name (`sm4`, `des3`).
        alg: &'static str,
        /// The missing mechanism (`CKM_DES3_ECB`, `CKM_SM4_ECB`).
        mechanism: &'static str,
    },
}

/// The issuer's master keys, per city, behind one interface.
///
/// The masters never leave a store: there is no method that returns one, only the keys
/// diversified from them for one card.
pub trait MasterKeyStore: Send + Sync {
    /// The card key of `role` for the card with application serial `serial` (8..=10 bytes; F =
    /// its rightmost 8 bytes, reference "Key diversification"), diversified from the city's
    /// master. The master never leaves the store. Usage of the result: [`KeyUsage::Load`] /
    /// [`KeyUsage::Purchase`] / [`KeyUsage::Tac`].
    fn card_key(&self, city: u32, role: KeyRole, serial: &[u8])
    -> Result<SecretKey, KeyStoreError>;

    /// The cities the store holds masters for, with their algorithm, in ascending city order.
    fn cities(&self) -> Result<Vec<(u32, KeyAlg)>, KeyStoreError>;
}

/// F of the diversification: the rightmost 8 bytes of an 8..=10-byte application serial.
pub fn diversification_input(serial: &[u8]) -> Result<[u8; 8], KeyStoreError> {
    if !(MIN_SERIAL_LEN..=MAX_SERIAL_LEN).contains(&serial.len()) {
        return Err(KeyStoreError::BadSerial { len: serial.len() });
    }
    let mut f = [0u8; 8];
    f.copy_from_slice(&serial[serial.len() - 8..]);
    Ok(f)
}

/// One city's three masters (load, purchase, TAC) of one algorithm: the import format.
///
/// Each master is a [`SecretKey`] labelled with its master usage ([`KeyRole::master_usage`]),
/// so it can only be diversified, and only into a key of its own role. There is no public
/// accessor for the masters: a store takes them in, nothing takes them out.
#[derive(Clone)]
pub struct MasterKeys {
    alg: KeyAlg,
    load: SecretKey,
    purchase: SecretKey,
    tac: SecretKey,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKeys")
            .field("alg", &self.alg)
            .field("keys", &format_args!("REDACTED"))
            .finish()
    }
}

impl MasterKeys {
    /// Masters of algorithm `alg` ([`KeyAlg::Des3`] or [`KeyAlg::Sm4`]), 16 bytes each.
    ///
    /// Refused: another algorithm; a 3DES master whose two halves are equal (that is single
    /// DES); two roles sharing one master (a TAC key equal to a load key would let whoever
    /// loads forge the card's proof of commitment).
    pub fn new(
        alg: KeyAlg,
        load: &[u8; MASTER_LEN],
        purchase: &[u8; MASTER_LEN],
        tac: &[u8; MASTER_LEN],
    ) -> Result<Self, KeyStoreError> {
        if !matches!(alg, KeyAlg::Des3 | KeyAlg::Sm4) {
            return Err(KeyStoreError::MasterFile {
                reason: format!("alg `{}`: expected \"des3\" or \"sm4\"", alg.name()),
            });
        }
        let bytes = [
            (KeyRole::Load, load),
            (KeyRole::Purchase, purchase),
            (KeyRole::Tac, tac),
        ];
        for (role, b) in bytes {
            if alg == KeyAlg::Des3 && crate::crypto::ct_eq(&b[..8], &b[8..]) {
                return Err(KeyStoreError::MasterFile {
                    reason: format!("`{role}`: the two 3DES halves are equal (that is single DES)"),
                });
            }
        }
        for (i, (ra, a)) in bytes.iter().enumerate() {
            for (rb, b) in &bytes[i + 1..] {
                if crate::crypto::ct_eq(&a[..], &b[..]) {
                    return Err(KeyStoreError::MasterFile {
                        reason: format!("`{ra}` and `{rb}` are the same key"),
                    });
                }
            }
        }
        let key = |role: KeyRole, b: &[u8; MASTER_LEN]| {
            SecretKey::new(alg, role.master_usage(), b).map_err(|e| KeyStoreError::MasterFile {
                reason: format!("`{role}`: {e}"),
            })
        };
        Ok(MasterKeys {
            alg,
            load: key(KeyRole::Load, load)?,
            purchase: key(KeyRole::Purchase, purchase)?,
            tac: key(KeyRole::Tac, tac)?,
        })
    }

    /// Parses a master-key file:
    ///
    /// ```toml
    /// alg = "des3"                                 # or "sm4"
    /// load = "11223344556677888877665544332211"     # 16 bytes, hex
    /// purchase = "…"
    /// tac = "…"
    /// ```
    ///
    /// Unknown fields are refused. Errors name the field, never its value.
    pub fn from_toml(text: &str) -> Result<Self, KeyStoreError> {
        let bad = |reason: String| KeyStoreError::MasterFile { reason };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| bad(format!("not TOML: {}", e.message())))?;
        let alg = match table.remove("alg") {
            Some(toml::Value::String(s)) => match s.as_str() {
                "des3" => KeyAlg::Des3,
                "sm4" => KeyAlg::Sm4,
                other => return Err(bad(format!("alg `{other}`: expected \"des3\" or \"sm4\""))),
            },
            Some(_) => return Err(bad("`alg` must be a string".into())),
            None => return Err(bad("missing `alg`".into())),
        };
        let mut take = |role: KeyRole| -> Result<Zeroizing<[u8; MASTER_LEN]>, KeyStoreError> {
            match table.remove(role.name()) {
                Some(toml::Value::String(s)) => parse_master_hex(role, Zeroizing::new(s)),
                Some(_) => Err(bad(format!("`{role}` must be a hex string"))),
                None => Err(bad(format!("missing `{role}`"))),
            }
        };
        let load = take(KeyRole::Load)?;
        let purchase = take(KeyRole::Purchase)?;
        let tac = take(KeyRole::Tac)?;
        if let Some(extra) = table.keys().next() {
            return Err(bad(format!(
                "unknown field `{extra}` (expected alg, load, purchase, tac)"
            )));
        }
        MasterKeys::new(alg, &load, &purchase, &tac)
    }

    /// The masters' algorithm.
    pub fn alg(&self) -> KeyAlg {
        self.alg
    }

    /// The master of `role`. Crate-internal: masters go into a store, never out of one.
    pub(crate) fn master(&self, role: KeyRole) -> &SecretKey {
        match role {
            KeyRole::Load => &self.load,
            KeyRole::Purchase => &self.purchase,
            KeyRole::Tac => &self.tac,
        }
    }

    /// The card key of `role` for `serial`, diversified in software with
    /// [`crate::crypto::diversify`] (the file store's path).
    pub(crate) fn card_key(
        &self,
        city: u32,
        role: KeyRole,
        serial: &[u8],
    ) -> Result<SecretKey, KeyStoreError> {
        let mut f = diversification_input(serial)?;
        let key = diversify(self.master(role), &f).map_err(|source| KeyStoreError::Crypto {
            city,
            role,
            source,
        });
        f.zeroize();
        key
    }
}

/// A 32-digit hex master into 16 bytes; the text is wiped when dropped.
fn parse_master_hex(
    role: KeyRole,
    text: Zeroizing<String>,
) -> Result<Zeroizing<[u8; MASTER_LEN]>, KeyStoreError> {
    let digits = text.trim().as_bytes();
    let bad = |what: &str| KeyStoreError::MasterFile {
        reason: format!("`{role}`: {what}"),
    };
    if digits.len() != 2 * MASTER_LEN {
        return Err(bad(&format!(
            "{} hex digits, expected {} (16 bytes)",
            digits.len(),
            2 * MASTER_LEN
        )));
    }
    let mut out = Zeroizing::new([0u8; MASTER_LEN]);
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let hi = hex_digit(pair[0]).ok_or_else(|| bad("not hex"))?;
        let lo = hex_digit(pair[1]).ok_or_else(|| bad("not hex"))?;
        *o = (hi << 4) | lo;
    }
    Ok(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Builds a card key of `role` from 16 bytes computed outside this crate's software
/// diversification (a token's C_Encrypt), labelled as a diversification of the role's master.
#[cfg_attr(not(feature = "pkcs11"), allow(dead_code))]
pub(crate) fn card_key_from_bytes(
    city: u32,
    role: KeyRole,
    alg: KeyAlg,
    bytes: &[u8],
) -> Result<SecretKey, KeyStoreError> {
    SecretKey::new(alg, role.derived_usage(), bytes).map_err(|source| KeyStoreError::Crypto {
        city,
        role,
        source,
    })
}

#[cfg(test)]
mod tests;
