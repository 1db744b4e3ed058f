//! The registrar: where a REGISTER goes.
//!
//! - [`auth`]: who a request comes from (digest with replay protection, limits on password
//!   guessing), for REGISTER and for every other request that needs a user;
//! - `register`: what an authenticated REGISTER changes, and its answer (RFC 3261 §10.3);
//! - `bindings`: the location table itself, with expiry, restore after restart and the
//!   flows devices registered over.
//!
//! The engine routes a REGISTER here after its domain check: `auth` first (a challenge or
//! a refusal ends it), then `Registrar::register`.

pub mod auth;
mod bindings;
mod register;

pub use bindings::{
    Binding, BindingChange, ContactRequest, RegisterError, RegisterUpdate, Registrar,
    DEFAULT_EXPIRES, MAX_EXPIRES, MIN_EXPIRES,
};
