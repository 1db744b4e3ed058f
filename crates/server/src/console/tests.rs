//! The console driven through `oneshot` (no socket, no browser): sessions, CSRF,
//! throttling, and that forms save exactly what they say (or nothing, with the error next
//! to the field). The browser tests in tests/browser drive the same pages in Chromium.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use confero_pbx::config::{Destination, Snapshot};
use confero_store::Store;
use http_body_util::BodyExt;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::live::{self, LiveView};
use crate::state::AppState;

const ADMIN_PASSWORD: &str = "console-admin-secret";

/// A live view with one participant in every room; it remembers which rooms it locked.
#[derive(Default)]
struct FakeLive {
    locked: std::sync::Mutex<Vec<i64>>,
}

impl LiveView for FakeLive {
    fn locked(&self, conference_id: i64) -> bool {
        self.locked.lock().unwrap().contains(&conference_id)
    }
    fn set_locked(
        &self,
        conference_id: i64,
        locked: bool,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<(), String>>> {
        let mut rooms = self.locked.lock().unwrap();
        rooms.retain(|id| *id != conference_id);
        if locked {
            rooms.push(conference_id);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(Ok(()));
        Some(rx)
    }
    fn registrations(&self) -> Vec<live::Registration> {
        let device = |user: &str, contact: &str, transport: &str, source: &str, agent: &str| {
            live::Registration {
                user: user.into(),
                contact: contact.into(),
                transport: transport.into(),
                source: source.into(),
                expires_in: 3600,
                user_agent: Some(agent.into()),
            }
        };
        vec![
            device(
                "alice",
                "sip:alice@192.0.2.1",
                "udp",
                "192.0.2.1:5060",
                "Yealink T46U",
            ),
            device(
                "bob",
                "sip:x8k2@192.0.2.7;transport=ws",
                "WSS",
                "192.0.2.7:50312",
                "Odoo VoIP",
            ),
        ]
    }
    fn calls(&self) -> Vec<live::Call> {
        Vec::new()
    }
    fn metrics(&self) -> String {
        String::new()
    }
    fn participants(&self, conference_id: i64) -> Vec<live::Participant> {
        vec![live::Participant {
            id: 41,
            conference_id,
            caller: "101".into(),
            caller_name: "Alice".into(),
            is_admin: true,
            state: "in_room",
            in_mix: true,
            muted: false,
            talking: true,
            codec: "PCMU".into(),
            joined_at: 0,
            packets_received: 500,
            packets_lost: 0,
            loss_percent: 0.0,
            jitter_ms: 2.0,
            rtt_ms: None,
            rtp_port: 20000,
        }]
    }
}

struct Console {
    router: Router,
    store: Store,
    production: watch::Receiver<Arc<Snapshot>>,
    _dir: tempfile::TempDir,
}

struct Page {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The CSRF token the page carries for its forms.
    fn csrf(&self) -> String {
        let at = self
            .text
            .find("name=\"csrf-token\" content=\"")
            .expect("page has a csrf meta tag")
            + "name=\"csrf-token\" content=\"".len();
        self.text[at..at + self.text[at..].find('"').unwrap()].to_owned()
    }
}

async fn console() -> Console {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_data_dir(dir.path()).await.expect("store");
    store
        .ensure_admin(Some(ADMIN_PASSWORD))
        .await
        .expect("admin");
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    let endpoints = crate::state::Endpoints {
        http: "0.0.0.0:8080".parse().unwrap(),
        https: None,
        self_signed: false,
        advertised: "192.0.2.1".parse().unwrap(),
        domains: Vec::new(),
    };
    let router = crate::app(
        AppState::new(store.clone(), Arc::new(FakeLive::default()), tx).with_endpoints(endpoints),
    );
    Console {
        router,
        store,
        production: rx,
        _dir: dir,
    }
}

fn form_body(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", super::url_encode(k), super::url_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Console {
    async fn send(&self, req: Request<Body>) -> Page {
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        Page {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Page {
        let mut req = Request::builder()
            .uri(path)
            .header(header::HOST, "pbx.test");
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, format!("confero_session={c}"));
        }
        self.send(req.body(Body::empty()).unwrap()).await
    }

    async fn post(&self, path: &str, cookie: Option<&str>, fields: &[(&str, &str)]) -> Page {
        self.post_from(path, cookie, fields, None).await
    }

    async fn post_from(
        &self,
        path: &str,
        cookie: Option<&str>,
        fields: &[(&str, &str)],
        origin: Option<&str>,
    ) -> Page {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::HOST, "pbx.test")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, format!("confero_session={c}"));
        }
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o);
        }
        self.send(req.body(Body::from(form_body(fields))).unwrap())
            .await
    }

    /// Signs in and returns the session cookie's value.
    async fn sign_in(&self) -> String {
        let page = self
            .post(
                "/login",
                None,
                &[
                    ("username", "admin"),
                    ("password", ADMIN_PASSWORD),
                    ("next", "/users"),
                ],
            )
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.text);
        assert_eq!(page.location(), "/users");
        let cookie = page
            .headers
            .get(header::SET_COOKIE)
            .expect("a session cookie")
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        cookie
            .strip_prefix("confero_session=")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    }

    async fn csrf(&self, cookie: &str) -> String {
        self.get("/conferences", Some(cookie)).await.csrf()
    }

    async fn pending(&self) -> usize {
        self.store.pending_changes().await.unwrap().len()
    }
}

#[tokio::test]
async fn pages_and_api_need_a_session_or_credentials() {
    let c = console().await;
    for path in [
        "/conferences",
        "/users",
        "/changes",
        "/settings",
        "/conferences/1",
    ] {
        let page = c.get(path, None).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{path}");
        assert!(
            page.location().starts_with("/login?next="),
            "{path}: {}",
            page.location()
        );
    }
    let page = c.get("/conferences", Some("forged-cookie")).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let api = c.get("/api/v1/users", None).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
    let api = c.get("/api/v1/users", Some("forged-cookie")).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
    // A post without a session changes nothing.
    let page = c
        .post(
            "/conferences/new",
            None,
            &[("name", "X"), ("extension", "800")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(c.pending().await, 0);
    // The sign-in page and the assets are public.
    assert_eq!(c.get("/login", None).await.status, StatusCode::OK);
    let css = c.get("/assets/console.css", None).await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(css.headers.get(header::ETAG).is_some());
}

#[tokio::test]
async fn sign_in_sign_out_and_wrong_passwords() {
    let c = console().await;
    let wrong = c
        .post(
            "/login",
            None,
            &[("username", "admin"), ("password", "nope")],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.text.contains("Wrong username or password."));
    assert!(wrong.headers.get(header::SET_COOKIE).is_none());
    let unknown = c
        .post(
            "/login",
            None,
            &[("username", "ghost"), ("password", "nope")],
        )
        .await;
    assert_eq!(
        unknown.status,
        StatusCode::UNAUTHORIZED,
        "same answer for unknown users"
    );

    let cookie = c.sign_in().await;
    let page = c.get("/conferences", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.contains("Add a conference"));
    // An open redirect is not possible through `next`, and no `next` makes a 500.
    for next in [
        "//evil.example/",
        "/\t/evil.example/",
        "/\\evil.example/",
        "/\x0b",
        "/a\r\nSet-Cookie: x=1",
        "https://evil.example/",
        "/caf\u{e9}",
    ] {
        let evil = c
            .post(
                "/login",
                None,
                &[
                    ("username", "admin"),
                    ("password", ADMIN_PASSWORD),
                    ("next", next),
                ],
            )
            .await;
        assert_eq!(evil.status, StatusCode::SEE_OTHER, "{next:?}");
        let to = evil.location();
        assert!(
            to.starts_with('/')
                && !to.starts_with("//")
                && !to.contains("evil")
                && to.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'),
            "{next:?} led to {to:?}"
        );
        let form = c
            .get(&format!("/login?next={}", super::url_encode(next)), None)
            .await;
        assert_eq!(form.status, StatusCode::OK, "{next:?}");
        assert!(
            form.text.contains(r#"name="next" value="/conferences""#),
            "{next:?}"
        );
    }
    let fine = c
        .post(
            "/login",
            None,
            &[
                ("username", "admin"),
                ("password", ADMIN_PASSWORD),
                ("next", "/users?x=1"),
            ],
        )
        .await;
    assert_eq!(fine.location(), "/users?x=1");

    let csrf = page.csrf();
    let out = c.post("/logout", Some(&cookie), &[("_csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(
        c.get("/conferences", Some(&cookie)).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn posts_without_the_csrf_token_or_from_another_site_are_refused() {
    let c = console().await;
    let cookie = c.sign_in().await;
    let csrf = c.csrf(&cookie).await;
    let room = [
        ("name", "Board"),
        ("extension", "800"),
        ("wait_for_admin", "no"),
    ];
    let page = c.post("/conferences/new", Some(&cookie), &room).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let mut forged = room.to_vec();
    forged.push(("_csrf", "not-the-token"));
    let page = c.post("/conferences/new", Some(&cookie), &forged).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let mut good = room.to_vec();
    good.push(("_csrf", &csrf));
    let page = c
        .post_from(
            "/conferences/new",
            Some(&cookie),
            &good,
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let page = c
        .post_from(
            "/login",
            None,
            &[("username", "admin"), ("password", ADMIN_PASSWORD)],
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(
        page.status,
        StatusCode::FORBIDDEN,
        "no sign-in forms from other sites"
    );
    assert_eq!(c.pending().await, 0, "nothing was saved");
    // The same post with the token, from this site, works.
    let page = c
        .post_from(
            "/conferences/new",
            Some(&cookie),
            &good,
            Some("http://pbx.test"),
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.text);
    assert_eq!(c.pending().await, 1);
}

#[tokio::test]
async fn the_conference_form_shows_every_error_beside_its_field_and_saves_nothing() {
    let c = console().await;
    let cookie = c.sign_in().await;
    let csrf = c.csrf(&cookie).await;
    let page = c
        .post(
            "/users/new",
            Some(&cookie),
            &[
                ("_csrf", &csrf),
                ("name", "Alice"),
                ("extension", "1010"),
                ("sip_username", "alice"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(
        page.text.contains("data-testid=\"sip-password\""),
        "password shown once"
    );
    assert_eq!(
        page.headers[header::CACHE_CONTROL],
        "no-store",
        "a page holding a password is not cached"
    );
    let before = c.pending().await;

    let page = c
        .post(
            "/conferences/new",
            Some(&cookie),
            &[
                ("_csrf", &csrf),
                ("name", "Board"),
                ("extension", "1010"),
                ("access_code", "12ab"),
                ("admin_extension", ""),
                ("wait_for_admin", "yes"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    for field in ["extension", "access_code", "wait_for_admin"] {
        assert!(
            page.text.contains(&format!("data-error-for=\"{field}\"")),
            "{field} error missing"
        );
    }
    assert!(page.text.contains("already used by user"), "clash named");
    assert!(
        page.text.contains("value=\"12ab\""),
        "what was typed is kept"
    );
    assert_eq!(c.pending().await, before, "nothing saved");

    let page = c
        .post(
            "/conferences/new",
            Some(&cookie),
            &[
                ("_csrf", &csrf),
                ("name", "Board"),
                ("extension", "800"),
                ("access_code", "2468"),
                ("admin_extension", "1010"),
                ("wait_for_admin", "yes"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.text);
    let list = c.get("/conferences", Some(&cookie)).await;
    assert!(
        list.text.contains("Conference “Board” saved"),
        "flash shown"
    );
    assert!(list.text.contains("Not applied yet"));
    let again = c.get("/conferences", Some(&cookie)).await;
    assert!(
        !again.text.contains("Conference “Board” saved"),
        "flash shown once"
    );
    let room = &c.store.list_conferences().await.unwrap()[0];
    assert_eq!(room.access_code.as_deref(), Some("2468"));
    assert!(room.wait_for_admin);
    assert_eq!(room.admin_extension.as_deref(), Some("1010"));
}

#[tokio::test]
async fn apply_changes_reaches_the_engine_and_the_count_follows() {
    let c = console().await;
    let cookie = c.sign_in().await;
    let csrf = c.csrf(&cookie).await;
    c.post(
        "/conferences/new",
        Some(&cookie),
        &[("_csrf", &csrf), ("name", "Board"), ("extension", "800")],
    )
    .await;
    let page = c.get("/conferences", Some(&cookie)).await;
    assert!(page
        .text
        .contains("data-testid=\"pending-count\" aria-label=\"1 pending\">1<"));
    let changes = c.get("/changes", Some(&cookie)).await;
    assert!(changes.text.contains("Board (800)") && changes.text.contains("Added"));
    let applied = c
        .post("/changes/apply", Some(&cookie), &[("_csrf", &csrf)])
        .await;
    assert_eq!(applied.status, StatusCode::SEE_OTHER);
    assert_eq!(
        c.production.borrow().revision,
        1,
        "the engine got the revision"
    );
    assert_eq!(c.production.borrow().config.conferences.len(), 1);
    let page = c.get("/changes", Some(&cookie)).await;
    assert!(page.text.contains("1 change applied"));
    assert!(page.text.contains("aria-label=\"0 pending\">0<"));

    // A change to a room in production is listed field by field; discard undoes it.
    let id = c.store.list_conferences().await.unwrap()[0].id;
    c.post(
        &format!("/conferences/{id}/edit"),
        Some(&cookie),
        &[
            ("_csrf", &csrf),
            ("name", "Board"),
            ("extension", "800"),
            ("access_code", "9999"),
        ],
    )
    .await;
    let changes = c.get("/changes", Some(&cookie)).await;
    assert!(changes.text.contains("Access code"), "{}", changes.text);
    c.post("/changes/discard", Some(&cookie), &[("_csrf", &csrf)])
        .await;
    assert_eq!(c.pending().await, 0);
}

#[tokio::test]
async fn incoming_numbers_point_at_a_room() {
    let c = console().await;
    let cookie = c.sign_in().await;
    let csrf = c.csrf(&cookie).await;
    c.post(
        "/conferences/new",
        Some(&cookie),
        &[("_csrf", &csrf), ("name", "Board"), ("extension", "800")],
    )
    .await;
    let room = c.store.list_conferences().await.unwrap()[0].id;
    let page = c
        .post(
            "/incoming-numbers/new",
            Some(&cookie),
            &[
                ("_csrf", &csrf),
                ("number", "+32 2 555 12 34"),
                ("type", "not_configured"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.text);
    let number = c.store.list_incoming_numbers().await.unwrap()[0].clone();
    assert_eq!(number.number, "+3225551234", "spaces dropped");
    let form = c
        .get(
            &format!("/incoming-numbers/{}/edit", number.id),
            Some(&cookie),
        )
        .await;
    assert!(form.text.contains("Destination type for voice call"));
    let page = c
        .post(
            &format!("/incoming-numbers/{}/edit", number.id),
            Some(&cookie),
            &[
                ("_csrf", &csrf),
                ("number", "+3225551234"),
                ("type", "conference"),
                ("conference_id", &room.to_string()),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.text);
    assert_eq!(
        c.store
            .get_incoming_number(number.id)
            .await
            .unwrap()
            .destination,
        Destination::Conference {
            conference_id: room
        }
    );
    let page = c
        .post(
            &format!("/incoming-numbers/{}/edit", number.id),
            Some(&cookie),
            &[
                ("_csrf", &csrf),
                ("number", "+3225551234"),
                ("type", "conference"),
                ("conference_id", ""),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.text.contains("data-error-for=\"conference_id\""));
}

#[tokio::test]
async fn the_console_scripts_use_the_api_with_the_session_and_its_csrf_token() {
    let c = console().await;
    let cookie = c.sign_in().await;
    let csrf = c.csrf(&cookie).await;
    let get = c.get("/api/v1/conferences", Some(&cookie)).await;
    assert_eq!(get.status, StatusCode::OK);
    let post = |token: Option<String>| {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/conferences")
            .header(header::HOST, "pbx.test")
            .header(header::COOKIE, format!("confero_session={cookie}"))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header("x-csrf-token", t);
        }
        req.body(Body::from(r#"{"name":"Board","extension":"800"}"#))
            .unwrap()
    };
    assert_eq!(c.send(post(None)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        c.send(post(Some("wrong".into()))).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(c.pending().await, 0);
    assert_eq!(c.send(post(Some(csrf))).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn repeated_wrong_sign_ins_are_slowed_down() {
    let c = console().await;
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let page = c
            .post(
                "/login",
                None,
                &[("username", "admin"), ("password", "guess")],
            )
            .await;
        statuses.push(page.status);
    }
    assert_eq!(&statuses[..5], &[StatusCode::UNAUTHORIZED; 5]);
    assert!(statuses[6] == StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    // While locked, even the right password waits (the guesser learns nothing).
    let page = c
        .post(
            "/login",
            None,
            &[("username", "admin"), ("password", ADMIN_PASSWORD)],
        )
        .await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(page.headers.get(header::RETRY_AFTER).is_some());
    assert!(page.text.contains("Too many failed sign-ins"));
    // HTTP Basic on the API counts toward the same budget.
    let basic = Request::builder()
        .uri("/api/v1/users")
        .header(
            header::AUTHORIZATION,
            format!(
                "Basic {}",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("admin:{ADMIN_PASSWORD}")
                )
            ),
        )
        .body(Body::empty())
        .unwrap();
    assert_eq!(c.send(basic).await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn live_room_page_lists_participants_with_their_controls() {
    let c = console().await;
    let cookie = c.sign_in().await;
    let csrf = c.csrf(&cookie).await;
    c.post(
        "/conferences/new",
        Some(&cookie),
        &[("_csrf", &csrf), ("name", "Board"), ("extension", "800")],
    )
    .await;
    let id = c.store.list_conferences().await.unwrap()[0].id;
    let page = c.get(&format!("/conferences/{id}"), Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    for needle in [
        "data-participant-id=\"41\"",
        "Administrator",
        "In the room",
        "data-talking=\"true\"",
        "PCMU",
        "Mute",
        "Kick",
        "not in production yet",
    ] {
        assert!(page.text.contains(needle), "missing {needle}");
    }
    let fragment = c
        .get(&format!("/conferences/{id}/participants"), Some(&cookie))
        .await;
    assert!(
        fragment.text.starts_with("<div id=\"participants\""),
        "{}",
        fragment.text
    );
    let users = c.get("/users", Some(&cookie)).await;
    assert_eq!(users.status, StatusCode::OK);
    // Lock, then unlock, from the page.
    assert!(page
        .text
        .contains(&format!("action=\"/conferences/{id}/lock\"")));
    assert!(!page.text.contains("data-testid=\"locked\""));
    let done = c
        .post(
            &format!("/conferences/{id}/lock"),
            Some(&cookie),
            &[("_csrf", &csrf)],
        )
        .await;
    assert_eq!(done.location(), format!("/conferences/{id}"));
    let page = c.get(&format!("/conferences/{id}"), Some(&cookie)).await;
    assert!(
        page.text.contains("data-testid=\"locked\""),
        "{}",
        page.text
    );
    assert!(page
        .text
        .contains(&format!("action=\"/conferences/{id}/unlock\"")));
    c.post(
        &format!("/conferences/{id}/unlock"),
        Some(&cookie),
        &[("_csrf", &csrf)],
    )
    .await;
    let page = c.get(&format!("/conferences/{id}"), Some(&cookie)).await;
    assert!(!page.text.contains("data-testid=\"locked\""));
}

#[tokio::test]
async fn settings_manage_accounts_and_tokens() {
    let c = console().await;
    let cookie = c.sign_in().await;
    let csrf = c.csrf(&cookie).await;
    let short = c
        .post(
            "/settings/accounts",
            Some(&cookie),
            &[("_csrf", &csrf), ("username", "ops"), ("password", "short")],
        )
        .await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST);
    assert!(short.text.contains("data-error-for=\"password\""));
    let ok = c
        .post(
            "/settings/accounts",
            Some(&cookie),
            &[
                ("_csrf", &csrf),
                ("username", "ops"),
                ("password", "a long enough password"),
            ],
        )
        .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
    assert!(c
        .store
        .verify_console_login("ops", "a long enough password")
        .await
        .unwrap());
    let token_page = c
        .post(
            "/settings/tokens",
            Some(&cookie),
            &[("_csrf", &csrf), ("name", "odoo")],
        )
        .await;
    let at = token_page.text.find("data-testid=\"new-token\">").unwrap() + 24;
    let token = &token_page.text[at..at + token_page.text[at..].find('<').unwrap()];
    assert!(c.store.verify_token(token).await.unwrap());
    let again = c.get("/settings", Some(&cookie)).await;
    assert!(!again.text.contains(token), "the token is shown once");
    // Changing the password needs the current one, and signs out other sessions.
    let other = c.sign_in().await;
    let bad = c
        .post(
            "/settings/password",
            Some(&cookie),
            &[
                ("_csrf", &csrf),
                ("current_password", "wrong"),
                ("new_password", "another long password"),
            ],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let good = c
        .post(
            "/settings/password",
            Some(&cookie),
            &[
                ("_csrf", &csrf),
                ("current_password", ADMIN_PASSWORD),
                ("new_password", "another long password"),
            ],
        )
        .await;
    assert_eq!(good.status, StatusCode::SEE_OTHER);
    assert_eq!(
        c.get("/conferences", Some(&other)).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        c.get("/conferences", Some(&cookie)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn connect_odoo_lists_the_values_for_odoo_and_who_is_connected() {
    let c = console().await;
    let cookie = c.sign_in().await;
    let csrf = c.csrf(&cookie).await;
    for (name, ext, username) in [("Alice", "101", "alice"), ("Bob", "102", "bob")] {
        let made = c
            .post(
                "/users/new",
                Some(&cookie),
                &[
                    ("_csrf", &csrf),
                    ("name", name),
                    ("extension", ext),
                    ("sip_username", username),
                ],
            )
            .await;
        assert!(
            made.status.is_success() || made.status.is_redirection(),
            "{}",
            made.text
        );
    }
    // Not applied yet: Odoo could not use them, and the page says so.
    let page = c.get("/connect-odoo", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.contains("No users in production yet"));
    c.post("/changes/apply", Some(&cookie), &[("_csrf", &csrf)])
        .await;

    let page = c.get("/connect-odoo", Some(&cookie)).await;
    let t = &page.text;
    assert!(
        t.contains("data-testid=\"odoo-domain\">pbx.test<"),
        "the name the console was reached by"
    );
    assert!(t.contains("data-testid=\"odoo-websocket\">ws://pbx.test:8080/ws<"));
    assert!(
        t.contains("data-testid=\"odoo-no-tls\""),
        "without HTTPS, Odoo over https:// cannot connect"
    );
    assert!(t.contains("data-user=\"alice\""));
    // Bob has a browser registered over wss://; Alice only a desk phone.
    let bob = &t[t.find("data-user=\"bob\"").unwrap()..];
    assert!(bob[..bob.find("</tr>").unwrap()].contains("odoo-connected"));
    let alice = &t[t.find("data-user=\"alice\"").unwrap()..];
    assert!(!alice[..alice.find("</tr>").unwrap()].contains("odoo-connected"));
    assert!(
        t.contains("aria-current=\"page\""),
        "the menu shows where we are"
    );
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let c = console().await;
    let cookie = c.sign_in().await;
    for (path, cookie) in [
        ("/login", None),
        ("/conferences", Some(cookie.as_str())),
        ("/no-such-page", Some(cookie.as_str())),
        ("/api/v1/users", None),
        ("/assets/console.js", None),
        ("/metrics", None),
    ] {
        let page = c.get(path, cookie).await;
        let h = |name: &str| {
            page.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let csp = h("content-security-policy");
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(h("x-frame-options"), "DENY", "{path}");
        assert_eq!(h("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(h("referrer-policy"), "same-origin", "{path}");
        assert!(page.headers.get(header::SERVER).is_none(), "{path}");
    }
}

#[tokio::test]
async fn metrics_can_require_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_data_dir(dir.path()).await.expect("store");
    let (tx, _rx) = watch::channel(Arc::new(Snapshot::default()));
    let token = "metrics-token-0123456789";
    let router = crate::app(
        AppState::new(store, Arc::new(FakeLive::default()), tx)
            .with_metrics_token(Some(token.into())),
    );
    for (auth, expected) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("Bearer wrong"), StatusCode::UNAUTHORIZED),
        (
            Some("Bearer metrics-token-012345678"),
            StatusCode::UNAUTHORIZED,
        ),
        (Some(format!("Bearer {token}").as_str()), StatusCode::OK),
    ] {
        let mut req = Request::builder().uri("/metrics");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let res = router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), expected, "{auth:?}");
    }
}
