//! Live state the engine publishes for the API: registrations, calls, counters.
//!
//! The engine task writes a fresh copy after every batch that changed something; HTTP
//! handlers read it without ever touching the engine, so a slow client cannot stall calls.

use std::fmt::Write as _;
use std::sync::RwLock;

use confero_pbx::engine::Engine;
use serde_json::{json, Value};

use crate::api::LiveView;

#[derive(Default)]
struct Published {
    registrations: Vec<Value>,
    calls: Vec<Value>,
    transactions: usize,
    calls_in_memory: usize,
}

/// Shared between the engine task (writer) and the API (readers).
#[derive(Default)]
pub(crate) struct LiveState {
    inner: RwLock<Published>,
}

impl LiveState {
    pub(crate) fn update(&self, engine: &Engine, now_unix: u64) {
        let registrations = engine
            .registrar()
            .all()
            .map(|b| {
                json!({
                    "user": b.aor,
                    "contact": b.contact,
                    "transport": b.peer.transport.via_name(),
                    "source": b.peer.addr.to_string(),
                    "expires_in": b.expires_unix.saturating_sub(now_unix),
                    "user_agent": b.user_agent,
                })
            })
            .collect();
        let calls = engine
            .calls()
            .into_iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "caller": c.caller,
                    "callee": c.callee,
                    "state": c.state,
                    "started_at": c.started_unix,
                    "answered_at": c.answered_unix,
                })
            })
            .collect();
        let mut p = self.inner.write().unwrap_or_else(|e| e.into_inner());
        *p = Published {
            registrations,
            calls,
            transactions: engine.transaction_count(),
            calls_in_memory: engine.call_count(),
        };
    }
}

impl LiveView for LiveState {
    fn registrations(&self) -> Vec<Value> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .registrations
            .clone()
    }

    fn calls(&self) -> Vec<Value> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .calls
            .clone()
    }

    fn metrics(&self) -> String {
        let p = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE confero_registrations gauge");
        let _ = writeln!(out, "confero_registrations {}", p.registrations.len());
        let _ = writeln!(out, "# TYPE confero_calls gauge");
        let _ = writeln!(out, "confero_calls {}", p.calls.len());
        let _ = writeln!(out, "# TYPE confero_sip_transactions gauge");
        let _ = writeln!(out, "confero_sip_transactions {}", p.transactions);
        let _ = writeln!(out, "# TYPE confero_calls_in_memory gauge");
        let _ = writeln!(out, "confero_calls_in_memory {}", p.calls_in_memory);
        out
    }
}
