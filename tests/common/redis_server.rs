//! A private `redis-server` per test: its own process on a free loopback port, which a test
//! can kill and restart on the same port, and which is killed on drop. [`RedisCluster`] is
//! three of them joined into a Redis Cluster.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

pub struct RedisServer {
    pub port: u16,
    binary: PathBuf,
    child: Option<Child>,
    /// Extra arguments (cluster mode).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a fresh, empty, non-persistent Redis on a free port.
    pub fn start() -> Self {
        let binary = redis_binary();
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                port,
                binary: binary.clone(),
                child: None,
                extra: Vec::new(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Spawns redis-server on `self.port`; true once it accepts connections.
    fn spawn(&mut self) -> bool {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = &mut self.child
                && let Ok(Some(_)) = child.try_wait()
            {
                // It exited: most likely the port was taken meanwhile.
                self.child = None;
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts an empty server again on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill before restarting");
        assert!(
            self.spawn(),
            "redis-server did not come back on port {}",
            self.port
        );
    }

    /// A plain connection for inspecting the server from a test.
    pub async fn connection(&self) -> MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Finds `redis-server`, installing it from Debian when missing and running as root.
fn redis_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(found) = which("redis-server") {
                return found;
            }
            let root = Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
            assert!(
                root,
                "redis-server is missing: install it (apt-get install redis-server) or run scripts/test"
            );
            eprintln!("redis-server is missing: installing it with apt-get");
            let install = || {
                Command::new("apt-get")
                    .args(["install", "-y", "-qq", "redis-server"])
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !install() {
                let _ = Command::new("apt-get").args(["update", "-qq"]).status();
                assert!(install(), "apt-get install redis-server failed");
            }
            which("redis-server").expect("redis-server installed but not on PATH")
        })
        .clone()
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Three masters (no replicas) forming a Redis Cluster, each its own process; killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    dir: PathBuf,
}

impl RedisCluster {
    pub fn start() -> Self {
        let binary = redis_binary();
        let cli = which("redis-cli").expect("redis-cli comes with redis-server");
        let dir = std::env::temp_dir().join(format!(
            "beacon-redis-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        while nodes.len() < 3 {
            let port = free_port();
            let mut node = RedisServer {
                port,
                binary: binary.clone(),
                child: None,
                extra: vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    dir.join(format!("nodes-{port}.conf"))
                        .to_string_lossy()
                        .into_owned(),
                    "--dir".into(),
                    dir.to_string_lossy().into_owned(),
                ],
            };
            if node.spawn() {
                nodes.push(node);
            }
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new(&cli)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running redis-cli --cluster create");
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { nodes, dir };
        cluster.wait_ok(&cli);
        cluster
    }

    /// Waits until every node reports `cluster_state:ok`.
    fn wait_ok(&self, cli: &PathBuf) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &self.nodes {
            loop {
                let out = Command::new(cli)
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli cluster info");
                if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster did not come up");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Seed nodes for `--redis-url` with `--redis-cluster`.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
