//! The configuration model: users, conference rooms, incoming numbers and trunks.
//!
//! This module is pure (no IO). The store keeps two copies of a [`Config`]: the
//! **draft**, which every console or API write edits, and **production**, the
//! newest published [`Snapshot`] that the call engine reads. Nothing a caller
//! hears changes until the draft is applied, so validation here has two levels:
//!
//! - per-entity checks ([`validate_user`], [`validate_conference`], …) run at
//!   save time against the rest of the draft, so a form can point at the one
//!   field that is wrong;
//! - [`Config::validate`] checks the whole configuration, and is what guards
//!   `apply`: a draft that reaches production is always consistent, whatever
//!   order the edits came in.
//!
//! Reference checks that only make sense when something is removed or renamed
//! ([`check_user_removal`], [`check_conference_removal`]) are separate because
//! they are conflicts (the edit is fine, but something else depends on the old
//! value), which the API reports differently from a malformed field.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// A person with a phone: an internal extension and SIP credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Its key in the store.
    pub id: i64,
    /// The name shown on phones and in the console.
    pub name: String,
    /// The number colleagues dial (3 to 5 digits).
    pub extension: String,
    /// The user part of its SIP address (what phones register as).
    pub sip_username: String,
    /// The SIP password phones authenticate with.
    pub sip_password: String,
}

/// What happens to a room that waits for its administrator when the last
/// administrator hangs up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminLeaves {
    /// The others keep talking to each other.
    KeepGoing,
    /// The others go back to the waiting music until an administrator returns.
    #[default]
    Wait,
    /// The room ends: everyone hears the closing announcement and is hung up.
    End,
}

/// A conference room reachable at its own extension.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conference {
    /// Its key in the store.
    pub id: i64,
    /// The name shown to the invited and in the console.
    pub name: String,
    /// The number callers dial (3 to 5 digits).
    pub extension: String,
    /// Digits a caller must enter (followed by `#`) before joining; `None` means open.
    #[serde(default)]
    pub access_code: Option<String>,
    /// The extension of the user who administers the room.
    #[serde(default)]
    pub admin_extension: Option<String>,
    /// When true, callers wait (and hear no one) until the administrator joins.
    #[serde(default)]
    pub wait_for_admin: bool,
    /// What happens when the last administrator hangs up, for a room that waits for one.
    #[serde(default)]
    pub when_admin_leaves: AdminLeaves,
}

/// A public phone number (DID) that reaches the PBX through a trunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingNumber {
    /// Its key in the store.
    pub id: i64,
    /// The number as the administrator wrote it (any common writing matches).
    pub number: String,
    /// Where its calls go.
    #[serde(default)]
    pub destination: Destination,
}

/// Where a call to an incoming number goes.
///
/// JSON: `{"type": "conference", "conference_id": 7}`. `Deserialize` is written
/// by hand (through a plain struct) because serde's internally tagged enums
/// buffer their content and lose the path to a bad value; the API needs to say
/// `destination.conference_id`, not just `destination`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Destination {
    /// The number is known but nobody decided yet; the caller hears a busy/unavailable answer.
    #[default]
    NotConfigured,
    /// The caller is refused (603).
    HangUp,
    /// A user's or a conference room's extension.
    Extension {
        /// The extension dialled.
        extension: String,
    },
    /// A conference room, by id (with its receptionist and access code).
    Conference {
        /// The room's id.
        conference_id: i64,
    },
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;

        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum Kind {
            NotConfigured,
            HangUp,
            Extension,
            Conference,
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            #[serde(rename = "type")]
            kind: Kind,
            #[serde(default)]
            extension: Option<String>,
            #[serde(default)]
            conference_id: Option<i64>,
        }

        let raw = Raw::deserialize(d)?;
        let unexpected = |field: &'static str, allowed: &'static [&'static str]| {
            D::Error::unknown_field(field, allowed)
        };
        match raw.kind {
            Kind::NotConfigured | Kind::HangUp => {
                if raw.extension.is_some() {
                    return Err(unexpected("extension", &["type"]));
                }
                if raw.conference_id.is_some() {
                    return Err(unexpected("conference_id", &["type"]));
                }
                Ok(if matches!(raw.kind, Kind::HangUp) {
                    Destination::HangUp
                } else {
                    Destination::NotConfigured
                })
            }
            Kind::Extension => {
                if raw.conference_id.is_some() {
                    return Err(unexpected("conference_id", &["type", "extension"]));
                }
                let extension = raw
                    .extension
                    .ok_or_else(|| D::Error::missing_field("extension"))?;
                Ok(Destination::Extension { extension })
            }
            Kind::Conference => {
                if raw.extension.is_some() {
                    return Err(unexpected("extension", &["type", "conference_id"]));
                }
                let conference_id = raw
                    .conference_id
                    .ok_or_else(|| D::Error::missing_field("conference_id"))?;
                Ok(Destination::Conference { conference_id })
            }
        }
    }
}

/// The SIP transport used to reach a trunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrunkTransport {
    /// Plain UDP (port 5060 by default).
    #[default]
    Udp,
    /// TCP.
    Tcp,
    /// TLS, the provider's certificate checked against its host.
    Tls,
}

/// A SIP provider account used for calls to and from the public network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trunk {
    /// Its key in the store.
    pub id: i64,
    /// The name shown in the console.
    pub name: String,
    /// The provider's host name or address.
    pub host: String,
    /// The provider's port.
    pub port: u16,
    /// How to reach it.
    #[serde(default)]
    pub transport: TrunkTransport,
    /// The account's user name, for REGISTER and challenges.
    #[serde(default)]
    pub username: Option<String>,
    /// The account's password.
    #[serde(default)]
    pub password: Option<String>,
    /// Whether the PBX sends REGISTER to the provider (most providers need it to route DIDs).
    #[serde(default)]
    pub register: bool,
    /// The number presented to the provider on outgoing calls.
    #[serde(default)]
    pub caller_id: Option<String>,
    /// Numbers dialled with this prefix go out through this trunk, prefix removed (`9`
    /// for an outside line, `00` for a second provider). The trunk of lowest id without
    /// a prefix takes every other number that is not an internal extension.
    #[serde(default)]
    pub dial_prefix: Option<String>,
}

/// One whole configuration (what the draft holds and what a production revision freezes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Everyone with a phone.
    #[serde(default)]
    pub users: Vec<User>,
    /// The conference rooms.
    #[serde(default)]
    pub conferences: Vec<Conference>,
    /// The public numbers and where they lead.
    #[serde(default)]
    pub incoming_numbers: Vec<IncomingNumber>,
    /// The provider accounts.
    #[serde(default)]
    pub trunks: Vec<Trunk>,
}

/// A published revision: what the running engine uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Increases by one with each apply; 0 means "nothing was ever applied" (empty config).
    pub revision: i64,
    /// What it publishes.
    pub config: Config,
}

/// A problem with one field, phrased for the person who filled in the form.
///
/// In per-entity checks `field` is the plain field name (`"extension"`); in
/// [`Config::validate`] it is qualified by collection and id
/// (`"conferences[id=7].admin_extension"`) because the whole draft is checked at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// The field, as the API names it.
    pub field: String,
    /// What is wrong, for the person who filled in the form.
    pub message: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    fn qualified(self, collection: &str, id: i64) -> Self {
        Self {
            field: format!("{collection}[id={id}].{}", self.field),
            message: self.message,
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

impl Config {
    /// The user with this extension.
    pub fn user_by_extension(&self, ext: &str) -> Option<&User> {
        self.users.iter().find(|u| u.extension == ext)
    }

    /// The user who registers as `username`.
    pub fn user_by_sip_username(&self, username: &str) -> Option<&User> {
        self.users.iter().find(|u| u.sip_username == username)
    }

    /// The room with this extension.
    pub fn conference_by_extension(&self, ext: &str) -> Option<&Conference> {
        self.conferences.iter().find(|c| c.extension == ext)
    }

    /// The user of this id.
    pub fn user(&self, id: i64) -> Option<&User> {
        self.users.iter().find(|u| u.id == id)
    }

    /// The room of this id.
    pub fn conference(&self, id: i64) -> Option<&Conference> {
        self.conferences.iter().find(|c| c.id == id)
    }

    /// The incoming number of this id.
    pub fn incoming_number(&self, id: i64) -> Option<&IncomingNumber> {
        self.incoming_numbers.iter().find(|n| n.id == id)
    }

    /// The trunk of this id.
    pub fn trunk(&self, id: i64) -> Option<&Trunk> {
        self.trunks.iter().find(|t| t.id == id)
    }

    /// The incoming number a provider's call is for. Providers write numbers in many ways
    /// (`+3225551234`, `003225551234`, national `025551234`): an exact match of the digits
    /// wins, else the longest configured number whose significant digits end the dialled
    /// ones (or the reverse), with at least six digits in common.
    pub fn incoming_number_for(&self, dialled: &str) -> Option<&IncomingNumber> {
        let want = number_digits(dialled)?;
        if let Some(n) = self
            .incoming_numbers
            .iter()
            .find(|n| number_digits(&n.number).as_deref() == Some(want.as_str()))
        {
            return Some(n);
        }
        let want = want.trim_start_matches('0');
        self.incoming_numbers
            .iter()
            .filter_map(|n| {
                let have = number_digits(&n.number)?;
                let have = have.trim_start_matches('0').to_owned();
                let (long, short) = if have.len() >= want.len() {
                    (have.as_str(), want)
                } else {
                    (want, have.as_str())
                };
                (short.len() >= 6 && long.ends_with(short)).then_some((short.len(), n))
            })
            .max_by_key(|(common, _)| *common)
            .map(|(_, n)| n)
    }

    /// The trunk a dialled number leaves through, and the number to send it: the trunk
    /// whose prefix starts the number (longest prefix first, prefix removed), else the
    /// trunk of lowest id without a prefix.
    pub fn outbound_route(&self, dialled: &str) -> Option<(&Trunk, String)> {
        let mut prefixed: Vec<&Trunk> = self
            .trunks
            .iter()
            .filter(|t| t.dial_prefix.is_some())
            .collect();
        prefixed.sort_by_key(|t| std::cmp::Reverse(t.dial_prefix.as_ref().map_or(0, String::len)));
        for t in prefixed {
            let prefix = t.dial_prefix.as_deref().unwrap_or_default();
            if let Some(rest) = dialled.strip_prefix(prefix) {
                if !rest.is_empty() {
                    return Some((t, rest.to_owned()));
                }
            }
        }
        self.trunks
            .iter()
            .filter(|t| t.dial_prefix.is_none())
            .min_by_key(|t| t.id)
            .map(|t| (t, dialled.to_owned()))
    }

    /// The number presented when `user` calls out through `trunk`: an incoming number that
    /// rings the user (their direct line), else the trunk's caller ID.
    pub fn outbound_caller_id(&self, user: &User, trunk: &Trunk) -> Option<String> {
        self.incoming_numbers
            .iter()
            .find(|n| {
                matches!(&n.destination, Destination::Extension { extension } if *extension == user.extension)
            })
            .map(|n| n.number.clone())
            .or_else(|| trunk.caller_id.clone())
    }

    /// Whether `ext` is dialable inside the PBX (a user or a conference room).
    pub fn extension_exists(&self, ext: &str) -> bool {
        self.user_by_extension(ext).is_some() || self.conference_by_extension(ext).is_some()
    }

    /// Whole-config validation (used before apply and by every save): returns every problem found.
    ///
    /// Each entity is checked with the same per-entity rule used at save time,
    /// then ids are checked for duplicates (which the store never produces, but a
    /// hand-edited revision could).
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        for u in &self.users {
            if let Err(e) = validate_user(self, u) {
                errors.push(e.qualified("users", u.id));
            }
        }
        for c in &self.conferences {
            if let Err(e) = validate_conference(self, c) {
                errors.push(e.qualified("conferences", c.id));
            }
        }
        for n in &self.incoming_numbers {
            if let Err(e) = validate_incoming_number(self, n) {
                errors.push(e.qualified("incoming_numbers", n.id));
            }
        }
        for t in &self.trunks {
            if let Err(e) = validate_trunk(self, t) {
                errors.push(e.qualified("trunks", t.id));
            }
        }
        check_unique_ids("users", self.users.iter().map(|u| u.id), &mut errors);
        check_unique_ids(
            "conferences",
            self.conferences.iter().map(|c| c.id),
            &mut errors,
        );
        check_unique_ids(
            "incoming_numbers",
            self.incoming_numbers.iter().map(|n| n.id),
            &mut errors,
        );
        check_unique_ids("trunks", self.trunks.iter().map(|t| t.id), &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

fn check_unique_ids(
    collection: &str,
    ids: impl Iterator<Item = i64>,
    errors: &mut Vec<FieldError>,
) {
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            errors.push(FieldError::new(
                format!("{collection}[id={id}].id"),
                "id is used twice",
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// Field rules. Each returns the message for a bad value; the caller names the field.

const NAME_MAX: usize = 100;
const SIP_USERNAME_MAX: usize = 64;
const SIP_PASSWORD_MIN: usize = 8;
const SIP_PASSWORD_MAX: usize = 128;
const TRUNK_CREDENTIAL_MAX: usize = 128;

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn check_name(name: &str) -> Result<(), FieldError> {
    let len = name.chars().count();
    if name.trim().is_empty() {
        return Err(FieldError::new("name", "name must not be blank"));
    }
    if len > NAME_MAX {
        return Err(FieldError::new(
            "name",
            format!("name must be at most {NAME_MAX} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(FieldError::new(
            "name",
            "name must not contain control characters",
        ));
    }
    Ok(())
}

fn check_digits_len(
    field: &str,
    value: &str,
    min: usize,
    max: usize,
    what: &str,
) -> Result<(), FieldError> {
    if !is_digits(value) || value.len() < min || value.len() > max {
        return Err(FieldError::new(
            field,
            format!("{what} must be {min} to {max} digits"),
        ));
    }
    Ok(())
}

/// The digits of a phone number written by a person or a provider: spaces, dots, dashes
/// and brackets dropped, `+` or the international `00` removed. `None` when anything
/// else is in it (a SIP user part that is a name, not a number).
pub fn number_digits(raw: &str) -> Option<String> {
    let cleaned: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '.' | '-' | '(' | ')'))
        .collect();
    let digits = cleaned.strip_prefix('+').unwrap_or(&cleaned);
    if digits.is_empty() || digits.len() > 24 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = if !cleaned.starts_with('+') && digits.len() > 4 {
        digits.strip_prefix("00").unwrap_or(digits)
    } else {
        digits
    };
    Some(digits.to_owned())
}

/// An E.164-ish number: optional leading `+`, then `min`–`max` digits.
fn check_phone_number(field: &str, value: &str, min: usize, max: usize) -> Result<(), FieldError> {
    let digits = value.strip_prefix('+').unwrap_or(value);
    if !is_digits(digits) || digits.len() < min || digits.len() > max {
        return Err(FieldError::new(
            field,
            format!("{field} must be an optional '+' followed by {min} to {max} digits"),
        ));
    }
    Ok(())
}

/// Extensions share one namespace: a dialled number must reach exactly one thing.
fn check_extension_free(
    cfg: &Config,
    ext: &str,
    user_id: Option<i64>,
    conference_id: Option<i64>,
) -> Result<(), FieldError> {
    if let Some(u) = cfg
        .users
        .iter()
        .find(|u| u.extension == ext && Some(u.id) != user_id)
    {
        return Err(FieldError::new(
            "extension",
            format!("extension {ext} is already used by user \"{}\"", u.name),
        ));
    }
    if let Some(c) = cfg
        .conferences
        .iter()
        .find(|c| c.extension == ext && Some(c.id) != conference_id)
    {
        return Err(FieldError::new(
            "extension",
            format!(
                "extension {ext} is already used by conference \"{}\"",
                c.name
            ),
        ));
    }
    Ok(())
}

fn is_valid_hostname(host: &str) -> bool {
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn is_valid_host(host: &str) -> bool {
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    unbracketed.parse::<std::net::IpAddr>().is_ok() || is_valid_hostname(host)
}

/// Per-entity validation of a user, given the rest of the draft.
///
/// `cfg` may already contain `u` (an update): an entity never conflicts with itself.
pub fn validate_user(cfg: &Config, u: &User) -> Result<(), FieldError> {
    check_name(&u.name)?;
    check_digits_len("extension", &u.extension, 2, 6, "a user's extension")?;
    check_extension_free(cfg, &u.extension, Some(u.id), None)?;
    let name_ok = !u.sip_username.is_empty()
        && u.sip_username.len() <= SIP_USERNAME_MAX
        && u.sip_username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !name_ok {
        return Err(FieldError::new(
            "sip_username",
            format!(
                "sip_username must be 1 to {SIP_USERNAME_MAX} characters among A-Z a-z 0-9 . _ -"
            ),
        ));
    }
    if let Some(other) = cfg
        .users
        .iter()
        .find(|o| o.sip_username == u.sip_username && o.id != u.id)
    {
        return Err(FieldError::new(
            "sip_username",
            format!(
                "sip_username {} is already used by user \"{}\"",
                u.sip_username, other.name
            ),
        ));
    }
    let pw_len = u.sip_password.chars().count();
    // Phones reachable from the internet are brute-forced within hours; 8 is the floor.
    if !(SIP_PASSWORD_MIN..=SIP_PASSWORD_MAX).contains(&pw_len) {
        return Err(FieldError::new(
            "sip_password",
            format!("sip_password must be {SIP_PASSWORD_MIN} to {SIP_PASSWORD_MAX} characters"),
        ));
    }
    if u.sip_password.chars().any(char::is_control) {
        return Err(FieldError::new(
            "sip_password",
            "sip_password must not contain control characters",
        ));
    }
    Ok(())
}

/// Per-entity validation of a conference room, given the rest of the draft.
pub fn validate_conference(cfg: &Config, c: &Conference) -> Result<(), FieldError> {
    conference_problems(cfg, c)
        .into_iter()
        .next()
        .map_or(Ok(()), Err)
}

/// Every rule a conference room breaks, one per field at most, in form order: forms
/// show them all at once rather than one per attempt.
pub fn conference_problems(cfg: &Config, c: &Conference) -> Vec<FieldError> {
    let mut problems = Vec::new();
    if let Err(e) = check_name(&c.name) {
        problems.push(e);
    }
    if let Err(e) = check_digits_len("extension", &c.extension, 3, 5, "a conference's extension")
        .and_then(|()| check_extension_free(cfg, &c.extension, None, Some(c.id)))
    {
        problems.push(e);
    }
    if let Some(code) = &c.access_code {
        // Fewer than 4 digits fall to a guesser in an afternoon whatever the limits.
        if let Err(e) = check_digits_len("access_code", code, 4, 12, "access_code") {
            problems.push(e);
        }
    }
    match &c.admin_extension {
        Some(ext) if cfg.user_by_extension(ext).is_none() => {
            problems.push(FieldError::new(
                "admin_extension",
                format!("admin_extension {ext} is not a user's extension"),
            ));
        }
        None if c.wait_for_admin => {
            problems.push(FieldError::new(
                "wait_for_admin",
                "wait_for_admin needs an admin_extension",
            ));
        }
        _ => {}
    }
    problems
}

/// Per-entity validation of an incoming number, given the rest of the draft.
pub fn validate_incoming_number(cfg: &Config, n: &IncomingNumber) -> Result<(), FieldError> {
    check_phone_number("number", &n.number, 3, 20)?;
    if cfg
        .incoming_numbers
        .iter()
        .any(|o| o.number == n.number && o.id != n.id)
    {
        return Err(FieldError::new(
            "number",
            format!("number {} is already configured", n.number),
        ));
    }
    match &n.destination {
        Destination::NotConfigured | Destination::HangUp => {}
        Destination::Extension { extension } => {
            if !cfg.extension_exists(extension) {
                return Err(FieldError::new(
                    "destination.extension",
                    format!("extension {extension} is neither a user nor a conference"),
                ));
            }
        }
        Destination::Conference { conference_id } => {
            if cfg.conference(*conference_id).is_none() {
                return Err(FieldError::new(
                    "destination.conference_id",
                    format!("conference {conference_id} does not exist"),
                ));
            }
        }
    }
    Ok(())
}

/// Per-entity validation of a trunk, given the rest of the draft.
pub fn validate_trunk(cfg: &Config, t: &Trunk) -> Result<(), FieldError> {
    check_name(&t.name)?;
    if let Some(other) = cfg.trunks.iter().find(|o| o.name == t.name && o.id != t.id) {
        return Err(FieldError::new(
            "name",
            format!(
                "trunk name \"{}\" is already used (trunk {})",
                t.name, other.id
            ),
        ));
    }
    if !is_valid_host(&t.host) {
        return Err(FieldError::new(
            "host",
            "host must be a hostname or an IP address",
        ));
    }
    if t.port == 0 {
        return Err(FieldError::new("port", "port must be 1 to 65535"));
    }
    for (field, value) in [("username", &t.username), ("password", &t.password)] {
        if let Some(v) = value {
            if v.is_empty()
                || v.chars().count() > TRUNK_CREDENTIAL_MAX
                || v.chars().any(char::is_control)
            {
                return Err(FieldError::new(
                    field,
                    format!(
                        "{field} must be 1 to {TRUNK_CREDENTIAL_MAX} printable characters, or null"
                    ),
                ));
            }
        }
    }
    if t.register && t.username.is_none() {
        return Err(FieldError::new("register", "register needs a username"));
    }
    if let Some(cid) = &t.caller_id {
        check_phone_number("caller_id", cid, 3, 20)?;
    }
    if let Some(prefix) = &t.dial_prefix {
        check_digits_len("dial_prefix", prefix, 1, 4, "dial_prefix")?;
        if let Some(other) = cfg
            .trunks
            .iter()
            .find(|o| o.id != t.id && o.dial_prefix.as_deref() == Some(prefix))
        {
            return Err(FieldError::new(
                "dial_prefix",
                format!(
                    "dial_prefix {prefix} is already used by trunk \"{}\"",
                    other.name
                ),
            ));
        }
    }
    Ok(())
}

/// Whether the user `id` can be removed from `cfg`, or have its extension changed
/// to `new_extension`: conferences and incoming numbers that point at the old
/// extension would otherwise dangle.
pub fn check_user_removal(
    cfg: &Config,
    id: i64,
    new_extension: Option<&str>,
) -> Result<(), FieldError> {
    let Some(user) = cfg.user(id) else {
        return Ok(());
    };
    if new_extension == Some(user.extension.as_str()) {
        return Ok(());
    }
    let ext = user.extension.as_str();
    if let Some(c) = cfg
        .conferences
        .iter()
        .find(|c| c.admin_extension.as_deref() == Some(ext))
    {
        return Err(FieldError::new(
            "extension",
            format!(
                "user \"{}\" (extension {ext}) is the administrator of conference \"{}\"",
                user.name, c.name
            ),
        ));
    }
    if let Some(n) = cfg.incoming_numbers.iter().find(
        |n| matches!(&n.destination, Destination::Extension { extension } if extension == ext),
    ) {
        return Err(FieldError::new(
            "extension",
            format!(
                "user \"{}\" (extension {ext}) is the destination of incoming number {}",
                user.name, n.number
            ),
        ));
    }
    Ok(())
}

/// Whether the conference `id` can be removed, or have its extension changed to
/// `new_extension`, without leaving an incoming number pointing nowhere.
pub fn check_conference_removal(
    cfg: &Config,
    id: i64,
    new_extension: Option<&str>,
) -> Result<(), FieldError> {
    let Some(conf) = cfg.conference(id) else {
        return Ok(());
    };
    let removing = new_extension.is_none();
    let renaming = new_extension.is_some_and(|e| e != conf.extension);
    for n in &cfg.incoming_numbers {
        let hit = match &n.destination {
            Destination::Conference { conference_id } => removing && *conference_id == id,
            Destination::Extension { extension } => {
                (removing || renaming) && *extension == conf.extension
            }
            _ => false,
        };
        if hit {
            return Err(FieldError::new(
                if removing { "id" } else { "extension" },
                format!(
                    "conference \"{}\" is the destination of incoming number {}",
                    conf.name, n.number
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Diff between two configurations (what "Apply changes" would publish).

/// How an entity changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// New in the draft.
    Added,
    /// Changed in the draft.
    Modified,
    /// Gone from the draft.
    Deleted,
}

/// The kind of configuration entity a [`Change`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    /// A user.
    User,
    /// A conference room.
    Conference,
    /// An incoming number.
    IncomingNumber,
    /// A trunk.
    Trunk,
}

impl EntityKind {
    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::User => "user",
            EntityKind::Conference => "conference",
            EntityKind::IncomingNumber => "incoming_number",
            EntityKind::Trunk => "trunk",
        }
    }
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One pending difference between production and the draft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// How it changed.
    pub kind: ChangeKind,
    /// What kind of entity.
    pub entity: EntityKind,
    /// Its id.
    pub id: i64,
    /// A human label such as `Sales meeting (800)`, taken from the new version
    /// (or the old one for a deletion).
    pub summary: String,
}

fn diff_entities<T: PartialEq>(
    entity: EntityKind,
    old: &[T],
    new: &[T],
    id: impl Fn(&T) -> i64,
    summary: impl Fn(&T) -> String,
    out: &mut Vec<Change>,
) {
    let old_by_id: HashMap<i64, &T> = old.iter().map(|e| (id(e), e)).collect();
    let new_by_id: BTreeMap<i64, &T> = new.iter().map(|e| (id(e), e)).collect();
    let mut ids: Vec<i64> = old_by_id.keys().chain(new_by_id.keys()).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    for i in ids {
        let change = match (old_by_id.get(&i), new_by_id.get(&i)) {
            (None, Some(n)) => Some((ChangeKind::Added, summary(n))),
            (Some(o), None) => Some((ChangeKind::Deleted, summary(o))),
            (Some(o), Some(n)) if o != n => Some((ChangeKind::Modified, summary(n))),
            _ => None,
        };
        if let Some((kind, summary)) = change {
            out.push(Change {
                kind,
                entity,
                id: i,
                summary,
            });
        }
    }
}

/// What differs between `old` (production) and `new` (the draft), by entity then id.
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    diff_entities(
        EntityKind::User,
        &old.users,
        &new.users,
        |u| u.id,
        |u| format!("{} ({})", u.name, u.extension),
        &mut out,
    );
    diff_entities(
        EntityKind::Conference,
        &old.conferences,
        &new.conferences,
        |c| c.id,
        |c| format!("{} ({})", c.name, c.extension),
        &mut out,
    );
    diff_entities(
        EntityKind::IncomingNumber,
        &old.incoming_numbers,
        &new.incoming_numbers,
        |n| n.id,
        |n| n.number.clone(),
        &mut out,
    );
    diff_entities(
        EntityKind::Trunk,
        &old.trunks,
        &new.trunks,
        |t| t.id,
        |t| format!("{} ({})", t.name, t.host),
        &mut out,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i64, ext: &str) -> User {
        User {
            id,
            name: format!("User {id}"),
            extension: ext.into(),
            sip_username: format!("u{id}"),
            sip_password: "correct-horse".into(),
        }
    }

    fn conf(id: i64, ext: &str) -> Conference {
        Conference {
            id,
            name: format!("Room {id}"),
            extension: ext.into(),
            access_code: None,
            admin_extension: None,
            wait_for_admin: false,
            when_admin_leaves: AdminLeaves::Wait,
        }
    }

    fn number(id: i64, n: &str, destination: Destination) -> IncomingNumber {
        IncomingNumber {
            id,
            number: n.into(),
            destination,
        }
    }

    fn trunk(id: i64) -> Trunk {
        Trunk {
            id,
            name: format!("Trunk {id}"),
            host: "sip.example.net".into(),
            port: 5060,
            transport: TrunkTransport::Udp,
            username: Some("acct".into()),
            password: Some("secret".into()),
            register: true,
            caller_id: Some("+3225550100".into()),
            dial_prefix: None,
        }
    }

    #[test]
    fn provider_numbers_find_their_incoming_number() {
        let mut cfg = base();
        cfg.incoming_numbers
            .push(number(21, "+3225550199", Destination::HangUp));
        for written in [
            "+3225550100",
            "3225550100",
            "003225550100",
            "025550100",
            "+32 2 555 01 00",
        ] {
            assert_eq!(
                cfg.incoming_number_for(written).map(|n| n.id),
                Some(20),
                "{written}"
            );
        }
        assert_eq!(cfg.incoming_number_for("025550199").map(|n| n.id), Some(21));
        for stranger in ["", "alice", "5550100x", "0100", "+3225550111"] {
            assert_eq!(
                cfg.incoming_number_for(stranger).map(|n| n.id),
                None,
                "{stranger}"
            );
        }
    }

    #[test]
    fn dialled_numbers_pick_their_trunk() {
        let mut cfg = base();
        cfg.trunks.clear();
        assert!(
            cfg.outbound_route("0475123456").is_none(),
            "no trunk, no way out"
        );
        cfg.trunks = vec![trunk(3), trunk(2)];
        cfg.trunks[0].dial_prefix = Some("9".into());
        let (t, n) = cfg.outbound_route("90475123456").unwrap();
        assert_eq!((t.id, n.as_str()), (3, "0475123456"), "prefix removed");
        let (t, n) = cfg.outbound_route("0475123456").unwrap();
        assert_eq!((t.id, n.as_str()), (2, "0475123456"), "the default trunk");
        let (t, _) = cfg.outbound_route("9").unwrap();
        assert_eq!(t.id, 2, "a bare prefix is a number like any other");
        cfg.trunks[1].dial_prefix = Some("00".into());
        assert!(
            cfg.outbound_route("0475123456").is_none(),
            "no default trunk"
        );
    }

    #[test]
    fn outgoing_caller_id_is_the_users_direct_line_or_the_trunks() {
        let mut cfg = base();
        let t = trunk(3);
        let alice = cfg.users[0].clone();
        assert_eq!(
            cfg.outbound_caller_id(&alice, &t).as_deref(),
            Some("+3225550100")
        );
        cfg.incoming_numbers.push(number(
            22,
            "+3225550101",
            Destination::Extension {
                extension: alice.extension.clone(),
            },
        ));
        assert_eq!(
            cfg.outbound_caller_id(&alice, &t).as_deref(),
            Some("+3225550101")
        );
    }

    #[test]
    fn dial_prefixes_are_digits_and_unique() {
        let mut cfg = base();
        let mut a = trunk(3);
        a.dial_prefix = Some("9x".into());
        assert_eq!(field_of(validate_trunk(&cfg, &a)), "dial_prefix");
        a.dial_prefix = Some("9".into());
        assert_eq!(field_of(validate_trunk(&cfg, &a)), "ok");
        cfg.trunks.push(a);
        let mut b = trunk(4);
        b.name = "Other".into();
        b.dial_prefix = Some("9".into());
        assert_eq!(field_of(validate_trunk(&cfg, &b)), "dial_prefix");
    }

    fn base() -> Config {
        Config {
            users: vec![user(1, "101"), user(2, "102")],
            conferences: vec![conf(10, "800")],
            incoming_numbers: vec![number(
                20,
                "+3225550100",
                Destination::Conference { conference_id: 10 },
            )],
            trunks: vec![trunk(30)],
        }
    }

    fn field_of<T>(r: Result<T, FieldError>) -> String {
        match r {
            Ok(_) => "ok".into(),
            Err(e) => e.field,
        }
    }

    #[test]
    fn base_config_is_valid() {
        assert_eq!(base().validate(), Ok(()));
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn user_extension_is_two_to_six_digits() {
        let cfg = base();
        for bad in ["1", "1234567", "10a", "", " 101", "１２３"] {
            assert_eq!(
                field_of(validate_user(&cfg, &user(3, bad))),
                "extension",
                "{bad:?}"
            );
        }
        for good in ["10", "123456", "0042"] {
            assert_eq!(
                field_of(validate_user(&cfg, &user(3, good))),
                "ok",
                "{good:?}"
            );
        }
    }

    #[test]
    fn conference_extension_is_three_to_five_digits() {
        let cfg = base();
        for bad in ["12", "123456", "8x0"] {
            assert_eq!(
                field_of(validate_conference(&cfg, &conf(11, bad))),
                "extension",
                "{bad:?}"
            );
        }
        for good in ["123", "12345"] {
            assert_eq!(field_of(validate_conference(&cfg, &conf(11, good))), "ok");
        }
    }

    #[test]
    fn every_broken_rule_of_a_conference_is_listed() {
        let cfg = base();
        let mut c = conf(11, "101");
        c.name = " ".into();
        c.access_code = Some("12ab".into());
        c.wait_for_admin = true;
        c.admin_extension = None;
        let fields: Vec<String> = conference_problems(&cfg, &c)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            ["name", "extension", "access_code", "wait_for_admin"]
        );
        assert_eq!(
            validate_conference(&cfg, &c).unwrap_err().field,
            "name",
            "validation reports the first"
        );
        assert!(conference_problems(&cfg, &conf(11, "900")).is_empty());
    }

    #[test]
    fn extensions_are_unique_across_users_and_conferences() {
        let cfg = base();
        let e = validate_user(&cfg, &user(3, "101")).unwrap_err();
        assert_eq!(e.field, "extension");
        assert!(e.message.contains("User 1"), "{e}");
        assert_eq!(field_of(validate_user(&cfg, &user(3, "800"))), "extension");
        assert_eq!(
            field_of(validate_conference(&cfg, &conf(11, "101"))),
            "extension"
        );
        assert_eq!(
            field_of(validate_conference(&cfg, &conf(11, "800"))),
            "extension"
        );
        // An entity never conflicts with itself (update in place).
        assert_eq!(field_of(validate_user(&cfg, &user(1, "101"))), "ok");
        assert_eq!(field_of(validate_conference(&cfg, &conf(10, "800"))), "ok");
        // A user and a conference may share an id: ids are per collection.
        assert_eq!(field_of(validate_user(&cfg, &user(10, "800"))), "extension");
    }

    #[test]
    fn sip_username_charset_length_and_uniqueness() {
        let cfg = base();
        let mut u = user(3, "103");
        for bad in ["", "a b", "é", "a@b", &"x".repeat(65)] {
            u.sip_username = bad.to_string();
            assert_eq!(field_of(validate_user(&cfg, &u)), "sip_username", "{bad:?}");
        }
        for good in ["a", "A.b_c-9", &"x".repeat(64)] {
            u.sip_username = good.to_string();
            assert_eq!(field_of(validate_user(&cfg, &u)), "ok", "{good:?}");
        }
        u.sip_username = "u1".into();
        assert_eq!(field_of(validate_user(&cfg, &u)), "sip_username");
    }

    #[test]
    fn names_are_one_to_hundred_chars_and_not_blank() {
        let cfg = base();
        let mut u = user(3, "103");
        for bad in ["", "   ", "\t", &"n".repeat(101), "a\nb"] {
            u.name = bad.to_string();
            assert_eq!(field_of(validate_user(&cfg, &u)), "name", "{bad:?}");
        }
        u.name = "é".repeat(100);
        assert_eq!(field_of(validate_user(&cfg, &u)), "ok");
        let mut c = conf(11, "801");
        c.name = " ".into();
        assert_eq!(field_of(validate_conference(&cfg, &c)), "name");
        let mut t = trunk(31);
        t.name = String::new();
        assert_eq!(field_of(validate_trunk(&cfg, &t)), "name");
    }

    #[test]
    fn sip_password_length() {
        let cfg = base();
        let mut u = user(3, "103");
        for bad in ["", "short", &"p".repeat(129), "has\u{0}nul"] {
            u.sip_password = bad.to_string();
            assert_eq!(field_of(validate_user(&cfg, &u)), "sip_password", "{bad:?}");
        }
        u.sip_password = "eight ch".into();
        assert_eq!(field_of(validate_user(&cfg, &u)), "ok");
    }

    #[test]
    fn access_code_is_four_to_twelve_digits_or_null() {
        let cfg = base();
        let mut c = conf(11, "801");
        for bad in ["", "1", "123", "12a4", "1234567890123", "#123"] {
            c.access_code = Some(bad.into());
            assert_eq!(
                field_of(validate_conference(&cfg, &c)),
                "access_code",
                "{bad:?}"
            );
        }
        for good in [Some("1234"), Some("123456789012"), None] {
            c.access_code = good.map(Into::into);
            assert_eq!(field_of(validate_conference(&cfg, &c)), "ok");
        }
    }

    #[test]
    fn admin_extension_must_be_a_user() {
        let cfg = base();
        let mut c = conf(11, "801");
        c.admin_extension = Some("199".into());
        assert_eq!(field_of(validate_conference(&cfg, &c)), "admin_extension");
        // A conference's extension is not a user.
        c.admin_extension = Some("800".into());
        assert_eq!(field_of(validate_conference(&cfg, &c)), "admin_extension");
        c.admin_extension = Some("102".into());
        assert_eq!(field_of(validate_conference(&cfg, &c)), "ok");
    }

    #[test]
    fn wait_for_admin_needs_admin_extension() {
        let cfg = base();
        let mut c = conf(11, "801");
        c.wait_for_admin = true;
        assert_eq!(field_of(validate_conference(&cfg, &c)), "wait_for_admin");
        c.admin_extension = Some("101".into());
        assert_eq!(field_of(validate_conference(&cfg, &c)), "ok");
    }

    #[test]
    fn incoming_number_format_and_uniqueness() {
        let cfg = base();
        for bad in [
            "12",
            "+12",
            "++123",
            "+",
            "12 34",
            "123456789012345678901",
            "+1-555",
        ] {
            let n = number(21, bad, Destination::HangUp);
            assert_eq!(
                field_of(validate_incoming_number(&cfg, &n)),
                "number",
                "{bad:?}"
            );
        }
        for good in ["123", "+123", "+12345678901234567890", "025550101"] {
            let n = number(21, good, Destination::HangUp);
            assert_eq!(
                field_of(validate_incoming_number(&cfg, &n)),
                "ok",
                "{good:?}"
            );
        }
        let dup = number(21, "+3225550100", Destination::HangUp);
        assert_eq!(field_of(validate_incoming_number(&cfg, &dup)), "number");
        let same = number(20, "+3225550100", Destination::HangUp);
        assert_eq!(field_of(validate_incoming_number(&cfg, &same)), "ok");
    }

    #[test]
    fn incoming_number_destination_must_exist() {
        let cfg = base();
        let ext = |e: &str| Destination::Extension {
            extension: e.into(),
        };
        let n = |d| number(21, "+3225550199", d);
        assert_eq!(
            field_of(validate_incoming_number(&cfg, &n(ext("101")))),
            "ok"
        );
        assert_eq!(
            field_of(validate_incoming_number(&cfg, &n(ext("800")))),
            "ok"
        );
        assert_eq!(
            field_of(validate_incoming_number(&cfg, &n(ext("555")))),
            "destination.extension"
        );
        assert_eq!(
            field_of(validate_incoming_number(
                &cfg,
                &n(Destination::Conference { conference_id: 10 })
            )),
            "ok"
        );
        assert_eq!(
            field_of(validate_incoming_number(
                &cfg,
                &n(Destination::Conference { conference_id: 99 })
            )),
            "destination.conference_id"
        );
        assert_eq!(
            field_of(validate_incoming_number(
                &cfg,
                &n(Destination::NotConfigured)
            )),
            "ok"
        );
    }

    #[test]
    fn trunk_host_port_and_credentials() {
        let cfg = base();
        let mut t = trunk(31);
        for bad in [
            "",
            "-bad.example",
            "a..b",
            "sp ace",
            "under_score.net",
            "[::1",
        ] {
            t.host = bad.into();
            assert_eq!(field_of(validate_trunk(&cfg, &t)), "host", "{bad:?}");
        }
        for good in [
            "sip.example.net",
            "10.0.0.1",
            "::1",
            "[2001:db8::1]",
            "pbx",
            "example.com.",
        ] {
            t.host = good.into();
            assert_eq!(field_of(validate_trunk(&cfg, &t)), "ok", "{good:?}");
        }
        t.port = 0;
        assert_eq!(field_of(validate_trunk(&cfg, &t)), "port");
        t.port = 65535;
        assert_eq!(field_of(validate_trunk(&cfg, &t)), "ok");
        t.username = None;
        assert_eq!(field_of(validate_trunk(&cfg, &t)), "register");
        t.register = false;
        assert_eq!(field_of(validate_trunk(&cfg, &t)), "ok");
        t.password = Some(String::new());
        assert_eq!(field_of(validate_trunk(&cfg, &t)), "password");
        t.password = None;
        t.caller_id = Some("anonymous".into());
        assert_eq!(field_of(validate_trunk(&cfg, &t)), "caller_id");
        t.caller_id = None;
        t.name = "Trunk 30".into();
        assert_eq!(field_of(validate_trunk(&cfg, &t)), "name");
    }

    #[test]
    fn removing_a_referenced_user_is_a_conflict_naming_the_conference() {
        let mut cfg = base();
        cfg.conferences[0].admin_extension = Some("101".into());
        let e = check_user_removal(&cfg, 1, None).unwrap_err();
        assert!(e.message.contains("Room 10"), "{e}");
        // Changing the extension is the same as removing the old one.
        assert!(check_user_removal(&cfg, 1, Some("111")).is_err());
        assert!(check_user_removal(&cfg, 1, Some("101")).is_ok());
        assert!(check_user_removal(&cfg, 2, None).is_ok());
        assert!(check_user_removal(&cfg, 99, None).is_ok());

        cfg.conferences[0].admin_extension = None;
        cfg.incoming_numbers[0].destination = Destination::Extension {
            extension: "102".into(),
        };
        let e = check_user_removal(&cfg, 2, None).unwrap_err();
        assert!(e.message.contains("+3225550100"), "{e}");
    }

    #[test]
    fn removing_a_referenced_conference_is_a_conflict() {
        let mut cfg = base();
        let e = check_conference_removal(&cfg, 10, None).unwrap_err();
        assert!(e.message.contains("+3225550100"), "{e}");
        // Changing its extension is fine when the number points at it by id.
        assert!(check_conference_removal(&cfg, 10, Some("801")).is_ok());
        cfg.incoming_numbers[0].destination = Destination::Extension {
            extension: "800".into(),
        };
        assert!(check_conference_removal(&cfg, 10, Some("801")).is_err());
        assert!(check_conference_removal(&cfg, 10, Some("800")).is_ok());
        assert!(check_conference_removal(&cfg, 10, None).is_err());
    }

    #[test]
    fn whole_config_validation_reports_every_problem_with_qualified_fields() {
        let mut cfg = base();
        cfg.users.push(user(3, "101"));
        cfg.conferences[0].admin_extension = Some("555".into());
        cfg.trunks[0].port = 0;
        cfg.incoming_numbers
            .push(number(21, "+3225550100", Destination::HangUp));
        let errors = cfg.validate().unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"users[id=1].extension"), "{fields:?}");
        assert!(fields.contains(&"users[id=3].extension"), "{fields:?}");
        assert!(
            fields.contains(&"conferences[id=10].admin_extension"),
            "{fields:?}"
        );
        assert!(fields.contains(&"trunks[id=30].port"), "{fields:?}");
        assert!(
            fields.contains(&"incoming_numbers[id=21].number"),
            "{fields:?}"
        );
    }

    #[test]
    fn whole_config_validation_catches_duplicate_ids() {
        let mut cfg = base();
        cfg.users.push(user(1, "109"));
        cfg.users[2].sip_username = "other".into();
        let errors = cfg.validate().unwrap_err();
        assert_eq!(
            errors,
            vec![FieldError::new("users[id=1].id", "id is used twice")]
        );
    }

    #[test]
    fn lookups() {
        let cfg = base();
        assert_eq!(cfg.user_by_extension("102").map(|u| u.id), Some(2));
        assert_eq!(cfg.user_by_sip_username("u1").map(|u| u.id), Some(1));
        assert_eq!(cfg.conference_by_extension("800").map(|c| c.id), Some(10));
        assert!(cfg.user_by_extension("800").is_none());
        assert!(cfg.conference_by_extension("101").is_none());
    }

    #[test]
    fn serde_shapes_match_the_api() {
        let d: Destination =
            serde_json::from_str(r#"{"type":"conference","conference_id":7}"#).unwrap();
        assert_eq!(d, Destination::Conference { conference_id: 7 });
        let d: Destination =
            serde_json::from_str(r#"{"type":"extension","extension":"101"}"#).unwrap();
        assert_eq!(
            d,
            Destination::Extension {
                extension: "101".into()
            }
        );
        assert_eq!(
            serde_json::to_string(&Destination::NotConfigured).unwrap(),
            r#"{"type":"not_configured"}"#
        );
        assert_eq!(
            serde_json::to_string(&Destination::HangUp).unwrap(),
            r#"{"type":"hang_up"}"#
        );
        assert_eq!(
            serde_json::to_string(&AdminLeaves::KeepGoing).unwrap(),
            r#""keep_going""#
        );
        assert_eq!(
            serde_json::to_string(&TrunkTransport::Tls).unwrap(),
            r#""tls""#
        );
        assert!(serde_json::from_str::<Destination>(r#"{"type":"conference"}"#).is_err());
        assert!(
            serde_json::from_str::<Destination>(r#"{"type":"hang_up","extension":"1"}"#).is_err()
        );
        assert!(serde_json::from_str::<Destination>(
            r#"{"type":"extension","extension":"1","x":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Destination>(r#"{"type":"elsewhere"}"#).is_err());
        let all = [
            Destination::NotConfigured,
            Destination::HangUp,
            Destination::Extension {
                extension: "101".into(),
            },
            Destination::Conference { conference_id: 3 },
        ];
        for d in all {
            let back: Destination =
                serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
            assert_eq!(back, d);
        }
        // Older revisions without the newer fields still load.
        let c: Conference =
            serde_json::from_str(r#"{"id":1,"name":"A","extension":"800"}"#).unwrap();
        assert_eq!(c.when_admin_leaves, AdminLeaves::Wait);
        let cfg: Config = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn diff_lists_added_modified_deleted_by_entity_then_id() {
        let old = base();
        let mut new = base();
        new.users.retain(|u| u.id != 2);
        new.users.push(user(3, "103"));
        new.conferences[0].access_code = Some("1234".into());
        new.trunks.clear();
        let changes = diff(&old, &new);
        let got: Vec<(ChangeKind, EntityKind, i64)> =
            changes.iter().map(|c| (c.kind, c.entity, c.id)).collect();
        assert_eq!(
            got,
            vec![
                (ChangeKind::Deleted, EntityKind::User, 2),
                (ChangeKind::Added, EntityKind::User, 3),
                (ChangeKind::Modified, EntityKind::Conference, 10),
                (ChangeKind::Deleted, EntityKind::Trunk, 30),
            ]
        );
        assert_eq!(changes[0].summary, "User 2 (102)");
        assert!(diff(&old, &old).is_empty());
        let json = serde_json::to_value(&changes[2]).unwrap();
        assert_eq!(json["kind"], "modified");
        assert_eq!(json["entity"], "conference");
    }
}
