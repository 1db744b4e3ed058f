//! HTTP Digest authentication for SIP (RFC 2617, RFC 7616, RFC 3261 §22).
//!
//! Server side: [`NonceSource`] issues stateless nonces, [`challenges`] builds the
//! `WWW-Authenticate`/`Proxy-Authenticate` values, [`credentials_from`] reads the answer,
//! [`verify`] checks it and [`NonceCounts`] refuses a second use of it. Client side:
//! [`answer_challenge`] (for trunk registrations).
//!
//! Only `qop=auth` (and the RFC 2069 no-qop form) is supported: `auth-int` needs the body
//! hashed and no SIP endpoint we serve uses it; `-sess` algorithms likewise.
//!
//! # Replays
//!
//! A captured `Authorization` must not work twice. Nonces carry their issue time and an
//! HMAC over it and the address they were issued to, so nothing is stored per challenge, a
//! nonce answered from another address is not ours, and forged ones cost one HMAC. What
//! must be stored is what was already accepted: [`NonceCounts`] keeps, per nonce that has
//! authenticated something, the nonce-counts seen (RFC 7616 §3.4: the client counts up), so
//! the same (nonce, nc) pair passes once; a nonce without qop passes once. Nonces issued
//! before the table was made (a restart) are stale, since it cannot know what they
//! authenticated before.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use md5::Md5;
use sha2::{Digest as _, Sha256};

use crate::message::Request;
use crate::Name;

/// A digest hash algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// MD5, the only one most SIP phones and SIP.js know.
    Md5,
    /// SHA-256 (RFC 7616, RFC 8760).
    Sha256,
}

impl Algorithm {
    /// The token used in the `algorithm=` parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Parses an `algorithm=` token (case-insensitive); `-sess` variants are not supported.
    pub fn from_token(token: &str) -> Option<Algorithm> {
        if token.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if token.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// Lower-case hex digest of `data`.
    fn hex(self, data: &str) -> String {
        match self {
            Algorithm::Md5 => hex::encode(Md5::digest(data.as_bytes())),
            Algorithm::Sha256 => hex::encode(Sha256::digest(data.as_bytes())),
        }
    }
}

/// What went wrong answering a challenge.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestError {
    /// The challenge is not `Digest` or lacks realm/nonce.
    #[error("malformed digest challenge")]
    MalformedChallenge,
    /// The challenge asks for an algorithm we do not implement.
    #[error("unsupported digest algorithm {0}")]
    UnsupportedAlgorithm(String),
    /// The challenge offers only qop values we do not implement (e.g. auth-int).
    #[error("unsupported qop {0}")]
    UnsupportedQop(String),
}

// ==== nonces ====

/// Result of checking a nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceStatus {
    /// Issued by us and still fresh.
    Valid,
    /// Issued by us but expired: challenge again with `stale=true` so the client retries
    /// without asking the user for the password.
    Stale,
    /// Not one of ours (forged, tampered, or from another secret).
    Invalid,
}

/// Stateless nonces: 16 hex digits of issue time, 8 of a counter (two challenges to one
/// address in one second must differ, or the count of one would spend the other), then 64
/// of HMAC-SHA256(secret, time, counter and the address it was issued to), valid for
/// `lifetime`.
#[derive(Clone)]
pub struct NonceSource {
    secret: [u8; 32],
    lifetime: Duration,
    counter: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl std::fmt::Debug for NonceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceSource")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// HMAC-SHA256 (RFC 2104), written out to avoid a dependency for a dozen lines.
pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else if let Some(dst) = block.get_mut(..key.len()) {
        dst.copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Compares without an early exit, so timing does not reveal how many bytes matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl NonceSource {
    /// A source signing with `secret` (keep it across restarts to honour issued nonces).
    pub fn new(secret: [u8; 32], lifetime: Duration) -> Self {
        NonceSource {
            secret,
            lifetime,
            counter: std::sync::Arc::default(),
        }
    }

    fn mac(&self, head: &str, to: SocketAddr) -> String {
        let mut msg = Vec::with_capacity(NONCE_HEAD + 16 + 2);
        msg.extend_from_slice(head.as_bytes());
        match to.ip() {
            IpAddr::V4(ip) => msg.extend_from_slice(&ip.octets()),
            IpAddr::V6(ip) => msg.extend_from_slice(&ip.octets()),
        }
        msg.extend_from_slice(&to.port().to_be_bytes());
        hex::encode(hmac_sha256(&self.secret, &msg))
    }

    /// A nonce issued at `now_unix_secs` to the client at `to` (the request's source).
    pub fn issue(&self, now_unix_secs: u64, to: SocketAddr) -> String {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let head = format!("{now_unix_secs:016x}{n:08x}");
        let mac = self.mac(&head, to);
        head + &mac
    }

    /// Checks a nonce from the credentials of a request that came from `from`. A nonce
    /// issued to another address is [`NonceStatus::Invalid`]: it may be a captured one.
    pub fn check(&self, nonce: &str, now_unix_secs: u64, from: SocketAddr) -> NonceStatus {
        let (Some(stamp), Some(head), Some(mac)) = (
            nonce_stamp(nonce),
            nonce.get(..NONCE_HEAD),
            nonce.get(NONCE_HEAD..),
        ) else {
            return NonceStatus::Invalid;
        };
        let expected = self.mac(head, from);
        if !constant_time_eq(expected.as_bytes(), mac.to_ascii_lowercase().as_bytes()) {
            return NonceStatus::Invalid;
        }
        if now_unix_secs.saturating_sub(stamp) > self.lifetime.as_secs() {
            NonceStatus::Stale
        } else {
            NonceStatus::Valid
        }
    }

    /// How long a nonce is valid.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }
}

/// Hex digits of a nonce before its MAC: issue time and counter.
const NONCE_HEAD: usize = 24;

/// The issue time of a nonce of ours, if it is shaped like one.
fn nonce_stamp(nonce: &str) -> Option<u64> {
    if nonce.len() != NONCE_HEAD + 64 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(nonce.get(..16)?, 16).ok()
}

/// Nonce-counts below the highest seen by this much are refused outright; within it, each
/// is remembered (requests sent together may arrive out of order over UDP).
const NC_WINDOW: u32 = 64;

/// What [`NonceCounts::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// First use of this (nonce, nc): go on.
    Fresh,
    /// Used before, or older than this table: challenge again (`stale=true`, since the
    /// client may well know the password).
    Replayed,
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    /// Highest nc accepted.
    max: u32,
    /// Bit i set: `max - i` was accepted.
    window: u64,
}

/// The nonce-counts already accepted, per nonce, for the nonces' lifetime; see the module
/// documentation. Entries are made only for requests whose digest was right, so strangers
/// cannot fill it; it is capped anyway, and a nonce forgotten early is answered as stale.
#[derive(Debug)]
pub struct NonceCounts {
    seen: std::collections::HashMap<String, Seen>,
    /// Nonces in the order first admitted, for expiry.
    order: std::collections::VecDeque<(u64, String)>,
    not_before: u64,
    lifetime: u64,
    cap: usize,
}

impl NonceCounts {
    /// A table for nonces of `lifetime`, made at `now_unix_secs`: older nonces are
    /// refused. At most `cap` nonces are remembered.
    pub fn new(now_unix_secs: u64, lifetime: Duration, cap: usize) -> Self {
        NonceCounts {
            seen: std::collections::HashMap::new(),
            order: std::collections::VecDeque::new(),
            not_before: now_unix_secs,
            lifetime: lifetime.as_secs(),
            cap: cap.max(1),
        }
    }

    /// Records the use of `creds` (whose digest was verified) at `now_unix_secs`.
    pub fn admit(&mut self, creds: &Credentials, now_unix_secs: u64) -> Admission {
        self.expire(now_unix_secs);
        let Some(stamp) = nonce_stamp(&creds.nonce) else {
            return Admission::Replayed;
        };
        if stamp < self.not_before {
            return Admission::Replayed;
        }
        // Without qop (RFC 2069) there is no count: the nonce is good for one request.
        let nc = match creds.nc.as_deref() {
            None if creds.qop.is_none() => 1,
            None => return Admission::Replayed,
            Some(nc) => match u32::from_str_radix(nc, 16) {
                Ok(nc) if nc > 0 => nc,
                _ => return Admission::Replayed,
            },
        };
        if let Some(seen) = self.seen.get_mut(&creds.nonce) {
            return if nc > seen.max {
                let shift = nc - seen.max;
                seen.window = if shift >= 64 { 0 } else { seen.window << shift } | 1;
                seen.max = nc;
                Admission::Fresh
            } else {
                let age = seen.max - nc;
                let bit = 1u64.checked_shl(age).unwrap_or(0);
                if age >= NC_WINDOW || seen.window & bit != 0 {
                    Admission::Replayed
                } else {
                    seen.window |= bit;
                    Admission::Fresh
                }
            };
        }
        if self.seen.len() >= self.cap {
            // Forgetting a live nonce must not make it usable again: every nonce as old
            // as it becomes stale (its clients are simply challenged again).
            if let Some((oldest_stamp, oldest)) = self.order.pop_front() {
                self.seen.remove(&oldest);
                self.not_before = self.not_before.max(oldest_stamp + 1);
            }
            if stamp < self.not_before {
                return Admission::Replayed;
            }
        }
        self.seen
            .insert(creds.nonce.clone(), Seen { max: nc, window: 1 });
        self.order.push_back((stamp, creds.nonce.clone()));
        Admission::Fresh
    }

    /// Forgets nonces past their lifetime (they are stale anyway). A nonce evicted by the
    /// cap and answered again is refused: its stamp is moved past.
    fn expire(&mut self, now_unix_secs: u64) {
        while let Some((stamp, _)) = self.order.front() {
            if now_unix_secs.saturating_sub(*stamp) <= self.lifetime {
                break;
            }
            if let Some((_, nonce)) = self.order.pop_front() {
                self.seen.remove(&nonce);
            }
        }
    }

    /// Nonces remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

// ==== header values ====

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Header values to put in a 401 (`WWW-Authenticate`) or 407 (`Proxy-Authenticate`): one
/// per algorithm in `algorithms`, in that order, each with `qop="auth"`, and `stale=true`
/// when the client's nonce had merely expired. Offering several is the server's choice:
/// RFC 8760 lets a client pick, but SIP.js, SIPp and many phones read only the first, and
/// libre-based phones (baresip) give up on the whole response when one names an
/// algorithm they lack — so callers usually offer MD5 alone, or MD5 first.
pub fn challenges(realm: &str, nonce: &str, stale: bool, algorithms: &[Algorithm]) -> Vec<String> {
    algorithms
        .iter()
        .copied()
        .map(|alg| {
            let mut v = format!(
                "Digest realm={}, nonce={}, algorithm={}, qop=\"auth\"",
                quote(realm),
                quote(nonce),
                alg.as_str()
            );
            if stale {
                v.push_str(", stale=true");
            }
            v
        })
        .collect()
}

/// Parses `Digest k=v, k="v", …` into lower-cased names and unquoted values. Returns
/// `None` for another scheme or malformed input.
fn parse_digest_params(value: &str) -> Option<Vec<(String, String)>> {
    let value = value.trim_start();
    let scheme_end = value
        .find(|c: char| c.is_whitespace())
        .unwrap_or(value.len());
    let (scheme, mut rest) = value.split_at(scheme_end);
    if !scheme.eq_ignore_ascii_case("Digest") {
        return None;
    }
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if rest.is_empty() {
            return Some(params);
        }
        let eq = rest.find('=')?;
        let (name, after) = rest.split_at(eq);
        let name = name.trim();
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == ',' || c == '"') {
            return None;
        }
        let after = after.get(1..)?.trim_start();
        let (val, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            out.push(escaped);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => out.push(c),
                }
            }
            (out, quoted.get(end?..)?)
        } else {
            let end = after.find(',').unwrap_or(after.len());
            let (v, r) = after.split_at(end);
            (v.trim().to_owned(), r)
        };
        let remaining = remaining.trim_start();
        if !(remaining.is_empty() || remaining.starts_with(',')) {
            return None;
        }
        params.push((name.to_ascii_lowercase(), val));
        rest = remaining;
    }
}

fn param<'p>(params: &'p [(String, String)], name: &str) -> Option<&'p str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Digest credentials from an `Authorization` or `Proxy-Authorization` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The user name (the SIP auth user).
    pub username: String,
    /// The realm the client answered.
    pub realm: String,
    /// The nonce the client answered; check it with [`NonceSource::check`].
    pub nonce: String,
    /// The digest-uri the response covers.
    pub uri: String,
    /// The response hash, hex.
    pub response: String,
    /// The hash algorithm (MD5 when absent).
    pub algorithm: Algorithm,
    /// `auth`, or `None` for RFC 2069 clients.
    pub qop: Option<String>,
    /// The nonce count, 8 hex digits, with qop.
    pub nc: Option<String>,
    /// The client nonce, with qop.
    pub cnonce: Option<String>,
    /// Echoed opaque value.
    pub opaque: Option<String>,
}

impl Credentials {
    fn from_value(value: &str) -> Option<Credentials> {
        let params = parse_digest_params(value)?;
        let algorithm = match param(&params, "algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::from_token(a)?,
        };
        let owned = |name: &str| param(&params, name).map(str::to_owned);
        Some(Credentials {
            username: owned("username")?,
            realm: owned("realm")?,
            nonce: owned("nonce")?,
            uri: owned("uri")?,
            response: owned("response")?,
            algorithm,
            qop: owned("qop"),
            nc: owned("nc"),
            cnonce: owned("cnonce"),
            opaque: owned("opaque"),
        })
    }
}

/// Reads `Authorization` (or `Proxy-Authorization` when `proxy`) from a request: the first
/// value that is well-formed Digest with a supported algorithm. `None` when absent or
/// unparseable.
pub fn credentials_from(req: &Request, proxy: bool) -> Option<Credentials> {
    let name = if proxy {
        Name::PROXY_AUTHORIZATION
    } else {
        Name::AUTHORIZATION
    };
    req.headers
        .get_raw(&name)
        .find_map(|v| Credentials::from_value(v.as_str()))
}

/// HA1 = H(username:realm:password), the value a store may keep instead of the password.
pub fn ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> String {
    algorithm.hex(&format!("{username}:{realm}:{password}"))
}

fn expected_response(
    algorithm: Algorithm,
    ha1: &str,
    nonce: &str,
    method: &str,
    uri: &str,
    qop: Option<(&str, &str, &str)>,
) -> String {
    let ha2 = algorithm.hex(&format!("{method}:{uri}"));
    match qop {
        Some((qop, nc, cnonce)) => {
            algorithm.hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}"))
        }
        None => algorithm.hex(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// Whether `creds` carry the right response for `password` and `method`, compared in
/// constant time. Does not check the nonce (use [`NonceSource::check`]), the realm or the
/// digest-uri: those are the caller's policy.
pub fn verify(creds: &Credentials, method: &str, password: &str) -> bool {
    let ha1 = ha1(creds.algorithm, &creds.username, &creds.realm, password);
    verify_ha1(creds, method, &ha1)
}

/// Like [`verify`] with a stored HA1 (hex) instead of the password.
pub fn verify_ha1(creds: &Credentials, method: &str, ha1: &str) -> bool {
    let qop = match creds.qop.as_deref() {
        None => None,
        Some(q) if q.eq_ignore_ascii_case("auth") => {
            match (creds.nc.as_deref(), creds.cnonce.as_deref()) {
                (Some(nc), Some(cnonce)) => Some(("auth", nc, cnonce)),
                _ => return false,
            }
        }
        Some(_) => return false,
    };
    let expected = expected_response(
        creds.algorithm,
        &ha1.to_ascii_lowercase(),
        &creds.nonce,
        method,
        &creds.uri,
        qop,
    );
    constant_time_eq(
        expected.as_bytes(),
        creds.response.to_ascii_lowercase().as_bytes(),
    )
}

/// Client side: builds the `Authorization` (or `Proxy-Authorization`) value answering a
/// `WWW-Authenticate`/`Proxy-Authenticate` value. Uses `qop=auth` when offered, the RFC
/// 2069 form when no qop is offered.
///
/// # Errors
/// [`DigestError`] when the challenge is not Digest, lacks realm or nonce, or asks for an
/// algorithm or qop this module does not implement.
pub fn answer_challenge(
    challenge: &str,
    method: &str,
    uri: &str,
    username: &str,
    password: &str,
    nc: u32,
    cnonce: &str,
) -> Result<String, DigestError> {
    let params = parse_digest_params(challenge).ok_or(DigestError::MalformedChallenge)?;
    let realm = param(&params, "realm").ok_or(DigestError::MalformedChallenge)?;
    let nonce = param(&params, "nonce").ok_or(DigestError::MalformedChallenge)?;
    let algorithm = match param(&params, "algorithm") {
        None => Algorithm::Md5,
        Some(a) => {
            Algorithm::from_token(a).ok_or_else(|| DigestError::UnsupportedAlgorithm(a.into()))?
        }
    };
    let qop = match param(&params, "qop") {
        None => None,
        Some(offered) => {
            if offered
                .split(',')
                .any(|q| q.trim().eq_ignore_ascii_case("auth"))
            {
                Some("auth")
            } else {
                return Err(DigestError::UnsupportedQop(offered.into()));
            }
        }
    };
    let nc = format!("{nc:08x}");
    let ha1 = ha1(algorithm, username, realm, password);
    let response = expected_response(
        algorithm,
        &ha1,
        nonce,
        method,
        uri,
        qop.map(|q| (q, nc.as_str(), cnonce)),
    );
    let mut out = format!(
        "Digest username={}, realm={}, nonce={}, uri={}, response={}, algorithm={}",
        quote(username),
        quote(realm),
        quote(nonce),
        quote(uri),
        quote(&response),
        algorithm.as_str()
    );
    if let Some(qop) = qop {
        let _ = write!(out, ", qop={qop}, nc={nc}, cnonce={}", quote(cnonce));
    }
    if let Some(opaque) = param(&params, "opaque") {
        let _ = write!(out, ", opaque={}", quote(opaque));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn creds(value: &str) -> Credentials {
        Credentials::from_value(value).expect("parseable")
    }

    #[test]
    fn rfc2617_mufasa() {
        let c = creds(
            r#"Digest username="Mufasa",
                 realm="testrealm@host.com",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 uri="/dir/index.html",
                 qop=auth,
                 nc=00000001,
                 cnonce="0a4f113b",
                 response="6629fae49393a05397450978507c4ef1",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        );
        assert_eq!(c.algorithm, Algorithm::Md5);
        assert_eq!(
            c.opaque.as_deref(),
            Some("5ccc069c403ebaf9f0171e9517f40e41")
        );
        assert!(verify(&c, "GET", "Circle Of Life"));
        assert!(!verify(&c, "GET", "Circle of Life"));
        assert!(!verify(&c, "POST", "Circle Of Life"));
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        assert!(verify_ha1(&c, "GET", &ha1.to_ascii_uppercase()));

        let challenge = r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let answer = answer_challenge(
            challenge,
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle Of Life",
            1,
            "0a4f113b",
        )
        .unwrap();
        assert!(
            answer.contains(r#"response="6629fae49393a05397450978507c4ef1""#),
            "{answer}"
        );
        assert!(answer.contains(r#"opaque="5ccc069c403ebaf9f0171e9517f40e41""#));
        assert!(verify(&creds(&answer), "GET", "Circle Of Life"));
    }

    const RFC7616_CHALLENGE: &str = r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=ALG, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#;

    #[test]
    fn rfc7616_md5_and_sha256() {
        for (alg, algorithm, expected) in [
            ("MD5", Algorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec"),
            (
                "SHA-256",
                Algorithm::Sha256,
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ] {
            let answer = answer_challenge(
                &RFC7616_CHALLENGE.replace("ALG", alg),
                "GET",
                "/dir/index.html",
                "Mufasa",
                "Circle of Life",
                1,
                "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            )
            .unwrap();
            assert!(
                answer.contains(&format!("response=\"{expected}\"")),
                "{answer}"
            );
            let c = creds(&answer);
            assert_eq!(c.algorithm, algorithm);
            assert_eq!(c.nc.as_deref(), Some("00000001"));
            assert!(verify(&c, "GET", "Circle of Life"));
            assert!(!verify(&c, "GET", "wrong"));
        }
    }

    #[test]
    fn rfc2069_without_qop() {
        let answer = answer_challenge(
            r#"Digest realm="r", nonce="n""#,
            "REGISTER",
            "sip:pbx",
            "u",
            "p",
            1,
            "c",
        )
        .unwrap();
        assert!(!answer.contains("qop"));
        assert!(verify(&creds(&answer), "REGISTER", "p"));
        // qop=auth without nc/cnonce is not accepted.
        let mut c = creds(&answer);
        c.qop = Some("auth".into());
        assert!(!verify(&c, "REGISTER", "p"));
    }

    #[test]
    fn challenge_errors() {
        let answer = |c: &str| answer_challenge(c, "INVITE", "sip:x", "u", "p", 1, "c");
        assert_eq!(
            answer("Basic realm=\"x\""),
            Err(DigestError::MalformedChallenge)
        );
        assert_eq!(
            answer("Digest nonce=\"n\""),
            Err(DigestError::MalformedChallenge)
        );
        assert_eq!(
            answer("Digest realm=\"r\", nonce=\"n\", algorithm=MD5-sess"),
            Err(DigestError::UnsupportedAlgorithm("MD5-sess".into()))
        );
        assert_eq!(
            answer("Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\""),
            Err(DigestError::UnsupportedQop("auth-int".into()))
        );
        assert!(answer("Digest realm=\"unterminated").is_err());
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const PHONE: &str = "192.0.2.10:5060";

    #[test]
    fn nonces() {
        let source = NonceSource::new([7; 32], Duration::from_secs(300));
        let nonce = source.issue(1_700_000_000, addr(PHONE));
        assert!(!nonce.contains(':') && !nonce.contains('"'));
        let check = |n: &str, t| source.check(n, t, addr(PHONE));
        assert_eq!(check(&nonce, 1_700_000_000), NonceStatus::Valid);
        assert_eq!(check(&nonce, 1_700_000_300), NonceStatus::Valid);
        assert_eq!(check(&nonce, 1_700_000_301), NonceStatus::Stale);

        // Answered from another address (IP or port): not ours.
        for elsewhere in ["192.0.2.11:5060", "192.0.2.10:5061", "[2001:db8::1]:5060"] {
            assert_eq!(
                source.check(&nonce, 1_700_000_000, addr(elsewhere)),
                NonceStatus::Invalid,
                "{elsewhere}"
            );
        }

        // Tampering with the time or the MAC, or another secret: Invalid.
        let mut tampered = nonce.clone().into_bytes();
        tampered[15] = if tampered[15] == b'1' { b'2' } else { b'1' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(check(&tampered, 1_700_000_000), NonceStatus::Invalid);
        let mut mac_flip = nonce.clone();
        mac_flip.pop();
        mac_flip.push(if nonce.ends_with('0') { '1' } else { '0' });
        assert_eq!(check(&mac_flip, 1_700_000_000), NonceStatus::Invalid);
        let other = NonceSource::new([8; 32], Duration::from_secs(300));
        assert_eq!(
            other.check(&nonce, 1_700_000_000, addr(PHONE)),
            NonceStatus::Invalid
        );
        assert_ne!(
            nonce,
            source.issue(1_700_000_000, addr(PHONE)),
            "each is new"
        );
        for junk in ["", "zz", "é", &"0".repeat(88), &nonce[..87]] {
            assert_eq!(check(junk, 1_700_000_000), NonceStatus::Invalid, "{junk}");
        }
    }

    /// Credentials answering `nonce` with count `nc` (`None`: RFC 2069, no qop).
    fn answer(nonce: &str, nc: Option<u32>) -> Credentials {
        let challenge = match nc {
            Some(_) => format!("Digest realm=\"r\", nonce=\"{nonce}\", qop=\"auth\""),
            None => format!("Digest realm=\"r\", nonce=\"{nonce}\""),
        };
        let value = answer_challenge(
            &challenge,
            "REGISTER",
            "sip:r",
            "u",
            "p",
            nc.unwrap_or(1),
            "c",
        )
        .unwrap();
        creds(&value)
    }

    #[test]
    fn each_nonce_count_passes_once() {
        let source = NonceSource::new([7; 32], Duration::from_secs(120));
        let t0 = 1_700_000_000;
        let mut counts = NonceCounts::new(t0, source.lifetime(), 1000);
        let nonce = source.issue(t0 + 5, addr(PHONE));
        assert_eq!(
            counts.admit(&answer(&nonce, Some(1)), t0 + 5),
            Admission::Fresh
        );
        assert_eq!(
            counts.admit(&answer(&nonce, Some(1)), t0 + 6),
            Admission::Replayed,
            "the same request again"
        );
        assert_eq!(
            counts.admit(&answer(&nonce, Some(2)), t0 + 7),
            Admission::Fresh
        );
        // Out of order within the window: each once.
        assert_eq!(
            counts.admit(&answer(&nonce, Some(9)), t0 + 8),
            Admission::Fresh
        );
        assert_eq!(
            counts.admit(&answer(&nonce, Some(5)), t0 + 8),
            Admission::Fresh
        );
        assert_eq!(
            counts.admit(&answer(&nonce, Some(5)), t0 + 8),
            Admission::Replayed
        );
        assert_eq!(
            counts.admit(&answer(&nonce, Some(2)), t0 + 8),
            Admission::Replayed
        );
        // Far behind the highest: refused rather than remembered.
        assert_eq!(
            counts.admit(&answer(&nonce, Some(100)), t0 + 9),
            Admission::Fresh
        );
        assert_eq!(
            counts.admit(&answer(&nonce, Some(30)), t0 + 9),
            Admission::Replayed
        );
        // Zero and garbage counts are not counts.
        let mut zero = answer(&nonce, Some(1));
        zero.nc = Some("00000000".into());
        assert_eq!(counts.admit(&zero, t0 + 9), Admission::Replayed);
        zero.nc = Some("zz".into());
        assert_eq!(counts.admit(&zero, t0 + 9), Admission::Replayed);
        zero.nc = None;
        assert_eq!(
            counts.admit(&zero, t0 + 9),
            Admission::Replayed,
            "qop without nc"
        );

        // Without qop, a nonce is good for one request.
        let plain = source.issue(t0 + 10, addr(PHONE));
        assert_eq!(
            counts.admit(&answer(&plain, None), t0 + 10),
            Admission::Fresh
        );
        assert_eq!(
            counts.admit(&answer(&plain, None), t0 + 11),
            Admission::Replayed
        );
        assert_eq!(counts.len(), 2);
        // Past their lifetime they are forgotten (the source calls them stale by then).
        let later = source.issue(t0 + 200, addr(PHONE));
        assert_eq!(
            counts.admit(&answer(&later, Some(1)), t0 + 200),
            Admission::Fresh
        );
        assert_eq!(counts.len(), 1);
    }

    #[test]
    fn nonces_from_before_a_restart_and_evicted_ones_are_refused() {
        let source = NonceSource::new([7; 32], Duration::from_secs(120));
        let t0 = 1_700_000_000;
        let before = source.issue(t0 - 1, addr(PHONE));
        let mut counts = NonceCounts::new(t0, source.lifetime(), 2);
        assert_eq!(
            counts.admit(&answer(&before, Some(1)), t0),
            Admission::Replayed
        );
        let n1 = source.issue(t0 + 1, addr(PHONE));
        let n2 = source.issue(t0 + 2, addr(PHONE));
        let n3 = source.issue(t0 + 3, addr(PHONE));
        assert_eq!(
            counts.admit(&answer(&n1, Some(1)), t0 + 3),
            Admission::Fresh
        );
        assert_eq!(
            counts.admit(&answer(&n2, Some(1)), t0 + 3),
            Admission::Fresh
        );
        // Full: n1 is forgotten to make room, and so may not pass again.
        assert_eq!(
            counts.admit(&answer(&n3, Some(1)), t0 + 3),
            Admission::Fresh
        );
        assert!(counts.len() <= 2);
        assert_eq!(
            counts.admit(&answer(&n1, Some(1)), t0 + 4),
            Admission::Replayed
        );
    }

    #[test]
    fn hmac_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Keys longer than the block are hashed first (RFC 4231 case 6).
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn server_round_trip_through_a_request() {
        let source = NonceSource::new([1; 32], Duration::from_secs(60));
        let nonce = source.issue(1000, addr(PHONE));
        let challenges = challenges(
            "pbx.example.com",
            &nonce,
            true,
            &[Algorithm::Md5, Algorithm::Sha256],
        );
        assert_eq!(challenges.len(), 2);
        assert!(
            challenges[0].contains("algorithm=MD5"),
            "first: SIP.js reads only it"
        );
        assert!(challenges[1].contains("algorithm=SHA-256"));
        assert!(challenges
            .iter()
            .all(|c| c.contains("qop=\"auth\"") && c.contains("stale=true")));
        assert!(!super::challenges("r", "n", false, &[Algorithm::Md5])[0].contains("stale"));
        assert_eq!(
            super::challenges("r", "n", false, &[Algorithm::Md5]).len(),
            1
        );

        // A SIP.js-style client answers the MD5 challenge in a REGISTER.
        let auth = answer_challenge(
            &challenges[0],
            "REGISTER",
            "sip:pbx.example.com",
            "101",
            "secret",
            1,
            "abcdef",
        )
        .unwrap();
        let text = format!(
            "REGISTER sip:pbx.example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bKr\r\n\
             From: <sip:101@pbx.example.com>;tag=t\r\nTo: <sip:101@pbx.example.com>\r\n\
             Call-ID: reg1\r\nCSeq: 2 REGISTER\r\nAuthorization: {auth}\r\nContent-Length: 0\r\n\r\n"
        );
        let Ok(Message::Request(req)) = Message::parse(text.as_bytes()) else {
            panic!()
        };
        assert!(credentials_from(&req, true).is_none());
        let c = credentials_from(&req, false).expect("credentials");
        assert_eq!(c.username, "101");
        assert_eq!(c.realm, "pbx.example.com");
        assert_eq!(
            source.check(&c.nonce, 1010, addr(PHONE)),
            NonceStatus::Valid
        );
        assert!(verify(&c, "REGISTER", "secret"));
        assert!(!verify(&c, "REGISTER", "Secret"));
    }

    #[test]
    fn malformed_credentials() {
        for bad in [
            "",
            "Digest",
            "Basic dXNlcjpwYXNz",
            r#"Digest username="a", realm="r", nonce="n", uri="u""#,
            r#"Digest username="a, realm="r", nonce="n", uri="u", response="x""#,
            r#"Digest username="a" realm="r""#,
            r#"Digest username="a", realm="r", nonce="n", uri="u", response="x", algorithm=SHA-512"#,
            "Digest =,=,=",
        ] {
            assert!(Credentials::from_value(bad).is_none(), "{bad}");
        }
        let c = creds(r#"digest USERNAME="a\"b", realm=r, nonce=n, uri="sip:x", response=00"#);
        assert_eq!(c.username, "a\"b");
        assert_eq!(c.realm, "r");
    }
}
