//! `fleetwave rollout create|list|status|pause|resume|cancel|approve`: the release
//! engineer's rollout verbs over the API. `status --watch` draws a live bar per wave with its
//! counts and exits non-zero when the rollout halts or is canceled.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde_json::{Value, json};

use super::Output;
use super::client::{Client, ServerArgs, encode};
use crate::rollouts::spec::{FailureKind, HaltRule, NewRollout, Retry, Size, Target, Wave, Window};

/// Rollout verbs.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a rollout of a release to a group or a device list, in waves.
    Create(Box<CreateArgs>),
    /// List rollouts, newest first.
    List {
        /// Only rollouts in this state (RUNNING, HALTED, ...).
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Show a rollout's waves and counts; --watch follows it live until it ends.
    Status {
        /// Rollout id.
        id: String,
        /// Follow it with a progress bar per wave until it completes, halts or is canceled
        /// (exit status 1 unless it completes).
        #[arg(long)]
        watch: bool,
        /// How often to refresh while watching.
        #[arg(long, default_value = "1s")]
        interval: humantime::Duration,
    },
    /// Pause: nothing more is queued, no wave advances.
    Pause {
        /// Rollout id.
        id: String,
    },
    /// Resume a paused rollout.
    Resume {
        /// Rollout id.
        id: String,
    },
    /// Cancel for good; queued devices are canceled.
    Cancel {
        /// Rollout id.
        id: String,
    },
    /// Approve a gated wave (default: the next one).
    Approve {
        /// Rollout id.
        id: String,
        /// The wave, from 1.
        #[arg(long)]
        wave: Option<u32>,
    },
}

/// What `rollout create` takes.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The whole request as a JSON file (the API's body); no other flag is allowed with it.
    #[arg(long, conflicts_with_all = ["release", "group", "devices", "waves", "name"])]
    file: Option<PathBuf>,
    /// The release id.
    #[arg(long, required_unless_present = "file")]
    release: Option<String>,
    /// A name for the rollout.
    #[arg(long)]
    name: Option<String>,
    /// Target a static or dynamic group.
    #[arg(long, conflicts_with = "devices", required_unless_present_any = ["file", "devices"])]
    group: Option<String>,
    /// Target these devices (comma-separated).
    #[arg(long, value_delimiter = ',')]
    devices: Vec<String>,
    /// A wave, repeated in order: SIZE[,soak=DURATION][,success=PERCENT][,halt=KIND:LIMIT]
    /// [,approval], where SIZE is 10% or a count and LIMIT is 5% (a rate) or 3 (a count), KIND
    /// one of FAILED, REJECTED, TIMED_OUT, ANY. Example: --wave 1%,soak=30m,halt=ANY:1
    #[arg(long = "wave", value_parser = parse_wave, required_unless_present = "file")]
    waves: Vec<Wave>,
    /// How long a device may stay in progress before it is timed out.
    #[arg(long, default_value = "1h")]
    timeout: humantime::Duration,
    /// Attempts per device, the first included.
    #[arg(long, default_value_t = 1)]
    attempts: u32,
    /// Wait before the first retry (doubling after each).
    #[arg(long, default_value = "1m")]
    backoff: humantime::Duration,
    /// Which failures are retried.
    #[arg(long, value_delimiter = ',', default_value = "FAILED,TIMED_OUT")]
    retry_on: Vec<FailureKind>,
    /// Not before this time (RFC 3339).
    #[arg(long)]
    start_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Cancel what is unfinished at this time (RFC 3339).
    #[arg(long)]
    end_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Maintenance window: 'CRON;DURATION[;TIME_ZONE]', e.g. '0 2 * * *;2h;Europe/Berlin'.
    #[arg(long, value_parser = parse_window)]
    window: Option<Window>,
    /// At most this many devices queued per minute.
    #[arg(long)]
    rate: Option<u32>,
}

fn parse_wave(text: &str) -> Result<Wave, String> {
    let mut parts = text.split(',');
    let size: Size = parts.next().unwrap_or_default().parse()?;
    let mut wave = Wave {
        size,
        soak_secs: 0,
        success_percent: 100.0,
        halt: Vec::new(),
        approval: false,
    };
    for part in parts {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        match key.trim() {
            "soak" => {
                wave.soak_secs = humantime::parse_duration(value)
                    .map_err(|e| format!("soak={value}: {e}"))?
                    .as_secs();
            }
            "success" => {
                wave.success_percent = value
                    .trim_end_matches('%')
                    .parse()
                    .map_err(|_| format!("success={value}: not a percentage"))?;
            }
            "halt" => {
                let (kind, limit) = value
                    .split_once(':')
                    .ok_or_else(|| format!("halt={value}: write KIND:LIMIT, e.g. FAILED:5%"))?;
                let on: FailureKind = kind.parse()?;
                let rule = match limit.parse::<Size>()? {
                    Size::Percent(p) => HaltRule {
                        on,
                        rate_percent: Some(p),
                        count: None,
                    },
                    Size::Count(c) => HaltRule {
                        on,
                        rate_percent: None,
                        count: Some(c),
                    },
                };
                wave.halt.push(rule);
            }
            "approval" => wave.approval = true,
            other => {
                return Err(format!(
                    "unknown wave option {other:?} (soak, success, halt, approval)"
                ));
            }
        }
    }
    Ok(wave)
}

fn parse_window(text: &str) -> Result<Window, String> {
    let mut parts = text.split(';');
    let cron = parts.next().unwrap_or_default().trim().to_owned();
    let duration = parts
        .next()
        .ok_or("write 'CRON;DURATION[;TIME_ZONE]'")?
        .trim();
    let duration = humantime::parse_duration(duration).map_err(|e| format!("{duration}: {e}"))?;
    Ok(Window {
        cron,
        duration_secs: duration.as_secs(),
        time_zone: parts.next().map_or("UTC", str::trim).to_owned(),
    })
}

impl CreateArgs {
    fn request(&self) -> Result<Value> {
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let request: NewRollout = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a rollout request", path.display()))?;
            return Ok(serde_json::to_value(request)?);
        }
        let target = match &self.group {
            Some(g) => Target::Group(g.clone()),
            None => Target::Devices(self.devices.clone()),
        };
        let request = NewRollout {
            name: self.name.clone(),
            release: self.release.clone().unwrap_or_default(),
            target,
            waves: self.waves.clone(),
            in_progress_timeout_secs: self.timeout.as_secs(),
            retry: Retry {
                attempts: self.attempts,
                backoff_secs: self.backoff.as_secs(),
                on: self.retry_on.clone(),
            },
            start_at: self.start_at,
            end_at: self.end_at,
            maintenance_window: self.window.clone(),
            rate_per_minute: self.rate,
        };
        request.check()?;
        Ok(serde_json::to_value(request)?)
    }
}

/// Runs a rollout verb.
pub async fn run(cmd: Command, server: &ServerArgs, out: Output) -> Result<()> {
    let client = Client::new(server)?;
    match cmd {
        Command::Create(args) => {
            let rollout = client
                .json(Method::POST, "/v1/rollouts", &args.request()?)
                .await?;
            out.emit(
                format!(
                    "rollout {} created ({}): {} wave(s), state {}",
                    rollout["id"].as_str().unwrap_or(""),
                    rollout["name"].as_str().unwrap_or(""),
                    rollout["waves"],
                    rollout["state"].as_str().unwrap_or("")
                ),
                &rollout,
            );
        }
        Command::List { state, limit } => {
            let mut path = format!("/v1/rollouts?limit={limit}");
            if let Some(s) = state {
                path.push_str(&format!("&state={}", encode(&s.to_ascii_uppercase())));
            }
            let list = client.get(&path).await?;
            let lines: Vec<String> = list
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    format!(
                        "{}  {:<10} wave {}/{}  {}  {}",
                        r["id"].as_str().unwrap_or(""),
                        r["state"].as_str().unwrap_or(""),
                        r["wave"],
                        r["waves"],
                        r["name"].as_str().unwrap_or(""),
                        r["reason"].as_str().unwrap_or("")
                    )
                })
                .collect();
            let human = if lines.is_empty() {
                "no rollouts".to_owned()
            } else {
                lines.join("\n")
            };
            out.emit(human, &list);
        }
        Command::Status {
            id,
            watch,
            interval,
        } => {
            let path = format!("/v1/rollouts/{}", encode(&id));
            if watch {
                return follow(&client, &path, interval.into(), out).await;
            }
            let status = client.get(&path).await?;
            out.emit(describe(&status), &status);
        }
        Command::Pause { id } => act(&client, &id, "pause", json!({}), out).await?,
        Command::Resume { id } => act(&client, &id, "resume", json!({}), out).await?,
        Command::Cancel { id } => act(&client, &id, "cancel", json!({}), out).await?,
        Command::Approve { id, wave } => {
            act(&client, &id, "approve", json!({"wave": wave}), out).await?
        }
    }
    Ok(())
}

async fn act(client: &Client, id: &str, verb: &str, body: Value, out: Output) -> Result<()> {
    let rollout = client
        .json(
            Method::POST,
            &format!("/v1/rollouts/{}/{verb}", encode(id)),
            &body,
        )
        .await?;
    out.emit(
        format!(
            "rollout {id}: {}{}",
            rollout["state"].as_str().unwrap_or(""),
            rollout["reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
        &rollout,
    );
    Ok(())
}

/// The rollout's state and each wave's counts, as text.
pub fn describe(status: &Value) -> String {
    let mut text = format!(
        "rollout {} ({}): {} · wave {}/{}{}\n",
        status["id"].as_str().unwrap_or(""),
        status["name"].as_str().unwrap_or(""),
        status["state"].as_str().unwrap_or(""),
        status["wave"],
        status["waves"],
        status["reason"]
            .as_str()
            .map(|r| format!(" · {r}"))
            .unwrap_or_default()
    );
    for wave in status["wave_status"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        text.push_str(&format!("  wave {}: {}\n", wave["wave"], counts(&wave)));
    }
    let incompatible = status["incompatible"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !incompatible.is_empty() {
        text.push_str("  incompatible devices:\n");
        for d in incompatible {
            text.push_str(&format!(
                "    {} {}: {}\n",
                d["device"].as_str().unwrap_or(""),
                d["reason"].as_str().unwrap_or(""),
                d["detail"].as_str().unwrap_or("")
            ));
        }
    }
    text.trim_end().to_owned()
}

fn n(wave: &Value, key: &str) -> i64 {
    wave[key].as_i64().unwrap_or(0)
}

fn counts(wave: &Value) -> String {
    let mut parts = vec![format!(
        "{}/{} succeeded",
        n(wave, "succeeded"),
        n(wave, "planned") - n(wave, "incompatible")
    )];
    for (key, label) in [
        ("queued", "queued"),
        ("in_progress", "in progress"),
        ("failed", "failed"),
        ("rejected", "rejected"),
        ("timed_out", "timed out"),
        ("retrying", "retrying"),
        ("canceled", "canceled"),
        ("incompatible", "incompatible"),
    ] {
        if n(wave, key) > 0 {
            parts.push(format!("{} {label}", n(wave, key)));
        }
    }
    parts.join(" · ")
}

/// Follows a rollout until it ends: a bar per wave on stderr (JSON lines on stdout with
/// `--json`); fails unless it completes.
pub async fn follow(client: &Client, path: &str, every: Duration, out: Output) -> Result<()> {
    let bars = MultiProgress::with_draw_target(if out.progress() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template("wave {prefix:>2} [{bar:30}] {pos}/{len} {msg}")
        .expect("the template is valid")
        .progress_chars("=> ");
    let header = bars.add(ProgressBar::new_spinner());
    let mut wave_bars: Vec<ProgressBar> = Vec::new();
    loop {
        let status = client.get(path).await?;
        if out.json {
            println!("{status}");
        }
        let waves = status["wave_status"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        while wave_bars.len() < waves.len() {
            let bar = bars.add(ProgressBar::new(0));
            bar.set_style(style.clone());
            bar.set_prefix((wave_bars.len() + 1).to_string());
            wave_bars.push(bar);
        }
        for (bar, wave) in wave_bars.iter().zip(&waves) {
            let done = ["succeeded", "failed", "rejected", "timed_out", "canceled"]
                .iter()
                .map(|k| n(wave, k))
                .sum::<i64>();
            bar.set_length(
                u64::try_from(n(wave, "planned") - n(wave, "incompatible")).unwrap_or(0),
            );
            bar.set_position(u64::try_from(done).unwrap_or(0));
            bar.set_message(counts(wave));
        }
        let state = status["state"].as_str().unwrap_or("").to_owned();
        header.set_message(format!(
            "{} · wave {}/{}{}",
            state,
            status["wave"],
            status["waves"],
            status["reason"]
                .as_str()
                .map(|r| format!(" · {r}"))
                .unwrap_or_default()
        ));
        if matches!(state.as_str(), "COMPLETED" | "HALTED" | "CANCELED") {
            for bar in &wave_bars {
                bar.abandon();
            }
            header.abandon();
            if !out.json {
                println!("{}", describe(&status));
            }
            if state == "COMPLETED" {
                return Ok(());
            }
            bail!(
                "rollout {}: {}",
                state.to_lowercase(),
                status["reason"].as_str().unwrap_or("no reason given")
            );
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_parse_from_their_short_form() {
        let w = parse_wave("1%,soak=30m,success=95%,halt=FAILED:5%,halt=ANY:3,approval").unwrap();
        assert_eq!(w.size, Size::Percent(1.0));
        assert_eq!(w.soak_secs, 1800);
        assert_eq!(w.success_percent, 95.0);
        assert_eq!(
            w.halt[0],
            HaltRule {
                on: FailureKind::Failed,
                rate_percent: Some(5.0),
                count: None
            }
        );
        assert_eq!(
            w.halt[1],
            HaltRule {
                on: FailureKind::Any,
                rate_percent: None,
                count: Some(3)
            }
        );
        assert!(w.approval);
        assert!(parse_wave("10%,bogus=1").unwrap_err().contains("bogus"));
        assert!(parse_wave("ten").is_err());
        let window = parse_window("0 2 * * *;2h;Europe/Berlin").unwrap();
        assert_eq!(
            (window.duration_secs, window.time_zone.as_str()),
            (7200, "Europe/Berlin")
        );
    }
}
