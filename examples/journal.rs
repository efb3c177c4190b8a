//! The offline receipt journal: append, export a batch, frame it, acknowledge, compact.
//!
//! `cargo run --example journal [PATH]` — uses PATH (default: a file in the temp directory,
//! removed at the end unless PATH was given) and leaves it for `cardvm journal list PATH`.

#[cfg(feature = "std")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use cardvm::frame::{self, Tag, UserId};
    use cardvm::journal::{ExportLimits, Journal, parse_batch};

    let given = std::env::args_os().nth(1).map(std::path::PathBuf::from);
    let path = given.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("cardvm-example-{}.cvj", std::process::id()))
    });

    // The reader appends every receipt (committed, failed or unknown) as opaque bytes.
    let mut j = Journal::open(&path)?;
    for i in 0..5 {
        let receipt = format!("{{\"receipt\":{i},\"outcome\":\"committed\"}}");
        let seq = j.append(receipt.as_bytes())?; // durable when this returns
        println!("appended seq {seq}");
    }
    println!("pending: {}", j.pending_count());

    // Export a batch of at most 3 entries and frame it for the gateway.
    let batch = j.export(ExportLimits {
        max_entries: 3,
        ..ExportLimits::default()
    })?;
    let user = UserId::new(&b"reader-0731-0001"[..])?;
    let tag = Tag::new(b"trusted tag from the policy service".to_vec());
    let framed = frame::encode(&user, &tag, &batch.bytes)?;
    println!(
        "batch: {} entries, seq {:?}..={:?}, {} bytes, framed {} bytes",
        batch.count,
        batch.first_seq,
        batch.last_seq,
        batch.bytes.len(),
        framed.len()
    );

    // Gateway side: check the frame, then the batch (then, on the server, each receipt's
    // SM2 signature — the frame alone proves little; see `cardvm::frame`).
    let msg = frame::verify(&framed, |u| (u == &user).then(|| tag.clone()))?;
    let entries = parse_batch(&msg)?;
    println!(
        "gateway accepted seqs {:?}",
        entries.iter().map(|e| e.seq).collect::<Vec<_>>()
    );

    // The server confirmed: acknowledge and compact. Pending entries stay.
    if let Some(last) = batch.last_seq {
        j.ack(last)?;
    }
    let r = j.compact()?;
    println!(
        "compacted {} entries ({} bytes); pending now {:?}",
        r.dropped_entries,
        r.dropped_bytes,
        j.pending()
            .map(|e| e.map(|e| e.seq))
            .collect::<Result<Vec<_>, _>>()?
    );
    drop(j);

    if given.is_none() {
        for suffix in ["", ".ack", ".lock"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(())
}

#[cfg(not(feature = "std"))]
fn main() {}
