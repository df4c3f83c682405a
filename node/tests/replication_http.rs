//! The node HTTP API against bad input: corrupt frames on `/stream`, missing auth, malformed
//! imports — each refused with nothing written — and `/import` → replica → `/export`.

mod support;

use bytes::Bytes;
use futures_util::StreamExt;
use ltxfs_core::ids::{ClusterId, DbName, Epoch, NodeId};
use ltxfs_core::ltx::{self, Header};
use ltxfs_core::msg::Message;
use node::http::frame;
use support::{members, App, NodeSpec, TestNode};

const DB: &str = "app.db";
const TOKEN: &str = "tok";

fn spec(dir: &tempfile::TempDir, id: u64) -> NodeSpec {
    NodeSpec { id: NodeId(id), cluster: ClusterId(9), members: members(2), data_dir: dir.path().join(format!("n{id}")), auth_token: Some(TOKEN.into()) }
}

/// An open `/stream` to `url` posing as node `from`: returns the frame sender.
async fn open_stream(url: &str, from: NodeId) -> (tokio::sync::mpsc::Sender<Bytes>, reqwest::Response) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let body = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<Bytes, std::io::Error>);
    let resp = node::http::peer_client()
        .post(format!("{url}/stream"))
        .header(node::http::NODE_ID_HEADER, from.to_string())
        .bearer_auth(TOKEN)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("stream opens");
    assert_eq!(resp.status(), 200);
    (tx, resp)
}

fn valid_ltx() -> Vec<u8> {
    let page = vec![7u8; 4096];
    let post = ltxfs_core::chkindex::ChecksumIndex::new(4096).unwrap().preview(1, &[(1, &page)]).unwrap();
    let header = Header { page_size: 4096, commit: 1, min_txid: 1, max_txid: 1, timestamp_ms: 1, ..Header::default() };
    ltx::encode_to_vec(header, [(1u32, page.as_slice())], post).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_frames_on_the_stream_are_rejected_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    // A replica whose primary (node 1) is nowhere: the test plays node 1 on an inbound stream.
    let r = TestNode::start_static(&spec(&dir, 2), NodeId(1), Some("http://127.0.0.1:9")).await;
    let db = DbName::new(DB).unwrap();

    // 1. An LTX whose bytes were damaged in transit (file checksum no longer matches).
    let (tx, mut resp) = open_stream(&r.url, NodeId(1)).await;
    let mut ltx = valid_ltx();
    ltx[200] ^= 0xff;
    let msg = Message::Ltx { epoch: Epoch(1), db: db.clone(), offset: 0, total_bytes: ltx.len() as u64, bytes: ltx };
    tx.send(frame::encode(&msg)).await.unwrap();
    // The replica answers on the same stream: first its stream request, then a resync request.
    let mut decoder = frame::FrameDecoder::default();
    let mut got = Vec::new();
    while !got.iter().any(|m| matches!(m, Message::Resync { .. })) {
        let chunk = resp.chunk().await.unwrap().expect("replica keeps the stream open");
        decoder.push(&chunk);
        while let Some(m) = decoder.next_frame().unwrap() {
            got.push(m);
        }
    }
    assert!(matches!(got[0], Message::StreamRequest { .. }), "{got:?}");
    assert_eq!(r.metric("ltxfs_ltx_rejected_total").await, 1.0);

    // 2. A frame that is not a message at all closes the connection.
    tx.send(Bytes::from_static(&[0, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0])).await.unwrap();
    while resp.chunk().await.map(|c| c.is_some()).unwrap_or(false) {}
    // 3. A length prefix over the limit is refused before anything is buffered.
    let (tx2, mut resp2) = open_stream(&r.url, NodeId(1)).await;
    tx2.send(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff])).await.unwrap();
    while resp2.chunk().await.map(|c| c.is_some()).unwrap_or(false) {}
    assert_eq!(r.metric("ltxfs_frames_rejected_total").await, 2.0);

    assert!(r.status().positions.is_empty());
    assert!(!r.data_dir.join("dbs").join(DB).exists(), "nothing written for {DB}");
    assert_eq!(r.metric("ltxfs_applied_total").await, 0.0);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_token_and_malformed_requests_are_refused_without_effect() {
    let dir = tempfile::tempdir().unwrap();
    let p = TestNode::start_static(&spec(&dir, 1), NodeId(1), None).await;
    let http = reqwest::Client::new();
    let sqlite = {
        let mut app = App::new(dir.path(), "src.db");
        let mut throwaway = spec(&dir, 1);
        throwaway.data_dir = dir.path().join("throwaway");
        let scratch = TestNode::start_static(&throwaway, NodeId(1), None).await; // only builds the file
        app.exec(&scratch, "CREATE TABLE t(x); INSERT INTO t VALUES (1),(2),(3)").await;
        scratch.stop().await;
        app.image().to_vec()
    };
    // No token → 401, for peers and for every mutating request.
    let stream = http.post(format!("{}/stream", p.url)).header(node::http::NODE_ID_HEADER, NodeId(2).to_string()).send().await.unwrap();
    assert_eq!(stream.status(), 401);
    let import = http.post(format!("{}/import?name={DB}", p.url)).body(sqlite.clone()).send().await.unwrap();
    assert_eq!(import.status(), 401);
    let wrong = http.post(format!("{}/import?name={DB}", p.url)).bearer_auth("nope").body(sqlite.clone()).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(http.post(format!("{}/handoff?nodeID=0000000000000002", p.url)).send().await.unwrap().status(), 401);
    // Malformed → 400, nothing changes.
    let garbage = http.post(format!("{}/import?name={DB}", p.url)).bearer_auth(TOKEN).body(vec![1u8; 4096]).send().await.unwrap();
    assert_eq!(garbage.status(), 400);
    let torn = http.post(format!("{}/import?name={DB}", p.url)).bearer_auth(TOKEN).body(sqlite[..sqlite.len() - 1].to_vec()).send().await.unwrap();
    assert_eq!(torn.status(), 400);
    let no_name = http.post(format!("{}/import", p.url)).bearer_auth(TOKEN).body(sqlite.clone()).send().await.unwrap();
    assert_eq!(no_name.status(), 400);
    let bad_name = http.post(format!("{}/import?name=a/b", p.url)).bearer_auth(TOKEN).body(sqlite.clone()).send().await.unwrap();
    assert_eq!(bad_name.status(), 400);
    let bad_node = http.post(format!("{}/stream", p.url)).bearer_auth(TOKEN).header(node::http::NODE_ID_HEADER, "zz").send().await.unwrap();
    assert_eq!(bad_node.status(), 400);
    assert!(p.status().positions.is_empty());
    assert!(!p.data_dir.join("dbs").join(DB).exists());
    // Reads stay open.
    assert_eq!(http.get(format!("{}/info", p.url)).send().await.unwrap().status(), 200);

    // With the token: import on the primary, a replica receives it, export gives it back.
    let r = TestNode::start_static(&spec(&dir, 2), NodeId(1), Some(&p.url)).await;
    let ok = http.post(format!("{}/import?name={DB}", p.url)).bearer_auth(TOKEN).body(sqlite.clone()).send().await.unwrap();
    assert_eq!(ok.status(), 200, "{:?}", ok.text().await);
    r.wait_txid(DB, 1).await;
    let exported = http.get(format!("{}/export?name={DB}", r.url)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(exported.status(), 200);
    assert!(exported.bytes().await.unwrap() == sqlite, "exported file equals the imported one");
    assert_eq!(support::count_rows(&r.database_path(DB), "t"), 3);
    let missing = http.get(format!("{}/export?name=nope.db", r.url)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    // A replica refuses imports.
    let on_replica = http.post(format!("{}/import?name={DB}", r.url)).bearer_auth(TOKEN).body(sqlite.clone()).send().await.unwrap();
    assert_eq!(on_replica.status(), 409);
    r.stop().await;
    p.stop().await;
}
