//! Output assembly throughput: Cove's part-by-part copy (`copy_parts` into a multipart upload, as a
//! job's finalize runs it) against the plain way to concatenate the same files on the same disk
//! (`std::io::copy` of each part into one file). Rounds alternate the two to cancel noise.
//!
//! `cargo run --release -p cove-server --example output_assembly -- DIR [PARTS] [PART_MB]`
//! prints one JSON line: Cove's median wall time, rows, MB/s, and the ratio to the plain copy.

use object_store::local::LocalFileSystem;
use object_store::{ObjectStore, WriteMultipart};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

const ROUNDS: usize = 3;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: output_assembly DIR [PARTS] [PART_MB]"));
    let parts: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let part_mb: usize = args.next().map_or(Ok(1), |a| a.parse())?;
    let (rows, bytes) = write_parts(&dir.join("parts"), parts, part_mb)?;
    let source = LocalFileSystem::new_with_prefix(&dir)?;
    let out = LocalFileSystem::new_with_prefix(&dir)?;
    let list: Vec<(u64, String)> = (0..parts).map(|i| (i as u64, format!("parts/{i:06}.part"))).collect();
    let (mut cove, mut plain) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let run_cove = || async {
            let t = Instant::now();
            let path = object_store::path::Path::from("predictions.csv");
            let mut w = WriteMultipart::new(out.put_multipart(&path).await?);
            cove_server::copy_parts(&source, list.clone(), &mut w).await?;
            w.finish().await?;
            anyhow::Ok(t.elapsed().as_secs_f64())
        };
        let run_plain = || -> anyhow::Result<f64> {
            let t = Instant::now();
            let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("plain.csv"))?);
            for (_, p) in &list {
                std::io::copy(&mut std::fs::File::open(dir.join(p))?, &mut f)?;
            }
            f.into_inner()?.sync_data()?;
            Ok(t.elapsed().as_secs_f64())
        };
        // Cove's publish renames a staging file; its data reaches the disk with the rename, so both
        // sides are timed to the same point: data written and synced.
        if round % 2 == 0 {
            cove.push(run_cove().await? + sync(&dir.join("predictions.csv"))?);
            plain.push(run_plain()?);
        } else {
            plain.push(run_plain()?);
            cove.push(run_cove().await? + sync(&dir.join("predictions.csv"))?);
        }
        anyhow::ensure!(std::fs::metadata(dir.join("predictions.csv"))?.len() == bytes, "assembled size differs");
    }
    let (c, p) = (median(&mut cove), median(&mut plain));
    let mb = bytes as f64 / 1e6;
    println!(
        "{}",
        serde_json::json!({
            "wall_s": c, "rows": rows, "mb": mb, "mb_per_s": mb / c,
            "plain_copy_s": p, "plain_copy_mb_per_s": mb / p, "ratio_to_plain_copy": c / p,
        })
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn sync(path: &Path) -> anyhow::Result<f64> {
    let t = Instant::now();
    std::fs::File::open(path)?.sync_data()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Writes `parts` files of about `part_mb` MB of prediction-like lines; returns (rows, bytes).
fn write_parts(dir: &Path, parts: usize, part_mb: usize) -> anyhow::Result<(u64, u64)> {
    std::fs::create_dir_all(dir)?;
    let (mut rows, mut bytes) = (0u64, 0u64);
    for i in 0..parts {
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{i:06}.part")))?);
        let mut written = 0;
        let mut r = 0;
        while written < part_mb << 20 {
            let line = format!(
                "{r},{},0.{:07},0.{:07},0.{:07},part-{i:06}.csv\n",
                r % 3,
                r * 7 % 9999991,
                r * 3 % 9999991,
                r % 9999991
            );
            f.write_all(line.as_bytes())?;
            written += line.len();
            r += 1;
        }
        rows += r as u64;
        bytes += written as u64;
    }
    Ok((rows, bytes))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
