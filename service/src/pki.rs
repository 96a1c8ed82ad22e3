//! Device identity: fleetwave's own certificate authority, kept in a directory (the CA key
//! never leaves it): `init` makes the CA, `provision` issues a device its certificate
//! (CN = device id) and key, `revoke` adds a device's certificate to the CRL the broker
//! reads, and `broker_config` writes a Mosquitto configuration with mutual TLS, the CRL and
//! ACL patterns confining each device to its own topics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use serde::{Deserialize, Serialize};

/// The CA's common name.
const CA_NAME: &str = "fleetwave device CA";

/// One issued certificate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Issued {
    /// Serial number (hex).
    pub serial: String,
    /// Whether it is revoked.
    pub revoked: bool,
}

/// What the CA directory remembers besides its key and certificate.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Ledger {
    /// By common name.
    issued: BTreeMap<String, Issued>,
    /// The CRL's sequence number.
    crl_number: u64,
}

/// The CA in `dir`.
pub struct Ca {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ledger: Ledger,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.key_identifier_method = KeyIdMethod::Sha256;
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    params
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("{} (refusing to overwrite a key)", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

impl Ca {
    /// Creates a CA in `dir` (which must not hold one).
    pub fn init(dir: &Path) -> Result<Ca> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if dir.join("ca.key").exists() {
            bail!("{} already holds a CA", dir.display());
        }
        let key = KeyPair::generate().context("generating the CA key")?;
        let cert = ca_params().self_signed(&key).context("signing the CA")?;
        write_secret(&dir.join("ca.key"), &key.serialize_pem())?;
        std::fs::write(dir.join("ca.pem"), cert.pem())?;
        let mut ca = Ca {
            dir: dir.to_owned(),
            issuer: Issuer::new(ca_params(), key),
            ledger: Ledger::default(),
        };
        ca.write_crl()?;
        Ok(ca)
    }

    /// Opens the CA in `dir`.
    pub fn open(dir: &Path) -> Result<Ca> {
        let key_pem = std::fs::read_to_string(dir.join("ca.key"))
            .with_context(|| format!("{} holds no CA (run `fleetwave ca init`)", dir.display()))?;
        let key = KeyPair::from_pem(&key_pem).context("the CA key")?;
        let ledger = match std::fs::read(dir.join("issued.json")) {
            Ok(b) => serde_json::from_slice(&b).context("issued.json")?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ledger::default(),
            Err(e) => return Err(e.into()),
        };
        Ok(Ca {
            dir: dir.to_owned(),
            issuer: Issuer::new(ca_params(), key),
            ledger,
        })
    }

    /// The CA certificate (PEM).
    pub fn certificate(&self) -> Result<String> {
        std::fs::read_to_string(self.dir.join("ca.pem")).context("ca.pem")
    }

    fn save(&self) -> Result<()> {
        fleetwave_artifacts::file::write_atomic(
            &self.dir.join("issued.json"),
            &serde_json::to_vec_pretty(&self.ledger).expect("serialises"),
        )
        .context("issued.json")
    }

    /// Issues a certificate for `cn`: a client certificate, or with `sans` a server one.
    /// Returns (certificate PEM, key PEM).
    pub fn issue(&mut self, cn: &str, sans: &[String]) -> Result<(String, String)> {
        if let Some(old) = self.ledger.issued.get(cn) {
            if !old.revoked {
                bail!(
                    "{cn} already has a certificate (serial {}); revoke it first",
                    old.serial
                );
            }
        }
        let mut params = CertificateParams::new(sans.to_vec()).context("names")?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.extended_key_usages = if sans.is_empty() {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        };
        params.use_authority_key_identifier_extension = true;
        let serial: [u8; 16] = rand_serial()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(2045, 1, 1);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer).context("signing")?;
        self.ledger.issued.insert(
            cn.to_owned(),
            Issued {
                serial: hex::encode(serial),
                revoked: false,
            },
        );
        self.save()?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues device `id` its bundle in `out`: `device.pem`, `device.key` (0600), `ca.pem`.
    pub fn provision(&mut self, id: &str, out: &Path) -> Result<()> {
        fleetwave_artifacts::DeviceId::parse(id).context("device id")?;
        std::fs::create_dir_all(out)?;
        let (cert, key) = self.issue(id, &[])?;
        write_secret(&out.join("device.key"), &key)?;
        std::fs::write(out.join("device.pem"), cert)?;
        std::fs::write(out.join("ca.pem"), self.certificate()?)?;
        Ok(())
    }

    /// Revokes `cn`'s certificate and rewrites `crl.pem`.
    pub fn revoke(&mut self, cn: &str) -> Result<()> {
        let entry = self
            .ledger
            .issued
            .get_mut(cn)
            .with_context(|| format!("{cn} has no certificate from this CA"))?;
        entry.revoked = true;
        self.save()?;
        self.write_crl()
    }

    fn write_crl(&mut self) -> Result<()> {
        self.ledger.crl_number += 1;
        let now = time::OffsetDateTime::now_utc();
        let revoked = self
            .ledger
            .issued
            .values()
            .filter(|i| i.revoked)
            .map(|i| -> Result<RevokedCertParams> {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&hex::decode(&i.serial)?),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let crl = CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(3650),
            crl_number: SerialNumber::from(self.ledger.crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .context("signing the CRL")?;
        fleetwave_artifacts::file::write_atomic(&self.dir.join("crl.pem"), crl.pem()?.as_bytes())
            .context("crl.pem")?;
        self.save()
    }

    /// Writes a Mosquitto configuration into `out`: a TLS listener on `port` requiring client
    /// certificates from this CA (identity = CN), honouring the CRL, with ACLs confining each
    /// device to `{prefix}/things/<its id>/#` and read-only group notices; the service gets
    /// its own certificate (`service.pem`/`service.key`, CN `service_cn`) allowed everywhere
    /// under the prefix. The server certificate names `hosts`.
    pub fn broker_config(
        &mut self,
        out: &Path,
        port: u16,
        hosts: &[String],
        prefix: &str,
        service_cn: &str,
    ) -> Result<PathBuf> {
        std::fs::create_dir_all(out)?;
        let (server, server_key) = self.issue(&format!("broker-{}", hosts.join("-")), hosts)?;
        std::fs::write(out.join("server.pem"), server)?;
        write_secret(&out.join("server.key"), &server_key)?;
        let (service, service_key) = self.issue(service_cn, &[])?;
        std::fs::write(out.join("service.pem"), service)?;
        write_secret(&out.join("service.key"), &service_key)?;
        std::fs::write(out.join("ca.pem"), self.certificate()?)?;
        std::fs::copy(self.dir.join("crl.pem"), out.join("crl.pem"))?;
        let acl = format!(
            "# Generated by fleetwave broker config. The service may use every topic under the\n\
             # prefix; each device (its certificate's CN) only its own, and read its groups' notices.\n\
             user {service_cn}\ntopic readwrite {prefix}/#\n\n\
             pattern readwrite {prefix}/things/%u/#\n\
             pattern read {prefix}/groups/+/jobs/notify\n"
        );
        std::fs::write(out.join("acl"), acl)?;
        let o = out.canonicalize()?;
        let conf = format!(
            "# Generated by fleetwave broker config: mutual TLS, identity = certificate CN.\n\
             # The key files must be readable by the user Mosquitto runs as.\n\
             per_listener_settings true\n\
             listener {port}\n\
             allow_anonymous false\n\
             cafile {o}/ca.pem\n\
             certfile {o}/server.pem\n\
             keyfile {o}/server.key\n\
             crlfile {o}/crl.pem\n\
             require_certificate true\n\
             use_identity_as_username true\n\
             tls_version tlsv1.2\n\
             acl_file {o}/acl\n\
             {BROKER_LIMITS}",
            o = o.display()
        );
        let path = out.join("mosquitto.conf");
        std::fs::write(&path, conf)?;
        Ok(path)
    }
}

/// Mosquitto's message limits for a fleet. The service acknowledges device messages only
/// after committing them, a batch per transaction, so its window must hold a batch (the
/// default of 20 in flight caps each batch at 20); and a burst from the fleet must queue for
/// the service, not be dropped (the default queue of 1000 messages per client drops the rest).
pub const BROKER_LIMITS: &str = "\
# Four batches of device messages in flight to the service (one handled while the next
# arrive), and bursts queued, never dropped.
max_inflight_messages 1024
max_queued_messages 1000000
";

fn rand_serial() -> Result<[u8; 16]> {
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| anyhow::anyhow!("random serial: {e}"))?;
    serial[0] &= 0x7f; // positive
    serial[0] |= 0x01; // no leading zero byte
    Ok(serial)
}
