//! `herald pub TOPIC [DATA|-] [--event TYPE] [--idempotency-key KEY]`.

use std::process::ExitCode;

use herald_client::Client;

use super::{Output, arg_or_stdin};
use crate::cli::PublishArgs;

pub async fn run(client: &Client, out: Output, args: PublishArgs) -> anyhow::Result<ExitCode> {
    let from_stdin = matches!(args.data.as_deref(), None | Some("-"));
    let mut data = arg_or_stdin(args.data).await?;
    if from_stdin && data.ends_with('\n') {
        // `echo hi | herald pub t -` publishes `hi`, not `hi\n`.
        data.pop();
        if data.ends_with('\r') {
            data.pop();
        }
    }
    let event = args.event.as_deref();
    let receipt = match args.idempotency_key.as_deref() {
        Some(key) => {
            if key.trim().is_empty() {
                anyhow::bail!("--idempotency-key must not be empty");
            }
            client
                .publish_with_key(&args.topic, event, data, key)
                .await?
        }
        None => client.publish_as(&args.topic, event, data).await?,
    };
    if out.json {
        let mut v = serde_json::json!({
            "id": receipt.id,
            "topic": receipt.topic,
            "event": receipt.event,
            "time": receipt.time,
        });
        if receipt.replayed {
            // Only then: the receipt of a fresh publish keeps its four fields.
            v["replayed"] = true.into();
        }
        println!("{v}");
    } else {
        if receipt.replayed {
            eprintln!("herald: published before under this idempotency key; not again");
        }
        println!("{}", receipt.id);
    }
    Ok(ExitCode::SUCCESS)
}
