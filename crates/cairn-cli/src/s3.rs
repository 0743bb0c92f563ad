//! `cairn s3`: object-store access keys (create, list, revoke, grant per bucket) and buckets
//! (list, public-read), written straight into the metadata service objectd reads.

use anyhow::{Context, bail};
use clap::Subcommand;
use metadata_client::MetaClient;
use objectd::Permission;
use objectd::admin;

/// Object store commands.
#[derive(Subcommand)]
pub enum S3Cmd {
    /// Access keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Buckets.
    #[command(subcommand)]
    Bucket(BucketCmd),
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create a key; prints AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... (the only time
    /// the secret is shown).
    Create {
        /// A name for people (who or what uses the key).
        #[arg(long)]
        name: String,
        /// Owner of every bucket; may create buckets.
        #[arg(long)]
        admin: bool,
        /// May create buckets (and owns the buckets it creates).
        #[arg(long)]
        create_buckets: bool,
        /// BUCKET=read|write|owner (repeatable).
        #[arg(long = "grant", value_name = "BUCKET=PERM")]
        grants: Vec<String>,
    },
    /// Every key: id, name, rights (never the secret).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a key: requests signed with it fail at once (InvalidAccessKeyId).
    Revoke {
        /// The access key id.
        id: String,
    },
    /// Set a key's permission on a bucket (`none` removes it).
    Grant {
        /// The access key id.
        id: String,
        /// The bucket.
        bucket: String,
        /// read, write, owner or none.
        perm: String,
    },
}

#[derive(Subcommand)]
pub enum BucketCmd {
    /// Every bucket with its owner, versioning and public-read setting.
    List,
    /// Allow (on) or stop (off) anonymous GET, HEAD and listing of a bucket.
    PublicRead {
        /// The bucket.
        bucket: String,
        /// on or off.
        state: String,
    },
}

fn parse_perm(s: &str) -> anyhow::Result<Option<Permission>> {
    if s == "none" {
        return Ok(None);
    }
    s.parse::<Permission>().map(Some).map_err(anyhow::Error::msg)
}

pub async fn run(meta: &str, cmd: S3Cmd) -> anyhow::Result<()> {
    let eps: Vec<&str> = meta.split(',').collect();
    let meta = MetaClient::new(&eps).context("metadata service")?;
    match cmd {
        S3Cmd::Key(KeyCmd::Create { name, admin: is_admin, create_buckets, grants }) => {
            let mut gs = Vec::new();
            for g in &grants {
                let Some((b, p)) = g.split_once('=') else { bail!("--grant wants BUCKET=PERM, got {g:?}") };
                let Some(p) = parse_perm(p)? else { bail!("--grant {g}: use read, write or owner") };
                gs.push((b.to_string(), p));
            }
            let k = admin::create_key(&meta, &name, is_admin, create_buckets, &gs).await?;
            println!("AWS_ACCESS_KEY_ID={}", k.id);
            println!("AWS_SECRET_ACCESS_KEY={}", k.secret);
        }
        S3Cmd::Key(KeyCmd::List { json }) => {
            let keys = admin::list_keys(&meta).await?;
            if json {
                let v: Vec<_> = keys
                    .iter()
                    .map(|k| serde_json::json!({"id": k.id, "name": k.name, "admin": k.admin, "create_buckets": k.create_buckets, "grants": k.grants}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<22} {:<20} {:<8} GRANTS", "ID", "NAME", "RIGHTS");
                for k in keys {
                    let rights = if k.admin {
                        "admin"
                    } else if k.create_buckets {
                        "create"
                    } else {
                        "-"
                    };
                    let grants: Vec<String> = k.grants.iter().map(|(b, p)| format!("{b}={p}")).collect();
                    println!("{:<22} {:<20} {:<8} {}", k.id, k.name, rights, grants.join(","));
                }
            }
        }
        S3Cmd::Key(KeyCmd::Revoke { id }) => {
            if !admin::revoke_key(&meta, &id).await? {
                bail!("no access key {id}");
            }
            println!("revoked {id}");
        }
        S3Cmd::Key(KeyCmd::Grant { id, bucket, perm }) => {
            let p = parse_perm(&perm)?;
            if !admin::grant(&meta, &id, &bucket, p).await? {
                bail!("no access key {id}");
            }
            println!("{id}: {bucket}={perm}");
        }
        S3Cmd::Bucket(BucketCmd::List) => {
            println!("{:<40} {:<22} {:<10} PUBLIC-READ", "BUCKET", "OWNER", "VERSIONING");
            for b in admin::list_buckets(&meta).await? {
                println!(
                    "{:<40} {:<22} {:<10} {}",
                    b.name,
                    b.owner,
                    format!("{:?}", b.versioning),
                    if b.public_read { "on" } else { "off" }
                );
            }
        }
        S3Cmd::Bucket(BucketCmd::PublicRead { bucket, state }) => {
            let on = match state.as_str() {
                "on" => true,
                "off" => false,
                other => bail!("public-read wants on or off, got {other:?}"),
            };
            if !admin::set_public_read(&meta, &bucket, on).await? {
                bail!("no bucket {bucket}");
            }
            println!("{bucket}: public-read {state}");
        }
    }
    Ok(())
}
