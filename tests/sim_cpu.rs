//! Simulated CPU card: file system, purse status-word paths, tearing, published vector.

use cardvm::sim::{Algorithm, CpuCard, Fault, RandomSource, exchange};
use cardvm::transport::{CardTransport, TransportError};

fn h(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn ex(card: &mut CpuCard, apdu: &str) -> (Vec<u8>, u16) {
    exchange(card, &h(apdu)).unwrap()
}

const SELECT_PURSE: &str = "00A4040009A00000000386980701 00";

/// The published load vector (epurse.md "Published worked example").
#[test]
fn published_load_vector_mac1() {
    let mut card = CpuCard::builder()
        .diversified_keys(
            &h("3F013F013F013F013F013F013F013F01"),
            &[0x11; 16],
            &[0x22; 16],
        )
        .balance(0, 1_000_000)
        .counters(0, 0)
        .random(RandomSource::Fixed([0xF9, 0xCA, 0xBA, 0x91]))
        .build()
        .unwrap();
    assert_eq!(ex(&mut card, SELECT_PURSE).1, 0x9000);
    let (r, sw) = ex(&mut card, "805000020B 01 00001234 000000000001 10");
    assert_eq!(sw, 0x9000);
    assert_eq!(r.len(), 16);
    assert_eq!(&r[0..4], &h("00000000")[..]);
    assert_eq!(&r[4..6], &h("0000")[..]);
    assert_eq!(r[7], 0x00, "algId 00 = 3DES");
    assert_eq!(&r[8..12], &h("F9CABA91")[..]);
    assert_eq!(&r[12..16], &h("6C394D64")[..]);
}
