//! Test harness: runs the real `confero` binary on free loopback ports and drives it with
//! its REST API and third-party SIP peers (SIPp).

// Shared by several test binaries, each using a part; children are reaped in Drop.
#![allow(dead_code, unreachable_pub, clippy::zombie_processes)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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
}

impl Pbx {
    pub fn start() -> Pbx {
        let data_dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(data_dir)
    }

    /// Starts on an existing data dir (to test what survives a restart).
    pub fn start_in(data_dir: tempfile::TempDir) -> Pbx {
        let args = [
            "--sip-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--public-address",
            "127.0.0.1",
        ];
        Self::start_with(data_dir, &args, &[])
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

    /// Everything logged so far (drained).
    pub fn logs(&self) -> Vec<String> {
        let mut lines = std::mem::take(&mut *self.startup.lock().unwrap());
        lines.extend(self.logs.try_iter());
        lines
    }

    /// Threads of the server process (to catch leaks).
    pub fn thread_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// One HTTP/1.1 request with admin Basic auth; returns (status, body).
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http(
            self.http,
            method,
            path,
            body,
            Some(("admin", ADMIN_PASSWORD)),
        )
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

    pub fn apply(&self) {
        let (status, body) = self.api("POST", "/api/v1/changes/apply", Some("{}"));
        assert_eq!(status, 200, "apply: {body}");
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
    let mut s = TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((u, p)) = basic {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        req.push_str(&format!("Authorization: Basic {token}\r\n"));
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
    let mut text = std::fs::read_to_string(sdir.join(base))
        .unwrap()
        .replace("@OUTCOME@", &part_text);
    for (k, v) in vars {
        text = text.replace(&format!("@{k}@"), v);
    }
    let path = dir.join(format!("{}-{}.xml", base.trim_end_matches(".xml.in"), part));
    std::fs::write(&path, text).unwrap();
    path
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
            let log_dir = std::env::temp_dir().join("confero-sipp-logs");
            let errors = std::fs::read_to_string(log_dir.join(format!("{}-errors.log", self.name)))
                .unwrap_or_default();
            let messages =
                std::fs::read_to_string(log_dir.join(format!("{}-messages.log", self.name)))
                    .unwrap_or_default();
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

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
