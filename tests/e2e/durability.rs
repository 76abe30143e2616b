//! The embedded store keeps every acknowledged event across restarts and
//! crashes, enforces retention, and fails loudly — never silently — on a
//! directory it cannot write or a file it cannot trust.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::Value;

use crate::harness::{PATIENCE, Server, client, publish, read_all, temp_dir, within};

/// What the publishers were told: id → data, for every `201`.
type Acked = Arc<std::sync::Mutex<HashMap<String, String>>>;

/// Publishes until `stop`: single events, and batches of five whose lines
/// must all be there or none.
async fn publisher(
    server_url: String,
    task: usize,
    acked: Acked,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let c = client();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        if n % 10 == 0 {
            let body: String = (0..5)
                .map(|i| format!("{{\"topic\":\"crash\",\"data\":\"b{task}-{n}-{i}\"}}\n"))
                .collect();
            let Ok(r) = c
                .post(format!("{server_url}/publish"))
                .body(body)
                .send()
                .await
            else {
                return;
            };
            if r.status() != 201 {
                return;
            }
            let Ok(v) = r.json::<Value>().await else {
                return;
            };
            let mut acked = acked.lock().unwrap();
            for (i, e) in v["events"].as_array().unwrap().iter().enumerate() {
                acked.insert(
                    e["id"].as_str().unwrap().to_owned(),
                    format!("b{task}-{n}-{i}"),
                );
            }
            count.fetch_add(5, Ordering::Relaxed);
        } else {
            let data = format!("p{task}-{n}");
            let sent = c
                .post(format!("{server_url}/topics/crash"))
                .body(data.clone())
                .send()
                .await;
            let Ok(r) = sent else { return };
            if r.status() != 201 {
                return;
            }
            let Ok(v) = r.json::<Value>().await else {
                return;
            };
            acked
                .lock()
                .unwrap()
                .insert(v["id"].as_str().unwrap().to_owned(), data);
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_load_loses_no_acknowledged_event() {
    let dir = temp_dir();
    let mut server = Server::start_in(dir.path(), &["--retention-events", "1000000"]);
    let acked: Acked = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            tokio::spawn(publisher(
                server.url(""),
                t,
                acked.clone(),
                count.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while count.load(Ordering::Relaxed) < 3000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishers too slow"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.crash();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 3000);

    server.start_again();
    let events = read_all(&server, "crash").await;
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let data: Vec<&str> = events.iter().map(|e| e["data"].as_str().unwrap()).collect();

    // Every acknowledged event is there, with its data, exactly once.
    let stored: HashMap<&str, &str> = ids.iter().copied().zip(data.iter().copied()).collect();
    assert_eq!(stored.len(), events.len(), "no id appears twice");
    for (id, d) in &acked {
        assert_eq!(
            stored.get(id.as_str()),
            Some(&d.as_str()),
            "acknowledged event {id} lost"
        );
    }
    let unique: HashSet<&str> = data.iter().copied().collect();
    assert_eq!(unique.len(), data.len(), "no event stored twice");

    // Ids increase in the order the store hands them out.
    let parsed: Vec<(u64, u64)> = ids
        .iter()
        .map(|id| {
            let (ms, seq) = id.split_once('-').unwrap();
            (ms.parse().unwrap(), seq.parse().unwrap())
        })
        .collect();
    assert!(
        parsed.windows(2).all(|w| w[0] < w[1]),
        "ids strictly increase"
    );

    // Each publisher's events are in its publish order; batches are whole.
    let mut last_n: HashMap<&str, u64> = HashMap::new();
    let mut batch_lines: HashMap<String, usize> = HashMap::new();
    for d in &data {
        let (task, rest) = d[1..].split_once('-').unwrap();
        let n: u64 = rest.split('-').next().unwrap().parse().unwrap();
        let prev = last_n.insert(task, n).unwrap_or(0);
        assert!(n >= prev, "task {task} out of order: {n} after {prev}");
        if d.starts_with('b') {
            *batch_lines.entry(format!("{task}-{n}")).or_default() += 1;
        }
    }
    assert!(
        batch_lines.values().all(|&lines| lines == 5),
        "a batch is all there or not at all"
    );
    println!(
        "crash test: {} acknowledged, {} stored after the crash",
        acked.len(),
        events.len()
    );

    // Publishing goes on with ids after everything stored before the crash.
    let after = publish(&server, "crash", "after").await;
    let events = read_all(&server, "crash").await;
    assert_eq!(events.last().unwrap()["id"], after.as_str());
}

#[tokio::test]
async fn ids_and_idempotency_keys_survive_a_restart() {
    let dir = temp_dir();
    let mut server = Server::start_in(dir.path(), &[]);
    let first = client()
        .post(server.url("/topics/keys"))
        .header("Idempotency-Key", "once")
        .body("one")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let last_before = publish(&server, "keys", "two").await;
    server.restart();
    let again = client()
        .post(server.url("/topics/keys"))
        .header("Idempotency-Key", "once")
        .body("one")
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let next = publish(&server, "keys", "three").await;
    let events = read_all(&server, "keys").await;
    let data: Vec<_> = events.iter().map(|e| e["data"].as_str().unwrap()).collect();
    assert_eq!(data, ["one", "two", "three"]);
    assert_eq!(events[1]["id"], last_before.as_str());
    assert_eq!(events[2]["id"], next.as_str());
}

#[tokio::test]
async fn count_retention_gives_a_gap_and_survives_a_restart() {
    let dir = temp_dir();
    let mut server = Server::start_in(dir.path(), &["--retention-events", "3"]);
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(publish(&server, "r", &format!("r{i}")).await);
    }
    server.restart();
    let data: Vec<_> = read_all(&server, "r")
        .await
        .iter()
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(data, ["r3", "r4", "r5"]);
    let v: Value = client()
        .get(server.url(&format!("/topics/r?last-event-id={}", ids[1])))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["gap"], true,
        "older than history is a gap, never silently wrong"
    );
    assert_eq!(v["events"][0]["data"], "r3");
    let v: Value = client()
        .get(server.url(&format!("/topics/r?last-event-id={}", ids[2])))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["gap"], false,
        "the newest dropped id still resumes exactly"
    );
}

#[tokio::test]
async fn age_retention_drops_old_events_in_the_background() {
    let dir = temp_dir();
    let server = Server::start_in(dir.path(), &["--retention-age", "400ms"]);
    let old = publish(&server, "aged", "old").await;
    // Wait (bounded) for the sweep to drop it; nothing is published meanwhile,
    // so only the background sweep can.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = client()
            .get(server.url("/topics/aged?last-event-id=all"))
            .send()
            .await
            .unwrap();
        if r.status() == 204 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "old event never dropped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = client()
        .get(server.url(&format!("/topics/aged?last-event-id={old}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        204,
        "the dropped id is the newest dropped: exact, nothing after it"
    );
    let r = client()
        .get(server.url("/topics/aged?last-event-id=0-0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["herald-gap"],
        "true",
        "from the start, something was missed"
    );
}

/// Starts herald expecting it to refuse; returns what it said on stderr.
fn refuses_to_start(store: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--store", store])
        .output()
        .unwrap();
    assert!(!out.status.success(), "herald started on {store}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn an_unwritable_directory_is_a_clear_startup_error() {
    let stderr = refuses_to_start("file:/proc/herald-cannot-write-here");
    assert!(
        stderr.contains("cannot create the data directory"),
        "{stderr}"
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    let stderr = refuses_to_start(&format!("file:{}/below-a-file", file.path().display()));
    assert!(
        stderr.contains("cannot create the data directory"),
        "{stderr}"
    );
}

#[test]
fn a_garbage_database_file_is_a_clear_startup_error() {
    let dir = temp_dir();
    std::fs::write(
        dir.path().join("herald.db"),
        b"this is not a database, just some text".repeat(200),
    )
    .unwrap();
    let stderr = refuses_to_start(&format!("file:{}", dir.path().display()));
    assert!(stderr.contains("herald.db"), "{stderr}");
    assert!(
        stderr.contains("not a database") || stderr.contains("not a usable"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_truncated_database_file_is_a_clear_startup_error() {
    let dir = temp_dir();
    let mut server = Server::start_in(dir.path(), &["--retention-events", "100000"]);
    let big = "z".repeat(4000);
    for _ in 0..200 {
        publish(&server, "t", &big).await;
    }
    assert!(server.stop().success());
    let path = dir.path().join("herald.db");
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(
        len > 100_000,
        "the WAL was checkpointed into the file on a clean stop ({len} bytes)"
    );
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);
    let stderr = refuses_to_start(&format!("file:{}", dir.path().display()));
    assert!(stderr.contains("herald.db"), "{stderr}");
}

#[tokio::test]
async fn a_full_store_answers_503_and_loses_nothing_acknowledged() {
    let dir = temp_dir();
    let quota = ["--max-db-size", "262144", "--retention-events", "100000"];
    let mut server = Server::start_in(dir.path(), &quota);
    let chunk = "q".repeat(8000);
    let mut acked = Vec::new();
    let refusal = loop {
        let r = client()
            .post(server.url("/topics/full"))
            .body(chunk.clone())
            .send()
            .await
            .unwrap();
        if r.status() != 201 {
            break r;
        }
        acked.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        assert!(acked.len() < 1000, "the quota never bit");
    };
    assert_eq!(refusal.status(), 503);
    let err: Value = refusal.json().await.unwrap();
    assert_eq!(err["error"]["code"], "unavailable");
    // What SQLite said, and where the file is, are for the log only.
    let message = err["error"]["message"].as_str().unwrap();
    let dir_text = dir.path().display().to_string();
    for internal in ["disk", "database", "sqlite", dir_text.as_str()] {
        assert!(!message.contains(internal), "{internal:?} in {message:?}");
    }
    assert!(!acked.is_empty());
    let stored: Vec<String> = read_all(&server, "full")
        .await
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        stored, acked,
        "everything acknowledged is readable, nothing more"
    );
    // More room after a restart with a larger quota: nothing was lost.
    server.stop();
    let mut server = Server::start_in(dir.path(), &["--retention-events", "100000"]);
    let stored_again: Vec<String> = read_all(&server, "full")
        .await
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored_again, acked);
    publish(&server, "full", "fits now").await;
    let _ = within("stop", async { server.stop() }).await;
}
