//! [`FileKeyStore`]: the issuer's master keys in one passphrase-protected file.
//!
//! ## File format (version 1, all integers big-endian)
//!
//! ```text
//! magic "CVMKEYS1" (8) ‖ version 01 ‖ kdf 01 (Argon2id v1.3)
//! ‖ m_cost KiB (4) ‖ t_cost (4) ‖ p_cost (4) ‖ salt (16) ‖ nonce (16)
//! ‖ ciphertext (rest) ‖ tag (32)
//! ```
//!
//! `K = Argon2id(passphrase, salt, m_cost, t_cost, p_cost)`, 48 bytes: `K_enc = K[0..16]`,
//! `K_mac = K[16..48]`. The ciphertext is SM4-CTR under `K_enc` from counter block `nonce`
//! (fresh from the OS generator on every write), and `tag = HMAC-SM3(K_mac, every byte before
//! it)`: encrypt-then-MAC with the same primitives as the sealed envelope
//! ([`crate::envelope::aead`]), so the header (KDF parameters, salt) is authenticated too. The
//! tag is checked, in constant time, before anything is decrypted; a wrong passphrase and a
//! changed byte are the same error, [`KeyStoreError::WrongPassphraseOrTampered`].
//!
//! The plaintext is `count (2) ‖ count × (city (4) ‖ alg code (1) ‖ load (16) ‖ purchase (16)
//! ‖ tac (16))`, cities strictly ascending.
//!
//! Writes go to `PATH.tmp` (mode 0600), are fsynced and renamed over `PATH`, then the directory
//! is fsynced: a crash leaves the old store or the new one. One process writes a store at a
//! time (the CLI runs one command at a time; the issuer service holds the store open).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use zeroize::{Zeroize, Zeroizing};

use super::{KeyRole, KeyStoreError, MASTER_LEN, MasterKeyStore, MasterKeys};
use crate::crypto::{KeyAlg, SecretKey, ct_eq};
use crate::envelope::aead::{ctr_xor, hmac_sm3};

const MAGIC: &[u8; 8] = b"CVMKEYS1";
const VERSION: u8 = 1;
const KDF_ARGON2ID: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 16;
const TAG_LEN: usize = 32;
/// Bytes before the ciphertext.
const HEADER_LEN: usize = 8 + 1 + 1 + 4 + 4 + 4 + SALT_LEN + NONCE_LEN;
/// One city's record in the plaintext.
const ENTRY_LEN: usize = 4 + 1 + 3 * MASTER_LEN;
/// Largest store file read (about 19 000 cities).
pub const MAX_STORE_FILE: u64 = 1 << 20;

/// Argon2id cost parameters of a key store (stored in its header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, in KiB.
    pub m_cost: u32,
    /// Passes over the memory.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// The default: RFC 9106's second recommended option, Argon2id with 64 MiB, 3 passes,
    /// 4 lanes (about a quarter of a second here per open).
    pub const DEFAULT: KdfParams = KdfParams {
        m_cost: 64 * 1024,
        t_cost: 3,
        p_cost: 4,
    };
    /// Most memory a store may ask for when opened (1 GiB): bounds what a hostile header can
    /// make the issuer allocate.
    pub const MAX_M_COST: u32 = 1 << 20;
    /// Most passes a store may ask for when opened.
    pub const MAX_T_COST: u32 = 64;
    /// Most lanes a store may ask for when opened.
    pub const MAX_P_COST: u32 = 16;

    fn argon2(&self, path: &str) -> Result<argon2::Argon2<'static>, KeyStoreError> {
        let range = |name: &str, v: u32, max: u32| {
            if v == 0 || v > max {
                Err(KeyStoreError::KdfParams {
                    path: path.to_string(),
                    reason: format!("Argon2 {name} {v} is outside 1..={max}"),
                })
            } else {
                Ok(())
            }
        };
        range("m_cost", self.m_cost, Self::MAX_M_COST)?;
        range("t_cost", self.t_cost, Self::MAX_T_COST)?;
        range("p_cost", self.p_cost, Self::MAX_P_COST)?;
        let params = argon2::Params::new(self.m_cost, self.t_cost, self.p_cost, Some(KEY_LEN))
            .map_err(|e| KeyStoreError::KdfParams {
                path: path.to_string(),
                reason: format!("Argon2 parameters refused: {e}"),
            })?;
        Ok(argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params,
        ))
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

const KEY_LEN: usize = 16 + 32;

/// The two file keys derived from the passphrase; zeroized on drop.
struct FileKeys(Zeroizing<[u8; KEY_LEN]>);

impl FileKeys {
    fn derive(
        passphrase: &[u8],
        salt: &[u8; SALT_LEN],
        params: &KdfParams,
        path: &str,
    ) -> Result<Self, KeyStoreError> {
        if passphrase.is_empty() {
            return Err(KeyStoreError::EmptyPassphrase {
                path: path.to_string(),
            });
        }
        let argon = params.argon2(path)?;
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        argon
            .hash_password_into(passphrase, salt, &mut k[..])
            .map_err(|e| KeyStoreError::KdfParams {
                path: path.to_string(),
                reason: format!("Argon2 failed: {e}"),
            })?;
        Ok(FileKeys(k))
    }

    fn enc(&self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k.copy_from_slice(&self.0[..16]);
        k
    }

    fn tag(&self, data: &[u8]) -> [u8; TAG_LEN] {
        hmac_sm3(&self.0[16..], data)
    }
}

/// The default [`MasterKeyStore`]: every city's masters in one file, encrypted and
/// authenticated under a key derived from a passphrase (see the module docs for the format).
///
/// The decrypted masters are held in memory while the store is open (as [`SecretKey`]s,
/// wiped on drop), as is the derived file key (so an import does not run the KDF again).
pub struct FileKeyStore {
    path: PathBuf,
    params: KdfParams,
    salt: [u8; SALT_LEN],
    keys: FileKeys,
    cities: BTreeMap<u32, MasterKeys>,
}

impl fmt::Debug for FileKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cities: Vec<_> = self
            .cities
            .iter()
            .map(|(c, k)| (*c, k.alg().name()))
            .collect();
        f.debug_struct("FileKeyStore")
            .field("path", &self.path)
            .field("params", &self.params)
            .field("cities", &cities)
            .field("keys", &format_args!("REDACTED"))
            .finish()
    }
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> KeyStoreError {
    let path = path.display().to_string();
    move |e| KeyStoreError::Io {
        path,
        op,
        detail: e.to_string(),
    }
}

fn random(path: &Path, buf: &mut [u8]) -> Result<(), KeyStoreError> {
    getrandom::fill(buf).map_err(|e| KeyStoreError::Io {
        path: path.display().to_string(),
        op: "draw randomness for",
        detail: e.to_string(),
    })
}

impl FileKeyStore {
    /// Creates an empty store at `path` with the [`KdfParams::DEFAULT`] cost; refuses an
    /// existing path and an empty passphrase.
    pub fn create(path: impl AsRef<Path>, passphrase: &[u8]) -> Result<Self, KeyStoreError> {
        Self::create_with_params(path, passphrase, KdfParams::DEFAULT)
    }

    /// [`FileKeyStore::create`] with explicit Argon2id costs (tests use small ones; an
    /// operator may choose larger ones).
    pub fn create_with_params(
        path: impl AsRef<Path>,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<Self, KeyStoreError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        if fs::symlink_metadata(&path).is_ok() {
            return Err(KeyStoreError::AlreadyExists { path: shown });
        }
        let mut salt = [0u8; SALT_LEN];
        random(&path, &mut salt)?;
        let keys = FileKeys::derive(passphrase, &salt, &params, &shown)?;
        let store = FileKeyStore {
            path,
            params,
            salt,
            keys,
            cities: BTreeMap::new(),
        };
        store.save()?;
        Ok(store)
    }

    /// Opens the store at `path` with `passphrase`. A wrong passphrase and any changed,
    /// missing or extra byte are [`KeyStoreError::WrongPassphraseOrTampered`].
    pub fn open(path: impl AsRef<Path>, passphrase: &[u8]) -> Result<Self, KeyStoreError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        let bytes = read_capped(&path)?;
        let tampered = || KeyStoreError::WrongPassphraseOrTampered {
            path: shown.clone(),
        };
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(KeyStoreError::NotAKeyStore {
                path: shown.clone(),
            });
        }
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(tampered());
        }
        let version = bytes[8];
        if version != VERSION {
            return Err(KeyStoreError::UnsupportedVersion {
                path: shown,
                version,
            });
        }
        // Any other KDF byte is a changed byte (this build writes only Argon2id).
        if bytes[9] != KDF_ARGON2ID {
            return Err(tampered());
        }
        let u32_at = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[i..i + 4]);
            u32::from_be_bytes(b)
        };
        let params = KdfParams {
            m_cost: u32_at(10),
            t_cost: u32_at(14),
            p_cost: u32_at(18),
        };
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&bytes[22..22 + SALT_LEN]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[22 + SALT_LEN..HEADER_LEN]);

        let keys = FileKeys::derive(passphrase, &salt, &params, &shown)?;
        let (authed, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        if !ct_eq(&keys.tag(authed), tag) {
            return Err(tampered());
        }
        let mut plain = Zeroizing::new(authed[HEADER_LEN..].to_vec());
        let mut k_enc = keys.enc();
        ctr_xor(&k_enc, &nonce, &mut plain);
        k_enc.zeroize();
        // The MAC verified, so this is what this build wrote; a parse failure means a bug or
        // a store written by a different build, reported as a format problem.
        let cities = decode_cities(&plain).map_err(|reason| KeyStoreError::Contents {
            path: shown.clone(),
            reason,
        })?;
        Ok(FileKeyStore {
            path,
            params,
            salt,
            keys,
            cities,
        })
    }

    /// Adds (or, with `replace`, replaces) the masters of `city` and rewrites the file
    /// atomically. Without `replace`, a city already in the store is
    /// [`KeyStoreError::CityExists`]. On a write failure the store is left as it was.
    pub fn import(
        &mut self,
        city: u32,
        keys: &MasterKeys,
        replace: bool,
    ) -> Result<(), KeyStoreError> {
        if !replace && self.cities.contains_key(&city) {
            return Err(KeyStoreError::CityExists { city });
        }
        let old = self.cities.insert(city, keys.clone());
        if let Err(e) = self.save() {
            match old {
                Some(k) => self.cities.insert(city, k),
                None => self.cities.remove(&city),
            };
            return Err(e);
        }
        Ok(())
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The Argon2id costs in the file's header.
    pub fn params(&self) -> KdfParams {
        self.params
    }

    /// Encrypts the current contents under a fresh nonce and replaces the file atomically.
    fn save(&self) -> Result<(), KeyStoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        random(&self.path, &mut nonce)?;
        let plain = encode_cities(&self.cities);
        let mut out = Zeroizing::new(Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN));
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(KDF_ARGON2ID);
        out.extend_from_slice(&self.params.m_cost.to_be_bytes());
        out.extend_from_slice(&self.params.t_cost.to_be_bytes());
        out.extend_from_slice(&self.params.p_cost.to_be_bytes());
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&nonce);
        let body = out.len();
        out.extend_from_slice(&plain);
        let mut k_enc = self.keys.enc();
        ctr_xor(&k_enc, &nonce, &mut out[body..]);
        k_enc.zeroize();
        let tag = self.keys.tag(&out);
        out.extend_from_slice(&tag);
        // Never write a store that `open` would refuse to read back.
        if out.len() as u64 > MAX_STORE_FILE {
            return Err(KeyStoreError::Io {
                path: self.path.display().to_string(),
                op: "write",
                detail: "the store would exceed 1 MiB".into(),
            });
        }
        write_atomic(&self.path, &out)
    }
}

impl MasterKeyStore for FileKeyStore {
    fn card_key(
        &self,
        city: u32,
        role: KeyRole,
        serial: &[u8],
    ) -> Result<SecretKey, KeyStoreError> {
        self.cities
            .get(&city)
            .ok_or(KeyStoreError::UnknownCity { city })?
            .card_key(city, role, serial)
    }

    fn cities(&self) -> Result<Vec<(u32, KeyAlg)>, KeyStoreError> {
        Ok(self.cities.iter().map(|(c, k)| (*c, k.alg())).collect())
    }
}

fn encode_cities(cities: &BTreeMap<u32, MasterKeys>) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(2 + cities.len() * ENTRY_LEN));
    // MAX_STORE_FILE keeps a readable store far below u16::MAX cities; saturate rather than
    // wrap so an oversized store fails to reopen instead of silently dropping cities.
    out.extend_from_slice(
        &u16::try_from(cities.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    for (city, keys) in cities {
        out.extend_from_slice(&city.to_be_bytes());
        out.push(keys.alg().code());
        for role in KeyRole::ALL {
            out.extend_from_slice(keys.master(role).expose());
        }
    }
    out
}

fn decode_cities(plain: &[u8]) -> Result<BTreeMap<u32, MasterKeys>, String> {
    let (count, rest) = plain.split_at_checked(2).ok_or("no city count")?;
    let count = usize::from(u16::from_be_bytes([count[0], count[1]]));
    if rest.len() != count * ENTRY_LEN {
        return Err(format!(
            "{} bytes of records for {count} cities",
            rest.len()
        ));
    }
    let mut cities = BTreeMap::new();
    for entry in rest.chunks_exact(ENTRY_LEN) {
        let city = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
        if cities
            .last_key_value()
            .is_some_and(|(last, _)| *last >= city)
        {
            return Err(format!("city {city} out of order"));
        }
        let alg = KeyAlg::from_code(entry[4]).ok_or(format!("city {city}: bad algorithm"))?;
        let mut m = [
            Zeroizing::new([0u8; MASTER_LEN]),
            Zeroizing::new([0u8; MASTER_LEN]),
            Zeroizing::new([0u8; MASTER_LEN]),
        ];
        for (i, k) in m.iter_mut().enumerate() {
            let at = 5 + i * MASTER_LEN;
            k.copy_from_slice(&entry[at..at + MASTER_LEN]);
        }
        let keys =
            MasterKeys::new(alg, &m[0], &m[1], &m[2]).map_err(|e| format!("city {city}: {e}"))?;
        cities.insert(city, keys);
    }
    Ok(cities)
}

fn read_capped(path: &Path) -> Result<Vec<u8>, KeyStoreError> {
    let f = fs::File::open(path).map_err(io_err(path, "open"))?;
    let mut bytes = Vec::new();
    f.take(MAX_STORE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path, "read"))?;
    if bytes.len() as u64 > MAX_STORE_FILE {
        return Err(KeyStoreError::Io {
            path: path.display().to_string(),
            op: "read",
            detail: "larger than 1 MiB".into(),
        });
    }
    Ok(bytes)
}

/// Temp file (mode 0600, created fresh), fsync, rename over `path`, directory fsync.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), KeyStoreError> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A leftover temp file from a crash may have another mode; start from a new one.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&tmp, "remove stale")(e)),
    }
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io_err(&tmp, "create"))?;
        f.write_all(bytes).map_err(io_err(&tmp, "write"))?;
        f.sync_all().map_err(io_err(&tmp, "fsync"))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path, "rename onto"))?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        // The directory fsync makes the rename durable; not every platform opens directories.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
