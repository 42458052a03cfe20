//! Where call detail records go: an SQLite table (`cdr.sqlite` in the state directory, WAL
//! mode, one writer thread, readers on their own connections) and JSON-lines files rotated by
//! size and by UTC day.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params};
use serde_json::Value;

use crate::record::datetime;

/// Most rows one listing returns.
pub const MAX_LIMIT: u32 = 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cdrs (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id   TEXT NOT NULL,
    start_ms  INTEGER NOT NULL,
    end_ms    INTEGER NOT NULL,
    queue     TEXT,
    agent     TEXT,
    reason    TEXT NOT NULL,
    record    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cdrs_call ON cdrs (call_id, id);
CREATE INDEX IF NOT EXISTS cdrs_start ON cdrs (start_ms, id);
CREATE INDEX IF NOT EXISTS cdrs_end ON cdrs (end_ms);
CREATE INDEX IF NOT EXISTS cdrs_agent ON cdrs (agent, id);
CREATE INDEX IF NOT EXISTS cdrs_queue ON cdrs (queue, id);
";

/// The indexed columns of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Call-id.
    pub call: String,
    /// Start, Unix ms (the end when the start is unknown).
    pub start_ms: u64,
    /// End, Unix ms.
    pub end_ms: u64,
    /// ACD queue, as text.
    pub queue: Option<String>,
    /// ACD agent, as text.
    pub agent: Option<String>,
    /// End reason.
    pub reason: String,
}

/// The record table, opened for writing (one connection, the writer thread's).
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens or creates the database.
    ///
    /// # Errors
    /// When the file cannot be opened or the schema created.
    pub fn open(path: &Path) -> rusqlite::Result<Store> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn })
    }

    /// Inserts records in one transaction; returns their ids in order.
    ///
    /// # Errors
    /// When the transaction fails (nothing is kept then).
    pub fn insert(&mut self, rows: &[(Row, String)]) -> rusqlite::Result<Vec<i64>> {
        let tx = self.conn.transaction()?;
        let mut ids = Vec::with_capacity(rows.len());
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO cdrs (call_id, start_ms, end_ms, queue, agent, reason, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (r, record) in rows {
                st.execute(params![
                    r.call,
                    to_i64(r.start_ms),
                    to_i64(r.end_ms),
                    r.queue,
                    r.agent,
                    r.reason,
                    record
                ])?;
                ids.push(tx.last_insert_rowid());
            }
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Deletes records that ended before `before_ms`; returns how many.
    ///
    /// # Errors
    /// When the statement fails.
    pub fn expire(&self, before_ms: u64) -> rusqlite::Result<usize> {
        self.conn
            .execute("DELETE FROM cdrs WHERE end_ms < ?1", [to_i64(before_ms)])
    }
}

/// Filters of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Started at or after, Unix ms.
    pub from_ms: Option<u64>,
    /// Started before, Unix ms.
    pub to_ms: Option<u64>,
    /// Call-id.
    pub call: Option<String>,
    /// ACD agent.
    pub agent: Option<String>,
    /// ACD queue.
    pub queue: Option<String>,
    /// Most rows.
    pub limit: u32,
    /// Only records with a smaller id (the previous page's `next_cursor`).
    pub before_id: Option<i64>,
}

/// Lists records, newest first: each record's JSON with its `id`, and the cursor of the next
/// page when there may be one.
///
/// # Errors
/// When the database cannot be opened read-only or the query fails.
pub fn list(path: &Path, q: &ListQuery) -> rusqlite::Result<(Vec<Value>, Option<String>)> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut sql = String::from("SELECT id, record FROM cdrs WHERE 1=1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut push = |sql: &mut String, cond: &str, v: rusqlite::types::Value| {
        args.push(v);
        sql.push_str(&format!(" AND {cond} ?{}", args.len()));
    };
    if let Some(v) = q.from_ms {
        push(&mut sql, "start_ms >=", to_i64(v).into());
    }
    if let Some(v) = q.to_ms {
        push(&mut sql, "start_ms <", to_i64(v).into());
    }
    if let Some(v) = &q.call {
        push(&mut sql, "call_id =", v.clone().into());
    }
    if let Some(v) = &q.agent {
        push(&mut sql, "agent =", v.clone().into());
    }
    if let Some(v) = &q.queue {
        push(&mut sql, "queue =", v.clone().into());
    }
    if let Some(v) = q.before_id {
        push(&mut sql, "id <", v.into());
    }
    let limit = q.limit.clamp(1, MAX_LIMIT);
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
    let mut st = conn.prepare(&sql)?;
    let rows = st.query_map(rusqlite::params_from_iter(args), |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    let mut last = None;
    for row in rows {
        let (id, text) = row?;
        let mut v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("id".into(), id.into());
        }
        out.push(v);
        last = Some(id);
    }
    let next = if out.len() == limit as usize {
        last.map(|i| i.to_string())
    } else {
        None
    };
    Ok((out, next))
}

/// JSON-lines files `cdr-YYYY-MM-DD.jsonl`, `cdr-YYYY-MM-DD.1.jsonl`, …: a new file at each
/// UTC day and whenever the current one would pass `max_bytes`. Files older than
/// `retention_days` (by the date in their name) are deleted at each rotation.
#[derive(Debug)]
pub struct JsonLines {
    dir: PathBuf,
    max_bytes: u64,
    retention_days: u32,
    file: Option<File>,
    size: u64,
    day: i64,
    seq: u32,
}

fn day_of(ms: u64) -> i64 {
    i64::try_from(ms / 86_400_000).unwrap_or(i64::MAX)
}

fn date_name(day: i64) -> String {
    let us = u64::try_from(day)
        .unwrap_or(0)
        .saturating_mul(86_400_000_000);
    datetime::date_and_time(us).0
}

/// The date and sequence number of a file name of ours.
fn parse_name(name: &str) -> Option<(String, u32)> {
    let rest = name.strip_prefix("cdr-")?.strip_suffix(".jsonl")?;
    let (date, seq) = match rest.split_once('.') {
        Some((d, s)) => (d, s.parse().ok()?),
        None => (rest, 0),
    };
    (date.len() == 10 && datetime::parse(date).is_some()).then(|| (date.to_owned(), seq))
}

impl JsonLines {
    /// Files in `dir` (created when missing).
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn new(dir: PathBuf, max_bytes: u64, retention_days: u32) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            max_bytes: max_bytes.max(4096),
            retention_days,
            file: None,
            size: 0,
            day: -1,
            seq: 0,
        })
    }

    fn path(&self, day: i64, seq: u32) -> PathBuf {
        let date = date_name(day);
        if seq == 0 {
            self.dir.join(format!("cdr-{date}.jsonl"))
        } else {
            self.dir.join(format!("cdr-{date}.{seq}.jsonl"))
        }
    }

    /// The file being written now, if any.
    #[must_use]
    pub fn current(&self) -> Option<PathBuf> {
        self.file.as_ref().map(|_| self.path(self.day, self.seq))
    }

    /// Opens the day's last file (or a new one when it is full).
    fn open_day(&mut self, day: i64) -> std::io::Result<()> {
        let date = date_name(day);
        let mut seq = 0;
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if let Some((d, s)) = parse_name(&e.file_name().to_string_lossy()) {
                    if d == date {
                        seq = seq.max(s);
                    }
                }
            }
        }
        let mut size = std::fs::metadata(self.path(day, seq)).map_or(0, |m| m.len());
        if size >= self.max_bytes {
            seq += 1;
            size = 0;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(day, seq))?;
        self.file = Some(file);
        self.day = day;
        self.seq = seq;
        self.size = size;
        self.expire(day);
        Ok(())
    }

    fn expire(&self, today: i64) {
        if self.retention_days == 0 {
            return;
        }
        let keep_from = date_name(today - i64::from(self.retention_days) + 1);
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if let Some((d, _)) = parse_name(&e.file_name().to_string_lossy()) {
                    // Dates in this form compare as text.
                    if d < keep_from {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
    }

    /// Appends lines written at `now_ms` (each a JSON text without a newline), rotating first
    /// when the day changed or the file is full; flushes.
    ///
    /// # Errors
    /// When a file cannot be opened or written.
    pub fn append(&mut self, now_ms: u64, lines: &[String]) -> std::io::Result<()> {
        let day = day_of(now_ms);
        if self.file.is_none() || day != self.day {
            self.open_day(day)?;
        }
        let mut buf = Vec::new();
        for l in lines {
            let len = (l.len() + 1) as u64;
            if self.size > 0 && self.size + len > self.max_bytes {
                if let Some(f) = &mut self.file {
                    f.write_all(&buf)?;
                }
                buf.clear();
                self.seq += 1;
                self.file = Some(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(self.path(self.day, self.seq))?,
                );
                self.size = 0;
            }
            buf.extend_from_slice(l.as_bytes());
            buf.push(b'\n');
            self.size += len;
        }
        if let Some(f) = &mut self.file {
            f.write_all(&buf)?;
            f.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sb-cdr-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn row(call: &str, start: u64, agent: Option<&str>) -> (Row, String) {
        (
            Row {
                call: call.into(),
                start_ms: start,
                end_ms: start + 1000,
                queue: Some("5".into()),
                agent: agent.map(Into::into),
                reason: "hangup".into(),
            },
            format!("{{\"call\":\"{call}\",\"start_ms\":{start}}}"),
        )
    }

    #[test]
    fn insert_list_filter_page_expire() {
        let d = tmp("db");
        let path = d.join("cdr.sqlite");
        let mut s = Store::open(&path).unwrap();
        let ids = s
            .insert(&[
                row("a", 1000, Some("7")),
                row("b", 2000, None),
                row("c", 3000, Some("7")),
            ])
            .unwrap();
        assert_eq!(ids.len(), 3);
        let all = |q: ListQuery| list(&path, &ListQuery { limit: 10, ..q }).unwrap();
        let (rows, next) = all(ListQuery::default());
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["call"], "c");
        assert!(rows[0]["id"].is_i64());
        assert!(next.is_none());
        let (rows, _) = all(ListQuery {
            agent: Some("7".into()),
            ..ListQuery::default()
        });
        assert_eq!(rows.len(), 2);
        let (rows, _) = all(ListQuery {
            from_ms: Some(1500),
            to_ms: Some(3000),
            ..ListQuery::default()
        });
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["call"], "b");
        let (page, next) = list(
            &path,
            &ListQuery {
                limit: 2,
                ..ListQuery::default()
            },
        )
        .unwrap();
        assert_eq!(page.len(), 2);
        let before = next.unwrap().parse().unwrap();
        let (rest, _) = all(ListQuery {
            before_id: Some(before),
            ..ListQuery::default()
        });
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0]["call"], "a");
        assert_eq!(s.expire(3500).unwrap(), 2);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn json_lines_rotate_by_size_and_day_and_expire() {
        let d = tmp("jsonl");
        let day = 20_000 * 86_400_000u64; // 2024-10-04
        let mut j = JsonLines::new(d.clone(), 4096, 2).unwrap();
        let line = "x".repeat(1000);
        j.append(day, &[line.clone(), line.clone(), line.clone()])
            .unwrap();
        assert_eq!(
            j.current().unwrap().file_name().unwrap(),
            "cdr-2024-10-04.jsonl"
        );
        j.append(day + 10, &[line.clone(), line.clone()]).unwrap();
        assert_eq!(
            j.current().unwrap().file_name().unwrap(),
            "cdr-2024-10-04.1.jsonl"
        );
        // A restart appends to the day's last file.
        let mut j = JsonLines::new(d.clone(), 4096, 2).unwrap();
        j.append(day + 20, std::slice::from_ref(&line)).unwrap();
        assert_eq!(
            j.current().unwrap().file_name().unwrap(),
            "cdr-2024-10-04.1.jsonl"
        );
        // Two days later the first day's files are past retention.
        j.append(day + 2 * 86_400_000, std::slice::from_ref(&line))
            .unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["cdr-2024-10-06.jsonl"]);
        let text = std::fs::read_to_string(d.join("cdr-2024-10-06.jsonl")).unwrap();
        assert_eq!(text, format!("{line}\n"));
        assert_eq!(
            parse_name("cdr-2024-10-06.3.jsonl"),
            Some(("2024-10-06".into(), 3))
        );
        assert_eq!(parse_name("cdr-../x.jsonl"), None);
        let _ = std::fs::remove_dir_all(&d);
    }
}
