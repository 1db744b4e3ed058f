//! Trunks: the SIP provider accounts that connect the PBX to the phone network.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use confero_pbx::config::{Trunk, TrunkTransport};
use confero_store::{NewTrunk, TrunkPatch};
use maud::{html, Markup};

use super::layout::{
    csrf_field, form_error, page, row_action, select, store_error, yes_no, Errors, Field, Section,
};
use super::session::{Ctx, FormFields, Posted};
use super::{done, parse_id, PageError};

const LABELS: &[(&str, &str)] = &[
    ("name", "Name"),
    ("host", "Host"),
    ("port", "Port"),
    ("transport", "Transport"),
    ("username", "Username"),
    ("password", "Password"),
    ("register", "Register"),
    ("caller_id", "Caller ID"),
    ("dial_prefix", "Dial prefix"),
];
const FIELDS: &[&str] = &[
    "name",
    "host",
    "port",
    "transport",
    "username",
    "password",
    "register",
    "caller_id",
    "dial_prefix",
];

fn transport_value(t: TrunkTransport) -> &'static str {
    match t {
        TrunkTransport::Udp => "udp",
        TrunkTransport::Tcp => "tcp",
        TrunkTransport::Tls => "tls",
    }
}

/// `GET /trunks`.
pub(crate) async fn list(ctx: Ctx) -> Result<Response, PageError> {
    let trunks = ctx.state.store.list_trunks().await?;
    let body = html! {
        div.page-head {
            h1 { "Trunks" }
            a.btn.btn-green href="/trunks/new" { "Add a trunk" }
        }
        @if trunks.is_empty() {
            div.card.empty {
                p { "No trunks yet." }
                p { "A trunk is your SIP provider account: it brings calls to your incoming numbers and carries calls to phone numbers outside." }
            }
        } @else {
            div.card.table-wrap {
                table.data {
                    thead { tr {
                        th scope="col" { "Name" }
                        th scope="col" { "Provider" }
                        th scope="col" { "Username" }
                        th scope="col" { "Register" }
                        th scope="col" { "Caller ID" }
                        th scope="col" { "Dial prefix" }
                        th scope="col" { "Status" }
                        th scope="col" { span.visually-hidden { "Actions" } }
                    } }
                    tbody {
                        @for t in &trunks {
                            tr data-trunk-id=(t.id) {
                                td.strong { (t.name) }
                                td.mono { (t.host) ":" (t.port) " " span.badge { (transport_value(t.transport).to_uppercase()) } }
                                td.mono { @match &t.username { Some(u) => { (u) } None => { span.muted { "—" } } } }
                                td { @if t.register { "Yes" } @else { "No" } }
                                td.mono { @match &t.caller_id { Some(c) => { (c) } None => { span.muted { "—" } } } }
                                td.mono { @match &t.dial_prefix { Some(p) => { (p) } None => { span.muted { "default" } } } }
                                td { (status_cell(t.id, ctx.state.live.trunk(t.id).as_ref())) }
                                td.actions {
                                    a.btn.btn-small href=(format!("/trunks/{}/edit", t.id)) { "Edit" }
                                    (row_action(&ctx, &format!("/trunks/{}/delete", t.id), "Delete", "btn-small btn-danger-quiet",
                                        Some(&format!("Delete the trunk {}?", t.name))))
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&ctx, Section::Trunks, "Trunks", body)
        .await?
        .into_response())
}

/// The registration state in words, kept current by the script from `trunks` events.
fn status_cell(id: i64, live: Option<&crate::live::Trunk>) -> Markup {
    let (state, text) = match live {
        Some(t) => (t.registration, t.summary.as_str()),
        None => ("pending", "Not applied yet"),
    };
    html! {
        span.trunk-status data-trunk-status=(id) data-state=(state) { (text) }
    }
}

#[derive(Clone, Debug)]
struct TrunkForm {
    name: String,
    host: String,
    port: String,
    transport: String,
    username: String,
    password: String,
    register: String,
    caller_id: String,
    dial_prefix: String,
    has_password: bool,
}

impl Default for TrunkForm {
    fn default() -> Self {
        TrunkForm {
            name: String::new(),
            host: String::new(),
            port: "5060".into(),
            transport: "udp".into(),
            username: String::new(),
            password: String::new(),
            register: "yes".into(),
            caller_id: String::new(),
            dial_prefix: String::new(),
            has_password: false,
        }
    }
}

impl TrunkForm {
    fn from_trunk(t: &Trunk) -> Self {
        TrunkForm {
            name: t.name.clone(),
            host: t.host.clone(),
            port: t.port.to_string(),
            transport: transport_value(t.transport).into(),
            username: t.username.clone().unwrap_or_default(),
            password: String::new(),
            register: if t.register { "yes" } else { "no" }.into(),
            caller_id: t.caller_id.clone().unwrap_or_default(),
            dial_prefix: t.dial_prefix.clone().unwrap_or_default(),
            has_password: t.password.is_some(),
        }
    }

    fn from_posted(f: &FormFields) -> Self {
        TrunkForm {
            name: f.get("name").to_owned(),
            host: f.get("host").to_owned(),
            port: f.get("port").to_owned(),
            transport: f.get("transport").to_owned(),
            username: f.get("username").to_owned(),
            password: f.raw("password").to_owned(),
            register: f.get("register").to_owned(),
            caller_id: f.get("caller_id").to_owned(),
            dial_prefix: f.get("dial_prefix").to_owned(),
            has_password: false,
        }
    }

    fn to_new(&self) -> Result<NewTrunk, Errors> {
        let port = if self.port.is_empty() {
            5060
        } else {
            self.port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| Errors::on("port", "Port must be a number from 1 to 65535."))?
        };
        let transport = match self.transport.as_str() {
            "udp" | "" => TrunkTransport::Udp,
            "tcp" => TrunkTransport::Tcp,
            "tls" => TrunkTransport::Tls,
            _ => return Err(Errors::on("transport", "Choose UDP, TCP or TLS.")),
        };
        let register = match self.register.as_str() {
            "yes" => true,
            "no" | "" => false,
            _ => return Err(Errors::on("register", "Choose Yes or No.")),
        };
        let optional = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Ok(NewTrunk {
            name: self.name.clone(),
            host: self.host.clone(),
            port,
            transport,
            username: optional(&self.username),
            password: optional(&self.password),
            register,
            caller_id: optional(&self.caller_id),
            dial_prefix: optional(&self.dial_prefix),
            ..NewTrunk::default()
        })
    }
}

fn trunk_form(ctx: &Ctx, title: &str, action: &str, form: &TrunkForm, errors: &Errors) -> Markup {
    let transports: Vec<(String, String)> = [("udp", "UDP"), ("tcp", "TCP"), ("tls", "TLS")]
        .iter()
        .map(|(v, t)| ((*v).to_owned(), (*t).to_owned()))
        .collect();
    html! {
        div.page-head { h1 { (title) } }
        div.card.form-card {
            form method="post" action=(action) novalidate {
                (csrf_field(ctx))
                (form_error(errors.general(FIELDS)))
                (Field::text("name", "Name", &form.name).required().autofocus().autocomplete("off").render(errors))
                div.row {
                    (Field::text("host", "Host", &form.host).required().autocomplete("off")
                        .placeholder("sip.provider.example").hint("The provider's SIP server: a name or an IP address").render(errors))
                    (Field::text("port", "Port", &form.port).digits(5).render(errors))
                }
                (select("transport", "Transport", &form.transport, &transports, errors, None))
                (Field::text("username", "Username", &form.username).autocomplete("off").render(errors))
                (Field::text("password", "Password", &form.password).kind("password").autocomplete("new-password")
                    .hint(if form.has_password { "A password is set. Leave empty to keep it." } else { "As given by the provider." })
                    .render(errors))
                (select("register", "Register", &form.register, &yes_no(), errors,
                    Some("Yes when the provider needs the PBX to register to route your numbers to it.")))
                (Field::text("caller_id", "Caller ID", &form.caller_id).kind("tel").autocomplete("off")
                    .hint("The number presented on outgoing calls, e.g. +3225551234 (a user whose extension an incoming number rings presents that number instead)").render(errors))
                (Field::text("dial_prefix", "Dial prefix", &form.dial_prefix).digits(4)
                    .hint("Numbers dialled with this prefix go out through this trunk, prefix removed (e.g. 9). Leave empty for the default trunk, which takes every other outside number.").render(errors))
                div.form-actions {
                    a.btn.btn-quiet href="/trunks" { "Cancel" }
                    button.btn.btn-primary type="submit" { "Save" }
                }
            }
        }
    }
}

async fn form_page(
    ctx: &Ctx,
    title: &str,
    action: &str,
    form: &TrunkForm,
    errors: Errors,
) -> Result<Response, PageError> {
    let form = TrunkForm {
        password: String::new(),
        ..form.clone()
    };
    let body = trunk_form(ctx, title, action, &form, &errors);
    super::layout::form_page(ctx, Section::Trunks, title, body, &errors).await
}

/// `GET /trunks/new`.
pub(crate) async fn new_form(ctx: Ctx) -> Result<Response, PageError> {
    form_page(
        &ctx,
        "New trunk",
        "/trunks/new",
        &TrunkForm::default(),
        Errors::none(),
    )
    .await
}

/// `POST /trunks/new`.
pub(crate) async fn create(posted: Posted) -> Result<Response, PageError> {
    let Posted { ctx, form } = posted;
    let form = TrunkForm::from_posted(&form);
    let result = match form.to_new() {
        Ok(new) => ctx.state.store.create_trunk(new).await,
        Err(errors) => return form_page(&ctx, "New trunk", "/trunks/new", &form, errors).await,
    };
    match result {
        Ok(t) => {
            done(
                &ctx,
                "/trunks",
                format!(
                    "Trunk {} saved. Apply changes to put it in production.",
                    t.name
                ),
            )
            .await
        }
        Err(e) => {
            form_page(
                &ctx,
                "New trunk",
                "/trunks/new",
                &form,
                store_error(e, LABELS)?,
            )
            .await
        }
    }
}

/// `GET /trunks/{id}/edit`.
pub(crate) async fn edit_form(ctx: Ctx, Path(raw): Path<String>) -> Result<Response, PageError> {
    let id = parse_id(&raw)?;
    let trunk = ctx.state.store.get_trunk(id).await?;
    form_page(
        &ctx,
        "Edit trunk",
        &format!("/trunks/{id}/edit"),
        &TrunkForm::from_trunk(&trunk),
        Errors::none(),
    )
    .await
}

/// `POST /trunks/{id}/edit`.
pub(crate) async fn update(Path(raw): Path<String>, posted: Posted) -> Result<Response, PageError> {
    let Posted { ctx, form } = posted;
    let id = parse_id(&raw)?;
    let current = ctx.state.store.get_trunk(id).await?;
    let mut form = TrunkForm::from_posted(&form);
    form.has_password = current.password.is_some();
    let action = format!("/trunks/{id}/edit");
    let result = match form.to_new() {
        Ok(new) => {
            ctx.state
                .store
                .update_trunk(id, TrunkPatch::from(new))
                .await
        }
        Err(errors) => return form_page(&ctx, "Edit trunk", &action, &form, errors).await,
    };
    match result {
        Ok(t) => {
            done(
                &ctx,
                "/trunks",
                format!(
                    "Trunk {} saved. Apply changes to put it in production.",
                    t.name
                ),
            )
            .await
        }
        Err(e) => form_page(&ctx, "Edit trunk", &action, &form, store_error(e, LABELS)?).await,
    }
}

/// `POST /trunks/{id}/delete`.
pub(crate) async fn delete(Path(raw): Path<String>, posted: Posted) -> Result<Response, PageError> {
    let ctx = posted.ctx;
    let id = parse_id(&raw)?;
    let trunk = ctx.state.store.get_trunk(id).await?;
    ctx.state.store.delete_trunk(id).await?;
    done(
        &ctx,
        "/trunks",
        format!(
            "Trunk {} deleted. Apply changes to remove it from production.",
            trunk.name
        ),
    )
    .await
}
