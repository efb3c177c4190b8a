//! include/cardvm.h is what cbindgen generates from the sources: it cannot drift.
//! `CARDVM_BLESS=1 cargo test -p cardvm-capi --test header` rewrites it.

use std::path::Path;

#[test]
fn checked_in_header_matches_the_sources() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let path = dir.join("include/cardvm.h");
    if std::env::var_os("CARDVM_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/cardvm.h");
    }
    let checked_in = std::fs::read(&path).expect("read include/cardvm.h");
    assert!(
        checked_in == generated,
        "capi/include/cardvm.h is stale: run `CARDVM_BLESS=1 cargo test -p cardvm-capi --test header`"
    );
}
