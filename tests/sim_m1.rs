//! Simulated M1 card behind a PC/SC Part 3 reader front (epurse.md M1 table).

mod sim_common;

use cardvm::sim::m1::{AccessBits, M1Card, value_block};
use cardvm::sim::{Fault, exchange};
use cardvm::transport::{CardTransport, TransportError};
use sim_common::h;

fn ex(c: &mut M1Card, apdu: &str) -> (Vec<u8>, u16) {
    exchange(c, &h(apdu)).unwrap()
}

const KA: &str = "A0A1A2A3A4A5";
const KB: &str = "B0B1B2B3B4B5";

/// Sector 1 with key A / key B and the given access conditions (C1C2C3 per block).
fn card_with(ac: [u8; 4]) -> M1Card {
    let mut c = M1Card::new(&h("A1B2C3D4")).unwrap();
    let mut t = [0u8; 16];
    t[..6].copy_from_slice(&h(KA));
    t[6..9].copy_from_slice(&AccessBits(ac).encode());
    t[9] = 0x69;
    t[10..].copy_from_slice(&h(KB));
    c.set_block(7, t).unwrap();
    c
}

fn auth(c: &mut M1Card, block: u8, b: bool) -> u16 {
    let kt = if b { "61" } else { "60" };
    let kn = if b { "01" } else { "00" };
    assert_eq!(ex(c, &format!("FF82000006{KA}")).1, 0x9000);
    assert_eq!(ex(c, &format!("FF82000106{KB}")).1, 0x9000);
    ex(c, &format!("FF860000050100{block:02X}{kt}{kn}")).1
}

#[test]
fn uid_atr_and_unsupported() {
    let mut c = M1Card::new(&h("A1B2C3D4")).unwrap();
    assert_eq!(ex(&mut c, "FFCA000000"), (h("A1B2C3D4"), 0x9000));
    assert_eq!(c.uid(), Some(&h("A1B2C3D4")[..]));
    assert_eq!(c.atr().unwrap()[0], 0x3B);
    assert_eq!(ex(&mut c, "FFCA010000").1, 0x6A81);
    assert_eq!(ex(&mut c, "FF99000000").1, 0x6A81);
    assert_eq!(ex(&mut c, "00A4040000").1, 0x6A81);
    assert!(M1Card::new(&h("A1B2")).is_err());
    let c7 = M1Card::new(&h("04112233445566")).unwrap();
    assert_eq!(&c7.blocks()[0][..7], &h("04112233445566")[..]);
}

#[test]
fn authentication_and_transport_configuration() {
    let mut c = M1Card::new(&h("A1B2C3D4")).unwrap();
    // Not authenticated.
    assert_eq!(ex(&mut c, "FFB0000410").1, 0x6300);
    // Key store: slots 0 and 1 only; 6 bytes.
    assert_eq!(ex(&mut c, "FF82000006FFFFFFFFFFFF").1, 0x9000);
    assert_eq!(ex(&mut c, "FF82000206FFFFFFFFFFFF").1, 0x6300);
    assert_eq!(ex(&mut c, "FF82000005FFFFFFFFFF").1, 0x6700);
    // Authenticate with an empty slot, a wrong key, a bad key type: 6300.
    assert_eq!(ex(&mut c, "FF860000050100046001").1, 0x6300);
    assert_eq!(ex(&mut c, "FF82000106FFFFFFFFFFFE").1, 0x9000);
    assert_eq!(ex(&mut c, "FF860000050100046001").1, 0x6300);
    assert_eq!(ex(&mut c, "FF860000050100046200").1, 0x6300);
    assert_eq!(ex(&mut c, "FF860000050100406000").1, 0x6300);
    assert_eq!(ex(&mut c, "FF8600000401000460").1, 0x6700);
    assert_eq!(ex(&mut c, "FF860000050100046000").1, 0x9000);
    assert_eq!(ex(&mut c, "FFB0000410"), (vec![0; 16], 0x9000));
    assert_eq!(ex(&mut c, "FFB0000411").1, 0x6700);
    let data = "00112233445566778899AABBCCDDEEFF";
    assert_eq!(ex(&mut c, &format!("FFD6000510{data}")).1, 0x9000);
    assert_eq!(ex(&mut c, "FFB0000510"), (h(data), 0x9000));
    // Trailer read: key A as zeros, access bits, key B (readable in transport config).
    assert_eq!(
        ex(&mut c, "FFB0000710"),
        (h("000000000000 FF0780 69 FFFFFFFFFFFF"), 0x9000)
    );
    // Another sector: the authentication is dropped.
    assert_eq!(ex(&mut c, "FFB0000810").1, 0x6300);
    assert_eq!(ex(&mut c, "FFB0000410").1, 0x6300);
    // Block 0 is read-only even when authenticated.
    assert_eq!(ex(&mut c, "FF860000050100006000").1, 0x9000);
    assert_eq!(ex(&mut c, "FFB0000010").0[..4], h("A1B2C3D4"));
    assert_eq!(ex(&mut c, &format!("FFD6000010{data}")).1, 0x6300);
    // Leaving the field drops the authentication.
    c.power_off().unwrap();
    c.power_on().unwrap();
    assert_eq!(ex(&mut c, "FFB0000110").1, 0x6300);
}

#[test]
fn key_b_readable_cannot_be_used_for_access() {
    // Transport configuration: key B is readable, so authenticating with it allows nothing.
    let mut c = M1Card::new(&h("A1B2C3D4")).unwrap();
    ex(&mut c, "FF82000106FFFFFFFFFFFF");
    assert_eq!(ex(&mut c, "FF860000050100046101").1, 0x9000);
    assert_eq!(ex(&mut c, "FFB0000410").1, 0x6300);
}

#[test]
fn data_block_access_conditions() {
    // (C1C2C3, read A, read B, write A, write B)
    let cases = [
        (0b000, true, true, true, true),
        (0b010, true, true, false, false),
        (0b100, true, true, false, true),
        (0b110, true, true, false, true),
        (0b001, true, true, false, false),
        (0b011, false, true, false, true),
        (0b101, false, true, false, false),
        (0b111, false, false, false, false),
    ];
    let data = "0102030405060708090A0B0C0D0E0F10";
    for (bits, ra, rb, wa, wb) in cases {
        // Trailer 011: key B not readable, so it serves for authentication.
        for use_b in [false, true] {
            let mut c = card_with([bits, bits, bits, 0b011]);
            assert_eq!(auth(&mut c, 4, use_b), 0x9000);
            let (r, w) = if use_b { (rb, wb) } else { (ra, wa) };
            assert_eq!(
                ex(&mut c, "FFB0000410").1 == 0x9000,
                r,
                "read {bits:03b} B={use_b}"
            );
            assert_eq!(
                ex(&mut c, &format!("FFD6000510{data}")).1 == 0x9000,
                w,
                "write {bits:03b} B={use_b}"
            );
        }
    }
}

#[test]
fn value_blocks_and_their_access_conditions() {
    // Block 4: 110 (read AB, write B, increment B, decrement AB); block 5: 001 (read AB,
    // decrement AB only); trailer 011.
    let mut c = card_with([0b110, 0b001, 0b000, 0b011]);
    c.set_block(5, value_block(40, 5)).unwrap();
    assert_eq!(auth(&mut c, 4, false), 0x9000);
    assert_eq!(
        ex(&mut c, "FFD700040500000003E8").1,
        0x6300,
        "store needs write (B)"
    );
    assert_eq!(auth(&mut c, 4, true), 0x9000);
    assert_eq!(ex(&mut c, "FFD700040500000003E8").1, 0x9000);
    assert_eq!(c.blocks()[4], value_block(1000, 4));
    assert_eq!(ex(&mut c, "FFB1000404"), (h("000003E8"), 0x9000));
    assert_eq!(ex(&mut c, "FFD70004050100000064").1, 0x9000);
    assert_eq!(ex(&mut c, "FFB1000404").0, h("0000044C"));
    assert_eq!(auth(&mut c, 4, false), 0x9000);
    assert_eq!(
        ex(&mut c, "FFD70004050100000001").1,
        0x6300,
        "increment needs B"
    );
    assert_eq!(ex(&mut c, "FFD70004050200000032").1, 0x9000);
    assert_eq!(ex(&mut c, "FFB1000404").0, h("0000041A"));
    assert_eq!(ex(&mut c, "FFD70005050200000005").1, 0x9000);
    assert_eq!(ex(&mut c, "FFB1000504").0, h("00000023"));
    assert_eq!(
        ex(&mut c, "FFD70005050100000005").1,
        0x6300,
        "001: no increment"
    );
    // Restore 4 → 5 (both need decrement/transfer).
    assert_eq!(ex(&mut c, "FFD70004020305").1, 0x9000);
    assert_eq!(ex(&mut c, "FFB1000504").0, h("0000041A"));
    // Block 6 (000) allows transfer with key A too.
    assert_eq!(ex(&mut c, "FFD70004020306").1, 0x9000);
    assert_eq!(ex(&mut c, "FFB1000604").0, h("0000041A"));
    c.set_block(6, [0; 16]).unwrap();
    // Bad formats: unknown op, bad length, a non-value block, another sector.
    assert_eq!(ex(&mut c, "FFD70004050700000001").1, 0x6A81);
    assert_eq!(ex(&mut c, "FFD700040401000000").1, 0x6700);
    assert_eq!(ex(&mut c, "FFB1000604").1, 0x6300);
    assert_eq!(ex(&mut c, "FFD70006050100000001").1, 0x6300);
    assert_eq!(ex(&mut c, "FFB1000404").1, 0x9000);
    assert_eq!(ex(&mut c, "FFD70004020309").1, 0x6300);
    // Overflow fails and changes nothing.
    assert_eq!(auth(&mut c, 4, true), 0x9000);
    assert_eq!(ex(&mut c, "FFD7000405007FFFFFFF").1, 0x9000);
    assert_eq!(ex(&mut c, "FFD70004050100000001").1, 0x6300);
    assert_eq!(ex(&mut c, "FFB1000404").0, h("7FFFFFFF"));
    // A corrupted value block fails the format check.
    let mut bad = value_block(7, 4);
    bad[9] ^= 0x10;
    c.set_block(4, bad).unwrap();
    assert_eq!(ex(&mut c, "FFB1000404").1, 0x6300);
    assert_eq!(ex(&mut c, "FFD70004050200000001").1, 0x6300);
}

#[test]
fn trailer_write_permissions() {
    // Transport trailer (001): key A may write key A, access bits and key B.
    let mut c = M1Card::new(&h("A1B2C3D4")).unwrap();
    ex(&mut c, "FF82000006FFFFFFFFFFFF");
    assert_eq!(ex(&mut c, "FF860000050100076000").1, 0x9000);
    // Inconsistent access bits are refused.
    assert_eq!(ex(&mut c, &format!("FFD6000710{KA}FF078169{KB}")).1, 0x6300);
    let ac = AccessBits([0, 0, 0, 0b011]).encode();
    let t = format!("{KA}{:02X}{:02X}{:02X}69{KB}", ac[0], ac[1], ac[2]);
    assert_eq!(ex(&mut c, &format!("FFD6000710{t}")).1, 0x9000);
    assert_eq!(c.blocks()[7], <[u8; 16]>::try_from(h(&t)).unwrap());
    // New keys now: the old key fails, key B (not readable under 011) reads key A as zeros
    // and key B as zeros.
    assert_eq!(ex(&mut c, "FF860000050100076000").1, 0x6300);
    assert_eq!(auth(&mut c, 7, true), 0x9000);
    let (r, _) = ex(&mut c, "FFB0000710");
    assert_eq!(&r[..6], &[0; 6]);
    assert_eq!(&r[6..10], &h(&t)[6..10]);
    assert_eq!(&r[10..], &[0; 6]);
    // Under 011 key A may not write the trailer at all.
    assert_eq!(auth(&mut c, 7, false), 0x9000);
    assert_eq!(ex(&mut c, &format!("FFD6000710{t}")).1, 0x6300);
}

#[test]
fn tearing_a_write_and_a_decrement() {
    let mut c = M1Card::new(&h("A1B2C3D4")).unwrap();
    c.set_block(4, value_block(100, 4)).unwrap();
    c.faults_mut().push(Fault::TearMidCommit(4));
    ex(&mut c, "FF82000006FFFFFFFFFFFF");
    ex(&mut c, "FF860000050100046000");
    assert_eq!(ex(&mut c, "FFB1000404").0, h("00000064"));
    assert_eq!(
        exchange(&mut c, &h("FFD70004050200000010")),
        Err(TransportError::CardRemoved)
    );
    assert_eq!(
        c.blocks()[4],
        value_block(100, 4),
        "torn decrement: not applied"
    );
    c.power_on().unwrap();
    c.faults_mut().push(Fault::TearAfter(2));
    assert_eq!(
        ex(&mut c, "FF860000050100046000").1,
        0x9000,
        "reader key store survives"
    );
    assert_eq!(
        exchange(&mut c, &h("FFD70004050200000010")),
        Err(TransportError::CardRemoved)
    );
    assert_eq!(c.blocks()[4], value_block(84, 4), "torn after: applied");
    c.power_on().unwrap();
    assert!(c.air_time().total_ns > 0);
    assert!(!format!("{c:?}").contains("FFFFFFFFFFFF"));
}
