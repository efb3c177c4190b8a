//! The cardholder's page in a real browser (issue #26): Debian's chromium, headless, driven
//! by playwright-core (`tests/browser/recharge.mjs`), loads the recharge page from
//! `cardvm issuer serve`, pairs with `cardvm agent` (a simulated card), reads the card,
//! recharges 100.00 watching each step, shows the result in Chinese and English, and a
//! page from another origin is refused by the agent. Screenshots of each state go to
//! `$CARGO_TARGET_TMPDIR/screenshots` (with CARDVM_BLESS=1, to `docs/screenshots`).
//!
//! Needs /usr/bin/chromium and `npm ci --prefix tests/browser`; skipped without them
//! unless CARDVM_REQUIRE_BROWSER is set (CI sets it).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Agent(Child);
impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn browser_ready(root: &Path) -> bool {
    let ok = Path::new("/usr/bin/chromium").exists()
        && root
            .join("tests/browser/node_modules/playwright-core")
            .is_dir()
        && Command::new("node").arg("--version").output().is_ok();
    if !ok {
        assert!(
            std::env::var_os("CARDVM_REQUIRE_BROWSER").is_none(),
            "CARDVM_REQUIRE_BROWSER is set but chromium, node or tests/browser/node_modules is missing (npm ci --prefix tests/browser)"
        );
        eprintln!("skipping: no chromium or playwright-core (npm ci --prefix tests/browser)");
    }
    ok
}

#[test]
fn a_cardholder_recharges_from_the_page_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !browser_ready(root) {
        return;
    }
    let s = setup("browser");
    let cwd = &s.cwd;
    tls(cwd);
    cpu_card("scripts/city0731-des3/card.toml", &cwd.join("c731.toml"));
    let server = serve(cwd, &[]);
    // The page's origin is the service's; the agent answers it and nothing else.
    let mut child = Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .current_dir(cwd)
        .args([
            "agent",
            "--origin",
            &server.url,
            "--port",
            "0",
            "--server",
            &server.url,
            "--server-ca",
            "tls.crt",
            "--reader-dir",
            "r1",
            "--issuer-pub",
            "issuer.pub",
            "--city",
            "731",
            "--sim",
            "c731.toml",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cardvm agent");
    let stderr = child.stderr.take().expect("stderr");
    let agent = Agent(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if let Some(rest) = line.strip_prefix("cardvm agent: listening on ") {
                let _ = tx.send(rest.split(' ').next().unwrap_or("").to_string());
            }
        }
    });
    let agent_url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the agent did not start");
    let shots = if std::env::var_os("CARDVM_BLESS").is_some() {
        root.join("docs/screenshots")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
    };
    std::fs::create_dir_all(&shots).expect("screenshots dir");
    let o = Command::new("node")
        .arg(root.join("tests/browser/recharge.mjs"))
        .env("PAGE_URL", format!("{}/pay/?agent={agent_url}", server.url))
        .env("AGENT_URL", &agent_url)
        .env("SHOTS", &shots)
        .output()
        .expect("node");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("a page from another origin was refused"), "{t}");
    for name in [
        "1-connected",
        "2-card",
        "3-confirm",
        "4-result",
        "5-result-en",
    ] {
        assert!(shots.join(format!("{name}.png")).is_file(), "{name}.png");
    }
    // The card company's ledger has the load, committed once.
    let ledger = ok(cwd, &["issuer", "ledger", "--json"]);
    let loads: Vec<serde_json::Value> = ledger
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &serde_json::Value| r["kind"] == "load" && r["state"] == "committed")
        .collect();
    assert_eq!(loads.len(), 1, "{ledger}");
    assert_eq!(loads[0]["amount"], 10_000);
    drop(agent);
}
