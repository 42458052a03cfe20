//! The `[recording]` section of the configuration file and its validated form.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::crypt::{Key, KeyRing};
use super::{Format, Mode, name};
use crate::config::ConfigError;

/// Defaults of the `[recording]` section.
pub mod defaults {
    /// Directory under the state directory.
    pub const DIR: &str = "recordings";
    /// Format of new recordings.
    pub const FORMAT: &str = "wav";
    /// Mode of new recordings.
    pub const MODE: &str = "stereo";
    /// File name pattern.
    pub const NAME: &str = "{call}-{id}";
    /// Bytes of each worker's tap ring, KiB.
    pub const QUEUE_KIB: u32 = 4096;
    /// Jitter delay, ms.
    pub const JITTER_MS: u32 = 200;
    /// Opus bit rate per channel, bit/s.
    pub const OPUS_BITRATE: u32 = 24_000;
}

/// `[recording]` in the file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingSection {
    /// Directory of recordings and their index; relative to the state directory.
    pub dir: Option<String>,
    /// Default format: `wav`, `wav-ulaw`, `wav-alaw` or `opus`.
    pub format: Option<String>,
    /// Default mode: `stereo`, `mixed` or `per-leg`.
    pub mode: Option<String>,
    /// Default file name pattern.
    pub name: Option<String>,
    /// Recordings older than this many days are deleted (0: kept forever).
    pub retention_days: Option<u32>,
    /// Encrypt new recordings with this key id.
    pub encrypt_with: Option<String>,
    /// Keys by id, 64 hexadecimal digits each.
    pub keys: Option<BTreeMap<String, String>>,
    /// A file of keys, one `ID HEX` per line.
    pub key_file: Option<String>,
    /// Size of each media worker's tap ring, KiB.
    pub queue_kib: Option<u32>,
    /// How long the recorder waits for late packets, ms.
    pub jitter_ms: Option<u32>,
    /// Opus bit rate per channel, bit/s.
    pub opus_bitrate: Option<u32>,
}

/// The validated recording settings.
#[derive(Debug, Clone)]
pub struct RecordingConfig {
    /// Directory of recordings and their index.
    pub dir: PathBuf,
    /// Default format.
    pub format: Format,
    /// Default mode.
    pub mode: Mode,
    /// Default file name pattern.
    pub name: String,
    /// Retention in days (0: forever).
    pub retention_days: u32,
    /// Key id for new recordings (`None`: not encrypted).
    pub encrypt_with: Option<String>,
    /// Every configured key.
    pub keys: KeyRing,
    /// Bytes of each worker's tap ring.
    pub queue_bytes: usize,
    /// Jitter delay, ms.
    pub jitter_ms: u32,
    /// Opus bit rate per channel.
    pub opus_bitrate: u32,
}

impl RecordingConfig {
    /// Defaults under `state_dir`.
    #[must_use]
    pub fn defaults(state_dir: &Path) -> Self {
        RecordingConfig {
            dir: state_dir.join(defaults::DIR),
            format: Format::Wav,
            mode: Mode::Stereo,
            name: defaults::NAME.to_owned(),
            retention_days: 0,
            encrypt_with: None,
            keys: KeyRing::default(),
            queue_bytes: defaults::QUEUE_KIB as usize * 1024,
            jitter_ms: defaults::JITTER_MS,
            opus_bitrate: defaults::OPUS_BITRATE,
        }
    }

    /// Validates the section; relative paths are taken from `state_dir`.
    pub fn build(s: RecordingSection, state_dir: &Path) -> Result<Self, ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
        let mut c = Self::defaults(state_dir);
        if let Some(d) = s.dir {
            if d.is_empty() {
                return Err(invalid("recording.dir", "must not be empty".into()));
            }
            c.dir = state_dir.join(d);
        }
        if let Some(f) = s.format {
            c.format = Format::parse(&f).ok_or_else(|| {
                invalid(
                    "recording.format",
                    format!("`{f}` is not one of wav, wav-ulaw, wav-alaw, opus"),
                )
            })?;
        }
        if let Some(m) = s.mode {
            c.mode = Mode::parse(&m).ok_or_else(|| {
                invalid(
                    "recording.mode",
                    format!("`{m}` is not one of stereo, mixed, per-leg"),
                )
            })?;
        }
        if let Some(n) = s.name {
            name::check_pattern(&n).map_err(|e| invalid("recording.name", e))?;
            c.name = n;
        }
        c.retention_days = s.retention_days.unwrap_or(0);
        if c.retention_days > 36_500 {
            return Err(invalid(
                "recording.retention_days",
                format!("{} days is more than 100 years", c.retention_days),
            ));
        }
        for (id, hex) in s.keys.unwrap_or_default() {
            let key = Key::from_hex(&hex)
                .map_err(|e| invalid("recording.keys", format!("`{id}`: {e}")))?;
            c.keys
                .insert(&id, key)
                .map_err(|e| invalid("recording.keys", e))?;
        }
        if let Some(f) = s.key_file {
            let path = state_dir.join(&f);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                invalid(
                    "recording.key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            c.keys
                .parse_key_file(&text)
                .map_err(|e| invalid("recording.key_file", format!("{}: {e}", path.display())))?;
        }
        if let Some(k) = s.encrypt_with {
            if c.keys.get(&k).is_none() {
                return Err(invalid(
                    "recording.encrypt_with",
                    format!("no key `{k}` in `recording.keys` or `recording.key_file`"),
                ));
            }
            c.encrypt_with = Some(k);
        }
        if let Some(q) = s.queue_kib {
            if !(64..=1 << 20).contains(&q) {
                return Err(invalid(
                    "recording.queue_kib",
                    format!("{q} is not between 64 and 1048576"),
                ));
            }
            c.queue_bytes = q as usize * 1024;
        }
        if let Some(j) = s.jitter_ms {
            if !(20..=2000).contains(&j) {
                return Err(invalid(
                    "recording.jitter_ms",
                    format!("{j} is not between 20 and 2000"),
                ));
            }
            c.jitter_ms = j;
        }
        if let Some(b) = s.opus_bitrate {
            if !(6000..=256_000).contains(&b) {
                return Err(invalid(
                    "recording.opus_bitrate",
                    format!("{b} is not between 6000 and 256000"),
                ));
            }
            c.opus_bitrate = b;
        }
        Ok(c)
    }

    /// One line for the start-up log (no keys).
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "dir={} format={} mode={} retention_days={} encrypt_with={}",
            self.dir.display(),
            self.format.as_str(),
            self.mode.as_str(),
            self.retention_days,
            self.encrypt_with.as_deref().unwrap_or("none"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(text: &str) -> Result<RecordingConfig, ConfigError> {
        let s: RecordingSection = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "t".into(),
            message: e.to_string(),
        })?;
        RecordingConfig::build(s, Path::new("/state"))
    }

    #[test]
    fn defaults_and_values() {
        let c = build("").unwrap();
        assert_eq!(c.dir, Path::new("/state/recordings"));
        assert_eq!(c.format, Format::Wav);
        assert!(c.encrypt_with.is_none());
        let c = build(&format!(
            "dir = \"/abs\"\nformat = \"opus\"\nmode = \"per-leg\"\nretention_days = 90\n\
             encrypt_with = \"k1\"\nkeys = {{ k1 = \"{}\" }}\n",
            "ab".repeat(32)
        ))
        .unwrap();
        assert_eq!(c.dir, Path::new("/abs"));
        assert_eq!(c.mode, Mode::PerLeg);
        assert_eq!(c.encrypt_with.as_deref(), Some("k1"));
        assert!(!format!("{c:?}").contains("abab"), "keys never print");
    }

    #[test]
    fn bad_values_name_their_key() {
        let bad_id_key = format!("keys = {{ \"a/b\" = \"{}\" }}", "00".repeat(32));
        let cases: Vec<(&str, &str)> = vec![
            ("format = \"mp3\"", "recording.format"),
            ("mode = \"quad\"", "recording.mode"),
            ("encrypt_with = \"nope\"", "recording.encrypt_with"),
            ("keys = { k = \"12\" }", "recording.keys"),
            (&bad_id_key, "recording.keys"),
            ("queue_kib = 1", "recording.queue_kib"),
            ("jitter_ms = 0", "recording.jitter_ms"),
            ("key_file = \"/nonexistent/keys\"", "recording.key_file"),
            ("name = \"../x\"", "recording.name"),
            ("retention_days = 99999", "recording.retention_days"),
        ];
        for (text, key) in cases {
            let e = build(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(build("bogus = 1").is_err(), "unknown keys are rejected");
    }
}
