//! systemd integration without a C library: `READY=1` once the agent is up and `WATCHDOG=1`
//! at half the `WatchdogSec` interval, sent as datagrams to `$NOTIFY_SOCKET`. Outside
//! systemd (no socket in the environment) it does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn notify(message: &str) -> std::io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let socket = UnixDatagram::unbound()?;
    let path = std::path::PathBuf::from(path);
    if path.as_os_str().as_encoded_bytes().first() == Some(&b'@') {
        // Abstract sockets are not supported here; systemd uses a path by default.
        return Ok(());
    }
    socket.send_to(message.as_bytes(), path)?;
    Ok(())
}

/// Tells systemd the agent is ready and keeps its watchdog fed while the runtime lives.
pub fn start() {
    if let Err(e) = notify("READY=1") {
        tracing::warn!(error = %e, "telling systemd we are ready");
    }
    let Some(usec) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let every = Duration::from_micros(usec / 2).max(Duration::from_millis(500));
    tokio::spawn(async move {
        loop {
            if let Err(e) = notify("WATCHDOG=1") {
                tracing::warn!(error = %e, "feeding the systemd watchdog");
            }
            tokio::time::sleep(every).await;
        }
    });
}
