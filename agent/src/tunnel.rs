//! The agent's mutual-TLS link to the broker, in pure Rust. rumqttc's own TLS support pulls
//! in ring (a C build), so rumqttc speaks MQTT over a private Unix socket (in an owner-only
//! directory of the agent's data directory, and only this process may connect) and this
//! module carries each of its connections to the broker over TLS 1.2+ (rustls with the
//! RustCrypto provider), presenting the device certificate and checking the broker's against
//! the fleet CA. A failed handshake closes the local connection, so rumqttc reconnects with
//! its usual backoff; the reason is logged here.

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
    /// Listens on `dir/broker.sock` (`dir` made owner-only, a stale socket replaced) and
    /// forwards each connection from this process to `host:port` over TLS with `config`.
    pub fn start(
        config: rustls::ClientConfig,
        host: &str,
        port: u16,
        dir: &Path,
    ) -> Result<Tunnel> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let name = ServerName::try_from(host.to_owned())
            .with_context(|| format!("broker.url: {host:?} is not a host name or address"))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {dir:?}"))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {dir:?}"))?;
        let socket = dir.join("broker.sock");
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {socket:?}")),
        }
        let listener =
            UnixListener::bind(&socket).with_context(|| format!("listening on {socket:?}"))?;
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
                // Only this process's MQTT client may borrow the device's identity.
                let own = local
                    .peer_cred()
                    .ok()
                    .and_then(|c| c.pid())
                    .is_some_and(|pid| u32::try_from(pid).ok() == Some(std::process::id()));
                if !own {
                    tracing::warn!("broker tunnel: refused a connection from another process");
                    continue;
                }
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
        Ok(Tunnel { socket })
    }
}

/// One connection: TCP, the TLS handshake, then bytes both ways until either side closes.
async fn carry(
    local: UnixStream,
    connector: &TlsConnector,
    name: ServerName<'static>,
    address: &str,
) -> Result<()> {
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        TcpStream::connect(address),
    )
    .await
    .context("connecting: timed out")?
    .context("connecting")?;
    tcp.set_nodelay(true).ok();
    let tls = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        connector.connect(name, tcp),
    )
    .await
    .context("TLS handshake: timed out")?
    .context("TLS handshake")?;
    let (mut from_local, mut to_local) = local.into_split();
    let (mut from_broker, mut to_broker) = tokio::io::split(tls);
    let up = async {
        let n = tokio::io::copy(&mut from_local, &mut to_broker).await?;
        tokio::io::AsyncWriteExt::shutdown(&mut to_broker).await?;
        Ok::<u64, std::io::Error>(n)
    };
    let down = tokio::io::copy(&mut from_broker, &mut to_local);
    tokio::pin!(up, down);
    // When rumqttc hangs up (it gave up on a dead link, say), the broker side gets a moment
    // to finish, not the minutes a dead TCP peer takes to time out.
    let ended = tokio::select! {
        r = &mut up => {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut down).await;
            r
        }
        r = &mut down => r,
    };
    ended
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
