//! Addressing: `bucket.<domain>[:port]` is virtual-hosted style for each configured domain;
//! any other Host (an IP, a Service name) is path style.

use s3s::S3Result;
use s3s::host::{S3Host, VirtualHost};

/// The configured base domains.
pub struct Domains(pub Vec<String>);

impl S3Host for Domains {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let name = match host.rsplit_once(':') {
            Some((h, port))
                if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(']')
                    || !h.contains(']') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                h
            }
            _ => host,
        };
        for d in &self.0 {
            if let Some(bucket) = name.strip_suffix(d.as_str()).and_then(|b| b.strip_suffix('.'))
                && !bucket.is_empty()
            {
                return Ok(VirtualHost::new(d.as_str()).with_bucket(bucket));
            }
        }
        Ok(VirtualHost::new(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_and_path_style() {
        let d = Domains(vec!["localhost".into(), "s3.example.com".into()]);
        assert_eq!(d.parse_host_header("photos.localhost:9000").unwrap().bucket(), Some("photos"));
        assert_eq!(d.parse_host_header("a.b.s3.example.com").unwrap().bucket(), Some("a.b"));
        assert_eq!(d.parse_host_header("localhost:9000").unwrap().bucket(), None);
        assert_eq!(d.parse_host_header("127.0.0.1:7780").unwrap().bucket(), None);
        assert_eq!(d.parse_host_header("objectd.cairn.svc").unwrap().bucket(), None);
    }
}
