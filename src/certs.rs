//! Development certificates: a CA and a serving certificate signed by it, for local runs
//! and tests. Production clusters use cert-manager or the chart's own certificates.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CertsError {
    #[error("cannot generate certificate")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid DNS name {0:?}")]
    DnsName(String),
    #[error("give at least one --dns name or --ip address for the serving certificate")]
    NoNames,
}

/// The PEM files written by [`write`].
pub struct DevCerts {
    pub ca_cert: String,
    pub tls_cert: String,
    pub tls_key: String,
}

/// Generates a CA and a serving certificate for the given names (valid for one year).
pub fn generate(dns: &[String], ips: &[IpAddr]) -> Result<DevCerts, CertsError> {
    if dns.is_empty() && ips.is_empty() {
        return Err(CertsError::NoNames);
    }
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "django-migrate-webhook development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    ca.not_before = now;
    ca.not_after = now + time::Duration::days(365);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca.clone(), &ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name.push(
        DnType::CommonName,
        dns.first()
            .cloned()
            .unwrap_or_else(|| "django-migrate-webhook".into()),
    );
    for name in dns {
        let ia5 = name
            .clone()
            .try_into()
            .map_err(|_| CertsError::DnsName(name.clone()))?;
        leaf.subject_alt_names.push(SanType::DnsName(ia5));
    }
    for ip in ips {
        leaf.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now;
    leaf.not_after = ca.not_after;
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(DevCerts {
        ca_cert: ca_cert.pem(),
        tls_cert: cert.pem(),
        tls_key: key.serialize_pem(),
    })
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` into `dir` (created if missing); the key is
/// readable by its owner only.
pub fn write(dir: &Path, certs: &DevCerts) -> Result<(), CertsError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| CertsError::Write { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    for (name, pem, private) in [
        ("ca.crt", &certs.ca_cert, false),
        ("tls.crt", &certs.tls_cert, false),
        ("tls.key", &certs.tls_key, true),
    ] {
        let path = dir.join(name);
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if private { 0o600 } else { 0o644 });
        }
        let mut file = options.open(&path).map_err(io(&path))?;
        file.write_all(pem.as_bytes()).map_err(io(&path))?;
    }
    Ok(())
}
