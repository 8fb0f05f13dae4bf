//! TLS for the SQL connection, from the same libpq parameters of the URL
//! the replication connection (libpq itself) reads: `sslmode` (`disable`,
//! `allow`, `prefer`, `require`, `verify-ca`, `verify-full`),
//! `sslrootcert` (a PEM file, or `system` for the system's roots),
//! `sslcert` and `sslkey` (a client certificate).
//!
//! `tokio-postgres` knows only `sslmode=disable|prefer|require` and none
//! of the file parameters, so they are taken out of the URL it gets and
//! become a rustls configuration with libpq's meaning: `verify-full`
//! checks the chain and the host name, `verify-ca` the chain only, and
//! `require` (or `prefer`, `allow`) checks the chain when a root
//! certificate is given and nothing otherwise. The crypto is the
//! process's rustls provider, or *ring* when it installed none.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::PgError;

/// The URL for `tokio-postgres`, and the TLS to connect with (`None`:
/// `sslmode=disable`).
pub(crate) struct SqlTarget {
    pub(crate) url: String,
    pub(crate) tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

/// Reads `url`'s TLS parameters.
pub(crate) fn sql_target(url: &str) -> Result<SqlTarget, PgError> {
    let bad = |why: String| PgError::Schema(format!("the PostgreSQL URL's TLS parameters: {why}"));
    let Some((base, query)) = url.split_once('?') else {
        return Ok(SqlTarget {
            url: url.to_owned(),
            tls: Some(connector(Verify::None, None, None)?),
        });
    };
    let (mut mode, mut root, mut cert, mut key) = (None, None, None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "sslmode" => mode = Some(v),
            "sslrootcert" => root = Some(v),
            "sslcert" => cert = Some(v),
            "sslkey" => key = Some(v),
            _ => kept.push(pair.to_owned()),
        }
    }
    let mode = mode.unwrap_or_else(|| "prefer".to_owned());
    let (client_mode, verify) = match (mode.as_str(), &root) {
        ("disable", _) => ("disable", None),
        ("allow" | "prefer", None) => ("prefer", Some(Verify::None)),
        ("allow" | "prefer", Some(_)) => ("prefer", Some(Verify::Chain)),
        ("require", None) => ("require", Some(Verify::None)),
        ("require" | "verify-ca", Some(_)) => ("require", Some(Verify::Chain)),
        ("verify-full", Some(_)) => ("require", Some(Verify::Full)),
        ("verify-ca" | "verify-full", None) => {
            return Err(bad(format!(
                "sslmode={mode} needs sslrootcert=FILE (or sslrootcert=system)"
            )));
        }
        (other, _) => return Err(bad(format!("unknown sslmode '{other}'"))),
    };
    kept.push(format!("sslmode={client_mode}"));
    let tls = match verify {
        None => None,
        Some(verify) => {
            let client = match (cert, key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => return Err(bad("sslcert and sslkey go together".into())),
            };
            Some(connector(verify, root.as_deref(), client)?)
        }
    };
    Ok(SqlTarget {
        url: format!("{base}?{}", kept.join("&")),
        tls,
    })
}

/// What of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verify {
    /// Nothing (encryption only, as libpq's `require` without a root).
    None,
    /// The chain up to the root, not the host name (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

fn connector(
    verify: Verify,
    root: Option<&str>,
    client: Option<(String, String)>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    let tls = |why: String| PgError::Schema(format!("PostgreSQL TLS: {why}"));
    let provider = CryptoProvider::get_default().cloned().unwrap_or_else(ring);
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::None => Arc::new(Unchecked(Arc::clone(&provider))),
        Verify::Chain | Verify::Full => {
            let roots = roots(root.unwrap_or("system")).map_err(tls)?;
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| tls(e.to_string()))?;
            Arc::new(Checked {
                inner,
                names: verify == Verify::Full,
            })
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(&cert)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| tls(format!("sslcert {cert}: {e}")))?;
            let key = PrivateKeyDer::from_pem_file(&key)
                .map_err(|e| tls(format!("sslkey {key}: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls(e.to_string()))?
        }
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// *ring*, when the process installed no provider of its own (it builds
/// with a C compiler alone; rustls marks it deprecated for lacking
/// post-quantum key exchange).
#[allow(deprecated)]
fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The roots in the PEM file at `path`, or the system's for `system`.
fn roots(path: &str) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    if path == "system" {
        let found = rustls_native_certs::load_native_certs();
        store.add_parsable_certificates(found.certs);
    } else {
        for cert in
            CertificateDer::pem_file_iter(path).map_err(|e| format!("sslrootcert {path}: {e}"))?
        {
            let cert = cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
            store
                .add(cert)
                .map_err(|e| format!("sslrootcert {path}: {e}"))?;
        }
    }
    if store.is_empty() {
        return Err(format!("sslrootcert {path}: no certificate"));
    }
    Ok(store)
}

/// Checks the chain, and the host name when `names`.
#[derive(Debug)]
struct Checked {
    inner: Arc<WebPkiServerVerifier>,
    names: bool,
}

impl ServerCertVerifier for Checked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts any certificate (the handshake's signatures are still checked):
/// libpq's `require` without a root certificate.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `%XX` escapes decoded (file paths in a URL).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_parameters_leave_the_url_and_become_the_connector() {
        let t = sql_target("postgres://u@h/db?sslmode=disable&application_name=x").unwrap();
        assert_eq!(
            t.url,
            "postgres://u@h/db?application_name=x&sslmode=disable"
        );
        assert!(t.tls.is_none());
        let t = sql_target("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(t.url, "postgres://u@h/db?sslmode=require");
        assert!(t.tls.is_some());
        let t = sql_target("postgres://u@h/db").unwrap();
        assert_eq!(t.url, "postgres://u@h/db");
        assert!(t.tls.is_some(), "libpq's default is prefer");
        let t = sql_target("postgres://u@h/db?sslmode=prefer").unwrap();
        assert_eq!(t.url, "postgres://u@h/db?sslmode=prefer");
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_with_why() {
        let why = |url: &str| {
            sql_target(url)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(why("postgres://h/d?sslmode=verify-full").contains("needs sslrootcert"));
        assert!(why("postgres://h/d?sslmode=sometimes").contains("unknown sslmode"));
        assert!(why("postgres://h/d?sslmode=require&sslcert=a.pem").contains("go together"));
        assert!(
            why("postgres://h/d?sslmode=verify-ca&sslrootcert=/nonexistent%20file.pem")
                .contains("/nonexistent file.pem")
        );
    }
}
