//! Host-side helpers shared by the simulated-card tests: what a city script will do,
//! computed with the crypto API.
#![allow(dead_code)]

use cardvm::crypto::{KeyAlg, KeyUsage, SecretKey, pboc_mac, process_key, tac_key};
use cardvm::sim::{Algorithm, CpuCard, exchange};
use cardvm::transport::TransportError;

pub fn h(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub const SELECT_PURSE: &str = "00A4040009A00000000386980701 00";
pub const DLK: [u8; 16] = [
    0x3F, 0x01, 0x3F, 0x01, 0x3F, 0x01, 0x3F, 0x01, 0x3F, 0x01, 0x3F, 0x01, 0x3F, 0x01, 0x3F, 0x01,
];
pub const DPK: [u8; 16] = [0x5A; 16];
pub const DTK: [u8; 16] = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF,
];
pub const TERMINAL: [u8; 6] = [0, 0, 0, 0, 0, 1];
pub const DATE: [u8; 4] = [0x20, 0x25, 0x06, 0x01];
pub const TIME: [u8; 3] = [0x12, 0x34, 0x56];

pub fn key_alg(a: Algorithm) -> KeyAlg {
    match a {
        Algorithm::Des3 => KeyAlg::Des3,
        _ => KeyAlg::Sm4,
    }
}

pub fn ex(card: &mut CpuCard, apdu: &[u8]) -> Result<(Vec<u8>, u16), TransportError> {
    exchange(card, apdu)
}

pub fn exs(card: &mut CpuCard, apdu: &str) -> (Vec<u8>, u16) {
    exchange(card, &h(apdu)).unwrap()
}

/// The host keys of a card.
pub struct Host {
    pub alg: Algorithm,
    pub dlk: SecretKey,
    pub dpk: SecretKey,
    pub dtk: SecretKey,
}

impl Host {
    pub fn new(alg: Algorithm, dlk: &[u8], dpk: &[u8], dtk: &[u8]) -> Self {
        let k = key_alg(alg);
        Host {
            alg,
            dlk: SecretKey::new(k, KeyUsage::Load, dlk).unwrap(),
            dpk: SecretKey::new(k, KeyUsage::Purchase, dpk).unwrap(),
            dtk: SecretKey::new(k, KeyUsage::Tac, dtk).unwrap(),
        }
    }
}

pub fn init_load_apdu(amount: u32) -> Vec<u8> {
    let mut a = h("805000020B01");
    a.extend_from_slice(&amount.to_be_bytes());
    a.extend_from_slice(&TERMINAL);
    a.push(0x10);
    a
}

pub fn init_purchase_apdu(p1: u8, amount: u32) -> Vec<u8> {
    let mut a = vec![0x80, 0x50, p1, 0x02, 0x0B, 0x01];
    a.extend_from_slice(&amount.to_be_bytes());
    a.extend_from_slice(&TERMINAL);
    a.push(0x0F);
    a
}

/// Parsed INITIALIZE FOR LOAD response, with the host's MAC2 and expected TAC.
pub struct LoadInit {
    pub balance: u32,
    pub atc: u16,
    pub credit: Vec<u8>,
    pub mac2: [u8; 4],
    pub tac: [u8; 4],
}

/// Checks MAC1 of an INITIALIZE FOR LOAD response and prepares CREDIT FOR LOAD.
pub fn host_load(host: &Host, amount: u32, r: &[u8]) -> LoadInit {
    assert_eq!(r.len(), 16);
    let balance = u32::from_be_bytes(r[0..4].try_into().unwrap());
    let atc = u16::from_be_bytes([r[4], r[5]]);
    let mut input = [0u8; 8];
    input[..4].copy_from_slice(&r[8..12]);
    input[4..6].copy_from_slice(&r[4..6]);
    input[6..].copy_from_slice(&[0x80, 0x00]);
    let sk = process_key(&host.dlk, &input).unwrap();
    let mut m1 = balance.to_be_bytes().to_vec();
    m1.extend_from_slice(&amount.to_be_bytes());
    m1.push(0x02);
    m1.extend_from_slice(&TERMINAL);
    assert_eq!(pboc_mac(&sk, &m1).unwrap(), r[12..16], "card MAC1");
    let mut m2 = amount.to_be_bytes().to_vec();
    m2.push(0x02);
    m2.extend_from_slice(&TERMINAL);
    m2.extend_from_slice(&DATE);
    m2.extend_from_slice(&TIME);
    let mac2 = pboc_mac(&sk, &m2).unwrap();
    let mut t = (balance + amount).to_be_bytes().to_vec();
    t.extend_from_slice(&atc.to_be_bytes());
    t.extend_from_slice(&m2);
    let tac = pboc_mac(&tac_key(&host.dtk).unwrap(), &t).unwrap();
    let mut credit = h("805200000B");
    credit.extend_from_slice(&DATE);
    credit.extend_from_slice(&TIME);
    credit.extend_from_slice(&mac2);
    credit.push(0x04);
    LoadInit {
        balance,
        atc,
        credit,
        mac2,
        tac,
    }
}

/// Parsed INITIALIZE FOR PURCHASE response, with the terminal's DEBIT and the expected
/// card MAC2 and TAC.
pub struct PurchaseInit {
    pub balance: u32,
    pub atc: u16,
    pub debit: Vec<u8>,
    pub mac2: [u8; 4],
    pub tac: [u8; 4],
}

pub fn host_purchase(host: &Host, ttype: u8, amount: u32, seq: u32, r: &[u8]) -> PurchaseInit {
    assert_eq!(r.len(), 15);
    let balance = u32::from_be_bytes(r[0..4].try_into().unwrap());
    let atc = u16::from_be_bytes([r[4], r[5]]);
    let seqb = seq.to_be_bytes();
    let mut input = [0u8; 8];
    input[..4].copy_from_slice(&r[11..15]);
    input[4..6].copy_from_slice(&r[4..6]);
    input[6..].copy_from_slice(&seqb[2..]);
    let sk = process_key(&host.dpk, &input).unwrap();
    let mut m1 = amount.to_be_bytes().to_vec();
    m1.push(ttype);
    m1.extend_from_slice(&TERMINAL);
    m1.extend_from_slice(&DATE);
    m1.extend_from_slice(&TIME);
    let mac1 = pboc_mac(&sk, &m1).unwrap();
    let mac2 = pboc_mac(&sk, &amount.to_be_bytes()).unwrap();
    let mut t = amount.to_be_bytes().to_vec();
    t.push(ttype);
    t.extend_from_slice(&TERMINAL);
    t.extend_from_slice(&seqb);
    t.extend_from_slice(&DATE);
    t.extend_from_slice(&TIME);
    let tac = pboc_mac(&tac_key(&host.dtk).unwrap(), &t).unwrap();
    let mut debit = h("805401000F");
    debit.extend_from_slice(&seqb);
    debit.extend_from_slice(&DATE);
    debit.extend_from_slice(&TIME);
    debit.extend_from_slice(&mac1);
    debit.push(0x08);
    PurchaseInit {
        balance,
        atc,
        debit,
        mac2,
        tac,
    }
}

pub fn prove_apdu(ttype: u8, atc: u16) -> Vec<u8> {
    let mut a = vec![0x80, 0x5A, 0x00, ttype, 0x02];
    a.extend_from_slice(&atc.to_be_bytes());
    a.push(0x08);
    a
}
