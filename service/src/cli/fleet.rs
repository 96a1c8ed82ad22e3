//! The fleet verbs that call the API: `device add|list|show`, `group create|add|list`,
//! `token create`.

use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde_json::{Value, json};

use super::Output;
use super::client::{Client, ServerArgs, encode};

/// Device verbs.
#[derive(Debug, clap::Subcommand)]
pub enum DeviceCommand {
    /// Register a device.
    Add {
        /// Device id (its certificate CN).
        id: String,
        /// Hardware id.
        #[arg(long)]
        hardware: String,
        /// Serial number.
        #[arg(long)]
        serial: Option<String>,
        /// An attribute, KEY=VALUE (numbers and true/false are typed); repeat for several.
        #[arg(long = "attr", value_parser = parse_attr)]
        attrs: Vec<(String, Value)>,
    },
    /// List devices, optionally filtered.
    List {
        /// Only devices matching this query, e.g. 'hardware = "rpi4" and attributes.site = "sg-1"'.
        #[arg(long)]
        query: Option<String>,
        /// Only this hardware id.
        #[arg(long)]
        hardware: Option<String>,
    },
    /// Show one device.
    Show {
        /// Device id.
        id: String,
    },
    /// Issue the device its certificate (CN = id) and key from the CA directory (local).
    Provision {
        /// Device id.
        id: String,
        /// The CA directory.
        #[arg(long, default_value = "fleetwave-pki")]
        pki: std::path::PathBuf,
        /// Where to write device.pem, device.key and ca.pem.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Revoke the device's certificate: the CA's CRL lists it (local).
    Revoke {
        /// Device id.
        id: String,
        /// The CA directory.
        #[arg(long, default_value = "fleetwave-pki")]
        pki: std::path::PathBuf,
    },
}

/// Group verbs.
#[derive(Debug, clap::Subcommand)]
pub enum GroupCommand {
    /// Create a static group, or a dynamic one with --query.
    Create {
        /// Group name.
        name: String,
        /// The device query of a dynamic group.
        #[arg(long)]
        query: Option<String>,
    },
    /// Add devices to a static group.
    Add {
        /// Group name.
        name: String,
        /// Device ids.
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// List groups, or one group's devices.
    List {
        /// Show this group's devices.
        name: Option<String>,
    },
}

/// Token verbs.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create an API token (admin only); its secret is printed once.
    Create {
        /// admin, release or auditor.
        #[arg(long)]
        role: String,
        /// What the token is for.
        #[arg(long, default_value = "cli")]
        name: String,
    },
}

fn parse_attr(s: &str) -> Result<(String, Value), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))?;
    let value = match value {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        v => v
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| v.parse::<f64>().map(Value::from))
            .unwrap_or_else(|_| Value::String(v.to_owned())),
    };
    Ok((key.to_owned(), value))
}

fn device_line(d: &Value) -> String {
    format!(
        "{:<24} {:<10} {:<12} {}",
        d["id"].as_str().unwrap_or(""),
        d["hardware"].as_str().unwrap_or(""),
        d["firmware_version"].as_str().unwrap_or("-"),
        d["attributes"]
    )
}

fn device_table(devices: &[Value]) -> String {
    let mut out = format!(
        "{:<24} {:<10} {:<12} ATTRIBUTES",
        "ID", "HARDWARE", "FIRMWARE"
    );
    for d in devices {
        out.push('\n');
        out.push_str(&device_line(d));
    }
    out.push_str(&format!("\n{} device(s)", devices.len()));
    out
}

/// Runs a device verb.
pub async fn device(cmd: DeviceCommand, server: &ServerArgs, out: Output) -> Result<()> {
    let client = Client::new(server)?;
    match cmd {
        DeviceCommand::Add {
            id,
            hardware,
            serial,
            attrs,
        } => {
            let attributes: serde_json::Map<String, Value> = attrs.into_iter().collect();
            let body =
                json!({"id": id, "hardware": hardware, "serial": serial, "attributes": attributes});
            let d = client.json(Method::POST, "/v1/devices", &body).await?;
            out.emit(format_args!("registered {}", device_line(&d)), &d);
        }
        DeviceCommand::List { query, hardware } => {
            let mut path = "/v1/devices?limit=1000".to_owned();
            if let Some(q) = &query {
                path.push_str(&format!("&query={}", encode(q)));
            }
            if let Some(h) = &hardware {
                path.push_str(&format!("&hardware={}", encode(h)));
            }
            let devices = client.all_pages(&path).await?;
            out.emit(device_table(&devices), &Value::Array(devices.clone()));
        }
        DeviceCommand::Show { id } => {
            let d = client.get(&format!("/v1/devices/{}", encode(&id))).await?;
            let pretty = serde_json::to_string_pretty(&d).context("formatting")?;
            out.emit(pretty, &d);
        }
        DeviceCommand::Provision { .. } | DeviceCommand::Revoke { .. } => {
            bail!("provision and revoke work on the CA directory, not the service")
        }
    }
    Ok(())
}

/// Runs a group verb.
pub async fn group(cmd: GroupCommand, server: &ServerArgs, out: Output) -> Result<()> {
    let client = Client::new(server)?;
    match cmd {
        GroupCommand::Create { name, query } => {
            let g = client
                .json(
                    Method::POST,
                    "/v1/groups",
                    &json!({"name": name, "query": query}),
                )
                .await?;
            out.emit(
                format_args!("created {} group {name}", g["kind"].as_str().unwrap_or("")),
                &g,
            );
        }
        GroupCommand::Add { name, devices } => {
            let r = client
                .json(
                    Method::POST,
                    &format!("/v1/groups/{}/members", encode(&name)),
                    &json!({"devices": devices}),
                )
                .await?;
            out.emit(format_args!("added {} device(s) to {name}", r["added"]), &r);
        }
        GroupCommand::List { name: Some(name) } => {
            let devices = client
                .all_pages(&format!("/v1/groups/{}/devices?limit=1000", encode(&name)))
                .await?;
            out.emit(device_table(&devices), &Value::Array(devices.clone()));
        }
        GroupCommand::List { name: None } => {
            let groups = client.get("/v1/groups").await?;
            let Some(list) = groups.as_array() else {
                bail!("the service answered with something other than a list of groups");
            };
            let mut text = format!("{:<24} {:<8} QUERY", "NAME", "KIND");
            for g in list {
                text.push_str(&format!(
                    "\n{:<24} {:<8} {}",
                    g["name"].as_str().unwrap_or(""),
                    g["kind"].as_str().unwrap_or(""),
                    g["query"].as_str().unwrap_or("")
                ));
            }
            out.emit(text, &groups);
        }
    }
    Ok(())
}

/// Runs a token verb.
pub async fn token(cmd: TokenCommand, server: &ServerArgs, out: Output) -> Result<()> {
    let client = Client::new(server)?;
    match cmd {
        TokenCommand::Create { role, name } => {
            let t = client
                .json(
                    Method::POST,
                    "/v1/tokens",
                    &json!({"name": name, "role": role}),
                )
                .await?;
            out.emit(
                format_args!(
                    "created {} token {} (shown once):\n{}",
                    t["role"].as_str().unwrap_or(""),
                    t["id"].as_str().unwrap_or(""),
                    t["secret"].as_str().unwrap_or("")
                ),
                &t,
            );
        }
    }
    Ok(())
}
