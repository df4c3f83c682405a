//! `ltxfs import | export | status | promote`: thin clients of a node's HTTP API.
//!
//! Decides only presentation (the human status table, exit codes: 0 done, 1 refused or
//! unreachable) and file handling (an export is written to a temp file and renamed, so a failed
//! transfer leaves no partial file). Every decision is the node's.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// The node's HTTP API, e.g. http://127.0.0.1:20202.
    #[arg(long, default_value = "http://127.0.0.1:20202")]
    pub url: String,
    /// `http.auth-token` of the node (or env LTXFS_AUTH_TOKEN).
    #[arg(long, env = "LTXFS_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct TransferArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Database name in the mount (e.g. app.db).
    #[arg(long)]
    pub name: String,
    /// Local SQLite file.
    pub file: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Print the node's /info JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn client_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())
}

fn request(node: &NodeArgs, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    let url = format!("{}{path}", node.url.trim_end_matches('/'));
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(token) = &node.auth_token {
        req = req.bearer_auth(token);
    }
    req
}

/// Sends `req`; a non-2xx answer becomes the error text the node gave.
async fn send(req: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
    let resp = req.send().await.map_err(|e| format!("node unreachable: {e}"))?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    Err(format!("{status}: {}", text.trim()))
}

fn finish(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("ltxfs: {err}");
            ExitCode::from(1)
        }
    }
}

pub fn import(args: TransferArgs) -> ExitCode {
    finish((|| {
        let image = std::fs::read(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
        let bytes = image.len();
        let rt = client_runtime()?;
        let req = request(&args.node, reqwest::Method::POST, "/import").query(&[("name", &args.name)]).body(image);
        let text = rt.block_on(async { send(req).await?.text().await.map_err(|e| e.to_string()) })?;
        Ok(format!("imported {bytes} bytes into {}: {}", args.name, text.trim()))
    })())
}

pub fn export(args: TransferArgs) -> ExitCode {
    finish((|| {
        let rt = client_runtime()?;
        let req = request(&args.node, reqwest::Method::GET, "/export").query(&[("name", &args.name)]);
        let image = rt.block_on(async { send(req).await?.bytes().await.map_err(|e| e.to_string()) })?;
        write_atomically(&args.file, &image).map_err(|e| format!("{}: {e}", args.file.display()))?;
        Ok(format!("exported {} ({} bytes) to {}", args.name, image.len(), args.file.display()))
    })())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "export".into());
    let tmp = path.with_file_name(format!(".{name}.ltxfs-tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

pub fn promote(args: NodeArgs) -> ExitCode {
    finish((|| {
        let rt = client_runtime()?;
        let req = request(&args, reqwest::Method::POST, "/promote");
        let text = rt.block_on(async { send(req).await?.text().await.map_err(|e| e.to_string()) })?;
        Ok(format!("promote: {}", text.trim()))
    })())
}

pub fn status(args: StatusArgs) -> ExitCode {
    finish((|| {
        let rt = client_runtime()?;
        let req = request(&args.node, reqwest::Method::GET, "/info");
        let info: Value = rt.block_on(async { send(req).await?.json().await.map_err(|e| format!("bad /info answer: {e}")) })?;
        if args.json {
            return serde_json::to_string_pretty(&info).map_err(|e| e.to_string());
        }
        Ok(status_table(&info))
    })())
}

/// The human view of `/info`.
pub fn status_table(info: &Value) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let role = text(&info["role"]);
    let writable = if info["writable"].as_bool() == Some(true) { " (writable)" } else { "" };
    out.push_str(&format!("node      {} ({})\n", text(&info["hostname"]), text(&info["nodeID"])));
    out.push_str(&format!("cluster   {}\n", text(&info["clusterID"])));
    out.push_str(&format!("role      {role}{writable}, epoch {}\n", text(&info["epoch"])));
    let primary = &info["primary"];
    if primary.is_object() {
        let connected = if info["connectedToPrimary"].as_bool() == Some(true) { "connected" } else { "not connected" };
        out.push_str(&format!("primary   {} {} ({connected})\n", text(&primary["hostname"]), text(&primary["advertiseURL"])));
    }
    if let Some(lag) = info["lagMs"].as_i64() {
        out.push_str(&format!("lag       {lag} ms\n"));
    }
    out.push_str(&format!("\n{:<24} {:>16}  {:<16}  {:>5}\n", "DATABASE", "TXID", "CHECKSUM", "EPOCH"));
    if let Some(positions) = info["positions"].as_object() {
        for (db, p) in positions {
            let txid = p["txid"].as_u64().map_or("-".into(), |t| format!("{t:016x}"));
            out.push_str(&format!("{db:<24} {txid:>16}  {:<16}  {:>5}\n", text(&p["checksum"]), text(&p["epoch"])));
        }
    }
    out.trim_end().to_string()
}
