//! Incoming numbers: the public numbers (DIDs) the trunks deliver, and where each goes.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use confero_pbx::config::{Conference, Destination, IncomingNumber, User};
use confero_store::{IncomingNumberPatch, NewIncomingNumber};
use maud::{html, Markup};

use super::layout::{
    csrf_field, form_error, form_page, page, row_action, select, store_error, Errors, Field,
    Section,
};
use super::session::{Ctx, FormFields, Posted};
use super::{done, parse_id, PageError};

const LABELS: &[(&str, &str)] = &[
    ("number", "Number"),
    ("destination", "Destination type for voice call"),
    ("extension", "Extension"),
    ("conference_id", "Conference"),
];
const FIELDS: &[&str] = &["number", "type", "extension", "conference_id"];

fn destination_text(d: &Destination, rooms: &[Conference], users: &[User]) -> Markup {
    match d {
        Destination::NotConfigured => html! { span.muted { "Not configured" } },
        Destination::HangUp => html! { "Hang up" },
        Destination::Extension { extension } => {
            let who = users
                .iter()
                .find(|u| &u.extension == extension)
                .map(|u| u.name.clone())
                .or_else(|| {
                    rooms
                        .iter()
                        .find(|c| &c.extension == extension)
                        .map(|c| c.name.clone())
                });
            html! { "Extension " span.mono { (extension) } @if let Some(w) = who { " — " (w) } }
        }
        Destination::Conference { conference_id } => {
            match rooms.iter().find(|c| c.id == *conference_id) {
                Some(c) => {
                    html! { "Conference " a href=(format!("/conferences/{}", c.id)) { (c.name) } " " span.muted.mono { "(" (c.extension) ")" } }
                }
                None => html! { "Conference " (conference_id) },
            }
        }
    }
}

/// `GET /incoming-numbers`.
pub(crate) async fn list(ctx: Ctx) -> Result<Response, PageError> {
    let numbers = ctx.state.store.list_incoming_numbers().await?;
    let rooms = ctx.state.store.list_conferences().await?;
    let users = ctx.state.store.list_users().await?;
    let body = html! {
        div.page-head {
            h1 { "Incoming numbers" }
            a.btn.btn-green href="/incoming-numbers/new" { "Add a number" }
        }
        @if numbers.is_empty() {
            div.card.empty {
                p { "No incoming numbers yet." }
                p { "Add the phone numbers your provider routes to this PBX, then choose where calls to each go: a user, a conference room, or nowhere." }
            }
        } @else {
            div.card.table-wrap {
                table.data {
                    thead { tr {
                        th scope="col" { "Number" }
                        th scope="col" { "Destination" }
                        th scope="col" { span.visually-hidden { "Actions" } }
                    } }
                    tbody {
                        @for n in &numbers {
                            tr data-number-id=(n.id) {
                                td.mono.strong { (n.number) }
                                td { (destination_text(&n.destination, &rooms, &users)) }
                                td.actions {
                                    (row_action(&ctx, &format!("/incoming-numbers/{}/delete", n.id), "Delete", "btn-small btn-danger-quiet",
                                        Some(&format!("Delete the incoming number {}?", n.number))))
                                    a.btn.btn-small href=(format!("/incoming-numbers/{}/edit", n.id)) { "Edit" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(
        page(&ctx, Section::IncomingNumbers, "Incoming numbers", body)
            .await?
            .into_response(),
    )
}

#[derive(Clone, Debug, Default)]
struct NumberForm {
    number: String,
    kind: String,
    extension: String,
    conference_id: String,
}

impl NumberForm {
    fn from_number(n: &IncomingNumber) -> Self {
        let (kind, extension, conference_id) = match &n.destination {
            Destination::NotConfigured => ("not_configured", String::new(), String::new()),
            Destination::HangUp => ("hang_up", String::new(), String::new()),
            Destination::Extension { extension } => ("extension", extension.clone(), String::new()),
            Destination::Conference { conference_id } => {
                ("conference", String::new(), conference_id.to_string())
            }
        };
        NumberForm {
            number: n.number.clone(),
            kind: kind.into(),
            extension,
            conference_id,
        }
    }

    fn from_posted(f: &FormFields) -> Self {
        NumberForm {
            number: f
                .get("number")
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect(),
            kind: f.get("type").to_owned(),
            extension: f.get("extension").to_owned(),
            conference_id: f.get("conference_id").to_owned(),
        }
    }

    fn to_new(&self) -> Result<NewIncomingNumber, Errors> {
        let destination = match self.kind.as_str() {
            "not_configured" | "" => Destination::NotConfigured,
            "hang_up" => Destination::HangUp,
            "extension" if self.extension.is_empty() => {
                return Err(Errors::on("extension", "Choose the extension to ring."))
            }
            "extension" => Destination::Extension {
                extension: self.extension.clone(),
            },
            "conference" => match self.conference_id.parse::<i64>() {
                Ok(conference_id) => Destination::Conference { conference_id },
                Err(_) => return Err(Errors::on("conference_id", "Choose a conference.")),
            },
            _ => return Err(Errors::on("type", "Choose a destination type.")),
        };
        Ok(NewIncomingNumber {
            id: None,
            number: self.number.clone(),
            destination,
        })
    }
}

fn number_form(
    ctx: &Ctx,
    title: &str,
    action: &str,
    form: &NumberForm,
    errors: &Errors,
    rooms: &[Conference],
    users: &[User],
) -> Markup {
    let kinds: Vec<(String, String)> = [
        ("not_configured", "Not configured"),
        ("extension", "Extension"),
        ("conference", "Conference"),
        ("hang_up", "Hang up"),
    ]
    .iter()
    .map(|(v, t)| ((*v).to_owned(), (*t).to_owned()))
    .collect();
    let mut extensions = vec![(String::new(), "Choose an extension".to_owned())];
    extensions.extend(
        users
            .iter()
            .map(|u| (u.extension.clone(), format!("{} — {}", u.extension, u.name))),
    );
    extensions.extend(rooms.iter().map(|c| {
        (
            c.extension.clone(),
            format!("{} — {} (conference)", c.extension, c.name),
        )
    }));
    let mut conferences = vec![(String::new(), "Choose a conference".to_owned())];
    conferences.extend(
        rooms
            .iter()
            .map(|c| (c.id.to_string(), format!("{} ({})", c.name, c.extension))),
    );
    let kind = if form.kind.is_empty() {
        "not_configured"
    } else {
        &form.kind
    };
    html! {
        div.page-head { h1 { (title) } }
        div.card.form-card {
            form method="post" action=(action) novalidate data-destination-form {
                (csrf_field(ctx))
                (form_error(errors.general(FIELDS)))
                (Field::text("number", "Number", &form.number).kind("tel").required().autocomplete("off")
                    .hint("As your provider sends it, with or without the leading +, e.g. +3225551234").render(errors))
                (select("type", "Destination type for voice call", kind, &kinds, errors, None))
                div data-show-for="extension" {
                    (select("extension", "Extension", &form.extension, &extensions, errors,
                        Some("A user's phones ring, or the call goes to the room with this extension.")))
                }
                div data-show-for="conference" {
                    (select("conference_id", "Conference", &form.conference_id, &conferences, errors,
                        Some("Callers hear the receptionist and type the access code, if the room has one.")))
                }
                div.form-actions {
                    a.btn.btn-quiet href="/incoming-numbers" { "Cancel" }
                    button.btn.btn-primary type="submit" { "Save" }
                }
            }
        }
    }
}

async fn render(
    ctx: &Ctx,
    title: &str,
    action: &str,
    form: &NumberForm,
    errors: Errors,
) -> Result<Response, PageError> {
    let rooms = ctx.state.store.list_conferences().await?;
    let users = ctx.state.store.list_users().await?;
    let body = number_form(ctx, title, action, form, &errors, &rooms, &users);
    form_page(ctx, Section::IncomingNumbers, title, body, &errors).await
}

/// `GET /incoming-numbers/new`.
pub(crate) async fn new_form(ctx: Ctx) -> Result<Response, PageError> {
    render(
        &ctx,
        "New incoming number",
        "/incoming-numbers/new",
        &NumberForm::default(),
        Errors::none(),
    )
    .await
}

/// `POST /incoming-numbers/new`.
pub(crate) async fn create(posted: Posted) -> Result<Response, PageError> {
    let Posted { ctx, form } = posted;
    let form = NumberForm::from_posted(&form);
    let (title, action) = ("New incoming number", "/incoming-numbers/new");
    let new = match form.to_new() {
        Ok(n) => n,
        Err(errors) => return render(&ctx, title, action, &form, errors).await,
    };
    match ctx.state.store.create_incoming_number(new).await {
        Ok(n) => {
            done(
                &ctx,
                "/incoming-numbers",
                format!(
                    "Number {} saved. Apply changes to put it in production.",
                    n.number
                ),
            )
            .await
        }
        Err(e) => render(&ctx, title, action, &form, store_error(e, LABELS)?).await,
    }
}

/// `GET /incoming-numbers/{id}/edit`.
pub(crate) async fn edit_form(ctx: Ctx, Path(raw): Path<String>) -> Result<Response, PageError> {
    let id = parse_id(&raw)?;
    let number = ctx.state.store.get_incoming_number(id).await?;
    render(
        &ctx,
        "Edit incoming number",
        &format!("/incoming-numbers/{id}/edit"),
        &NumberForm::from_number(&number),
        Errors::none(),
    )
    .await
}

/// `POST /incoming-numbers/{id}/edit`.
pub(crate) async fn update(Path(raw): Path<String>, posted: Posted) -> Result<Response, PageError> {
    let Posted { ctx, form } = posted;
    let id = parse_id(&raw)?;
    ctx.state.store.get_incoming_number(id).await?;
    let form = NumberForm::from_posted(&form);
    let (title, action) = (
        "Edit incoming number",
        format!("/incoming-numbers/{id}/edit"),
    );
    let new = match form.to_new() {
        Ok(n) => n,
        Err(errors) => return render(&ctx, title, &action, &form, errors).await,
    };
    match ctx
        .state
        .store
        .update_incoming_number(id, IncomingNumberPatch::from(new))
        .await
    {
        Ok(n) => {
            done(
                &ctx,
                "/incoming-numbers",
                format!(
                    "Number {} saved. Apply changes to put it in production.",
                    n.number
                ),
            )
            .await
        }
        Err(e) => render(&ctx, title, &action, &form, store_error(e, LABELS)?).await,
    }
}

/// `POST /incoming-numbers/{id}/delete`.
pub(crate) async fn delete(Path(raw): Path<String>, posted: Posted) -> Result<Response, PageError> {
    let ctx = posted.ctx;
    let id = parse_id(&raw)?;
    let number = ctx.state.store.get_incoming_number(id).await?;
    ctx.state.store.delete_incoming_number(id).await?;
    done(
        &ctx,
        "/incoming-numbers",
        format!(
            "Number {} deleted. Apply changes to remove it from production.",
            number.number
        ),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_types_map_to_the_model() {
        let form = |kind: &str, ext: &str, conf: &str| NumberForm {
            number: "+3225551234".into(),
            kind: kind.into(),
            extension: ext.into(),
            conference_id: conf.into(),
        };
        assert_eq!(
            form("conference", "", "7").to_new().unwrap().destination,
            Destination::Conference { conference_id: 7 }
        );
        assert_eq!(
            form("hang_up", "101", "7").to_new().unwrap().destination,
            Destination::HangUp,
            "fields of other types are ignored"
        );
        assert!(form("conference", "", "")
            .to_new()
            .unwrap_err()
            .has("conference_id"));
        assert!(form("extension", "", "")
            .to_new()
            .unwrap_err()
            .has("extension"));
        assert!(form("bogus", "", "").to_new().unwrap_err().has("type"));
    }
}
