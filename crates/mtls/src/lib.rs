//! Mutual TLS for every gRPC link between Cairn components: the files a member is configured
//! with (cluster CA, its certificate and key), the tonic server config (client certificates
//! required, signed by the cluster CA) and client config, and generating a CA and member
//! certificates (what the local all-in-one does at first start).
//!
//! Members on one machine may also meet on a unix socket (`unix:///path` addresses, see
//! [`connect`]): plaintext, guarded by the socket file's mode.
//!
//! Every member certificate carries the DNS name [`SERVER_NAME`]; clients verify servers against
//! that name and the cluster CA, so addresses (IPs, pod names) need not be in certificates.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The DNS name in every member certificate, and the name clients verify servers against.
pub const SERVER_NAME: &str = "cairn.internal";

/// What can go wrong setting up TLS (each a readable line).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The settings are incomplete or a file is unreadable.
    #[error("TLS: {0}")]
    Config(String),
    /// Generating certificates failed.
    #[error("TLS: cannot generate certificates: {0}")]
    Generate(String),
}

/// The three PEM files a member needs; all set (TLS on) or none (plaintext).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate.
    pub ca: Option<PathBuf>,
    /// This member's certificate, signed by the CA.
    pub cert: Option<PathBuf>,
    /// This member's private key.
    pub key: Option<PathBuf>,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Config(format!("cannot read {what} {}: {e}", path.display())))
}

impl TlsFiles {
    /// All three files, from paths.
    pub fn new(ca: impl Into<PathBuf>, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        TlsFiles { ca: Some(ca.into()), cert: Some(cert.into()), key: Some(key.into()) }
    }

    /// True when TLS is configured.
    pub fn enabled(&self) -> bool {
        self.ca.is_some()
    }

    /// Checks that either all three files are given and readable, or none.
    pub fn validate(&self) -> Result<(), TlsError> {
        match (&self.ca, &self.cert, &self.key) {
            (None, None, None) => Ok(()),
            (Some(ca), Some(cert), Some(key)) => {
                read(ca, "CA certificate")?;
                read(cert, "certificate")?;
                read(key, "private key")?;
                Ok(())
            }
            _ => Err(TlsError::Config("tls_ca, tls_cert and tls_key must be given together".into())),
        }
    }

    fn load(&self) -> Result<Option<(Certificate, Identity)>, TlsError> {
        self.validate()?;
        let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.key) else { return Ok(None) };
        let ca = Certificate::from_pem(read(ca, "CA certificate")?);
        let id = Identity::from_pem(read(cert, "certificate")?, read(key, "private key")?);
        Ok(Some((ca, id)))
    }

    /// The server side: present our certificate, require a client certificate from the CA.
    pub fn server_config(&self) -> Result<Option<ServerTlsConfig>, TlsError> {
        Ok(self.load()?.map(|(ca, id)| ServerTlsConfig::new().identity(id).client_ca_root(ca)))
    }

    /// The client side: verify servers against the CA and [`SERVER_NAME`], present our
    /// certificate.
    pub fn client_config(&self) -> Result<Option<ClientTlsConfig>, TlsError> {
        Ok(self.load()?.map(|(ca, id)| ClientTlsConfig::new().ca_certificate(ca).identity(id).domain_name(SERVER_NAME)))
    }
}

static PROCESS_CLIENT: OnceLock<Option<ClientTlsConfig>> = OnceLock::new();

/// Sets the identity this process presents on outgoing gRPC connections (a daemon's own
/// member certificate, or the CLI's). Call once at start; later calls are ignored and return
/// false.
pub fn install_client_identity(files: &TlsFiles) -> Result<bool, TlsError> {
    let cfg = files.client_config()?;
    Ok(PROCESS_CLIENT.set(cfg).is_ok())
}

/// The identity installed with [`install_client_identity`], if any.
pub fn process_client_config() -> Option<ClientTlsConfig> {
    PROCESS_CLIENT.get().cloned().flatten()
}

/// A tonic endpoint for `addr` (`host:port`, with or without a scheme): `https` with `tls`,
/// `http` without.
pub fn endpoint(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, String> {
    let hostport = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ep = Endpoint::from_shared(format!("{scheme}://{hostport}")).map_err(|e| format!("bad address {addr}: {e}"))?;
    match tls {
        Some(t) => ep.tls_config(t.clone()).map_err(|e| format!("TLS for {addr}: {e}")),
        None => Ok(ep),
    }
}

/// The socket path of an address `unix:///path`: a member's unix socket on this machine.
pub fn unix_path(addr: &str) -> Option<PathBuf> {
    addr.strip_prefix("unix://").filter(|p| p.starts_with('/')).map(PathBuf::from)
}

/// An endpoint for `addr` and the unix socket it names, if any. A unix socket is plaintext
/// whatever `tls` says: the socket file's mode decides who may connect, and the bytes never
/// leave this machine. Anything else is `host:port` over TCP (TCP_NODELAY), with TLS when `tls`.
fn endpoint_or_socket(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<(Endpoint, Option<PathBuf>), String> {
    match unix_path(addr) {
        // The URI only names the HTTP/2 authority; the connector opens the socket.
        Some(path) => Ok((Endpoint::from_static("http://localhost"), Some(path))),
        None => Ok((endpoint(addr, tls)?.tcp_nodelay(true), None)),
    }
}

fn unix_connector(
    path: PathBuf,
) -> impl tower::Service<
    tonic::codegen::http::Uri,
    Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let path = path.clone();
        async move { Ok(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
    })
}

/// Connects to `addr` (`host:port`, or `unix:///path`; see [`unix_path`]) with `tune` applied
/// to the endpoint (windows, timeouts). The error is one line with every cause.
pub async fn connect(
    addr: &str,
    tls: Option<&ClientTlsConfig>,
    tune: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, String> {
    let (ep, socket) = endpoint_or_socket(addr, tls)?;
    let ep = tune(ep);
    let res = match socket {
        Some(path) => ep.connect_with_connector(unix_connector(path)).await,
        None => ep.connect().await,
    };
    res.map_err(|e| {
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            reason = format!("{reason}: {s}");
            src = s.source();
        }
        reason
    })
}

/// As [`connect`], connecting on first use.
pub fn connect_lazy(
    addr: &str,
    tls: Option<&ClientTlsConfig>,
    tune: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, String> {
    let (ep, socket) = endpoint_or_socket(addr, tls)?;
    let ep = tune(ep);
    Ok(match socket {
        Some(path) => ep.connect_with_connector_lazy(unix_connector(path)),
        None => ep.connect_lazy(),
    })
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| TlsError::Generate(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Cairn cluster CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_after = rcgen::date_time_ymd(2125, 1, 1);
    Ok(p)
}

fn write_private(path: &Path, text: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map(|_| f))
        .map_err(|e| TlsError::Generate(format!("write {}: {e}", tmp.display())))?;
    f.flush().ok();
    std::fs::rename(&tmp, path).map_err(|e| TlsError::Generate(format!("rename {}: {e}", path.display())))
}

/// A cluster CA kept in a directory (`ca.pem`, `ca.key`), created on first use.
pub struct LocalCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl LocalCa {
    /// Opens the CA in `dir`, creating it (and `dir`) if absent.
    pub fn open_or_create(dir: &Path) -> Result<LocalCa, TlsError> {
        std::fs::create_dir_all(dir).map_err(|e| TlsError::Generate(format!("create {}: {e}", dir.display())))?;
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        let params = ca_params()?;
        let key = if key_path.exists() && cert_path.exists() {
            let pem = String::from_utf8_lossy(&read(&key_path, "CA key")?).into_owned();
            KeyPair::from_pem(&pem).map_err(|e| TlsError::Config(format!("CA key {}: {e}", key_path.display())))?
        } else {
            let key = KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
            let cert = params.self_signed(&key).map_err(|e| TlsError::Generate(e.to_string()))?;
            write_private(&key_path, &key.serialize_pem())?;
            write_private(&cert_path, &cert.pem())?;
            key
        };
        Ok(LocalCa { dir: dir.to_path_buf(), issuer: Issuer::new(params, key) })
    }

    /// The CA certificate file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The files of member `name` (`<name>.pem`, `<name>.key`), issued now if absent. The
    /// certificate is good as server and as client, for [`SERVER_NAME`], `localhost` and
    /// 127.0.0.1.
    pub fn member(&self, name: &str) -> Result<TlsFiles, TlsError> {
        let (cert_path, key_path) = (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}.key")));
        if !(cert_path.exists() && key_path.exists()) {
            let sans = vec![SERVER_NAME.to_string(), "localhost".to_string(), "127.0.0.1".to_string()];
            let mut p = CertificateParams::new(sans).map_err(|e| TlsError::Generate(e.to_string()))?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, name);
            p.distinguished_name = dn;
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            p.not_after = rcgen::date_time_ymd(2125, 1, 1);
            let key = KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
            let cert = p.signed_by(&key, &self.issuer).map_err(|e| TlsError::Generate(e.to_string()))?;
            write_private(&key_path, &key.serialize_pem())?;
            write_private(&cert_path, &cert.pem())?;
        }
        Ok(TlsFiles::new(self.ca_path(), cert_path, key_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_and_members_are_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::open_or_create(dir.path()).unwrap();
        let a = ca.member("node-a").unwrap();
        a.validate().unwrap();
        assert!(a.server_config().unwrap().is_some());
        assert!(a.client_config().unwrap().is_some());
        let first = std::fs::read(a.cert.as_ref().unwrap()).unwrap();
        let ca_pem = std::fs::read(ca.ca_path()).unwrap();
        // Reopening keeps the CA and the member's certificate.
        let again = LocalCa::open_or_create(dir.path()).unwrap();
        assert_eq!(std::fs::read(again.ca_path()).unwrap(), ca_pem);
        let a2 = again.member("node-a").unwrap();
        assert_eq!(std::fs::read(a2.cert.as_ref().unwrap()).unwrap(), first);
        // A second member gets its own certificate from the reopened CA.
        let b = again.member("node-b").unwrap();
        assert_ne!(std::fs::read(b.cert.unwrap()).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(a.key.unwrap()).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "private key readable by others");
    }

    #[test]
    fn partial_settings_are_refused() {
        let t = TlsFiles { ca: Some("/x".into()), cert: None, key: None };
        assert!(t.validate().unwrap_err().to_string().contains("together"));
        let t = TlsFiles::new("/nonexistent/ca.pem", "/x", "/y");
        assert!(t.validate().unwrap_err().to_string().contains("cannot read CA certificate"));
        assert!(!TlsFiles::default().enabled());
        TlsFiles::default().validate().unwrap();
    }

    #[test]
    fn endpoints_follow_tls() {
        assert_eq!(endpoint("127.0.0.1:7", None).unwrap().uri().scheme_str(), Some("http"));
        assert_eq!(endpoint("http://127.0.0.1:7", None).unwrap().uri().to_string(), "http://127.0.0.1:7/");
        let tls = ClientTlsConfig::new().domain_name(SERVER_NAME);
        assert_eq!(endpoint("http://h:7", Some(&tls)).unwrap().uri().scheme_str(), Some("https"));
    }
}
