//! An issuer cluster in one process, for the load test and the online benchmark: a CA,
//! `readers` provisioned readers, city 731 (3DES), and `instances` HTTPS services on
//! loopback sharing one ledger database (SQLite or PostgreSQL).
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cardvm::asm::{AsmOptions, assemble_file};
use cardvm::crypto::rng::os_rng;
use cardvm::crypto::sm2::Sm2PrivateKey;
use cardvm::crypto::{KeyAlg, SecretKey};
use cardvm::envelope::MemoryReplayStore;
use cardvm::issuer::keys::{KeyRole, KeyStoreError, MasterKeyStore};
use cardvm::issuer::ledger::CityRow;
use cardvm::issuer::pki::{parse_name, to_pem};
use cardvm::issuer::{Ca, Issuer, Ledger, ReaderKind, TrustStore};
use cardvm::online::client::Client;
use cardvm::online::service::{Running, Service, ServiceConfig, spawn_tls};
use cardvm::reader::{MemoryJournal, Policy, Reader, ReaderConfig, SystemClock};
use cardvm::sim::{Algorithm, CpuCard, RandomSource};
use cardvm::vm::Limits;

pub const CITY: u32 = 731;
const DAY: u64 = 86_400;
/// The card master keys (load, purchase, TAC) of every city in the cluster.
pub const MASTERS: [&str; 3] = [
    "11223344556677888877665544332211",
    "0123456789ABCDEFFEDCBA9876543210",
    "A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8",
];

fn unhex(s: &str) -> Vec<u8> {
    cardvm::issuer::ledger::unhex(s).expect("hex")
}

/// The same masters for the listed cities and algorithms, in memory (diversified by the
/// library's reference-tested function).
pub struct Masters(pub Vec<(u32, KeyAlg)>);
impl MasterKeyStore for Masters {
    fn card_key(
        &self,
        city: u32,
        role: KeyRole,
        serial: &[u8],
    ) -> Result<SecretKey, KeyStoreError> {
        let (_, alg) = self
            .0
            .iter()
            .find(|(c, _)| *c == city)
            .ok_or(KeyStoreError::UnknownCity { city })?;
        let hex = match role {
            KeyRole::Load => MASTERS[0],
            KeyRole::Purchase => MASTERS[1],
            KeyRole::Tac => MASTERS[2],
        };
        let master = SecretKey::new(*alg, role.master_usage(), &unhex(hex)).expect("master");
        let f = cardvm::issuer::keys::diversification_input(serial)?;
        Ok(cardvm::crypto::diversify(&master, &f).expect("diversify"))
    }
    fn cities(&self) -> Result<Vec<(u32, KeyAlg)>, KeyStoreError> {
        Ok(self.0.clone())
    }
}

/// A temporary directory, removed on drop.
pub struct Temp(pub PathBuf);
impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Cluster {
    pub ledger: Ledger,
    pub services: Vec<Running>,
    pub tls_ca: Vec<u8>,
    pub issuer_key: Sm2PrivateKey,
    pub readers: Vec<(String, Sm2PrivateKey)>,
    db: String,
    trust: TrustStore,
    log: bool,
    /// The readers' CA (a test revokes with it).
    pub ca: std::sync::Mutex<Ca>,
    _dir: Temp,
}

/// The repository root: the crate that includes this file (cardvm, or cardvm-bench in
/// benches/) or the first folder above it that holds `scripts/`.
fn repo_root() -> PathBuf {
    let mut d = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !d.join("scripts").is_dir() && d.pop() {}
    d
}

fn script(path: &str) -> Vec<u8> {
    let p = repo_root().join(path);
    assemble_file(&p, &AsmOptions::default())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .script
        .encode()
}

/// A fresh PostgreSQL database under `base` (`postgres://…/db`), made with psql.
pub fn pg_database(base: &str, tag: &str) -> String {
    let name = format!("cardvm_{tag}_{}", std::process::id());
    let run = |sql: &str| {
        let o = std::process::Command::new("psql")
            .args([base, "-qtAc", sql])
            .output()
            .expect("psql (postgresql-client) is needed for the PostgreSQL tests");
        assert!(
            o.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&format!("DROP DATABASE IF EXISTS {name}"));
    run(&format!("CREATE DATABASE {name}"));
    match base.rfind('/') {
        Some(i) => format!("{}/{name}", &base[..i]),
        None => panic!("CARDVM_TEST_PG `{base}` has no database part"),
    }
}

/// The PostgreSQL base URL, or why the PostgreSQL tests are skipped (a failure when
/// CARDVM_REQUIRE_PG is set).
pub fn pg_base() -> Option<String> {
    match std::env::var("CARDVM_TEST_PG") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CARDVM_REQUIRE_PG").is_none(),
                "CARDVM_REQUIRE_PG is set but CARDVM_TEST_PG names no database (bash .ci/postgres.sh prints one)"
            );
            eprintln!(
                "skipping: no PostgreSQL (set CARDVM_TEST_PG=postgres://…, e.g. from bash .ci/postgres.sh)"
            );
            None
        }
    }
}

/// How the city's loads are secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// Host-secured (the default): no card key in any bundle; the card company answers
    /// MAC2 over `POST /v1/host` (docs/host.md).
    Host,
    /// The sealed-key flow: the bundle carries the card's keys; the readers' certificates
    /// say secure element.
    SealedKeys,
}

impl Cluster {
    /// Starts `instances` services over the ledger at `db`, with `readers` readers, loads
    /// host-secured.
    pub async fn start(db: &str, instances: usize, readers: usize, log: bool) -> Cluster {
        Self::start_with(db, instances, readers, log, LoadMode::Host).await
    }

    /// [`Cluster::start`] with the load mode given.
    pub async fn start_with(
        db: &str,
        instances: usize,
        readers: usize,
        log: bool,
        mode: LoadMode,
    ) -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "cardvm-cluster-{}-{}",
            std::process::id(),
            cardvm::online::client::new_request_id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let dir = Temp(dir);
        let now = SystemClock.now_secs();
        let mut ca = Ca::new_root(
            parse_name("CN=City Card CA,O=City Card").expect("name"),
            Sm2PrivateKey::generate(&mut os_rng()),
            now - DAY,
            now + 365 * DAY,
            None,
            os_rng(),
        )
        .expect("ca");
        let mut trust = TrustStore::new();
        trust.add_root(ca.cert.clone()).expect("root");
        let crl = ca.crl(now - DAY, now + 30 * DAY, os_rng()).expect("crl");
        trust.add_crl(crl.clone());
        let issuer_key = Sm2PrivateKey::generate(&mut os_rng());
        let ledger = Ledger::open(db).await.expect("ledger");
        // The trust as `issuer init` records it: the services reload it from the ledger.
        ledger
            .set_config("ca_pem", &to_pem(&ca.cert, "certificate").expect("pem"))
            .await
            .expect("config");
        ledger
            .set_config("crls", &to_pem(&crl, "CRL").expect("pem"))
            .await
            .expect("config");
        ledger
            .set_city(&CityRow {
                city: CITY,
                alg: "des3".into(),
                purse_limit: 100_000_000,
                txn_limit: 1_000_000,
                day_limit: 100_000_000,
            })
            .await
            .expect("city");
        let load = match mode {
            LoadMode::Host => "load_host.cvs",
            LoadMode::SealedKeys => "load.casm",
        };
        for (role, file) in [
            ("query", "query.casm"),
            ("load", load),
            ("recover", "recover.casm"),
        ] {
            ledger
                .set_script(
                    CITY,
                    role,
                    &script(&format!("scripts/city0731-des3/{file}")),
                )
                .await
                .expect("script");
        }
        let mut keys = Vec::new();
        for i in 0..readers {
            let id = format!("R{i:03}");
            let k = Sm2PrivateKey::generate(&mut os_rng());
            let cert = ca
                // Card keys go only to reader firmware; host-secured loads serve a desktop.
                .issue_reader(
                    &id,
                    k.public_key(),
                    match mode {
                        LoadMode::Host => ReaderKind::Desktop,
                        LoadMode::SealedKeys => ReaderKind::SecureElement,
                    },
                    now - DAY,
                    now + 30 * DAY,
                    os_rng(),
                )
                .expect("cert");
            let pem = to_pem(&cert, "certificate").expect("pem");
            let n = (i as u64 + 1).to_be_bytes();
            ledger
                .add_reader(&id, &pem, "01", &[n[2], n[3], n[4], n[5], n[6], n[7]], now)
                .await
                .expect("reader");
            keys.push((id, k));
        }
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("tls");
        std::fs::write(dir.0.join("tls.crt"), ck.cert.pem()).expect("write");
        std::fs::write(dir.0.join("tls.key"), ck.signing_key.serialize_pem()).expect("write");
        let mut cluster = Cluster {
            ledger,
            services: Vec::new(),
            tls_ca: ck.cert.pem().into_bytes(),
            issuer_key,
            readers: keys,
            db: db.to_string(),
            trust,
            log,
            ca: std::sync::Mutex::new(ca),
            _dir: dir,
        };
        for _ in 0..instances {
            let running = cluster.instance().await;
            cluster.services.push(running);
        }
        cluster
    }

    /// A new service instance on the cluster's database, with its own pool (as a
    /// separate process would have), on an ephemeral port.
    pub async fn instance(&self) -> Running {
        let l = Ledger::open(&self.db).await.expect("ledger");
        let issuer = Issuer::new(
            l,
            self.trust.clone(),
            self.issuer_key.clone(),
            // City 755 (SM4) for the offline PSAM terminals (tests/offline_purchases.rs).
            Arc::new(Masters(vec![(CITY, KeyAlg::Des3), (755, KeyAlg::Sm4)])),
            Arc::new(SystemClock),
        );
        let svc = Service::new(
            issuer,
            ServiceConfig {
                rate_per_sec: 100_000.0,
                burst: 100_000.0,
                log: self.log,
                addr_rate_per_sec: 1_000_000.0,
                addr_burst: 1_000_000.0,
                max_connections: 4_096,
                ..ServiceConfig::default()
            },
        );
        spawn_tls(
            svc,
            "127.0.0.1:0".parse().expect("addr"),
            &self._dir.0.join("tls.crt"),
            &self._dir.0.join("tls.key"),
        )
        .await
        .expect("service")
    }

    /// A client of reader `i` for any URL (an instance, or a proxy in front of one).
    pub fn client_for(&self, i: usize, url: &str) -> Client {
        let (id, key) = &self.readers[i];
        Client::new(
            url,
            Some(&self.tls_ca),
            id,
            key.clone(),
            Duration::from_secs(20),
        )
        .expect("client")
    }

    /// Reader `i`: its in-memory reader and a client of instance `i % instances`.
    pub fn reader(&self, i: usize) -> (Reader, Client) {
        let (id, key) = &self.readers[i];
        let reader = Reader::new(
            ReaderConfig {
                reader_id: id.clone(),
                reader_key: Some(key.clone()),
                issuers: vec![self.issuer_key.public_key().clone()],
                policy: Policy::SealedOnly,
                limits: Limits::default(),
            },
            Some(Box::new(MemoryReplayStore::new())),
            Some(Box::new(MemoryJournal::default())),
            Box::new(SystemClock),
        )
        .expect("reader");
        let url = self.services[i % self.services.len()].url();
        let client = Client::new(
            &url,
            Some(&self.tls_ca),
            id,
            key.clone(),
            Duration::from_secs(60),
        )
        .expect("client");
        (reader, client)
    }

    pub async fn shutdown(self) {
        for s in self.services {
            let _ = s.shutdown().await;
        }
        self.ledger.close().await;
    }
}

/// A card's rows in the ledger and the total of its committed loads (fen).
pub async fn credited(ledger: &Ledger, card: &[u8]) -> (Vec<cardvm::issuer::ledger::TxnRow>, u64) {
    let rows = ledger
        .list(&cardvm::issuer::ledger::Filter {
            card_id: Some(cardvm::issuer::ledger::hex(card)),
            ..cardvm::issuer::ledger::Filter::default()
        })
        .await
        .expect("ledger");
    let total = rows
        .iter()
        .filter(|r| r.state == cardvm::issuer::TxnState::Committed)
        .map(|r| r.amount)
        .sum();
    (rows, total)
}

/// Card `i` of the city: its own serial, the city's masters (it diversifies them).
pub fn card(i: usize, balance: u32) -> CpuCard {
    let mut serial = [0x41, 0, 0, 0, 0, 0, 0, 0];
    serial[4..].copy_from_slice(&(i as u32).to_be_bytes());
    CpuCard::builder()
        .algorithm(Algorithm::Des3)
        .card_number(&serial)
        .master_keys(&unhex(MASTERS[0]), &unhex(MASTERS[1]), &unhex(MASTERS[2]))
        .balance(balance, 100_000_000)
        .random(RandomSource::Seeded {
            seed: i as u64 + 1,
            counter: 0,
        })
        .build()
        .expect("card")
}

trait NowSecs {
    fn now_secs(&self) -> u64;
}
impl NowSecs for SystemClock {
    fn now_secs(&self) -> u64 {
        cardvm::reader::Clock::now(self)
    }
}
