//! The frame around every console page (menu, *Apply changes*, flash message) and the
//! form pieces the pages share, so that every form shows its errors the same way.

use maud::{html, Markup, DOCTYPE};

use super::session::{Ctx, CSRF_FIELD};
use super::PageError;

/// The sections of the left-hand menu.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Section {
    Conferences,
    IncomingNumbers,
    Users,
    Trunks,
    ConnectOdoo,
    Changes,
    Settings,
}

const MENU: &[(Section, &str, &str)] = &[
    (Section::Conferences, "/conferences", "Conferences"),
    (
        Section::IncomingNumbers,
        "/incoming-numbers",
        "Incoming numbers",
    ),
    (Section::Users, "/users", "Users"),
    (Section::Trunks, "/trunks", "Trunks"),
    (Section::ConnectOdoo, "/connect-odoo", "Connect Odoo"),
    (Section::Settings, "/settings", "Settings"),
];

/// The menu icons: small inline SVG paths (24×24), so the console needs no icon font.
fn icon(section: Section) -> Markup {
    let path = match section {
        Section::Conferences => "M16 11a4 4 0 1 0-4-4 4 4 0 0 0 4 4Zm-8 0a3 3 0 1 0-3-3 3 3 0 0 0 3 3Zm0 2c-2.7 0-6 1.3-6 3.5V19h6v-2.5c0-1.1.5-2.1 1.4-2.9A9.5 9.5 0 0 0 8 13Zm8 0c-3 0-7 1.5-7 4v2h14v-2c0-2.5-4-4-7-4Z",
        Section::IncomingNumbers => "M6.6 10.8a15.1 15.1 0 0 0 6.6 6.6l2.2-2.2a1 1 0 0 1 1-.25 11.4 11.4 0 0 0 3.6.57 1 1 0 0 1 1 1V20a1 1 0 0 1-1 1A17 17 0 0 1 3 4a1 1 0 0 1 1-1h3.5a1 1 0 0 1 1 1c0 1.25.2 2.45.57 3.57a1 1 0 0 1-.25 1Z",
        Section::Users => "M12 12a5 5 0 1 0-5-5 5 5 0 0 0 5 5Zm0 2c-3.3 0-10 1.7-10 5v3h20v-3c0-3.3-6.7-5-10-5Z",
        Section::Trunks => "M4 5h16v4H4Zm0 10h16v4H4Zm3-8.5h2V8H7Zm0 10h2V18H7ZM11 9v6h2V9Z",
        Section::ConnectOdoo => "M10.6 13.4a1 1 0 0 1 0-1.4l3.5-3.5a3 3 0 0 1 4.2 4.2l-2 2-1.4-1.4 2-2a1 1 0 0 0-1.4-1.4L12 13.4a1 1 0 0 1-1.4 0ZM7.8 11.6l1.4 1.4-2 2a1 1 0 0 0 1.4 1.4l3.5-3.5 1.4 1.4-3.5 3.5a3 3 0 0 1-4.2-4.2Z",
        Section::Changes => "M5 4h14v2H5Zm0 7h14v2H5Zm0 7h9v2H5Z",
        Section::Settings => "M19.4 13a7.5 7.5 0 0 0 0-2l2.1-1.6-2-3.5-2.5 1a7.6 7.6 0 0 0-1.7-1L15 3h-4l-.4 2.9a7.6 7.6 0 0 0-1.7 1l-2.5-1-2 3.5L6.6 11a7.5 7.5 0 0 0 0 2l-2.1 1.6 2 3.5 2.5-1a7.6 7.6 0 0 0 1.7 1L11 21h4l.4-2.9a7.6 7.6 0 0 0 1.7-1l2.5 1 2-3.5ZM13 15.5A3.5 3.5 0 1 1 16.5 12 3.5 3.5 0 0 1 13 15.5Z",
    };
    html! {
        svg.icon viewBox="0 0 24 24" aria-hidden="true" { path d=(path) {} }
    }
}

/// A whole page: frame, menu, top bar with *Apply changes*, the flash message, `body`.
pub(crate) async fn page(
    ctx: &Ctx,
    section: Section,
    title: &str,
    body: Markup,
) -> Result<Markup, PageError> {
    let pending = ctx.state.store.pending_changes().await?.len();
    let flash = ctx.state.store.take_flash(&ctx.cookie).await?;
    let guessing = code_guessing_alerts(ctx);
    Ok(document(
        title,
        Some(&ctx.session.csrf_token),
        html! {
            a.skip href="#main" { "Skip to content" }
            div.shell {
                aside.sidebar {
                    a.brand href="/conferences" {
                        span.logo aria-hidden="true" { "C" }
                        span { "Confero" }
                    }
                    nav aria-label="Main" {
                        ul {
                            @for (s, href, label) in MENU {
                                li {
                                    a href=(href) aria-current=[(section == *s).then_some("page")] {
                                        (icon(*s)) span { (label) }
                                    }
                                }
                            }
                        }
                    }
                }
                div.content {
                    header.topbar {
                        div.live-status #live-status role="status" aria-live="polite" hidden {}
                        div.topbar-actions {
                            a.pending-link href="/changes" data-testid="pending-link"
                                aria-current=[(section == Section::Changes).then_some("page")] {
                                span.long {
                                    @if pending == 0 { "No pending changes" }
                                    @else if pending == 1 { "1 pending change" }
                                    @else { (pending) " pending changes" }
                                }
                                " "
                                span.short { "Changes" }
                            }
                            form method="post" action="/changes/apply" {
                                (csrf_field(ctx))
                                button.btn.btn-apply type="submit" disabled[pending == 0]
                                    title=(if pending == 0 { "Nothing to apply" } else { "Put the saved changes in production" }) {
                                    "Apply changes"
                                    span.count data-testid="pending-count" aria-label=(format!("{pending} pending")) { (pending) }
                                }
                            }
                            div.account {
                                span.who { (ctx.session.username) }
                                form method="post" action="/logout" {
                                    (csrf_field(ctx))
                                    button.btn.btn-quiet type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                    main #main tabindex="-1" {
                        @for alert in &guessing {
                            div.alert role="alert" data-testid="code-guessing" { (alert) }
                        }
                        @if let Some(message) = flash {
                            div.flash role="status" data-testid="flash" { (message) }
                        }
                        (body)
                    }
                }
            }
            (confirm_dialog())
        },
    ))
}

/// A page holding a form: 200, or 400 when it comes back with errors (so scripts and
/// tests can tell a refused save from a fresh form).
pub(crate) async fn form_page(
    ctx: &Ctx,
    section: Section,
    title: &str,
    body: Markup,
    errors: &Errors,
) -> Result<axum::response::Response, PageError> {
    use axum::response::IntoResponse;
    let status = if errors.is_empty() {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::BAD_REQUEST
    };
    Ok((status, page(ctx, section, title, body).await?).into_response())
}

/// The bare HTML document: head, assets, and `body` inside `<body>`.
/// One sentence per room whose access code was being guessed in the last hour.
fn code_guessing_alerts(ctx: &Ctx) -> Vec<String> {
    let alerts = ctx.state.live.code_guessing();
    if alerts.is_empty() {
        return Vec::new();
    }
    let production = ctx.state.production.borrow().clone();
    alerts
        .iter()
        .filter_map(|a| {
            let n = a.failures_last_hour;
            let room = production.config.conference(a.conference_id)?;
            Some(format!(
                "Someone is guessing the access code of {} ({}): {n} wrong codes in the last \
                 hour. Callers who keep failing are held back; consider a longer code.",
                room.name, room.extension
            ))
        })
        .collect()
}

pub(crate) fn document(title: &str, csrf: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(token) = csrf { meta name="csrf-token" content=(token); }
                title { (title) " · Confero" }
                link rel="stylesheet" href=(super::assets::CSS_PATH);
                link rel="icon" href="data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'%3E%3Crect width='32' height='32' rx='8' fill='%23137a4b'/%3E%3Ctext x='16' y='23' font-size='19' text-anchor='middle' fill='white' font-family='sans-serif'%3EC%3C/text%3E%3C/svg%3E";
                script src=(super::assets::JS_PATH) defer {}
            }
            body { (body) }
        }
    }
}

/// The confirmation dialog that scripts open for buttons marked `data-confirm`.
fn confirm_dialog() -> Markup {
    html! {
        dialog #confirm-dialog aria-labelledby="confirm-title" {
            form method="dialog" {
                h2 #confirm-title { "Are you sure?" }
                p #confirm-text {}
                div.dialog-actions {
                    button.btn.btn-quiet value="cancel" { "Cancel" }
                    button.btn.btn-danger #confirm-ok value="ok" { "Delete" }
                }
            }
        }
    }
}

/// The hidden CSRF field every console form carries.
pub(crate) fn csrf_field(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(ctx.session.csrf_token); }
}

/// What is wrong with a submitted form: messages beside their fields, and messages about
/// no field (shown at the top).
#[derive(Clone, Debug, Default)]
pub(crate) struct Errors {
    /// `(field, message)`; an empty field name means the form as a whole.
    items: Vec<(String, String)>,
}

impl Errors {
    pub(crate) fn none() -> Self {
        Errors::default()
    }

    pub(crate) fn on(field: impl Into<String>, message: impl Into<String>) -> Self {
        Errors {
            items: vec![(field.into(), message.into())],
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Every message, as one sentence list (for a flash after a refused action).
    pub(crate) fn text(&self) -> String {
        self.items
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub(crate) fn has(&self, field: &str) -> bool {
        self.items.iter().any(|(f, _)| f == field)
    }

    /// The message for `field`, if there is one.
    fn for_field(&self, field: &str) -> Option<&str> {
        self.items
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, m)| m.as_str())
    }

    /// Errors about no field of this form, shown at its top.
    pub(crate) fn general(&self, fields: &[&str]) -> Option<String> {
        let text: Vec<&str> = self
            .items
            .iter()
            .filter(|(f, _)| !fields.contains(&f.as_str()))
            .map(|(_, m)| m.as_str())
            .collect();
        (!text.is_empty()).then(|| text.join(" "))
    }
}

impl FromIterator<(String, String)> for Errors {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Errors {
            items: iter.into_iter().collect(),
        }
    }
}

/// One labelled input with its hint and error.
pub(crate) struct Field<'a> {
    pub(crate) name: &'a str,
    pub(crate) label: &'a str,
    pub(crate) value: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) hint: Option<&'a str>,
    pub(crate) required: bool,
    pub(crate) attrs: FieldAttrs<'a>,
}

/// Extra input attributes that help browsers and phones (numeric keypads).
#[derive(Default)]
pub(crate) struct FieldAttrs<'a> {
    pub(crate) inputmode: Option<&'a str>,
    pub(crate) autocomplete: Option<&'a str>,
    pub(crate) maxlength: Option<usize>,
    pub(crate) placeholder: Option<&'a str>,
    pub(crate) autofocus: bool,
}

impl<'a> Field<'a> {
    pub(crate) fn text(name: &'a str, label: &'a str, value: &'a str) -> Self {
        Field {
            name,
            label,
            value,
            kind: "text",
            hint: None,
            required: false,
            attrs: FieldAttrs::default(),
        }
    }

    pub(crate) fn kind(mut self, kind: &'a str) -> Self {
        self.kind = kind;
        self
    }

    pub(crate) fn hint(mut self, hint: &'a str) -> Self {
        self.hint = Some(hint);
        self
    }

    pub(crate) fn required(mut self) -> Self {
        self.required = true;
        self
    }

    pub(crate) fn digits(mut self, max: usize) -> Self {
        self.attrs.inputmode = Some("numeric");
        self.attrs.maxlength = Some(max);
        self.attrs.autocomplete = Some("off");
        self
    }

    pub(crate) fn autocomplete(mut self, value: &'a str) -> Self {
        self.attrs.autocomplete = Some(value);
        self
    }

    pub(crate) fn placeholder(mut self, value: &'a str) -> Self {
        self.attrs.placeholder = Some(value);
        self
    }

    pub(crate) fn autofocus(mut self) -> Self {
        self.attrs.autofocus = true;
        self
    }

    pub(crate) fn render(&self, errors: &Errors) -> Markup {
        let id = format!("f-{}", self.name);
        let hint_id = format!("{id}-hint");
        let error_id = format!("{id}-error");
        let error = errors.for_field(self.name);
        let described = match (self.hint.is_some(), error.is_some()) {
            (true, true) => Some(format!("{hint_id} {error_id}")),
            (true, false) => Some(hint_id.clone()),
            (false, true) => Some(error_id.clone()),
            (false, false) => None,
        };
        html! {
            div.field.has-error[error.is_some()] {
                label for=(id) { (self.label) @if !self.required { span.optional { " (optional)" } } }
                input id=(id) name=(self.name) type=(self.kind) value=(self.value)
                    required[self.required]
                    aria-invalid=[error.map(|_| "true")]
                    aria-describedby=[described]
                    inputmode=[self.attrs.inputmode]
                    autocomplete=[self.attrs.autocomplete]
                    maxlength=[self.attrs.maxlength]
                    placeholder=[self.attrs.placeholder]
                    autofocus[self.attrs.autofocus];
                @if let Some(hint) = self.hint { p.hint id=(hint_id) { (hint) } }
                (field_error(self.name, error))
            }
        }
    }
}

/// The error line under a field; empty (but present for scripts) when there is none.
pub(crate) fn field_error(name: &str, error: Option<&str>) -> Markup {
    html! {
        @if let Some(message) = error {
            p.error id=(format!("f-{name}-error")) data-error-for=(name) { (message) }
        }
    }
}

/// A labelled `<select>` with its error. `options` are `(value, text)`.
pub(crate) fn select(
    name: &str,
    label: &str,
    selected: &str,
    options: &[(String, String)],
    errors: &Errors,
    hint: Option<&str>,
) -> Markup {
    let id = format!("f-{name}");
    let error = errors.for_field(name);
    html! {
        div.field.has-error[error.is_some()] data-field=(name) {
            label for=(id) { (label) }
            select id=(id) name=(name) aria-invalid=[error.map(|_| "true")]
                aria-describedby=[error.map(|_| format!("{id}-error"))] {
                @for (value, text) in options {
                    option value=(value) selected[value == selected] { (text) }
                }
            }
            @if let Some(hint) = hint { p.hint { (hint) } }
            (field_error(name, error))
        }
    }
}

/// `Yes`/`No` options for boolean selects.
pub(crate) fn yes_no() -> Vec<(String, String)> {
    vec![("yes".into(), "Yes".into()), ("no".into(), "No".into())]
}

/// An error not tied to one field, at the top of a form.
pub(crate) fn form_error(message: Option<String>) -> Markup {
    html! {
        @if let Some(m) = message {
            div.alert role="alert" { (m) }
        }
    }
}

/// A POST button in a table row, with an optional confirmation question.
pub(crate) fn row_action(
    ctx: &Ctx,
    action: &str,
    label: &str,
    class: &str,
    confirm: Option<&str>,
) -> Markup {
    html! {
        form.inline method="post" action=(action) data-confirm=[confirm] {
            (csrf_field(ctx))
            button.btn.(class) type="submit" { (label) }
        }
    }
}

/// Seconds since the Unix epoch as "2026-11-30 10:21 UTC".
pub(crate) fn utc(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's well-known method.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        (secs % 3600) / 60
    )
}

/// Turns a rule broken in the store into a message beside the field, in the form's own
/// words: `labels` maps the API's field names (`access_code`) to the form's labels.
pub(crate) fn store_error(
    e: confero_store::StoreError,
    labels: &[(&str, &str)],
) -> Result<Errors, PageError> {
    use confero_store::StoreError;
    match e {
        StoreError::Validation(f) | StoreError::Conflict(f) => Ok(field_errors(vec![f], labels)),
        StoreError::InvalidDraft(errors) => Ok(errors
            .iter()
            .map(|f| (String::new(), humanize(&f.message, labels)))
            .collect()),
        other => Err(PageError::from(other)),
    }
}

/// Rule violations as form errors, each beside its field.
pub(crate) fn field_errors(
    problems: Vec<confero_store::FieldError>,
    labels: &[(&str, &str)],
) -> Errors {
    problems
        .into_iter()
        .map(|f| {
            // `destination.extension` is the form's `extension` field.
            let field = f.field.rsplit('.').next().unwrap_or(&f.field).to_owned();
            (field, humanize(&f.message, labels))
        })
        .collect()
}

/// `access_code must be 1 to 12 digits` → `Access code must be 1 to 12 digits.`
pub(crate) fn humanize(message: &str, labels: &[(&str, &str)]) -> String {
    let mut text = message.to_owned();
    // Longest names first, so `admin_extension` is not half-replaced by `extension`.
    let mut labels = labels.to_vec();
    labels.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    for (name, label) in labels {
        if name.contains('_') {
            text = text.replace(name, &label.to_lowercase());
        }
    }
    let mut chars = text.chars();
    let mut out: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    };
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_796_034_114), "2026-11-30 10:21 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn field_names_become_labels() {
        let labels = [
            ("access_code", "Access code"),
            ("admin_extension", "Administrator extension"),
            ("extension", "Internal extension"),
        ];
        assert_eq!(
            humanize("access_code must be 4 to 12 digits", &labels),
            "Access code must be 4 to 12 digits."
        );
        assert_eq!(
            humanize("admin_extension 555 is not a user's extension", &labels),
            "Administrator extension 555 is not a user's extension."
        );
        assert_eq!(
            humanize("extension 101 is already used by user \"Alice\"", &labels),
            "Extension 101 is already used by user \"Alice\"."
        );
    }
}
