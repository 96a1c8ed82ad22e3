//! The agent's mutual-TLS link to the broker, in pure Rust. rumqttc's own TLS support pulls
//! in ring (a C build), so rumqttc speaks MQTT over a private Unix socket in the agent's data
//! directory and this module carries each of its connections to the broker over TLS 1.2+
//! (rustls with the RustCrypto provider), presenting the device certificate and checking the
//! broker's against the fleet CA. A failed handshake closes the local connection, so rumqttc
//! reconnects with its usual backoff; the reason is logged here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio_rustls::TlsConnector;

/// Where rumqttc connects: the socket this tunnel listens on.
pub struct Tunnel {
    /// The Unix socket path.
    pub socket: PathBuf,
}

/// The device's TLS identity and the CA it trusts, read from PEM files.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).with_context(|| format!("broker.ca {ca:?}"))? {
        roots
            .add(c.with_context(|| format!("broker.ca {ca:?}"))?)
            .with_context(|| format!("broker.ca {ca:?}: not a usable CA certificate"))?;
    }
    if roots.is_empty() {
        bail!("broker.ca {ca:?}: no certificate in it");
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("broker.cert {cert:?}"))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("broker.cert {cert:?}"))?;
    if chain.is_empty() {
        bail!("broker.cert {cert:?}: no certificate in it");
    }
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("broker.key {key:?}"))?;
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls_rustcrypto::provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("broker.cert/broker.key: the key does not fit the certificate")?;
    Ok(config)
}

impl Tunnel {
    /// Listens on `socket` (replacing a stale one, owner-only) and forwards each connection
    /// to `host:port` over TLS with `config`.
    pub fn start(
        config: rustls::ClientConfig,
        host: &str,
        port: u16,
        socket: &Path,
    ) -> Result<Tunnel> {
        let name = ServerName::try_from(host.to_owned())
            .with_context(|| format!("broker.url: {host:?} is not a host name or address"))?;
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {socket:?}")),
        }
        let listener =
            UnixListener::bind(socket).with_context(|| format!("listening on {socket:?}"))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("restricting {socket:?}"))?;
        }
        let connector = TlsConnector::from(Arc::new(config));
        let address = format!("{host}:{port}");
        tokio::spawn(async move {
            loop {
                let local = match listener.accept().await {
                    Ok((local, _)) => local,
                    Err(e) => {
                        tracing::warn!(error = %e, "broker tunnel: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let connector = connector.clone();
                let name = name.clone();
                let address = address.clone();
                tokio::spawn(async move {
                    if let Err(e) = carry(local, &connector, name, &address).await {
                        tracing::warn!(broker = %address, error = format!("{e:#}"), "broker TLS link failed");
                    }
                });
            }
        });
        Ok(Tunnel {
            socket: socket.to_owned(),
        })
    }
}

/// One connection: TCP, the TLS handshake, then bytes both ways until either side closes.
async fn carry(
    mut local: UnixStream,
    connector: &TlsConnector,
    name: ServerName<'static>,
    address: &str,
) -> Result<()> {
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        TcpStream::connect(address),
    )
    .await
    .context("connecting: timed out")?
    .context("connecting")?;
    tcp.set_nodelay(true).ok();
    let mut tls = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        connector.connect(name, tcp),
    )
    .await
    .context("TLS handshake: timed out")?
    .context("TLS handshake")?;
    tokio::io::copy_bidirectional(&mut local, &mut tls)
        .await
        .map(|_| ())
        .or_else(|e| match e.kind() {
            // The broker or rumqttc hung up: a normal end of a session.
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => Ok(()),
            _ => Err(e),
        })
        .context("relaying")
}
