//! N accounts and M mailers on a RabbitMQ cluster, the production shape on
//! one machine: two account instances and two mailers, each given all three
//! node addresses (`*_AMQP_URL` as a list, each starting with another
//! node), against a three-node cluster this test starts (private nodes,
//! own epmd, quorum queues) with a private PostgreSQL and the mailers'
//! shared dedupe store. Sign-ups go through both accounts; mid-run the node
//! leading the work queue is SIGKILLed, mail must keep flowing while it is
//! down (failover, not waiting for it), one mailer is SIGKILLed too, then
//! the node comes back. No mail is lost, and every link signs in through
//! either account instance. Figures (sign-ups, mails, duplicates, failover
//! times) are printed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use testkit::fleet::{self, Flood, Proc};
use testkit::instances::{PrivatePostgres, PrivateRabbit};
use testkit::{SmtpDirs, free_port, start_smtp};

const SIGNUPS: usize = 400;
const SMTP_USER: &str = "no-reply@naver.test";
const SMTP_PASSWORD: &str = "cluster-app-password";
const PREFIX: &str = "cluster";
const LADDER: &str = "1s,2s,3s,5s,8s,13s,20s,30s";

struct Folder(PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn wait_ready(urls: &[String]) -> bool {
    let client = reqwest::Client::new();
    for url in urls {
        if !testkit::wait_ok(&client, url, Duration::from_secs(120)).await {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_and_two_mailers_ride_out_a_node_crash_on_a_three_node_cluster() {
    let started = Instant::now();
    // Declared first, dropped last: the folder goes after every process.
    let folder =
        Folder(std::env::temp_dir().join(format!("cluster-{}", uuid::Uuid::new_v4().simple())));
    let dir = folder.0.clone();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let pg = PrivatePostgres::start().await;
    pg.create_database("accounts").await;
    let mut rabbit = PrivateRabbit::start(3).await;
    let cluster_up = started.elapsed();
    let smtp_port = free_port();
    let dirs = SmtpDirs {
        inbox: &dir.join("inbox"),
        pki: &dir.join("pki"),
    };
    let _smtp = start_smtp(smtp_port, SMTP_USER, SMTP_PASSWORD, dirs, &[]).await;
    let logs = dir.join("logs");
    // Dropped after the services, before the cluster and the folder.
    let _keep = testkit::KeepOnFailure {
        name: "cluster",
        folders: vec![logs.clone(), rabbit.dir().to_owned()],
    };

    // Mailers: quorum queues, the shared dedupe store, all three nodes.
    let mailer_ports = [free_port(), free_port()];
    let mut mailers = Vec::new();
    for (i, first_node) in [(0, 0), (1, 1)] {
        let server = fleet::MailServer {
            port: smtp_port,
            user: SMTP_USER,
            password: SMTP_PASSWORD,
            pki: &dir.join("pki"),
        };
        let mut e = fleet::mailer_env(&rabbit.urls_from(first_node), PREFIX, &server, LADDER);
        for (k, v) in [
            ("MAILER_BIND", format!("127.0.0.1:{}", mailer_ports[i])),
            ("MAILER_QUEUE_TYPE", "quorum".into()),
            ("MAILER_DEDUPE_URL", pg.url("accounts")),
        ] {
            e.push((k.into(), v));
        }
        mailers.push(Proc::spawn(
            &testkit::service_binary("mailer"),
            &format!("mailer-{i}"),
            e,
            &logs,
        ));
        // One at a time: the first declares the queues (its node leads them).
        let ready = format!("http://127.0.0.1:{}/readyz", mailer_ports[i]);
        assert!(wait_ready(&[ready]).await, "mailer {i} is ready");
    }

    // Two account instances on one database, each starting with another node.
    let keys = fleet::token_keys();
    let mut accounts = Vec::new();
    let mut account_urls = Vec::new();
    for (i, first_node) in [(0, 0), (1, 2)] {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        // One public site: a link from either instance works on both.
        let e = fleet::account_env(
            port,
            "https://account.example",
            &pg.url("accounts"),
            &rabbit.urls_from(first_node),
            PREFIX,
            &keys,
        );
        accounts.push(Proc::spawn(
            &testkit::service_binary("account"),
            &format!("account-{i}"),
            e,
            &logs,
        ));
        account_urls.push(url);
    }
    let mut ready_urls: Vec<String> = account_urls.iter().map(|u| format!("{u}/readyz")).collect();
    ready_urls.extend(
        mailer_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}/readyz")),
    );
    assert!(wait_ready(&ready_urls).await, "every service is ready");
    let inbox = dir.join("inbox");

    // The node leading the work queue, asked before the load: rabbitmqctl
    // can take tens of seconds on a busy machine, and asked after the first
    // quarter of the sign-ups, the flood had ended and its mail gone out
    // before the kill, leaving fewer than 50 mails to flow while the node
    // was down (the suite then failed for want of work, not of failover).
    // Nothing moves a quorum queue's leader while every node is up.
    let queue = format!("{PREFIX}.mailer.send");
    let leader = rabbit
        .leader_of(&queue, 2)
        .await
        .expect("the work queue has a leader");

    // Load through both accounts.
    let flood = Flood::start(account_urls.clone(), "cluster", SIGNUPS, 16);
    assert!(
        flood
            .wait_accepted(SIGNUPS / 4, Duration::from_secs(120))
            .await,
        "the flood runs"
    );

    // Kill the node that leads the work queue, three quarters of the
    // sign-ups still to come.
    let mails_before = testkit::received(&inbox).len();
    let killed_at = Instant::now();
    rabbit.kill(leader).await;
    let survivor = (leader + 1) % 3;

    // Mail keeps flowing while the node is down.
    let mut first_mail_after = None;
    let flowing = testkit::wait_until(Duration::from_secs(120), || {
        let n = testkit::received(&inbox).len();
        if n > mails_before && first_mail_after.is_none() {
            first_mail_after = Some(killed_at.elapsed());
        }
        async move { n >= mails_before + 50 }
    })
    .await;
    let fifty_after = killed_at.elapsed();
    assert!(flowing, "50 more mails while node {leader} is down");
    // The election may still be settling when the survivors already serve.
    let deadline = Instant::now() + Duration::from_secs(60);
    let new_leader = loop {
        let asked = rabbit
            .leader_of(&queue, survivor)
            .await
            .filter(|l| *l != leader);
        if asked.is_some() || Instant::now() > deadline {
            break asked;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let elected = new_leader.is_some();
    assert!(elected, "the work queue has a new leader: {new_leader:?}");
    assert!(
        wait_ready(&ready_urls).await,
        "every service ready again while the node is down"
    );
    let all_ready_after = killed_at.elapsed();

    // And one mailer dies too, while the node is still down.
    mailers[0].sigkill().await;
    mailers[0].restart();
    let answers = flood.finish().await;
    rabbit.restart(leader).await;
    let node_back_after = killed_at.elapsed();
    assert!(
        wait_ready(&ready_urls).await,
        "every service is ready after it all"
    );

    let missing =
        fleet::wait_for_every_mail(&inbox, &answers.accepted, Duration::from_secs(240)).await;
    let counts = fleet::mail_counts(&inbox);
    let duplicates: usize = counts.values().map(|n| n.saturating_sub(1)).sum();

    // Every link signs in, through either instance.
    let mails: HashMap<String, serde_json::Value> = testkit::received(&inbox)
        .into_iter()
        .filter_map(|m| Some((m["rcpt_tos"][0].as_str()?.to_owned(), m)))
        .collect();
    let mut signed_in = 0;
    let mut failures = Vec::new();
    for (i, address) in answers.accepted.iter().enumerate() {
        let Some(mail) = mails.get(address) else {
            continue;
        };
        let link = fleet::link_in(mail);
        let via = &account_urls[i % 2];
        match fleet::sign_in_with(via, &link).await {
            Ok(who) if &who == address => signed_in += 1,
            other => failures.push(format!("{address} via {via}: {other:?}")),
        }
    }

    let table = format!(
        "\ncluster suite: 3 RabbitMQ nodes (quorum queues), 2 accounts, 2 mailers (dedupe store on)\n\
         cluster suite: cluster up in {:.1}s; sign-ups 202: {} (other answers: {:?})\n\
         cluster suite: node {leader} (work-queue leader) SIGKILLed; new leader: node {}; first mail after the kill: {:.2}s; 50 mails after: {:.2}s; every service ready again: {:.2}s; node back: {:.1}s\n\
         cluster suite: mails {}, lost {}, duplicates {}, links signed in {}/{} (alternating instances)\n\
         cluster suite: whole test {:.0}s\n",
        cluster_up.as_secs_f64(),
        answers.accepted.len(),
        answers
            .by_status
            .iter()
            .filter(|(s, _)| *s != "202")
            .collect::<Vec<_>>(),
        new_leader.unwrap_or(usize::MAX),
        first_mail_after.unwrap_or_default().as_secs_f64(),
        fifty_after.as_secs_f64(),
        all_ready_after.as_secs_f64(),
        node_back_after.as_secs_f64(),
        counts.values().sum::<usize>(),
        missing.len(),
        duplicates,
        signed_in,
        answers.accepted.len(),
        started.elapsed().as_secs_f64(),
    );
    println!("{table}");
    let figures = testkit::root().join("target/reliability");
    let _ = std::fs::create_dir_all(&figures);
    let _ = std::fs::write(figures.join("cluster.txt"), &table);

    assert!(
        answers.accepted.len() >= SIGNUPS,
        "{} sign-ups accepted",
        answers.accepted.len()
    );
    assert!(
        !answers.by_status.contains_key("500"),
        "a 500 among {:?}",
        answers.by_status
    );
    assert!(
        missing.is_empty(),
        "lost: {} accepted sign-ups without mail",
        missing.len()
    );
    assert!(
        failures.is_empty(),
        "links that did not sign in:\n{}",
        failures.join("\n")
    );
    let mut errors: Vec<String> = accounts.iter().flat_map(|p| p.error_lines()).collect();
    errors.extend(mailers.iter().flat_map(|p| p.error_lines()));
    assert!(
        errors.is_empty(),
        "ERROR lines in the services' logs:\n{}",
        errors.join("\n")
    );
    drop(accounts);
    drop(mailers);
}
