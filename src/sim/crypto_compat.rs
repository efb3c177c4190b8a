//! Temporary stand-in for the `crate::crypto` API (being written on another branch).
//! Same names and signatures; removed when the crypto module is merged.
#![allow(dead_code)]

use alloc::vec::Vec;
use des::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use zeroize::Zeroizing;

/// Algorithm of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    /// Single DES.
    Des,
    /// Two-key 3DES.
    Des3,
    /// SM4.
    Sm4,
    /// M1 sector key.
    M1,
}

/// Usage of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsage {
    /// Load.
    Load,
    /// Purchase.
    Purchase,
    /// TAC.
    Tac,
    /// Master.
    Master,
    /// Session.
    Session,
    /// Encrypt.
    Encrypt,
    /// MAC.
    Mac,
    /// M1 A.
    M1A,
    /// M1 B.
    M1B,
    /// Any.
    Any,
}

/// Crypto failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoError;

/// A key.
#[derive(Clone)]
pub struct SecretKey {
    alg: KeyAlg,
    usage: KeyUsage,
    bytes: Zeroizing<Vec<u8>>,
}

impl core::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SecretKey({:?}, REDACTED)", self.alg)
    }
}

impl SecretKey {
    /// New key.
    pub fn new(alg: KeyAlg, usage: KeyUsage, b: &[u8]) -> Result<SecretKey, CryptoError> {
        let ok = match alg {
            KeyAlg::Des => b.len() == 8,
            KeyAlg::Des3 => b.len() == 16 || b.len() == 24,
            KeyAlg::Sm4 => b.len() == 16,
            KeyAlg::M1 => b.len() == 6,
        };
        if !ok {
            return Err(CryptoError);
        }
        Ok(SecretKey {
            alg,
            usage,
            bytes: Zeroizing::new(b.to_vec()),
        })
    }
    /// Bytes.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.bytes
    }
    /// Algorithm.
    pub fn alg(&self) -> KeyAlg {
        self.alg
    }
}

fn enc_block(k: &SecretKey, block: &mut [u8]) -> Result<(), CryptoError> {
    match k.alg {
        KeyAlg::Des => {
            let c = des::Des::new_from_slice(k.expose()).map_err(|_| CryptoError)?;
            let mut b: Array<u8, _> = Array::try_from(&*block).map_err(|_| CryptoError)?;
            c.encrypt_block(&mut b);
            block.copy_from_slice(&b);
        }
        KeyAlg::Des3 => {
            let c = des::TdesEde2::new_from_slice(k.expose()).map_err(|_| CryptoError)?;
            let mut b: Array<u8, _> = Array::try_from(&*block).map_err(|_| CryptoError)?;
            c.encrypt_block(&mut b);
            block.copy_from_slice(&b);
        }
        KeyAlg::Sm4 => {
            let c = sm4::Sm4::new_from_slice(k.expose()).map_err(|_| CryptoError)?;
            let mut b: Array<u8, _> = Array::try_from(&*block).map_err(|_| CryptoError)?;
            c.encrypt_block(&mut b);
            block.copy_from_slice(&b);
        }
        KeyAlg::M1 => return Err(CryptoError),
    }
    Ok(())
}

fn bs(k: &SecretKey) -> usize {
    if k.alg == KeyAlg::Sm4 { 16 } else { 8 }
}

/// PBOC MAC.
pub fn pboc_mac(k: &SecretKey, data: &[u8]) -> Result<[u8; 4], CryptoError> {
    let n = bs(k);
    let mut d = data.to_vec();
    d.push(0x80);
    while d.len() % n != 0 {
        d.push(0);
    }
    let mut acc = alloc::vec![0u8; n];
    for ch in d.chunks(n) {
        for (a, b) in acc.iter_mut().zip(ch) {
            *a ^= b;
        }
        enc_block(k, &mut acc)?;
    }
    Ok([acc[0], acc[1], acc[2], acc[3]])
}

/// Process key.
pub fn process_key(master: &SecretKey, input: &[u8; 8]) -> Result<SecretKey, CryptoError> {
    match master.alg {
        KeyAlg::Des3 => {
            let mut b = input.to_vec();
            enc_block(master, &mut b)?;
            SecretKey::new(KeyAlg::Des, KeyUsage::Session, &b)
        }
        KeyAlg::Sm4 => {
            let mut b = input.to_vec();
            b.push(0x80);
            b.resize(16, 0);
            enc_block(master, &mut b)?;
            SecretKey::new(KeyAlg::Sm4, KeyUsage::Session, &b)
        }
        _ => Err(CryptoError),
    }
}

/// TAC key.
pub fn tac_key(dtk: &SecretKey) -> Result<SecretKey, CryptoError> {
    match dtk.alg {
        KeyAlg::Des3 => {
            let k = dtk.expose();
            let mut b = [0u8; 8];
            for i in 0..8 {
                b[i] = k[i] ^ k[i + 8];
            }
            SecretKey::new(KeyAlg::Des, KeyUsage::Tac, &b)
        }
        KeyAlg::Sm4 => Ok(dtk.clone()),
        _ => Err(CryptoError),
    }
}

/// Diversify.
pub fn diversify(mk: &SecretKey, f: &[u8; 8], usage: KeyUsage) -> Result<SecretKey, CryptoError> {
    let nf: Vec<u8> = f.iter().map(|b| !b).collect();
    match mk.alg {
        KeyAlg::Des3 => {
            let mut l = f.to_vec();
            enc_block(mk, &mut l)?;
            let mut r = nf;
            enc_block(mk, &mut r)?;
            l.extend_from_slice(&r);
            SecretKey::new(KeyAlg::Des3, usage, &l)
        }
        KeyAlg::Sm4 => {
            let mut b = f.to_vec();
            b.extend_from_slice(&nf);
            enc_block(mk, &mut b)?;
            SecretKey::new(KeyAlg::Sm4, usage, &b)
        }
        _ => Err(CryptoError),
    }
}

/// Constant-time equality.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// ECB encrypt.
pub fn ecb_encrypt(k: &SecretKey, data: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
    let n = bs(k);
    if data.len() % n != 0 {
        return Err(CryptoError);
    }
    out.clear();
    for ch in data.chunks(n) {
        let mut b = ch.to_vec();
        enc_block(k, &mut b)?;
        out.extend_from_slice(&b);
    }
    Ok(())
}

#[allow(unused_imports)]
use BlockCipherDecrypt as _;
