//! Private PostgreSQL and RabbitMQ instances for the fault and cluster
//! suites: their own data folders, ports, Erlang node names and epmd, so
//! breaking them never touches the machine's shared servers (which other
//! test suites use at the same time). Removed when dropped, also while a
//! panic unwinds; a run that was killed outright is swept by the next one
//! (each instance folder lists its processes).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::free_port;

const PG_BIN: &str = "/usr/lib/postgresql";
const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";

/// The folder all private instances live under, one subfolder each.
fn base() -> PathBuf {
    std::env::temp_dir().join("signup-private-instances")
}

/// A fresh folder for one instance, named after this process; stale folders
/// of processes that no longer run are swept first.
fn instance_dir(kind: &str) -> PathBuf {
    sweep_stale();
    let dir = base().join(format!("{}-{kind}-{}", std::process::id(), uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// Kills what a folder's `pids` file lists, if the process still runs from
/// that folder (a recycled pid is left alone), then removes the folder.
fn kill_listed_and_remove(dir: &Path) {
    let listed = std::fs::read_to_string(dir.join("pids")).unwrap_or_default();
    let needle = dir.to_string_lossy().into_owned();
    for pid in listed.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmdline).contains(&needle)
            || String::from_utf8_lossy(&environ).contains(&needle);
        if ours && alive(pid) {
            // SAFETY: plain kill(2) of a process this suite started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(base()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let owner = name.split('-').next().and_then(|p| p.parse::<i32>().ok());
        if owner.is_some_and(|pid| !alive(pid)) {
            kill_listed_and_remove(&e.path());
        }
    }
}

fn remember_pid(dir: &Path, pid: Option<u32>) {
    use std::io::Write;
    if let Some(pid) = pid
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("pids"))
    {
        let _ = writeln!(f, "{pid}");
    }
}

fn signal(pid: Option<u32>, sig: i32) {
    if let Some(pid) = pid {
        // SAFETY: plain kill(2) of a child of this process.
        unsafe { libc::kill(pid as i32, sig) };
    }
}

async fn wait_port(port: u16, within: Duration) -> bool {
    crate::wait_until(within, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await
}

/// The uid and gid of the `postgres` user (PostgreSQL refuses to run as root).
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let mut f = line.split(':').skip(2);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir(PG_BIN)
        .expect("PostgreSQL is installed under /usr/lib/postgresql")
        .flatten()
        .map(|e| e.path())
        .collect();
    versions.sort();
    versions.pop().unwrap().join("bin").join(name)
}

/// A PostgreSQL server of the suite's own, on a free port.
pub struct PrivatePostgres {
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl PrivatePostgres {
    /// initdb (trust, no fsync: the suite tests loss through the services,
    /// not the disk), then start, and wait until it takes connections.
    pub async fn start() -> Self {
        let dir = instance_dir("pg");
        let data = dir.join("data");
        let user = if unsafe { libc::geteuid() } == 0 {
            let (uid, gid) = postgres_user().expect("a postgres user");
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
            Some((uid, gid))
        } else {
            None
        };
        let mut initdb = Command::new(pg_bin("initdb"));
        initdb
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().await.unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Self {
            dir,
            port: free_port(),
            child: None,
        };
        pg.run().await;
        pg
    }

    async fn run(&mut self) {
        let mut cmd = Command::new(pg_bin("postgres"));
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=32MB"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("postgres.log")).unwrap());
        if unsafe { libc::geteuid() } == 0 {
            let (uid, gid) = postgres_user().unwrap();
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().unwrap();
        remember_pid(&self.dir, child.id());
        self.child = Some(child);
        let url = self.url("postgres");
        let ready = crate::wait_until(Duration::from_secs(60), || async {
            tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .is_ok()
        })
        .await;
        assert!(ready, "the private PostgreSQL on {} starts", self.port);
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `db`.
    pub async fn create_database(&self, db: &str) {
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE \"{db}\""))
            .await
            .unwrap();
    }

    /// A fast restart (`pg_ctl restart -m fast`): SIGINT ends every session
    /// and checkpoints, then the server starts again on the same port.
    pub async fn restart_fast(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGINT);
            let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
        }
        self.run().await;
    }

    /// Rows of a query's first column, as text.
    pub async fn column(&self, db: &str, sql: &str) -> Vec<String> {
        let (client, conn) = tokio_postgres::connect(&self.url(db), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .simple_query(sql)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // Immediate shutdown: the data folder goes anyway.
            signal(child.id(), libc::SIGQUIT);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        if let Some(child) = &mut self.child {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        kill_listed_and_remove(&self.dir);
    }
}

/// One RabbitMQ node of a private cluster.
pub struct Node {
    /// Erlang node name, `<name>@localhost`.
    pub name: String,
    /// AMQP port.
    pub port: u16,
    dist_port: u16,
    child: Option<Child>,
}

/// A RabbitMQ cluster of the suite's own (one node is a cluster of one):
/// its own epmd port, node names, data and log folders, Erlang cookie.
pub struct PrivateRabbit {
    dir: PathBuf,
    epmd_port: u16,
    _epmd: Child,
    pub nodes: Vec<Node>,
}

impl PrivateRabbit {
    /// The folder holding the nodes' data and logs (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `n` nodes and joins them into one cluster.
    pub async fn start(n: usize) -> Self {
        let dir = instance_dir("rabbit");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(dir.join("rabbitmq-env.conf"), "").unwrap();
        // Logs to files only; quiet disk alarms on a busy test machine.
        std::fs::write(
            dir.join("rabbitmq.conf"),
            "log.console = false\nlog.file.level = warning\ndisk_free_limit.absolute = 50MB\n",
        )
        .unwrap();
        let cookie = dir.join(".erlang.cookie");
        std::fs::write(&cookie, format!("SIGNUPTEST{}", uuid_like())).unwrap();
        std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o400))
            .unwrap();
        let epmd_port = free_port();
        let epmd = Command::new("epmd")
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .env("SIGNUP_INSTANCE", &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("epmd (erlang-base) is installed");
        remember_pid(&dir, epmd.id());
        assert!(
            wait_port(epmd_port, Duration::from_secs(10)).await,
            "epmd starts"
        );
        let tag = dir.file_name().unwrap().to_string_lossy().replace('-', "_");
        let nodes = (1..=n)
            .map(|i| Node {
                name: format!("t{tag}_{i}@localhost"),
                port: free_port(),
                dist_port: free_port(),
                child: None,
            })
            .collect();
        let mut rabbit = Self {
            dir,
            epmd_port,
            _epmd: epmd,
            nodes,
        };
        for i in 0..n {
            rabbit.spawn_node(i);
        }
        for i in 0..n {
            rabbit.wait_node(i).await;
        }
        let first = rabbit.nodes[0].name.clone();
        for i in 1..n {
            let name = rabbit.nodes[i].name.clone();
            for args in [
                vec!["stop_app"],
                vec!["join_cluster", &first],
                vec!["start_app"],
            ] {
                rabbit.ctl(&name, &args).await;
            }
        }
        rabbit
    }

    fn env(&self, cmd: &mut Command) {
        let d = &self.dir;
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", d)
            .env("LANG", "C.UTF-8")
            .env("SIGNUP_INSTANCE", d)
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env(
                "RABBITMQ_CTL_DIST_PORT_MIN",
                (self.epmd_port as u32 + 1).min(65000).to_string(),
            )
            .env(
                "RABBITMQ_CTL_DIST_PORT_MAX",
                (self.epmd_port as u32 + 11).min(65010).to_string(),
            );
    }

    fn spawn_node(&mut self, i: usize) {
        let mut cmd = Command::new(Path::new(RABBIT_BIN).join("rabbitmq-server"));
        self.env(&mut cmd);
        let node = &self.nodes[i];
        cmd.env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", node.port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            // One scheduler per node: three nodes share two cores with the services.
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "+S 1:1 -kernel inet_dist_use_interface {127,0,0,1}",
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("rabbitmq-server is installed");
        remember_pid(&self.dir, child.id());
        self.nodes[i].child = Some(child);
    }

    async fn wait_node(&self, i: usize) {
        let node = &self.nodes[i];
        let url = self.url_of(i);
        let up = crate::wait_until(Duration::from_secs(120), || async {
            lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                .await
                .is_ok()
        })
        .await;
        assert!(
            up,
            "private RabbitMQ node {} on {} starts",
            node.name, node.port
        );
        // The beam process, for SIGKILL and the sweep.
        if let Some(pid) = self.beam_pid(i) {
            remember_pid(&self.dir, Some(pid));
        }
    }

    /// rabbitmqctl against one node; panics if it fails.
    pub async fn ctl(&self, node: &str, args: &[&str]) -> String {
        let mut cmd = Command::new(Path::new(RABBIT_BIN).join("rabbitmqctl"));
        self.env(&mut cmd);
        cmd.arg("-n").arg(node).args(args);
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .expect("rabbitmqctl answers")
            .unwrap();
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The AMQP URL of node `i` (guest is allowed from 127.0.0.1).
    pub fn url_of(&self, i: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.nodes[i].port)
    }

    /// Every node's URL, comma-separated, starting with node `first`.
    pub fn urls_from(&self, first: usize) -> String {
        let n = self.nodes.len();
        (0..n)
            .map(|k| self.url_of((first + k) % n))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn beam_pid(&self, i: usize) -> Option<u32> {
        let name = &self.nodes[i].name;
        let file = self.dir.join("mnesia").join(format!("{name}.pid"));
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// SIGKILL of node `i`'s Erlang VM: a crash, no goodbye to anyone.
    pub async fn kill(&mut self, i: usize) {
        signal(self.beam_pid(i), libc::SIGKILL);
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
        }
        let port = self.nodes[i].port;
        let down = crate::wait_until(Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
        })
        .await;
        assert!(down, "node {i} is down");
    }

    /// A routine stop of node `i` (SIGTERM: RabbitMQ shuts down cleanly).
    pub async fn stop(&mut self, i: usize) {
        signal(self.beam_pid(i), libc::SIGTERM);
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
        }
    }

    /// Starts node `i` again (it rejoins its cluster) and waits for it.
    pub async fn restart(&mut self, i: usize) {
        self.spawn_node(i);
        self.wait_node(i).await;
    }

    /// Which node (index) leads quorum queue `queue`, if known.
    pub async fn leader_of(&self, queue: &str, alive: usize) -> Option<usize> {
        let out = self
            .ctl(
                &self.nodes[alive].name,
                &["list_queues", "-q", "--no-table-headers", "name", "leader"],
            )
            .await;
        let leader = out.lines().find_map(|l| {
            l.strip_prefix(queue)?
                .split_whitespace()
                .next()
                .map(str::to_owned)
        })?;
        self.nodes.iter().position(|n| n.name == leader)
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            signal(self.beam_pid(i), libc::SIGKILL);
        }
        kill_listed_and_remove(&self.dir);
    }
}
