//! The `CARD.toml` card profile (fields documented in [the module docs](super)): parse,
//! build a card, write the card's state back (atomically: temporary file + rename).

use crate::sim::AirTimeReport;
use core::fmt;
use std::path::Path;
use std::string::{String, ToString};
use std::vec::Vec;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::cpu::{
    Algorithm, CAPP_RECORD_LEN, CpuCard, LOG_RECORD_LEN, Prove, ProveAtc, PublicInfo, RandomSource,
    Variant,
};
use super::m1::{BLOCKS, M1Card};
use super::psam::PsamCard;
use super::{SimError, hex, unhex};
use crate::transport::{CardTransport, TransportError};

/// Hex key bytes in a profile: the card's own secret. `Debug` prints `REDACTED`; the
/// string is wiped on drop.
#[derive(Clone, Default)]
pub struct KeyHex(Zeroizing<String>);

impl Serialize for KeyHex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for KeyHex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| KeyHex(Zeroizing::new(s)))
    }
}

impl fmt::Debug for KeyHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("REDACTED")
    }
}

impl KeyHex {
    /// Wraps key bytes as hex.
    pub fn from_bytes(b: &[u8]) -> Self {
        KeyHex(Zeroizing::new(hex(b)))
    }
    /// Wraps a hex string as given (checked when the card is built).
    pub fn from_hex(s: &str) -> Self {
        KeyHex(Zeroizing::new(s.to_string()))
    }
    fn bytes(&self, field: &'static str) -> Result<Zeroizing<Vec<u8>>, SimError> {
        unhex(&self.0)
            .map(Zeroizing::new)
            .ok_or(SimError::Field(field, "not hex"))
    }
}

/// A parsed CARD.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[allow(clippy::large_enum_variant)] // one profile per file, parsed once
#[non_exhaustive]
pub enum CardProfile {
    /// A CPU card with an electronic purse.
    Cpu(CpuProfile),
    /// An M1 card.
    M1(M1Profile),
    /// A PSAM (the terminal's purchase SAM).
    Psam(PsamProfile),
}

/// A PSAM profile (`kind = "psam"`): what the terminal's SAM holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PsamProfile {
    /// `des3` or `sm4`.
    pub profile: String,
    /// Terminal number (EF 16), 6 bytes hex.
    pub terminal: String,
    /// Next terminal transaction sequence number.
    pub seq: u32,
    /// The purchase master key (MPK), 16 bytes hex: diversified per card inside the SAM.
    pub purchase_master: KeyHex,
    /// Purchase key index (EF 17).
    pub key_index: u8,
    /// Key version INITIALIZE SAM FOR PURCHASE accepts (the card's, from its INITIALIZE).
    pub key_version: u8,
}

impl Default for PsamProfile {
    fn default() -> Self {
        Self {
            profile: "des3".to_string(),
            terminal: "000000000001".to_string(),
            seq: 1,
            purchase_master: KeyHex::from_hex(""),
            key_index: 1,
            key_version: 0,
        }
    }
}

impl PsamProfile {
    /// Builds the PSAM.
    pub fn build(&self) -> Result<PsamCard, SimError> {
        let algo = Algorithm::from_name(&self.profile)
            .ok_or(SimError::Field("profile", "must be des3 or sm4"))?;
        let terminal: [u8; 6] = unhex(&self.terminal)
            .and_then(|t| t.try_into().ok())
            .ok_or(SimError::Field("terminal", "must be 6 bytes hex"))?;
        let mpk = self.purchase_master.bytes("purchase_master")?;
        Ok(PsamCard::new(algo, &mpk, terminal, self.seq)?
            .with_key(self.key_index, self.key_version))
    }
}

impl PsamCard {
    /// The PSAM's state as a profile.
    pub fn to_profile(&self) -> PsamProfile {
        PsamProfile {
            profile: self.algorithm().name().to_string(),
            terminal: hex(&self.terminal()),
            seq: self.seq(),
            purchase_master: KeyHex::from_bytes(self.master_bytes()),
            key_index: self.key_index(),
            key_version: self.key_version(),
        }
    }
}

/// `[keys]` of a CPU card profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysProfile {
    /// `true`: the keys are master keys, diversified by the card with its serial.
    pub master: bool,
    /// Key index INITIALIZE accepts.
    pub index: u8,
    /// Key version INITIALIZE returns.
    pub version: u8,
    /// Load key (DLK, or MLK when `master`).
    pub load: KeyHex,
    /// Purchase key (DPK, or MPK).
    pub purchase: KeyHex,
    /// TAC key (DTK, or MTK).
    pub tac: KeyHex,
}

impl Default for KeysProfile {
    fn default() -> Self {
        Self {
            master: false,
            index: 1,
            version: 0,
            load: KeyHex::from_bytes(&super::cpu::DEFAULT_DLK),
            purchase: KeyHex::from_bytes(&super::cpu::DEFAULT_DPK),
            tac: KeyHex::from_bytes(&super::cpu::DEFAULT_DTK),
        }
    }
}

/// `[pin]` of a CPU card profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PinProfile {
    /// PIN bytes, hex (e.g. `"123456"`).
    pub value: KeyHex,
    /// Tries allowed.
    pub tries: u8,
    /// Tries left.
    pub tries_left: u8,
}

impl Default for PinProfile {
    fn default() -> Self {
        Self {
            value: KeyHex::from_bytes(&[0x12, 0x34, 0x56]),
            tries: 3,
            tries_left: 3,
        }
    }
}

/// `[public_info]` of a CPU card profile (EF 0015).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublicInfoProfile {
    /// Issuer code, 2 bytes hex.
    pub issuer: String,
    /// City code, 2 bytes hex.
    pub city: String,
    /// Industry code, 2 bytes hex.
    pub industry: String,
    /// Card type.
    pub card_type: u8,
    /// Application version.
    pub app_version: u8,
    /// Validity start, BCD YYYYMMDD as hex.
    pub valid_from: String,
    /// Validity end.
    pub valid_to: String,
}

impl From<&PublicInfo> for PublicInfoProfile {
    fn from(p: &PublicInfo) -> Self {
        Self {
            issuer: hex(&p.issuer),
            city: hex(&p.city),
            industry: hex(&p.industry),
            card_type: p.card_type,
            app_version: p.app_version,
            valid_from: hex(&p.valid_from),
            valid_to: hex(&p.valid_to),
        }
    }
}

impl Default for PublicInfoProfile {
    fn default() -> Self {
        (&PublicInfo::default()).into()
    }
}

fn fixed<const N: usize>(s: &str, field: &'static str) -> Result<[u8; N], SimError> {
    unhex(s)
        .and_then(|v| <[u8; N]>::try_from(v).ok())
        .ok_or(SimError::Field(field, "wrong length or not hex"))
}

impl PublicInfoProfile {
    fn build(&self) -> Result<PublicInfo, SimError> {
        Ok(PublicInfo {
            issuer: fixed(&self.issuer, "public_info.issuer")?,
            city: fixed(&self.city, "public_info.city")?,
            industry: fixed(&self.industry, "public_info.industry")?,
            card_type: self.card_type,
            app_version: self.app_version,
            valid_from: fixed(&self.valid_from, "public_info.valid_from")?,
            valid_to: fixed(&self.valid_to, "public_info.valid_to")?,
        })
    }
}

/// `[last_prove]` of a CPU card profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProveProfile {
    /// Transaction counter (from its INITIALIZE).
    pub atc: u16,
    /// Transaction type.
    #[serde(rename = "type")]
    pub ttype: u8,
    /// MAC2, hex.
    pub mac: String,
    /// TAC, hex.
    pub tac: String,
    /// A one-shot card has answered GET TRANSACTION PROVE for it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub answered: bool,
}

/// `[variant]` of a CPU card profile: how the card deviates from the reference
/// (epurse.md "City variants"). Every field is optional; absent = the reference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VariantProfile {
    /// Card authentication code, 8 bytes hex: GET DATA `80 CA 00 00 09` answers `85` ‖
    /// code, and a purchase's MAC1 must cover those 9 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_code: Option<String>,
    /// The only CAPP record a composite purchase may update (1 to 4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capp_record: Option<u8>,
    /// Status word for a MAC that does not verify, hex (reference `9302`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_error_sw: Option<String>,
    /// Status word for a purchase over the balance, hex (reference `9401`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub over_balance_sw: Option<String>,
    /// The counter GET TRANSACTION PROVE names a transaction by: `initialize` (reference)
    /// or `next`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prove_atc: Option<String>,
    /// PROVE answers once per transaction, then 6985.
    #[serde(skip_serializing_if = "is_false")]
    pub prove_once: bool,
    /// PROVE of a load answers `00000000` in place of its MAC2.
    #[serde(skip_serializing_if = "is_false")]
    pub prove_zero_mac: bool,
    /// INITIALIZE FOR LOAD of the EP needs VERIFY PIN first (6982 without).
    #[serde(skip_serializing_if = "is_false")]
    pub pin_before_load: bool,
    /// UPDATE CAPP DATA CACHE selects the record by its tag (first byte).
    #[serde(skip_serializing_if = "is_false")]
    pub capp_by_tag: bool,
}

fn is_false(v: &bool) -> bool {
    !*v
}

impl VariantProfile {
    fn is_reference(&self) -> bool {
        *self == Self::default()
    }

    fn build(&self) -> Result<Variant, SimError> {
        let sw = |s: &Option<String>, field, default| match s {
            None => Ok(default),
            Some(s) => fixed::<2>(s, field).map(u16::from_be_bytes),
        };
        let d = Variant::default();
        Ok(Variant {
            auth_code: match &self.auth_code {
                None => None,
                Some(c) => Some(fixed(c, "variant.auth_code")?),
            },
            capp_record: self.capp_record,
            mac_error_sw: sw(&self.mac_error_sw, "variant.mac_error_sw", d.mac_error_sw)?,
            over_balance_sw: sw(
                &self.over_balance_sw,
                "variant.over_balance_sw",
                d.over_balance_sw,
            )?,
            prove_atc: match self.prove_atc.as_deref() {
                None | Some("initialize") => ProveAtc::Initialize,
                Some("next") => ProveAtc::Next,
                Some(_) => {
                    return Err(SimError::Field(
                        "variant.prove_atc",
                        "must be `initialize` or `next`",
                    ));
                }
            },
            prove_once: self.prove_once,
            prove_zero_mac: self.prove_zero_mac,
            pin_before_load: self.pin_before_load,
            capp_by_tag: self.capp_by_tag,
        })
    }
}

impl From<&Variant> for VariantProfile {
    fn from(v: &Variant) -> Self {
        let d = Variant::default();
        let sw = |x: u16, def: u16| (x != def).then(|| hex(&x.to_be_bytes()));
        Self {
            auth_code: v.auth_code.map(|c| hex(&c)),
            capp_record: v.capp_record,
            mac_error_sw: sw(v.mac_error_sw, d.mac_error_sw),
            over_balance_sw: sw(v.over_balance_sw, d.over_balance_sw),
            prove_atc: (v.prove_atc != d.prove_atc).then(|| v.prove_atc.name().to_string()),
            prove_once: v.prove_once,
            prove_zero_mac: v.prove_zero_mac,
            pin_before_load: v.pin_before_load,
            capp_by_tag: v.capp_by_tag,
        }
    }
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn is_zero_u16(v: &u16) -> bool {
    *v == 0
}

/// A CPU card profile (`kind = "cpu"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CpuProfile {
    /// `des3` or `sm4`.
    pub profile: String,
    /// Application serial, 8 or 10 bytes hex.
    pub card_number: String,
    /// Balance, fen.
    pub balance: u32,
    /// Balance limit, fen.
    pub balance_limit: u32,
    /// Online (load) counter.
    pub online_atc: u16,
    /// Offline (purchase) counter.
    pub offline_atc: u16,
    /// ED balance, fen.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ed_balance: u32,
    /// ED online (load) counter.
    #[serde(skip_serializing_if = "is_zero_u16")]
    pub ed_online_atc: u16,
    /// ED offline (purchase) counter.
    #[serde(skip_serializing_if = "is_zero_u16")]
    pub ed_offline_atc: u16,
    /// Fixed 4-byte random, hex (wins over `seed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random: Option<String>,
    /// Seed of the deterministic random generator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Draws already taken from the generator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed_counter: Option<u64>,
    /// Application locked.
    pub locked: bool,
    /// Transaction log records (23 bytes hex), newest first.
    pub log: Vec<String>,
    /// CAPP records (48 bytes hex).
    pub capp: Vec<String>,
    /// Keys.
    pub keys: KeysProfile,
    /// PIN.
    pub pin: PinProfile,
    /// EF 0015.
    pub public_info: PublicInfoProfile,
    /// Proof of the last transaction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_prove: Option<ProveProfile>,
    /// Deviations from the reference (city variants).
    #[serde(skip_serializing_if = "VariantProfile::is_reference")]
    pub variant: VariantProfile,
}

impl Default for CpuProfile {
    fn default() -> Self {
        Self {
            profile: "des3".to_string(),
            card_number: "4100000089999985".to_string(),
            balance: 0,
            balance_limit: 1_000_000,
            online_atc: 0,
            offline_atc: 0,
            ed_balance: 0,
            ed_online_atc: 0,
            ed_offline_atc: 0,
            random: None,
            seed: Some(1),
            seed_counter: None,
            locked: false,
            log: Vec::new(),
            capp: Vec::new(),
            keys: KeysProfile::default(),
            pin: PinProfile::default(),
            public_info: PublicInfoProfile::default(),
            last_prove: None,
            variant: VariantProfile::default(),
        }
    }
}

impl CpuProfile {
    /// Builds the card.
    pub fn build(&self) -> Result<CpuCard, SimError> {
        let algo = Algorithm::from_name(&self.profile)
            .ok_or(SimError::Field("profile", "must be des3 or sm4"))?;
        let card_number =
            unhex(&self.card_number).ok_or(SimError::Field("card_number", "not hex"))?;
        let random = match (&self.random, self.seed) {
            (Some(r), _) => RandomSource::Fixed(fixed(r, "random")?),
            (None, seed) => RandomSource::Seeded {
                seed: seed.unwrap_or(1),
                counter: self.seed_counter.unwrap_or(0),
            },
        };
        let log = self
            .log
            .iter()
            .map(|r| fixed::<LOG_RECORD_LEN>(r, "log"))
            .collect::<Result<Vec<_>, _>>()?;
        if self.capp.len() > super::cpu::CAPP_RECORDS {
            return Err(SimError::Field("capp", "too many records"));
        }
        let capp = self
            .capp
            .iter()
            .map(|r| fixed::<CAPP_RECORD_LEN>(r, "capp"))
            .collect::<Result<Vec<_>, _>>()?;
        let last_prove = match &self.last_prove {
            None => None,
            Some(p) => Some(Prove {
                atc: p.atc,
                ttype: p.ttype,
                mac: fixed(&p.mac, "last_prove.mac")?,
                tac: fixed(&p.tac, "last_prove.tac")?,
                answered: p.answered,
            }),
        };
        let k = &self.keys;
        let (l, p, t) = (
            k.load.bytes("keys.load")?,
            k.purchase.bytes("keys.purchase")?,
            k.tac.bytes("keys.tac")?,
        );
        let b = CpuCard::builder()
            .algorithm(algo)
            .card_number(&card_number)
            .public_info(self.public_info.build()?)
            .key_index(k.index, k.version)
            .balance(self.balance, self.balance_limit)
            .counters(self.online_atc, self.offline_atc)
            .ed(self.ed_balance, self.ed_online_atc, self.ed_offline_atc)
            .variant(self.variant.build()?)
            .pin(&self.pin.value.bytes("pin.value")?, self.pin.tries)
            .pin_tries_left(self.pin.tries_left)
            .random(random)
            .log(log)
            .capp(capp)
            .last_prove(last_prove)
            .locked(self.locked);
        let b = if k.master {
            b.master_keys(&l, &p, &t)
        } else {
            b.diversified_keys(&l, &p, &t)
        };
        b.build()
    }
}

impl CpuCard {
    /// The card's committed state as a profile (keys as they were given).
    pub fn to_profile(&self) -> CpuProfile {
        let s = &self.core.state;
        let p = self.purse();
        let (random, seed, seed_counter) = match s.random {
            RandomSource::Fixed(r) => (Some(hex(&r)), None, None),
            RandomSource::Seeded { seed, counter } => (None, Some(seed), Some(counter)),
        };
        let src = &s.keys.source;
        CpuProfile {
            profile: s.algo.name().to_string(),
            card_number: hex(&s.card_number),
            balance: p.balance,
            balance_limit: s.balance_limit,
            online_atc: p.online_atc,
            offline_atc: p.offline_atc,
            ed_balance: p.ed_balance,
            ed_online_atc: p.ed_online_atc,
            ed_offline_atc: p.ed_offline_atc,
            random,
            seed,
            seed_counter,
            locked: s.locked,
            log: p.log.iter().map(|r| hex(r)).collect(),
            capp: p.capp.iter().map(|r| hex(r)).collect(),
            keys: KeysProfile {
                master: src.master,
                index: s.keys.index,
                version: s.keys.version,
                load: KeyHex::from_bytes(&src.given[0]),
                purchase: KeyHex::from_bytes(&src.given[1]),
                tac: KeyHex::from_bytes(&src.given[2]),
            },
            pin: PinProfile {
                value: KeyHex::from_bytes(&s.pin),
                tries: s.pin_tries_max,
                tries_left: s.pin_tries_left,
            },
            public_info: (&s.public_info).into(),
            last_prove: p.last_prove.map(|v| ProveProfile {
                atc: v.atc,
                ttype: v.ttype,
                mac: hex(&v.mac),
                tac: hex(&v.tac),
                answered: v.answered,
            }),
            variant: (&s.variant).into(),
        }
    }
}

/// An M1 card profile (`kind = "m1"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct M1Profile {
    /// UID, 4 or 7 bytes hex.
    pub uid: String,
    /// 64 blocks of 16 bytes hex; empty = a fresh card. Trailers hold the sector keys.
    pub blocks: Vec<KeyHex>,
}

impl Default for M1Profile {
    fn default() -> Self {
        Self {
            uid: "A1B2C3D4".to_string(),
            blocks: Vec::new(),
        }
    }
}

impl M1Profile {
    /// Builds the card.
    pub fn build(&self) -> Result<M1Card, SimError> {
        let uid = unhex(&self.uid).ok_or(SimError::Field("uid", "not hex"))?;
        if self.blocks.is_empty() {
            return M1Card::new(&uid);
        }
        if self.blocks.len() != BLOCKS {
            return Err(SimError::Field("blocks", "must list 64 blocks"));
        }
        let mut blocks = [[0u8; 16]; BLOCKS];
        for (dst, src) in blocks.iter_mut().zip(&self.blocks) {
            *dst = fixed(&src.0, "blocks")?;
        }
        M1Card::from_blocks(&uid, blocks)
    }
}

impl M1Card {
    /// The card's state as a profile.
    pub fn to_profile(&self) -> M1Profile {
        M1Profile {
            uid: hex(self.uid_bytes()),
            blocks: self
                .blocks()
                .iter()
                .map(|b| KeyHex::from_bytes(b))
                .collect(),
        }
    }
}

impl CardProfile {
    /// Parses CARD.toml text.
    pub fn from_toml(text: &str) -> Result<Self, SimError> {
        toml::from_str(text).map_err(|e| SimError::Toml(e.to_string()))
    }

    /// Renders CARD.toml text.
    pub fn to_toml(&self) -> Result<String, SimError> {
        toml::to_string(self).map_err(|e| SimError::Toml(e.to_string()))
    }

    /// Builds the card.
    pub fn build(&self) -> Result<SimCard, SimError> {
        Ok(match self {
            CardProfile::Cpu(p) => SimCard::Cpu(p.build()?),
            CardProfile::M1(p) => SimCard::M1(p.build()?),
            CardProfile::Psam(p) => SimCard::Psam(p.build()?),
        })
    }
}

/// Either simulated card, as loaded from a CARD.toml.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one long-lived card per run
#[non_exhaustive]
pub enum SimCard {
    /// A CPU card.
    Cpu(CpuCard),
    /// An M1 card.
    M1(M1Card),
    /// A PSAM.
    Psam(PsamCard),
}

impl SimCard {
    /// The card's fault plan (tearing, forced status words, …), whatever its kind.
    pub fn faults_mut(&mut self) -> &mut super::FaultPlan {
        match self {
            SimCard::Cpu(c) => c.faults_mut(),
            SimCard::M1(c) => c.faults_mut(),
            SimCard::Psam(c) => c.faults_mut(),
        }
    }

    /// Loads a card from CARD.toml.
    pub fn load(path: &Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::Io {
            path: path.display().to_string(),
            source,
        })?;
        CardProfile::from_toml(&text)?.build()
    }

    /// The card's committed state as a profile.
    pub fn to_profile(&self) -> CardProfile {
        match self {
            SimCard::Cpu(c) => CardProfile::Cpu(c.to_profile()),
            SimCard::M1(c) => CardProfile::M1(c.to_profile()),
            SimCard::Psam(c) => CardProfile::Psam(c.to_profile()),
        }
    }

    /// Writes the card's committed state to `path` atomically (temporary file in the
    /// same directory, then rename).
    pub fn save(&self, path: &Path) -> Result<(), SimError> {
        write_atomic(path, &self.to_profile().to_toml()?)
    }

    /// The modelled air time since power on (or the last reset of the report).
    pub fn air_time(&self) -> &AirTimeReport {
        match self {
            SimCard::Cpu(c) => c.air_time(),
            SimCard::M1(c) => c.air_time(),
            SimCard::Psam(c) => c.air_time(),
        }
    }

    /// The card's identity for receipts: the application serial of a CPU card, the UID
    /// of an M1 card, the terminal number of a PSAM.
    pub fn card_id(&self) -> &[u8] {
        match self {
            SimCard::Cpu(c) => c.card_number(),
            SimCard::M1(c) => c.uid_bytes(),
            SimCard::Psam(c) => c.terminal_ref(),
        }
    }
}

/// Writes `text` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), SimError> {
    let io = |source| SimError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

impl CardTransport for SimCard {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        match self {
            SimCard::Cpu(c) => c.transmit(command, response),
            SimCard::M1(c) => c.transmit(command, response),
            SimCard::Psam(c) => c.transmit(command, response),
        }
    }
    fn power_on(&mut self) -> Result<(), TransportError> {
        match self {
            SimCard::Cpu(c) => c.power_on(),
            SimCard::M1(c) => c.power_on(),
            SimCard::Psam(c) => c.power_on(),
        }
    }
    fn power_off(&mut self) -> Result<(), TransportError> {
        match self {
            SimCard::Cpu(c) => c.power_off(),
            SimCard::M1(c) => c.power_off(),
            SimCard::Psam(c) => c.power_off(),
        }
    }
    fn reset(&mut self) -> Result<(), TransportError> {
        match self {
            SimCard::Cpu(c) => c.reset(),
            SimCard::M1(c) => c.reset(),
            SimCard::Psam(c) => c.reset(),
        }
    }
    fn atr(&self) -> Option<&[u8]> {
        match self {
            SimCard::Cpu(c) => c.atr(),
            SimCard::M1(c) => c.atr(),
            SimCard::Psam(c) => c.atr(),
        }
    }
    fn uid(&self) -> Option<&[u8]> {
        match self {
            SimCard::Cpu(c) => c.uid(),
            SimCard::M1(c) => c.uid(),
            SimCard::Psam(c) => c.uid(),
        }
    }
    fn air_time_us(&self) -> Option<u64> {
        match self {
            // A contact SAM is not on air.
            SimCard::Psam(_) => None,
            _ => Some(self.air_time().total_us()),
        }
    }
    fn reader_key_store(&self) -> bool {
        match self {
            SimCard::Cpu(c) => c.reader_key_store(),
            SimCard::M1(c) => c.reader_key_store(),
            SimCard::Psam(c) => c.reader_key_store(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_profile_round_trips_and_redacts() {
        let p = CardProfile::Cpu(CpuProfile::default());
        let text = p.to_toml().unwrap();
        let card = CardProfile::from_toml(&text).unwrap().build().unwrap();
        let saved = card.to_profile().to_toml().unwrap();
        let again = CardProfile::from_toml(&saved).unwrap().build().unwrap();
        assert_eq!(again.to_profile().to_toml().unwrap(), saved);
        let dbg = format!("{p:?} {card:?}");
        assert!(!dbg.contains("3F013F01"), "{dbg}");
        assert!(dbg.contains("REDACTED"));
    }

    #[test]
    fn m1_profile_round_trips() {
        let p = CardProfile::M1(M1Profile::default());
        let card = p.build().unwrap();
        let text = card.to_profile().to_toml().unwrap();
        let again = CardProfile::from_toml(&text).unwrap().build().unwrap();
        assert_eq!(again.to_profile().to_toml().unwrap(), text);
        assert!(!format!("{card:?}").contains("FFFFFFFFFFFF"));
    }

    #[test]
    fn bad_profiles_are_errors() {
        assert!(
            CardProfile::from_toml("kind = \"cpu\"\nprofile = \"aes\"")
                .unwrap()
                .build()
                .is_err()
        );
        assert!(CardProfile::from_toml("kind = \"tape\"").is_err());
        assert!(CardProfile::from_toml("kind = \"cpu\"\nbalanse = 1").is_err());
        assert!(
            CardProfile::from_toml("kind = \"m1\"\nuid = \"A1\"")
                .unwrap()
                .build()
                .is_err()
        );
    }
}
