//! `cardvm reader init|install`: provisioning a reader's certificate while its private
//! key stays in the reader.
//!
//! A reader directory holds `reader.key` (mode 0600) and `reader.pub` (`keygen`
//! format), `reader.id` (the reader id, one line), and after `install`, `reader.crt`
//! (its certificate, then any intermediates it presents) and `ca.crt` (the CA it was
//! checked against).

use std::fs;
use std::path::{Path, PathBuf};

use cardvm::crypto::rng::os_rng;
use cardvm::crypto::sm2::Sm2PrivateKey;
use cardvm::issuer::cert::{cert_public_key, serial_of, validity_of};
use cardvm::issuer::csr::reader_request;
use cardvm::issuer::pki::{check_reader_id, rfc3339, to_pem};
use cardvm::issuer::{PkiError, TrustStore};
use clap::{Args, Subcommand};

use super::CliResult;
use super::ca::{load_certs, now};
use super::keys::{load_private_key, load_public_key, save_key_pair, write_file};

/// Arguments of `cardvm reader`.
#[derive(Args, Debug)]
pub struct ReaderArgs {
    #[command(subcommand)]
    cmd: ReaderCmd,
}

#[derive(Subcommand, Debug)]
enum ReaderCmd {
    /// Generate the reader's key pair and a PKCS#10 request for the CA.
    Init {
        /// The reader's id (the certificate's CN; 1-64 printable characters).
        #[arg(long, value_name = "ID")]
        reader_id: String,
        /// The reader directory.
        #[arg(long, default_value = "reader")]
        dir: PathBuf,
        /// Where to write the request [default: DIR/ID.csr].
        #[arg(long, value_name = "OUT")]
        csr: Option<PathBuf>,
        /// Replace an existing key pair.
        #[arg(long)]
        force: bool,
    },
    /// Check an issued certificate against this reader's key, id and CA, and store it.
    Install {
        /// The certificate (PEM; intermediates may follow it).
        #[arg(value_name = "CERT")]
        cert: PathBuf,
        /// The CA certificate(s) to check it against (PEM).
        #[arg(long = "ca", value_name = "CA.crt")]
        ca: PathBuf,
        /// Intermediate CA certificates to present with it (PEM).
        #[arg(long, value_name = "FILE")]
        chain: Vec<PathBuf>,
        /// CRLs to check revocation against.
        #[arg(long, value_name = "FILE")]
        crl: Vec<PathBuf>,
        /// The reader directory.
        #[arg(long, default_value = "reader")]
        dir: PathBuf,
    },
    /// Recovery after the reader refused sealed scripts because its replay store is
    /// missing, rolled back or fails its integrity check: rebuild the store from the
    /// receipts in the journal (each stream's newest data sequence number), sealed with
    /// the reader key. See docs/security.md.
    ReplayRebuild {
        /// The reader's private key.
        #[arg(long, value_name = "K")]
        reader_key: PathBuf,
        /// The reader's id, as its receipts name it [default: the reader key's id].
        #[arg(long, value_name = "ID")]
        reader_id: Option<String>,
        /// The receipt journal to rebuild from [default: K with extension .journal].
        #[arg(long, value_name = "PATH")]
        journal: Option<PathBuf>,
        /// The replay store to write [default: K with extension .replay]. The old file
        /// is kept as PATH.old.
        #[arg(long, value_name = "PATH")]
        replay_store: Option<PathBuf>,
    },
}

/// Runs `cardvm reader ...`.
pub fn run(args: ReaderArgs) -> CliResult {
    match args.cmd {
        ReaderCmd::Init {
            reader_id,
            dir,
            csr,
            force,
        } => init(&reader_id, &dir, csr, force),
        ReaderCmd::Install {
            cert,
            ca,
            chain,
            crl,
            dir,
        } => install(&cert, &ca, &chain, &crl, &dir),
        ReaderCmd::ReplayRebuild {
            reader_key,
            reader_id,
            journal,
            replay_store,
        } => replay_rebuild(&reader_key, reader_id, journal, replay_store),
    }
}

fn replay_rebuild(
    key_path: &Path,
    reader_id: Option<String>,
    journal: Option<PathBuf>,
    store: Option<PathBuf>,
) -> CliResult {
    use cardvm::envelope::FileReplayStore;
    use cardvm::reader::Reader;
    let key = super::keys::load_private_key(key_path)?;
    let reader_id =
        reader_id.unwrap_or_else(|| cardvm::reader::default_reader_id(Some(key.public_key())));
    let journal = journal.unwrap_or_else(|| key_path.with_extension("journal"));
    let store = store.unwrap_or_else(|| key_path.with_extension("replay"));
    let j = cardvm::journal::Journal::open_read_only(&journal)
        .map_err(|e| format!("{}: {e}", journal.display()))?;
    let entries = Reader::replay_entries_from_journal(&j, &reader_id).map_err(|e| e.to_string())?;
    if store.exists() {
        let mut old = store.clone().into_os_string();
        old.push(".old");
        fs::rename(&store, &old).map_err(|e| format!("{}: {e}", store.display()))?;
    }
    // A fresh store: nothing to verify, everything to write.
    let mut s = FileReplayStore::open_file(&store, &key).map_err(|e| e.to_string())?;
    let n = entries.len();
    for (k, e) in &entries {
        println!("  {k}: last accepted seq {}", e.seq);
    }
    s.rebuild(entries).map_err(|e| e.to_string())?;
    println!(
        "replay store {} rebuilt from {} ({n} stream{})",
        store.display(),
        journal.display(),
        if n == 1 { "" } else { "s" }
    );
    Ok(())
}

fn init(reader_id: &str, dir: &Path, csr: Option<PathBuf>, force: bool) -> CliResult {
    check_reader_id(reader_id).map_err(|e| e.to_string())?;
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let key = Sm2PrivateKey::generate(&mut os_rng());
    save_key_pair(
        &key,
        &dir.join("reader.key"),
        &dir.join("reader.pub"),
        force,
    )?;
    write_file(
        &dir.join("reader.id"),
        &format!("{reader_id}\n"),
        false,
        force,
    )?;
    let req = reader_request(&key, reader_id, os_rng()).map_err(|e| e.to_string())?;
    let csr = csr.unwrap_or_else(|| dir.join(format!("{reader_id}.csr")));
    let pem = to_pem(&req, "certificate request").map_err(|e| e.to_string())?;
    write_file(&csr, &pem, false, force)?;
    println!(
        "reader {reader_id}: key in {}, request -> {}",
        dir.display(),
        csr.display()
    );
    Ok(())
}

fn install(cert: &Path, ca: &Path, chain: &[PathBuf], crls: &[PathBuf], dir: &Path) -> CliResult {
    let key = load_private_key(&dir.join("reader.key"))?;
    let public = load_public_key(&dir.join("reader.pub"))?;
    if &public != key.public_key() {
        return Err(format!(
            "{}: reader.pub does not match reader.key",
            dir.display()
        ));
    }
    let id_path = dir.join("reader.id");
    let reader_id = fs::read_to_string(&id_path)
        .map_err(|e| format!("{}: {e}", id_path.display()))?
        .trim()
        .to_owned();
    let mut certs = load_certs(cert)?;
    for c in chain {
        certs.extend(load_certs(c)?);
    }
    let fail = |e: PkiError| format!("{}: {e}", cert.display());
    // The certificate must carry the key this reader holds, whatever else is right.
    if cert_public_key(&certs[0]).map_err(fail)? != public {
        return Err(fail(PkiError::KeyMismatch { what: "reader key" }));
    }
    let mut store = TrustStore::new();
    let roots = load_certs(ca)?;
    for r in &roots {
        store
            .add_root(r.clone())
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    store.set_require_crl(!crls.is_empty());
    for c in crls {
        let text = fs::read_to_string(c).map_err(|e| format!("{}: {e}", c.display()))?;
        store
            .add_crl_pem(&text)
            .map_err(|e| format!("{}: {e}", c.display()))?;
    }
    let id = store
        .verify_reader_id(&certs, &reader_id, now())
        .map_err(fail)?;
    let mut pem = String::new();
    for c in &certs {
        pem.push_str(&to_pem(c, "certificate").map_err(|e| e.to_string())?);
    }
    write_file(&dir.join("reader.crt"), &pem, false, true)?;
    let mut ca_pem = String::new();
    for r in &roots {
        ca_pem.push_str(&to_pem(r, "certificate").map_err(|e| e.to_string())?);
    }
    write_file(&dir.join("ca.crt"), &ca_pem, false, true)?;
    println!(
        "installed certificate serial {} for reader {} ({} reader, valid until {}) in {}",
        serial_of(&certs[0]),
        id.reader_id,
        id.kind,
        rfc3339(validity_of(&certs[0]).1),
        dir.display()
    );
    Ok(())
}
