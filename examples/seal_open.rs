//! Generates an issuer and a reader key pair, seals a small data script for the
//! reader (bound to one command script), opens it, and prints what happened: a replay
//! attempt, and an attempt to open it for another command script.
//!
//! `cargo run --example seal_open`

use cardvm::crypto::rng::os_rng;
use cardvm::crypto::sm2::Sm2PrivateKey;
use cardvm::envelope::time::format_rfc3339;
use cardvm::envelope::{
    EnvelopeHeader, Expect, MemoryReplayStore, Opener, ScriptKind, seal, unix_now,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = os_rng();
    let issuer = Sm2PrivateKey::generate(&mut rng);
    let reader = Sm2PrivateKey::generate(&mut rng);
    println!("issuer key: {issuer:?}, reader key: {reader:?}");

    let now = unix_now();
    let header = EnvelopeHeader {
        kind: ScriptKind::Data,
        city: 731,
        script_id: 1,
        script_version: 1,
        seq: 1,
        issued: now,
        expires: now + 3600,
        // The SM3 of the command script this data script may run with.
        binding: cardvm::crypto::sm3(b"the city's load script"),
        reader_id: "reader-0001".into(),
    };
    let payload = b"amount=1000 terminal=112233445566";
    let blob = seal(&issuer, reader.public_key(), &header, payload, &mut rng)?;
    println!(
        "sealed {} payload bytes into {} bytes, expires {}",
        payload.len(),
        blob.len(),
        format_rfc3339(header.expires)
    );

    let mut opener = Opener::new(
        Some("reader-0001"),
        reader,
        issuer.public_key().clone(),
        MemoryReplayStore::new(),
    );
    let evil = cardvm::crypto::sm3(b"an attacker's load script");
    match opener.open(&blob, now, Expect::DataFor(&evil)) {
        Ok(_) => println!("opened for another command script (unexpected!)"),
        Err(e) => println!("other command script rejected: {e}"),
    }
    let opened = opener.open(&blob, now, Expect::DataFor(&header.binding))?;
    println!(
        "opened: {:?} -> {:?}",
        opened,
        String::from_utf8_lossy(opened.payload())
    );
    match opener.open(&blob, now, Expect::DataFor(&header.binding)) {
        Ok(_) => println!("replay accepted (unexpected!)"),
        Err(e) => println!("replay rejected: {e}"),
    }
    Ok(())
}
