//! Test harness: runs the real `confero` binary on free loopback ports and drives it with
//! its REST API and third-party SIP peers (SIPp; baresip phones in [`baresip`]).

// Shared by several test binaries, each using a part; children are reaped in Drop.
#![allow(dead_code, unreachable_pub, clippy::zombie_processes)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod baresip;
pub mod room_caller;
pub mod rtp;

/// Skips the test (returns) with a message when `$cmd` is not installed — unless `CI` is
/// set, where the peer must be there and its absence fails the test.
#[allow(unused_macros)]
macro_rules! require {
    ($cmd:expr, $pkg:expr) => {
        if std::process::Command::new($cmd)
            .arg("-h")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_err()
        {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "{} is not installed but CI must run the tests needing it",
                    $cmd
                );
            }
            eprintln!("SKIPPED: {} not installed (apt-get install {})", $cmd, $pkg);
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require;

pub const ADMIN_PASSWORD: &str = "test-admin-password";

/// A running PBX, killed on drop.
pub struct Pbx {
    child: Child,
    pub sip: SocketAddr,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub data_dir: tempfile::TempDir,
    logs: mpsc::Receiver<String>,
    /// Lines read while waiting for the ready line, handed out by the first `logs()`.
    startup: std::sync::Mutex<Vec<String>>,
    /// The admin's API token, made on first use by [`Pbx::api`].
    token: std::sync::OnceLock<String>,
}

/// Free ports on loopback, and loopback in SDP.
const LOOPBACK_ARGS: [&str; 6] = [
    "--sip-listen",
    "127.0.0.1:0",
    "--http-listen",
    "127.0.0.1:0",
    "--public-address",
    "127.0.0.1",
];

impl Pbx {
    pub fn start() -> Pbx {
        let data_dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(data_dir)
    }

    /// Starts on an existing data dir (to test what survives a restart).
    pub fn start_in(data_dir: tempfile::TempDir) -> Pbx {
        Self::start_with(data_dir, &LOOPBACK_ARGS, &[])
    }

    /// Starts on loopback and a fresh data dir, with `extra` flags.
    pub fn start_with_flags(extra: &[&str]) -> Pbx {
        let args: Vec<&str> = LOOPBACK_ARGS.iter().chain(extra).copied().collect();
        Self::start_with(tempfile::tempdir().expect("tempdir"), &args, &[])
    }

    /// Starts with exactly these flags (plus `--data-dir`) and environment.
    pub fn start_with(data_dir: tempfile::TempDir, args: &[&str], envs: &[(&str, &str)]) -> Pbx {
        let mut child = Command::new(env!("CARGO_BIN_EXE_confero"))
            .args(["--data-dir", data_dir.path().to_str().unwrap()])
            .args(args)
            .envs(envs.iter().copied())
            .env("CONFERO_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("RUST_LOG", "info,confero_pbx=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start confero");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, logs) = mpsc::channel();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx2.send(line);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut startup = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = logs
                .recv_timeout(left)
                .expect("confero did not print its ready line in 30 s");
            startup.push(line.clone());
            if let Some(rest) = line.strip_prefix("confero ready: ") {
                let field = |name: &str| -> SocketAddr {
                    let start = rest.find(&format!("{name}=")).unwrap() + name.len() + 1;
                    let end = rest[start..].find(' ').map_or(rest.len(), |e| start + e);
                    rest[start..end].parse().unwrap()
                };
                return Pbx {
                    sip: field("sip"),
                    http: field("http"),
                    https: rest.contains("https=").then(|| field("https")),
                    child,
                    data_dir,
                    logs,
                    startup: std::sync::Mutex::new(startup),
                    token: std::sync::OnceLock::new(),
                };
            }
        }
    }

    /// Stops the process (SIGTERM, as an operator would) and hands back the data dir.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "confero exited with {status} after SIGTERM"
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "confero did not stop within 10 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::mem::replace(&mut self.data_dir, tempfile::tempdir().unwrap())
    }

    /// Kills the server with SIGKILL (no chance to clean up) and hands back its data.
    pub fn kill_9(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.data_dir, tempfile::tempdir().unwrap())
    }

    /// Everything logged so far (drained).
    pub fn logs(&self) -> Vec<String> {
        let mut lines = std::mem::take(&mut *self.startup.lock().unwrap());
        lines.extend(self.logs.try_iter());
        lines
    }

    /// Stops the whole server process for `d` (SIGSTOP, then SIGCONT), as an overloaded or
    /// suspended machine would.
    pub fn pause_for(&self, d: Duration) {
        let pid = self.child.id().to_string();
        let signal = |sig: &str| {
            let ok = std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {sig} {pid}");
        };
        signal("-STOP");
        std::thread::sleep(d);
        signal("-CONT");
    }

    /// Threads of the server process (to catch leaks).
    pub fn thread_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// One HTTP/1.1 request as the admin; returns (status, body). It carries a bearer
    /// token made with the admin's Basic credentials on first use: each Basic request
    /// costs an argon2 check (most of a second in a debug build), too slow to poll with.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        request(self.http, method, path, body, Some(&self.bearer()))
    }

    /// `Bearer …` with the admin's API token, made on first use.
    pub fn bearer(&self) -> String {
        let token = self.token.get_or_init(|| {
            let (status, text) = http(
                self.http,
                "POST",
                "/api/v1/tokens",
                Some(r#"{"name":"integration tests"}"#),
                Some(("admin", ADMIN_PASSWORD)),
            );
            assert_eq!(status, 201, "create an API token: {text}");
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["token"]
                .as_str()
                .unwrap()
                .to_owned()
        });
        format!("Bearer {token}")
    }

    /// Creates a user with a known password in the draft.
    pub fn create_user(&self, name: &str, extension: &str, username: &str, password: &str) {
        let (status, body) = self.api(
            "POST",
            "/api/v1/users",
            Some(&format!(
                r#"{{"name":"{name}","extension":"{extension}","sip_username":"{username}","sip_password":"{password}"}}"#
            )),
        );
        assert_eq!(status, 201, "create user: {body}");
    }

    /// Applies the draft and waits until the engine routes calls by the new revision.
    pub fn apply(&self) {
        let (status, body) = self.api("POST", "/api/v1/changes/apply", Some("{}"));
        assert_eq!(status, 200, "apply: {body}");
        let revision = serde_json::from_str::<serde_json::Value>(&body).unwrap()["revision"]
            .as_f64()
            .unwrap();
        let seen = wait_for_metric(
            self,
            "confero_engine_config_revision",
            revision,
            Duration::from_secs(5),
        );
        assert!(
            seen >= revision,
            "the engine did not pick up revision {revision}"
        );
    }
}

impl Drop for Pbx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal HTTP/1.1 client (no extra crates): `Connection: close`, read to end.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    basic: Option<(&str, &str)>,
) -> (u16, String) {
    use base64::Engine as _;
    let authorization = basic.map(|(u, p)| {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        format!("Basic {token}")
    });
    request(addr, method, path, body, authorization.as_deref())
}

/// [`http`] with any `Authorization` header value.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    authorization: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(value) = authorization {
        req.push_str(&format!("Authorization: {value}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method != "GET" {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A UDP port that was free a moment ago (bound to 0 and read back).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sipp")
}

/// Builds a scenario from `base` (`caller.xml.in`/`callee.xml.in`) and an outcome part,
/// with `@NAME@` placeholders replaced; returns the path of the file written.
pub fn scenario(dir: &Path, base: &str, part: &str, vars: &[(&str, &str)]) -> PathBuf {
    let sdir = scenario_dir();
    let mut part_text = std::fs::read_to_string(sdir.join(part)).unwrap();
    if part_text.contains("@ANSWERS@") {
        let answers = std::fs::read_to_string(sdir.join("callee_answers.part")).unwrap();
        part_text = part_text.replace("@ANSWERS@", &answers);
    }
    let text = std::fs::read_to_string(sdir.join(base))
        .unwrap()
        .replace("@OUTCOME@", &part_text);
    let name = format!("{}-{}.xml", base.trim_end_matches(".xml.in"), part);
    write_filled(&dir.join(name), text, vars)
}

/// A whole scenario file of `tests/sipp` (no outcome part) with `@NAME@` placeholders
/// replaced, written to `dir` as `name`.
pub fn template(dir: &Path, file: &str, name: &str, vars: &[(&str, &str)]) -> PathBuf {
    let text = std::fs::read_to_string(scenario_dir().join(file)).unwrap();
    write_filled(&dir.join(name), text, vars)
}

fn write_filled(path: &Path, mut text: String, vars: &[(&str, &str)]) -> PathBuf {
    for (k, v) in vars {
        text = text.replace(&format!("@{k}@"), v);
    }
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// A SIPp run. `args` come after the common ones.
pub struct Sipp {
    child: Child,
    name: String,
}

pub fn sipp_available() -> bool {
    Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

impl Sipp {
    pub fn spawn(name: &str, scenario: &Path, local_port: u16, args: &[&str]) -> Sipp {
        let log_dir = std::env::temp_dir().join("confero-sipp-logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        for kind in ["errors", "messages"] {
            // A log left by an earlier run must not pass for this one's.
            let _ = std::fs::remove_file(log_dir.join(format!("{name}-{kind}.log")));
        }
        let child = Command::new("sipp")
            .arg("-sf")
            .arg(scenario)
            .args(["-i", "127.0.0.1", "-p", &local_port.to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "30s", "-timeout_error"])
            .args(["-trace_err", "-trace_msg"])
            .arg("-error_file")
            .arg(log_dir.join(format!("{name}-errors.log")))
            .arg("-message_file")
            .arg(log_dir.join(format!("{name}-messages.log")))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sipp");
        Sipp {
            child,
            name: name.to_owned(),
        }
    }

    /// Waits for SIPp to finish; panics with its logs unless it succeeded.
    pub fn expect_success(mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sipp {} did not finish in 60 s", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            let errors = sipp_log(&self.name, "errors");
            let messages = sipp_log(&self.name, "messages");
            let mut stderr = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            panic!(
                "sipp {} failed ({status}):\n--- errors ---\n{errors}\n--- messages ---\n{messages}\n--- stderr ---\n{stderr}",
                self.name
            );
        }
    }
}

/// A log of the SIPp run called `name`: `"messages"` (every message sent and received,
/// with `-trace_msg`) or `"errors"`.
pub fn sipp_log(name: &str, kind: &str) -> String {
    let log_dir = std::env::temp_dir().join("confero-sipp-logs");
    std::fs::read_to_string(log_dir.join(format!("{name}-{kind}.log"))).unwrap_or_default()
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends raw bytes and returns the first answer, if any, within `wait`.
pub fn udp_exchange(
    sock: &UdpSocket,
    to: std::net::SocketAddr,
    data: &[u8],
    wait: Duration,
) -> Option<String> {
    sock.send_to(data, to).unwrap();
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 65536];
    sock.recv_from(&mut buf)
        .ok()
        .map(|(n, _)| String::from_utf8_lossy(&buf[..n]).to_string())
}

/// Registers `user` with SIPp from `local_port`; Contact names `contact_port`.
pub fn register(
    pbx: &Pbx,
    user: &str,
    password: &str,
    local_port: u16,
    contact_port: u16,
    transport: &str,
) {
    let target = pbx.sip.to_string();
    Sipp::spawn(
        &format!("register-{user}-{local_port}"),
        &scenario_dir().join("register.xml"),
        local_port,
        &[
            "-s",
            user,
            "-au",
            user,
            "-ap",
            password,
            "-key",
            "contact_port",
            &contact_port.to_string(),
            "-key",
            "expires",
            "3600",
            "-t",
            transport,
            &target,
        ],
    )
    .expect_success();
}

pub type WsSocket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

/// A browser's WebSocket to the PBX's `/ws`, asking for `protocol` (checked when given).
pub fn ws_connect(pbx: &Pbx, protocol: Option<&str>) -> Result<WsSocket, tungstenite::Error> {
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/ws",
        pbx.http
    ))
    .unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let (mut ws, resp) = tungstenite::connect(req)?;
    if protocol.is_some() {
        assert_eq!(
            resp.headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok()),
            Some("sip")
        );
    }
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
    }
    Ok(ws)
}

// ---- live state through the API -----------------------------------------------------

pub fn metric(pbx: &Pbx, name: &str) -> f64 {
    let series = metric_series(pbx, name);
    assert!(!series.is_empty(), "no {name} in /metrics");
    series.iter().map(|(_, v)| v).sum()
}

/// Each series of a metric in /metrics: its labels (`{thread="0"}`, or empty) and value.
pub fn metric_series(pbx: &Pbx, name: &str) -> Vec<(String, f64)> {
    let (_, text) = http(pbx.http, "GET", "/metrics", None, None);
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            if !(labels.is_empty() || labels.starts_with('{')) {
                return None; // another metric whose name starts with this one
            }
            Some((labels.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Calls `f` every 100 ms until `done` holds for its value or `within` passed; returns the
/// last value. The live state is published a little after the engine changes it.
pub fn poll<T>(within: Duration, mut f: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + within;
    loop {
        let v = f();
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn wait_for_metric(pbx: &Pbx, name: &str, value: f64, within: Duration) -> f64 {
    poll(within, || metric(pbx, name), |v| *v == value)
}

pub fn conference_id(pbx: &Pbx, extension: &str) -> i64 {
    let (_, body) = pbx.api("GET", "/api/v1/conferences", None);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|c| c["extension"] == extension)
        .and_then(|c| c["id"].as_i64())
        .unwrap()
}

pub fn participants(pbx: &Pbx, id: i64) -> Vec<serde_json::Value> {
    let (status, body) = pbx.api(
        "GET",
        &format!("/api/v1/conferences/{id}/participants"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls the room until `pred` holds for its participant list (bounded).
pub fn wait_for_room(
    pbx: &Pbx,
    id: i64,
    within: Duration,
    pred: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        let list = participants(pbx, id);
        if pred(&list) || Instant::now() > deadline {
            return list;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
