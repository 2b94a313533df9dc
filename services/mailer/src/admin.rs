//! `mailer dead list` and `mailer dead requeue --all | ID...`: look at the
//! dead letters and send them back to the work queue once the cause is fixed.

use lapin::ConnectionProperties;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::AMQPValue;

use crate::config::{DeadCommand, Settings};
use crate::routing::{ATTEMPT, DEAD_AT, DEAD_REASON, LAST_ERROR};

fn header(props: &lapin::BasicProperties, name: &str) -> String {
    match props.headers().as_ref().and_then(|h| h.inner().get(name)) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::LongInt(n)) => n.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// The AMQP message id, or the envelope's `id` for publishers that set none.
fn id_of(props: &lapin::BasicProperties, body: &[u8]) -> String {
    props
        .message_id()
        .as_ref()
        .map(|s| s.to_string())
        .or_else(|| {
            serde_json::from_slice::<serde_json::Value>(body)
                .ok()?
                .get("id")?
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "-".into())
}

/// Which dead letters a requeue takes.
enum Selection<'a> {
    All,
    Ids(&'a [String]),
}

/// `List`: prints dead letters (id, attempts, when, reason) on stdout and
/// leaves them in place. `Requeue`: moves the chosen ones back to the work
/// queue and returns how many.
pub async fn dead(settings: &Settings, cmd: &DeadCommand) -> Result<usize, anyhow::Error> {
    let requeue = match cmd {
        DeadCommand::List => None,
        DeadCommand::Requeue { all: true, .. } => Some(Selection::All),
        DeadCommand::Requeue { ids, .. } => Some(Selection::Ids(ids)),
    };
    let conn = shared::amqp::Nodes::new(&settings.amqp_url)
        .connect(ConnectionProperties::default())
        .await?
        .connection;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let dead = settings.topology.dead_queue();
    let mut moved = 0;
    let mut requeued = std::collections::HashSet::new();
    if requeue.is_none() {
        println!("id\tattempts\tdead_at\treason");
    }
    // Every message taken stays unacked (and so returns to the queue when the
    // channel closes) unless it was requeued.
    while let Some(msg) = ch
        .basic_get(dead.as_str().into(), BasicGetOptions::default())
        .await?
    {
        let props = &msg.delivery.properties;
        let id = id_of(props, &msg.delivery.data);
        match &requeue {
            None => println!(
                "{id}\t{}\t{}\t{}",
                header(props, ATTEMPT),
                header(props, DEAD_AT),
                header(props, DEAD_REASON)
            ),
            Some(selection) => {
                if let Selection::Ids(ids) = selection
                    && !ids.contains(&id)
                {
                    continue;
                }
                let mut kept = props.headers().clone().unwrap_or_default().inner().clone();
                kept.retain(|k, _| {
                    ![ATTEMPT, LAST_ERROR, DEAD_REASON, DEAD_AT].contains(&k.as_str())
                });
                let headers = lapin::types::FieldTable::from(kept);
                let confirm = ch
                    .basic_publish(
                        "".into(),
                        settings.topology.queue().as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &msg.delivery.data,
                        props.clone().with_headers(headers),
                    )
                    .await?
                    .await?;
                anyhow::ensure!(
                    confirm.is_ack() && confirm.take_message().is_none(),
                    "the broker refused the requeue of {id}"
                );
                msg.delivery.ack(BasicAckOptions::default()).await?;
                moved += 1;
                println!("requeued {id}");
                requeued.insert(id);
            }
        }
    }
    ch.close(200, "done".into()).await?;
    conn.close(200, "done".into()).await?;
    if requeue.is_some() {
        eprintln!("{moved} requeued");
    }
    if let Some(Selection::Ids(ids)) = &requeue {
        let missing: Vec<&str> = ids
            .iter()
            .filter(|id| !requeued.contains(id.as_str()))
            .map(String::as_str)
            .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "{moved} requeued; not in {dead}: {}",
            missing.join(" ")
        );
    }
    Ok(moved)
}
