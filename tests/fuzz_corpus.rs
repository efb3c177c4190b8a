//! Replays every committed fuzz corpus and crash file through the fuzz-target bodies
//! on stable Rust, so a fixed crash stays fixed.

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) -> usize {
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join(dir)
            .join(target);
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).expect("readable corpus file");
            body(&bytes);
            n += 1;
        }
    }
    n
}

#[test]
fn command_script_corpus() {
    assert!(
        replay("command_script", cardvm::fuzzing::command_script) > 0,
        "no corpus committed"
    );
}

#[test]
fn data_script_corpus() {
    assert!(
        replay("data_script", cardvm::fuzzing::data_script) > 0,
        "no corpus committed"
    );
}

#[test]
fn verify_and_run_corpus() {
    assert!(
        replay("verify_and_run", cardvm::fuzzing::verify_and_run) > 0,
        "no corpus committed"
    );
}

#[test]
fn assemble_corpus() {
    assert!(
        replay("assemble", cardvm::fuzzing::assemble) > 0,
        "no corpus committed"
    );
}

#[test]
fn compile_corpus() {
    assert!(
        replay("compile", cardvm::fuzzing::compile) > 0,
        "no corpus committed"
    );
}

#[test]
fn data_toml_corpus() {
    assert!(
        replay("data_toml", cardvm::fuzzing::data_toml) > 0,
        "no corpus committed"
    );
}

#[test]
fn verify_and_run_sim_corpus() {
    assert!(
        replay("verify_and_run_sim", cardvm::fuzzing::verify_and_run_sim) > 0,
        "no corpus committed"
    );
}

#[test]
fn envelope_open_corpus() {
    assert!(
        replay("envelope_open", cardvm::fuzzing::envelope_open) > 0,
        "no corpus committed"
    );
}

#[test]
fn vpcd_frame_corpus() {
    assert!(
        replay("vpcd_frame", cardvm::fuzzing::vpcd_frame) > 0,
        "no corpus committed"
    );
}

#[test]
fn signed_request_corpus() {
    assert!(
        replay("signed_request", cardvm::fuzzing::signed_request) > 0,
        "no corpus committed"
    );
}

#[test]
fn v1_bodies_corpus() {
    assert!(
        replay("v1_bodies", cardvm::fuzzing::v1_bodies) > 0,
        "no corpus committed"
    );
}

#[test]
fn pki_parse_corpus() {
    assert!(
        replay("pki_parse", cardvm::fuzzing::pki_parse) > 0,
        "no corpus committed"
    );
}

/// Writes the seed corpora of the fuzz targets from the city scripts:
/// `cargo test --test fuzz_corpus -- --ignored write_seed_corpora`.
#[test]
#[ignore = "regenerates fuzz/corpus seeds"]
fn write_seed_corpora() {
    use cardvm::asm::{AsmOptions, assemble_file, compile_data};
    use cardvm::envelope::{EnvelopeHeader, ScriptKind, seal};
    use cardvm::sim::SimCard;
    use cardvm::transport::{ApduLayer, CardTransport, TransportError};
    use cardvm::verify::VerifiedProgram;
    use cardvm::vm::{NoTrace, Vm};

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("fuzz/corpus");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };

    /// Records every command APDU sent to the card.
    struct Recorder<'a>(&'a mut SimCard, Vec<Vec<u8>>);
    impl CardTransport for Recorder<'_> {
        fn transmit(&mut self, c: &[u8], r: &mut [u8]) -> Result<usize, TransportError> {
            self.1.push(c.to_vec());
            self.0.transmit(c, r)
        }
        // The M1 scripts' `ldrkey` needs the simulated reader's key store.
        fn reader_key_store(&self) -> bool {
            self.0.reader_key_store()
        }
    }

    let mut frames = Vec::new();
    cardvm::transport::vpcd::encode_frame(&[0x01], &mut frames).unwrap();
    cardvm::transport::vpcd::encode_frame(&[0x04], &mut frames).unwrap();
    for (sel, city) in [
        (0u8, "city0731-des3"),
        (1, "city0755-sm4"),
        (2, "city0571-m1"),
    ] {
        let dir = root.join("scripts").join(city);
        let card_toml = dir.join("card.toml");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        names.sort();
        for path in names {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let text = std::fs::read_to_string(&path).unwrap();
            match ext {
                "cvs" => put("compile", &format!("{city}-{stem}.cvs"), text.as_bytes()),
                "casm" => {
                    put("assemble", &format!("{city}-{stem}.casm"), text.as_bytes());
                    let script = assemble_file(&path, &AsmOptions::default()).unwrap().script;
                    let cvm = script.encode();
                    let mut input = vec![sel];
                    input.extend_from_slice(&cvm);
                    put("verify_and_run_sim", &format!("{city}-{stem}"), &input);
                    input[0] = sel | 0x80 | (3 << 2);
                    put("verify_and_run_sim", &format!("{city}-{stem}-torn"), &input);
                    // APDUs of the flow on its card, for the vpcd corpus.
                    let toml = dir.join(format!("{stem}.toml"));
                    let data = std::fs::read_to_string(&toml)
                        .map(|t| compile_data(&t).unwrap())
                        .unwrap_or_default();
                    let program = VerifiedProgram::verify(&script).unwrap();
                    if let Ok(binding) = program.bind(&data) {
                        let mut card = SimCard::load(&card_toml).unwrap();
                        let mut rec = Recorder(&mut card, Vec::new());
                        let mut layer = ApduLayer::new(&mut rec);
                        Vm::default().run(
                            program.with_data(&data, &binding).unwrap(),
                            &mut layer,
                            &mut NoTrace,
                        );
                        drop(layer);
                        let mut stream = Vec::new();
                        cardvm::transport::vpcd::encode_frame(&[0x01], &mut stream).unwrap();
                        for apdu in &rec.1 {
                            cardvm::transport::vpcd::encode_frame(apdu, &mut stream).unwrap();
                        }
                        cardvm::transport::vpcd::encode_frame(&[0x00], &mut stream).unwrap();
                        put("vpcd_frame", &format!("{city}-{stem}"), &stream);
                        if stem == "load" {
                            frames.extend_from_slice(&stream);
                        }
                    }
                    if stem == "load" {
                        let (issuer, reader) = cardvm::fuzzing::envelope_test_keys().unwrap();
                        let mut rng = cardvm::crypto::rng::os_rng();
                        let header = |kind, seq| EnvelopeHeader {
                            kind,
                            city: 731,
                            script_id: 2,
                            script_version: 1,
                            seq,
                            issued: cardvm::fuzzing::ENVELOPE_NOW - 60,
                            expires: cardvm::fuzzing::ENVELOPE_NOW + 3600,
                            binding: cardvm::crypto::sm3(&cvm),
                            reader_id: cardvm::fuzzing::ENVELOPE_READER_ID.into(),
                        };
                        let cmd = seal(
                            &issuer,
                            reader.public_key(),
                            &header(ScriptKind::Command, 1),
                            &cvm,
                            &mut rng,
                        )
                        .unwrap();
                        put("envelope_open", &format!("{city}-load-command"), &cmd);
                        let d = seal(
                            &issuer,
                            reader.public_key(),
                            &header(ScriptKind::Data, 2),
                            &data.encode(),
                            &mut rng,
                        )
                        .unwrap();
                        put("envelope_open", &format!("{city}-load-data"), &d);
                    }
                }
                "toml" if stem != "card" => {
                    put("data_toml", &format!("{city}-{stem}.toml"), text.as_bytes());
                }
                _ => {}
            }
        }
    }
    put("vpcd_frame", "all-loads", &frames);
    for entry in std::fs::read_dir(root.join("scripts/common"))
        .unwrap()
        .flatten()
    {
        let name = entry.file_name().to_str().unwrap().to_string();
        let text = std::fs::read(entry.path()).unwrap();
        put("assemble", &format!("common-{name}"), &text);
    }
}
