//! A trunk over TLS: the PBX opens the connection, checks the provider's certificate
//! against the trunk's host name (with the operator's CA from `--trunk-ca`), registers
//! answering the challenge, and takes the provider's calls on the same connection. The
//! "provider" is a small rustls server in this test (Debian's SIPp has no TLS); its
//! certificates are made with the openssl command.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use confero_sip::digest::{self, Algorithm};
use confero_sip::message::{Message, Request};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};

const HANG_UP_NUMBER: &str = "+3225550102";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate for `localhost` signed by it.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Confero test CA",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &csr);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
}

/// Reads one SIP message (headers, then Content-Length bytes of body).
fn read_message(r: &mut impl BufRead) -> Option<Message> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" && head.is_empty() {
            continue; // keep-alive
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    let mut raw = head.into_bytes();
    raw.extend(body);
    Message::parse(&raw).ok()
}

fn header(req: &Request, name: &str) -> String {
    req.headers
        .get_raw(&confero_sip::Name::from(name.to_owned()))
        .next()
        .map(|v| v.to_string())
        .unwrap_or_default()
}

fn reply(req: &Request, code: u16, extra: &str) -> String {
    format!(
        "SIP/2.0 {code} X\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=prov\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: 0\r\n\r\n",
        header(req, "Via"),
        header(req, "From"),
        header(req, "To"),
        header(req, "Call-ID"),
        header(req, "CSeq"),
    )
}

/// What the provider saw.
#[derive(Debug)]
enum Seen {
    /// A handshake that failed (the client refused our certificate).
    HandshakeFailed,
    /// REGISTER answered with a good digest; the contact user we may call.
    Registered { contact_user: String },
    /// Our INVITE to the registered contact got this final status.
    CallAnswered(u16),
}

/// A TLS provider on `listener`: challenges the first REGISTER, accepts the second when
/// its digest is right, then calls `number` through the same connection.
fn provider(listener: TcpListener, dir: &Path, number: &'static str, seen: mpsc::Sender<Seen>) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("srv.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("srv.key")).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(tcp) = stream else { continue };
            tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            if tls.conn.complete_io(&mut tls.sock).is_err() {
                let _ = seen.send(Seen::HandshakeFailed);
                continue;
            }
            let mut r = BufReader::new(tls);
            let nonce = "tls-provider-nonce";
            let challenge =
                digest::challenges("provider", nonce, false, &[Algorithm::Md5]).remove(0);
            let mut contact_user = String::new();
            while let Some(Message::Request(req)) = read_message(&mut r) {
                if req.method.to_string() != "REGISTER" {
                    continue;
                }
                match digest::credentials_from(&req, false) {
                    None => {
                        let text = reply(&req, 401, &format!("WWW-Authenticate: {challenge}\r\n"));
                        r.get_mut().write_all(text.as_bytes()).unwrap();
                    }
                    Some(creds) => {
                        if !digest::verify(&creds, "REGISTER", "tls-secret") {
                            let text = reply(&req, 403, "");
                            r.get_mut().write_all(text.as_bytes()).unwrap();
                            continue;
                        }
                        let contact = header(&req, "Contact");
                        contact_user = contact
                            .split("sip:")
                            .nth(1)
                            .and_then(|c| c.split('@').next())
                            .unwrap_or_default()
                            .to_owned();
                        let ok = reply(&req, 200, &format!("Contact: {contact};expires=3600\r\n"));
                        r.get_mut().write_all(ok.as_bytes()).unwrap();
                        let _ = seen.send(Seen::Registered {
                            contact_user: contact_user.clone(),
                        });
                        break;
                    }
                }
            }
            // A call for one of the PBX's numbers, over the connection it opened.
            let invite = format!(
                "INVITE sip:{contact_user}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKtlsinv\r\nFrom: <sip:+32475550199@provider.example>;tag=p1\r\nTo: <sip:{number}@127.0.0.1>\r\nCall-ID: tls-call-1\r\nCSeq: 1 INVITE\r\nContact: <sip:gw@127.0.0.1:5061;transport=tls>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            );
            r.get_mut().write_all(invite.as_bytes()).unwrap();
            while let Some(msg) = read_message(&mut r) {
                if let Message::Response(resp) = msg {
                    let code = resp.code.into_u16();
                    if code >= 200 {
                        let _ = seen.send(Seen::CallAnswered(code));
                        break;
                    }
                }
            }
        }
    });
}

fn add(pbx: &Pbx, path: &str, body: Value) -> i64 {
    let (status, text) = pbx.api("POST", path, Some(&body.to_string()));
    assert_eq!(status, 201, "POST {path}: {text}");
    serde_json::from_str::<Value>(&text).unwrap()["id"]
        .as_i64()
        .unwrap()
}

fn trunk_live(pbx: &Pbx, id: i64) -> Value {
    let (_, text) = pbx.api("GET", &format!("/api/v1/trunks/{id}"), None);
    serde_json::from_str::<Value>(&text).unwrap()["live"].clone()
}

/// The trunk's live state once it reads `state` (live views are published every 100 ms),
/// or as it is after 10 s.
fn trunk_becomes(pbx: &Pbx, id: i64, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut live = trunk_live(pbx, id);
    while live["registration"] != state && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        live = trunk_live(pbx, id);
    }
    live
}

#[test]
fn a_tls_trunk_checks_the_certificate_registers_and_takes_calls_on_its_connection() {
    require!("openssl", "openssl");
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, seen) = mpsc::channel();
    provider(listener, dir.path(), HANG_UP_NUMBER, tx);

    let ca = dir.path().join("ca.pem");
    let pbx = Pbx::start_with_flags(&["--trunk-ca", ca.to_str().unwrap()]);
    let trunk = |name: &str, host: &str| {
        json!({"name": name, "host": host, "port": port, "transport": "tls",
               "username": "acct", "password": "tls-secret", "register": true})
    };
    // By name: the certificate is for localhost, signed by the CA given with --trunk-ca.
    let good = add(&pbx, "/api/v1/trunks", trunk("Provider", "localhost"));
    add(
        &pbx,
        "/api/v1/incoming-numbers",
        json!({"number": HANG_UP_NUMBER, "destination": {"type": "hang_up"}}),
    );
    pbx.apply();

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut registered = None;
    let mut answered = None;
    while (registered.is_none() || answered.is_none()) && Instant::now() < deadline {
        match seen.recv_timeout(Duration::from_secs(1)) {
            Ok(Seen::Registered { contact_user }) => registered = Some(contact_user),
            Ok(Seen::CallAnswered(code)) => answered = Some(code),
            Ok(Seen::HandshakeFailed) => {
                panic!("the PBX refused a valid certificate: {:?}", pbx.logs())
            }
            Err(_) => {}
        }
    }
    let contact_user =
        registered.unwrap_or_else(|| panic!("no registration over TLS: {:?}", pbx.logs()));
    assert!(contact_user.starts_with("confero-"), "{contact_user}");
    assert_eq!(
        answered,
        Some(603),
        "the provider's call over the same connection is routed"
    );
    let live = trunk_becomes(&pbx, good, "registered");
    assert_eq!(live["registration"], "registered", "{live}");
    assert!(
        live["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{live}"
    );

    // By address: the same certificate names no IP, so the handshake must fail and the
    // trunk shows why.
    let bad = add(&pbx, "/api/v1/trunks", trunk("By address", "127.0.0.1"));
    pbx.apply();
    let refused = seen.recv_timeout(Duration::from_secs(15));
    assert!(matches!(refused, Ok(Seen::HandshakeFailed)), "{refused:?}");
    let live = trunk_becomes(&pbx, bad, "failed");
    assert_eq!(live["registration"], "failed", "{live}");
    assert_eq!(live["status"], 503, "{live}");
    let reason = live["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("TLS") && reason.contains("certificate"),
        "{live}"
    );
    assert_eq!(trunk_live(&pbx, good)["registration"], "registered");
}
