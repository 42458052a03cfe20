//! Configuration: embedded defaults, an optional TOML file, then command-line overrides.
//!
//! The file is parsed with unknown keys rejected, then validated once into [`Config`], whose
//! values are known to be usable (a port range is never empty, addresses parse, …). Every
//! error names the key at fault.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use crate::rt::DriverKind;

/// Largest configuration file accepted, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A configuration problem, naming the key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("config file {path} is too large ({size} bytes, at most {MAX_CONFIG_BYTES})")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The file is not valid TOML for this schema (syntax, unknown key, wrong type).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, with line and column.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid value for `{key}`: {message}")]
    Invalid {
        /// The key, as written in the file (`section.key`).
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// A media interface: the address sockets bind to, the address advertised in SDP, and an
/// optional name (`NAME/ADDR`, `ADDR!ADVERTISED`, as rtpengine's `--interface`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Logical name used by the NG `direction` option; `default` when none is given.
    pub name: String,
    /// Address media sockets bind to.
    pub local: IpAddr,
    /// Address written into SDP (differs from `local` behind NAT).
    pub advertised: IpAddr,
}

impl FromStr for Interface {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, rest) = match s.split_once('/') {
            Some((n, r)) if !n.is_empty() && !n.contains(':') && n.parse::<IpAddr>().is_err() => {
                (n.to_owned(), r)
            }
            _ => ("default".to_owned(), s),
        };
        let (local, advertised) = match rest.split_once('!') {
            Some((l, a)) => (l, a),
            None => (rest, rest),
        };
        let parse = |v: &str| {
            v.trim_matches(|c| c == '[' || c == ']')
                .parse::<IpAddr>()
                .map_err(|_| format!("`{v}` is not an IP address (in interface `{s}`)"))
        };
        let local = parse(local)?;
        let advertised = parse(advertised)?;
        if local.is_ipv4() != advertised.is_ipv4() {
            return Err(format!(
                "interface `{s}`: local and advertised addresses are of different families"
            ));
        }
        Ok(Interface {
            name,
            local,
            advertised,
        })
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.name, self.local)?;
        if self.advertised != self.local {
            write!(f, "!{}", self.advertised)?;
        }
        Ok(())
    }
}

/// The TOML file as written: every field optional, unknown keys rejected.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[media]`
    #[serde(default)]
    pub media: MediaSection,
    /// `[ng]`
    #[serde(default)]
    pub ng: NgSection,
    /// `[control]`
    #[serde(default)]
    pub control: ControlSection,
    /// `[http]`
    #[serde(default)]
    pub http: HttpSection,
    /// `[state]`
    #[serde(default)]
    pub state: StateSection,
    /// `[log]`
    #[serde(default)]
    pub log: LogSection,
    /// `[recording]`
    #[serde(default)]
    pub recording: crate::record::RecordingSection,
    /// `[acd]`
    #[serde(default)]
    pub acd: AcdSection,
    /// `[cdr]`
    #[serde(default)]
    pub cdr: CdrSection,
}

/// `[cdr]` in the file: call detail records.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdrSection {
    /// Records (database rows and JSON-lines files) older than this many days are deleted;
    /// absent or 0 keeps everything.
    pub retention_days: Option<u32>,
    /// A JSON-lines file is closed and a new one started past this size, MiB (1 to 4096;
    /// default 64).
    pub max_file_mib: Option<u64>,
}

/// `[acd]` in the file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcdSection {
    /// Router shards (threads); tenants map to them by a hash of their name. Absent or 0:
    /// one per four cores, at least one.
    pub shards: Option<u32>,
}

/// The most ACD router shards.
pub const MAX_ACD_SHARDS: u32 = 64;

/// `[media]` in the file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSection {
    /// Media interfaces (`ADDR`, `NAME/ADDR`, `ADDR!ADVERTISED`).
    pub interfaces: Option<Vec<String>>,
    /// Lowest RTP port.
    pub port_min: Option<u32>,
    /// Highest RTP/RTCP port.
    pub port_max: Option<u32>,
    /// Media worker threads; 0 means one per core.
    pub workers: Option<u32>,
    /// `auto`, `io_uring` or `epoll`.
    pub driver: Option<DriverKind>,
    /// Seconds without media before a call is torn down.
    pub timeout: Option<u64>,
    /// Seconds a released port pair stays unused.
    pub port_quarantine: Option<u64>,
    /// Seconds a deleted call lingers (NG `delete delay` default).
    pub delete_delay: Option<u64>,
    /// Seconds existing calls may keep flowing after SIGTERM.
    pub drain_grace: Option<u64>,
    /// io_uring wake-up coalescing under load, in microseconds (0: off).
    pub coalesce_us: Option<u64>,
    /// Conference members per call (legs created with `hears: "all"`).
    pub conference_max_members: Option<u32>,
    /// Most MiB of decoded prompt audio kept in memory.
    pub prompt_cache_mb: Option<u64>,
    /// Largest prompt file read, MiB.
    pub prompt_max_file_mb: Option<u64>,
}

/// `[ng]` in the file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NgSection {
    /// UDP and TCP address of the NG control socket.
    pub listen: Option<String>,
}

/// `[control]` in the file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// TCP address of the native control protocol.
    pub listen: Option<String>,
    /// Unix socket path of the native control protocol (empty string: none).
    pub unix: Option<String>,
    /// Bearer token required on TCP connections when set.
    pub token: Option<String>,
}

/// `[http]` in the file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// HTTP address (metrics, health, recordings).
    pub listen: Option<String>,
    /// Bearer token required when set.
    pub token: Option<String>,
}

/// `[state]` in the file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// Directory for recordings and the embedded database.
    pub dir: Option<String>,
}

/// `[log]` in the file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// A `tracing` filter such as `info` or `switchboard=debug`.
    pub level: Option<String>,
}

/// The validated configuration the engine runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Media interfaces; the first is the default.
    pub interfaces: Vec<Interface>,
    /// Lowest port of the media range (even).
    pub port_min: u16,
    /// Highest port of the media range.
    pub port_max: u16,
    /// Media worker threads (at least 1).
    pub workers: usize,
    /// I/O driver choice.
    pub driver: DriverKind,
    /// Media timeout in seconds.
    pub timeout_s: u64,
    /// Port quarantine in seconds.
    pub port_quarantine_s: u64,
    /// Default NG delete delay in seconds.
    pub delete_delay_s: u64,
    /// Grace period after SIGTERM in seconds.
    pub drain_grace_s: u64,
    /// io_uring wake-up coalescing under load (zero: off).
    pub coalesce: std::time::Duration,
    /// NG control address (UDP and TCP).
    pub listen_ng: SocketAddr,
    /// Native control TCP address.
    pub listen_control: SocketAddr,
    /// Native control Unix socket, if any.
    pub control_unix: Option<PathBuf>,
    /// Token for native control over TCP.
    pub control_token: Option<String>,
    /// HTTP address.
    pub listen_http: SocketAddr,
    /// Token for HTTP.
    pub http_token: Option<String>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Log filter.
    pub log_level: String,
    /// Recording settings.
    pub recording: crate::record::RecordingConfig,
    /// Conferences and prompts.
    pub media: crate::media::MediaSettings,
    /// ACD router shards (at least 1).
    pub acd_shards: usize,
    /// Call detail records kept this many days (0: forever).
    pub cdr_retention_days: u32,
    /// Size of a call detail record JSON-lines file before a new one starts, bytes.
    pub cdr_max_file_bytes: u64,
}

/// Overrides from the command line, applied over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--interface` (repeatable; replaces the file's list when given).
    pub interfaces: Vec<String>,
    /// `--listen-ng`
    pub listen_ng: Option<String>,
    /// `--listen-control`
    pub listen_control: Option<String>,
    /// `--listen-http`
    pub listen_http: Option<String>,
    /// `--port-min`
    pub port_min: Option<u32>,
    /// `--port-max`
    pub port_max: Option<u32>,
    /// `--workers`
    pub workers: Option<u32>,
    /// `--driver`
    pub driver: Option<DriverKind>,
    /// `--timeout`
    pub timeout: Option<u64>,
    /// `--state-dir`
    pub state_dir: Option<String>,
    /// `--coalesce-us`
    pub coalesce_us: Option<u64>,
}

/// Defaults, as documented in the README and `docs/operations.md`.
pub mod defaults {
    /// Media interface.
    pub const INTERFACE: &str = "127.0.0.1";
    /// Lowest media port.
    pub const PORT_MIN: u32 = 30000;
    /// Highest media port.
    pub const PORT_MAX: u32 = 39999;
    /// Media timeout, seconds.
    pub const TIMEOUT_S: u64 = 60;
    /// Port quarantine, seconds.
    pub const PORT_QUARANTINE_S: u64 = 5;
    /// NG delete delay, seconds.
    pub const DELETE_DELAY_S: u64 = 30;
    /// Drain grace after SIGTERM, seconds.
    pub const DRAIN_GRACE_S: u64 = 10;
    /// io_uring wake-up coalescing under load, microseconds.
    pub const COALESCE_US: u64 = 300;
    /// NG address.
    pub const LISTEN_NG: &str = "127.0.0.1:2223";
    /// Native control address.
    pub const LISTEN_CONTROL: &str = "127.0.0.1:7070";
    /// Native control Unix socket, inside the state directory.
    pub const CONTROL_UNIX: &str = "switchboard.sock";
    /// HTTP address.
    pub const LISTEN_HTTP: &str = "127.0.0.1:8080";
    /// State directory.
    pub const STATE_DIR: &str = "./var";
    /// Log filter.
    pub const LOG_LEVEL: &str = "info";
    /// Conference members per call.
    pub const CONFERENCE_MAX_MEMBERS: u32 = 500;
    /// Prompt cache, MiB.
    pub const PROMPT_CACHE_MB: u64 = 64;
    /// Largest prompt file, MiB.
    pub const PROMPT_MAX_FILE_MB: u64 = 32;
}

impl ConfigFile {
    /// Reads and parses a TOML file; unknown keys and wrong types are errors.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
                size: meta.len(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<ConfigFile, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }
}

fn parse_addr(key: &'static str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| ConfigError::Invalid {
        key,
        message: format!("`{v}` is not an address of the form IP:PORT"),
    })
}

fn port(key: &'static str, v: u32) -> Result<u16, ConfigError> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p >= 1024)
        .ok_or(ConfigError::Invalid {
            key,
            message: format!("{v} is not a port between 1024 and 65535"),
        })
}

impl Config {
    /// Validates a file plus overrides into a runnable configuration.
    pub fn build(file: ConfigFile, ov: Overrides) -> Result<Config, ConfigError> {
        let ifaces: Vec<String> = if !ov.interfaces.is_empty() {
            ov.interfaces
        } else {
            file.media
                .interfaces
                .unwrap_or_else(|| vec![defaults::INTERFACE.to_owned()])
        };
        if ifaces.is_empty() {
            return Err(ConfigError::Invalid {
                key: "media.interfaces",
                message: "at least one interface is needed".into(),
            });
        }
        let interfaces = ifaces
            .iter()
            .map(|s| {
                s.parse::<Interface>()
                    .map_err(|message| ConfigError::Invalid {
                        key: "media.interfaces",
                        message,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let port_min = port(
            "media.port_min",
            ov.port_min
                .or(file.media.port_min)
                .unwrap_or(defaults::PORT_MIN),
        )?;
        let port_max = port(
            "media.port_max",
            ov.port_max
                .or(file.media.port_max)
                .unwrap_or(defaults::PORT_MAX),
        )?;
        // Round the minimum up to an even port: RTP takes even ports, RTCP the odd one above.
        let port_min_even = port_min + (port_min & 1);
        if port_max <= port_min_even {
            return Err(ConfigError::Invalid {
                key: "media.port_max",
                message: format!(
                    "the port range {port_min}-{port_max} holds no even/odd RTP/RTCP pair"
                ),
            });
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = match ov.workers.or(file.media.workers).unwrap_or(0) {
            0 => cores,
            n if n > 1024 => {
                return Err(ConfigError::Invalid {
                    key: "media.workers",
                    message: format!("{n} workers is more than 1024"),
                });
            }
            n => n as usize,
        };
        let pairs = usize::from((port_max - port_min_even).div_ceil(2));
        if pairs < workers {
            return Err(ConfigError::Invalid {
                key: "media.port_max",
                message: format!(
                    "the port range holds {pairs} pairs, fewer than the {workers} workers"
                ),
            });
        }
        let timeout_s = ov
            .timeout
            .or(file.media.timeout)
            .unwrap_or(defaults::TIMEOUT_S);
        if timeout_s == 0 || timeout_s > 86_400 {
            return Err(ConfigError::Invalid {
                key: "media.timeout",
                message: format!("{timeout_s} s is not between 1 and 86400"),
            });
        }
        let coalesce_us = ov
            .coalesce_us
            .or(file.media.coalesce_us)
            .unwrap_or(defaults::COALESCE_US);
        if coalesce_us > 10_000 {
            return Err(ConfigError::Invalid {
                key: "media.coalesce_us",
                message: format!("{coalesce_us} µs is more than 10000"),
            });
        }
        let listen_ng = parse_addr(
            "ng.listen",
            ov.listen_ng
                .as_deref()
                .or(file.ng.listen.as_deref())
                .unwrap_or(defaults::LISTEN_NG),
        )?;
        let listen_control = parse_addr(
            "control.listen",
            ov.listen_control
                .as_deref()
                .or(file.control.listen.as_deref())
                .unwrap_or(defaults::LISTEN_CONTROL),
        )?;
        let listen_http = parse_addr(
            "http.listen",
            ov.listen_http
                .as_deref()
                .or(file.http.listen.as_deref())
                .unwrap_or(defaults::LISTEN_HTTP),
        )?;
        let state_dir = PathBuf::from(
            ov.state_dir
                .clone()
                .or_else(|| file.state.dir.clone())
                .unwrap_or_else(|| defaults::STATE_DIR.to_owned()),
        );
        let control_unix = match file.control.unix.as_deref() {
            None => Some(state_dir.join(defaults::CONTROL_UNIX)),
            Some("") => None,
            Some(p) => Some(PathBuf::from(p)),
        };
        let token = |key: &'static str, t: Option<String>| match t {
            Some(t) if t.is_empty() || t.len() > 4096 || t.chars().any(char::is_whitespace) => {
                Err(ConfigError::Invalid {
                    key,
                    message: "a token must be 1 to 4096 characters without whitespace".into(),
                })
            }
            t => Ok(t),
        };
        let log_level = file
            .log
            .level
            .unwrap_or_else(|| defaults::LOG_LEVEL.to_owned());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(ConfigError::Invalid {
                key: "log.level",
                message: format!("`{log_level}` is not a log filter"),
            });
        }
        let recording = crate::record::RecordingConfig::build(
            file.recording,
            Path::new(
                ov.state_dir
                    .as_deref()
                    .or(file.state.dir.as_deref())
                    .unwrap_or(defaults::STATE_DIR),
            ),
        )?;
        let max_members = file
            .media
            .conference_max_members
            .unwrap_or(defaults::CONFERENCE_MAX_MEMBERS);
        if max_members == 0 || max_members > 10_000 {
            return Err(ConfigError::Invalid {
                key: "media.conference_max_members",
                message: format!("{max_members} is not between 1 and 10000"),
            });
        }
        let mb = |key: &'static str, v: Option<u64>, default: u64, max: u64| match v
            .unwrap_or(default)
        {
            n if n <= max => Ok(n * 1024 * 1024),
            n => Err(ConfigError::Invalid {
                key,
                message: format!("{n} MiB is more than {max}"),
            }),
        };
        let media = crate::media::MediaSettings {
            max_members: max_members as usize,
            prompts: crate::media::prompts::PromptConfig {
                cache_bytes: mb(
                    "media.prompt_cache_mb",
                    file.media.prompt_cache_mb,
                    defaults::PROMPT_CACHE_MB,
                    65_536,
                )?,
                max_file_bytes: mb(
                    "media.prompt_max_file_mb",
                    file.media.prompt_max_file_mb,
                    defaults::PROMPT_MAX_FILE_MB,
                    4096,
                )?,
            },
        };
        let acd_shards = match file.acd.shards.unwrap_or(0) {
            0 => (cores / 4).max(1),
            n if n > MAX_ACD_SHARDS => {
                return Err(ConfigError::Invalid {
                    key: "acd.shards",
                    message: format!("{n} shards is more than {MAX_ACD_SHARDS}"),
                });
            }
            n => n as usize,
        };
        let cdr_max_file_bytes = match file.cdr.max_file_mib {
            Some(0) => {
                return Err(ConfigError::Invalid {
                    key: "cdr.max_file_mib",
                    message: "0 MiB is less than 1".into(),
                });
            }
            v => mb("cdr.max_file_mib", v, 64, 4096)?,
        };
        Ok(Config {
            cdr_retention_days: file.cdr.retention_days.unwrap_or(0),
            cdr_max_file_bytes,
            interfaces,
            port_min: port_min_even,
            port_max,
            workers,
            driver: ov.driver.or(file.media.driver).unwrap_or_default(),
            timeout_s,
            port_quarantine_s: file
                .media
                .port_quarantine
                .unwrap_or(defaults::PORT_QUARANTINE_S),
            delete_delay_s: file.media.delete_delay.unwrap_or(defaults::DELETE_DELAY_S),
            drain_grace_s: file.media.drain_grace.unwrap_or(defaults::DRAIN_GRACE_S),
            coalesce: std::time::Duration::from_micros(coalesce_us),
            listen_ng,
            listen_control,
            control_unix,
            control_token: token("control.token", file.control.token)?,
            listen_http,
            http_token: token("http.token", file.http.token)?,
            state_dir,
            log_level,
            recording,
            media,
            acd_shards,
        })
    }

    /// Loads `path` (if any), applies overrides and validates.
    pub fn load(path: Option<&Path>, ov: Overrides) -> Result<Config, ConfigError> {
        let file = match path {
            Some(p) => ConfigFile::load(p)?,
            None => ConfigFile::default(),
        };
        Config::build(file, ov)
    }

    /// One line per setting, for the start-up log and `check-config`.
    #[must_use]
    pub fn summary(&self) -> String {
        let ifaces: Vec<String> = self.interfaces.iter().map(ToString::to_string).collect();
        format!(
            "interfaces={} ports={}-{} workers={} driver={} timeout={}s ng={} control={} \
             control_unix={} http={} state_dir={} log={}",
            ifaces.join(","),
            self.port_min,
            self.port_max,
            self.workers,
            self.driver,
            self.timeout_s,
            self.listen_ng,
            self.listen_control,
            self.control_unix
                .as_deref()
                .map_or_else(|| "none".into(), |p| p.display().to_string()),
            self.listen_http,
            self.state_dir.display(),
            self.log_level,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(text: &str) -> Result<Config, ConfigError> {
        Config::build(
            ConfigFile::parse(text).map_err(|message| ConfigError::Parse {
                path: "t".into(),
                message,
            })?,
            Overrides::default(),
        )
    }

    #[test]
    fn defaults_are_valid() {
        let c = build("").unwrap();
        assert_eq!(c.listen_ng, "127.0.0.1:2223".parse().unwrap());
        assert_eq!(c.port_min, 30000);
        assert_eq!(c.port_max, 39999);
        assert!(c.workers >= 1);
        assert_eq!(c.driver, DriverKind::Auto);
    }

    #[test]
    fn acd_shards_default_and_bounds() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(build("").unwrap().acd_shards, (cores / 4).max(1));
        assert_eq!(
            build("[acd]\nshards = 0\n").unwrap().acd_shards,
            (cores / 4).max(1)
        );
        assert_eq!(build("[acd]\nshards = 3\n").unwrap().acd_shards, 3);
        assert!(build("[acd]\nshards = 65\n").is_err());
        assert!(build("[acd]\nshard = 2\n").is_err());
    }

    #[test]
    fn media_settings() {
        let c = build("").unwrap();
        assert_eq!(c.media.max_members, 500);
        assert_eq!(c.media.prompts.cache_bytes, 64 * 1024 * 1024);
        assert_eq!(c.media.prompts.max_file_bytes, 32 * 1024 * 1024);
        let c = build("[media]\nconference_max_members = 3\nprompt_cache_mb = 1\n").unwrap();
        assert_eq!(c.media.max_members, 3);
        assert_eq!(c.media.prompts.cache_bytes, 1024 * 1024);
        assert!(build("[media]\nconference_max_members = 0\n").is_err());
        assert!(build("[media]\nprompt_max_file_mb = 99999\n").is_err());
        let c = build("[cdr]\nretention_days = 30\nmax_file_mib = 8\n").unwrap();
        assert_eq!((c.cdr_retention_days, c.cdr_max_file_bytes), (30, 8 << 20));
        let c = build("").unwrap();
        assert_eq!((c.cdr_retention_days, c.cdr_max_file_bytes), (0, 64 << 20));
        assert!(build("[cdr]\nmax_file_mib = 0\n").is_err());
        assert!(build("[cdr]\nmax_file_mib = 5000\n").is_err());
        assert!(build("[cdr]\nkeep = 1\n").is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = build("[media]\nport_mni = 3\n").unwrap_err().to_string();
        assert!(e.contains("port_mni"), "{e}");
        let e = build("bogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn wrong_types_and_ranges_are_rejected() {
        assert!(build("[media]\nport_min = \"x\"\n").is_err());
        assert!(build("[media]\nport_min = 40000\nport_max = 30000\n").is_err());
        assert!(build("[media]\nport_min = 70000\n").is_err());
        assert!(build("[media]\nport_min = 30001\nport_max = 30002\n").is_err());
        assert!(build("[media]\ndriver = \"dpdk\"\n").is_err());
        assert!(build("[media]\ntimeout = 0\n").is_err());
        assert!(build("[ng]\nlisten = \"nowhere\"\n").is_err());
        assert!(build("[http]\ntoken = \"a b\"\n").is_err());
        assert!(build("[log]\nlevel = \"[[[\"\n").is_err());
        assert!(build("[media]\ninterfaces = []\n").is_err());
        assert!(build("not toml at all ===").is_err());
    }

    #[test]
    fn odd_port_min_rounds_up() {
        let c = build("[media]\nport_min = 30001\nport_max = 30010\nworkers = 2\n").unwrap();
        assert_eq!(c.port_min, 30002);
    }

    #[test]
    fn interfaces_parse_like_rtpengine() {
        let i: Interface = "pub/10.0.0.1!203.0.113.7".parse().unwrap();
        assert_eq!(i.name, "pub");
        assert_eq!(i.local, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(i.advertised, "203.0.113.7".parse::<IpAddr>().unwrap());
        let i: Interface = "::1".parse().unwrap();
        assert_eq!(i.name, "default");
        assert!(i.local.is_ipv6());
        let i: Interface = "v6/[::1]".parse().unwrap();
        assert_eq!(i.name, "v6");
        assert!("127.0.0.1!::1".parse::<Interface>().is_err());
        assert!("x/y".parse::<Interface>().is_err());
    }

    #[test]
    fn overrides_win() {
        let ov = Overrides {
            listen_ng: Some("127.0.0.1:9999".into()),
            driver: Some(DriverKind::Epoll),
            workers: Some(3),
            ..Overrides::default()
        };
        let c = Config::build(
            ConfigFile::parse("[ng]\nlisten = \"127.0.0.1:1\"\n").unwrap(),
            ov,
        )
        .unwrap();
        assert_eq!(c.listen_ng.port(), 9999);
        assert_eq!(c.driver, DriverKind::Epoll);
        assert_eq!(c.workers, 3);
    }
}
