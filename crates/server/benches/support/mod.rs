//! What both whole-server benchmarks need: the release binary started on free loopback
//! ports, a minimal HTTP client for the API, and readings from /proc.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) const ADMIN_PASSWORD: &str = "bench";

pub(crate) fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    env_opt(name).unwrap_or(default)
}

/// A knob that may be unset (or empty): `None` then, as when it does not parse.
pub(crate) fn env_opt<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .and_then(|v| v.parse().ok())
}

/// The running binary; killed on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) sip: SocketAddr,
    pub(crate) http: SocketAddr,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    _data_dir: tempfile::TempDir,
}

impl Server {
    /// Starts the binary with `extra` flags after the common ones.
    pub(crate) fn start(extra: &[&str]) -> Server {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_confero"))
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--sip-listen", "127.0.0.1:0"])
            .args(["--http-listen", "127.0.0.1:0"])
            .args(["--public-address", "127.0.0.1"])
            .args(extra)
            .env("CONFERO_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start confero");
        // Keep both pipes drained so the server never blocks on a full pipe.
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = stderr_tail.clone();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == 50 {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("confero ready: ") {
                        break rest.to_owned();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let tail = stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
                    panic!(
                        "confero printed no ready line within 30 s; stderr:\n{}",
                        tail.iter().cloned().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        };
        let field = |name: &str| -> SocketAddr {
            let key = format!("{name}=");
            let start = ready.find(&key).expect("field in ready line") + key.len();
            let end = ready[start..].find(' ').map_or(ready.len(), |e| start + e);
            ready[start..end].parse().expect("address in ready line")
        };
        Server {
            sip: field("sip"),
            http: field("http"),
            child,
            stderr_tail,
            _data_dir: data_dir,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stderr_tail(&self) -> String {
        let t = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(crate) fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ==== users ====

/// Bench user `i`'s SIP username and password.
pub(crate) fn username(i: usize) -> String {
    format!("u{i:04}")
}

pub(crate) fn password(i: usize) -> String {
    format!("bench-secret-{i}")
}

/// A `Bearer …` header for a new API token. Basic auth costs an argon2 verification per
/// request, so the token is made with Basic once and used for everything after.
pub(crate) fn bench_token(server: &Server, name: &str) -> String {
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("admin:{ADMIN_PASSWORD}")
        )
    );
    let (status, body) = http(
        server.http,
        "POST",
        "/api/v1/tokens",
        &basic,
        &serde_json::json!({ "name": name }).to_string(),
    );
    assert_eq!(status, 201, "create token: {body}");
    let token: serde_json::Value = serde_json::from_str(&body).expect("token JSON");
    format!("Bearer {}", token["token"].as_str().expect("token field"))
}

/// First user extension; bench user i is extension `USER_BASE + i`.
pub(crate) const USER_BASE: usize = 10_000;

/// Creates users 0..`users` in the draft: extension `USER_BASE + i`, [`username`] and
/// [`password`].
pub(crate) fn create_users(server: &Server, bearer: &str, users: usize) {
    for i in 0..users {
        let user = serde_json::json!({
            "name": format!("Bench user {i}"),
            "extension": (USER_BASE + i).to_string(),
            "sip_username": username(i),
            "sip_password": password(i),
        });
        let (status, body) = http(
            server.http,
            "POST",
            "/api/v1/users",
            bearer,
            &user.to_string(),
        );
        assert_eq!(status, 201, "create user {i}: {body}");
    }
}

/// Puts the draft in production.
pub(crate) fn apply(server: &Server, bearer: &str) {
    let (status, body) = http(server.http, "POST", "/api/v1/changes/apply", bearer, "{}");
    assert_eq!(status, 200, "apply: {body}");
}

/// Creates the users and applies them.
pub(crate) fn provision(server: &Server, users: usize) {
    let bearer = bench_token(server, "bench");
    create_users(server, &bearer, users);
    apply(server, &bearer);
}

/// First room extension; room r is `ROOM_BASE + r`.
pub(crate) const ROOM_BASE: usize = 7000;

/// Creates the users and rooms in the draft and applies it; returns the bearer header for
/// later API calls and the rooms' ids (room r has extension `ROOM_BASE + r`). Basic auth
/// costs an argon2 verification per request, so one token is made with Basic and used after.
pub(crate) fn provision_rooms(server: &Server, users: usize, rooms: usize) -> (String, Vec<i64>) {
    let bearer = bench_token(server, "room-bench");
    create_users(server, &bearer, users);
    for r in 0..rooms {
        let room = serde_json::json!({
            "name": format!("Bench room {r}"),
            "extension": (ROOM_BASE + r).to_string(),
        });
        let (status, body) = http(
            server.http,
            "POST",
            "/api/v1/conferences",
            &bearer,
            &room.to_string(),
        );
        assert_eq!(status, 201, "create room {r}: {body}");
    }
    apply(server, &bearer);
    let (status, body) = http(server.http, "GET", "/api/v1/conferences", &bearer, "");
    assert_eq!(status, 200, "list rooms: {body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("rooms JSON");
    let ids = (0..rooms)
        .map(|r| {
            let ext = (ROOM_BASE + r).to_string();
            list.as_array()
                .and_then(|a| a.iter().find(|c| c["extension"] == ext.as_str()))
                .and_then(|c| c["id"].as_i64())
                .unwrap_or_else(|| panic!("room {ext} not listed: {body}"))
        })
        .collect();
    (bearer, ids)
}

/// One HTTP/1.1 request (`Connection: close`); returns (status, body).
pub(crate) fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: &str,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the HTTP API");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !auth.is_empty() {
        req.push_str(&format!("Authorization: {auth}\r\n"));
    }
    if method != "GET" {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).expect("send HTTP request");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

pub(crate) fn dechunk(mut s: &str) -> String {
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

/// The numeric fields of a /proc stat file after the parenthesised command name (state is
/// field 3 of the file, so index 0 here is field 4).
fn stat_fields(path: &str) -> Vec<u64> {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect()
}

/// utime + stime (fields 14 and 15), in clock ticks, of a /proc stat file.
pub(crate) fn stat_ticks(path: &str) -> u64 {
    let f = stat_fields(path);
    f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)
}

pub(crate) fn cpu_ticks(pid: &str) -> u64 {
    stat_ticks(&format!("/proc/{pid}/stat"))
}

/// CPU ticks of this process's children that have exited and been waited for (cutime +
/// cstime, fields 16 and 17): what a load client run with `Command::output` used.
pub(crate) fn reaped_children_ticks() -> u64 {
    let f = stat_fields("/proc/self/stat");
    f.get(12).copied().unwrap_or(0) + f.get(13).copied().unwrap_or(0)
}

/// The machine-wide UDP `RcvbufErrors` counter (datagrams dropped because a socket's
/// receive buffer was full); other programs' drops count too.
pub(crate) fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Datagrams the kernel dropped because the receive buffer of the UDP socket bound to
/// `port` was full (`/proc/net/udp`'s last column); nothing if no socket has that port.
pub(crate) fn udp_socket_drops(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let local = format!(":{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !fields.get(1)?.ends_with(&local) {
            return None;
        }
        fields.last()?.parse().ok()
    })
}

pub(crate) fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`).
pub(crate) fn status_kb(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Records the loaded server for a few seconds and prints its top functions.
pub(crate) fn profile(pid: &str, path: &str) {
    let record = Command::new("perf")
        .args([
            "record", "-F", "999", "-g", "-o", path, "-p", pid, "--", "sleep", "5",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match record {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            println!(
                "  perf record failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            println!("  perf not available: {e}");
            return;
        }
    }
    let report = |sort: &str, limit: &str, take: usize| -> Vec<String> {
        Command::new("perf")
            .args([
                "report",
                "-i",
                path,
                "--stdio",
                "--no-children",
                "-g",
                "none",
            ])
            .args(["--percent-limit", limit, "--sort", sort])
            .stderr(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .map(|l| {
                        let words: Vec<&str> = l.split_whitespace().collect();
                        let end = words.iter().rposition(|w| *w != "-").map_or(0, |e| e + 1);
                        words[..end].join(" ")
                    })
                    .take(take)
                    .collect()
            })
            .unwrap_or_default()
    };
    println!(
        "  perf of the loaded server (5 s, self time): {}",
        report("dso", "0.5", 6).join(", ")
    );
    for line in report("comm,dso,symbol", "1", 30) {
        println!("    {line}");
    }
    println!("  (full profile: perf report -i {path})");
}
