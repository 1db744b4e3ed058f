//! One INVITE the PBX sends on behalf of an invitation or an anchored call: to a
//! registered device, or to a trunk (which may challenge it). Ringing several devices at
//! once makes several forks; the first to answer wins and the others are cancelled.

use confero_sip::message::{Request, Response};
use confero_sip::transport::Peer;

use super::build_cancel;

/// Challenges answered on one fork before its failure stands.
const MAX_FORK_AUTH_TRIES: u8 = 2;

#[derive(Debug)]
pub(super) struct OutFork {
    /// The INVITE as last sent (a challenged one is replaced by its authorized retry, so
    /// that a CANCEL matches what the callee saw).
    pub(super) invite: Request,
    pub(super) peer: Peer,
    pub(super) done: bool,
    /// A provisional response came: CANCEL may be sent (RFC 3261 §9.1).
    pub(super) provisional: bool,
    /// We want to cancel but no provisional came yet.
    pub(super) cancel_wanted: bool,
    pub(super) final_code: Option<u16>,
    /// The trunk this fork goes through, whose credentials answer challenges.
    pub(super) trunk: Option<i64>,
    auth_tries: u8,
}

/// What the owner must do after a fork saw a provisional response.
#[derive(Debug)]
pub(super) enum Provisional {
    /// Send this CANCEL (a cancel was waiting for the first provisional).
    Cancel(Box<Request>, Peer),
    /// The callee is ringing (the first 18x).
    Ringing,
    Nothing,
}

impl OutFork {
    pub(super) fn new(invite: Request, peer: Peer, trunk: Option<i64>) -> Self {
        OutFork {
            invite,
            peer,
            done: false,
            provisional: false,
            cancel_wanted: false,
            final_code: None,
            trunk,
            auth_tries: 0,
        }
    }

    pub(super) fn on_provisional(&mut self, code: u16) -> Provisional {
        if code > 100 || self.cancel_wanted {
            self.provisional = true;
        }
        if self.cancel_wanted {
            self.cancel_wanted = false;
            return Provisional::Cancel(Box::new(build_cancel(&self.invite)), self.peer);
        }
        if code > 100 {
            Provisional::Ringing
        } else {
            Provisional::Nothing
        }
    }

    /// Whether a 401/407 on this fork should be answered with the trunk's credentials.
    pub(super) fn wants_auth_retry(&mut self, resp: &Response) -> Option<i64> {
        let code = resp.code.into_u16();
        let trunk = self.trunk?;
        if !matches!(code, 401 | 407)
            || self.auth_tries >= MAX_FORK_AUTH_TRIES
            || self.cancel_wanted
        {
            return None;
        }
        self.auth_tries += 1;
        Some(trunk)
    }

    /// The retry went out: it is this fork's INVITE from now on.
    pub(super) fn retried(&mut self, invite: Request) {
        self.invite = invite;
        self.provisional = false;
    }
}

/// CANCELs for every fork still ringing except `keep`; forks without a provisional yet
/// are marked and cancelled when one comes.
pub(super) fn cancels(forks: &mut [OutFork], keep: Option<usize>) -> Vec<(Request, Peer)> {
    let mut out = Vec::new();
    for (i, f) in forks.iter_mut().enumerate() {
        if Some(i) == keep || f.done {
            continue;
        }
        if f.provisional {
            out.push((build_cancel(&f.invite), f.peer));
        } else {
            f.cancel_wanted = true;
        }
    }
    out
}

/// What the caller of an unanswered set of forks is told (RFC 3261 §16.7 in spirit: busy
/// beats "unavailable"; a single fork's own answer, e.g. a provider's 404, is kept).
pub(super) fn failure_of(forks: &[OutFork]) -> (u16, String) {
    let codes: Vec<u16> = forks.iter().filter_map(|f| f.final_code).collect();
    if let ([only], [fork]) = (codes.as_slice(), forks) {
        if fork.trunk.is_some() {
            return (*only, String::new());
        }
    }
    let (code, reason) = super::pick_failure(codes.into_iter());
    (code, reason.to_owned())
}
