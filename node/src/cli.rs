//! `ltxfs import | export | status | promote`: thin clients of a node's HTTP API.
//!
//! Decides only presentation (the human status table, a progress bar for import and export when
//! stderr is a terminal and nothing otherwise, exit codes: 0 done, 1 refused or unreachable) and
//! file handling (transfers stream between the file and the socket in chunks, never holding the
//! whole database in memory; an export is written to a temp file, fsynced and renamed, so a
//! failed transfer leaves no partial file). Every decision is the node's.

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

/// Bytes read from the file per chunk of an import body.
const CHUNK_BYTES: usize = 256 * 1024;

/// A progress bar on stderr when it is a terminal; hidden (draws nothing) otherwise.
fn progress_bar(total: Option<u64>, verb: &str, name: &str) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(total) => (
            indicatif::ProgressBar::new(total),
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        ),
        None => (indicatif::ProgressBar::no_length(), "{msg} {bytes} {binary_bytes_per_sec}"),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("{verb} {name}"));
    bar
}

pub fn import(args: TransferArgs) -> ExitCode {
    finish((|| {
        let file = std::fs::File::open(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
        let bytes = file.metadata().map_err(|e| format!("{}: {e}", args.file.display()))?.len();
        let bar = progress_bar(Some(bytes), "importing", &args.name);
        let body = reqwest::Body::wrap_stream(file_chunks(file, bar.clone()));
        let rt = client_runtime()?;
        let req = request(&args.node, reqwest::Method::POST, "/import").query(&[("name", &args.name)]).body(body);
        let result = rt.block_on(async { send(req).await?.text().await.map_err(|e| e.to_string()) });
        bar.finish_and_clear();
        let text = result?;
        Ok(format!("imported {bytes} bytes into {}: {}", args.name, text.trim()))
    })())
}

/// The file as a stream of chunks, advancing `bar` as each is read.
fn file_chunks(
    mut file: std::fs::File,
    bar: indicatif::ProgressBar,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    use std::io::Read as _;
    futures_util::stream::iter(std::iter::from_fn(move || {
        let mut chunk = vec![0u8; CHUNK_BYTES];
        match file.read(&mut chunk) {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                bar.inc(n as u64);
                Some(Ok(bytes::Bytes::from(chunk)))
            }
            Err(e) => Some(Err(e)),
        }
    }))
}

pub fn export(args: TransferArgs) -> ExitCode {
    finish((|| {
        let rt = client_runtime()?;
        let req = request(&args.node, reqwest::Method::GET, "/export").query(&[("name", &args.name)]);
        let name = args.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "export".into());
        let tmp = args.file.with_file_name(format!(".{name}.ltxfs-tmp"));
        let result = rt.block_on(async {
            let mut resp = send(req).await?;
            let bar = progress_bar(resp.content_length(), "exporting", &args.name);
            let written = stream_to_file(&mut resp, &tmp, &bar).await;
            bar.finish_and_clear();
            written
        });
        let written = result.and_then(|n| {
            std::fs::rename(&tmp, &args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
            Ok(n)
        });
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        let written = written?;
        Ok(format!("exported {} ({written} bytes) to {}", args.name, args.file.display()))
    })())
}

/// Writes the response body to `path` chunk by chunk and fsyncs it; returns the byte count.
async fn stream_to_file(resp: &mut reqwest::Response, path: &Path, bar: &indicatif::ProgressBar) -> Result<u64, String> {
    use std::io::Write as _;
    let io_err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io_err)?);
    // Read before the body: reqwest derives it from the body's remaining size.
    let expected = resp.content_length();
    let mut written = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("transfer failed: {e}"))? {
        file.write_all(&chunk).map_err(io_err)?;
        written += chunk.len() as u64;
        bar.inc(chunk.len() as u64);
    }
    if let Some(expected) = expected.filter(|n| *n != written) {
        return Err(format!("transfer ended after {written} of {expected} bytes"));
    }
    let file = file.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    Ok(written)
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
