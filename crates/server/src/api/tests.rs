//! The API driven through `oneshot` (no socket) on a temporary SQLite store.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use confero_pbx::config::Snapshot;
use confero_store::Store;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::watch;
use tower::ServiceExt;

use super::router;
use crate::live::{self, LiveView};
use crate::state::AppState;

struct FakeLive;

impl LiveView for FakeLive {
    fn registrations(&self) -> Vec<live::Registration> {
        vec![live::Registration {
            user: "101".into(),
            contact: "sip:101@192.0.2.1".into(),
            transport: "UDP".into(),
            source: "192.0.2.1:5060".into(),
            expires_in: 3600,
            user_agent: None,
        }]
    }
    fn calls(&self) -> Vec<live::Call> {
        vec![live::Call {
            id: 1,
            caller: "101".into(),
            callee: "800".into(),
            state: "ringing",
            started_at: 0,
            answered_at: None,
        }]
    }
    fn metrics(&self) -> String {
        "# TYPE confero_calls gauge\nconfero_calls 1\n".into()
    }
}

const ADMIN_PASSWORD: &str = "console-secret";

struct App {
    router: Router,
    store: Store,
    production: watch::Receiver<Arc<Snapshot>>,
    token: String,
    _dir: tempfile::TempDir,
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
    text: String,
}

async fn app() -> App {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_data_dir(dir.path()).await.expect("store");
    store
        .ensure_admin(Some(ADMIN_PASSWORD))
        .await
        .expect("admin");
    let (_, token) = store.create_token("tests").await.expect("token");
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    let router = router(AppState::new(store.clone(), Arc::new(FakeLive), tx));
    App {
        router,
        store,
        production: rx,
        token,
        _dir: dir,
    }
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

impl App {
    async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    /// A request with the test token and, when given, a JSON body.
    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.send(req.body(body).expect("request")).await
    }

    async fn raw_body(
        &self,
        method: Method,
        uri: &str,
        content_type: &str,
        body: impl Into<Body>,
    ) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, content_type)
            .body(body.into())
            .expect("request");
        self.send(req).await
    }
}

#[tokio::test]
async fn health_metrics_and_openapi_need_no_auth() {
    let app = app().await;
    let r = app
        .send(Request::get("/healthz").body(Body::empty()).unwrap())
        .await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "ok"));
    let r = app
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("confero_config_revision 0\n"), "{}", r.text);
    assert!(
        r.text.contains("confero_config_pending_changes 0\n"),
        "{}",
        r.text
    );
    assert!(r.text.contains("confero_calls 1\n"), "{}", r.text);
    let r = app
        .send(
            Request::get("/api/v1/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["openapi"], "3.1.0");
}

#[tokio::test]
async fn openapi_documents_every_route() {
    let doc: Value = serde_json::from_str(super::OPENAPI).expect("openapi.json parses");
    let paths = doc["paths"].as_object().expect("paths");
    let expected = [
        ("/api/v1/users", &["get", "post"][..]),
        ("/api/v1/users/{id}", &["get", "put", "patch", "delete"]),
        ("/api/v1/users/{id}/reset-password", &["post"]),
        ("/api/v1/conferences", &["get", "post"]),
        (
            "/api/v1/conferences/{id}",
            &["get", "put", "patch", "delete"],
        ),
        ("/api/v1/incoming-numbers", &["get", "post"]),
        (
            "/api/v1/incoming-numbers/{id}",
            &["get", "put", "patch", "delete"],
        ),
        ("/api/v1/trunks", &["get", "post"]),
        ("/api/v1/trunks/{id}", &["get", "put", "patch", "delete"]),
        ("/api/v1/changes", &["get"]),
        ("/api/v1/changes/apply", &["post"]),
        ("/api/v1/changes/discard", &["post"]),
        ("/api/v1/conferences/{id}/participants", &["get"]),
        (
            "/api/v1/conferences/{id}/participants/{pid}/{action}",
            &["post"],
        ),
        ("/api/v1/events", &["get"]),
        ("/api/v1/conferences/{id}/invite", &["post"]),
        ("/api/v1/conferences/{id}/lock", &["post"]),
        ("/api/v1/conferences/{id}/unlock", &["post"]),
        ("/api/v1/invitations/{id}", &["get"]),
        ("/api/v1/invitations/{id}/cancel", &["post"]),
        ("/api/v1/registrations", &["get"]),
        ("/api/v1/calls", &["get"]),
        ("/api/v1/alerts/code-guessing", &["get"]),
        ("/api/v1/tokens", &["post"]),
        ("/api/v1/openapi.json", &["get"]),
        ("/healthz", &["get"]),
        ("/metrics", &["get"]),
    ];
    for (path, methods) in expected {
        for m in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*m)).is_some(),
                "{m} {path} undocumented"
            );
        }
    }
    assert_eq!(
        paths.len(),
        expected.len(),
        "documented paths that do not exist"
    );
    // Every $ref resolves.
    let text = super::OPENAPI;
    for part in text.split("\"$ref\": \"#/components/").skip(1) {
        let target = &part[..part.find('"').unwrap()];
        let (kind, name) = target.split_once('/').unwrap();
        assert!(
            doc["components"][kind][name].is_object(),
            "dangling $ref {target}"
        );
    }
}

#[tokio::test]
async fn credentials_are_required() {
    let app = app().await;
    let r = app
        .send(Request::get("/api/v1/users").body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers[header::WWW_AUTHENTICATE],
        "Basic realm=\"confero\""
    );
    assert!(r.body["error"].is_string());

    for auth in ["Bearer confero_wrong", "Bearer ", "Basic !!", "Token x"] {
        let req = Request::get("/api/v1/users")
            .header(header::AUTHORIZATION, auth)
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            app.send(req).await.status,
            StatusCode::UNAUTHORIZED,
            "{auth}"
        );
    }
    let req = Request::get("/api/v1/users")
        .header(header::AUTHORIZATION, basic("admin", "wrong"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(req).await.status, StatusCode::UNAUTHORIZED);
    let req = Request::get("/api/v1/users")
        .header(header::AUTHORIZATION, basic("admin", ADMIN_PASSWORD))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(req).await.status, StatusCode::OK);
    assert_eq!(
        app.call(Method::GET, "/api/v1/users", None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn tokens_are_minted_by_console_accounts_only() {
    let app = app().await;
    let r = app
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "odoo"})),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "a token cannot mint tokens"
    );

    let req = Request::post("/api/v1/tokens")
        .header(header::AUTHORIZATION, basic("admin", ADMIN_PASSWORD))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"name":"odoo"}"#))
        .unwrap();
    let r = app.send(req).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let token = r.body["token"].as_str().unwrap().to_owned();
    assert!(r.body["id"].is_i64());
    let req = Request::get("/api/v1/users")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(req).await.status, StatusCode::OK);

    // A page on another site cannot ride on a browser's remembered Basic credentials.
    let req = Request::post("/api/v1/changes/apply")
        .header(header::AUTHORIZATION, basic("admin", ADMIN_PASSWORD))
        .header(header::HOST, "pbx.example:8080")
        .header(header::ORIGIN, "https://evil.example")
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(req).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn users_crud_and_the_password_is_shown_once() {
    let app = app().await;
    let r = app
        .call(
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "Alice", "extension": "101"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_i64().unwrap();
    let password = r.body["sip_password"].as_str().unwrap().to_owned();
    assert_eq!(password.len(), 16);
    assert_eq!(r.body["sip_username"], "101");

    let r = app
        .call(Method::GET, &format!("/api/v1/users/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body.get("sip_password").is_none(),
        "password is write-only: {}",
        r.body
    );
    let r = app.call(Method::GET, "/api/v1/users", None).await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    assert!(!r.text.contains(&password));

    // PUT with what GET returned (id included) keeps the password.
    let mut put = app
        .call(Method::GET, &format!("/api/v1/users/{id}"), None)
        .await
        .body;
    put["name"] = json!("Alice Smith");
    let r = app
        .call(Method::PUT, &format!("/api/v1/users/{id}"), Some(put))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["name"], "Alice Smith");
    assert_eq!(app.store.get_user(id).await.unwrap().sip_password, password);

    let r = app
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{id}"),
            Some(json!({"extension": "111"})),
        )
        .await;
    assert_eq!(
        (r.status, r.body["extension"].as_str()),
        (StatusCode::OK, Some("111"))
    );
    assert_eq!(r.body["name"], "Alice Smith");

    let r = app
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{id}"),
            Some(json!({"id": id + 1, "name": "X"})),
        )
        .await;
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("id"))
    );

    let r = app
        .call(
            Method::POST,
            &format!("/api/v1/users/{id}/reset-password"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let new_password = r.body["sip_password"].as_str().unwrap();
    assert_ne!(new_password, password);
    assert_eq!(
        app.store.get_user(id).await.unwrap().sip_password,
        new_password
    );

    let r = app
        .call(Method::DELETE, &format!("/api/v1/users/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = app
        .call(Method::GET, &format!("/api/v1/users/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["field"], Value::Null);
    let r = app
        .call(Method::DELETE, &format!("/api/v1/users/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app.call(Method::GET, "/api/v1/users/abc", None).await;
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("id"))
    );
}

#[tokio::test]
async fn conferences_crud_and_references_conflict() {
    let app = app().await;
    let r = app
        .call(
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "Alice", "extension": "101"})),
        )
        .await;
    let alice = r.body["id"].as_i64().unwrap();
    let r = app
        .call(
            Method::POST,
            "/api/v1/conferences",
            Some(
                json!({"name": "Board", "extension": "800", "access_code": "4321",
                        "admin_extension": "101", "wait_for_admin": true}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let room = r.body["id"].as_i64().unwrap();
    assert_eq!(r.body["when_admin_leaves"], "wait");

    let r = app
        .call(Method::DELETE, &format!("/api/v1/users/{alice}"), None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(
        r.body["error"].as_str().unwrap().contains("Board"),
        "{}",
        r.body
    );

    let r = app
        .call(
            Method::PATCH,
            &format!("/api/v1/conferences/{room}"),
            Some(json!({"access_code": null, "when_admin_leaves": "end"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["access_code"], Value::Null);
    assert_eq!(r.body["admin_extension"], "101");
    assert_eq!(r.body["when_admin_leaves"], "end");

    let r = app
        .call(
            Method::PUT,
            &format!("/api/v1/conferences/{room}"),
            Some(json!({"name": "Board", "extension": "801"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["admin_extension"], Value::Null);
    assert_eq!(r.body["wait_for_admin"], false);

    let r = app.call(Method::GET, "/api/v1/conferences", None).await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    assert_eq!(
        app.call(Method::DELETE, &format!("/api/v1/users/{alice}"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.call(Method::DELETE, &format!("/api/v1/conferences/{room}"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.call(Method::GET, &format!("/api/v1/conferences/{room}"), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn incoming_numbers_crud() {
    let app = app().await;
    let room = app
        .call(
            Method::POST,
            "/api/v1/conferences",
            Some(json!({"name": "Room", "extension": "800"})),
        )
        .await
        .body["id"]
        .as_i64()
        .unwrap();
    let r = app
        .call(
            Method::POST,
            "/api/v1/incoming-numbers",
            Some(json!({"number": "+3225550100"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["destination"], json!({"type": "not_configured"}));
    let id = r.body["id"].as_i64().unwrap();
    let r = app
        .call(
            Method::PATCH,
            &format!("/api/v1/incoming-numbers/{id}"),
            Some(json!({"destination": {"type": "conference", "conference_id": room}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["destination"]["conference_id"], room);
    let r = app
        .call(
            Method::PUT,
            &format!("/api/v1/incoming-numbers/{id}"),
            Some(json!({"number": "+3225550101", "destination": {"type": "extension", "extension": "800"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["number"], "+3225550101");
    let r = app
        .call(Method::DELETE, &format!("/api/v1/conferences/{room}"), None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = app
        .call(Method::GET, "/api/v1/incoming-numbers", None)
        .await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    let r = app
        .call(
            Method::DELETE,
            &format!("/api/v1/incoming-numbers/{id}"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.call(Method::GET, &format!("/api/v1/incoming-numbers/{id}"), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn trunks_crud_with_write_only_password() {
    let app = app().await;
    let r = app
        .call(
            Method::POST,
            "/api/v1/trunks",
            Some(json!({"name": "Provider", "host": "sip.example.net", "username": "acct",
                        "password": "hunter22", "register": true, "transport": "tls", "port": 5061})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["has_password"], true);
    assert!(r.body.get("password").is_none());
    assert!(!r.text.contains("hunter22"));
    let id = r.body["id"].as_i64().unwrap();

    // PUT back what GET returned (has_password included): password kept.
    let mut put = app
        .call(Method::GET, &format!("/api/v1/trunks/{id}"), None)
        .await
        .body;
    put["port"] = json!(5062);
    let r = app
        .call(Method::PUT, &format!("/api/v1/trunks/{id}"), Some(put))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (r.body["port"].as_u64(), r.body["has_password"].as_bool()),
        (Some(5062), Some(true))
    );
    assert_eq!(
        app.store.get_trunk(id).await.unwrap().password.as_deref(),
        Some("hunter22")
    );

    let r = app
        .call(
            Method::PATCH,
            &format!("/api/v1/trunks/{id}"),
            Some(json!({"password": null})),
        )
        .await;
    assert_eq!(r.body["has_password"], false);
    let r = app.call(Method::GET, "/api/v1/trunks", None).await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    assert_eq!(
        app.call(Method::DELETE, &format!("/api/v1/trunks/{id}"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn bad_requests_name_the_field_and_change_nothing() {
    let app = app().await;
    app.call(
        Method::POST,
        "/api/v1/users",
        Some(json!({"name": "Alice", "extension": "101"})),
    )
    .await;
    let before = app.store.draft().await.unwrap();

    let cases = [
        (
            "/api/v1/users",
            json!({"name": "Bob", "extension": "101"}),
            "extension",
        ),
        (
            "/api/v1/users",
            json!({"name": "Bob", "extension": 102}),
            "extension",
        ),
        ("/api/v1/users", json!({"extension": "102"}), "name"),
        (
            "/api/v1/users",
            json!({"name": "Bob", "extension": "102", "pasword": "x"}),
            "pasword",
        ),
        (
            "/api/v1/users",
            json!({"name": "Bob", "extension": "102", "sip_password": "short"}),
            "sip_password",
        ),
        (
            "/api/v1/conferences",
            json!({"name": "Room", "extension": "80"}),
            "extension",
        ),
        (
            "/api/v1/conferences",
            json!({"name": "Room", "extension": "800", "wait_for_admin": true}),
            "wait_for_admin",
        ),
        (
            "/api/v1/conferences",
            json!({"name": "Room", "extension": "800", "admin_extension": "999"}),
            "admin_extension",
        ),
        (
            "/api/v1/conferences",
            json!({"name": "Room", "extension": "800", "access_code": "12ab"}),
            "access_code",
        ),
        (
            "/api/v1/conferences",
            json!({"name": "Room", "extension": "800", "when_admin_leaves": "later"}),
            "when_admin_leaves",
        ),
        (
            "/api/v1/incoming-numbers",
            json!({"number": "12"}),
            "number",
        ),
        (
            "/api/v1/incoming-numbers",
            json!({"number": "+321", "destination": {"type": "conference", "conference_id": 9}}),
            "destination.conference_id",
        ),
        (
            "/api/v1/incoming-numbers",
            json!({"number": "+321", "destination": {"type": "extension", "extension": "555"}}),
            "destination.extension",
        ),
        (
            "/api/v1/trunks",
            json!({"name": "T", "host": "sip.example.net", "port": 70000}),
            "port",
        ),
        (
            "/api/v1/trunks",
            json!({"name": "T", "host": "not a host"}),
            "host",
        ),
    ];
    for (uri, body, field) in cases {
        let r = app.call(Method::POST, uri, Some(body.clone())).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{uri} {body}: {}",
            r.text
        );
        assert_eq!(
            r.body["field"].as_str(),
            Some(field),
            "{uri} {body}: {}",
            r.text
        );
        assert!(r.body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let r = app
        .raw_body(
            Method::POST,
            "/api/v1/users",
            "application/json",
            "{\"name\": ",
        )
        .await;
    assert_eq!(
        (r.status, &r.body["field"]),
        (StatusCode::BAD_REQUEST, &Value::Null)
    );
    let r = app
        .raw_body(
            Method::POST,
            "/api/v1/users",
            "text/plain",
            r#"{"name":"B","extension":"102"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = format!(
        r#"{{"name":"{}","extension":"102"}}"#,
        "x".repeat(70 * 1024)
    );
    let r = app
        .raw_body(Method::POST, "/api/v1/users", "application/json", huge)
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.body["error"].is_string());

    assert_eq!(
        app.store.draft().await.unwrap(),
        before,
        "rejected requests change nothing"
    );
    let r = app.call(Method::GET, "/api/v1/nope", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn apply_publishes_and_discard_restores() {
    let mut app = app().await;
    let r = app.call(Method::GET, "/api/v1/changes", None).await;
    assert_eq!(r.body, json!({"pending": 0, "revision": 0, "changes": []}));

    app.call(
        Method::POST,
        "/api/v1/users",
        Some(json!({"name": "Alice", "extension": "101"})),
    )
    .await;
    let room = app
        .call(
            Method::POST,
            "/api/v1/conferences",
            Some(json!({"name": "Room", "extension": "800"})),
        )
        .await
        .body["id"]
        .as_i64()
        .unwrap();
    let r = app.call(Method::GET, "/api/v1/changes", None).await;
    assert_eq!(r.body["pending"], 2);
    assert_eq!(
        r.body["changes"][1],
        json!({"kind": "added", "entity": "conference", "id": room, "summary": "Room (800)"})
    );
    assert!(
        !app.production.has_changed().unwrap(),
        "nothing reaches calls before apply"
    );

    let r = app.call(Method::POST, "/api/v1/changes/apply", None).await;
    assert_eq!(
        (r.status, &r.body),
        (StatusCode::OK, &json!({"revision": 1}))
    );
    assert!(app.production.has_changed().unwrap());
    let snap = app.production.borrow_and_update().clone();
    assert_eq!(snap.revision, 1);
    assert!(snap.config.conference_by_extension("800").is_some());
    assert_eq!(
        app.call(Method::GET, "/api/v1/changes", None).await.body["pending"],
        0
    );
    let r = app
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert!(r.text.contains("confero_config_revision 1\n"), "{}", r.text);

    // Nothing pending: same revision, the engine is not woken.
    let r = app.call(Method::POST, "/api/v1/changes/apply", None).await;
    assert_eq!(r.body, json!({"revision": 1}));
    assert!(!app.production.has_changed().unwrap());

    app.call(Method::DELETE, &format!("/api/v1/conferences/{room}"), None)
        .await;
    assert_eq!(
        app.call(Method::GET, "/api/v1/changes", None).await.body["pending"],
        1
    );
    let r = app
        .call(Method::POST, "/api/v1/changes/discard", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.call(Method::GET, "/api/v1/changes", None).await.body["pending"],
        0
    );
    let r = app
        .call(Method::GET, &format!("/api/v1/conferences/{room}"), None)
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "discard restored the room with its id"
    );
    assert!(!app.production.has_changed().unwrap());
}

#[tokio::test]
async fn live_state_comes_from_the_engine_view() {
    let app = app().await;
    let r = app.call(Method::GET, "/api/v1/registrations", None).await;
    assert_eq!(r.body[0]["user"], "101");
    let r = app.call(Method::GET, "/api/v1/calls", None).await;
    assert_eq!(r.body[0]["callee"], "800");
}
