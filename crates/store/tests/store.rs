//! Every store operation, run on SQLite in a temporary directory and — when
//! `CONFERO_TEST_POSTGRES_URL` is set — the same functions on PostgreSQL, each
//! test in a database of its own.

use std::collections::HashSet;

use confero_pbx::config::{AdminLeaves, ChangeKind, Destination, EntityKind, TrunkTransport};
use confero_store::{
    ConferencePatch, IncomingNumberPatch, NewConference, NewIncomingNumber, NewTrunk, NewUser,
    Store, StoreError, StoredBinding, TrunkPatch, UserPatch,
};
use sqlx::AnyPool;

const PG_ENV: &str = "CONFERO_TEST_POSTGRES_URL";

/// A store on a database that belongs to one test.
struct TestDb {
    store: Store,
    url: String,
    _dir: Option<tempfile::TempDir>,
    pg_cleanup: Option<(String, String)>,
}

impl TestDb {
    async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open_data_dir(&dir.path().join("data"))
            .await
            .expect("open sqlite");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("data/confero.db").display()
        );
        TestDb {
            store,
            url,
            _dir: Some(dir),
            pg_cleanup: None,
        }
    }

    /// A fresh database on the server named by `CONFERO_TEST_POSTGRES_URL`
    /// (the role needs CREATEDB), or `None` with a message when unset.
    async fn postgres(test: &str) -> Option<TestDb> {
        let Ok(admin_url) = std::env::var(PG_ENV) else {
            // Written past the test harness's capture so a skip is never silent.
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "skipping PostgreSQL: {PG_ENV} not set");
            });
            return None;
        };
        sqlx::any::install_default_drivers();
        let name = format!("confero_test_{}_{}", test, std::process::id());
        let admin = AnyPool::connect(&admin_url)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&admin)
            .await
            .expect("drop");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        let url = with_database(&admin_url, &name);
        let store = Store::connect(&url).await.expect("open postgres store");
        Some(TestDb {
            store,
            url,
            _dir: None,
            pg_cleanup: Some((admin_url, name)),
        })
    }

    /// A second, raw connection for checks the public API cannot make (what is
    /// stored, or corrupting the draft behind the store's back).
    async fn raw(&self) -> AnyPool {
        AnyPool::connect(&self.url).await.expect("raw connection")
    }

    async fn finish(self) {
        self.store.close().await;
        if let Some((admin_url, name)) = self.pg_cleanup {
            if let Ok(admin) = AnyPool::connect(&admin_url).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                    .execute(&admin)
                    .await;
                admin.close().await;
            }
        }
    }
}

/// Replaces the database name in a postgres URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let root = match base[after_scheme..].find('/') {
        Some(slash) => &base[..after_scheme + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

/// Generates `sqlite::<name>` and `postgres::<name>` tests running the same function.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDb::sqlite().await;
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = super::TestDb::postgres(stringify!($name)).await else { return };
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}

on_both_backends!(
    users_crud,
    user_validation_names_the_field_and_changes_nothing,
    conferences_crud_and_references,
    incoming_numbers_crud_and_references,
    trunks_crud,
    apply_discard_and_pending_changes,
    invalid_draft_refuses_apply_and_changes_nothing,
    ids_are_never_reused,
    concurrent_creates_cannot_both_take_an_extension,
    console_accounts,
    console_sessions,
    account_management,
    api_tokens,
    registrar_bindings,
    state_survives_reconnect,
);

fn new_user(name: &str, ext: &str) -> NewUser {
    NewUser {
        name: name.into(),
        extension: ext.into(),
        ..NewUser::default()
    }
}

fn new_conf(name: &str, ext: &str) -> NewConference {
    NewConference {
        name: name.into(),
        extension: ext.into(),
        ..NewConference::default()
    }
}

fn field_of(e: StoreError) -> (&'static str, String) {
    match e {
        StoreError::Validation(f) => ("validation", f.field),
        StoreError::Conflict(f) => ("conflict", f.field),
        StoreError::NotFound { .. } => ("not_found", String::new()),
        other => panic!("unexpected error {other:?}"),
    }
}

async fn users_crud(db: &TestDb) {
    let s = &db.store;
    let alice = s.create_user(new_user("Alice", "101")).await.unwrap();
    assert_eq!(
        alice.sip_username, "101",
        "sip_username defaults to the extension"
    );
    assert_eq!(alice.sip_password.len(), 16);
    assert!(alice
        .sip_password
        .chars()
        .all(|c| c.is_ascii_alphanumeric()));
    let bob = s
        .create_user(NewUser {
            sip_username: Some("bob".into()),
            sip_password: Some("bobs-password".into()),
            ..new_user("Bob", "102")
        })
        .await
        .unwrap();
    assert_ne!(alice.id, bob.id);
    assert_eq!(s.get_user(bob.id).await.unwrap(), bob);
    assert_eq!(
        s.list_users().await.unwrap(),
        vec![alice.clone(), bob.clone()]
    );

    let renamed = s
        .update_user(
            alice.id,
            UserPatch {
                name: Some("Alice A.".into()),
                extension: Some("111".into()),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(renamed.name, "Alice A.");
    assert_eq!(renamed.extension, "111");
    assert_eq!(
        renamed.sip_password, alice.sip_password,
        "absent password is kept"
    );
    assert_eq!(s.get_user(alice.id).await.unwrap(), renamed);

    let reset = s.reset_user_password(alice.id).await.unwrap();
    assert_ne!(reset.sip_password, alice.sip_password);
    assert_eq!(reset.sip_password.len(), 16);

    s.delete_user(bob.id).await.unwrap();
    assert_eq!(s.list_users().await.unwrap().len(), 1);
    assert_eq!(
        field_of(s.get_user(bob.id).await.unwrap_err()).0,
        "not_found"
    );
    assert_eq!(
        field_of(s.delete_user(bob.id).await.unwrap_err()).0,
        "not_found"
    );
    assert_eq!(
        field_of(s.update_user(999, UserPatch::default()).await.unwrap_err()).0,
        "not_found"
    );
}

async fn user_validation_names_the_field_and_changes_nothing(db: &TestDb) {
    let s = &db.store;
    s.create_user(new_user("Alice", "101")).await.unwrap();
    s.create_conference(new_conf("Room", "800")).await.unwrap();
    let before = s.draft().await.unwrap();

    let cases: Vec<(NewUser, &str)> = vec![
        (new_user("Dup", "101"), "extension"),
        (new_user("DupConf", "800"), "extension"),
        (new_user("Short", "1"), "extension"),
        (new_user("  ", "105"), "name"),
        (
            NewUser {
                sip_username: Some("101".into()),
                ..new_user("Same username", "106")
            },
            "sip_username",
        ),
        (
            NewUser {
                sip_password: Some("short".into()),
                ..new_user("Weak", "107")
            },
            "sip_password",
        ),
    ];
    for (new, field) in cases {
        let e = s.create_user(new).await.unwrap_err();
        assert_eq!(field_of(e), ("validation", field.to_string()));
    }
    let e = s
        .update_user(
            before.users[0].id,
            UserPatch {
                extension: Some("800".into()),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(field_of(e), ("validation", "extension".to_string()));
    assert_eq!(
        s.draft().await.unwrap(),
        before,
        "failed writes change nothing"
    );
}

async fn conferences_crud_and_references(db: &TestDb) {
    let s = &db.store;
    let alice = s.create_user(new_user("Alice", "101")).await.unwrap();
    let e = s
        .create_conference(NewConference {
            wait_for_admin: true,
            ..new_conf("Board", "800")
        })
        .await
        .unwrap_err();
    assert_eq!(field_of(e), ("validation", "wait_for_admin".to_string()));
    let e = s
        .create_conference(NewConference {
            admin_extension: Some("555".into()),
            ..new_conf("Board", "800")
        })
        .await
        .unwrap_err();
    assert_eq!(field_of(e), ("validation", "admin_extension".to_string()));

    let board = s
        .create_conference(NewConference {
            access_code: Some("4321".into()),
            admin_extension: Some("101".into()),
            wait_for_admin: true,
            when_admin_leaves: AdminLeaves::End,
            ..new_conf("Board", "800")
        })
        .await
        .unwrap();
    assert_eq!(s.get_conference(board.id).await.unwrap(), board);
    assert_eq!(board.when_admin_leaves, AdminLeaves::End);

    // The administrator cannot be deleted or renumbered while the room refers to them.
    match s.delete_user(alice.id).await.unwrap_err() {
        StoreError::Conflict(f) => assert!(f.message.contains("Board"), "{f:?}"),
        other => panic!("{other:?}"),
    }
    let e = s
        .update_user(
            alice.id,
            UserPatch {
                extension: Some("199".into()),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(field_of(e).0, "conflict");

    // PATCH: null clears, absent keeps.
    let open = s
        .update_conference(
            board.id,
            ConferencePatch {
                access_code: Some(None),
                ..ConferencePatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(open.access_code, None);
    assert_eq!(open.admin_extension.as_deref(), Some("101"));
    // PUT: a full description.
    let replaced = s
        .update_conference(
            board.id,
            ConferencePatch::from(new_conf("Board room", "801")),
        )
        .await
        .unwrap();
    assert_eq!(replaced.admin_extension, None);
    assert!(!replaced.wait_for_admin);
    assert_eq!(replaced.when_admin_leaves, AdminLeaves::Wait);
    assert_eq!(s.list_conferences().await.unwrap(), vec![replaced.clone()]);

    s.delete_user(alice.id).await.unwrap();
    s.delete_conference(board.id).await.unwrap();
    assert!(s.list_conferences().await.unwrap().is_empty());
    assert_eq!(
        field_of(s.delete_conference(board.id).await.unwrap_err()).0,
        "not_found"
    );
}

async fn incoming_numbers_crud_and_references(db: &TestDb) {
    let s = &db.store;
    let room = s.create_conference(new_conf("Room", "800")).await.unwrap();
    let e = s
        .create_incoming_number(NewIncomingNumber {
            number: "+3225550100".into(),
            destination: Destination::Conference { conference_id: 999 },
            ..NewIncomingNumber::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        field_of(e),
        ("validation", "destination.conference_id".to_string())
    );
    let did = s
        .create_incoming_number(NewIncomingNumber {
            number: "+3225550100".into(),
            destination: Destination::Conference {
                conference_id: room.id,
            },
            ..NewIncomingNumber::default()
        })
        .await
        .unwrap();
    assert_eq!(s.get_incoming_number(did.id).await.unwrap(), did);
    let e = s
        .create_incoming_number(NewIncomingNumber {
            number: "+3225550100".into(),
            ..NewIncomingNumber::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field_of(e), ("validation", "number".to_string()));

    match s.delete_conference(room.id).await.unwrap_err() {
        StoreError::Conflict(f) => assert!(f.message.contains("+3225550100"), "{f:?}"),
        other => panic!("{other:?}"),
    }
    let to_ext = s
        .update_incoming_number(
            did.id,
            IncomingNumberPatch {
                destination: Some(Destination::Extension {
                    extension: "800".into(),
                }),
                ..IncomingNumberPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(s.get_incoming_number(did.id).await.unwrap(), to_ext);
    // Now renumbering the room would strand the DID.
    let e = s
        .update_conference(
            room.id,
            ConferencePatch {
                extension: Some("900".into()),
                ..ConferencePatch::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(field_of(e).0, "conflict");

    let hang_up = s
        .update_incoming_number(
            did.id,
            IncomingNumberPatch {
                destination: Some(Destination::HangUp),
                ..IncomingNumberPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(s.list_incoming_numbers().await.unwrap(), vec![hang_up]);
    s.delete_conference(room.id).await.unwrap();
    s.delete_incoming_number(did.id).await.unwrap();
    assert!(s.list_incoming_numbers().await.unwrap().is_empty());
}

async fn trunks_crud(db: &TestDb) {
    let s = &db.store;
    let e = s
        .create_trunk(NewTrunk {
            name: "Provider".into(),
            host: "bad host".into(),
            ..NewTrunk::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field_of(e), ("validation", "host".to_string()));
    let t = s
        .create_trunk(NewTrunk {
            name: "Provider".into(),
            host: "sip.example.net".into(),
            transport: TrunkTransport::Tls,
            port: 5061,
            username: Some("acct".into()),
            password: Some("pw".into()),
            register: true,
            caller_id: Some("+3225550100".into()),
            ..NewTrunk::default()
        })
        .await
        .unwrap();
    assert_eq!(s.get_trunk(t.id).await.unwrap(), t);
    let e = s
        .update_trunk(
            t.id,
            TrunkPatch {
                username: Some(None),
                ..TrunkPatch::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(field_of(e), ("validation", "register".to_string()));
    let updated = s
        .update_trunk(
            t.id,
            TrunkPatch {
                register: Some(false),
                username: Some(None),
                password: Some(None),
                port: Some(5080),
                ..TrunkPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (
            updated.username.clone(),
            updated.password.clone(),
            updated.port
        ),
        (None, None, 5080)
    );
    assert_eq!(s.list_trunks().await.unwrap(), vec![updated]);
    s.delete_trunk(t.id).await.unwrap();
    assert_eq!(
        field_of(s.get_trunk(t.id).await.unwrap_err()).0,
        "not_found"
    );
}

async fn apply_discard_and_pending_changes(db: &TestDb) {
    let s = &db.store;
    assert_eq!(s.production().await.unwrap(), None);
    assert!(s.pending_changes().await.unwrap().is_empty());

    let alice = s.create_user(new_user("Alice", "101")).await.unwrap();
    let room = s.create_conference(new_conf("Room", "800")).await.unwrap();
    let changes = s.pending_changes().await.unwrap();
    assert_eq!(changes.len(), 2);
    assert!(changes.iter().all(|c| c.kind == ChangeKind::Added));

    let r1 = s.apply().await.unwrap();
    assert_eq!(r1.revision, 1);
    assert_eq!(r1.config, s.draft().await.unwrap());
    assert_eq!(s.production().await.unwrap(), Some(r1.clone()));
    assert!(s.pending_changes().await.unwrap().is_empty());
    // Applying with nothing pending publishes nothing new.
    assert_eq!(s.apply().await.unwrap().revision, 1);

    s.update_conference(
        room.id,
        ConferencePatch {
            access_code: Some(Some("1234".into())),
            ..ConferencePatch::default()
        },
    )
    .await
    .unwrap();
    s.delete_user(alice.id).await.unwrap();
    let bob = s.create_user(new_user("Bob", "102")).await.unwrap();
    let changes = s.pending_changes().await.unwrap();
    let got: Vec<(ChangeKind, EntityKind, i64)> =
        changes.iter().map(|c| (c.kind, c.entity, c.id)).collect();
    assert_eq!(
        got,
        vec![
            (ChangeKind::Deleted, EntityKind::User, alice.id),
            (ChangeKind::Added, EntityKind::User, bob.id),
            (ChangeKind::Modified, EntityKind::Conference, room.id),
        ]
    );
    // Production did not move while the draft changed.
    assert_eq!(s.production().await.unwrap(), Some(r1.clone()));

    // Discard restores production, ids included.
    s.discard().await.unwrap();
    assert_eq!(s.draft().await.unwrap(), r1.config);
    assert!(s.pending_changes().await.unwrap().is_empty());

    // Apply again after an edit: ids stay stable across revisions.
    s.create_user(new_user("Carol", "103")).await.unwrap();
    let r2 = s.apply().await.unwrap();
    assert_eq!(r2.revision, 2);
    assert_eq!(
        r2.config.user_by_extension("101").map(|u| u.id),
        Some(alice.id)
    );
    assert_eq!(
        r2.config.conference_by_extension("800").map(|c| c.id),
        Some(room.id)
    );
    assert_eq!(s.draft().await.unwrap(), r2.config);
}

async fn invalid_draft_refuses_apply_and_changes_nothing(db: &TestDb) {
    let s = &db.store;
    s.create_user(new_user("Alice", "101")).await.unwrap();
    let r1 = s.apply().await.unwrap();
    // Break the draft behind the store's back (as a hand edit or an older
    // version with laxer rules could).
    let raw = db.raw().await;
    sqlx::query(
        "INSERT INTO conferences (id, name, extension, access_code, admin_extension, wait_for_admin, when_admin_leaves)
         VALUES (500, 'Broken', '800', NULL, '999', 1, 'wait')",
    )
    .execute(&raw)
    .await
    .unwrap();
    raw.close().await;
    let draft_before = s.draft().await.unwrap();
    match s.apply().await.unwrap_err() {
        StoreError::InvalidDraft(errors) => {
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].field, "conferences[id=500].admin_extension");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.production().await.unwrap(), Some(r1.clone()));
    assert_eq!(s.draft().await.unwrap(), draft_before);
    s.discard().await.unwrap();
    assert_eq!(s.draft().await.unwrap(), r1.config);
}

async fn ids_are_never_reused(db: &TestDb) {
    let s = &db.store;
    let a = s.create_user(new_user("A", "101")).await.unwrap();
    s.delete_user(a.id).await.unwrap();
    let b = s.create_user(new_user("B", "101")).await.unwrap();
    assert!(b.id > a.id);
    s.discard().await.unwrap();
    let c = s.create_user(new_user("C", "101")).await.unwrap();
    assert!(c.id > b.id);
    // A failed create does not burn or reuse ids either way.
    let _ = s.create_user(new_user("Dup", "101")).await.unwrap_err();
    let d = s.create_user(new_user("D", "102")).await.unwrap();
    assert_eq!(d.id, c.id + 1);
}

async fn concurrent_creates_cannot_both_take_an_extension(db: &TestDb) {
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = db.store.clone();
        tasks.push(tokio::spawn(async move {
            s.create_user(new_user(&format!("U{i}"), "150")).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::Validation(f)) => assert_eq!(f.field, "extension"),
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(db.store.list_users().await.unwrap().len(), 1);
}

async fn console_accounts(db: &TestDb) {
    let s = &db.store;
    let generated = s
        .ensure_admin(None)
        .await
        .unwrap()
        .expect("generated password");
    assert!(generated.len() >= 16);
    assert!(s.verify_console_login("admin", &generated).await.unwrap());
    assert!(!s.verify_console_login("admin", "wrong").await.unwrap());
    assert!(!s.verify_console_login("nobody", &generated).await.unwrap());
    assert_eq!(
        s.ensure_admin(None).await.unwrap(),
        None,
        "only the first start creates admin"
    );
    assert_eq!(s.ensure_admin(Some("other")).await.unwrap(), None);
    assert!(s.verify_console_login("admin", &generated).await.unwrap());

    s.set_console_password("admin", "new password")
        .await
        .unwrap();
    assert!(s
        .verify_console_login("admin", "new password")
        .await
        .unwrap());
    assert!(!s.verify_console_login("admin", &generated).await.unwrap());

    // Only a hash is stored.
    let raw = db.raw().await;
    let stored: Vec<(String,)> = sqlx::query_as("SELECT password_hash FROM console_accounts")
        .fetch_all(&raw)
        .await
        .unwrap();
    assert!(stored
        .iter()
        .all(|(h,)| h.starts_with("$argon2") && !h.contains("new password")));
    raw.close().await;
}

async fn console_sessions(db: &TestDb) {
    let s = &db.store;
    s.ensure_admin(Some("admin password")).await.unwrap();
    let (cookie, session) = s.create_session("admin").await.unwrap();
    assert_eq!(session.username, "admin");
    assert!(cookie.len() >= 40 && session.csrf_token.len() >= 32);
    assert_eq!(s.session(&cookie).await.unwrap(), Some(session.clone()));
    assert_eq!(s.session("not-a-cookie").await.unwrap(), None);
    assert_eq!(s.session(&"x".repeat(500)).await.unwrap(), None);

    // Only a digest of the cookie is stored.
    let raw = db.raw().await;
    let stored: Vec<(String,)> = sqlx::query_as("SELECT id_sha256 FROM console_sessions")
        .fetch_all(&raw)
        .await
        .unwrap();
    assert!(stored.iter().all(|(h,)| h.len() == 64 && *h != cookie));

    // A flash is read once.
    s.set_flash(&cookie, "Saved.").await.unwrap();
    assert_eq!(
        s.take_flash(&cookie).await.unwrap().as_deref(),
        Some("Saved.")
    );
    assert_eq!(s.take_flash(&cookie).await.unwrap(), None);

    // Idle sessions expire.
    sqlx::query("UPDATE console_sessions SET last_seen_at = last_seen_at - $1")
        .bind(confero_store::SESSION_IDLE_SECS + 10)
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;
    assert_eq!(s.session(&cookie).await.unwrap(), None);

    // Signing out elsewhere: every session but the kept one ends.
    let (a, _) = s.create_session("admin").await.unwrap();
    let (b, _) = s.create_session("admin").await.unwrap();
    assert_eq!(s.end_sessions_of("admin", Some(&a)).await.unwrap(), 1);
    assert!(s.session(&a).await.unwrap().is_some());
    assert!(s.session(&b).await.unwrap().is_none());
    s.end_session(&a).await.unwrap();
    assert!(s.session(&a).await.unwrap().is_none());
}

async fn account_management(db: &TestDb) {
    let s = &db.store;
    s.ensure_admin(Some("admin password")).await.unwrap();
    let err = s.create_console_account("ops", "short").await.unwrap_err();
    assert_eq!(field_of(err), ("validation", "password".into()));
    let err = s
        .create_console_account("bad name", "long enough password")
        .await
        .unwrap_err();
    assert_eq!(field_of(err), ("validation", "username".into()));
    let ops = s
        .create_console_account("ops", "long enough password")
        .await
        .unwrap();
    let err = s
        .create_console_account("ops", "another long password")
        .await
        .unwrap_err();
    assert_eq!(field_of(err), ("validation", "username".into()));
    let accounts = s.list_console_accounts().await.unwrap();
    assert_eq!(
        accounts
            .iter()
            .map(|a| a.username.as_str())
            .collect::<Vec<_>>(),
        ["admin", "ops"]
    );
    // Deleting an account ends its sessions; the last account cannot go.
    let (cookie, _) = s.create_session("ops").await.unwrap();
    s.delete_console_account(ops.id).await.unwrap();
    assert!(s.session(&cookie).await.unwrap().is_none());
    assert!(!s
        .verify_console_login("ops", "long enough password")
        .await
        .unwrap());
    let admin = s.list_console_accounts().await.unwrap()[0].id;
    let err = s.delete_console_account(admin).await.unwrap_err();
    assert_eq!(field_of(err), ("conflict", "id".into()));
    // Tokens are listed without their secret.
    s.create_token("ci").await.unwrap();
    let tokens = s.list_tokens().await.unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].name, "ci");
}

async fn api_tokens(db: &TestDb) {
    let s = &db.store;
    let (id1, t1) = s.create_token("ci").await.unwrap();
    let (id2, t2) = s.create_token("odoo").await.unwrap();
    assert_ne!(id1, id2);
    assert_ne!(t1, t2);
    assert!(s.verify_token(&t1).await.unwrap());
    assert!(s.verify_token(&t2).await.unwrap());
    assert!(!s.verify_token("confero_nope").await.unwrap());
    assert!(!s.verify_token("").await.unwrap());
    let raw = db.raw().await;
    let stored: Vec<(String,)> = sqlx::query_as("SELECT token_sha256 FROM api_tokens")
        .fetch_all(&raw)
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    assert!(stored
        .iter()
        .all(|(h,)| h.len() == 64 && *h != t1 && *h != t2));
    raw.close().await;
    assert!(s.delete_token(id1).await.unwrap());
    assert!(!s.verify_token(&t1).await.unwrap());
    assert!(!s.delete_token(id1).await.unwrap());
}

async fn registrar_bindings(db: &TestDb) {
    let s = &db.store;
    let mut b = StoredBinding {
        aor: "101".into(),
        contact_uri: "sip:101@192.0.2.10:5062".into(),
        expires_at_unix: 1_000,
        call_id: "abc".into(),
        cseq: 1,
        transport: "udp".into(),
        source: "192.0.2.10:5062".into(),
        user_agent: Some("Yealink".into()),
    };
    s.save_binding(&b).await.unwrap();
    b.cseq = u32::MAX;
    b.expires_at_unix = 2_000;
    b.user_agent = None;
    s.save_binding(&b).await.unwrap();
    let other = StoredBinding {
        contact_uri: "sip:101@198.51.100.7:5060;transport=ws".into(),
        expires_at_unix: 500,
        ..b.clone()
    };
    s.save_binding(&other).await.unwrap();
    let loaded = s.load_bindings().await.unwrap();
    assert_eq!(loaded.len(), 2);
    assert!(loaded.contains(&b), "upsert replaced the first binding");
    assert_eq!(s.delete_expired_bindings(1_000).await.unwrap(), 1);
    assert_eq!(s.load_bindings().await.unwrap(), vec![b.clone()]);
    s.delete_binding(&b.aor, &b.contact_uri).await.unwrap();
    assert!(s.load_bindings().await.unwrap().is_empty());
}

async fn state_survives_reconnect(db: &TestDb) {
    let s = &db.store;
    s.create_user(new_user("Alice", "101")).await.unwrap();
    let r1 = s.apply().await.unwrap();
    s.create_user(new_user("Bob", "102")).await.unwrap();
    let draft = s.draft().await.unwrap();
    // A second store on the same database (a restart, or another node); migrations are idempotent.
    let again = Store::connect(&db.url).await.unwrap();
    assert_eq!(again.production().await.unwrap(), Some(r1));
    assert_eq!(again.draft().await.unwrap(), draft);
    let ids: HashSet<i64> = draft.users.iter().map(|u| u.id).collect();
    let carol = again.create_user(new_user("Carol", "103")).await.unwrap();
    assert!(!ids.contains(&carol.id));
    again.close().await;
}

#[tokio::test]
async fn connect_refuses_unknown_schemes() {
    assert!(matches!(
        Store::connect("mysql://localhost/x").await,
        Err(StoreError::Database(_))
    ));
}

#[test]
fn database_name_is_replaced_in_postgres_urls() {
    assert_eq!(
        with_database("postgres://u:p@h:5/db?sslmode=disable", "t"),
        "postgres://u:p@h:5/t?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "t"), "postgres://h/t");
}
