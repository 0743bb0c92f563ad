//! `cairn meta ...`: metadata keys (get, put, delete, scan), the group (status, add-voter,
//! remove-voter), and backup and restore of the whole keyspace.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use metadata_client::{MetaClient, MetaClientError, StatusResponse, Txn};

use crate::backup_file::{BackupWriter, Record, Records, verify};

/// Metadata commands. Keys and values are UTF-8 text on the command line.
#[derive(Subcommand)]
pub enum MetaCmd {
    /// Show every node's view: role, term, log and applied index, membership.
    Status,
    /// Add a voter: it joins as learner, catches up, then votes.
    AddVoter {
        /// Its Raft id.
        id: u64,
        /// Its client API address (host:port).
        api_addr: String,
        /// Its Raft peer address (host:port).
        peer_addr: String,
    },
    /// Remove a voter.
    RemoveVoter {
        /// Its Raft id.
        id: u64,
    },
    /// Print a key's value.
    Get {
        /// The key.
        key: String,
    },
    /// Set a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
    },
    /// List keys with a prefix.
    Scan {
        /// The prefix (empty: everything).
        #[arg(default_value = "")]
        prefix: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Copy every key, value and revision to a file (a point-in-time copy from the leader).
    ///
    /// The copy is read from one view of the keyspace on the leader: every write acknowledged
    /// before the command started is in it. The file (format version 1) ends with a blake3
    /// checksum; it is written to a temporary file, synced and renamed, so FILE is either the
    /// previous file or the whole new backup.
    Backup {
        /// Where to write the backup.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Write every key of a backup into a fresh metadata group.
    ///
    /// The whole file is checked first (format version, checksum, records); nothing is written
    /// unless it is intact. A group that already holds any key is refused: restore into a new
    /// group before anything else uses it. Keys are written in transactions, so each key gets a
    /// new create and mod revision in this group (revisions start over); values are identical.
    Restore {
        /// A file written by `cairn meta backup`.
        file: PathBuf,
    },
}

/// Most keys in one restore transaction (the server's limit on ops per transaction).
const RESTORE_TXN_KEYS: usize = 256;
/// A restore transaction stops growing past this many key and value bytes (a request must stay
/// under the 4 MiB the server decodes).
const RESTORE_TXN_BYTES: usize = 2 << 20;

fn print_status(addr: &str, s: &StatusResponse) {
    println!(
        "{addr}  id {}  {}  term {}  leader {}  log {}  applied {}  snapshot {}  revision {}",
        s.id, s.state, s.term, s.leader_id, s.last_log_index, s.last_applied, s.snapshot_index, s.revision
    );
}

pub async fn run(endpoints: &str, cmd: MetaCmd) -> anyhow::Result<()> {
    let list: Vec<&str> = endpoints.split(',').collect();
    let client = MetaClient::new(&list)?;
    match cmd {
        MetaCmd::Status => {
            let leader = client.status().await?;
            println!("voters:");
            for m in &leader.voters {
                println!("  {}  api {}  peer {}", m.id, m.api_addr, m.peer_addr);
            }
            for m in &leader.learners {
                println!("learner {}  api {}  peer {}", m.id, m.api_addr, m.peer_addr);
            }
            for m in leader.voters.iter().chain(&leader.learners) {
                match MetaClient::status_of(&m.api_addr).await {
                    Ok(s) => print_status(&m.api_addr, &s),
                    Err(e) => println!("{}  unreachable: {e}", m.api_addr),
                }
            }
        }
        MetaCmd::AddVoter { id, api_addr, peer_addr } => {
            let voters = client.add_voter(id, &api_addr, &peer_addr).await?;
            println!("voters now: {}", voters.iter().map(|m| m.id.to_string()).collect::<Vec<_>>().join(", "));
        }
        MetaCmd::RemoveVoter { id } => {
            let voters = client.remove_voter(id).await?;
            println!("voters now: {}", voters.iter().map(|m| m.id.to_string()).collect::<Vec<_>>().join(", "));
        }
        MetaCmd::Get { key } => match client.get(key.as_bytes()).await? {
            Some(kv) => println!("{}", String::from_utf8_lossy(&kv.value)),
            None => anyhow::bail!("key {key:?} not found"),
        },
        MetaCmd::Put { key, value } => {
            let rev = client.put(key.as_bytes(), value.as_bytes()).await?;
            println!("revision {rev}");
        }
        MetaCmd::Delete { key } => {
            if !client.delete(key.as_bytes()).await? {
                anyhow::bail!("key {key:?} not found");
            }
        }
        MetaCmd::Scan { prefix, limit } => {
            let mut end = prefix.clone().into_bytes();
            let end = match end.pop() {
                Some(last) if last < 0xff => {
                    end.push(last + 1);
                    end
                }
                _ => Vec::new(),
            };
            let page = client.range(prefix.as_bytes(), &end, limit).await?;
            for kv in page.kvs {
                println!("{}={}", String::from_utf8_lossy(&kv.key), String::from_utf8_lossy(&kv.value));
            }
        }
        MetaCmd::Backup { output } => backup(&client, &output).await?,
        MetaCmd::Restore { file } => restore(&client, &file).await?,
    }
    Ok(())
}

/// Removes a temporary file unless it was renamed into place.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn backup(client: &MetaClient, output: &Path) -> anyhow::Result<()> {
    let name = output.file_name().with_context(|| format!("{} is not a file name", output.display()))?;
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut guard = TempFile(Some(tmp.clone()));
    let mut copy = client.backup().await.context("backup")?;
    let io_err = |e| anyhow::Error::new(e).context(format!("cannot write {}", tmp.display()));
    let mut w = BackupWriter::new(f, copy.revision, copy.applied_index).map_err(io_err)?;
    while let Some(kvs) = copy.next_batch().await.context("backup")? {
        for kv in &kvs {
            w.push(&kv.key, &kv.value, kv.create_revision, kv.mod_revision)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
        }
    }
    let (f, header, bytes) = w.finish().map_err(io_err)?;
    f.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, output).with_context(|| format!("cannot rename to {}", output.display()))?;
    guard.0 = None;
    File::open(&dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))?;
    println!("backed up {} keys, {bytes} bytes, revision {} to {}", header.keys, header.revision, output.display());
    Ok(())
}

async fn restore(client: &MetaClient, file: &Path) -> anyhow::Result<()> {
    let open = || -> anyhow::Result<(File, u64)> {
        let f = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        let len = f.metadata().with_context(|| format!("cannot read {}", file.display()))?.len();
        Ok((f, len))
    };
    // Everything is checked before anything is written.
    let (f, len) = open()?;
    let header = verify(f, len).with_context(|| format!("{} is not a usable backup", file.display()))?;
    let first = client.range(b"", b"", 1).await.context("cannot read the target group")?;
    if let Some(kv) = first.kvs.first() {
        anyhow::bail!(
            "the metadata group already holds keys (first: \"{}\"): restore only into a fresh, empty group",
            kv.key.escape_ascii()
        );
    }
    let (f, len) = open()?;
    let (again, records) = Records::open(f, len).with_context(|| format!("cannot read {}", file.display()))?;
    anyhow::ensure!(again == header, "{} changed while it was being restored", file.display());
    let mut batch: Vec<Record> = Vec::new();
    let (mut bytes, mut restored, mut revision) = (0usize, 0u64, 0u64);
    for rec in records {
        let rec = rec.with_context(|| format!("cannot read {}", file.display()))?;
        let size = 2 * rec.key.len() + rec.value.len();
        if !batch.is_empty() && (batch.len() == RESTORE_TXN_KEYS || bytes + size > RESTORE_TXN_BYTES) {
            revision = write_batch(client, &batch, restored).await?;
            restored += batch.len() as u64;
            batch.clear();
            bytes = 0;
        }
        bytes += size;
        batch.push(rec);
    }
    if !batch.is_empty() {
        revision = write_batch(client, &batch, restored).await?;
        restored += batch.len() as u64;
    }
    println!(
        "restored {restored} keys from {} (backup revision {}); the group is now at revision {revision}",
        file.display(),
        header.revision
    );
    Ok(())
}

/// Writes `batch` in one transaction that also requires each key to be absent, so nothing
/// written by someone else is overwritten; returns the group's revision after it.
async fn write_batch(client: &MetaClient, batch: &[Record], restored: u64) -> anyhow::Result<u64> {
    let txn = batch.iter().fold(Txn::new(), |t, r| t.absent(&r.key).put(&r.key, &r.value));
    let interleaved = |key: &[u8]| {
        anyhow::anyhow!(
            "key \"{}\" appeared in the group during the restore (something else is writing to it); {restored} keys were restored before it",
            key.escape_ascii()
        )
    };
    for _ in 0..3 {
        match client.txn(txn.clone()).await {
            Ok(o) if o.succeeded => return Ok(o.revision),
            Ok(o) => {
                let i = o.failed_condition.unwrap_or(0).min(batch.len() - 1);
                return Err(interleaved(&batch[i].key));
            }
            Err(MetaClientError::Indeterminate(_)) => {
                // Sent, outcome unknown: it was applied exactly when every key holds our value
                // now; when none exists it was not, and sending it again is safe.
                let mut present = 0;
                for r in batch {
                    match client.get(&r.key).await.context("cannot read back a restore transaction")? {
                        Some(kv) if kv.value == r.value => present += 1,
                        Some(_) => return Err(interleaved(&r.key)),
                        None => {}
                    }
                }
                if present == batch.len() {
                    return Ok(client.status().await.context("cannot read the group's revision")?.revision);
                }
                if present != 0 {
                    anyhow::bail!(
                        "a restore transaction was applied only in part; {restored} keys were restored before it"
                    );
                }
            }
            Err(e) => return Err(anyhow::Error::new(e).context("restore transaction")),
        }
    }
    anyhow::bail!(
        "the metadata group did not confirm a restore transaction after 3 attempts; {restored} keys were restored"
    )
}
