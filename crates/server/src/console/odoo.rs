//! "Connect Odoo": the values to type in Odoo's VoIP settings for this PBX, worked out from
//! how the administrator reached the console (a name browsers can resolve) and from what
//! the server listens on, with the traps spelt out (an Odoo served over https:// cannot
//! open ws://; a self-signed certificate must be accepted once in each browser).

use std::net::IpAddr;

use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};

use super::layout::{page, Section};
use super::session::Ctx;
use super::PageError;
use crate::state::Endpoints;

/// The host part of the request's Host header, when it is a plausible name or address
/// (it is echoed into the page, so anything else is ignored).
fn request_host(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(header::HOST)?.to_str().ok()?.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        format!("[{}]", rest.split(']').next()?)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h).to_owned()
    };
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    ok.then(|| host.to_ascii_lowercase())
}

/// What Odoo needs, worked out once per page view.
struct Values {
    domain: String,
    wss: Option<String>,
    ws: String,
    host_is_local: bool,
}

fn values(ep: &Endpoints, host: Option<String>) -> Values {
    let advertised = match ep.advertised {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    let host = host.unwrap_or(advertised);
    let host_is_local = host == "localhost" || host.starts_with("127.") || host == "[::1]";
    Values {
        domain: ep.domains.first().cloned().unwrap_or_else(|| host.clone()),
        wss: ep.https.map(|a| format!("wss://{host}:{}/ws", a.port())),
        ws: format!("ws://{host}:{}/ws", ep.http.port()),
        host_is_local,
    }
}

fn value_row(label: &str, value: &str, testid: &str, note: Markup) -> Markup {
    html! {
        tr {
            th scope="row" { (label) }
            td { code.copyable data-testid=(testid) { (value) } }
            td.muted { (note) }
        }
    }
}

/// `GET /connect-odoo`.
pub(crate) async fn show(ctx: Ctx, headers: HeaderMap) -> Result<Response, PageError> {
    let ep = ctx
        .state
        .endpoints
        .as_deref()
        .cloned()
        .ok_or_else(|| PageError::Internal("the server's addresses are unknown".into()))?;
    let v = values(&ep, request_host(&headers));
    let users = ctx.state.production.borrow().config.users.clone();
    let registrations = ctx.state.live.registrations();
    let browsers_of = |username: &str| {
        registrations
            .iter()
            .filter(|r| r.user == username)
            .filter(|r| {
                r.transport.eq_ignore_ascii_case("ws") || r.transport.eq_ignore_ascii_case("wss")
            })
            .count()
    };
    let websocket = v.wss.clone().unwrap_or_else(|| v.ws.clone());
    let body = html! {
        div.page-head { h1 { "Connect Odoo" } }
        section.card aria-labelledby="provider-title" {
            h2 #provider-title { "In Odoo's VoIP settings" }
            p.muted {
                "Odoo 17: " strong { "Settings → General Settings → Integrations → VoIP" } ". "
                "Odoo 18 and later: the same place, " strong { "Manage Providers → New" } ", named as you like (e.g. Confero)."
            }
            table.data.values {
                tbody {
                    (value_row("PBX Server IP", &v.domain, "odoo-domain", html! {
                        "The SIP domain of every user's address (called " em { "OnSIP Domain" } " in some versions). "
                        @if ep.domains.is_empty() {
                            "This PBX serves any domain; start it with " code { "--domain" } " to pin one."
                        } @else {
                            "This PBX serves only " (ep.domains.join(", ")) "."
                        }
                    }))
                    (value_row("WebSocket", &websocket, "odoo-websocket", html! {
                        @if v.wss.is_some() {
                            "SIP over secure WebSocket, on this server's HTTPS port."
                        } @else {
                            "SIP over plain WebSocket: only for an Odoo opened over http://."
                        }
                    }))
                    (value_row("VoIP Environment", "Production", "odoo-environment", html! {
                        "Odoo's demo mode never calls the PBX."
                    }))
                }
            }
            @if v.wss.is_none() {
                div.alert.alert-warn role="note" data-testid="odoo-no-tls" {
                    p {
                        strong { "Odoo over https:// needs wss://. " }
                        "Browsers refuse a plain ws:// connection from a secure page (every Odoo Online database and most installations). "
                        "Start Confero with " code { "--https-listen 0.0.0.0:8443" } " and your certificate ("
                        code { "--tls-cert" } ", " code { "--tls-key" } "), or without a certificate for a self-signed trial one."
                    }
                }
            } @else if ep.self_signed {
                div.alert.alert-warn role="note" data-testid="odoo-self-signed" {
                    p {
                        strong { "Trial certificate. " }
                        "This server made its own certificate, which browsers do not trust by themselves: in each browser that runs Odoo, open "
                        a href=(format!("https://{}/", v.wss.as_deref().unwrap_or_default().trim_start_matches("wss://").trim_end_matches("/ws"))) {
                            "this server over HTTPS"
                        }
                        " once and accept it. For production, give " code { "--tls-cert" } " and " code { "--tls-key" } "."
                    }
                }
            }
            @if v.host_is_local {
                p.muted data-testid="odoo-local-host" {
                    "You opened this console through a local address: the values above work only for a browser on this machine. "
                    "Open the console with the name or address your users' browsers reach, and this page shows theirs."
                }
            }
        }
        section.card aria-labelledby="users-title" {
            h2 #users-title { "For each user" }
            p.muted {
                "In Odoo: the user's " strong { "Preferences" } " tab (or " strong { "My Profile" } "), " strong { "VoIP" } " section. "
                "The secret is the user's SIP password, shown once when the user was created; "
                a href="/users" { "Users" } " gives a new one with " em { "New password" } "."
            }
            @if users.is_empty() {
                p.empty-state { "No users in production yet: add them under " a href="/users" { "Users" } ", then " strong { "Apply changes" } "." }
            } @else {
                table.data {
                    thead { tr {
                        th scope="col" { "User" }
                        th scope="col" { "Extension" }
                        th scope="col" { "VoIP username" }
                        th scope="col" { "VoIP secret" }
                        th scope="col" { "Odoo connected" }
                    } }
                    tbody {
                        @for u in &users {
                            @let n = browsers_of(&u.sip_username);
                            tr data-user=(u.sip_username) {
                                td.strong { (u.name) }
                                td.mono { (u.extension) }
                                td { code.copyable { (u.sip_username) } }
                                td.muted { "SIP password" }
                                td {
                                    @if n > 0 {
                                        span.badge.badge-added data-testid="odoo-connected" {
                                            @if n == 1 { "Yes" } @else { "Yes, " (n) " browsers" }
                                        }
                                    } @else {
                                        span.muted { "No" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section.card aria-labelledby="check-title" {
            h2 #check-title { "Check" }
            ol {
                li { "Reload Odoo after saving the settings: the phone icon in the top bar turns usable when the browser has registered, and the user shows as connected above." }
                li { "Dial a conference room's extension from the Odoo phone: the receptionist answers." }
                li { "Calls to a user ring their Odoo tab and their desk phones together; the first to answer takes the call." }
            }
        }
    };
    Ok(page(&ctx, Section::ConnectOdoo, "Connect Odoo", body)
        .await?
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(https: bool, domains: &[&str]) -> Endpoints {
        Endpoints {
            http: "0.0.0.0:8080".parse().unwrap(),
            https: https.then(|| "0.0.0.0:8443".parse().unwrap()),
            self_signed: false,
            advertised: "203.0.113.5".parse().unwrap(),
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    fn host(h: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, h.parse().unwrap());
        m
    }

    #[test]
    fn the_values_follow_the_name_the_console_was_reached_by() {
        let v = values(
            &endpoints(true, &[]),
            request_host(&host("PBX.example.com:8080")),
        );
        assert_eq!(v.domain, "pbx.example.com");
        assert_eq!(v.wss.as_deref(), Some("wss://pbx.example.com:8443/ws"));
        assert_eq!(v.ws, "ws://pbx.example.com:8080/ws");
        assert!(!v.host_is_local);

        let v = values(
            &endpoints(false, &["sip.example.com"]),
            request_host(&host("10.0.0.2")),
        );
        assert_eq!(v.domain, "sip.example.com", "--domain wins");
        assert_eq!(v.wss, None);
        assert_eq!(v.ws, "ws://10.0.0.2:8080/ws");

        let v = values(&endpoints(true, &[]), request_host(&host("[::1]:8080")));
        assert_eq!(v.wss.as_deref(), Some("wss://[::1]:8443/ws"));
        assert!(v.host_is_local);

        // No usable Host: the advertised address.
        let v = values(&endpoints(true, &[]), request_host(&host("evil\"<script>")));
        assert_eq!(v.domain, "203.0.113.5");
        let v = values(&endpoints(true, &[]), request_host(&HeaderMap::new()));
        assert_eq!(v.ws, "ws://203.0.113.5:8080/ws");
    }
}
