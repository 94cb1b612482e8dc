//! Certificates and keys for one control plane, made with `rcgen`: a CA, the API server's
//! serving certificate (127.0.0.1, localhost and the in-cluster names), a cluster-admin client
//! certificate (`O=system:masters`) and the service-account signing key. All keys are ECDSA
//! P-256, written as PEM (PKCS#8 private keys, SPKI public keys), as kube-apiserver and
//! kubectl read them.
use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// The files, all under one directory.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
}

/// What in-cluster clients use for the `kubernetes` Service, besides loopback.
const SERVER_DNS_NAMES: [&str; 5] = [
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];
/// Loopback, and the `kubernetes` Service's ClusterIP (the first address of the Service CIDR).
const SERVER_IPS: [Ipv4Addr; 2] = [Ipv4Addr::LOCALHOST, Ipv4Addr::new(10, 96, 0, 1)];

const ADMIN_GROUP: &str = "system:masters";
const ADMIN_USER: &str = "vigil-testenv-admin";

/// Ten years, like the certificates of a kubeadm CA: a kept test directory never expires
/// under a developer.
const VALIDITY: Duration = Duration::days(3650);

fn name(pairs: &[(DnType, &str)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (kind, value) in pairs {
        dn.push(kind.clone(), *value);
    }
    dn
}

/// Parameters every certificate here shares: valid from an hour ago (clock skew between
/// processes is not a test failure) for [`VALIDITY`].
fn params(subject: DistinguishedName, serial: u8) -> CertificateParams {
    let mut params = CertificateParams::default();
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + VALIDITY;
    params.distinguished_name = subject;
    params.serial_number = Some(SerialNumber::from_slice(&[serial]));
    params
}

/// A leaf certificate: `CA:FALSE`, signed by `issuer`, with an authority key identifier.
fn leaf(
    subject: DistinguishedName,
    serial: u8,
    usage: ExtendedKeyUsagePurpose,
    names: Vec<SanType>,
) -> CertificateParams {
    let mut params = params(subject, serial);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.subject_alt_names = names;
    params.use_authority_key_identifier_extension = true;
    params
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn new_key(what: &str) -> Result<KeyPair> {
    KeyPair::generate().with_context(|| format!("cannot generate the {what} key"))
}

/// Makes every file in `dir` (created when missing).
/// `address` is where the API server also serves, when it is not loopback (a real node's pods
/// reach it there); it joins the serving certificate's names.
pub fn generate(dir: &Path, address: Ipv4Addr) -> Result<Pki> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = |name: &str| dir.join(name);
    let pki = Pki {
        ca_cert: path("ca.crt"),
        ca_key: path("ca.key"),
        server_cert: path("apiserver.crt"),
        server_key: path("apiserver.key"),
        admin_cert: path("admin.crt"),
        admin_key: path("admin.key"),
        service_account_key: path("service-account.key"),
        service_account_pub: path("service-account.pub"),
    };

    let ca_key = new_key("CA")?;
    let mut ca = params(name(&[(DnType::CommonName, "vigil-testenv-ca")]), 1);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca
        .self_signed(&ca_key)
        .context("cannot sign the CA certificate")?;
    write(&pki.ca_cert, &ca_cert.pem())?;
    write(&pki.ca_key, &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca, ca_key);

    let mut names: Vec<SanType> = SERVER_IPS
        .iter()
        .map(|ip| SanType::IpAddress(IpAddr::V4(*ip)))
        .collect();
    if !SERVER_IPS.contains(&address) {
        names.push(SanType::IpAddress(IpAddr::V4(address)));
    }
    for dns in SERVER_DNS_NAMES {
        names.push(SanType::DnsName(dns.try_into().context(dns)?));
    }
    let server = leaf(
        name(&[(DnType::CommonName, "kube-apiserver")]),
        2,
        ExtendedKeyUsagePurpose::ServerAuth,
        names,
    );
    let admin = leaf(
        name(&[
            (DnType::OrganizationName, ADMIN_GROUP),
            (DnType::CommonName, ADMIN_USER),
        ]),
        3,
        ExtendedKeyUsagePurpose::ClientAuth,
        Vec::new(),
    );
    for (what, params, cert_path, key_path) in [
        ("API server", server, &pki.server_cert, &pki.server_key),
        ("admin", admin, &pki.admin_cert, &pki.admin_key),
    ] {
        let key = new_key(what)?;
        let cert = params
            .signed_by(&key, &issuer)
            .with_context(|| format!("cannot sign the {what} certificate"))?;
        write(cert_path, &cert.pem())?;
        write(key_path, &key.serialize_pem())?;
    }

    let service_account = new_key("service-account")?;
    write(&pki.service_account_key, &service_account.serialize_pem())?;
    write(&pki.service_account_pub, &service_account.public_key_pem())?;
    Ok(pki)
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
    use webpki::{ALL_VERIFICATION_ALGS, EndEntityCert, KeyUsage, anchor_from_trusted_cert};

    use super::*;

    fn der(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap_or_else(|err| panic!("{path:?}: {err}"))
    }

    /// Whether `cert` chains to the CA for `usage` now.
    fn verify(ca: &CertificateDer<'_>, cert: &CertificateDer<'_>, usage: KeyUsage) -> bool {
        let anchor = anchor_from_trusted_cert(ca).expect("the CA is a trust anchor");
        EndEntityCert::try_from(cert)
            .expect("an end-entity certificate")
            .verify_for_usage(
                ALL_VERIFICATION_ALGS,
                &[anchor],
                &[],
                UnixTime::now(),
                usage,
                None,
                None,
            )
            .is_ok()
    }

    /// Whether the DER holds `text` as a UTF8String (how rcgen writes names).
    fn has_name(cert: &CertificateDer<'_>, text: &str) -> bool {
        let mut needle = vec![0x0c, u8::try_from(text.len()).expect("short")];
        needle.extend(text.as_bytes());
        cert.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn certificates_chain_to_the_ca_with_the_right_names_usages_and_groups() {
        let dir = std::env::temp_dir().join(format!("testenv-pki-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let pki = generate(&dir, Ipv4Addr::LOCALHOST).expect("generate");
        let ca = der(&pki.ca_cert);
        let server = der(&pki.server_cert);
        let admin = der(&pki.admin_cert);

        assert!(verify(&ca, &server, KeyUsage::server_auth()));
        assert!(
            !verify(&ca, &server, KeyUsage::client_auth()),
            "the serving certificate is no client certificate"
        );
        assert!(verify(&ca, &admin, KeyUsage::client_auth()));
        assert!(!verify(&ca, &admin, KeyUsage::server_auth()));

        let server_cert = EndEntityCert::try_from(&server).expect("parse");
        for name in [
            "127.0.0.1",
            "10.96.0.1",
            "localhost",
            "kubernetes.default.svc",
        ] {
            let name = ServerName::try_from(name).expect("a server name");
            assert!(
                server_cert.verify_is_valid_for_subject_name(&name).is_ok(),
                "{name:?}"
            );
        }
        let elsewhere = ServerName::try_from("example.com").expect("a server name");
        assert!(
            server_cert
                .verify_is_valid_for_subject_name(&elsewhere)
                .is_err()
        );
        assert!(has_name(&admin, ADMIN_GROUP) && has_name(&admin, ADMIN_USER));

        // The service-account pair is one pair: what the private key signs, the public key
        // verifies (as the API server does with the tokens it issues).
        let private = fs::read_to_string(&pki.service_account_key).expect("read");
        let public = fs::read_to_string(&pki.service_account_pub).expect("read");
        let pair = KeyPair::from_pem(&private).expect("a PKCS#8 private key");
        assert_eq!(pair.public_key_pem(), public);
        for key in [&pki.ca_key, &pki.server_key, &pki.admin_key] {
            let text = fs::read_to_string(key).expect("read");
            assert!(KeyPair::from_pem(&text).is_ok(), "{key:?}");
        }
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
