//! What the tests and benchmarks of this workspace share: the machine's
//! broker and database, free ports, waiting for a condition, the test SMTP
//! server (aiosmtpd with STARTTLS and AUTH, from tests/support) and the
//! teardown of everything a test made.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use shared::Topology;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub mod fleet;
pub mod instances;
pub mod proxy;

pub use proxy::Proxy;

/// The machine's RabbitMQ.
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The machine's PostgreSQL, without a database name.
pub const PG: &str = "postgres://postgres@127.0.0.1:5432";

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The virtualenv's python that runs the test SMTP server and the stock AMQP
/// client; `scripts/test` installs it.
pub fn python() -> PathBuf {
    let p = std::env::var_os("TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/test-venv/bin/python"));
    assert!(
        p.exists(),
        "the test SMTP server needs its virtualenv: run scripts/test (or source scripts/test-deps.sh)"
    );
    p
}

/// A command-line tool that `scripts/test` installs into the test virtualenv
/// from PyPI (tests/support/requirements.txt: docker-compose, hadolint,
/// kubernetes-validate), beside [`python`].
pub fn venv_tool(name: &str) -> PathBuf {
    let p = python().with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/test (or source scripts/test-deps.sh)",
        p.display()
    );
    p
}

/// target/<profile>/, where cargo put the service binaries (beside the
/// running test's deps/ folder).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_owned()
}

/// A service binary (`account`, `mailer`), built first: `cargo test -p e2e`
/// alone does not build other packages' binaries, and a stale one would test
/// old code. A no-op when they are fresh. `--workspace --all-targets`
/// resolves features as `cargo nextest run --workspace` does, so after the
/// test build it finds the binaries fresh; `--bin account --bin mailer` alone
/// resolved them differently and built a second copy of every service crate.
pub fn service_binary(name: &str) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--workspace", "--all-targets"])
            .current_dir(root());
        if bin_dir().ends_with("release") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().unwrap().success(),
            "building the service binaries"
        );
    });
    bin_dir().join(name)
}

/// A TCP port nothing listens on right now.
///
/// Taken below the kernel's ephemeral range (32768–60999 on Debian): a
/// port from `bind(0)`, once released, can be handed to any outgoing
/// connection (the tests open hundreds to PostgreSQL and RabbitMQ) before
/// the service under test binds it. These are never handed out; a random
/// start per call keeps parallel test processes apart.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    const FIRST: u64 = 20_000;
    const SPAN: u64 = 12_000;
    let start = RandomState::new().hash_one(std::process::id());
    for i in 0..SPAN {
        let port = (FIRST + (start.wrapping_add(i.wrapping_mul(7_919))) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
}

/// Polls `f` every 100 ms until it holds or `within` has passed.
pub async fn wait_until<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `url` answers 2xx (a health endpoint of a starting process).
pub async fn wait_ok(client: &reqwest::Client, url: &str, within: Duration) -> bool {
    wait_until(within, || async {
        client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await
}

/// Where the test SMTP server keeps what it received and its certificates.
pub struct SmtpDirs<'a> {
    /// One `<n>.json` summary (decoded subject, parts, recipients) and
    /// `<n>.eml` per accepted mail.
    pub inbox: &'a Path,
    /// The CA (`ca.pem`) and the server's certificate; made on first start.
    pub pki: &'a Path,
}

/// Starts aiosmtpd (tests/support/smtpd.py) on `port`: STARTTLS required and
/// AUTH with `user`/`password`, the way Naver's server is run; `flags` adds
/// e.g. `--implicit-tls`. Returns once it listens; killed when dropped.
pub async fn start_smtp(
    port: u16,
    user: &str,
    password: &str,
    dirs: SmtpDirs<'_>,
    flags: &[&str],
) -> Child {
    let mut child = Command::new(python())
        .arg(root().join("tests/support/smtpd.py"))
        .args(["--port", &port.to_string(), "--user", user])
        .args(["--password", password])
        .arg("--dir")
        .arg(dirs.inbox)
        .arg("--pki")
        .arg(dirs.pki)
        .args(flags)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the SMTP server starts within 30 s")
        .unwrap()
        .unwrap_or_default();
    assert!(line.starts_with("READY"), "SMTP server: {line}");
    child
}

/// The summaries of every mail the test SMTP server accepted into `inbox`,
/// in the order it accepted them.
pub fn received(inbox: &Path) -> Vec<Value> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(inbox)
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.parse().ok()?, p)))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|(_, p)| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

/// Removes what a test made when dropped, also while a panic unwinds: its
/// folder, its database, and its broker prefix (the exchange, the queue, the
/// dead-letter queue and a retry queue per delay).
pub struct Teardown {
    pub dir: Option<PathBuf>,
    pub database: Option<String>,
    pub topology: Option<Topology>,
    /// The retry delays of every ladder a mailer of the test declared.
    pub retry_delays: Vec<Duration>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        let database = self.database.take();
        let topology = self.topology.take();
        let delays = std::mem::take(&mut self.retry_delays);
        // A thread of its own: drop may run inside a runtime, or in a panic.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Some(db) = database {
                    drop_database(&db).await;
                }
                if let Some(t) = topology {
                    delete_topology(&t, &delays).await;
                }
            });
        })
        .join();
    }
}

async fn drop_database(db: &str) {
    let Ok((client, conn)) =
        tokio_postgres::connect(&format!("{PG}/postgres"), tokio_postgres::NoTls).await
    else {
        return;
    };
    let conn = tokio::spawn(conn);
    let _ = client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .await;
    drop(client);
    let _ = conn.await;
}

async fn delete_topology(t: &Topology, delays: &[Duration]) {
    let Ok(conn) = Connection::connect(AMQP, ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        let mut queues = vec![t.queue(), t.dead_queue()];
        queues.extend(delays.iter().map(|d| t.retry_queue(*d)));
        for q in queues {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in [t.exchange(), t.account_exchange()] {
            let _ = ch
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = conn.close(200, "bye".into()).await;
}

/// Copies folders (service and broker logs) to
/// `target/reliability/<name>-failed/` when dropped during a panic, so a
/// failed suite leaves its evidence behind; does nothing on success. Declare
/// it after what writes the logs and before what removes them.
pub struct KeepOnFailure {
    pub name: &'static str,
    pub folders: Vec<PathBuf>,
}

impl Drop for KeepOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let to = root()
            .join("target/reliability")
            .join(format!("{}-failed", self.name));
        let _ = std::fs::remove_dir_all(&to);
        let _ = std::fs::create_dir_all(&to);
        for from in &self.folders {
            let _ = std::process::Command::new("cp")
                .arg("-r")
                .arg(from)
                .arg(&to)
                .status();
        }
        eprintln!("{}: logs kept in {}", self.name, to.display());
    }
}
