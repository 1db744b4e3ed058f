//! Feeds arbitrary bodies to the REST API's JSON reader, for every kind of body it takes.
//! Nothing may panic; a refusal must name what was wrong.
#![no_main]

use confero_server::api::parse_body_for_fuzzing as parse;
use confero_store::{
    ConferencePatch, IncomingNumberPatch, NewConference, NewIncomingNumber, NewTrunk, NewUser,
    TrunkPatch, UserPatch,
};
use libfuzzer_sys::fuzz_target;

fn check<T: serde::de::DeserializeOwned>(data: &[u8]) {
    if let Err(why) = parse::<T>(data) {
        assert!(!why.is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    check::<NewUser>(data);
    check::<UserPatch>(data);
    check::<NewConference>(data);
    check::<ConferencePatch>(data);
    check::<NewIncomingNumber>(data);
    check::<IncomingNumberPatch>(data);
    check::<NewTrunk>(data);
    check::<TrunkPatch>(data);
    check::<serde_json::Value>(data);
});
