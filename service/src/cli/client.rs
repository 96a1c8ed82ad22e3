//! The command line's HTTP client for the fleetwave API: where the service is, which token to
//! use, and API errors turned into one-line messages with their stable code.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::{Method, RequestBuilder, Response};
use serde::Serialize;
use serde_json::Value;

/// Where the service is and who is asking.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The service's base URL.
    #[arg(
        long,
        env = "FLEETWAVE_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// The API token (default: the file given by --token-file).
    #[arg(long, env = "FLEETWAVE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A file holding the API token; `fleetwave serve` writes the bootstrap admin token to
    /// fleetwave-data/admin.token.
    #[arg(
        long,
        env = "FLEETWAVE_TOKEN_FILE",
        default_value = "fleetwave-data/admin.token",
        global = true
    )]
    pub token_file: PathBuf,
}

/// An API error with its stable code, for `--json` output and exit messages.
#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiFailure {
    /// HTTP status.
    pub status: u16,
    /// The API's stable code.
    pub code: String,
    /// The API's message.
    pub message: String,
}

/// A client bound to one service and token.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// Resolves the token and builds the client.
    pub fn new(args: &ServerArgs) -> Result<Self> {
        let token = match &args.token {
            Some(t) => t.clone(),
            None => std::fs::read_to_string(&args.token_file)
                .map(|t| t.trim().to_owned())
                .with_context(|| {
                    format!(
                        "no API token: pass --token or FLEETWAVE_TOKEN, or point --token-file at one (tried {})",
                        args.token_file.display()
                    )
                })?,
        };
        Ok(Client {
            base: args.server.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
        })
    }

    /// A request to `path` under the base URL, with the token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends a request and returns its JSON body (Null when empty), or the API's error.
    pub async fn send(&self, request: RequestBuilder) -> Result<Value> {
        let response = request
            .send()
            .await
            .with_context(|| format!("reaching the fleetwave service at {}", self.base))?;
        json_or_failure(response).await
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> Result<Value> {
        self.send(self.request(Method::GET, path)).await
    }

    /// `method` `path` with a JSON body.
    pub async fn json(&self, method: Method, path: &str, body: &impl Serialize) -> Result<Value> {
        self.send(self.request(method, path).json(body)).await
    }

    /// Every item of a paged list, following cursors (`path` must already have a query).
    pub async fn all_pages(&self, path: &str) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page_path = match &cursor {
                Some(c) => format!("{path}&cursor={}", encode(c)),
                None => path.to_owned(),
            };
            let page = self.get(&page_path).await?;
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return Ok(items),
            }
        }
    }
}

/// The JSON body of a successful response, or an [`ApiFailure`].
pub async fn json_or_failure(response: Response) -> Result<Value> {
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .context("reading the service's answer")?;
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|_| anyhow!("{status}: {}", String::from_utf8_lossy(&bytes).trim()))?
    };
    if status.is_success() {
        return Ok(body);
    }
    let code = body["error"]["code"].as_str().unwrap_or("error").to_owned();
    let message = body["error"]["message"].as_str().unwrap_or("").to_owned();
    bail!(ApiFailure {
        status: status.as_u16(),
        code,
        message,
    })
}

/// Percent-encodes a query parameter value.
pub fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
