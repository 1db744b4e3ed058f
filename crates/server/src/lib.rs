//! Confero's IO shell and the `confero` binary.
//!
//! Owns everything the sans-IO crates must not: sockets, the clock, tasks, the database
//! connection and the HTTP server. Start-up order: settings → store (migrations, admin
//! account) → production revision → sockets → engine task → HTTP; shutdown on SIGINT or
//! SIGTERM stops accepting, lets in-flight HTTP requests finish and stops the engine.

pub mod api;
mod cli;
mod console;
mod http;
mod limits;
mod live;
mod shell;
mod state;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use confero_pbx::config::Snapshot;
use confero_pbx::engine::{Engine, EngineSettings};
use confero_store::Store;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;

use crate::cli::{Cli, Command, Settings};
use crate::live::publish::LiveState;
use crate::shell::sip::{restore_binding, unix_now, SipShell};

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = match args.resolve() {
        Ok(s) => s,
        Err(err) => {
            eprintln!("confero: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("confero: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("confero: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything the HTTP listeners serve: the REST API, `/healthz`, `/metrics` and the
/// management console.
pub(crate) fn app(state: state::AppState) -> axum::Router {
    api::router(state.clone())
        .merge(console::router(state.clone()))
        .merge(http::ws::router(state))
        .layer(axum::middleware::map_response(security_headers))
}

/// Headers every answer carries, as a bank's site would: the console's pages run only our
/// own script and style, cannot be framed (clickjacking), are not sniffed into another
/// type, and leak no path to other sites.
async fn security_headers(mut resp: axum::response::Response) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
             form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// Binds UDP and TCP on the same port (port 0 picks one free for both).
async fn bind_sip(addr: SocketAddr) -> anyhow::Result<(UdpSocket, TcpListener)> {
    let mut last_err = None;
    for _ in 0..20 {
        let udp = bind_udp(addr).with_context(|| format!("cannot bind SIP UDP on {addr}"))?;
        let bound = udp.local_addr()?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(err) if addr.port() == 0 => last_err = Some(err),
            Err(err) => return Err(err).with_context(|| format!("cannot bind SIP TCP on {bound}")),
        }
    }
    Err(last_err.map_or_else(|| anyhow::anyhow!("no free SIP port"), anyhow::Error::from))
}

/// A UDP socket with a receive buffer large enough for a burst of REGISTERs (the kernel
/// default holds about a hundred; the kernel caps what we ask at `rmem_max`).
fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if let Err(err) = socket.set_recv_buffer_size(4 << 20) {
        tracing::debug!(%err, "could not enlarge the SIP UDP receive buffer");
    }
    socket.set_nonblocking(true)?;
    if let Err(err) = shell::stamped::enable(&socket) {
        // The overload guard then goes by how long the socket stays full alone.
        tracing::debug!(%err, "no receive times on the SIP UDP socket");
    }
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// The address phones should reach us at when none is configured: the listening address
/// if it is specific, else the source address the kernel would pick for the default route
/// (found with a UDP `connect`, which sends nothing).
fn advertised_ip(settings: &Settings, bound: SocketAddr) -> IpAddr {
    if let Some(ip) = settings.public_address {
        return ip;
    }
    if !bound.ip().is_unspecified() {
        return bound.ip();
    }
    StdUdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| {
            s.connect((Ipv4Addr::new(192, 0, 2, 1), 9))?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Waits for SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// the future is first polled: the ready line goes out before the server starts polling
/// it, and a supervisor's SIGTERM right after that line must stop the server gracefully,
/// not kill it by the signal's default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (term, int) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(term) => {},
                _ = wait(int) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down");
    }
}

/// Each conference leg holds one or two UDP sockets and each TCP phone a connection: the
/// usual soft limit of 1,024 descriptors would cap a server at a few hundred participants,
/// so raise it to the hard limit.
/// Returns the limit in force.
fn raise_descriptor_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => {
            tracing::debug!(limit = n, "open-file limit");
            n
        }
        Err(err) => {
            tracing::warn!(%err, "could not raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let descriptors = raise_descriptor_limit();
    // Each RTP port may hold an RTP and an RTCP socket.
    let rtp_sockets = u64::from(settings.rtp_ports.end() - settings.rtp_ports.start()) + 1;
    let limits = limits::ConnLimits::for_descriptors(descriptors, rtp_sockets);
    tracing::debug!(max = limits.max_total(), "stream connections allowed");
    let store = match &settings.database_url {
        Some(url) => Store::connect(url).await,
        None => Store::open_data_dir(&settings.data_dir).await,
    }
    .context("cannot open the configuration store")?;
    let admin_password = std::env::var("CONFERO_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    if let Some(generated) = store.ensure_admin(admin_password.as_deref()).await? {
        tracing::warn!("created console account `admin` with password: {generated}");
    }
    let snapshot = store.production().await?.unwrap_or_else(Snapshot::default);

    let (udp, tcp) = bind_sip(settings.sip_listen).await?;
    let sip_bound = udp.local_addr()?;
    let http = TcpListener::bind(settings.http_listen)
        .await
        .with_context(|| format!("cannot bind HTTP on {}", settings.http_listen))?;
    let http_bound = http.local_addr()?;
    let advertised = SocketAddr::new(advertised_ip(&settings, sip_bound), sip_bound.port());

    let mut secret = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut secret);
    let mut engine_settings = EngineSettings::new(advertised, secret);
    engine_settings.rtp_ports = settings.rtp_ports.clone();
    let reservations = Arc::new(shell::media::RtpReservations::new(sip_bound.ip()));
    engine_settings.port_reserver = Some(reservations.clone());
    engine_settings.digest_algorithms = settings.digest.clone();
    engine_settings.max_calls_per_user = settings.max_calls_per_user as usize;
    engine_settings.domains = settings.domains.clone();
    if let Some(d) = settings.domains.first() {
        engine_settings.realm = d.clone();
    }
    let now = Instant::now();
    let now_unix = unix_now();
    let mut engine = Engine::new(engine_settings, Arc::new(snapshot.clone()), now, now_unix);
    let mut restored = 0;
    for b in store.load_bindings().await? {
        if let Some(binding) = restore_binding(b, now, now_unix) {
            engine.restore_binding(binding);
            restored += 1;
        }
    }

    let (production_tx, production_rx) = watch::channel(Arc::new(snapshot));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (control_tx, control_rx) = tokio::sync::mpsc::channel(64);
    let live = Arc::new(LiveState::new(control_tx));
    let prompts = shell::media::load_prompts(&settings.data_dir.join("prompts"))?;
    let (media_ev_tx, media_ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let media_settings = shell::media::MediaSettings {
        reservations,
        public_ip: advertised.ip(),
        prompts: Arc::new(prompts),
        rtp_timeout: settings.rtp_timeout,
    };
    let (media, media_threads, media_clocks) =
        shell::media::MediaThreads::start(settings.media_threads, &media_settings, media_ev_tx)
            .context("cannot start the media threads")?;
    // Stream connections are shared: the SIP task owns TCP and TLS, the HTTP server
    // accepts WebSockets (`/ws`) and hands their messages to the same engine.
    let (input_tx, input_rx) = tokio::sync::mpsc::channel(4096);
    let conns = shell::ConnTable::new(
        input_tx,
        Some(trunk_tls(settings.trunk_ca.as_deref())?),
        limits.clone(),
    );
    let shell = SipShell {
        udp: Arc::new(udp),
        tcp,
        engine,
        store: store.clone(),
        production: production_rx,
        live: live.clone(),
        shutdown: shutdown_rx,
        media,
        media_events: media_ev_rx,
        control: control_rx,
        live_dirty: false,
        live_published_at: now,
        live_publish_cost: std::time::Duration::ZERO,
        backlog: shell::sip::Backlog::default(),
        cmsg: shell::stamped::cmsg_buffer(),
        published_security: confero_pbx::engine::SecurityStats::default(),
        conns: conns.clone(),
        input: input_rx,
    };
    let engine_task = tokio::spawn(shell.run());

    let (closing_tx, closing_rx) = watch::channel(false);
    let https_listener = match &settings.https {
        Some(https) => {
            if https.self_signed {
                let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
                names.push(advertised.ip().to_string());
                names.extend(settings.domains.iter().cloned());
                names.sort();
                names.dedup();
                ensure_self_signed(https, names)?;
            }
            let listener = std::net::TcpListener::bind(https.listen)
                .with_context(|| format!("cannot bind HTTPS on {}", https.listen))?;
            Some((https, listener))
        }
        None => None,
    };
    let endpoints = state::Endpoints {
        http: http_bound,
        https: match &https_listener {
            Some((_, l)) => Some(l.local_addr()?),
            None => None,
        },
        self_signed: settings.https.as_ref().is_some_and(|h| h.self_signed),
        advertised: advertised.ip(),
        domains: settings.domains.clone(),
    };
    let router = app(state::AppState::new(store, live, production_tx)
        .with_metrics_token(settings.metrics_token.clone())
        .with_connection_limits(limits.clone())
        .with_media_clocks(media_clocks)
        .with_shutdown(closing_rx)
        .with_websocket(conns)
        .with_endpoints(endpoints));
    let https = match https_listener {
        Some((https, listener)) => {
            Some(start_https(https, listener, router.clone(), limits.clone()).await?)
        }
        None => None,
    };
    let https_text = https
        .as_ref()
        .map(|(addr, _)| format!(" https={addr}"))
        .unwrap_or_default();
    let stop = shutdown_signal();
    // One line tests and operators can rely on, with the ports actually bound.
    println!(
        "confero ready: sip={sip_bound} (udp+tcp, advertised {advertised}) http={http_bound}{https_text} restored_registrations={restored}"
    );
    tracing::info!(%sip_bound, %http_bound, %advertised, rtp_ports = ?settings.rtp_ports, "listening");
    axum::serve(
        axum::serve::ListenerExt::tap_io(limits::LimitedListener::new(http, limits), |_| {}),
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        stop.await;
        let _ = closing_tx.send(true);
    })
    .await
    .context("HTTP server failed")?;
    if let Some((_, handle)) = https {
        handle.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    }
    let _ = shutdown_tx.send(true);
    let _ = engine_task.await;
    media_threads.stop();
    Ok(())
}

/// The TLS client for trunks: the public web authorities (Mozilla's list, built in, so a
/// fresh machine needs no CA package), plus the operator's own from `--trunk-ca`.
fn trunk_tls(extra_ca: Option<&std::path::Path>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .with_context(|| format!("cannot read trunk CA file {}", path.display()))?
        {
            let cert = cert.with_context(|| format!("bad PEM in {}", path.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("unusable CA certificate in {}", path.display()))?;
            added += 1;
        }
        anyhow::ensure!(
            added > 0,
            "no certificate in trunk CA file {}",
            path.display()
        );
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Makes the trial certificate once (kept, so a browser's exception for it holds across
/// restarts), for the names browsers may use to reach this server.
fn ensure_self_signed(https: &cli::HttpsSettings, names: Vec<String>) -> anyhow::Result<()> {
    if https.cert.exists() && https.key.exists() {
        return Ok(());
    }
    let made = rcgen::generate_simple_self_signed(names.clone())
        .context("cannot make a self-signed certificate")?;
    let dir = https.cert.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_private(&https.key, made.signing_key.serialize_pem().as_bytes())?;
    write_private(&https.cert, made.cert.pem().as_bytes())?;
    tracing::warn!(
        cert = %https.cert.display(),
        ?names,
        "HTTPS uses a self-signed certificate made for trials: browsers must accept it once \
         (open the console over https:// first); give --tls-cert and --tls-key in production"
    );
    Ok(())
}

/// Writes a file whole or not at all (temporary file, then rename), readable by us only.
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Serves the same router over TLS with the operator's PEM certificate and key.
async fn start_https(
    https: &cli::HttpsSettings,
    listener: std::net::TcpListener,
    router: axum::Router,
    limits: Arc<limits::ConnLimits>,
) -> anyhow::Result<(SocketAddr, axum_server::Handle)> {
    // ring is the provider compiled in; installing fails only if one is already set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&https.cert, &https.key)
        .await
        .with_context(|| {
            format!(
                "cannot load TLS certificate {} and key {}",
                https.cert.display(),
                https.key.display()
            )
        })?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
        .acceptor(limits::LimitedAcceptor { limits });
    let server = axum_server::from_tcp(listener)
        .acceptor(acceptor)
        .handle(handle.clone())
        .serve(
            router
                .layer(axum::Extension(http::auth::OverTls))
                .into_make_service_with_connect_info::<SocketAddr>(),
        );
    tokio::spawn(async move {
        if let Err(err) = server.await {
            tracing::error!(%err, "HTTPS server failed");
        }
    });
    Ok((bound, handle))
}
