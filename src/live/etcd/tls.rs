//! TLS material checked when the source starts (so a bad PEM fails
//! [`Builder::build`](crate::live::Builder::build) with a clear error instead of every
//! connection with "transport error"), and handshake failures explained in words.

use std::error::Error;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, InconsistentKeys, RootCertStore};

use super::EtcdSource;
use crate::BoxError;

/// The TLS options for `etcd_client`, if TLS is configured.
pub(super) fn options(cfg: &EtcdSource) -> Option<etcd_client::TlsOptions> {
    let (ca, domain) = cfg.tls_ca.as_ref()?;
    let mut tls =
        etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca));
    if let Some(domain) = domain {
        tls = tls.domain_name(domain);
    }
    if let Some((cert, key)) = &cfg.tls_identity {
        tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
    }
    Some(tls)
}

/// Checks what can be checked without a server: endpoint schemes that match the TLS
/// configuration, a CA that holds certificates, a valid server name, a client
/// certificate and key that parse and belong together.
pub(super) fn validate(cfg: &EtcdSource) -> Result<(), BoxError> {
    let tls = cfg.tls_ca.is_some() || cfg.tls_identity.is_some();
    for endpoint in &cfg.endpoints {
        if tls && endpoint.starts_with("http://") {
            return Err(format!(
                "etcd endpoint `{endpoint}`: TLS is configured (EtcdSource::tls), so the endpoint \
                 must be https://"
            )
            .into());
        }
        if !tls && endpoint.starts_with("https://") {
            return Err(format!(
                "etcd endpoint `{endpoint}` is https:// but no CA is configured: give \
                 EtcdSource::tls the CA that signed the server's certificate"
            )
            .into());
        }
    }
    let Some((ca, domain)) = &cfg.tls_ca else {
        if cfg.tls_identity.is_some() {
            return Err(
                "EtcdSource::tls_identity needs EtcdSource::tls too (the CA that signed \
                        the server's certificate)"
                    .into(),
            );
        }
        return Ok(());
    };
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca, "the CA given to EtcdSource::tls")? {
        roots.add(cert).map_err(|e| match e {
            rustls::Error::InvalidCertificate(e) => {
                format!("the CA given to EtcdSource::tls is not a usable certificate: {e:?}")
            }
            e => format!("the CA given to EtcdSource::tls is not a usable certificate: {e}"),
        })?;
    }
    if let Some(domain) = domain {
        ServerName::try_from(domain.as_str())
            .map_err(|e| format!("EtcdSource::tls: `{domain}` is not a valid server name: {e}"))?;
    }
    if let Some((cert, key)) = &cfg.tls_identity {
        let chain = certificates(
            cert,
            "the client certificate given to EtcdSource::tls_identity",
        )?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
            format!(
                "the client key given to EtcdSource::tls_identity is not a PEM private key \
                 (PKCS#8, PKCS#1 or SEC1): {e}"
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
                    "the client key given to EtcdSource::tls_identity does not belong to its \
                     certificate"
                        .to_owned()
                }
                e => format!(
                    "the client certificate and key given to EtcdSource::tls_identity are not \
                     usable: {e}"
                ),
            })?;
    }
    Ok(())
}

/// The certificates of a PEM bundle: at least one, each well-formed PEM.
fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, BoxError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(
            format!("{what} holds no PEM certificate (-----BEGIN CERTIFICATE-----)").into(),
        );
    }
    Ok(certs)
}

const CHECK: &str = "is the server's certificate signed by the CA given to EtcdSource::tls? \
                     does the server name match? does the server require a client certificate \
                     (EtcdSource::tls_identity)?";

/// What went wrong, in words, when a failure to reach etcd is a TLS failure; `None` for
/// any other failure (or without TLS). `text` is the error chain as one line; `fresh`
/// says that the client has had no answer since it connected, so that a connection
/// closed under it was most likely refused by the server during or right after the
/// handshake (a server that requires a client certificate ends the connection once it
/// has checked the client's, which over TLS 1.3 is after the client's first request).
pub(super) fn explain(
    error: &(dyn Error + 'static),
    text: &str,
    fresh: bool,
    cfg: &EtcdSource,
) -> Option<String> {
    cfg.tls_ca.as_ref()?;
    let endpoints = cfg.endpoints.join(", ");
    let handshake = format!("TLS handshake with {endpoints} failed");
    if let Some(tls) = rustls_error(error) {
        return Some(match tls {
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            ) => format!(
                "{handshake}: the server's certificate is not signed by the CA given to \
                 EtcdSource::tls ({tls})"
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!(
                "{handshake}: the server's certificate does not match the server name ({tls}); \
                 the name to expect is EtcdSource::tls's second argument"
            ),
            rustls::Error::AlertReceived(_) => format!(
                "{handshake}: the server refused the connection ({tls}): does it require a \
                 client certificate (EtcdSource::tls_identity) signed by a CA it trusts?"
            ),
            tls => format!("{handshake}: {tls} ({CHECK})"),
        });
    }
    if text.contains("received fatal alert") {
        return Some(format!(
            "{handshake}: the server refused the connection ({text}): does it require a client \
             certificate (EtcdSource::tls_identity) signed by a CA it trusts?"
        ));
    }
    let closed = [
        "operation was canceled",
        "broken pipe",
        "connection closed",
        "reset",
    ];
    if fresh && closed.iter().any(|c| text.contains(c)) {
        // The request was refused by a closed connection, or waited for one that
        // closed before it could be sent, before etcd ever answered this client.
        return Some(format!(
            "{handshake} or the server closed the connection right after it ({text}): {CHECK}"
        ));
    }
    None
}

/// The rustls error somewhere in `error`'s chain, including inside an `io::Error` (whose
/// `source` skips the error it wraps).
fn rustls_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    let mut link = Some(error);
    while let Some(e) = link {
        // `etcd_client::Error` has no `source`: its variants hold the next link.
        match e.downcast_ref::<etcd_client::Error>() {
            Some(etcd_client::Error::GRpcStatus(status)) => {
                link = Some(status);
                continue;
            }
            Some(etcd_client::Error::TransportError(transport)) => {
                link = Some(transport);
                continue;
            }
            Some(etcd_client::Error::IoError(io)) => {
                link = Some(io);
                continue;
            }
            _ => {}
        }
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        link = e.source();
    }
    None
}
