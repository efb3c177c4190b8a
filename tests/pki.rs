//! The card company's PKI, attacked: every way a reader certificate can be wrong is
//! refused by `TrustStore::verify_reader` with its own typed error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cardvm::crypto::rng::os_rng;
use cardvm::crypto::sm2::Sm2PrivateKey;
use cardvm::issuer::cert::{CertKind, CertTemplate, issue, serial_of};
use cardvm::issuer::csr::{reader_request, verify_request};
use cardvm::issuer::pki::{CertSigner, entity_name, from_pem, parse_name, to_pem};
use cardvm::issuer::{Ca, CaState, Certificate, PkiError, ReaderKind, Role, TrustStore};
use der::{Decode, Encode};

const NOW: u64 = 1_900_000_000; // 2030-03-17
const DAY: u64 = 86_400;

fn key() -> Sm2PrivateKey {
    Sm2PrivateKey::generate(&mut os_rng())
}

fn root(name: &str) -> Ca {
    Ca::new_root(
        parse_name(&format!("CN={name},O=Transit")).unwrap(),
        key(),
        NOW - 10 * DAY,
        NOW + 3650 * DAY,
        None,
        os_rng(),
    )
    .unwrap()
}

fn reader(ca: &mut Ca, id: &str) -> (Sm2PrivateKey, Certificate) {
    let k = key();
    let c = ca
        .issue_reader(
            id,
            k.public_key(),
            ReaderKind::Desktop,
            NOW - DAY,
            NOW + 30 * DAY,
            os_rng(),
        )
        .unwrap();
    (k, c)
}

fn crl(ca: &mut Ca) -> x509_cert::crl::CertificateList {
    ca.crl(NOW - DAY, NOW + 7 * DAY, os_rng()).unwrap()
}

fn store(root: &Certificate, crl_from: &mut [&mut Ca]) -> TrustStore {
    let mut s = TrustStore::new();
    s.add_root(root.clone()).unwrap();
    for ca in crl_from.iter_mut() {
        s.add_crl(crl(ca));
    }
    s
}

#[test]
fn good_reader_certificate_verifies() {
    let mut ca = root("Root");
    let (k, cert) = reader(&mut ca, "R1");
    let s = store(&ca.cert.clone(), &mut [&mut ca]);
    let id = s.verify_reader(std::slice::from_ref(&cert), NOW).unwrap();
    assert_eq!(id.reader_id, "R1");
    assert_eq!(&id.public_key, k.public_key());
    assert_eq!(id.serial, serial_of(&cert));
    assert_eq!(id.not_after, NOW + 30 * DAY);
    assert_eq!(
        s.verify_reader_id(&[cert], "R1", NOW).unwrap().reader_id,
        "R1"
    );
}

#[test]
fn two_level_chain_verifies_from_store_or_sent_by_the_reader() {
    let mut rootca = root("Industry Root");
    let mut city = rootca
        .new_intermediate(
            parse_name("CN=City CA,O=City").unwrap(),
            key(),
            NOW - DAY,
            NOW + 365 * DAY,
            Some(0),
            os_rng(),
        )
        .unwrap();
    let (_, cert) = reader(&mut city, "R7");
    let mut s = store(&rootca.cert.clone(), &mut [&mut rootca, &mut city]);
    // The reader sends its intermediate…
    let id = s
        .verify_reader(&[cert.clone(), city.cert.clone()], NOW)
        .unwrap();
    assert_eq!(id.reader_id, "R7");
    assert!(id.issuer.contains("City CA"));
    // …or the issuer service knows it.
    assert!(matches!(
        s.verify_reader(std::slice::from_ref(&cert), NOW),
        Err(PkiError::UnknownIssuer { .. })
    ));
    s.add_intermediate(city.cert.clone()).unwrap();
    s.verify_reader(&[cert], NOW).unwrap();
}

#[test]
fn expired_and_not_yet_valid_certificates_refused() {
    let mut ca = root("Root");
    let (_, cert) = reader(&mut ca, "R1");
    let s = store(&ca.cert.clone(), &mut [&mut ca]);
    match s.verify_reader(std::slice::from_ref(&cert), NOW + 31 * DAY) {
        Err(PkiError::Expired { not_after, .. }) => assert_eq!(not_after, NOW + 30 * DAY),
        other => panic!("expired certificate: {other:?}"),
    }
    assert!(matches!(
        s.verify_reader(&[cert], NOW - 2 * DAY),
        Err(PkiError::NotYetValid { .. })
    ));
    // An expired intermediate breaks every chain under it.
    let mut rootca = root("Root2");
    let mut city = rootca
        .new_intermediate(
            parse_name("CN=Old City").unwrap(),
            key(),
            NOW - 100 * DAY,
            NOW - DAY,
            None,
            os_rng(),
        )
        .unwrap();
    let leaf = city
        .issue_reader(
            "R2",
            key().public_key(),
            ReaderKind::Desktop,
            NOW - 50 * DAY,
            NOW + DAY,
            os_rng(),
        )
        .unwrap();
    let mut s = TrustStore::new();
    s.set_require_crl(false);
    s.add_root(rootca.cert.clone()).unwrap();
    let err = s
        .verify_reader(&[leaf, city.cert.clone()], NOW)
        .unwrap_err();
    assert!(matches!(err, PkiError::Expired { .. }), "{err}");
    assert!(err.to_string().contains("expired"), "{err}");
}

#[test]
fn revoked_certificate_refused_and_revocation_needs_a_current_signed_crl() {
    let mut ca = root("Root");
    let (_, cert) = reader(&mut ca, "R1");
    let (_, other) = reader(&mut ca, "R2");
    let serial = u64::from_str_radix(&serial_of(&cert), 16).unwrap();
    ca.revoke(serial, NOW - 100).unwrap();
    let s = store(&ca.cert.clone(), &mut [&mut ca]);
    match s.verify_reader(std::slice::from_ref(&cert), NOW) {
        Err(PkiError::Revoked { serial: sn, at, .. }) => {
            assert_eq!(sn, serial_of(&cert));
            assert_eq!(at, NOW - 100);
        }
        other => panic!("revoked certificate: {other:?}"),
    }
    s.verify_reader(std::slice::from_ref(&other), NOW).unwrap();

    // No CRL at all: fail closed.
    let mut bare = TrustStore::new();
    bare.add_root(ca.cert.clone()).unwrap();
    assert!(matches!(
        bare.verify_reader(std::slice::from_ref(&other), NOW),
        Err(PkiError::MissingCrl { .. })
    ));
    // A CRL past its nextUpdate: fail closed.
    let stale = ca.crl(NOW - 10 * DAY, NOW - DAY, os_rng()).unwrap();
    let mut s2 = TrustStore::new();
    s2.add_root(ca.cert.clone()).unwrap();
    s2.add_crl(stale);
    assert!(matches!(
        s2.verify_reader(std::slice::from_ref(&other), NOW),
        Err(PkiError::StaleCrl { .. })
    ));
    // A CRL with the CA's name but another key (a forged empty list) is refused,
    // so it cannot un-revoke anything.
    let mut forger = Ca::new_root(
        ca.cert.tbs_certificate().subject().clone(),
        key(),
        NOW - DAY,
        NOW + DAY,
        None,
        os_rng(),
    )
    .unwrap();
    let mut s3 = TrustStore::new();
    s3.add_root(ca.cert.clone()).unwrap();
    s3.add_crl(crl(&mut forger));
    assert!(matches!(
        s3.verify_reader(&[cert], NOW),
        Err(PkiError::BadSignature { .. })
    ));
}

#[test]
fn foreign_ca_refused() {
    let mut ours = root("Root");
    let s = store(&ours.cert.clone(), &mut [&mut ours]);
    // Another CA, another name.
    let mut other = root("Elsewhere");
    let (_, c1) = reader(&mut other, "R1");
    assert!(matches!(
        s.verify_reader(&[c1], NOW),
        Err(PkiError::UnknownIssuer { .. })
    ));
    // Another CA that copies our name: its signature does not verify under our key.
    let mut clone = Ca::new_root(
        ours.cert.tbs_certificate().subject().clone(),
        key(),
        NOW - DAY,
        NOW + DAY,
        None,
        os_rng(),
    )
    .unwrap();
    let (_, c2) = reader(&mut clone, "R1");
    let err = s.verify_reader(std::slice::from_ref(&c2), NOW).unwrap_err();
    assert!(matches!(err, PkiError::BadSignature { .. }), "{err}");
    // Sending the impostor CA along does not help: it is not trusted.
    assert!(s.verify_reader(&[c2, clone.cert.clone()], NOW).is_err());
}

#[test]
fn wrong_reader_id_refused() {
    let mut ca = root("Root");
    let (_, cert) = reader(&mut ca, "R1");
    let s = store(&ca.cert.clone(), &mut [&mut ca]);
    match s.verify_reader_id(&[cert], "R2", NOW) {
        Err(PkiError::WrongReaderId { expected, found }) => {
            assert_eq!((expected.as_str(), found.as_str()), ("R2", "R1"));
        }
        other => panic!("wrong id: {other:?}"),
    }
    // A reader id cannot smuggle attributes into the subject.
    let cert = ca
        .issue_reader(
            "R1,OU=ca",
            key().public_key(),
            ReaderKind::Desktop,
            NOW - DAY,
            NOW + DAY,
            os_rng(),
        )
        .unwrap();
    let s = store(&ca.cert.clone(), &mut [&mut ca]);
    assert_eq!(s.verify_reader(&[cert], NOW).unwrap().reader_id, "R1,OU=ca");
    assert!(matches!(
        ca.issue_reader(
            "",
            key().public_key(),
            ReaderKind::Desktop,
            NOW,
            NOW + DAY,
            os_rng()
        ),
        Err(PkiError::InvalidReaderId { .. })
    ));
}

fn flip_in_tbs(cert: &Certificate, find: &[u8], replace: &[u8]) -> Certificate {
    let mut der = cert.to_der().unwrap();
    let pos = der
        .windows(find.len())
        .position(|w| w == find)
        .expect("pattern in certificate");
    der[pos..pos + replace.len()].copy_from_slice(replace);
    Certificate::from_der(&der).unwrap()
}

#[test]
fn tampered_certificate_refused() {
    let mut ca = root("Root");
    let (_, cert) = reader(&mut ca, "R1");
    let s = store(&ca.cert.clone(), &mut [&mut ca]);
    // R1 -> R2 in the subject.
    let renamed = flip_in_tbs(&cert, b"R1", b"R2");
    assert!(matches!(
        s.verify_reader(&[renamed], NOW),
        Err(PkiError::BadSignature { .. })
    ));
    // A changed signature value (the last byte of `s`).
    let mut der = cert.to_der().unwrap();
    let last = der.len() - 1;
    der[last] ^= 1;
    assert!(matches!(
        s.verify_reader(&[Certificate::from_der(&der).unwrap()], NOW),
        Err(PkiError::BadSignature { .. })
    ));
    // Another signature algorithm (sm2sign-with-sm3 .501 -> .502) is refused.
    let sm2_sm3 = [0x2A, 0x81, 0x1C, 0xCF, 0x55, 0x01, 0x83, 0x75];
    let mut der = cert.to_der().unwrap();
    for _ in 0..2 {
        let pos = der.windows(8).position(|w| w == sm2_sm3).unwrap();
        der[pos + 7] = 0x76;
    }
    let other_alg = Certificate::from_der(&der).unwrap();
    assert!(matches!(
        s.verify_reader(&[other_alg], NOW),
        Err(PkiError::UnsupportedAlgorithm { .. })
    ));
}

#[test]
fn only_ca_certificates_issue_and_only_reader_certificates_identify_readers() {
    let mut ca = root("Root");
    let (rkey, rcert) = reader(&mut ca, "R1");
    let s = store(&ca.cert.clone(), &mut [&mut ca]);
    // A reader signs a certificate for a fake reader, naming itself as issuer.
    let fake = issue(
        &CertTemplate {
            serial: 99,
            subject: entity_name(Role::Reader, "R9", None).unwrap(),
            public_key: key().public_key().clone(),
            not_before: NOW - DAY,
            not_after: NOW + DAY,
            kind: CertKind::EndEntity,
            reader_kind: Some(ReaderKind::Desktop),
        },
        Some(&rcert),
        &rkey,
        os_rng(),
    )
    .unwrap();
    let err = s.verify_reader(&[fake, rcert.clone()], NOW).unwrap_err();
    assert!(matches!(err, PkiError::NotACa { .. }), "{err}");
    // A CA certificate is not a reader.
    assert!(matches!(
        s.verify_reader(&[ca.cert.clone()], NOW),
        Err(PkiError::WrongRole { .. })
    ));
    // The script-signing certificate is not a reader, nor a reader a script signer.
    let signer = ca
        .issue_script_signer(
            "Scripts",
            key().public_key(),
            NOW - DAY,
            NOW + DAY,
            os_rng(),
        )
        .unwrap();
    let s = store(&ca.cert.clone(), &mut [&mut ca]);
    assert!(matches!(
        s.verify_reader(std::slice::from_ref(&signer), NOW),
        Err(PkiError::WrongRole { .. })
    ));
    s.verify_script_signer(&[signer], NOW).unwrap();
    assert!(matches!(
        s.verify_script_signer(&[rcert], NOW),
        Err(PkiError::WrongRole { .. })
    ));
    // A reader certificate cannot be configured as a root.
    let (_, r2) = reader(&mut ca, "R2");
    assert!(matches!(
        TrustStore::new().add_root(r2),
        Err(PkiError::NotACa { .. })
    ));
}

#[test]
fn path_length_constraint_enforced() {
    let mut rootca = Ca::new_root(
        parse_name("CN=Strict Root").unwrap(),
        key(),
        NOW - DAY,
        NOW + 365 * DAY,
        Some(0),
        os_rng(),
    )
    .unwrap();
    let mut city = rootca
        .new_intermediate(
            parse_name("CN=City").unwrap(),
            key(),
            NOW - DAY,
            NOW + 30 * DAY,
            None,
            os_rng(),
        )
        .unwrap();
    let (_, cert) = reader(&mut city, "R1");
    let s = store(&rootca.cert.clone(), &mut [&mut rootca, &mut city]);
    assert!(matches!(
        s.verify_reader(&[cert, city.cert.clone()], NOW),
        Err(PkiError::PathTooLong { path_len: 0, .. })
    ));
}

#[test]
fn unknown_critical_extension_refused() {
    use x509_cert::builder::{Builder, CertificateBuilder, profile::BuilderProfile};
    use x509_cert::ext::Extension;
    struct Odd(x509_cert::name::Name, x509_cert::name::Name);
    impl BuilderProfile for Odd {
        fn get_issuer(&self, _: &x509_cert::name::Name) -> x509_cert::name::Name {
            self.1.clone()
        }
        fn get_subject(&self) -> x509_cert::name::Name {
            self.0.clone()
        }
        fn build_extensions(
            &self,
            _: spki::SubjectPublicKeyInfoRef<'_>,
            _: spki::SubjectPublicKeyInfoRef<'_>,
            _: &x509_cert::TbsCertificate,
        ) -> x509_cert::builder::Result<Vec<Extension>> {
            Ok(vec![Extension {
                extn_id: der::oid::ObjectIdentifier::new_unwrap("1.2.3.4.5"),
                critical: true,
                extn_value: der::asn1::OctetString::new(vec![0x05, 0x00]).unwrap(),
            }])
        }
    }
    // A leaf signed by the anchor's key, otherwise well-formed, with one critical
    // extension nobody here understands.
    let rk = key();
    let subject = entity_name(Role::Reader, "R1", None).unwrap();
    let leaf = CertificateBuilder::new(
        Odd(subject.clone(), subject),
        x509_cert::serial_number::SerialNumber::from(5u32),
        x509_cert::time::Validity::new(
            cardvm::issuer::pki::time_from_unix(NOW - DAY).unwrap(),
            cardvm::issuer::pki::time_from_unix(NOW + DAY).unwrap(),
        ),
        cardvm::issuer::pki::spki_of(rk.public_key()).unwrap(),
    )
    .unwrap()
    .build::<_, sm2::dsa::DerSignature>(&CertSigner::new(&rk, os_rng()).unwrap())
    .unwrap();
    let mut s = TrustStore::new();
    s.set_require_crl(false);
    let anchor = Ca::new_root(
        entity_name(Role::Reader, "R1", None).unwrap(),
        rk.clone(),
        NOW - DAY,
        NOW + DAY,
        None,
        os_rng(),
    )
    .unwrap();
    s.add_root(anchor.cert.clone()).unwrap();
    let err = s.verify_reader(&[leaf], NOW).unwrap_err();
    assert!(
        matches!(err, PkiError::UnknownCriticalExtension { .. }),
        "{err}"
    );
}

#[test]
fn requests_prove_possession_and_name_the_reader() {
    let rk = key();
    let req = reader_request(&rk, "R5", os_rng()).unwrap();
    assert_eq!(&verify_request(&req).unwrap(), rk.public_key());
    let pem = to_pem(&req, "certificate request").unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    let mut ca = root("Root");
    let cert = ca
        .issue_from_request(
            &from_pem(&pem, "certificate request").unwrap(),
            None,
            ReaderKind::Desktop,
            NOW - DAY,
            NOW + DAY,
            os_rng(),
        )
        .unwrap();
    let s = store(&ca.cert.clone(), &mut [&mut ca]);
    let id = s.verify_reader(&[cert], NOW).unwrap();
    assert_eq!(
        (id.reader_id.as_str(), &id.public_key),
        ("R5", rk.public_key())
    );
    // The CA refuses a request for another id than the one it was told.
    assert!(matches!(
        ca.issue_from_request(
            &req,
            Some("R6"),
            ReaderKind::Desktop,
            NOW,
            NOW + DAY,
            os_rng()
        ),
        Err(PkiError::WrongReaderId { .. })
    ));
    // A request whose key was swapped (no proof of possession) is refused.
    let mut forged = req.clone();
    forged.info.public_key = cardvm::issuer::pki::spki_of(key().public_key()).unwrap();
    assert!(matches!(
        ca.issue_from_request(&forged, None, ReaderKind::Desktop, NOW, NOW + DAY, os_rng()),
        Err(PkiError::BadSignature { .. })
    ));
}

#[test]
fn ca_state_round_trips_and_refuses_tampering() {
    let dir = std::env::temp_dir().join(format!("cardvm-pki-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.json");
    let mut ca = root("Root");
    reader(&mut ca, "R1");
    ca.revoke(2, NOW).unwrap();
    assert!(matches!(
        ca.revoke(2, NOW),
        Err(PkiError::AlreadyRevoked { .. })
    ));
    assert!(matches!(
        ca.revoke(77, NOW),
        Err(PkiError::UnknownSerial { .. })
    ));
    ca.state.save(&path).unwrap();
    assert_eq!(CaState::load(&path).unwrap(), ca.state);
    assert!(!dir.join("state.json.tmp").exists());
    // A serial counter moved back would reissue serials: refused.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"next_serial\": 3", "\"next_serial\": 2"),
    )
    .unwrap();
    assert!(matches!(CaState::load(&path), Err(PkiError::State { .. })));
    std::fs::write(
        &path,
        text.replace("\"version\"", "\"extra\": 1, \"version\""),
    )
    .unwrap();
    assert!(matches!(CaState::load(&path), Err(PkiError::State { .. })));
    // The CA's key never shows in Debug output.
    let k = key();
    let hex: String = k.to_bytes().iter().map(|b| format!("{b:02X}")).collect();
    let ca = Ca::new_root(
        parse_name("CN=X").unwrap(),
        k,
        NOW,
        NOW + DAY,
        None,
        os_rng(),
    )
    .unwrap();
    let dbg = format!("{ca:?}").to_uppercase();
    assert!(!dbg.contains(&hex[..16]), "{dbg}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- the command line ----

fn cardvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .args(args)
        .output()
        .expect("runs")
}

fn ok(args: &[&str]) -> String {
    let out = cardvm(args);
    assert!(
        out.status.success(),
        "cardvm {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = cardvm(args);
    assert!(!out.status.success(), "cardvm {args:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    err
}

fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cardvm-pki-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_owned()
}

#[test]
fn cli_provisions_a_reader_through_an_intermediate_and_revokes_it() {
    let d = tmp_dir("cli");
    let (root, city, r1, r2) = (p(&d, "root"), p(&d, "city"), p(&d, "r1"), p(&d, "r2"));
    ok(&[
        "ca",
        "init",
        "--dir",
        &root,
        "--subject",
        "CN=Industry Root,O=Transit",
    ]);
    ok(&[
        "ca",
        "init",
        "--dir",
        &city,
        "--parent-dir",
        &root,
        "--subject",
        "CN=City CA,O=City",
        "--path-len",
        "0",
    ]);
    fails(&["ca", "init", "--dir", &city, "--subject", "CN=Again"]);
    ok(&["reader", "init", "--reader-id", "R1", "--dir", &r1]);
    ok(&["reader", "init", "--reader-id", "R2", "--dir", &r2]);
    let crt = p(&d, "R1.crt");
    let out = ok(&[
        "ca",
        "issue",
        "--dir",
        &city,
        "--csr",
        &p(&d, "r1/R1.csr"),
        "--days",
        "30",
        "--with-chain",
        "-o",
        &crt,
    ]);
    assert!(out.contains("CN=R1,OU=reader,O=City"), "{out}");
    assert!(
        std::fs::read_to_string(&crt)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    // Another reader cannot install R1's certificate: the key is not its own.
    let err = fails(&[
        "reader",
        "install",
        &crt,
        "--ca",
        &p(&d, "root/ca.crt"),
        "--dir",
        &r2,
    ]);
    assert!(err.contains("does not match"), "{err}");
    // A request for R2 cannot be issued as R1.
    let err = fails(&[
        "ca",
        "issue",
        "--dir",
        &city,
        "--csr",
        &p(&d, "r2/R2.csr"),
        "--reader-id",
        "R1",
        "-o",
        &p(&d, "x.crt"),
    ]);
    assert!(err.contains("expected \"R1\""), "{err}");
    ok(&[
        "reader",
        "install",
        &crt,
        "--ca",
        &p(&d, "root/ca.crt"),
        "--dir",
        &r1,
    ]);
    assert!(Path::new(&p(&d, "r1/reader.crt")).exists());
    // A CA that is not ours refuses it.
    let other = p(&d, "other");
    ok(&[
        "ca",
        "init",
        "--dir",
        &other,
        "--subject",
        "CN=Industry Root,O=Transit",
    ]);
    let err = fails(&["ca", "verify", "--ca", &p(&d, "other/ca.crt"), &crt]);
    assert!(err.contains("bad signature"), "{err}");
    // Revoke, publish, verify: refused.
    ok(&["ca", "crl", "--dir", &root, "-o", &p(&d, "root.crl")]);
    ok(&["ca", "crl", "--dir", &city, "-o", &p(&d, "city.crl")]);
    let crls = ["--crl", &p(&d, "root.crl"), "--crl", &p(&d, "city.crl")];
    let mut args = vec!["ca", "verify", "--ca", &root, &crt];
    let rootcrt = p(&d, "root/ca.crt");
    args[3] = &rootcrt;
    args.extend(crls);
    let out = ok(&args);
    assert!(out.contains("OK reader R1"), "{out}");
    ok(&["ca", "revoke", "--dir", &city, "01"]);
    fails(&["ca", "revoke", "--dir", &city, "01"]);
    ok(&["ca", "crl", "--dir", &city, "-o", &p(&d, "city.crl")]);
    let err = fails(&args);
    assert!(err.contains("revoked"), "{err}");
    // Time travel: expired.
    let err = fails(&[
        "ca",
        "verify",
        "--ca",
        &rootcrt,
        "--now",
        "2099-01-01T00:00:00Z",
        &crt,
    ]);
    assert!(err.contains("expired"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn every_single_byte_change_to_a_certificate_is_refused() {
    let mut ca = root("Root");
    let (_, cert) = reader(&mut ca, "R1");
    let s = store(&ca.cert.clone(), &mut [&mut ca]);
    let der = cert.to_der().unwrap();
    let mut decoded = 0;
    for i in 0..der.len() {
        for mask in [0x01u8, 0x80] {
            let mut bad = der.clone();
            bad[i] ^= mask;
            // Either it no longer decodes, or the verifier refuses it; never a panic.
            if let Ok(c) = Certificate::from_der(&bad) {
                decoded += 1;
                assert!(
                    s.verify_reader(&[c], NOW).is_err(),
                    "byte {i} ^ {mask:#04x} accepted"
                );
            }
        }
    }
    assert!(
        decoded > der.len() / 2,
        "most changes still decode ({decoded})"
    );
}

/// Invariant 15, as the attacks: a CRL is installed only if a trusted CA signed it, it
/// is current, and its number is above the installed one. Re-installing the older CRL
/// (issued before a revocation) would un-revoke the reader; a CRL from another key with
/// the CA's name, or from an unknown CA, or an expired one, would make the store refuse
/// every reader or trust a forger. Each is refused and the revocation stands.
#[test]
fn crl_installation_refuses_forgeries_stale_lists_and_rollback() {
    let mut ca = root("Root");
    let (_, cert) = reader(&mut ca, "R1");
    let mut s = TrustStore::new();
    s.add_root(ca.cert.clone()).unwrap();
    let before = crl(&mut ca); // number 1: nothing revoked
    assert_eq!(
        s.install_crl(before.clone(), NOW).unwrap(),
        cardvm::issuer::CrlInstall::Added
    );
    assert_eq!(
        s.install_crl(before.clone(), NOW).unwrap(),
        cardvm::issuer::CrlInstall::Unchanged
    );
    let serial = u64::from_str_radix(&serial_of(&cert), 16).unwrap();
    ca.revoke(serial, NOW - 100).unwrap();
    let after = crl(&mut ca); // number 2: R1 revoked
    assert!(matches!(
        s.install_crl(after, NOW).unwrap(),
        cardvm::issuer::CrlInstall::Replaced { .. }
    ));
    let revoked = |s: &TrustStore| {
        matches!(
            s.verify_reader(std::slice::from_ref(&cert), NOW),
            Err(PkiError::Revoked { .. })
        )
    };
    assert!(revoked(&s));
    // Rollback: the older, still valid list.
    let e = s.install_crl(before, NOW).unwrap_err();
    assert!(
        matches!(
            e,
            PkiError::CrlNotNewer {
                number: 1,
                installed: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(revoked(&s), "the rollback un-revoked the reader");
    // Another key under the CA's name.
    let mut forger = Ca::new_root(
        ca.cert.tbs_certificate().subject().clone(),
        key(),
        NOW - 10 * DAY,
        NOW + 3650 * DAY,
        None,
        os_rng(),
    )
    .unwrap();
    for _ in 0..5 {
        crl(&mut forger); // a higher number than the real one
    }
    let e = s.install_crl(crl(&mut forger), NOW).unwrap_err();
    assert!(matches!(e, PkiError::BadSignature { .. }), "{e}");
    // A CA the store does not trust.
    let e = s.install_crl(crl(&mut root("Other")), NOW).unwrap_err();
    assert!(matches!(e, PkiError::CrlUntrusted { .. }), "{e}");
    // Expired (its nextUpdate is past), though newer.
    let stale = ca.crl(NOW - 9 * DAY, NOW - DAY, os_rng()).unwrap();
    let e = s.install_crl(stale, NOW).unwrap_err();
    assert!(matches!(e, PkiError::StaleCrl { .. }), "{e}");
    assert!(revoked(&s), "still revoked after every refused install");
    // What runs out within 8 days: the CRL (7 days left), not the CA (10 years).
    let soon = s.expiring(NOW, 8 * DAY);
    assert_eq!(soon.len(), 1, "{soon:?}");
    assert!(soon[0].1.starts_with("CRL of"), "{soon:?}");
    assert!(s.expiring(NOW, DAY).is_empty());
}

// ---- the reader's kind (certificatePolicies) ----

const OID_DESKTOP: &str = "2.25.324636397500241907971645557769933631632.1.1";
const OID_SECURE_ELEMENT: &str = "2.25.324636397500241907971645557769933631632.1.2";

/// `openssl asn1parse -genstr OID:<arc>.1.1` (and `.1.2`): tag, length, content octets.
const DER_DESKTOP: &str = "06166983e8bad989ccd4d2a2bdbe93bddbdb88bce1100101";
const DER_SECURE_ELEMENT: &str = "06166983e8bad989ccd4d2a2bdbe93bddbdb88bce1100102";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// The kind's policy OID, DER (tag, length, content), as OpenSSL encodes it.
fn oid_der(kind: ReaderKind) -> &'static str {
    match kind {
        ReaderKind::Desktop => DER_DESKTOP,
        ReaderKind::SecureElement => DER_SECURE_ELEMENT,
    }
}

/// The certificate's one `certificatePolicies` extension.
fn policies_extension(cert: &Certificate) -> x509_cert::ext::Extension {
    use der::oid::AssociatedOid;
    let oid = x509_cert::ext::pkix::CertificatePolicies::OID;
    let mut found = cert
        .tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
        .filter(|e| e.extn_id == oid);
    let ext = found.next().expect("certificatePolicies").clone();
    assert!(found.next().is_none(), "certificatePolicies twice");
    ext
}

/// A `certificatePolicies` extension holding the policies of every `from` extension,
/// in order (each decoded as a SEQUENCE OF policies and re-encoded by `der`).
fn merged_policies(from: &[x509_cert::ext::Extension]) -> x509_cert::ext::Extension {
    let mut all: Vec<der::Any> = Vec::new();
    for e in from {
        all.extend(Vec::<der::Any>::from_der(e.extn_value.as_bytes()).unwrap());
    }
    x509_cert::ext::Extension {
        extn_id: from[0].extn_id,
        critical: false,
        extn_value: der::asn1::OctetString::new(all.to_der().unwrap()).unwrap(),
    }
}

/// A reader certificate for `R1` with exactly `exts`, issued by a root of its own, and
/// a store that trusts that root (no CRL required).
fn reader_with_extensions(exts: Vec<x509_cert::ext::Extension>) -> (TrustStore, Certificate) {
    use x509_cert::builder::{Builder, CertificateBuilder, profile::BuilderProfile};
    use x509_cert::ext::Extension;
    use x509_cert::name::Name;
    struct Exts(Name, Name, Vec<Extension>);
    impl BuilderProfile for Exts {
        fn get_issuer(&self, _: &Name) -> Name {
            self.1.clone()
        }
        fn get_subject(&self) -> Name {
            self.0.clone()
        }
        fn build_extensions(
            &self,
            _: spki::SubjectPublicKeyInfoRef<'_>,
            _: spki::SubjectPublicKeyInfoRef<'_>,
            _: &x509_cert::TbsCertificate,
        ) -> x509_cert::builder::Result<Vec<Extension>> {
            Ok(self.2.clone())
        }
    }
    let ca_key = key();
    let ca = Ca::new_root(
        parse_name("CN=Policy Root,O=Transit").unwrap(),
        ca_key.clone(),
        NOW - 10 * DAY,
        NOW + 365 * DAY,
        None,
        os_rng(),
    )
    .unwrap();
    let leaf = CertificateBuilder::new(
        Exts(
            entity_name(Role::Reader, "R1", None).unwrap(),
            ca.cert.tbs_certificate().subject().clone(),
            exts,
        ),
        x509_cert::serial_number::SerialNumber::from(7u32),
        x509_cert::time::Validity::new(
            cardvm::issuer::pki::time_from_unix(NOW - DAY).unwrap(),
            cardvm::issuer::pki::time_from_unix(NOW + DAY).unwrap(),
        ),
        cardvm::issuer::pki::spki_of(key().public_key()).unwrap(),
    )
    .unwrap()
    .build::<_, sm2::dsa::DerSignature>(&CertSigner::new(&ca_key, os_rng()).unwrap())
    .unwrap();
    let mut s = TrustStore::new();
    s.set_require_crl(false);
    s.add_root(ca.cert.clone()).unwrap();
    (s, leaf)
}

#[test]
fn reader_kind_policy_oids_are_the_documented_ones() {
    assert_eq!(ReaderKind::Desktop.policy_oid(), OID_DESKTOP);
    assert_eq!(ReaderKind::SecureElement.policy_oid(), OID_SECURE_ELEMENT);
    assert_eq!(
        cardvm::issuer::pki::OID_PROJECT_ARC,
        "2.25.324636397500241907971645557769933631632"
    );
    // The octets cardvm writes are OpenSSL's encoding of the dotted OIDs.
    assert_eq!(
        format!("0616{}", hex(ReaderKind::Desktop.policy_oid_octets())),
        DER_DESKTOP
    );
    assert_eq!(
        format!("0616{}", hex(ReaderKind::SecureElement.policy_oid_octets())),
        DER_SECURE_ELEMENT
    );
    // Why they are raw octets: `der`'s ObjectIdentifier refuses a 128-bit arc. When it
    // stops refusing, x509_cert's PolicyInformation can carry the policy instead.
    assert!(der::oid::ObjectIdentifier::new(OID_SECURE_ELEMENT).is_err());
    // The names the CLI takes and prints.
    for kind in [ReaderKind::Desktop, ReaderKind::SecureElement] {
        assert_eq!(kind.to_string().parse::<ReaderKind>().unwrap(), kind);
    }
    assert_eq!(ReaderKind::Desktop.to_string(), "desktop");
    assert_eq!(ReaderKind::SecureElement.to_string(), "secure-element");
    assert_eq!(ReaderKind::default(), ReaderKind::Desktop);
    for bad in ["", "Desktop", "se", "secure_element", "secure-element "] {
        assert!(bad.parse::<ReaderKind>().is_err(), "{bad:?}");
    }
}

#[test]
fn reader_kind_round_trips_through_the_certificate() {
    let mut ca = root("Root");
    let mut certs = Vec::new();
    for (id, kind) in [
        ("D1", ReaderKind::Desktop),
        ("S1", ReaderKind::SecureElement),
    ] {
        let k = key();
        let cert = ca
            .issue_reader(id, k.public_key(), kind, NOW - DAY, NOW + DAY, os_rng())
            .unwrap();
        certs.push((id, kind, cert));
        // The same through a PKCS#10 request: the CA sets the kind, not the request.
        let id = format!("{id}-csr");
        let req = reader_request(&k, &id, os_rng()).unwrap();
        let cert = ca
            .issue_from_request(&req, None, kind, NOW - DAY, NOW + DAY, os_rng())
            .unwrap();
        certs.push((id.leak(), kind, cert));
    }
    let s = store(&ca.cert.clone(), &mut [&mut ca]);
    for (id, kind, cert) in &certs {
        // Non-critical, one policy: the kind's OID, no qualifiers.
        let ext = policies_extension(cert);
        assert!(!ext.critical);
        let policies = Vec::<der::Any>::from_der(ext.extn_value.as_bytes()).unwrap();
        assert_eq!(policies.len(), 1);
        // PolicyInformation ::= SEQUENCE { policyIdentifier } (24 octets).
        assert_eq!(
            hex(&policies[0].to_der().unwrap()),
            format!("3018{}", oid_der(*kind))
        );
        let got = s
            .verify_reader_id(std::slice::from_ref(cert), id, NOW)
            .unwrap();
        assert_eq!(got.kind, *kind, "{id}");
        assert_eq!(
            cardvm::issuer::cert::reader_kind_of(cert).unwrap(),
            *kind,
            "{id}"
        );
    }
    // Changing the kind after issuance breaks the signature (desktop -> secure element).
    let (_, _, desktop) = &certs[0];
    let mut der = desktop.to_der().unwrap();
    let want = unhex(DER_DESKTOP);
    let pos = der.windows(want.len()).position(|w| w == want).unwrap();
    der[pos + want.len() - 1] = 0x02;
    let forged = Certificate::from_der(&der).unwrap();
    assert_eq!(
        cardvm::issuer::cert::reader_kind_of(&forged).unwrap(),
        ReaderKind::SecureElement
    );
    assert!(matches!(
        s.verify_reader(&[forged], NOW),
        Err(PkiError::BadSignature { .. })
    ));
    // CAs and the script signer carry no reader kind.
    let signer = ca
        .issue_script_signer("Scripts", key().public_key(), NOW, NOW + DAY, os_rng())
        .unwrap();
    for c in [&ca.cert, &signer] {
        assert!(
            c.tbs_certificate()
                .extensions()
                .into_iter()
                .flatten()
                .all(|e| e.extn_id.to_string() != "2.5.29.32")
        );
    }
}

#[test]
fn reader_certificate_without_a_clear_kind_is_desktop() {
    use der::oid::ObjectIdentifier;
    use x509_cert::ext::ToExtension;
    use x509_cert::ext::pkix::CertificatePolicies;
    use x509_cert::ext::pkix::certpolicy::PolicyInformation;
    // Issued without the extension (as before reader kinds, or by another CA).
    let ca_key = key();
    let mut ca = Ca::new_root(
        parse_name("CN=Root,O=Transit").unwrap(),
        ca_key.clone(),
        NOW - 10 * DAY,
        NOW + 3650 * DAY,
        None,
        os_rng(),
    )
    .unwrap();
    let plain = issue(
        &CertTemplate {
            serial: 42,
            subject: entity_name(Role::Reader, "R1", Some("Transit")).unwrap(),
            public_key: key().public_key().clone(),
            not_before: NOW - DAY,
            not_after: NOW + DAY,
            kind: CertKind::EndEntity,
            reader_kind: None,
        },
        Some(&ca.cert),
        &ca_key,
        os_rng(),
    )
    .unwrap();
    let s = store(&ca.cert.clone(), &mut [&mut ca]);
    assert_eq!(
        s.verify_reader_id(&[plain], "R1", NOW).unwrap().kind,
        ReaderKind::Desktop
    );

    // The kind policies, as cardvm writes them.
    let mut kinds = root("Kinds");
    let (_, d) = reader(&mut kinds, "D");
    let s_cert = kinds
        .issue_reader(
            "S",
            key().public_key(),
            ReaderKind::SecureElement,
            NOW - DAY,
            NOW + DAY,
            os_rng(),
        )
        .unwrap();
    let (desktop, secure) = (policies_extension(&d), policies_extension(&s_cert));
    // Policies of another scheme (here one from the x509-cert crate's own types).
    let other = CertificatePolicies(vec![PolicyInformation {
        policy_identifier: ObjectIdentifier::new_unwrap("1.2.3.4.5"),
        policy_qualifiers: None,
    }])
    .to_extension(&parse_name("CN=R1").unwrap(), &[])
    .unwrap();
    assert_eq!(other.extn_id, desktop.extn_id);
    // A policy one arc off the secure-element one (<arc>.1.3) is unknown, not a kind.
    let mut near = secure.clone();
    let mut bytes = near.extn_value.as_bytes().to_vec();
    *bytes.last_mut().unwrap() = 0x03;
    near.extn_value = der::asn1::OctetString::new(bytes).unwrap();

    for (what, exts, want) in [
        ("no extension", vec![], ReaderKind::Desktop),
        ("unknown policy", vec![other.clone()], ReaderKind::Desktop),
        ("a near miss", vec![near.clone()], ReaderKind::Desktop),
        (
            "both kinds",
            vec![merged_policies(&[secure.clone(), desktop.clone()])],
            ReaderKind::Desktop,
        ),
        (
            "both kinds, desktop first",
            vec![merged_policies(&[desktop.clone(), secure.clone()])],
            ReaderKind::Desktop,
        ),
        ("desktop", vec![desktop.clone()], ReaderKind::Desktop),
        (
            "secure element",
            vec![secure.clone()],
            ReaderKind::SecureElement,
        ),
        (
            "secure element among unknown policies",
            vec![merged_policies(&[
                other.clone(),
                secure.clone(),
                near.clone(),
            ])],
            ReaderKind::SecureElement,
        ),
    ] {
        let (s, cert) = reader_with_extensions(exts);
        let id = s
            .verify_reader(&[cert], NOW)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(id.kind, want, "{what}");
    }

    // A certificatePolicies that is not one is refused, not read as some kind.
    let mut broken = secure.clone();
    broken.extn_value = der::asn1::OctetString::new(vec![0x05, 0x00]).unwrap();
    let (s, cert) = reader_with_extensions(vec![broken]);
    assert!(matches!(
        s.verify_reader(&[cert], NOW),
        Err(PkiError::Malformed { .. })
    ));
    // Twice: refused by the verifier (every extension at most once).
    let (s, cert) = reader_with_extensions(vec![secure.clone(), secure]);
    assert!(matches!(
        s.verify_reader(&[cert], NOW),
        Err(PkiError::Malformed { .. })
    ));
}

#[test]
fn cli_issues_each_reader_kind_and_verify_prints_it() {
    let d = tmp_dir("kind");
    let (ca, r1, r2) = (p(&d, "ca"), p(&d, "r1"), p(&d, "r2"));
    ok(&["ca", "init", "--dir", &ca, "--subject", "CN=City CA,O=City"]);
    ok(&["reader", "init", "--reader-id", "R1", "--dir", &r1]);
    ok(&["reader", "init", "--reader-id", "R2", "--dir", &r2]);
    let cacrt = p(&d, "ca/ca.crt");
    // The default is desktop.
    let crt1 = p(&d, "R1.crt");
    let out = ok(&[
        "ca",
        "issue",
        "--dir",
        &ca,
        "--csr",
        &p(&d, "r1/R1.csr"),
        "-o",
        &crt1,
    ]);
    assert!(out.contains("(desktop reader, valid until"), "{out}");
    let out = ok(&["ca", "verify", "--ca", &cacrt, &crt1]);
    assert!(out.contains("OK reader R1 serial 02"), "{out}");
    assert!(out.trim_end().ends_with("kind desktop"), "{out}");
    // --kind secure-element, from a request and from a public key.
    let crt2 = p(&d, "R2.crt");
    let out = ok(&[
        "ca",
        "issue",
        "--dir",
        &ca,
        "--csr",
        &p(&d, "r2/R2.csr"),
        "--kind",
        "secure-element",
        "-o",
        &crt2,
    ]);
    assert!(out.contains("(secure-element reader, valid until"), "{out}");
    let out = ok(&["ca", "verify", "--ca", &cacrt, "--reader-id", "R2", &crt2]);
    assert!(out.trim_end().ends_with("kind secure-element"), "{out}");
    let out = ok(&["reader", "install", &crt2, "--ca", &cacrt, "--dir", &r2]);
    assert!(out.contains("(secure-element reader, valid until"), "{out}");
    let crt3 = p(&d, "R2-pub.crt");
    ok(&[
        "ca",
        "issue",
        "--dir",
        &ca,
        "--pub",
        &p(&d, "r2/reader.pub"),
        "--reader-id",
        "R2",
        "--kind",
        "desktop",
        "-o",
        &crt3,
    ]);
    let out = ok(&["ca", "verify", "--ca", &cacrt, &crt3]);
    assert!(out.trim_end().ends_with("kind desktop"), "{out}");
    // An unknown kind, or a kind for the script signer, is a usage error.
    for args in [
        vec!["--reader-id", "R2", "--kind", "laptop"],
        vec!["--script-signer", "Scripts", "--kind", "secure-element"],
    ] {
        let mut all = vec!["ca", "issue", "--dir", &ca, "--pub", "x.pub", "-o", "x.crt"];
        all.extend(args);
        let out = cardvm(&all);
        assert!(!out.status.success(), "{all:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--kind"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&d);
}
