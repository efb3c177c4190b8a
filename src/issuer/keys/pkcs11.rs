//! [`Pkcs11KeyStore`]: the issuer's master keys in a PKCS#11 token (an HSM; tested with
//! SoftHSM2), cargo feature `pkcs11`.
//!
//! Each master is a secret-key object on the token labelled `cardvm:CITY:ROLE` (`ROLE` =
//! `load`, `purchase`, `tac`), created with `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE` true,
//! `CKA_EXTRACTABLE` false, and only `CKA_ENCRYPT` among the usage attributes: the token never
//! gives its value out, not even wrapped. Masters enter by [`Pkcs11KeyStore::import`] (a
//! `CITY.toml`, C_CreateObject) or are born in the token ([`Pkcs11KeyStore::generate`],
//! C_GenerateKey).
//!
//! Diversification runs inside the token: `C_Encrypt(CKM_DES3_ECB, master, F ‖ NOT F)` is
//! `3DES(MK, F) ‖ 3DES(MK, NOT F)`, the reference's card key, and only that 16-byte result
//! leaves the token. A master object found extractable or not sensitive (put there by other
//! software under our label) is refused rather than used.
//!
//! SM4: PKCS#11 (up to 3.2) defines no SM4 mechanism, and SoftHSM2 has none; vendor tokens use
//! vendor-defined codes. Until one is configured here, an SM4 city cannot be kept in a token:
//! import is refused with [`KeyStoreError::MechanismUnsupported`] naming `CKM_SM4_ECB`
//! (keep SM4 cities in the [`super::FileKeyStore`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use zeroize::{Zeroize, Zeroizing};

use super::{
    KeyRole, KeyStoreError, MASTER_LEN, MasterKeyStore, MasterKeys, card_key_from_bytes,
    diversification_input,
};
use crate::crypto::{KeyAlg, SecretKey};

/// Label prefix of every master this store owns.
const LABEL_PREFIX: &str = "cardvm:";
/// Label prefix of masters being imported, renamed once all three exist.
const STAGED_PREFIX: &str = "cardvm-staged:";

fn label(prefix: &str, city: u32, role: KeyRole) -> Vec<u8> {
    format!("{prefix}{city}:{role}").into_bytes()
}

/// A PKCS#11 failure as one line: what was done, then the function and return value name.
fn p11(op: impl Into<String>) -> impl FnOnce(P11Error) -> KeyStoreError {
    let op = op.into();
    move |e| KeyStoreError::Pkcs11 {
        op,
        detail: match e {
            P11Error::Pkcs11(rv, f) => format!("{f:?} returned {rv:?}"),
            other => other.to_string(),
        },
    }
}

/// Master keys held in a PKCS#11 token (see the module docs).
pub struct Pkcs11KeyStore {
    module: PathBuf,
    token: String,
    // Kept alive for the session's sake (the module stays loaded while it lives).
    _ctx: Pkcs11,
    session: Mutex<Session>,
    des3_ecb: bool,
}

impl fmt::Debug for Pkcs11KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11KeyStore")
            .field("module", &self.module)
            .field("token", &self.token)
            .field("des3_ecb", &self.des3_ecb)
            .finish_non_exhaustive()
    }
}

impl Pkcs11KeyStore {
    /// Loads the PKCS#11 `module`, finds the token labelled `token_label` and logs in as its
    /// user with `pin`.
    pub fn open(module: &Path, token_label: &str, pin: &str) -> Result<Self, KeyStoreError> {
        let ctx = Pkcs11::new(module).map_err(p11(format!("load module {}", module.display())))?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(p11(format!("initialize {}", module.display()))(e)),
        }
        let slots = ctx.get_slots_with_token().map_err(p11("list slots"))?;
        let mut labels = Vec::new();
        let mut found = None;
        for slot in slots {
            let info = ctx.get_token_info(slot).map_err(p11("read token info"))?;
            let l = info.label().trim_end().to_string();
            if l == token_label {
                found = Some(slot);
                break;
            }
            labels.push(l);
        }
        let slot = found.ok_or_else(|| KeyStoreError::Pkcs11 {
            op: format!("find token `{token_label}`"),
            detail: format!("no such token (tokens: {})", labels.join(", ")),
        })?;
        let mechanisms = ctx
            .get_mechanism_list(slot)
            .map_err(p11(format!("list mechanisms of `{token_label}`")))?;
        let des3_ecb = mechanisms.contains(&MechanismType::DES3_ECB);
        let session = ctx
            .open_rw_session(slot)
            .map_err(p11(format!("open a session on `{token_label}`")))?;
        let pin = AuthPin::new(pin.into());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(p11(format!("log in to `{token_label}`"))(e)),
        }
        Ok(Pkcs11KeyStore {
            module: module.to_path_buf(),
            token: token_label.to_string(),
            _ctx: ctx,
            session: Mutex::new(session),
            des3_ecb,
        })
    }

    /// The session; a poisoned lock is still a usable session (no invariant of ours spans a
    /// panic in a PKCS#11 call).
    fn session(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the token offers `CKM_DES3_ECB` (needed for 3DES cities).
    pub fn supports_des3(&self) -> bool {
        self.des3_ecb
    }

    /// Refuses an algorithm the token cannot diversify with.
    fn check_alg(&self, city: u32, alg: KeyAlg) -> Result<(), KeyStoreError> {
        match alg {
            KeyAlg::Des3 if self.des3_ecb => Ok(()),
            KeyAlg::Des3 => Err(KeyStoreError::MechanismUnsupported {
                city,
                alg: "des3",
                mechanism: "CKM_DES3_ECB",
            }),
            _ => Err(KeyStoreError::MechanismUnsupported {
                city,
                alg: alg.name(),
                mechanism: "CKM_SM4_ECB",
            }),
        }
    }

    /// The attributes every master gets, apart from its value.
    fn template(city_label: Vec<u8>) -> Vec<Attribute> {
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::DES2),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
            Attribute::Label(city_label),
        ]
    }

    /// Imports `keys` as the masters of `city` (C_CreateObject). Without `replace`, a city
    /// that already has masters on the token is [`KeyStoreError::CityExists`]. The new objects
    /// are created under a staging label first, so a failure leaves the old masters in use.
    /// An SM4 city is [`KeyStoreError::MechanismUnsupported`].
    pub fn import(
        &mut self,
        city: u32,
        keys: &MasterKeys,
        replace: bool,
    ) -> Result<(), KeyStoreError> {
        self.check_alg(city, keys.alg())?;
        self.install(city, replace, |session, role, label| {
            let mut template = Self::template(label);
            template.push(Attribute::Value(keys.master(role).expose().to_vec()));
            let made = session
                .create_object(&template)
                .map_err(p11(format!("C_CreateObject city {city} {role}")));
            for a in &mut template {
                if let Attribute::Value(v) = a {
                    v.zeroize();
                }
            }
            made
        })
    }

    /// Generates the three masters of a 3DES `city` inside the token (C_GenerateKey with
    /// `CKM_DES2_KEY_GEN`): no one ever sees them. `replace` as for
    /// [`Pkcs11KeyStore::import`].
    pub fn generate(&mut self, city: u32, replace: bool) -> Result<(), KeyStoreError> {
        self.check_alg(city, KeyAlg::Des3)?;
        self.install(city, replace, |session, role, label| {
            session
                .generate_key(&Mechanism::Des2KeyGen, &Self::template(label))
                .map_err(p11(format!("C_GenerateKey city {city} {role}")))
        })
    }

    /// Creates the three masters of `city` under staging labels with `make`, then retires the
    /// old ones and gives the new ones their labels.
    fn install(
        &mut self,
        city: u32,
        replace: bool,
        make: impl Fn(&Session, KeyRole, Vec<u8>) -> Result<ObjectHandle, KeyStoreError>,
    ) -> Result<(), KeyStoreError> {
        let session = self.session();
        let mut old = Vec::new();
        for role in KeyRole::ALL {
            old.extend(find(&session, &label(LABEL_PREFIX, city, role))?);
        }
        if !old.is_empty() && !replace {
            return Err(KeyStoreError::CityExists { city });
        }
        // Leftovers of an interrupted import are not masters of anything.
        for role in KeyRole::ALL {
            for h in find(&session, &label(STAGED_PREFIX, city, role))? {
                let _ = session.destroy_object(h);
            }
        }
        let mut staged = Vec::new();
        for role in KeyRole::ALL {
            match make(&session, role, label(STAGED_PREFIX, city, role)) {
                Ok(h) => staged.push((role, h)),
                Err(e) => {
                    for (_, h) in staged {
                        let _ = session.destroy_object(h);
                    }
                    return Err(e);
                }
            }
        }
        for h in old {
            session
                .destroy_object(h)
                .map_err(p11(format!("C_DestroyObject old master of city {city}")))?;
        }
        for (role, h) in staged {
            session
                .update_attributes(h, &[Attribute::Label(label(LABEL_PREFIX, city, role))])
                .map_err(p11(format!("label city {city} {role}")))?;
        }
        Ok(())
    }

    /// The one master object of `city`/`role`, checked to be a non-extractable, sensitive
    /// two-key 3DES key.
    fn master(
        &self,
        session: &Session,
        city: u32,
        role: KeyRole,
    ) -> Result<ObjectHandle, KeyStoreError> {
        let lbl = label(LABEL_PREFIX, city, role);
        let found = find(session, &lbl)?;
        let h = match found.as_slice() {
            [] => return Err(KeyStoreError::UnknownCity { city }),
            [h] => *h,
            _ => {
                return Err(KeyStoreError::Pkcs11 {
                    op: format!("find city {city} {role} master"),
                    detail: format!("{} objects carry its label", found.len()),
                });
            }
        };
        let attrs = session
            .get_attributes(
                h,
                &[
                    AttributeType::KeyType,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                ],
            )
            .map_err(p11(format!("read attributes of city {city} {role} master")))?;
        let mut ok_type = None;
        let (mut sensitive, mut extractable) = (false, true);
        for a in attrs {
            match a {
                Attribute::KeyType(t) => ok_type = Some(t),
                Attribute::Sensitive(b) => sensitive = b,
                Attribute::Extractable(b) => extractable = b,
                _ => {}
            }
        }
        if !sensitive || extractable {
            return Err(KeyStoreError::Pkcs11 {
                op: format!("use city {city} {role} master"),
                detail: "the object is extractable or not sensitive; refusing to use it".into(),
            });
        }
        match ok_type {
            Some(t) if t == KeyType::DES2 || t == KeyType::DES3 => Ok(h),
            other => Err(KeyStoreError::Pkcs11 {
                op: format!("use city {city} {role} master"),
                detail: format!("key type {other:?} is not a 3DES key"),
            }),
        }
    }
}

fn find(session: &Session, label: &[u8]) -> Result<Vec<ObjectHandle>, KeyStoreError> {
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.to_vec()),
        ])
        .map_err(p11(format!("find {}", String::from_utf8_lossy(label))))
}

impl MasterKeyStore for Pkcs11KeyStore {
    fn card_key(
        &self,
        city: u32,
        role: KeyRole,
        serial: &[u8],
    ) -> Result<SecretKey, KeyStoreError> {
        let f = diversification_input(serial)?;
        let mut input = Zeroizing::new([0u8; MASTER_LEN]);
        input[..8].copy_from_slice(&f);
        for (o, x) in input[8..].iter_mut().zip(&f) {
            *o = !x;
        }
        let session = self.session();
        let h = self.master(&session, city, role)?;
        let out = Zeroizing::new(
            session
                .encrypt(&Mechanism::Des3Ecb, h, &input[..])
                .map_err(p11(format!("C_Encrypt city {city} {role}")))?,
        );
        if out.len() != MASTER_LEN {
            return Err(KeyStoreError::Pkcs11 {
                op: format!("C_Encrypt city {city} {role}"),
                detail: format!("{} bytes returned, expected {MASTER_LEN}", out.len()),
            });
        }
        card_key_from_bytes(city, role, KeyAlg::Des3, &out)
    }

    fn cities(&self) -> Result<Vec<(u32, KeyAlg)>, KeyStoreError> {
        let session = self.session();
        let all = session
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .map_err(p11("list secret keys"))?;
        let mut cities = Vec::new();
        for h in all {
            let attrs = session
                .get_attributes(h, &[AttributeType::Label])
                .map_err(p11("read a key label"))?;
            for a in attrs {
                if let Attribute::Label(l) = a
                    && let Some(rest) = std::str::from_utf8(&l)
                        .ok()
                        .and_then(|s| s.strip_prefix(LABEL_PREFIX))
                    && let Some((city, role)) = rest.split_once(':')
                    && KeyRole::from_name(role).is_some()
                    && let Ok(city) = city.parse::<u32>()
                {
                    cities.push((city, KeyAlg::Des3));
                }
            }
        }
        cities.sort_unstable_by_key(|c| c.0);
        cities.dedup();
        Ok(cities)
    }
}
