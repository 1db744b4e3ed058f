//! What a client may send to create or change an entity.
//!
//! These types are the API's request bodies as well (they derive `Deserialize`
//! with `deny_unknown_fields`, so a misspelt field is an error rather than a
//! silently ignored value). Each accepts an `id` that is ignored, so that an
//! object read with GET can be sent back unchanged.
//!
//! `New*` types are full descriptions (POST, and PUT through `From<New*> for *Patch`);
//! `*Patch` types change only the fields present (PATCH). For a nullable field a
//! patch distinguishes "absent" (`None`: keep) from `null` (`Some(None)`: clear).

use confero_pbx::config::{AdminLeaves, Destination, TrunkTransport};
use serde::{Deserialize, Deserializer};

/// Deserializes a present field (even `null`) as `Some(..)`, so that with
/// `#[serde(default)]` an absent field stays `None`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Ignored: see the module documentation.
    #[serde(default)]
    pub id: Option<i64>,
    pub name: String,
    pub extension: String,
    /// Defaults to the extension, which is what most phones are provisioned with.
    #[serde(default)]
    pub sip_username: Option<String>,
    /// Generated (16 letters and digits) when absent, and returned once.
    #[serde(default)]
    pub sip_password: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub extension: Option<String>,
    #[serde(default)]
    pub sip_username: Option<String>,
    #[serde(default)]
    pub sip_password: Option<String>,
}

/// PUT semantics: every field is replaced, except that an absent `sip_username`
/// or `sip_password` keeps the current one (the password is write-only, so a
/// client that read the user cannot send it back).
impl From<NewUser> for UserPatch {
    fn from(n: NewUser) -> Self {
        UserPatch {
            id: n.id,
            name: Some(n.name),
            extension: Some(n.extension),
            sip_username: n.sip_username,
            sip_password: n.sip_password,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewConference {
    #[serde(default)]
    pub id: Option<i64>,
    pub name: String,
    pub extension: String,
    #[serde(default)]
    pub access_code: Option<String>,
    #[serde(default)]
    pub admin_extension: Option<String>,
    #[serde(default)]
    pub wait_for_admin: bool,
    #[serde(default)]
    pub when_admin_leaves: AdminLeaves,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConferencePatch {
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub extension: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub access_code: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub admin_extension: Option<Option<String>>,
    #[serde(default)]
    pub wait_for_admin: Option<bool>,
    #[serde(default)]
    pub when_admin_leaves: Option<AdminLeaves>,
}

impl From<NewConference> for ConferencePatch {
    fn from(n: NewConference) -> Self {
        ConferencePatch {
            id: n.id,
            name: Some(n.name),
            extension: Some(n.extension),
            access_code: Some(n.access_code),
            admin_extension: Some(n.admin_extension),
            wait_for_admin: Some(n.wait_for_admin),
            when_admin_leaves: Some(n.when_admin_leaves),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewIncomingNumber {
    #[serde(default)]
    pub id: Option<i64>,
    pub number: String,
    /// Defaults to `not_configured`: numbers usually arrive from the provider
    /// before anyone decides where they go.
    #[serde(default)]
    pub destination: Destination,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncomingNumberPatch {
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(default)]
    pub number: Option<String>,
    #[serde(default)]
    pub destination: Option<Destination>,
}

impl From<NewIncomingNumber> for IncomingNumberPatch {
    fn from(n: NewIncomingNumber) -> Self {
        IncomingNumberPatch {
            id: n.id,
            number: Some(n.number),
            destination: Some(n.destination),
        }
    }
}

fn default_sip_port() -> u16 {
    5060
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTrunk {
    #[serde(default)]
    pub id: Option<i64>,
    /// Ignored: the API shows it (the password itself is write-only) and a
    /// client may send back what it read.
    #[serde(default)]
    pub has_password: Option<bool>,
    pub name: String,
    pub host: String,
    #[serde(default = "default_sip_port")]
    pub port: u16,
    #[serde(default)]
    pub transport: TrunkTransport,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub register: bool,
    #[serde(default)]
    pub caller_id: Option<String>,
    #[serde(default)]
    pub dial_prefix: Option<String>,
}

impl Default for NewTrunk {
    fn default() -> Self {
        NewTrunk {
            id: None,
            has_password: None,
            name: String::new(),
            host: String::new(),
            port: default_sip_port(),
            transport: TrunkTransport::default(),
            username: None,
            password: None,
            register: false,
            caller_id: None,
            dial_prefix: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkPatch {
    #[serde(default)]
    pub id: Option<i64>,
    /// Ignored: the API shows it (the password itself is write-only) and a
    /// client may send back what it read.
    #[serde(default)]
    pub has_password: Option<bool>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub transport: Option<TrunkTransport>,
    #[serde(default, deserialize_with = "present")]
    pub username: Option<Option<String>>,
    /// Like a user's SIP password, a trunk password is write-only: PUT without
    /// it keeps the current one; PATCH with `null` clears it.
    #[serde(default, deserialize_with = "present")]
    pub password: Option<Option<String>>,
    #[serde(default)]
    pub register: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub caller_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub dial_prefix: Option<Option<String>>,
}

impl From<NewTrunk> for TrunkPatch {
    fn from(n: NewTrunk) -> Self {
        TrunkPatch {
            id: n.id,
            has_password: None,
            name: Some(n.name),
            host: Some(n.host),
            port: Some(n.port),
            transport: Some(n.transport),
            username: Some(n.username),
            // Write-only: absent keeps the current password.
            password: n.password.map(Some),
            register: Some(n.register),
            caller_id: Some(n.caller_id),
            dial_prefix: Some(n.dial_prefix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_tells_absent_from_null() {
        let p: ConferencePatch = serde_json::from_str(r#"{"access_code":null}"#).unwrap();
        assert_eq!(p.access_code, Some(None));
        assert_eq!(p.admin_extension, None);
        let p: ConferencePatch = serde_json::from_str(r#"{"access_code":"12"}"#).unwrap();
        assert_eq!(p.access_code, Some(Some("12".into())));
    }

    #[test]
    fn unknown_fields_are_refused_but_id_is_accepted() {
        assert!(serde_json::from_str::<NewUser>(
            r#"{"name":"a","extension":"10","extention":"1"}"#
        )
        .is_err());
        let u: NewUser = serde_json::from_str(r#"{"id":4,"name":"a","extension":"10"}"#).unwrap();
        assert_eq!(u.id, Some(4));
        let t: NewTrunk = serde_json::from_str(r#"{"name":"t","host":"h"}"#).unwrap();
        assert_eq!(t.port, 5060);
    }
}
