//! OpenSSL 3 interoperability, both ways: OpenSSL reads and verifies the certificates,
//! requests and CRLs `cardvm ca` makes, and `cardvm` verifies certificates and chains
//! OpenSSL issued (from a `cardvm reader init` request).
//!
//! Skipped, with a message, when no `openssl` binary is found and
//! `CARDVM_REQUIRE_OPENSSL` is unset; CI sets it, so there a missing OpenSSL fails.
//!
//! OpenSSL 3.0 checks an SM2 signature with the signer id given by `-vfyopt distid:`
//! only on the certificate named on the command line; every other signature in the
//! chain, and CRL signatures, it checks with an empty id. Our certificates use the
//! GM/T 0009/0015 id `1234567812345678` everywhere, so a chain is checked link by
//! link (`-partial_chain` with the issuer as the only trusted certificate).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ID: &str = "distid:1234567812345678";
/// The reader-kind policies (docs/pki.md).
const OID_DESKTOP: &str = "2.25.324636397500241907971645557769933631632.1.1";
const OID_SECURE_ELEMENT: &str = "2.25.324636397500241907971645557769933631632.1.2";

fn openssl_available() -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CARDVM_REQUIRE_OPENSSL").is_none(),
            "CARDVM_REQUIRE_OPENSSL is set but no openssl binary was found"
        );
        eprintln!(
            "SKIPPED: no openssl binary (install openssl, or set CARDVM_REQUIRE_OPENSSL=1 to fail instead)"
        );
    }
    found
}

fn run(program: &str, args: &[&str]) -> Output {
    let exe = if program == "cardvm" {
        env!("CARGO_BIN_EXE_cardvm")
    } else {
        program
    };
    Command::new(exe).args(args).output().expect("runs")
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        !out.status.success(),
        "{program} {args:?} should have failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cardvm-pki-ossl-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_owned()
}

/// Rewrites the first `find` in the certificate's DER with `replace`, as PEM.
fn tamper(pem_path: &str, find: &[u8], replace: &[u8], out: &str) {
    let text = std::fs::read_to_string(pem_path).unwrap();
    let first = text
        .split_inclusive("-----END CERTIFICATE-----")
        .next()
        .unwrap();
    let (label, mut der) = der::pem::decode_vec(first.trim().as_bytes()).unwrap();
    let pos = der
        .windows(find.len())
        .position(|w| w == find)
        .expect("pattern in certificate");
    der[pos..pos + replace.len()].copy_from_slice(replace);
    let pem = der::pem::encode_string(label, der::pem::LineEnding::LF, &der).unwrap();
    std::fs::write(out, pem).unwrap();
}

#[test]
fn openssl_reads_and_verifies_what_cardvm_issues() {
    if !openssl_available() {
        return;
    }
    let d = tmp_dir("ours");
    let (root, city, r1) = (p(&d, "root"), p(&d, "city"), p(&d, "r1"));
    ok(
        "cardvm",
        &[
            "ca",
            "init",
            "--dir",
            &root,
            "--subject",
            "CN=Industry Root,O=Transit",
        ],
    );
    ok(
        "cardvm",
        &[
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
        ],
    );
    ok(
        "cardvm",
        &["reader", "init", "--reader-id", "R1", "--dir", &r1],
    );
    let csr = p(&d, "r1/R1.csr");
    // The request: OpenSSL checks its self-signature with the GM signer id.
    let text = ok(
        "openssl",
        &[
            "req", "-in", &csr, "-noout", "-text", "-verify", "-vfyopt", ID,
        ],
    );
    assert!(text.contains("CN = R1") || text.contains("CN=R1"), "{text}");

    // A reader certificate straight from the root.
    let direct = p(&d, "R1-direct.crt");
    ok(
        "cardvm",
        &["ca", "issue", "--dir", &root, "--csr", &csr, "-o", &direct],
    );
    let text = ok("openssl", &["x509", "-in", &direct, "-noout", "-text"]);
    for want in [
        "SM2-with-SM3",
        "ASN1 OID: SM2",
        "OU = reader, CN = R1",
        "CA:FALSE",
        "Digital Signature",
        // The reader's kind: desktop unless the CA says otherwise.
        "X509v3 Certificate Policies: \n",
        &format!("Policy: {OID_DESKTOP}\n"),
    ] {
        assert!(
            text.contains(want),
            "openssl x509 -text lacks {want:?}:\n{text}"
        );
    }
    let rootcrt = p(&d, "root/ca.crt");
    let out = ok(
        "openssl",
        &["verify", "-vfyopt", ID, "-CAfile", &rootcrt, &direct],
    );
    assert!(out.contains(": OK"), "{out}");
    // Tampered: R1 -> R2 in the subject. OpenSSL refuses it.
    let bad = p(&d, "R1-tampered.crt");
    tamper(&direct, b"R1", b"R2", &bad);
    let out = fails(
        "openssl",
        &["verify", "-vfyopt", ID, "-CAfile", &rootcrt, &bad],
    );
    assert!(out.contains("signature failure"), "{out}");
    // Not under this CA: another root with the same name.
    let other = p(&d, "other");
    ok(
        "cardvm",
        &[
            "ca",
            "init",
            "--dir",
            &other,
            "--subject",
            "CN=Industry Root,O=Transit",
        ],
    );
    fails(
        "openssl",
        &[
            "verify",
            "-vfyopt",
            ID,
            "-CAfile",
            &p(&d, "other/ca.crt"),
            &direct,
        ],
    );

    // Two levels: each link verifies in OpenSSL.
    let viacity = p(&d, "R1.crt");
    ok(
        "cardvm",
        &["ca", "issue", "--dir", &city, "--csr", &csr, "-o", &viacity],
    );
    let citycrt = p(&d, "city/ca.crt");
    let text = ok("openssl", &["x509", "-in", &citycrt, "-noout", "-text"]);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    ok(
        "openssl",
        &["verify", "-vfyopt", ID, "-CAfile", &rootcrt, &citycrt],
    );
    ok(
        "openssl",
        &[
            "verify",
            "-vfyopt",
            ID,
            "-partial_chain",
            "-CAfile",
            &citycrt,
            &viacity,
        ],
    );
    fails(
        "openssl",
        &[
            "verify",
            "-vfyopt",
            ID,
            "-partial_chain",
            "-CAfile",
            &rootcrt,
            &viacity,
        ],
    );

    // The CRL parses, names its issuer and lists the revoked serial.
    ok("cardvm", &["ca", "revoke", "--dir", &city, "01"]);
    let crl = p(&d, "city.crl");
    ok("cardvm", &["ca", "crl", "--dir", &city, "-o", &crl]);
    let text = ok("openssl", &["crl", "-in", &crl, "-noout", "-text"]);
    assert!(
        text.contains("CN = City CA") && text.contains("Serial Number: 01"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

fn ossl_key(path: &str) {
    ok(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:SM2",
            "-out",
            path,
        ],
    );
}

#[test]
fn cardvm_verifies_what_openssl_issues() {
    if !openssl_available() {
        return;
    }
    let d = tmp_dir("theirs");
    let ext_ca = p(&d, "ca.ext");
    std::fs::write(&ext_ca, "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n").unwrap();
    let ext_leaf = p(&d, "leaf.ext");
    std::fs::write(
        &ext_leaf,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n",
    )
    .unwrap();

    // An OpenSSL root and a city CA under it.
    let (rk, rc) = (p(&d, "root.key"), p(&d, "root.crt"));
    ossl_key(&rk);
    ok(
        "openssl",
        &[
            "req",
            "-new",
            "-x509",
            "-key",
            &rk,
            "-sm3",
            "-sigopt",
            ID,
            "-subj",
            "/O=Transit/CN=OpenSSL Root",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &rc,
        ],
    );
    let (ck, creq, cc) = (p(&d, "city.key"), p(&d, "city.csr"), p(&d, "city.crt"));
    ossl_key(&ck);
    ok(
        "openssl",
        &[
            "req",
            "-new",
            "-key",
            &ck,
            "-sm3",
            "-sigopt",
            ID,
            "-subj",
            "/O=City/CN=OpenSSL City",
            "-out",
            &creq,
        ],
    );
    ok(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &creq,
            "-vfyopt",
            ID,
            "-CA",
            &rc,
            "-CAkey",
            &rk,
            "-sm3",
            "-sigopt",
            ID,
            "-days",
            "20",
            "-set_serial",
            "16",
            "-extfile",
            &ext_ca,
            "-out",
            &cc,
        ],
    );

    // The reader's request from cardvm; OpenSSL's city CA issues from it.
    let r1 = p(&d, "r1");
    ok(
        "cardvm",
        &["reader", "init", "--reader-id", "R1", "--dir", &r1],
    );
    let crt = p(&d, "R1.crt");
    ok(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p(&d, "r1/R1.csr"),
            "-vfyopt",
            ID,
            "-CA",
            &cc,
            "-CAkey",
            &ck,
            "-sm3",
            "-sigopt",
            ID,
            "-days",
            "10",
            "-set_serial",
            "4660",
            "-extfile",
            &ext_leaf,
            "-out",
            &crt,
        ],
    );
    // cardvm accepts the OpenSSL-built chain, and the reader installs it.
    let out = ok(
        "cardvm",
        &[
            "ca",
            "verify",
            "--ca",
            &rc,
            "--untrusted",
            &cc,
            "--reader-id",
            "R1",
            &crt,
        ],
    );
    assert!(out.contains("OK reader R1 serial 1234"), "{out}");
    // No certificatePolicies: a desktop reader.
    assert!(out.trim_end().ends_with("kind desktop"), "{out}");
    ok(
        "cardvm",
        &[
            "reader", "install", &crt, "--ca", &rc, "--chain", &cc, "--dir", &r1,
        ],
    );
    // Without the intermediate there is no path.
    let err = fails("cardvm", &["ca", "verify", "--ca", &rc, &crt]);
    assert!(err.contains("unknown issuer"), "{err}");
    // A tampered OpenSSL certificate is refused.
    let bad = p(&d, "R1-bad.crt");
    tamper(&crt, b"R1", b"R9", &bad);
    let err = fails(
        "cardvm",
        &["ca", "verify", "--ca", &rc, "--untrusted", &cc, &bad],
    );
    assert!(err.contains("bad signature"), "{err}");
    // Signed with OpenSSL's empty default signer id instead of 1234567812345678: refused.
    let noid = p(&d, "R1-noid.crt");
    ok(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p(&d, "r1/R1.csr"),
            "-vfyopt",
            ID,
            "-CA",
            &cc,
            "-CAkey",
            &ck,
            "-sm3",
            "-days",
            "10",
            "-extfile",
            &ext_leaf,
            "-out",
            &noid,
        ],
    );
    let err = fails(
        "cardvm",
        &["ca", "verify", "--ca", &rc, "--untrusted", &cc, &noid],
    );
    assert!(err.contains("bad signature"), "{err}");

    // OpenSSL issues with a cardvm CA's key (PKCS#8 from `ca init --pkcs8`).
    let ours = p(&d, "ours");
    ok(
        "cardvm",
        &[
            "ca",
            "init",
            "--dir",
            &ours,
            "--subject",
            "CN=Our CA,O=City",
            "--pkcs8",
        ],
    );
    let crt2 = p(&d, "R1-ours.crt");
    ok(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p(&d, "r1/R1.csr"),
            "-vfyopt",
            ID,
            "-CA",
            &p(&d, "ours/ca.crt"),
            "-CAkey",
            &p(&d, "ours/ca.key.pem"),
            "-sm3",
            "-sigopt",
            ID,
            "-days",
            "10",
            "-extfile",
            &ext_leaf,
            "-out",
            &crt2,
        ],
    );
    ok(
        "cardvm",
        &[
            "ca",
            "verify",
            "--ca",
            &p(&d, "ours/ca.crt"),
            "--reader-id",
            "R1",
            &crt2,
        ],
    );
    // A reader certificate from OpenSSL for another reader does not install here.
    let r2 = p(&d, "r2");
    ok(
        "cardvm",
        &["reader", "init", "--reader-id", "R2", "--dir", &r2],
    );
    let err = fails(
        "cardvm",
        &[
            "reader",
            "install",
            &crt2,
            "--ca",
            &p(&d, "ours/ca.crt"),
            "--dir",
            &r2,
        ],
    );
    assert!(err.contains("does not match"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn openssl_and_cardvm_agree_on_the_reader_kind_policy() {
    if !openssl_available() {
        return;
    }
    let d = tmp_dir("kind");
    let (ca, r1) = (p(&d, "ca"), p(&d, "r1"));
    ok(
        "cardvm",
        &[
            "ca",
            "init",
            "--dir",
            &ca,
            "--subject",
            "CN=City CA,O=City",
            "--pkcs8",
        ],
    );
    ok(
        "cardvm",
        &["reader", "init", "--reader-id", "R1", "--dir", &r1],
    );
    let (cacrt, csr) = (p(&d, "ca/ca.crt"), p(&d, "r1/R1.csr"));

    // cardvm issues a secure-element reader: OpenSSL shows the policy, non-critical,
    // and still verifies the certificate.
    let se = p(&d, "R1-se.crt");
    ok(
        "cardvm",
        &[
            "ca",
            "issue",
            "--dir",
            &ca,
            "--csr",
            &csr,
            "--kind",
            "secure-element",
            "-o",
            &se,
        ],
    );
    let text = ok("openssl", &["x509", "-in", &se, "-noout", "-text"]);
    let want =
        format!("X509v3 Certificate Policies: \n                Policy: {OID_SECURE_ELEMENT}\n");
    assert!(text.contains(&want), "no {want:?} in:\n{text}");
    assert!(!text.contains(OID_DESKTOP), "{text}");
    let out = ok(
        "openssl",
        &["verify", "-vfyopt", ID, "-CAfile", &cacrt, &se],
    );
    assert!(out.contains(": OK"), "{out}");

    // OpenSSL issues with the same CA key, writing the policies itself: cardvm reads
    // the secure-element policy only when it stands without the desktop one.
    let key = p(&d, "ca/ca.key.pem");
    for (name, policies, want) in [
        ("se", Some(OID_SECURE_ELEMENT.to_owned()), "secure-element"),
        (
            "se-among-others",
            Some(format!("1.2.3.4, {OID_SECURE_ELEMENT}")),
            "secure-element",
        ),
        ("desktop", Some(OID_DESKTOP.to_owned()), "desktop"),
        (
            "both",
            Some(format!("{OID_SECURE_ELEMENT}, {OID_DESKTOP}")),
            "desktop",
        ),
        ("unknown", Some("1.2.3.4".to_owned()), "desktop"),
        ("none", None, "desktop"),
    ] {
        let ext = p(&d, &format!("{name}.ext"));
        let mut lines =
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n".to_owned();
        if let Some(pol) = &policies {
            lines.push_str(&format!("certificatePolicies={pol}\n"));
        }
        std::fs::write(&ext, lines).unwrap();
        let crt = p(&d, &format!("R1-{name}.crt"));
        ok(
            "openssl",
            &[
                "x509", "-req", "-in", &csr, "-vfyopt", ID, "-CA", &cacrt, "-CAkey", &key, "-sm3",
                "-sigopt", ID, "-days", "10", "-extfile", &ext, "-out", &crt,
            ],
        );
        let text = ok("openssl", &["x509", "-in", &crt, "-noout", "-text"]);
        assert_eq!(
            text.contains("X509v3 Certificate Policies"),
            policies.is_some(),
            "{name}: {text}"
        );
        let out = ok(
            "cardvm",
            &["ca", "verify", "--ca", &cacrt, "--reader-id", "R1", &crt],
        );
        assert!(
            out.trim_end().ends_with(&format!("kind {want}")),
            "{name}: {out}"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}
