//! `herald backup` — the real binary — against a running durable server
//! that goes on publishing: the copy holds a prefix of what was
//! acknowledged (all of it up to the backup's start), a second server
//! serves it, and the first lost nothing. As docs/deploy.md says.

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::process::Command;
use tokio::sync::watch;

use crate::harness::{Server, client, publish, read_all, temp_dir, within};

const TOPIC: &str = "backed-up";

/// `herald ARGS…` to its end.
async fn herald(args: &[&str]) -> Output {
    let run = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("HERALD_STORE")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    within(&format!("herald {}", args.join(" ")), run)
        .await
        .expect("run herald")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts `out` failed with one clear line on stderr naming `words`, and
/// nothing on stdout.
#[track_caller]
fn refused(out: &Output, words: &[&str]) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("herald: error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for word in words {
        assert!(stderr.contains(word), "{word:?} not in {stderr}");
    }
}

/// (id, data) of every event acknowledged, in order.
type Acked = Arc<Mutex<Vec<(String, String)>>>;

#[tokio::test]
async fn a_backup_taken_while_publishing_holds_a_prefix_and_the_server_loses_nothing() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let server = Server::start_in(&data, &["--retention-events", "1000000"]);
    let http = client();

    // A task queued before the backup is in the copy too.
    let r = http
        .post(server.url("/queues/backed-up/tasks"))
        .body("job")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let task: Value = r.json().await.unwrap();
    let task_id = task["id"].as_str().unwrap().to_owned();

    // One publisher, one event at a time: each is acknowledged (committed)
    // before the next is sent, so the acknowledged list is in id order.
    let acked: Acked = Arc::default();
    let (count_tx, mut count) = watch::channel(0usize);
    let (stop_tx, stop) = watch::channel(false);
    let publisher = tokio::spawn({
        let (acked, url) = (Arc::clone(&acked), server.url(&format!("/topics/{TOPIC}")));
        async move {
            let http = client();
            let mut n = 0usize;
            while !*stop.borrow() {
                let data = format!("n{n}");
                let r = http.post(&url).body(data.clone()).send().await.unwrap();
                assert_eq!(r.status(), 201);
                let v: Value = r.json().await.unwrap();
                let id = v["id"].as_str().unwrap().to_owned();
                acked.lock().unwrap().push((id, data));
                n += 1;
                count_tx.send_replace(n);
            }
        }
    });
    within("50 events before the backup", count.wait_for(|n| *n >= 50))
        .await
        .unwrap();

    let copy = dir.path().join("copy.db");
    let before = acked.lock().unwrap().len();
    let data_flag = format!("file:{}", data.display());
    let out = herald(&["backup", "--store", &data_flag, copy.to_str().unwrap()]).await;
    let after = acked.lock().unwrap().len();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("(checked)"),
        "{}",
        text(&out.stdout)
    );

    // Publishing went on after the copy was made; then it stops.
    within(
        "20 more events after the backup",
        count.wait_for(|n| *n >= after + 20),
    )
    .await
    .unwrap();
    stop_tx.send_replace(true);
    within("the publisher to stop", publisher).await.unwrap();
    let acked = acked.lock().unwrap().clone();

    // The first server lost nothing and doubled nothing.
    let served: Vec<(String, String)> = read_all(&server, TOPIC)
        .await
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["data"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(served, acked, "the running server's events");

    // A second server on a directory holding only the copy.
    let restored = dir.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    std::fs::copy(&copy, restored.join("herald.db")).unwrap();
    let second = Server::start_in(&restored, &["--retention-events", "1000000"]);
    let held: Vec<(String, String)> = read_all(&second, TOPIC)
        .await
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["data"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        held.len() >= before,
        "the copy holds {} events, but {before} were acknowledged before the backup began",
        held.len()
    );
    assert!(
        held.len() < acked.len(),
        "the copy holds events published after the backup ended"
    );
    assert_eq!(held, acked[..held.len()], "the copy is a prefix");
    let r = second
        .client()
        .get(second.url(&format!("/tasks/{task_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "the queued task is in the copy");

    // A cursor the copy never saw is a gap, not an error: the client
    // replays from the oldest event.
    let (last_id, _) = acked.last().unwrap();
    let r = second
        .client()
        .get(second.url(&format!("/topics/{TOPIC}?last-event-id={last_id}&limit=1")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["gap"], true, "{v}");
    assert_eq!(v["events"][0]["id"], acked[0].0.as_str());

    // The restored server goes on from there.
    publish(&second, TOPIC, "after restore").await;
}

#[tokio::test]
async fn backup_refuses_an_existing_file_and_a_directory_without_a_database() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let server = Server::start_in(&data, &[]);
    publish(&server, TOPIC, "kept").await;
    let data_flag = format!("file:{}", data.display());

    let target = dir.path().join("precious.db");
    std::fs::write(&target, "not to be lost").unwrap();
    let out = herald(&["backup", "--store", &data_flag, target.to_str().unwrap()]).await;
    refused(&out, &["precious.db", "already exists"]);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "not to be lost");

    // A directory that is not a herald data directory: refused, and no
    // database is created there.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let elsewhere = dir.path().join("fresh.db");
    let out = herald(&[
        "backup",
        "--store",
        empty.to_str().unwrap(),
        elsewhere.to_str().unwrap(),
    ])
    .await;
    refused(&out, &["no database", "herald.db"]);
    assert!(!empty.join("herald.db").exists());
    assert!(!elsewhere.exists());

    // Nothing else is left beside the targets (no partial copy).
    let names = |d: &Path| {
        let mut n: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(dir.path()), ["data", "empty", "precious.db"]);

    // And the memory store has nothing to copy.
    let out = herald(&["backup", "--store", "memory", elsewhere.to_str().unwrap()]).await;
    refused(&out, &["nothing to back up"]);
}
