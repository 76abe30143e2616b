//! `herald pub TOPIC [DATA|-] [--event TYPE]`.

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
    let receipt = client
        .publish_as(&args.topic, args.event.as_deref(), data)
        .await?;
    if out.json {
        let v = serde_json::json!({
            "id": receipt.id,
            "topic": receipt.topic,
            "event": receipt.event,
            "time": receipt.time,
        });
        println!("{v}");
    } else {
        println!("{}", receipt.id);
    }
    Ok(ExitCode::SUCCESS)
}
