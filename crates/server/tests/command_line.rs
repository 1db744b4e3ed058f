//! The binary's command line: flags, environment, `confero.toml`, HTTPS and shutdown.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn config_file_and_environment_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("confero.toml");
    // The file sets HTTP and the public address; the environment sets SIP.
    std::fs::write(
        &toml,
        "http-listen = \"127.0.0.1:0\"\npublic-address = \"127.0.0.1\"\nrtp-ports = \"30000-30100\"\n",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let pbx = Pbx::start_with(
        data,
        &["--config", toml.to_str().unwrap()],
        &[("CONFERO_SIP_LISTEN", "127.0.0.1:0")],
    );
    assert!(pbx.sip.ip().is_loopback() && pbx.http.ip().is_loopback());
    assert_eq!(http(pbx.http, "GET", "/healthz", None, None).0, 200);
    // SIGTERM stops it cleanly (exit status 0, checked inside stop()).
    pbx.stop();
}

#[test]
fn bad_settings_are_refused_with_a_clear_message() {
    for (args, needle) in [
        (vec!["--rtp-ports", "9-3"], "rtp-ports"),
        (
            vec!["--https-listen", "127.0.0.1:0", "--tls-key", "/nonexistent"],
            "tls-cert",
        ),
        (vec!["--sip-listen", "not-an-address"], "sip-listen"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_confero"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn https_serves_the_same_api_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(made, Ok(s) if s.success()) {
        assert!(std::env::var_os("CI").is_none(), "openssl is needed in CI");
        eprintln!("SKIPPED: openssl not installed");
        return;
    }
    let pbx = Pbx::start_with(
        tempfile::tempdir().unwrap(),
        &[
            "--sip-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--https-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let https = pbx.https.expect("https address in the ready line");
    let text = https_get(https, "/healthz").expect("openssl runs");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[test]
fn https_without_a_certificate_makes_a_self_signed_one_once_and_keeps_it() {
    let args = [
        "--sip-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--https-listen",
        "127.0.0.1:0",
    ];
    let pbx = Pbx::start_with(tempfile::tempdir().unwrap(), &args, &[]);
    let https = pbx.https.expect("https address in the ready line");
    let got = https_get(https, "/healthz").expect("openssl runs");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let dir = pbx.stop();
    let cert = dir.path().join("tls").join("self-signed-cert.pem");
    let key = dir.path().join("tls").join("self-signed-key.pem");
    let pem = std::fs::read_to_string(&cert).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is private: {mode:o}");
    }
    // A restart keeps it: browsers that accepted it once keep working.
    let pbx = Pbx::start_with(dir, &args, &[]);
    assert_eq!(
        std::fs::read_to_string(pbx.data_dir.path().join("tls").join("self-signed-cert.pem"))
            .unwrap(),
        pem
    );
}

/// GET over TLS with `openssl s_client` (certificate not verified); None without openssl.
fn https_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    let mut client = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    client
        .stdin
        .take()
        .unwrap()
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let out = client.wait_with_output().unwrap();
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn sigterm_right_after_the_ready_line_is_a_graceful_stop() {
    // A supervisor (or a test) may stop the server the moment it says it is ready: the
    // signal handlers must already be in place then. Several tries, since the window was
    // a race.
    use std::io::BufRead as _;
    for _ in 0..10 {
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_confero"))
            .args(["--data-dir", data.path().to_str().unwrap()])
            .args([
                "--sip-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        for line in stdout.lines() {
            if line.unwrap().starts_with("confero ready") {
                break;
            }
        }
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "stopped by the signal itself: {status}");
    }
}

#[test]
fn prompts_in_the_data_dir_replace_the_built_in_ones() {
    // A valid replacement (8 kHz mono PCM) is used…
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("prompts")).unwrap();
    let mut wav = Vec::new();
    let samples: Vec<i16> = (0..8000)
        .map(|i| ((i as f64 * 0.3).sin() * 8000.0) as i16)
        .collect();
    let data_len = (samples.len() * 2) as u32;
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&16000u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        wav.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(data.path().join("prompts/goodbye.wav"), &wav).unwrap();
    let pbx = Pbx::start_in(data);
    let logs = pbx.logs().join("\n");
    assert!(
        logs.contains("using the administrator's prompt") && logs.contains("goodbye.wav"),
        "{logs}"
    );
    drop(pbx);

    // …and a broken one stops the server with a message naming the file, rather than
    // playing garbage to callers.
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("prompts")).unwrap();
    std::fs::write(data.path().join("prompts/goodbye.wav"), b"not a wav").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_confero"))
        .args(["--data-dir", data.path().to_str().unwrap()])
        .args([
            "--sip-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .env("CONFERO_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("goodbye.wav"), "{err}");
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    use std::io::{BufRead, BufReader};
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 256 && exec {} --data-dir {} --sip-listen 127.0.0.1:0 --http-listen 127.0.0.1:0",
            env!("CARGO_BIN_EXE_confero"),
            data.path().display()
        ))
        .env("CONFERO_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.starts_with("confero ready"));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready);
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files <soft> <hard> files"
    assert_eq!(
        fields[3], fields[4],
        "soft limit raised to the hard one: {line}"
    );
    assert_ne!(fields[3], "256", "{line}");
}
