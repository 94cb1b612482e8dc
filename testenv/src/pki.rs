//! Certificates and keys for one control plane, made with the `openssl` command (OpenSSL 3):
//! a CA, the API server's serving certificate (127.0.0.1, localhost and the in-cluster names),
//! a cluster-admin client certificate (`O=system:masters`) and the service-account signing
//! key. All keys are ECDSA P-256.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

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

/// The API server's names: loopback, and what in-cluster clients use for the `kubernetes`
/// Service (10.96.0.1 is the first address of the Service CIDR).
const SERVER_NAMES: &str = "IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes,\
    DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local";

const CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = unused

[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash

[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = @server_names

[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[server_names]
";

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context(
            "cannot run `openssl` (the test control plane makes its certificates with it; \
             on Debian: apt-get install openssl)",
        )?;
    if !out.status.success() {
        bail!(
            "`openssl {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn new_key(dir: &Path, name: &str) -> Result<()> {
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            name,
        ],
    )
}

/// A key and a certificate for `subject` signed by the CA, with the extensions of `section`.
fn signed(dir: &Path, name: &str, subject: &str, section: &str, serial: &str) -> Result<()> {
    let (key, csr, cert) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    new_key(dir, &key)?;
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-config",
            "openssl.cnf",
            "-key",
            &key,
            "-subj",
            subject,
            "-out",
            &csr,
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            serial,
            "-days",
            "3650",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            section,
            "-out",
            &cert,
        ],
    )?;
    fs::remove_file(dir.join(&csr)).with_context(|| format!("cannot remove {csr}"))
}

/// Makes every file in `dir` (created when missing).
pub fn generate(dir: &Path) -> Result<Pki> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let names: String = SERVER_NAMES
        .split(',')
        .enumerate()
        .map(|(i, name)| {
            let (kind, value) = name.split_once(':').expect("KIND:value");
            format!("{kind}.{i} = {value}\n")
        })
        .collect();
    fs::write(dir.join("openssl.cnf"), format!("{CONFIG}{names}"))
        .context("cannot write openssl.cnf")?;

    new_key(dir, "ca.key")?;
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-x509",
            "-config",
            "openssl.cnf",
            "-key",
            "ca.key",
            "-subj",
            "/CN=vigil-testenv-ca",
            "-days",
            "3650",
            "-extensions",
            "ca",
            "-out",
            "ca.crt",
        ],
    )?;
    signed(dir, "apiserver", "/CN=kube-apiserver", "server", "2")?;
    signed(
        dir,
        "admin",
        "/O=system:masters/CN=vigil-testenv-admin",
        "client",
        "3",
    )?;
    new_key(dir, "service-account.key")?;
    openssl(
        dir,
        &[
            "pkey",
            "-in",
            "service-account.key",
            "-pubout",
            "-out",
            "service-account.pub",
        ],
    )?;

    let path = |name: &str| dir.join(name);
    Ok(Pki {
        ca_cert: path("ca.crt"),
        ca_key: path("ca.key"),
        server_cert: path("apiserver.crt"),
        server_key: path("apiserver.key"),
        admin_cert: path("admin.crt"),
        admin_key: path("admin.key"),
        service_account_key: path("service-account.key"),
        service_account_pub: path("service-account.pub"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn certificates_chain_to_the_ca_with_the_right_names_and_groups() {
        let dir = std::env::temp_dir().join(format!("testenv-pki-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let pki = generate(&dir).expect("generate");
        for cert in [&pki.server_cert, &pki.admin_cert] {
            let verified = text(
                &dir,
                &["verify", "-CAfile", "ca.crt", cert.to_str().expect("utf-8")],
            );
            assert!(verified.trim().ends_with("OK"), "{verified}");
        }
        let server = text(&dir, &["x509", "-in", "apiserver.crt", "-noout", "-text"]);
        assert!(server.contains("IP Address:127.0.0.1"), "{server}");
        assert!(server.contains("DNS:localhost"), "{server}");
        assert!(server.contains("TLS Web Server Authentication"), "{server}");
        let admin = text(
            &dir,
            &[
                "x509",
                "-in",
                "admin.crt",
                "-noout",
                "-subject",
                "-ext",
                "extendedKeyUsage",
            ],
        );
        assert!(admin.contains("O = system:masters"), "{admin}");
        assert!(admin.contains("TLS Web Client Authentication"), "{admin}");
        assert!(pki.service_account_pub.is_file() && pki.service_account_key.is_file());
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
