//! `cardvm issuer keys init|import|generate|list`: the card company's per-city master keys.
//!
//! A store is either an encrypted file (`--store PATH`, the default kind; passphrase from
//! `CARDVM_KEYSTORE_PASSPHRASE` or `--passphrase-file`) or a PKCS#11 token (`--pkcs11-module
//! M --token LABEL`, PIN from `CARDVM_PKCS11_PIN` or `--pin-file`; needs the `pkcs11` build
//! feature). Secrets never come from argv: other users can read a process's arguments.
//! See `docs/keys.md`.

use std::io::Read;
use std::path::{Path, PathBuf};

use cardvm::issuer::keys::{FileKeyStore, MasterKeyStore, MasterKeys};
use clap::{Args, Subcommand};
use zeroize::Zeroizing;

use super::CliResult;

/// Environment variable holding the file store's passphrase.
pub const PASSPHRASE_ENV: &str = "CARDVM_KEYSTORE_PASSPHRASE";
/// Environment variable holding the PKCS#11 user PIN.
#[cfg_attr(not(feature = "pkcs11"), allow(dead_code))]
pub const PIN_ENV: &str = "CARDVM_PKCS11_PIN";
/// Largest secret or master-key file read.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Arguments of `cardvm issuer keys`.
#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    cmd: KeysCmd,
}

#[derive(Subcommand, Debug)]
enum KeysCmd {
    /// Create an empty encrypted key store (with a token: check the login and mechanisms).
    Init(StoreArgs),
    /// Import a city's master keys from a CITY.toml (alg, load, purchase, tac).
    Import {
        /// The city code (e.g. 731).
        #[arg(value_name = "CITY")]
        city: u32,
        /// The master-key file: alg = "des3"|"sm4", load/purchase/tac = 16 bytes hex.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Replace the city's masters if the store already has them.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Generate a 3DES city's masters inside a PKCS#11 token (they never leave it).
    Generate {
        /// The city code.
        #[arg(value_name = "CITY")]
        city: u32,
        /// Replace the city's masters if the token already has them.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the cities the store holds masters for, with their algorithm.
    List(StoreArgs),
}

/// Which store: `--store PATH` or `--pkcs11-module M --token LABEL`.
#[derive(Args, Debug)]
struct StoreArgs {
    /// The encrypted key-store file.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "pkcs11_module",
        conflicts_with = "pkcs11_module"
    )]
    store: Option<PathBuf>,
    /// File whose content (one trailing newline removed) is the passphrase
    /// [default: the CARDVM_KEYSTORE_PASSPHRASE environment variable].
    #[arg(long, value_name = "F", conflicts_with = "pkcs11_module")]
    passphrase_file: Option<PathBuf>,
    /// A PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so): keep the masters in its token.
    #[arg(long, value_name = "MODULE", requires = "token")]
    pkcs11_module: Option<PathBuf>,
    /// The PKCS#11 token's label.
    #[arg(long, value_name = "LABEL", requires = "pkcs11_module")]
    token: Option<String>,
    /// File whose content (one trailing newline removed) is the token's user PIN
    /// [default: the CARDVM_PKCS11_PIN environment variable].
    #[arg(long, value_name = "F", requires = "pkcs11_module")]
    pin_file: Option<PathBuf>,
}

/// A secret from a file (one trailing newline removed) or from an environment variable.
fn secret(
    file: Option<&Path>,
    env: &str,
    what: &str,
    flag: &str,
) -> Result<Zeroizing<String>, String> {
    let text = match file {
        Some(p) => read_small(p)?,
        None => match std::env::var(env) {
            Ok(v) => Zeroizing::new(v),
            Err(std::env::VarError::NotPresent) => {
                return Err(format!(
                    "no {what}: set {env} or pass {flag} F (never on the command line)"
                ));
            }
            Err(std::env::VarError::NotUnicode(_)) => return Err(format!("{env} is not UTF-8")),
        },
    };
    let trimmed = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if trimmed.is_empty() {
        return Err(format!("empty {what}"));
    }
    Ok(Zeroizing::new(trimmed.to_string()))
}

/// A small text file read into a zeroizing buffer.
fn read_small(path: &Path) -> Result<Zeroizing<String>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Zeroizing::new(Vec::new());
    f.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(format!("{}: larger than 64 KiB", path.display()));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    Ok(Zeroizing::new(text.to_string()))
}

/// An opened store of either kind.
enum Store {
    File(FileKeyStore),
    #[cfg(feature = "pkcs11")]
    Token(cardvm::issuer::keys::Pkcs11KeyStore),
}

impl StoreArgs {
    fn passphrase(&self) -> Result<Zeroizing<String>, String> {
        secret(
            self.passphrase_file.as_deref(),
            PASSPHRASE_ENV,
            "key-store passphrase",
            "--passphrase-file",
        )
    }

    fn open(&self) -> Result<Store, String> {
        if let Some(path) = &self.store {
            let pass = self.passphrase()?;
            return FileKeyStore::open(path, pass.as_bytes())
                .map(Store::File)
                .map_err(|e| e.to_string());
        }
        self.open_token()
    }

    #[cfg(feature = "pkcs11")]
    fn open_token(&self) -> Result<Store, String> {
        let (Some(module), Some(token)) = (&self.pkcs11_module, &self.token) else {
            return Err("give --store PATH or --pkcs11-module M --token LABEL".into());
        };
        let pin = secret(
            self.pin_file.as_deref(),
            PIN_ENV,
            "PKCS#11 PIN",
            "--pin-file",
        )?;
        cardvm::issuer::keys::Pkcs11KeyStore::open(module, token, &pin)
            .map(Store::Token)
            .map_err(|e| e.to_string())
    }

    #[cfg(not(feature = "pkcs11"))]
    fn open_token(&self) -> Result<Store, String> {
        Err(
            "this cardvm was built without the `pkcs11` feature (cargo build --features pkcs11)"
                .into(),
        )
    }
}

impl Store {
    fn as_dyn(&self) -> &dyn MasterKeyStore {
        match self {
            Store::File(s) => s,
            #[cfg(feature = "pkcs11")]
            Store::Token(s) => s,
        }
    }

    fn name(&self) -> String {
        match self {
            Store::File(s) => s.path().display().to_string(),
            #[cfg(feature = "pkcs11")]
            Store::Token(_) => "the token".into(),
        }
    }
}

/// Runs `cardvm issuer keys …`.
pub fn keys_cmd(args: KeysArgs) -> CliResult {
    match args.cmd {
        KeysCmd::Init(store) => init(&store),
        KeysCmd::Import {
            city,
            file,
            replace,
            store,
        } => {
            let text = read_small(&file)?;
            let keys =
                MasterKeys::from_toml(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            let mut opened = store.open()?;
            match &mut opened {
                Store::File(s) => s.import(city, &keys, replace),
                #[cfg(feature = "pkcs11")]
                Store::Token(s) => s.import(city, &keys, replace),
            }
            .map_err(|e| e.to_string())?;
            println!(
                "imported the {} masters of city {city} into {}",
                keys.alg().name(),
                opened.name()
            );
            Ok(())
        }
        KeysCmd::Generate {
            city,
            replace,
            store,
        } => generate(city, replace, &store),
        KeysCmd::List(store) => {
            let opened = store.open()?;
            for (city, alg) in opened.as_dyn().cities().map_err(|e| e.to_string())? {
                println!("{city} {}", alg.name());
            }
            Ok(())
        }
    }
}

#[cfg(feature = "pkcs11")]
fn generate(city: u32, replace: bool, store: &StoreArgs) -> CliResult {
    if store.store.is_some() {
        return Err(GENERATE_NEEDS_TOKEN.into());
    }
    match store.open()? {
        Store::Token(mut s) => {
            s.generate(city, replace).map_err(|e| e.to_string())?;
            println!("generated the des3 masters of city {city} in the token");
            Ok(())
        }
        Store::File(_) => Err(GENERATE_NEEDS_TOKEN.into()),
    }
}

#[cfg(not(feature = "pkcs11"))]
fn generate(_city: u32, _replace: bool, store: &StoreArgs) -> CliResult {
    if store.store.is_none() {
        store.open_token()?;
    }
    Err(GENERATE_NEEDS_TOKEN.into())
}

const GENERATE_NEEDS_TOKEN: &str =
    "generate needs a PKCS#11 token (--pkcs11-module, --token); a file store imports CITY.toml";

fn init(store: &StoreArgs) -> CliResult {
    if let Some(path) = &store.store {
        let pass = store.passphrase()?;
        let s = FileKeyStore::create(path, pass.as_bytes()).map_err(|e| e.to_string())?;
        let p = s.params();
        println!(
            "created key store {} (Argon2id, {} KiB, {} passes, {} lanes)",
            path.display(),
            p.m_cost,
            p.t_cost,
            p.p_cost
        );
        return Ok(());
    }
    let opened = store.open()?;
    let n = opened.as_dyn().cities().map_err(|e| e.to_string())?.len();
    #[cfg(feature = "pkcs11")]
    if let Store::Token(t) = &opened
        && !t.supports_des3()
    {
        return Err("the token has no CKM_DES3_ECB mechanism: it cannot keep 3DES masters".into());
    }
    println!("token ready: logged in, CKM_DES3_ECB available, {n} cities");
    Ok(())
}
