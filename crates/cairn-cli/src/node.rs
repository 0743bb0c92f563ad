//! `cairn node stats|scrub|gc`: look at and maintain one storage node (`--node`);
//! `cairn node drain|undrain|remove`: change a node's membership in the pool (`--meta`).

use ::cluster::AdminState;
use clap::Subcommand;
use node_client::NodeClient;

use crate::cluster::set_admin;
use crate::progress::items_bar;

/// Node commands.
#[derive(Subcommand)]
pub enum NodeCmd {
    /// Capacity, dedup ratio and counters.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Verify every chunk on the node; exits non-zero when any is damaged.
    Scrub,
    /// Run a garbage-collection pass now.
    Gc,
    /// Stop placing new chunks on node ID and copy its chunks to the other nodes (uses `--meta`).
    Drain {
        /// The node's id in the node map.
        id: String,
    },
    /// Make node ID a full member again after `drain` or `remove` (uses `--meta`).
    Undrain {
        /// The node's id in the node map.
        id: String,
    },
    /// Take node ID out of the pool: its chunks are re-replicated onto the other nodes (uses `--meta`).
    Remove {
        /// The node's id in the node map.
        id: String,
    },
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

pub async fn run(node: &str, meta: &str, cmd: NodeCmd) -> anyhow::Result<()> {
    let client = match cmd {
        NodeCmd::Drain { id } => return set_admin(meta, &id, AdminState::Draining).await,
        NodeCmd::Undrain { id } => return set_admin(meta, &id, AdminState::In).await,
        NodeCmd::Remove { id } => return set_admin(meta, &id, AdminState::Out).await,
        NodeCmd::Stats { .. } | NodeCmd::Scrub | NodeCmd::Gc => NodeClient::connect(node).await?,
    };
    match cmd {
        NodeCmd::Stats { json } => {
            let s = client.stats().await?;
            if json {
                let v = serde_json::json!({
                    "total_bytes": s.total_bytes, "free_bytes": s.free_bytes, "used_bytes": s.used_bytes,
                    "dead_bytes": s.dead_bytes, "logical_bytes": s.logical_bytes, "physical_bytes": s.physical_bytes,
                    "dedup_ratio": s.dedup_ratio, "chunks": s.chunks, "segments": s.segments, "puts": s.puts,
                    "dedup_hits": s.dedup_hits, "gets": s.gets, "corruptions": s.corruptions,
                    "gc_runs": s.gc_runs, "gc_reclaimed_bytes": s.gc_reclaimed_bytes,
                    "max_chunk_size": s.max_chunk_size, "node_version": s.node_version,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("node            {}", client.endpoint());
                println!("version         {}", s.node_version);
                println!("capacity        {} total, {} free", gib(s.total_bytes), gib(s.free_bytes));
                println!(
                    "segments        {} files, {} used, {} reclaimable",
                    s.segments,
                    gib(s.used_bytes),
                    gib(s.dead_bytes)
                );
                println!("chunks          {}", s.chunks);
                println!("logical         {}", gib(s.logical_bytes));
                println!("physical        {}", gib(s.physical_bytes));
                println!("dedup ratio     {:.2}", s.dedup_ratio);
                println!("puts / gets     {} / {} ({} dedup hits)", s.puts, s.gets, s.dedup_hits);
                println!("corruptions     {}", s.corruptions);
                println!("gc              {} runs, {} reclaimed", s.gc_runs, gib(s.gc_reclaimed_bytes));
            }
        }
        NodeCmd::Scrub => {
            let mut events = client.scrub().await?;
            let bar = items_bar(0, "scrub");
            while let Some(ev) = events.next().await? {
                bar.set_length(ev.total);
                bar.set_position(ev.checked);
                if ev.done {
                    bar.finish_and_clear();
                    println!("checked {} chunks ({} bytes), {} damaged", ev.checked, ev.bytes, ev.damaged_count);
                    for h in &ev.damaged {
                        let h = chunk_engine::ChunkHash::from_slice(h)?;
                        println!("damaged {h}");
                    }
                    if ev.damaged_count > 0 {
                        anyhow::bail!("{} damaged chunk(s) found and quarantined", ev.damaged_count);
                    }
                }
            }
        }
        NodeCmd::Gc => {
            let r = client.gc().await?;
            println!(
                "examined {} segments, removed {}, reclaimed {} bytes, moved {} chunks ({} bytes)",
                r.segments_examined, r.segments_removed, r.bytes_reclaimed, r.chunks_moved, r.bytes_moved
            );
        }
        NodeCmd::Drain { .. } | NodeCmd::Undrain { .. } | NodeCmd::Remove { .. } => unreachable!("handled above"),
    }
    Ok(())
}
