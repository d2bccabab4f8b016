//! TLS for the one listener: a certificate chain and private key from PEM files, reloaded when the
//! files change (a renewed cert-manager Secret, a kubelet `..data` swap, an edited file), with the
//! last good pair kept when a new one does not load. ALPN offers `h2` and `http/1.1`, so gRPC,
//! gRPC-Web and Connect all work over TLS as they do in cleartext.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use sha2::{Digest as _, Sha256};
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::reload::files::FileWatch;

/// The certificate files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate pair did not load; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("{what} {}: {e}", path.display())))
}

/// The files' bytes and their combined digest (to notice changes without parsing).
struct Pem {
    cert: Vec<u8>,
    key: Vec<u8>,
    digest: [u8; 32],
}

fn read_pair(files: &TlsFiles) -> Result<Pem, TlsError> {
    let cert = read(&files.cert, "TLS certificate")?;
    let key = read(&files.key, "TLS key")?;
    let mut h = Sha256::new();
    h.update((cert.len() as u64).to_le_bytes());
    h.update(&cert);
    h.update(&key);
    Ok(Pem {
        cert,
        key,
        digest: h.finalize().into(),
    })
}

fn parse(files: &TlsFiles, cert: &[u8], key: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            TlsError(format!(
                "TLS certificate {}: not PEM certificates: {e}",
                files.cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(TlsError(format!(
            "TLS certificate {}: no CERTIFICATE block",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
        TlsError(format!(
            "TLS key {}: no usable private key: {e}",
            files.key.display()
        ))
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        TlsError(format!(
            "TLS key {} does not fit certificate {}: {e}",
            files.key.display(),
            files.cert.display()
        ))
    })
}

/// Loads and checks a certificate pair: parsable PEM, a supported key, and a key that belongs to
/// the leaf certificate.
pub fn load(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let pem = read_pair(files)?;
    parse(files, &pem.cert, &pem.key)
}

/// The serving certificate, swapped atomically on reload; handshakes read it without locks.
#[derive(Debug)]
pub struct CertStore {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
    digest: std::sync::Mutex<[u8; 32]>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// What a reload check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The files are as they were.
    Unchanged,
    /// A new pair is serving.
    Reloaded,
    /// The files changed but did not load; the previous pair keeps serving.
    Failed,
}

impl CertStore {
    /// Loads the pair; fails if it does not load.
    pub fn open(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let pem = read_pair(&files)?;
        let ck = parse(&files, &pem.cert, &pem.key)?;
        Ok(Arc::new(Self {
            files,
            current: ArcSwap::from_pointee(ck),
            digest: std::sync::Mutex::new(pem.digest),
        }))
    }

    /// The rustls configuration serving this store's certificate, with ALPN `h2` and `http/1.1`.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS protocol versions: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Re-reads the files; swaps in the new pair if they changed and load. A pair that fails is
    /// reported once, not on every check, and is retried when the files change again.
    pub fn check(&self) -> Reload {
        let pem = match read_pair(&self.files) {
            Ok(v) => v,
            Err(e) => {
                // Mid-swap or deleted: keep serving; the next check sees the settled state.
                tracing::debug!(error = %e, "TLS files not readable; keeping the serving certificate");
                return Reload::Unchanged;
            }
        };
        let mut seen = self
            .digest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *seen == pem.digest {
            return Reload::Unchanged;
        }
        *seen = pem.digest;
        match parse(&self.files, &pem.cert, &pem.key) {
            Ok(ck) => {
                self.current.store(Arc::new(ck));
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                Reload::Reloaded
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate reload failed; keeping the previous one");
                Reload::Failed
            }
        }
    }

    /// The serving leaf certificate (DER).
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.current.load().cert.first().cloned()
    }

    /// Re-checks the files on the triggers of [`FileWatch`] (events in their directories, and every
    /// `interval` regardless) until `stop`, counting reloads in `pbflags_tls_reloads_total`.
    pub fn spawn_watch(
        self: &Arc<Self>,
        interval: Duration,
        metrics: Metrics,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        let watch = FileWatch {
            paths: vec![self.files.cert.clone(), self.files.key.clone()],
            poll_interval: interval,
            debounce: Duration::from_millis(250),
            fs_events: true,
            sighup: false,
        };
        watch.spawn(
            move |_| match store.check() {
                Reload::Unchanged => {}
                Reload::Reloaded => metrics.tls_reload(true),
                Reload::Failed => metrics.tls_reload(false),
            },
            stop,
        )
    }
}
