//! The health check of a trial boot: the configured command must exit 0 within the deadline
//! (its output is kept for the report); without a command, the built-in check (the broker is
//! reachable and the service answers) runs under the same deadline.

use std::future::Future;
use std::time::Duration;

use crate::state::machine::Failure;

/// Runs `command` (or `builtin` when it is empty) within `deadline`.
pub async fn check(
    command: &[String],
    deadline: Duration,
    builtin: impl Future<Output = Result<(), String>>,
) -> Result<(), Failure> {
    let Some((program, args)) = command.split_first() else {
        return match tokio::time::timeout(deadline, builtin).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(Failure::new("health_check_failed", why)),
            Err(_) => Err(Failure::new(
                "health_check_timeout",
                format!("the service did not answer within {deadline:?}"),
            )),
        };
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .output();
    match tokio::time::timeout(deadline, child).await {
        Err(_) => Err(Failure::new(
            "health_check_timeout",
            format!("{program} did not finish within {deadline:?}"),
        )),
        Ok(Err(e)) => Err(Failure::new(
            "health_check_failed",
            format!("running {program}: {e}"),
        )),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: String = stderr
                .trim()
                .chars()
                .rev()
                .take(200)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(Failure::new(
                "health_check_failed",
                format!("{program} exited with {}: {tail}", out.status),
            ))
        }
    }
}
