//! The recordings index: one SQLite table (rusqlite, bundled SQLite) in the recordings
//! directory, written by the recorder threads (new rows, pauses, metadata) and the store thread
//! (finished, repaired, deleted rows), read by HTTP. WAL journal, so readers never wait for
//! writers; each thread opens its own connection.
//!
//! Listing is keyset-paginated, newest first: the cursor is the `(start, seq)` of the last row
//! returned, so pages stay stable while recordings are added.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use serde_json::{Value, json};

use super::datetime;

/// File name of the index inside the recordings directory.
pub const INDEX_FILE: &str = "index.sqlite";
/// Most rows one listing returns.
pub const MAX_LIMIT: u32 = 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS recordings (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    call_id      TEXT NOT NULL,
    name         TEXT NOT NULL,
    file         TEXT NOT NULL UNIQUE,
    legs         TEXT NOT NULL,
    agent        TEXT,
    queue        TEXT,
    mode         TEXT NOT NULL,
    format       TEXT NOT NULL,
    channels     INTEGER NOT NULL,
    sample_rate  INTEGER NOT NULL,
    state        TEXT NOT NULL,
    start_us     INTEGER NOT NULL,
    end_us       INTEGER,
    duration_ms  INTEGER,
    size         INTEGER,
    stored_size  INTEGER,
    sha256       TEXT,
    key_id       TEXT,
    pauses       TEXT NOT NULL DEFAULT '[]',
    metadata     TEXT NOT NULL DEFAULT '{}',
    stop_reason  TEXT,
    error        TEXT
);
CREATE INDEX IF NOT EXISTS recordings_call ON recordings (call_id, start_us);
CREATE INDEX IF NOT EXISTS recordings_agent ON recordings (agent, start_us);
CREATE INDEX IF NOT EXISTS recordings_queue ON recordings (queue, start_us);
CREATE INDEX IF NOT EXISTS recordings_start ON recordings (start_us, seq);
CREATE INDEX IF NOT EXISTS recordings_state ON recordings (state);
";

/// Lifecycle of a row.
pub mod state {
    /// Being written.
    pub const RECORDING: &str = "recording";
    /// Stopped and closed normally.
    pub const COMPLETE: &str = "complete";
    /// Found unfinished at start-up (the engine died while writing) and repaired.
    pub const REPAIRED: &str = "repaired";
    /// Could not be written or repaired; `error` says why.
    pub const FAILED: &str = "failed";
}

/// One recording as indexed.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordingRow {
    /// Insertion order (tie-breaker of the listing order).
    pub seq: i64,
    /// Recording id.
    pub id: String,
    /// NG call-id.
    pub call_id: String,
    /// Download file name.
    pub name: String,
    /// Path relative to the recordings directory.
    pub file: String,
    /// The recorded legs (JSON array).
    pub legs: Value,
    /// Agent, from the metadata.
    pub agent: Option<String>,
    /// Queue, from the metadata.
    pub queue: Option<String>,
    /// `stereo`, `mixed` or `leg`.
    pub mode: String,
    /// `wav`, `wav-ulaw`, `wav-alaw` or `opus`.
    pub format: String,
    /// Audio channels.
    pub channels: u32,
    /// Samples per second.
    pub sample_rate: u32,
    /// See [`state`].
    pub state: String,
    /// Start, µs since the Unix epoch.
    pub start_us: i64,
    /// End, µs since the Unix epoch.
    pub end_us: Option<i64>,
    /// Audio duration.
    pub duration_ms: Option<i64>,
    /// Bytes of the audio file as downloaded (decrypted).
    pub size: Option<i64>,
    /// Bytes on disk.
    pub stored_size: Option<i64>,
    /// SHA-256 of the audio file as downloaded, hex.
    pub sha256: Option<String>,
    /// Encryption key id, when encrypted.
    pub key_id: Option<String>,
    /// Pauses (JSON array of `{at_ms, duration_ms}`).
    pub pauses: Value,
    /// Caller-supplied metadata (JSON object).
    pub metadata: Value,
    /// Why it stopped.
    pub stop_reason: Option<String>,
    /// What went wrong, for failed rows.
    pub error: Option<String>,
}

impl RecordingRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        let json_col = |i: usize| -> rusqlite::Result<Value> {
            let s: String = r.get(i)?;
            Ok(serde_json::from_str(&s).unwrap_or(Value::Null))
        };
        Ok(RecordingRow {
            seq: r.get(0)?,
            id: r.get(1)?,
            call_id: r.get(2)?,
            name: r.get(3)?,
            file: r.get(4)?,
            legs: json_col(5)?,
            agent: r.get(6)?,
            queue: r.get(7)?,
            mode: r.get(8)?,
            format: r.get(9)?,
            channels: r.get(10)?,
            sample_rate: r.get(11)?,
            state: r.get(12)?,
            start_us: r.get(13)?,
            end_us: r.get(14)?,
            duration_ms: r.get(15)?,
            size: r.get(16)?,
            stored_size: r.get(17)?,
            sha256: r.get(18)?,
            key_id: r.get(19)?,
            pauses: json_col(20)?,
            metadata: json_col(21)?,
            stop_reason: r.get(22)?,
            error: r.get(23)?,
        })
    }

    /// The JSON form served by HTTP.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let time = |us: i64| datetime::format_micros(u64::try_from(us).unwrap_or(0));
        json!({
            "id": self.id,
            "call": self.call_id,
            "name": self.name,
            "file": self.file,
            "legs": self.legs,
            "agent": self.agent,
            "queue": self.queue,
            "mode": self.mode,
            "format": self.format,
            "content_type": super::Format::parse(&self.format).map_or("application/octet-stream", super::Format::content_type),
            "channels": self.channels,
            "sample_rate": self.sample_rate,
            "state": self.state,
            "start": time(self.start_us),
            "end": self.end_us.map(time),
            "duration_ms": self.duration_ms,
            "size": self.size,
            "sha256": self.sha256,
            "encrypted": self.key_id.is_some(),
            "key_id": self.key_id,
            "pauses": self.pauses,
            "metadata": self.metadata,
            "stop_reason": self.stop_reason,
            "error": self.error,
        })
    }
}

const COLUMNS: &str = "seq, id, call_id, name, file, legs, agent, queue, mode, format, channels, \
     sample_rate, state, start_us, end_us, duration_ms, size, stored_size, sha256, key_id, \
     pauses, metadata, stop_reason, error";

/// A listing request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only this call.
    pub call: Option<String>,
    /// Only this agent.
    pub agent: Option<String>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Started at or after, µs since the epoch.
    pub from_us: Option<i64>,
    /// Started before, µs since the epoch.
    pub to_us: Option<i64>,
    /// Rows per page (1..=[`MAX_LIMIT`]).
    pub limit: u32,
    /// Continue after this position (from a previous page's cursor).
    pub after: Option<(i64, i64)>,
}

/// Parses a cursor returned by [`Index::list`].
#[must_use]
pub fn parse_cursor(s: &str) -> Option<(i64, i64)> {
    let (a, b) = s.split_once('.')?;
    let ok = |x: &str| !x.is_empty() && x.len() <= 19 && x.bytes().all(|c| c.is_ascii_digit());
    if !ok(a) || !ok(b) {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// What a finished (or repaired) recording looks like.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// [`state::COMPLETE`], [`state::REPAIRED`] or [`state::FAILED`].
    pub state: &'static str,
    /// End, µs since the epoch.
    pub end_us: i64,
    /// Audio duration.
    pub duration_ms: i64,
    /// Decrypted size.
    pub size: i64,
    /// Size on disk.
    pub stored_size: i64,
    /// SHA-256 of the decrypted file, hex.
    pub sha256: Option<String>,
    /// Pauses, when known.
    pub pauses: Option<Value>,
    /// Why it stopped.
    pub stop_reason: Option<String>,
    /// What went wrong.
    pub error: Option<String>,
}

/// A connection to the index.
#[derive(Debug)]
pub struct Index {
    conn: Connection,
}

impl Index {
    /// Opens (creating if needed) the index at `path` for writing.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Index { conn })
    }

    /// Connects to an existing index without touching the schema (HTTP requests).
    pub fn connect(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(Index { conn })
    }

    /// Adds a recording that has just started.
    pub fn insert(&self, r: &RecordingRow) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT INTO recordings (id, call_id, name, file, legs, agent, queue, mode, format,
                channels, sample_rate, state, start_us, key_id, pauses, metadata)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                r.id,
                r.call_id,
                r.name,
                r.file,
                r.legs.to_string(),
                r.agent,
                r.queue,
                r.mode,
                r.format,
                r.channels,
                r.sample_rate,
                r.state,
                r.start_us,
                r.key_id,
                r.pauses.to_string(),
                r.metadata.to_string(),
            ],
        )?;
        Ok(())
    }

    /// Records the pauses so far.
    pub fn set_pauses(&self, id: &str, pauses: &Value) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE recordings SET pauses = ?2 WHERE id = ?1",
            params![id, pauses.to_string()],
        )?;
        Ok(())
    }

    /// Replaces the metadata (and the agent and queue taken from it).
    pub fn set_metadata(
        &self,
        id: &str,
        metadata: &Value,
        agent: Option<&str>,
        queue: Option<&str>,
    ) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE recordings SET metadata = ?2, agent = ?3, queue = ?4 WHERE id = ?1",
            params![id, metadata.to_string(), agent, queue],
        )?;
        Ok(())
    }

    /// Marks a recording finished.
    pub fn finish(&self, id: &str, f: &Finished) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE recordings SET state = ?2, end_us = ?3, duration_ms = ?4, size = ?5,
                stored_size = ?6, sha256 = ?7, pauses = COALESCE(?8, pauses),
                stop_reason = ?9, error = ?10
             WHERE id = ?1",
            params![
                id,
                f.state,
                f.end_us,
                f.duration_ms,
                f.size,
                f.stored_size,
                f.sha256,
                f.pauses.as_ref().map(Value::to_string),
                f.stop_reason,
                f.error,
            ],
        )?;
        Ok(())
    }

    /// One recording.
    pub fn get(&self, id: &str) -> rusqlite::Result<Option<RecordingRow>> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM recordings WHERE id = ?1"),
                params![id],
                RecordingRow::from_row,
            )
            .optional()
    }

    /// A page of recordings, newest first, and the cursor of the next page (if there may be
    /// one).
    pub fn list(&self, q: &ListQuery) -> rusqlite::Result<(Vec<RecordingRow>, Option<String>)> {
        use rusqlite::types::Value as Sql;
        let mut sql = format!("SELECT {COLUMNS} FROM recordings WHERE 1 = 1");
        let mut args: Vec<Sql> = Vec::new();
        let mut push = |clause: &str, v: Sql, sql: &mut String| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
        };
        if let Some(c) = &q.call {
            push(" AND call_id = ?", Sql::Text(c.clone()), &mut sql);
        }
        if let Some(a) = &q.agent {
            push(" AND agent = ?", Sql::Text(a.clone()), &mut sql);
        }
        if let Some(qu) = &q.queue {
            push(" AND queue = ?", Sql::Text(qu.clone()), &mut sql);
        }
        if let Some(f) = q.from_us {
            push(" AND start_us >= ?", Sql::Integer(f), &mut sql);
        }
        if let Some(t) = q.to_us {
            push(" AND start_us < ?", Sql::Integer(t), &mut sql);
        }
        if let Some((start, seq)) = q.after {
            push(" AND (start_us < ?", Sql::Integer(start), &mut sql);
            push(" OR (start_us = ?", Sql::Integer(start), &mut sql);
            push(" AND seq < ?))", Sql::Integer(seq), &mut sql);
        }
        let limit = q.limit.clamp(1, MAX_LIMIT);
        sql.push_str(&format!(" ORDER BY start_us DESC, seq DESC LIMIT {limit}"));
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), RecordingRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let next = (rows.len() == limit as usize)
            .then(|| rows.last().map(|r| format!("{}.{}", r.start_us, r.seq)))
            .flatten();
        Ok((rows, next))
    }

    /// Removes a row; false when there was none.
    pub fn delete(&self, id: &str) -> rusqlite::Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM recordings WHERE id = ?1", params![id])?
            > 0)
    }

    /// Rows left in [`state::RECORDING`] (by a previous run that died).
    pub fn unfinished(&self) -> rusqlite::Result<Vec<RecordingRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM recordings WHERE state = ?1 ORDER BY seq"
        ))?;
        stmt.query_map(params![state::RECORDING], RecordingRow::from_row)?
            .collect()
    }

    /// Finished rows that started before `before_us`, oldest first: `(id, file)`.
    pub fn expired(&self, before_us: i64, limit: u32) -> rusqlite::Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, file FROM recordings WHERE start_us < ?1 AND state != ?2
             ORDER BY start_us LIMIT ?3",
        )?;
        stmt.query_map(params![before_us, state::RECORDING, limit], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, call: &str, agent: &str, start: i64) -> RecordingRow {
        RecordingRow {
            seq: 0,
            id: id.into(),
            call_id: call.into(),
            name: format!("{id}.wav"),
            file: format!("2024-05-01/{id}.wav"),
            legs: json!([{"tag": "a"}]),
            agent: Some(agent.into()),
            queue: Some("sales".into()),
            mode: "stereo".into(),
            format: "wav".into(),
            channels: 2,
            sample_rate: 8000,
            state: state::RECORDING.into(),
            start_us: start,
            end_us: None,
            duration_ms: None,
            size: None,
            stored_size: None,
            sha256: None,
            key_id: None,
            pauses: json!([]),
            metadata: json!({"agent": agent}),
            stop_reason: None,
            error: None,
        }
    }

    fn index() -> (Index, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "sb-index-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        (Index::open(&dir.join(INDEX_FILE)).unwrap(), dir)
    }

    #[test]
    fn insert_finish_get_delete() {
        let (ix, dir) = index();
        ix.insert(&row("r1", "c1", "alice", 1000)).unwrap();
        assert!(
            ix.insert(&row("r1", "c1", "alice", 1000)).is_err(),
            "ids are unique"
        );
        assert_eq!(ix.unfinished().unwrap().len(), 1);
        ix.set_pauses("r1", &json!([{"at_ms": 5, "duration_ms": 7}]))
            .unwrap();
        ix.finish(
            "r1",
            &Finished {
                state: state::COMPLETE,
                end_us: 5000,
                duration_ms: 4,
                size: 100,
                stored_size: 100,
                sha256: Some("ab".into()),
                pauses: None,
                stop_reason: Some("requested".into()),
                error: None,
            },
        )
        .unwrap();
        let r = ix.get("r1").unwrap().unwrap();
        assert_eq!(r.state, "complete");
        assert_eq!(r.pauses, json!([{"at_ms": 5, "duration_ms": 7}]), "kept");
        assert_eq!(r.to_json()["start"], "1970-01-01T00:00:00.001Z");
        assert_eq!(r.to_json()["content_type"], "audio/wav");
        assert!(ix.unfinished().unwrap().is_empty());
        let other = Index::connect(&dir.join(INDEX_FILE)).unwrap();
        assert_eq!(other.get("r1").unwrap().unwrap().id, "r1");
        assert!(Index::connect(&dir.join("missing.sqlite")).is_err());
        assert!(ix.delete("r1").unwrap());
        assert!(!ix.delete("r1").unwrap());
        assert!(ix.get("r1").unwrap().is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn filters_and_keyset_pages() {
        let (ix, dir) = index();
        for i in 0..25 {
            let agent = if i % 2 == 0 { "alice" } else { "bob" };
            // Pairs share a start time: the seq breaks the tie.
            ix.insert(&row(
                &format!("r{i:02}"),
                &format!("c{}", i % 5),
                agent,
                (i / 2) * 10,
            ))
            .unwrap();
        }
        let mut q = ListQuery {
            limit: 4,
            ..ListQuery::default()
        };
        let mut seen = Vec::new();
        loop {
            let (rows, next) = ix.list(&q).unwrap();
            seen.extend(rows.iter().map(|r| r.id.clone()));
            match next {
                Some(c) => q.after = Some(parse_cursor(&c).unwrap()),
                None => break,
            }
        }
        let want: Vec<String> = (0..25).rev().map(|i| format!("r{i:02}")).collect();
        assert_eq!(seen, want, "newest first, each once");
        let only = |q: ListQuery| -> Vec<String> {
            ix.list(&q).unwrap().0.into_iter().map(|r| r.id).collect()
        };
        let base = ListQuery {
            limit: 100,
            ..ListQuery::default()
        };
        assert_eq!(
            only(ListQuery {
                call: Some("c3".into()),
                ..base.clone()
            }),
            ["r23", "r18", "r13", "r08", "r03"]
        );
        assert_eq!(
            only(ListQuery {
                agent: Some("bob".into()),
                from_us: Some(50),
                to_us: Some(80),
                ..base.clone()
            }),
            ["r15", "r13", "r11"]
        );
        assert!(
            only(ListQuery {
                queue: Some("support".into()),
                ..base.clone()
            })
            .is_empty()
        );
        assert_eq!(ix.expired(20, 10).unwrap().len(), 0, "still recording");
        assert_eq!(parse_cursor("10.3"), Some((10, 3)));
        for bad in ["", "10", "a.b", "1.-2", "1.2.3", "99999999999999999999.1"] {
            assert_eq!(parse_cursor(bad), None, "{bad}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
