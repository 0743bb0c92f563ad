//! `cairn meta ...`: metadata keys (get, put, delete, scan) and the group (status, add-voter,
//! remove-voter).

use clap::Subcommand;
use metadata_client::{MetaClient, StatusResponse};

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
}

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
    }
    Ok(())
}
