//! Command line, environment and `confero.toml`, merged into one [`Settings`].
//!
//! Precedence is flag, then `CONFERO_<NAME>` environment variable (both handled by clap),
//! then the TOML file given with `--config`, then the embedded default. Every option is an
//! `Option` in [`ServeArgs`] so that "not given" can fall through to the file.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

/// Confero: a PBX whose heart is conference rooms.
#[derive(Debug, Parser)]
#[command(name = "confero", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the PBX (the default when no command is given).
    Serve(ServeArgs),
}

/// Options of `confero serve`; each is also an env var and a `confero.toml` key.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct ServeArgs {
    /// TOML file with any of these options as keys (e.g. `sip-listen = "0.0.0.0:5060"`).
    #[arg(long, env = "CONFERO_CONFIG")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,
    /// Directory for the SQLite database and generated files [default: ./confero-data].
    #[arg(long, env = "CONFERO_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// `postgres://…` URL to use instead of the embedded SQLite database.
    #[arg(long, env = "CONFERO_DATABASE_URL")]
    pub(crate) database_url: Option<String>,
    /// SIP over UDP and TCP [default: 0.0.0.0:5060].
    #[arg(long, env = "CONFERO_SIP_LISTEN")]
    pub(crate) sip_listen: Option<SocketAddr>,
    /// Console, REST API and SIP over WebSocket at /ws [default: 0.0.0.0:8080].
    #[arg(long, env = "CONFERO_HTTP_LISTEN")]
    pub(crate) http_listen: Option<SocketAddr>,
    /// The same over TLS (wss://…/ws for browsers); with --tls-cert and --tls-key, or,
    /// without them, a self-signed certificate made once in the data directory (for trials).
    #[arg(long, env = "CONFERO_HTTPS_LISTEN")]
    pub(crate) https_listen: Option<SocketAddr>,
    /// PEM certificate chain for --https-listen.
    #[arg(long, env = "CONFERO_TLS_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key for --https-listen.
    #[arg(long, env = "CONFERO_TLS_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
    /// UDP port range for RTP, as `LOW-HIGH` [default: 10000-20000].
    #[arg(long, env = "CONFERO_RTP_PORTS")]
    pub(crate) rtp_ports: Option<String>,
    /// Address put in SDP, Via and Contact [default: the address of the default route].
    #[arg(long, env = "CONFERO_PUBLIC_ADDRESS")]
    pub(crate) public_address: Option<IpAddr>,
    /// SIP domain(s) served, comma separated [default: any].
    #[arg(long, env = "CONFERO_DOMAIN", value_delimiter = ',')]
    pub(crate) domain: Option<Vec<String>>,
    /// Seconds without RTP after which a conference participant is hung up [default: 60].
    #[arg(long, env = "CONFERO_RTP_TIMEOUT")]
    pub(crate) rtp_timeout: Option<u64>,
    /// Digest algorithms to challenge with, in order: md5, sha-256 [default: md5]. Many
    /// phones (and SIP.js) handle only MD5 and some fail when offered another one.
    #[arg(long, env = "CONFERO_DIGEST", value_delimiter = ',')]
    pub(crate) digest: Option<Vec<String>>,
    /// PEM file of certificate authorities trusted for TLS trunks, besides the public web
    /// authorities built in (for a provider with a private CA).
    #[arg(long, env = "CONFERO_TRUNK_CA")]
    pub(crate) trunk_ca: Option<PathBuf>,
    /// Require `Authorization: Bearer TOKEN` on /metrics (otherwise anyone reaching the
    /// HTTP port reads it).
    #[arg(long, env = "CONFERO_METRICS_TOKEN")]
    pub(crate) metrics_token: Option<String>,
    /// Calls one user may have at once, each with its RTP port [default: 8]: one
    /// account, or one stolen password, cannot take the whole port range.
    #[arg(long, env = "CONFERO_MAX_CALLS_PER_USER")]
    pub(crate) max_calls_per_user: Option<u32>,
    /// Threads that carry audio, each with its own rooms [default: one per CPU core]. A
    /// room lives wholly on one thread; a new room goes to the least busy.
    #[arg(long, env = "CONFERO_MEDIA_THREADS")]
    pub(crate) media_threads: Option<usize>,
}

/// More media threads than this would each hold a handful of legs: no machine needs it.
const MAX_MEDIA_THREADS: usize = 256;

/// Why the settings could not be put together.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SettingsError {
    #[error("cannot read config file {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    ParseConfig {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("rtp-ports: {0}")]
    RtpPorts(String),
    #[error(
        "tls-cert and tls-key go together: give both, or neither for a self-signed certificate"
    )]
    TlsIncomplete,
    #[error("digest: unknown algorithm {0:?} (md5, sha-256)")]
    Digest(String),
    #[error("metrics-token: use at least 16 printable characters without spaces")]
    MetricsToken,
    #[error("max-calls-per-user: must be at least 1")]
    MaxCallsPerUser,
    #[error("media-threads: must be between 1 and {MAX_MEDIA_THREADS}")]
    MediaThreads,
}

/// Resolved settings the server runs with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) data_dir: PathBuf,
    pub(crate) database_url: Option<String>,
    pub(crate) sip_listen: SocketAddr,
    pub(crate) http_listen: SocketAddr,
    pub(crate) https: Option<HttpsSettings>,
    pub(crate) rtp_ports: RangeInclusive<u16>,
    pub(crate) public_address: Option<IpAddr>,
    pub(crate) domains: Vec<String>,
    pub(crate) digest: Vec<confero_sip::digest::Algorithm>,
    pub(crate) rtp_timeout: std::time::Duration,
    pub(crate) trunk_ca: Option<PathBuf>,
    pub(crate) metrics_token: Option<String>,
    pub(crate) max_calls_per_user: u32,
    pub(crate) media_threads: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct HttpsSettings {
    pub(crate) listen: SocketAddr,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    /// `cert` and `key` are ours to make (once) when missing.
    pub(crate) self_signed: bool,
}

impl ServeArgs {
    /// Fills every option not given on the command line or in the environment from `file`.
    fn or_file(self, file: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config,
            data_dir: self.data_dir.or(file.data_dir),
            database_url: self.database_url.or(file.database_url),
            sip_listen: self.sip_listen.or(file.sip_listen),
            http_listen: self.http_listen.or(file.http_listen),
            https_listen: self.https_listen.or(file.https_listen),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            rtp_ports: self.rtp_ports.or(file.rtp_ports),
            public_address: self.public_address.or(file.public_address),
            domain: self.domain.or(file.domain),
            digest: self.digest.or(file.digest),
            rtp_timeout: self.rtp_timeout.or(file.rtp_timeout),
            trunk_ca: self.trunk_ca.or(file.trunk_ca),
            metrics_token: self.metrics_token.or(file.metrics_token),
            max_calls_per_user: self.max_calls_per_user.or(file.max_calls_per_user),
            media_threads: self.media_threads.or(file.media_threads),
        }
    }

    /// Merges the config file (if any) and applies the defaults (README's Configuration table).
    pub(crate) fn resolve(self) -> Result<Settings, SettingsError> {
        let args = match self.config.clone() {
            Some(path) => {
                let file = read_config_file(&path)?;
                self.or_file(file)
            }
            None => self,
        };
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./confero-data"));
        let https = match (args.https_listen, args.tls_cert, args.tls_key) {
            (None, _, _) => None,
            (Some(listen), Some(cert), Some(key)) => Some(HttpsSettings {
                listen,
                cert,
                key,
                self_signed: false,
            }),
            (Some(listen), None, None) => Some(HttpsSettings {
                listen,
                cert: data_dir.join("tls").join("self-signed-cert.pem"),
                key: data_dir.join("tls").join("self-signed-key.pem"),
                self_signed: true,
            }),
            (Some(_), _, _) => return Err(SettingsError::TlsIncomplete),
        };
        let digest = args
            .digest
            .clone()
            .unwrap_or_else(|| vec!["md5".to_owned()])
            .iter()
            .map(|t| {
                confero_sip::digest::Algorithm::from_token(t.trim())
                    .ok_or_else(|| SettingsError::Digest(t.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metrics_token = match args.metrics_token {
            Some(t) if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(SettingsError::MetricsToken)
            }
            t => t,
        };
        let max_calls_per_user = match args.max_calls_per_user {
            Some(0) => return Err(SettingsError::MaxCallsPerUser),
            n => n.unwrap_or(8),
        };
        let media_threads = match args.media_threads {
            Some(n) if n == 0 || n > MAX_MEDIA_THREADS => return Err(SettingsError::MediaThreads),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        Ok(Settings {
            digest,
            media_threads,
            metrics_token,
            max_calls_per_user,
            trunk_ca: args.trunk_ca.clone(),
            rtp_timeout: std::time::Duration::from_secs(args.rtp_timeout.unwrap_or(60).max(1)),
            data_dir,
            database_url: args.database_url,
            sip_listen: args
                .sip_listen
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 5060))),
            http_listen: args
                .http_listen
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8080))),
            https,
            rtp_ports: parse_port_range(args.rtp_ports.as_deref().unwrap_or("10000-20000"))?,
            public_address: args.public_address,
            domains: args
                .domain
                .unwrap_or_default()
                .into_iter()
                .map(|d| d.trim().to_ascii_lowercase())
                .filter(|d| !d.is_empty())
                .collect(),
        })
    }
}

fn read_config_file(path: &Path) -> Result<ServeArgs, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::ReadConfig {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| SettingsError::ParseConfig {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// Parses `LOW-HIGH`; RTP wants an even start and room for at least one RTP/RTCP pair.
fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>, SettingsError> {
    let err = || SettingsError::RtpPorts(format!("expected LOW-HIGH, got {text:?}"));
    let (low, high) = text.split_once('-').ok_or_else(err)?;
    let low: u16 = low.trim().parse().map_err(|_| err())?;
    let high: u16 = high.trim().parse().map_err(|_| err())?;
    if low == 0 || high <= low {
        return Err(SettingsError::RtpPorts(format!(
            "{text:?}: LOW must be at least 1 and below HIGH"
        )));
    }
    Ok(low..=high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_design() {
        let s = ServeArgs::default().resolve().unwrap();
        assert_eq!(s.data_dir, PathBuf::from("./confero-data"));
        assert_eq!(s.sip_listen, "0.0.0.0:5060".parse().unwrap());
        assert_eq!(s.http_listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(s.rtp_ports, 10000..=20000);
        assert!(s.https.is_none() && s.domains.is_empty() && s.database_url.is_none());
    }

    #[test]
    fn file_fills_what_flags_leave_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confero.toml");
        std::fs::write(
            &path,
            "sip-listen = \"127.0.0.1:5070\"\nhttp-listen = \"127.0.0.1:9000\"\nrtp-ports = \"20000-20100\"\ndomain = [\"pbx.example.com\"]\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            http_listen: Some("127.0.0.1:9100".parse().unwrap()),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.sip_listen, "127.0.0.1:5070".parse().unwrap());
        assert_eq!(
            s.http_listen,
            "127.0.0.1:9100".parse().unwrap(),
            "flag wins"
        );
        assert_eq!(s.rtp_ports, 20000..=20100);
        assert_eq!(s.domains, vec!["pbx.example.com".to_string()]);
    }

    #[test]
    fn unknown_keys_and_bad_ranges_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confero.toml");
        std::fs::write(&path, "sip-lisen = \"127.0.0.1:5070\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        assert!(matches!(
            args.resolve(),
            Err(SettingsError::ParseConfig { .. })
        ));
        for bad in ["", "5-", "20000-10000", "0-10", "a-b"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
        let half = ServeArgs {
            https_listen: Some("127.0.0.1:8443".parse().unwrap()),
            tls_cert: Some("/etc/ssl/pbx.pem".into()),
            ..Default::default()
        };
        assert!(matches!(half.resolve(), Err(SettingsError::TlsIncomplete)));
        let trial = ServeArgs {
            https_listen: Some("127.0.0.1:8443".parse().unwrap()),
            data_dir: Some("/var/lib/confero".into()),
            ..Default::default()
        };
        let https = trial.resolve().unwrap().https.unwrap();
        assert!(https.self_signed);
        assert_eq!(
            https.cert,
            PathBuf::from("/var/lib/confero/tls/self-signed-cert.pem")
        );
    }

    #[test]
    fn env_and_flags_parse() {
        let cli = Cli::try_parse_from([
            "confero",
            "serve",
            "--sip-listen",
            "127.0.0.1:0",
            "--domain",
            "a.example,b.example",
        ])
        .unwrap();
        let Some(Command::Serve(args)) = cli.command else {
            panic!("serve expected")
        };
        assert_eq!(args.domain.unwrap().len(), 2);
    }
}
