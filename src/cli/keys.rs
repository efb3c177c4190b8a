//! `cardvm keygen` and the SM2 key-file format.
//!
//! Key files are text: a `#` comment header line and one line of hex.
//! `PREFIX.key` holds the 32-byte private scalar (mode 0600 on unix),
//! `PREFIX.pub` the 65-byte uncompressed SEC1 public point.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use cardvm::crypto::rng::os_rng;
use cardvm::crypto::sm2::{Sm2PrivateKey, Sm2PublicKey};
use clap::Args;
use zeroize::Zeroizing;

use super::CliResult;

const PRIVATE_HEADER: &str = "# cardvm sm2 private key";
const PUBLIC_HEADER: &str = "# cardvm sm2 public key";

/// Arguments of `cardvm keygen`.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Output prefix: writes PREFIX.key (private, mode 0600) and PREFIX.pub.
    #[arg(long, value_name = "PREFIX")]
    out: PathBuf,
    /// Overwrite existing key files.
    #[arg(long)]
    force: bool,
}

fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_os_string();
    s.push(ext);
    PathBuf::from(s)
}

fn hex(bytes: &[u8]) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::with_capacity(bytes.len() * 2));
    for b in bytes {
        s.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
    }
    s
}

/// Writes `text` to a new file (`force`: overwrite); `private` files get mode 0600.
pub fn write_file(path: &Path, text: &str, private: bool, force: bool) -> CliResult {
    let mut opts = fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Runs `cardvm keygen`.
pub fn keygen(args: KeygenArgs) -> CliResult {
    let key = Sm2PrivateKey::generate(&mut os_rng());
    let key_path = with_ext(&args.out, ".key");
    let pub_path = with_ext(&args.out, ".pub");
    save_key_pair(&key, &key_path, &pub_path, args.force)?;
    println!("wrote {} and {}", key_path.display(), pub_path.display());
    Ok(())
}

/// Writes a key pair in the `keygen` formats: `key_path` (mode 0600) and `pub_path`.
pub fn save_key_pair(
    key: &Sm2PrivateKey,
    key_path: &Path,
    pub_path: &Path,
    force: bool,
) -> CliResult {
    let mut text = Zeroizing::new(String::from(PRIVATE_HEADER));
    text.push('\n');
    text.push_str(&hex(&key.to_bytes()[..]));
    text.push('\n');
    write_file(key_path, &text, true, force)?;
    let pub_text = format!(
        "{PUBLIC_HEADER}\n{}\n",
        hex(&key.public_key().to_sec1_bytes()).as_str()
    );
    write_file(pub_path, &pub_text, false, force)
}

fn read_hex_line(path: &Path, header: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let text = Zeroizing::new(
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    );
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines
        .next()
        .ok_or_else(|| format!("{}: no key line (want `{header}` file)", path.display()))?;
    if lines.next().is_some() {
        return Err(format!("{}: more than one key line", path.display()));
    }
    if line.len() % 2 != 0 || !line.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{}: key line is not hex", path.display()));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(line.len() / 2));
    for i in (0..line.len()).step_by(2) {
        let b = u8::from_str_radix(&line[i..i + 2], 16)
            .map_err(|_| format!("{}: key line is not hex", path.display()))?;
        out.push(b);
    }
    Ok(out)
}

/// Loads a private key file written by `keygen`.
pub fn load_private_key(path: &Path) -> Result<Sm2PrivateKey, String> {
    let bytes = read_hex_line(path, PRIVATE_HEADER)?;
    Sm2PrivateKey::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Loads a public key file written by `keygen`.
pub fn load_public_key(path: &Path) -> Result<Sm2PublicKey, String> {
    let bytes = read_hex_line(path, PUBLIC_HEADER)?;
    Sm2PublicKey::from_sec1_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}
