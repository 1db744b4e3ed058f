//! One trunk's registration with its provider, as a state machine without IO: answers
//! come in ([`Registration::handle_response`]), time passes
//! ([`Registration::handle_timeout`]), and each returns the [`Step`] the engine takes —
//! send a REGISTER (answering a challenge), look the host up again, or wait. It refreshes
//! before expiry, answers at most two challenges in a row, honours 423 Min-Expires, and
//! backs off after failures (30 s doubling to 10 min, so a provider that is down sees a
//! trickle, not a storm). Its fields are what the API and console show.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use confero_sip::headers;
use confero_sip::message::Response;
use confero_sip::Name;

/// Registration interval asked of providers.
pub(super) const REGISTER_EXPIRES: u32 = 3600;
/// First wait after a failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Challenges answered in a row before giving up on a request (a second one is normal
/// when the first nonce went stale; a third means the credentials are wrong).
const MAX_AUTH_TRIES: u8 = 2;

/// Where a trunk's registration stands, as shown to administrators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationState {
    /// The trunk does not register (calls still flow, by address).
    Off,
    /// Waiting for the provider's host name to resolve.
    Resolving,
    /// A REGISTER is on its way.
    Registering,
    /// The provider accepted the registration.
    Registered,
    /// The last attempt failed; another is scheduled.
    Failed,
}

impl RegistrationState {
    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RegistrationState::Off => "off",
            RegistrationState::Resolving => "resolving",
            RegistrationState::Registering => "registering",
            RegistrationState::Registered => "registered",
            RegistrationState::Failed => "failed",
        }
    }
}

/// What the engine does next for a registration.
#[derive(Debug)]
pub(super) enum Step {
    /// Send a REGISTER for `expires` seconds, with credentials answering `challenge`;
    /// then report [`Registration::sent`] or [`Registration::failed`].
    Register {
        expires: u32,
        challenge: Option<Box<Response>>,
    },
    /// Look the provider's host name up again (it had no address).
    Resolve,
    /// Nothing until this moment (a refresh or a retry).
    WakeAt(Instant),
    Nothing,
}

/// One trunk's REGISTER client.
#[derive(Debug)]
pub(super) struct Registration {
    pub(super) state: RegistrationState,
    /// A REGISTER waits for its answer.
    in_flight: bool,
    /// CSeq of the last REGISTER sent (the dialog-less sequence of RFC 3261 §10.2).
    pub(super) cseq: u32,
    auth_tries: u8,
    /// When to refresh (registered) or retry (failed).
    pub(super) next_at: Option<Instant>,
    failures: u32,
    /// Status and reason of the last answer, or why there was none.
    pub(super) status: Option<u16>,
    pub(super) reason: Option<String>,
    pub(super) expires_at: Option<Instant>,
}

impl Registration {
    pub(super) fn new(state: RegistrationState) -> Self {
        Registration {
            state,
            in_flight: false,
            cseq: 0,
            auth_tries: 0,
            next_at: None,
            failures: 0,
            status: None,
            reason: None,
            expires_at: None,
        }
    }

    /// The first REGISTER (or one after the host resolved), unless one is on its way.
    pub(super) fn start(&self) -> Step {
        if self.in_flight {
            return Step::Nothing;
        }
        Step::Register {
            expires: REGISTER_EXPIRES,
            challenge: None,
        }
    }

    /// The REGISTER a [`Step::Register`] asked for went out.
    pub(super) fn sent(&mut self) {
        self.cseq += 1;
        self.in_flight = true;
        if self.state != RegistrationState::Registered {
            self.state = RegistrationState::Registering;
        }
    }

    /// The attempt failed with `code` (a refusal, or no REGISTER could be sent, or the
    /// host has no address): retried after the back-off.
    pub(super) fn failed(&mut self, now: Instant, code: u16, reason: &str) -> Step {
        self.in_flight = false;
        self.state = RegistrationState::Failed;
        self.status = Some(code);
        self.reason = Some(reason.to_owned());
        self.expires_at = None;
        self.failures += 1;
        self.auth_tries = 0;
        let at = now + backoff(self.failures);
        self.next_at = Some(at);
        Step::WakeAt(at)
    }

    /// A final answer to our REGISTER; `contact_user` finds our binding among the
    /// provider's Contacts (its expires is the one granted); `provider` is where the
    /// REGISTER went (named when it could not be reached).
    pub(super) fn handle_response(
        &mut self,
        now: Instant,
        resp: &Response,
        contact_user: &str,
        provider: Option<SocketAddr>,
    ) -> Step {
        let code = resp.code.into_u16();
        if code < 200 || !self.in_flight {
            return Step::Nothing;
        }
        self.in_flight = false;
        let reason = resp.reason.clone().unwrap_or_default();
        match code {
            200..=299 => {
                let granted = headers::contacts(&resp.headers)
                    .unwrap_or_default()
                    .iter()
                    .find(|c| headers::contact_uri_text(c).contains(contact_user))
                    .and_then(headers::contact_expires)
                    .or_else(|| headers::expires_header(&resp.headers))
                    .unwrap_or(REGISTER_EXPIRES)
                    .max(1);
                self.state = RegistrationState::Registered;
                self.status = Some(code);
                self.reason = Some(reason);
                self.failures = 0;
                self.auth_tries = 0;
                self.expires_at = Some(now + Duration::from_secs(u64::from(granted)));
                let at = now + refresh_after(granted);
                self.next_at = Some(at);
                Step::WakeAt(at)
            }
            401 | 407 if self.auth_tries < MAX_AUTH_TRIES => {
                self.auth_tries += 1;
                Step::Register {
                    expires: REGISTER_EXPIRES,
                    challenge: Some(Box::new(resp.clone())),
                }
            }
            423 => {
                // Interval too brief: ask again with the provider's minimum.
                let min = headers::first(&resp.headers, &Name::MIN_EXPIRES)
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .unwrap_or(REGISTER_EXPIRES)
                    .max(1);
                Step::Register {
                    expires: min,
                    challenge: None,
                }
            }
            408 => self.failed(now, code, "no answer from the provider"),
            503 if reason == "Cannot Connect" => {
                let to = provider.map_or_else(String::new, |a| a.to_string());
                self.failed(now, code, &format!("cannot connect to {to}"))
            }
            401 | 407 => self.failed(now, code, "the provider refused the credentials"),
            _ => self.failed(now, code, &reason),
        }
    }

    /// Time passed: a refresh or a retry is due (after resolving again, for a host
    /// without address).
    pub(super) fn handle_timeout(&mut self, now: Instant, has_address: bool) -> Step {
        match self.next_at {
            Some(at) if now >= at && !self.in_flight => {}
            _ => return Step::Nothing,
        }
        self.next_at = None;
        if !has_address {
            self.state = RegistrationState::Resolving;
            return Step::Resolve;
        }
        self.start()
    }

    /// When the next attempt comes, after a failure.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        (self.state == RegistrationState::Failed)
            .then_some(self.next_at)
            .flatten()
    }
}

fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(8);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// When to re-register: a minute before expiry for long intervals, half-way for short ones.
fn refresh_after(expires: u32) -> Duration {
    let secs = u64::from(expires);
    Duration::from_secs(if secs > 120 {
        secs - 60
    } else {
        (secs / 2).max(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use confero_sip::message::Message;

    fn answer(text: &str) -> Response {
        let text = text.replace('\n', "\r\n");
        match Message::parse(text.as_bytes()).unwrap() {
            Message::Response(r) => r,
            Message::Request(_) => panic!("not a response"),
        }
    }

    fn wakes_at(step: Step) -> Option<Instant> {
        match step {
            Step::WakeAt(at) => Some(at),
            _ => None,
        }
    }

    fn response(status: &str, extra: &str) -> Response {
        answer(&format!(
            "SIP/2.0 {status}\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\nFrom: <sip:u@p>;tag=a\nTo: <sip:u@p>;tag=b\nCall-ID: c\nCSeq: 1 REGISTER\n{extra}Content-Length: 0\n\n"
        ))
    }

    #[test]
    fn backoff_doubles_to_ten_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(30));
        assert_eq!(backoff(2), Duration::from_secs(60));
        assert_eq!(backoff(5), Duration::from_secs(480));
        assert_eq!(backoff(6), Duration::from_secs(600));
        assert_eq!(backoff(50), Duration::from_secs(600));
    }

    #[test]
    fn refresh_comes_before_expiry() {
        assert_eq!(refresh_after(3600), Duration::from_secs(3540));
        assert_eq!(refresh_after(60), Duration::from_secs(30));
        assert_eq!(refresh_after(1), Duration::from_secs(1));
    }

    #[test]
    fn a_challenge_is_answered_twice_then_the_credentials_are_refused() {
        let t0 = Instant::now();
        let mut r = Registration::new(RegistrationState::Off);
        assert!(matches!(
            r.start(),
            Step::Register {
                challenge: None,
                ..
            }
        ));
        r.sent();
        assert_eq!(r.state, RegistrationState::Registering);
        let challenge = response(
            "401 Unauthorized",
            "WWW-Authenticate: Digest realm=\"p\", nonce=\"n\"\n",
        );
        for _ in 0..2 {
            assert!(matches!(
                r.handle_response(t0, &challenge, "me", None),
                Step::Register {
                    challenge: Some(_),
                    ..
                }
            ));
            r.sent();
        }
        assert_eq!(
            wakes_at(r.handle_response(t0, &challenge, "me", None)),
            Some(t0 + Duration::from_secs(30))
        );
        assert_eq!(r.state, RegistrationState::Failed);
        assert_eq!(
            r.reason.as_deref(),
            Some("the provider refused the credentials")
        );
        assert_eq!(r.cseq, 3, "one CSeq per REGISTER");
        // An answer to nothing we sent changes nothing.
        assert!(matches!(
            r.handle_response(t0, &challenge, "me", None),
            Step::Nothing
        ));
    }

    #[test]
    fn the_granted_interval_sets_the_refresh_and_423_asks_again_with_the_minimum() {
        let t0 = Instant::now();
        let mut r = Registration::new(RegistrationState::Off);
        r.sent();
        let brief = response("423 Interval Too Brief", "Min-Expires: 7200\n");
        assert!(matches!(
            r.handle_response(t0, &brief, "me", None),
            Step::Register {
                expires: 7200,
                challenge: None
            }
        ));
        r.sent();
        let ok = response(
            "200 OK",
            "Contact: <sip:other@192.0.2.9>;expires=30\nContact: <sip:me@192.0.2.1>;expires=7200\n",
        );
        let refresh = t0 + Duration::from_secs(7140);
        assert_eq!(
            wakes_at(r.handle_response(t0, &ok, "me", None)),
            Some(refresh)
        );
        assert_eq!(r.state, RegistrationState::Registered);
        assert_eq!(r.expires_at, Some(t0 + Duration::from_secs(7200)));
        assert!(matches!(
            r.handle_timeout(refresh - Duration::from_secs(1), true),
            Step::Nothing
        ));
        assert!(matches!(
            r.handle_timeout(refresh, true),
            Step::Register { .. }
        ));
        r.sent();
        assert_eq!(
            r.state,
            RegistrationState::Registered,
            "refreshing keeps it registered"
        );
    }

    #[test]
    fn a_host_without_address_is_looked_up_again_when_the_retry_is_due() {
        let t0 = Instant::now();
        let mut r = Registration::new(RegistrationState::Resolving);
        let retry = t0 + Duration::from_secs(30);
        assert_eq!(wakes_at(r.failed(t0, 503, "cannot resolve")), Some(retry));
        assert_eq!(r.retry_at(), Some(retry));
        assert!(matches!(r.handle_timeout(retry, false), Step::Resolve));
        assert_eq!(r.state, RegistrationState::Resolving);
        assert_eq!(
            wakes_at(r.failed(retry, 503, "cannot resolve")),
            Some(retry + Duration::from_secs(60))
        );
    }
}
