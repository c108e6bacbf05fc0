//! `medgen store`: `verify` re-hashes a run store's blobs against their names; `gc` (in
//! `store_gc.rs`) removes what no graph uses any more.

use super::failures::StoreArgs;
use clap::{Args, Subcommand};
use medgen::store::{BlobFile, CORRUPT_DIR};

#[derive(Args, Debug)]
pub struct StoreCmdArgs {
    #[command(subcommand)]
    pub command: StoreCommand,
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Re-hash every blob (clip MP4s, latents, checkpoints, samples) and report those whose bytes no
    /// longer match their name; `--repair` sets them aside so the next run recomputes them.
    #[command(after_help = VERIFY_AFTER)]
    Verify(VerifyArgs),
    /// Drop memo entries that the given graphs no longer read (old parameters, removed nodes, inputs
    /// gone from their folders) and delete the blobs nothing refers to.
    #[command(after_help = super::store_gc::GC_AFTER)]
    Gc(super::store_gc::GcArgs),
}

const VERIFY_AFTER: &str =
    "A blob is named by the blake3 hash of its bytes, and memoised results refer to blobs by name, \
so a blob changed on disk (a dataset clip edited in place through its hard link, a disk or copy error) \
would be served as if it were the original. This reads every blob once (a progress bar shows the bytes).

With --repair, each damaged blob is moved to corrupt/ in the store (kept for inspection). A memoised \
result whose blob is gone is recomputed by the next `medgen run`, which writes the blob again.

Exit codes: 0 every blob is intact (or was set aside with --repair), 1 damaged blobs were found.

Examples:
  medgen store verify --store runs/demo
  medgen store verify graphs/medgen.toml --repair";

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Move damaged blobs to corrupt/ so the next run recomputes them (not while a run uses the store).
    #[arg(long)]
    pub repair: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn store(a: &StoreCmdArgs) -> anyhow::Result<i32> {
    match &a.command {
        StoreCommand::Verify(v) => verify(v),
        StoreCommand::Gc(g) => super::store_gc::gc(g),
    }
}

fn verify(a: &VerifyArgs) -> anyhow::Result<i32> {
    let store = match a.store.open()? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    // Setting blobs aside under a running graph could pull one from under a node that just read its memo.
    let _lock = if a.repair {
        Some(store.lock_run(0, "medgen store verify --repair").map_err(|e| anyhow::anyhow!("{e}"))?)
    } else {
        None
    };
    let (blobs, strays) = store.blob_files()?;
    let total: u64 = blobs.iter().map(|b| b.len).sum();
    let bar = if a.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(total) };
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("verifying {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    let mut damaged: Vec<(&BlobFile, String)> = Vec::new();
    for b in &blobs {
        match store.blob_rehash(b, &mut |n| bar.inc(n)) {
            Ok(None) => {}
            Ok(Some(actual)) => damaged.push((b, format!("its bytes hash to {actual}"))),
            Err(e) => damaged.push((b, format!("unreadable: {e}"))),
        }
    }
    bar.finish_and_clear();
    println!(
        "{} blobs, {} checked in {}",
        blobs.len(),
        indicatif::HumanBytes(total),
        store.root().join("blobs").display()
    );
    for s in &strays {
        println!("not a blob (left as is): {}", s.display());
    }
    if damaged.is_empty() {
        println!("every blob matches its name");
        return Ok(0);
    }
    for (b, why) in &damaged {
        println!("DAMAGED {} ({}): {why}", b.key, b.path.display());
    }
    if !a.repair {
        println!(
            "{} damaged blob(s); `medgen store verify --repair` moves them to {}/ so the next run recomputes them",
            damaged.len(),
            store.root().join(CORRUPT_DIR).display()
        );
        return Ok(1);
    }
    for (b, _) in &damaged {
        let to = store.blob_set_aside(b)?;
        println!("set aside {} → {}", b.key, to.display());
    }
    println!("{} damaged blob(s) set aside; the next `medgen run` recomputes what needs them", damaged.len());
    Ok(0)
}
