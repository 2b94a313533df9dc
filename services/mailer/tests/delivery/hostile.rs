//! A hostile publisher on the mail exchange: it claims another service's
//! source, uses templates it may not, sends raw mail where only templates are
//! allowed, puts a `javascript:` link into a built-in template, and sends an
//! event of 15 MiB. Each is dead-lettered with its reason, and the mailer
//! delivers the honest mail published after them.

use std::collections::HashMap;
use std::time::Duration;

use shared::{Body, MailSend, RawContent, Topology};

use super::helpers::*;
use super::verify_event;

fn raw_event(source: &str, to: &str, html: String) -> MailSend {
    let mut event = verify_event(to, "en", "https://acc.example/verify?token=t");
    event.source = source.to_owned();
    event.body = Body::Content {
        content: RawContent {
            subject: "Invoice".into(),
            text: "Your invoice".into(),
            html,
        },
    };
    event
}

/// Publishes `event`, with the AMQP `user_id` given, into the mailer's queue.
async fn publish(broker: &Broker, t: &Topology, event: &MailSend, user_id: Option<&str>) {
    broker
        .try_publish(t, &event.to_vec(), user_id)
        .await
        .expect("the broker takes it");
}

/// The id of an event as serde writes it (first), without parsing the rest.
fn id_in(body: &[u8]) -> uuid::Uuid {
    let text = String::from_utf8_lossy(&body[..64.min(body.len())]).into_owned();
    let start = text.find("\"id\":\"").expect("the id comes first") + 6;
    text[start..start + 36].parse().unwrap()
}

fn from_source(source: &str, mut event: MailSend) -> MailSend {
    event.source = source.to_owned();
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_publisher_gets_every_trick_dead_lettered_and_the_worker_goes_on() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let account = BrokerUser::create("account");
    let billing = BrokerUser::create("billing");
    let (a, b) = (account.name.as_str(), billing.name.as_str());
    let sources = format!("{a}=verify_email,account_exists;{b}=*raw*");
    let mailer = env
        .mailer(&[
            ("MAILER_SOURCES", &sources),
            ("MAILER_REQUIRE_USER_ID", "true"),
        ])
        .await;
    let pid = mailer.child.id().unwrap();
    let as_account = Broker::connect_as(&account).await;
    let as_billing = Broker::connect_as(&billing).await;
    let t = &env.topology;

    // The broker itself refuses a user_id that is not the connection's user.
    let forged = from_source(
        a,
        verify_event("v@example.com", "en", "https://a.example/v"),
    );
    assert!(
        as_billing
            .try_publish(t, &forged.to_vec(), Some(a))
            .await
            .is_err(),
        "RabbitMQ refuses a forged user_id"
    );
    let as_billing = Broker::connect_as(&billing).await;

    let mut expected: HashMap<uuid::Uuid, &str> = HashMap::new();
    // Billing claims to be the account service.
    let claimed = from_source(
        a,
        verify_event("v1@example.com", "en", "https://a.example/v"),
    );
    publish(&as_billing, t, &claimed, Some(b)).await;
    expected.insert(claimed.id, "was published by broker user");
    // ... or leaves user_id out, hoping the envelope's word is taken.
    let unsigned = from_source(
        a,
        verify_event("v2@example.com", "en", "https://a.example/v"),
    );
    publish(&as_billing, t, &unsigned, None).await;
    expected.insert(unsigned.id, "no AMQP user_id");
    // Billing, as itself, uses a template it may not.
    let template = from_source(
        b,
        verify_event("v3@example.com", "en", "https://a.example/v"),
    );
    publish(&as_billing, t, &template, Some(b)).await;
    expected.insert(template.id, "may not send template \"verify_email\"");
    // The account service may send its templates only, no raw mail.
    let raw = raw_event(a, "v4@example.com", "<p>pay here</p>".into());
    publish(&as_account, t, &raw, Some(a)).await;
    expected.insert(raw.id, "may not send raw content");
    // A link that runs script in the reader's mail client.
    let script = from_source(
        a,
        verify_event("v5@example.com", "en", "javascript:alert(document.cookie)"),
    );
    publish(&as_account, t, &script, Some(a)).await;
    expected.insert(script.id, "`verify_url` must be an https: link");
    // A plain-http link to another host would carry the token in clear.
    let clear = from_source(
        a,
        verify_event("v6@example.com", "en", "http://acc.example/verify?token=t"),
    );
    publish(&as_account, t, &clear, Some(a)).await;
    expected.insert(clear.id, "`verify_url` must be an https: link");
    // 15 MiB of raw mail from a source that may send raw mail.
    let before = peak_rss(pid);
    let huge = raw_event(b, "v7@example.com", "A".repeat(15 << 20));
    publish(&as_billing, t, &huge, Some(b)).await;
    expected.insert(huge.id, "more than MAILER_MAX_EVENT_BYTES (262144)");
    // Just over the cap and cut short: were it parsed before its size was
    // looked at, the reason would be "invalid JSON".
    let cut = raw_event(b, "v8@example.com", "B".repeat(256 << 10)).to_vec();
    let cut_id = id_in(&cut);
    as_billing
        .try_publish(t, &cut[..cut.len() - 10], Some(b))
        .await
        .unwrap();
    expected.insert(cut_id, "bytes, more than MAILER_MAX_EVENT_BYTES");

    // Honest mail after all that: both are delivered.
    let honest = from_source(
        a,
        verify_event(
            "honest@example.com",
            "ko",
            "https://a.example/verify?token=ok",
        ),
    );
    publish(&as_account, t, &honest, Some(a)).await;
    let invoice = raw_event(b, "invoice@example.com", "<p>₩12,000</p>".into());
    publish(&as_billing, t, &invoice, Some(b)).await;

    let mails = env.wait_for_mail(2, Duration::from_secs(30)).await;
    let mut to: Vec<String> = mails
        .iter()
        .map(|m| m["rcpt_tos"][0].as_str().unwrap().to_owned())
        .collect();
    to.sort();
    assert_eq!(to, ["honest@example.com", "invoice@example.com"]);
    let dead = t.dead_queue();
    let broker = Broker::connect().await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            broker.count(&dead).await == Some(expected.len() as u32)
        })
        .await,
        "every refused event is dead-lettered: {:?}",
        broker.count(&dead).await
    );
    for (props, body) in broker.drain(&dead).await {
        let reason = header(&props, "x-dead-reason").unwrap();
        assert!(reason.starts_with("permanent: "), "{reason}");
        let id = id_in(&body);
        let want = expected.remove(&id).expect("one of the hostile events");
        assert!(reason.contains(want), "{want:?} in {reason:?}");
        assert_eq!(
            header(&props, "x-attempt").as_deref(),
            Some("1"),
            "never retried"
        );
    }
    assert!(expected.is_empty(), "{expected:?}");
    assert_eq!(
        env.received().len(),
        2,
        "nothing else reached the SMTP server"
    );
    // The 15 MiB event was never parsed: the mailer's peak memory grew by
    // little more than the copies of the bytes the broker handed over.
    let grown = peak_rss(pid).saturating_sub(before);
    assert!(grown < 64 << 20, "peak RSS grew by {} MiB", grown >> 20);
}
