//! TLS for the OTLP exporters: the `tls` config table and the one rustls client configuration
//! (ring provider) that `otlp_grpc` and `otlp_http` both connect with.
//!
//! Without a `ca_file`, servers are verified against the system's trusted roots (read once per
//! process with rustls-native-certs); a system without a CA bundle — a scratch container — falls
//! back to the Mozilla roots compiled into webpki-roots, so `https://` works out of the box.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;
use sluice_pipeline::{ComponentSettings, ConfigError};

/// The `tls` table of an OTLP exporter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) that sign the server's certificate. When set, only
    /// these are trusted; when not, the system's trusted roots are.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (and its chain) presented to servers that require
    /// mutual TLS. Needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM file of the private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must be valid for, also sent as SNI; by default the
    /// endpoint's host. For reaching a server by IP address or through a tunnel.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Accepts any server certificate: the connection is encrypted but the server is not
    /// authenticated, so anyone on the path can read the data. For tests only; logged loudly.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// A checked TLS setup, ready to make connectors.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    insecure_skip_verify: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the files `tls` names and builds the client configuration. Errors name the key
    /// (`exporters.x.tls.ca_file`) and the file.
    pub fn new(settings: &ComponentSettings, tls: &TlsConfig) -> Result<Tls, ConfigError> {
        let path = settings.path().key("tls");
        let error = |key: &str, message: String| ConfigError::new(path.key(key), message);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::new(path.clone(), format!("TLS setup: {e}")))?;
        let builder = if tls.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(
                    provider.signature_verification_algorithms,
                )))
        } else {
            let roots = match &tls.ca_file {
                Some(file) => {
                    let mut roots = RootCertStore::empty();
                    for cert in read_certificates(file).map_err(|m| error("ca_file", m))? {
                        roots.add(cert).map_err(|e| {
                            error(
                                "ca_file",
                                format!("{}: not a usable CA certificate: {e}", file.display()),
                            )
                        })?;
                    }
                    Arc::new(roots)
                }
                None => system_roots(),
            };
            builder.with_root_certificates(roots)
        };
        let config = match (&tls.cert_file, &tls.key_file) {
            (Some(cert_file), Some(key_file)) => {
                let certs = read_certificates(cert_file).map_err(|m| error("cert_file", m))?;
                let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
                    error(
                        "key_file",
                        format!("{}: no usable private key: {e}", key_file.display()),
                    )
                })?;
                builder.with_client_auth_cert(certs, key).map_err(|e| {
                    error(
                        "key_file",
                        format!(
                            "{} cannot be used with {}: {e}",
                            key_file.display(),
                            cert_file.display()
                        ),
                    )
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                return Err(error(
                    "key_file",
                    "cert_file is set: also set key_file, the certificate's private key".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(error(
                    "cert_file",
                    "key_file is set: also set cert_file, the client certificate".into(),
                ));
            }
        };
        let server_name = match &tls.server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                error(
                    "server_name",
                    format!("{name:?} is not a DNS name or IP address"),
                )
            })?),
            None => None,
        };
        Ok(Tls {
            config: Arc::new(config),
            server_name,
            insecure_skip_verify: tls.insecure_skip_verify,
        })
    }

    /// Whether server certificates go unverified.
    pub fn skips_verification(&self) -> bool {
        self.insecure_skip_verify
    }

    /// A connector for `https://` (and `http://`) URIs offering HTTP/2 only, as gRPC needs.
    pub fn http2_connector(&self, tcp: HttpConnector) -> HttpsConnector<HttpConnector> {
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config((*self.config).clone())
            .https_or_http();
        let builder = match &self.server_name {
            Some(name) => {
                builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone()))
            }
            None => builder,
        };
        builder.enable_http2().wrap_connector(tcp)
    }

    /// A connector for `https://` (and `http://`) URIs offering HTTP/1.1.
    pub fn http1_connector(&self, tcp: HttpConnector) -> HttpsConnector<HttpConnector> {
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config((*self.config).clone())
            .https_or_http();
        let builder = match &self.server_name {
            Some(name) => {
                builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone()))
            }
            None => builder,
        };
        builder.enable_http1().wrap_connector(tcp)
    }

    /// Logs, once per exporter start, that the server is not authenticated.
    pub fn warn_if_insecure(&self, exporter: &str) {
        if self.insecure_skip_verify {
            tracing::warn!(
                exporter,
                "TLS CERTIFICATE VERIFICATION IS OFF (tls.insecure_skip_verify = true): the \
                 backend is not authenticated and anyone on the network path can read or alter \
                 the data; use tls.ca_file to trust a private CA instead"
            );
        }
    }
}

/// Every certificate in a PEM file; an error message naming the file otherwise.
fn read_certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            file.display()
        ));
    }
    Ok(certs)
}

/// The system's trusted roots, read once per process; the webpki-roots (Mozilla) set when the
/// system has none.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        let native = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::info!(
                errors = ?native.errors,
                "no trusted CA certificates found on this system; using the built-in Mozilla roots (webpki-roots)"
            );
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        } else {
            tracing::debug!(roots = added, "trusting the system's CA certificates");
        }
        Arc::new(roots)
    }))
}

/// `insecure_skip_verify`: takes any certificate, but still checks the handshake signatures so
/// the TLS session itself is sound.
#[derive(Debug)]
struct AcceptAnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
