//! `cardvm ca init|issue|revoke|crl|verify`: the card company's certification authority.
//! `ca issue --kind` sets a reader certificate's kind; `ca verify` prints it.
//!
//! A CA lives in a directory: `ca.key` (private, `keygen` format, mode 0600),
//! `ca.pub`, `ca.crt` (its certificate), `chain.crt` (its certificate and every
//! parent above it), `state.json` (next serial, issued, revoked) and, with
//! `init --pkcs8`, `ca.key.pem` (the key as PKCS#8 PEM for OpenSSL).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cardvm::crypto::rng::os_rng;
use cardvm::crypto::sm2::Sm2PrivateKey;
use cardvm::issuer::cert::{serial_of, subject_of, validity_of};
use cardvm::issuer::pki::{
    from_pem, parse_name, parse_rfc3339, parse_serial, private_key_pkcs8_pem, rfc3339, to_pem,
};
use cardvm::issuer::trust::certs_from_pem;
use cardvm::issuer::{Ca, CaState, ReaderKind, TrustStore};
use clap::{Args, Subcommand};
use x509_cert::certificate::Certificate;
use x509_cert::request::CertReq;

use super::CliResult;
use super::keys::{load_private_key, load_public_key, save_key_pair, write_file};

const DAY: u64 = 86_400;

/// Arguments of `cardvm ca`.
#[derive(Args, Debug)]
pub struct CaArgs {
    #[command(subcommand)]
    cmd: CaCmd,
}

#[derive(Subcommand, Debug)]
enum CaCmd {
    /// Create a CA: a self-signed root, or an intermediate signed by `--parent-dir`.
    Init(InitArgs),
    /// Issue a reader (or script-signing) certificate from a public key or a PKCS#10 request.
    Issue(IssueArgs),
    /// Revoke a certificate this CA issued (it appears on the next `ca crl`).
    Revoke {
        /// The CA directory.
        #[arg(long, default_value = "ca")]
        dir: PathBuf,
        /// The serial, hex as `ca issue` and `openssl x509 -serial` print it.
        #[arg(value_name = "SERIAL")]
        serial: String,
        /// Revocation time, RFC 3339 UTC [default: now].
        #[arg(long, value_name = "T")]
        at: Option<String>,
    },
    /// Sign a CRL of every revocation.
    Crl {
        /// The CA directory.
        #[arg(long, default_value = "ca")]
        dir: PathBuf,
        /// Days until the CRL's nextUpdate (verifiers refuse it after that).
        #[arg(long, default_value_t = 7)]
        days: u64,
        /// Where to write the CRL (PEM).
        #[arg(short = 'o', value_name = "OUT")]
        out: PathBuf,
    },
    /// Verify a reader (or script-signing) certificate as the issuer service does.
    Verify(VerifyArgs),
}

/// Arguments of `cardvm ca init`.
#[derive(Args, Debug)]
struct InitArgs {
    /// The CA directory to create.
    #[arg(long, default_value = "ca")]
    dir: PathBuf,
    /// The CA's subject, RFC 4514 (e.g. "CN=Shenzhen Tong CA,O=Shenzhen Tong").
    #[arg(long)]
    subject: String,
    /// Validity in days.
    #[arg(long, default_value_t = 3650)]
    days: u64,
    /// pathLenConstraint: how many CA levels may sit below this one.
    #[arg(long, value_name = "N")]
    path_len: Option<u8>,
    /// Make an intermediate CA signed by the CA in this directory (e.g. an industry root).
    #[arg(long, value_name = "DIR")]
    parent_dir: Option<PathBuf>,
    /// Also write the key as PKCS#8 PEM (`ca.key.pem`, mode 0600) for OpenSSL.
    #[arg(long)]
    pkcs8: bool,
    /// Overwrite an existing CA in DIR.
    #[arg(long)]
    force: bool,
}

/// Arguments of `cardvm ca issue`.
#[derive(Args, Debug)]
struct IssueArgs {
    /// The CA directory.
    #[arg(long, default_value = "ca")]
    dir: PathBuf,
    /// The subject's public key file (`keygen` format).
    #[arg(
        long,
        value_name = "P",
        conflicts_with = "csr",
        required_unless_present = "csr"
    )]
    r#pub: Option<PathBuf>,
    /// A PKCS#10 request (from `reader init` or OpenSSL); its signature is checked.
    #[arg(long, value_name = "R.csr")]
    csr: Option<PathBuf>,
    /// The reader id (the certificate's CN) [default with --csr: the request's CN].
    #[arg(long, value_name = "ID", conflicts_with = "script_signer")]
    reader_id: Option<String>,
    /// Issue the card company's script-signing certificate with this CN instead.
    #[arg(long, value_name = "NAME")]
    script_signer: Option<String>,
    /// The reader's kind: `desktop` (a general-purpose computer) or `secure-element`
    /// (the VM and the reader key in a secure element; only those get card keys).
    #[arg(
        long,
        value_name = "KIND",
        default_value = "desktop",
        conflicts_with = "script_signer"
    )]
    kind: ReaderKind,
    /// Validity in days (never beyond the CA's own).
    #[arg(long, default_value_t = 365)]
    days: u64,
    /// Append the CA's chain below its root to OUT, for the reader to present.
    #[arg(long)]
    with_chain: bool,
    /// Where to write the certificate (PEM).
    #[arg(short = 'o', value_name = "OUT")]
    out: PathBuf,
}

/// Arguments of `cardvm ca verify`.
#[derive(Args, Debug)]
struct VerifyArgs {
    /// Trusted root certificate(s), PEM.
    #[arg(long = "ca", value_name = "CA.crt", required = true)]
    roots: Vec<PathBuf>,
    /// Intermediate CA certificates, PEM.
    #[arg(long, value_name = "FILE")]
    untrusted: Vec<PathBuf>,
    /// CRLs (PEM); when none is given, revocation is not checked.
    #[arg(long, value_name = "FILE")]
    crl: Vec<PathBuf>,
    /// Require this reader id.
    #[arg(long, value_name = "ID")]
    reader_id: Option<String>,
    /// Check a script-signing certificate instead of a reader's.
    #[arg(long)]
    script_signer: bool,
    /// Time to verify at, RFC 3339 UTC [default: now].
    #[arg(long, value_name = "T")]
    now: Option<String>,
    /// The certificate (PEM; more certificates after it are its chain).
    #[arg(value_name = "CERT")]
    cert: PathBuf,
}

/// Runs `cardvm ca ...`.
pub fn run(args: CaArgs) -> CliResult {
    match args.cmd {
        CaCmd::Init(a) => init(a),
        CaCmd::Issue(a) => issue(a),
        CaCmd::Revoke { dir, serial, at } => revoke(&dir, &serial, at.as_deref()),
        CaCmd::Crl { dir, days, out } => crl(&dir, days, &out),
        CaCmd::Verify(a) => verify(a),
    }
}

/// Seconds since the unix epoch from the system clock.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read_text(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<Certificate>, String> {
    certs_from_pem(&read_text(path)?).map_err(|e| format!("{}: {e}", path.display()))
}

fn pem_chain(certs: &[Certificate]) -> Result<String, String> {
    let mut out = String::new();
    for c in certs {
        out.push_str(&to_pem(c, "certificate").map_err(|e| e.to_string())?);
    }
    Ok(out)
}

fn is_self_signed(cert: &Certificate) -> bool {
    cert.tbs_certificate().issuer() == cert.tbs_certificate().subject()
}

fn load_ca(dir: &Path) -> Result<Ca, String> {
    let key = load_private_key(&dir.join("ca.key"))?;
    let chain = load_certs(&dir.join("chain.crt"))?;
    let state = CaState::load(&dir.join("state.json")).map_err(|e| e.to_string())?;
    let (cert, parents) = chain
        .split_first()
        .ok_or_else(|| format!("{}: empty chain.crt", dir.display()))?;
    Ca::new(cert.clone(), parents.to_vec(), key, state)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

fn save_state(dir: &Path, ca: &Ca) -> CliResult {
    ca.state
        .save(&dir.join("state.json"))
        .map_err(|e| e.to_string())
}

fn init(a: InitArgs) -> CliResult {
    let subject = parse_name(&a.subject).map_err(|e| e.to_string())?;
    if a.days == 0 {
        return Err("--days must be at least 1".into());
    }
    fs::create_dir_all(&a.dir).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    if a.dir.join("state.json").exists() && !a.force {
        return Err(format!(
            "{}: a CA already exists there (use --force to replace it)",
            a.dir.display()
        ));
    }
    let key = Sm2PrivateKey::generate(&mut os_rng());
    let start = now();
    let end = start.saturating_add(a.days.saturating_mul(DAY));
    let ca = match &a.parent_dir {
        None => Ca::new_root(subject, key.clone(), start, end, a.path_len, os_rng())
            .map_err(|e| e.to_string())?,
        Some(pdir) => {
            let mut parent = load_ca(pdir)?;
            let ca = parent
                .new_intermediate(subject, key.clone(), start, end, a.path_len, os_rng())
                .map_err(|e| e.to_string())?;
            save_state(pdir, &parent)?;
            ca
        }
    };
    save_key_pair(&key, &a.dir.join("ca.key"), &a.dir.join("ca.pub"), a.force)?;
    if a.pkcs8 {
        let pem = private_key_pkcs8_pem(&key).map_err(|e| e.to_string())?;
        write_file(&a.dir.join("ca.key.pem"), &pem, true, a.force)?;
    }
    let own = to_pem(&ca.cert, "certificate").map_err(|e| e.to_string())?;
    write_file(&a.dir.join("ca.crt"), &own, false, a.force)?;
    let mut chain = vec![ca.cert.clone()];
    chain.extend(ca.parents.iter().cloned());
    write_file(
        &a.dir.join("chain.crt"),
        &pem_chain(&chain)?,
        false,
        a.force,
    )?;
    save_state(&a.dir, &ca)?;
    println!(
        "CA {} in {} (serial {}, valid until {})",
        subject_of(&ca.cert),
        a.dir.display(),
        serial_of(&ca.cert),
        rfc3339(validity_of(&ca.cert).1)
    );
    Ok(())
}

fn issue(a: IssueArgs) -> CliResult {
    let mut ca = load_ca(&a.dir)?;
    let start = now();
    let end = start.saturating_add(a.days.saturating_mul(DAY));
    let cert = match (&a.csr, &a.r#pub, &a.script_signer) {
        (Some(csr), _, None) => {
            let req: CertReq = from_pem(&read_text(csr)?, "certificate request")
                .map_err(|e| format!("{}: {e}", csr.display()))?;
            ca.issue_from_request(&req, a.reader_id.as_deref(), a.kind, start, end, os_rng())
                .map_err(|e| format!("{}: {e}", csr.display()))?
        }
        (Some(csr), _, Some(name)) => {
            let req: CertReq = from_pem(&read_text(csr)?, "certificate request")
                .map_err(|e| format!("{}: {e}", csr.display()))?;
            let key = cardvm::issuer::csr::verify_request(&req)
                .map_err(|e| format!("{}: {e}", csr.display()))?;
            ca.issue_script_signer(name, &key, start, end, os_rng())
                .map_err(|e| e.to_string())?
        }
        (None, Some(p), signer) => {
            let key = load_public_key(p)?;
            match (signer, &a.reader_id) {
                (Some(name), _) => ca.issue_script_signer(name, &key, start, end, os_rng()),
                (None, Some(id)) => ca.issue_reader(id, &key, a.kind, start, end, os_rng()),
                (None, None) => {
                    return Err("--pub needs --reader-id ID or --script-signer NAME".into());
                }
            }
            .map_err(|e| e.to_string())?
        }
        (None, None, _) => return Err("give --pub P or --csr R.csr".into()),
    };
    // The serial is spent before the certificate exists on disk: never reused.
    save_state(&a.dir, &ca)?;
    let mut out = vec![cert.clone()];
    if a.with_chain {
        out.push(ca.cert.clone());
        out.extend(ca.parents.iter().cloned());
        out.retain(|c| !is_self_signed(c));
    }
    write_file(&a.out, &pem_chain(&out)?, false, true)?;
    let kind = match a.script_signer {
        Some(_) => String::new(),
        None => format!("{} reader, ", a.kind),
    };
    println!(
        "issued serial {} for {} ({kind}valid until {}) -> {}",
        serial_of(&cert),
        subject_of(&cert),
        rfc3339(validity_of(&cert).1),
        a.out.display()
    );
    Ok(())
}

fn revoke(dir: &Path, serial: &str, at: Option<&str>) -> CliResult {
    let bytes = parse_serial(serial).ok_or_else(|| format!("{serial:?} is not a hex serial"))?;
    if bytes.len() > 8 {
        return Err(format!("serial {serial} was not issued by this CA"));
    }
    let mut buf = [0u8; 8];
    buf[8 - bytes.len()..].copy_from_slice(&bytes);
    let at = match at {
        Some(t) => parse_rfc3339(t).map_err(|e| e.to_string())?,
        None => now(),
    };
    let mut ca = load_ca(dir)?;
    let entry = ca
        .revoke(u64::from_be_bytes(buf), at)
        .map_err(|e| e.to_string())?;
    println!(
        "revoked serial {serial} ({}) at {}",
        entry.subject,
        rfc3339(at)
    );
    save_state(dir, &ca)
}

fn crl(dir: &Path, days: u64, out: &Path) -> CliResult {
    if days == 0 {
        return Err("--days must be at least 1".into());
    }
    let mut ca = load_ca(dir)?;
    let start = now();
    let list = ca
        .crl(
            start,
            start.saturating_add(days.saturating_mul(DAY)),
            os_rng(),
        )
        .map_err(|e| e.to_string())?;
    save_state(dir, &ca)?;
    let pem = to_pem(&list, "CRL").map_err(|e| e.to_string())?;
    write_file(out, &pem, false, true)?;
    let n = list
        .tbs_cert_list
        .revoked_certificates
        .as_ref()
        .map_or(0, Vec::len);
    println!("CRL with {n} revoked certificate(s) -> {}", out.display());
    Ok(())
}

fn verify(a: VerifyArgs) -> CliResult {
    let mut store = TrustStore::new();
    for r in &a.roots {
        for c in load_certs(r)? {
            store
                .add_root(c)
                .map_err(|e| format!("{}: {e}", r.display()))?;
        }
    }
    for u in &a.untrusted {
        for c in load_certs(u)? {
            store
                .add_intermediate(c)
                .map_err(|e| format!("{}: {e}", u.display()))?;
        }
    }
    store.set_require_crl(!a.crl.is_empty());
    for c in &a.crl {
        store
            .add_crl_pem(&read_text(c)?)
            .map_err(|e| format!("{}: {e}", c.display()))?;
    }
    let at = match &a.now {
        Some(t) => parse_rfc3339(t).map_err(|e| e.to_string())?,
        None => now(),
    };
    let chain = load_certs(&a.cert)?;
    let fail = |e: cardvm::issuer::PkiError| format!("{}: {e}", a.cert.display());
    if a.script_signer {
        store.verify_script_signer(&chain, at).map_err(fail)?;
        println!(
            "{}: OK (script signer {})",
            a.cert.display(),
            subject_of(&chain[0])
        );
        return Ok(());
    }
    let id = match &a.reader_id {
        Some(want) => store.verify_reader_id(&chain, want, at),
        None => store.verify_reader(&chain, at),
    }
    .map_err(fail)?;
    println!(
        "{}: OK reader {} serial {} valid until {} kind {}",
        a.cert.display(),
        id.reader_id,
        id.serial,
        rfc3339(id.not_after),
        id.kind
    );
    Ok(())
}
