//! Only members get in: with certificates configured, the metadata service and storage nodes
//! serve only callers presenting a certificate from the cluster CA; members (storage node →
//! metadata service) still talk to each other.

use std::time::Duration;

use bytes::Bytes;
use integration_tests::meta::{MetaAddrs, MetaProc};
use integration_tests::{NodeProc, random_bytes};
use metadata_client::{MetaClient, RetryPolicy};
use mtls::{LocalCa, TlsFiles};
use node_client::NodeClient;
use tonic::transport::ClientTlsConfig;

fn flags(prefix: &str, f: &TlsFiles) -> Vec<String> {
    let p = |o: &Option<std::path::PathBuf>| o.as_ref().unwrap().display().to_string();
    vec![
        format!("--{prefix}tls-ca"),
        p(&f.ca),
        format!("--{prefix}tls-cert"),
        p(&f.cert),
        format!("--{prefix}tls-key"),
        p(&f.key),
    ]
}

fn quick() -> RetryPolicy {
    RetryPolicy { deadline: Duration::from_secs(1), ..RetryPolicy::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_certificates_from_the_cluster_ca_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::open_or_create(&dir.path().join("ca")).unwrap();
    let (server, client) = (ca.member("server").unwrap(), ca.member("client").unwrap());
    let other = LocalCa::open_or_create(&dir.path().join("other-ca")).unwrap().member("intruder").unwrap();

    let addrs = MetaAddrs::loopback(1);
    let mut args = vec!["--initial-members".to_string(), addrs.member()];
    args.extend(flags("", &server));
    let mut meta = MetaProc::spawn(addrs.clone(), &dir.path().join("m1"), &args, None);
    meta.wait_healthy(Duration::from_secs(60));
    let mut node_args = vec!["--meta".to_string(), addrs.api.clone(), "--node-id".into(), "n1".into()];
    node_args.extend(flags("", &server));
    let node_args: Vec<&str> = node_args.iter().map(String::as_str).collect();
    let node = NodeProc::start(&dir.path().join("n1"), &node_args);
    let node_addr = node.grpc.trim_start_matches("http://").to_string();

    // A member: everything works, and the storage node (a member too) joined the node map.
    let good = client.client_config().unwrap();
    let m = MetaClient::with_tls(&[&addrs.api], RetryPolicy::default(), good.clone()).unwrap();
    m.put(b"k", b"v").await.unwrap();
    assert_eq!(m.get(b"k").await.unwrap().unwrap().value, b"v");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while m.get(b"cluster/nodes/n1").await.unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "storage node never registered over mTLS:\n{}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = NodeClient::connect_with(&node_addr, good).await.unwrap();
    let data = Bytes::from(random_bytes(100_000));
    let put = n.put(None, data.clone()).await.unwrap();
    let hash = chunk_engine::ChunkHash::of(&data);
    assert_eq!(put.hash, hash.0.to_vec());
    assert_eq!(n.get(&hash).await.unwrap(), data);

    // Not members: plaintext, TLS without a client certificate, a certificate from another CA.
    let ca_only = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(client.ca.as_ref().unwrap()).unwrap()))
        .domain_name(mtls::SERVER_NAME);
    let strangers: Vec<(&str, Option<ClientTlsConfig>)> = vec![
        ("plaintext", None),
        ("no client certificate", Some(ca_only)),
        ("certificate from another CA", other.client_config().unwrap()),
    ];
    for (who, tls) in strangers {
        let m = MetaClient::with_tls(&[&addrs.api], quick(), tls.clone()).unwrap();
        assert!(m.get(b"k").await.is_err(), "metadata service served a caller with {who}");
        assert!(m.put(b"k", b"stolen").await.is_err(), "metadata service took a write from a caller with {who}");
        let refused = match NodeClient::connect_with(&node_addr, tls).await {
            Err(_) => true,
            Ok(c) => c.get(&hash).await.is_err() && c.put(None, Bytes::from_static(b"x")).await.is_err(),
        };
        assert!(refused, "storage node served a caller with {who}");
    }
    assert_eq!(m.get(b"k").await.unwrap().unwrap().value, b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_replicate_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::open_or_create(&dir.path().join("ca")).unwrap();
    let (server, client) = (ca.member("server").unwrap(), ca.member("client").unwrap());
    let extra = flags("", &server);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut voters = integration_tests::meta::meta_cluster(3, dir.path(), &extra);
    let apis: Vec<String> = voters.iter().map(|v| v.addrs.api.clone()).collect();
    let m = MetaClient::with_tls(&apis, RetryPolicy::default(), client.client_config().unwrap()).unwrap();
    for i in 0..20u32 {
        m.put(format!("k{i}").as_bytes(), b"v").await.unwrap();
    }
    // Kill the leader: the others elect a new one over mutual TLS and keep serving.
    let leader = m.status().await.unwrap().leader_id;
    let idx = voters.iter().position(|v| v.addrs.id == leader).unwrap();
    voters[idx].kill9();
    m.put(b"after", b"failover").await.unwrap();
    assert_eq!(m.get(b"k7").await.unwrap().unwrap().value, b"v");
    assert_eq!(m.get(b"after").await.unwrap().unwrap().value, b"failover");
}

/// Members on one machine may meet on unix sockets instead (what the all-in-one does): the
/// sockets are mode 0600 and plaintext, while the TCP listeners still demand certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_one_machine_meet_on_unix_sockets() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::open_or_create(&dir.path().join("ca")).unwrap();
    let server = ca.member("server").unwrap();
    let (meta_sock, node_sock) = (dir.path().join("meta.sock"), dir.path().join("node.sock"));
    let (meta_url, node_url) = (format!("unix://{}", meta_sock.display()), format!("unix://{}", node_sock.display()));

    let addrs = MetaAddrs::loopback(1);
    let mut args =
        vec!["--initial-members".to_string(), addrs.member(), "--unix-socket".into(), meta_sock.display().to_string()];
    args.extend(flags("", &server));
    let mut meta = MetaProc::spawn(addrs.clone(), &dir.path().join("m1"), &args, None);
    meta.wait_healthy(Duration::from_secs(60));
    let mut node_args = vec![
        "--meta".to_string(),
        meta_url.clone(),
        "--node-id".into(),
        "n1".into(),
        "--unix-socket".into(),
        node_sock.display().to_string(),
        "--advertise".into(),
        node_url.clone(),
    ];
    node_args.extend(flags("", &server));
    let node_args: Vec<&str> = node_args.iter().map(String::as_str).collect();
    let node = NodeProc::start(&dir.path().join("n1"), &node_args);

    for sock in [&meta_sock, &node_sock] {
        let m = std::fs::metadata(sock).unwrap();
        assert!(m.file_type().is_socket(), "{} is not a socket", sock.display());
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{} must be reachable by its owner only", sock.display());
    }
    // No certificate needed on the sockets; the node found the metadata service through its
    // socket and advertises its own.
    let m = MetaClient::with_tls(&[&meta_url], RetryPolicy::default(), None).unwrap();
    m.put(b"k", b"v").await.unwrap();
    assert_eq!(m.get(b"k").await.unwrap().unwrap().value, b"v");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let rec = loop {
        if let Some(kv) = m.get(b"cluster/nodes/n1").await.unwrap() {
            break kv.value;
        }
        assert!(tokio::time::Instant::now() < deadline, "storage node never registered:\n{}", node.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(String::from_utf8_lossy(&rec).contains(&node_url), "node map record lacks the socket address");
    let n = NodeClient::connect(&node_url).await.unwrap();
    let data = Bytes::from(random_bytes(3 << 20));
    let put = n.put(None, data.clone()).await.unwrap();
    let hash = chunk_engine::ChunkHash::of(&data);
    assert_eq!(put.hash, hash.0.to_vec());
    assert_eq!(n.get(&hash).await.unwrap(), data);

    // The TCP listeners still refuse a caller without a certificate.
    let plain = MetaClient::with_tls(&[&addrs.api], quick(), None).unwrap();
    assert!(plain.get(b"k").await.is_err(), "metadata TCP listener served a plaintext caller");
    let tcp = node.grpc.trim_start_matches("http://").to_string();
    let refused = match NodeClient::connect_with(&tcp, None).await {
        Err(_) => true,
        Ok(c) => c.get(&hash).await.is_err(),
    };
    assert!(refused, "storage node TCP listener served a plaintext caller");
}
