//! A compromised or broken server, bucket or broker can stop an update, never install its
//! own: every bad case is refused with its reason and the device stays as it was. The job
//! documents here are published straight to the device's `notify-next` topic, as a
//! compromised broker would, for a real job so the service records the outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as HttpStatus};
use axum::response::{IntoResponse, Response};
use fleetwave_agent::download::CHUNK;
use fleetwave_artifacts::protocol::jobs::{ExecutionState, JobDocument};
use fleetwave_artifacts::{SecretKey, SignedManifest, Timestamp};
use fleetwave_tests::harness::agent::{AgentOptions, TestAgent};
use rumqttc::QoS;

use super::{World, device_id, manifest};

/// What the test's image server does.
#[derive(Clone)]
struct Served {
    image: Arc<Vec<u8>>,
    /// Bytes of the body sent, over all requests.
    sent: Arc<AtomicU64>,
    /// Requests so far.
    requests: Arc<AtomicU64>,
}

/// `/good`: the image, with Range; `/flip`: one bit flipped; `/big`: the image and more;
/// `/short`: always half, then the connection closes; `/break-once`: the first request
/// breaks off after 1.5 chunks, later ones honour Range; `/expired`: 403.
async fn serve(
    State(s): State<Served>,
    axum::extract::Path(kind): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let n = s.requests.fetch_add(1, Ordering::SeqCst);
    let mut body = (*s.image).clone();
    match kind.as_str() {
        "flip" => {
            let third = body.len() / 3;
            body[third] ^= 0x10;
        }
        "big" => body.extend_from_slice(&[0u8; 4096]),
        "expired" => return (HttpStatus::FORBIDDEN, "Request has expired").into_response(),
        _ => {}
    }
    let from: usize = headers
        .get("range")
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse().ok())
        .unwrap_or(0);
    let status = if from > 0 {
        HttpStatus::PARTIAL_CONTENT
    } else {
        HttpStatus::OK
    };
    let mut part = body[from.min(body.len())..].to_vec();
    let cut = match kind.as_str() {
        "short" => Some(body.len() / 2 - from.min(body.len() / 2)),
        "break-once" if n == 0 => Some((CHUNK + CHUNK / 2) as usize),
        _ => None,
    };
    let sent = s.sent.clone();
    if let Some(cut) = cut {
        // Declare the full length, send `cut` bytes, then end the body with an error: the
        // connection breaks off.
        part.truncate(cut);
        sent.fetch_add(part.len() as u64, Ordering::SeqCst);
        let full = (body.len() - from) as u64;
        let stream = futures::stream::iter(vec![
            Ok::<_, std::io::Error>(bytes::Bytes::from(part)),
            Err(std::io::Error::other("connection lost")),
        ]);
        return Response::builder()
            .status(status)
            .header("content-length", full)
            .body(axum::body::Body::from_stream(stream))
            .unwrap();
    }
    sent.fetch_add(part.len() as u64, Ordering::SeqCst);
    (status, part).into_response()
}

async fn image_server(image: Vec<u8>) -> (String, Served) {
    let served = Served {
        image: Arc::new(image),
        sent: Arc::new(AtomicU64::new(0)),
        requests: Arc::new(AtomicU64::new(0)),
    };
    let router = axum::Router::new()
        .route("/{kind}", axum::routing::get(serve))
        .with_state(served.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (base, served)
}

/// Publishes `doc` on the device's notify-next topic, as the broker would deliver it.
async fn deliver(world: &World, device: &str, doc: &JobDocument) {
    let (client, mut events) = world
        .app
        .mqtt
        .client(&format!("forger-{}", fleetwave_tests::harness::unique_id()));
    let pump = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    client
        .publish(
            format!("{}/things/{device}/jobs/notify-next", world.app.mqtt.prefix),
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(doc).unwrap(),
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    pump.abort();
}

fn doc(job: &str, manifest: SignedManifest, url: String) -> JobDocument {
    JobDocument {
        job: job.to_owned(),
        release: "forged".to_owned(),
        execution_number: 1,
        state: ExecutionState::Queued,
        manifest,
        url,
        url_expires_at: Timestamp::now().unix() + 3600,
    }
}

/// A job for `device` created in the database alone, so the service sends the device
/// nothing: the test delivers the (forged) document itself.
async fn silent_job(world: &World, device: &str) -> String {
    let actor = fleetwave::audit::Actor::system();
    fleetwave::jobs::create_for_device(&world.app.db, &actor, &world.release, device)
        .await
        .unwrap()
        .id
}

/// Starts an agent and waits until it is up and idle (it reported its firmware).
async fn idle_agent(world: &World, options: &AgentOptions) -> TestAgent {
    world.app.register_device(&options.id).await;
    let mut agent = TestAgent::new(&world.app.mqtt, options).unwrap();
    if let Some(state) = seeded_state(options) {
        std::fs::create_dir_all(agent.dir.join("data")).unwrap();
        std::fs::write(agent.dir.join("data/state.json"), state).unwrap();
    }
    agent.start();
    for _ in 0..100 {
        if world.registry(&options.id).await["firmware_version"].is_string() {
            return agent;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the agent did not report its firmware: {}", agent.log());
}

/// A device that once committed a release with security floor 1.5.0 (it runs 1.8.0).
fn seeded_state(options: &AgentOptions) -> Option<String> {
    (options.version == "1.8.0").then(|| {
        serde_json::json!({"phase": "Idle", "work": null, "version_a": "1.8.0", "version_b": null,
            "security_floor": "1.5.0", "finished": []})
        .to_string()
    })
}

/// One bad case: the device is sent `forged` for a real job and must end with `state` and
/// `code`, unchanged.
async fn refused(
    world: &World,
    options: AgentOptions,
    state: &str,
    code: &str,
    forged: impl Fn(&str) -> JobDocument,
) {
    let id = options.id.clone();
    let mut agent = idle_agent(world, &options).await;
    let job = silent_job(world, &id).await;
    deliver(world, &id, &forged(&job)).await;
    let e = world.finished(&job, &id, || agent.log()).await;
    assert_eq!(
        (e["state"].as_str(), e["error_code"].as_str()),
        (Some(state), Some(code)),
        "{e}\n{}",
        agent.log()
    );
    let boot = agent.bootloader();
    assert_eq!(
        (boot["default"].as_str(), boot["booted"].as_str()),
        (Some("a"), Some("a")),
        "{boot}"
    );
    assert_eq!(agent.slot("a"), agent.original, "slot A unchanged");
    assert_eq!(
        world.registry(&id).await["firmware_version"],
        options.version.as_str()
    );
    // The agent goes idle once the service confirmed the report.
    assert_eq!(agent.settled("Idle").await["phase"], "Idle");
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_case_is_refused_and_the_device_stays_unchanged() {
    let world = World::new(CHUNK as usize * 2 + 500).await;
    let (base, _) = image_server(world.image.clone()).await;
    let trusted = |m| SignedManifest::sign(m, &[&world.key]).unwrap();
    let good = trusted(manifest(&world.image, "2.0.0", 86_400));
    let options = |name: &str| AgentOptions::new(&device_id(name), world.key.public());

    // One flipped bit in the image.
    refused(
        &world,
        options("flip"),
        "REJECTED",
        "digest_mismatch",
        |job| doc(job, good.clone(), format!("{base}/flip")),
    )
    .await;
    // Signed by a key the device does not trust.
    let stranger = SecretKey::generate().unwrap();
    let foreign =
        SignedManifest::sign(manifest(&world.image, "2.0.0", 86_400), &[&stranger]).unwrap();
    refused(
        &world,
        options("stranger"),
        "REJECTED",
        "unknown_key",
        |job| doc(job, foreign.clone(), format!("{base}/good")),
    )
    .await;
    // Two signatures required, one given.
    let second = SecretKey::generate().unwrap();
    let mut two = options("threshold");
    two.keys.push(second.public());
    two.threshold = 2;
    refused(&world, two, "REJECTED", "below_threshold", |job| {
        doc(job, good.clone(), format!("{base}/good"))
    })
    .await;
    // A downgrade below the device's security floor.
    let mut floored = options("floor");
    floored.version = "1.8.0".into();
    let old = trusted(manifest(&world.image, "1.2.0", 86_400));
    refused(&world, floored, "REJECTED", "below_security_floor", |job| {
        doc(job, old.clone(), format!("{base}/good"))
    })
    .await;
    // For other hardware.
    let mut rpi5 = manifest(&world.image, "2.0.0", 86_400);
    rpi5.hardware = vec![fleetwave_artifacts::HardwareId::parse("rpi5").unwrap()];
    let rpi5 = trusted(rpi5);
    refused(
        &world,
        options("hardware"),
        "REJECTED",
        "incompatible_hardware",
        |job| doc(job, rpi5.clone(), format!("{base}/good")),
    )
    .await;
    // Expired.
    let expired = trusted(manifest(&world.image, "2.0.0", -10));
    refused(
        &world,
        options("expired"),
        "REJECTED",
        "manifest_expired",
        |job| doc(job, expired.clone(), format!("{base}/good")),
    )
    .await;
    // A server that sends more than the signed size.
    refused(
        &world,
        options("big"),
        "REJECTED",
        "exceeds_signed_size",
        |job| doc(job, good.clone(), format!("{base}/big")),
    )
    .await;
    // A download that always breaks off halfway.
    refused(
        &world,
        options("short"),
        "FAILED",
        "download_failed",
        |job| doc(job, good.clone(), format!("{base}/short")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_url_is_replaced_through_the_service() {
    let world = World::new(300_000).await;
    let (base, _) = image_server(world.image.clone()).await;
    let good =
        SignedManifest::sign(manifest(&world.image, "2.0.0", 86_400), &[&world.key]).unwrap();
    let options = AgentOptions::new(&device_id("expired-url"), world.key.public());
    let agent = idle_agent(&world, &options).await;
    let job = silent_job(&world, &options.id).await;
    deliver(
        &world,
        &options.id,
        &doc(&job, good, format!("{base}/expired")),
    )
    .await;
    let e = world.finished(&job, &options.id, || agent.log()).await;
    assert_eq!(e["state"], "SUCCEEDED", "{e}\n{}", agent.log());
    assert!(
        agent.log().contains("asking for a fresh one"),
        "{}",
        agent.log()
    );
    assert_eq!(agent.slot("b"), world.image);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_download_resumes_and_refetches_less_than_a_chunk() {
    let world = World::new(CHUNK as usize * 3 + 4321).await;
    let (base, served) = image_server(world.image.clone()).await;
    let good =
        SignedManifest::sign(manifest(&world.image, "2.0.0", 86_400), &[&world.key]).unwrap();
    let options = AgentOptions::new(&device_id("resume"), world.key.public());
    let agent = idle_agent(&world, &options).await;
    let job = silent_job(&world, &options.id).await;
    deliver(
        &world,
        &options.id,
        &doc(&job, good, format!("{base}/break-once")),
    )
    .await;
    let e = world.finished(&job, &options.id, || agent.log()).await;
    assert_eq!(e["state"], "SUCCEEDED", "{e}\n{}", agent.log());
    assert_eq!(agent.slot("b"), world.image);
    let requests = served.requests.load(Ordering::SeqCst);
    let refetched = served.sent.load(Ordering::SeqCst) - world.image.len() as u64;
    assert!(requests >= 2, "it resumed with a second request");
    assert!(
        refetched < CHUNK,
        "{refetched} bytes fetched again, less than one chunk ({CHUNK})"
    );
    assert!(
        agent.log().contains("download interrupted"),
        "{}",
        agent.log()
    );
}

/// An HTTPS server for `image` with a certificate for 127.0.0.1 issued by a fresh CA; returns
/// its URL and the CA's PEM. Minimal HTTP/1.1: one GET per connection, the whole image.
async fn https_server(image: Vec<u8>) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fleetwave_tests::harness::init();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone(), ca.der().clone()],
            tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der())
                .unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}/image",
        listener.local_addr().unwrap().port()
    );
    let image = Arc::new(image);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let image = image.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    image.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(&image).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (url, ca.pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_over_https_verify_the_server_certificate() {
    let world = World::new(200_000).await;
    let (url, ca) = https_server(world.image.clone()).await;
    let good =
        SignedManifest::sign(manifest(&world.image, "2.0.0", 86_400), &[&world.key]).unwrap();
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ca).unwrap();

    // Trusting the server's CA (as a device trusts its store's), the download goes through
    // the agent's pure-Rust TLS.
    let mut trusting = AgentOptions::new(&device_id("tls"), world.key.public());
    trusting.env = vec![("SSL_CERT_FILE".into(), ca_file.path().display().to_string())];
    let agent = idle_agent(&world, &trusting).await;
    let job = silent_job(&world, &trusting.id).await;
    deliver(&world, &trusting.id, &doc(&job, good.clone(), url.clone())).await;
    let e = world.finished(&job, &trusting.id, || agent.log()).await;
    assert_eq!(e["state"], "SUCCEEDED", "{e}\n{}", agent.log());
    assert_eq!(agent.slot("b"), world.image);

    // Without that CA the certificate is refused and nothing is installed.
    let distrusting = AgentOptions::new(&device_id("notls"), world.key.public());
    refused(&world, distrusting, "FAILED", "download_failed", |job| {
        doc(job, good.clone(), url.clone())
    })
    .await;
}
