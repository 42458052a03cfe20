//! The ACD's durable state in the embedded SQLite store, written off the routing path.
//!
//! One file (`acd.sqlite` in the state directory) in WAL mode with `synchronous = NORMAL`:
//! a committed transaction survives the process being killed (`kill -9`); a power cut may
//! lose the last few. The shard never touches the database: it queues [`StoreOp`]s in
//! batches on a bounded channel, and the store thread commits everything that has piled up
//! in one transaction (group commit), then sends the replies that waited for it. A full
//! channel makes the shard wait (counted in `switchboard_acd_store_waits_total`) rather than
//! drop a write.
//!
//! ## Schema
//!
//! ```sql
//! acd_meta   (key TEXT PRIMARY KEY, value TEXT)            -- schema_version = 2
//! acd_queues (tenant TEXT, id INTEGER, ord INTEGER, def TEXT,  -- def: the queue's JSON
//!             PRIMARY KEY (tenant, id))
//! acd_agents (tenant TEXT, id INTEGER, ord INTEGER, def TEXT, status TEXT,
//!             PRIMARY KEY (tenant, id))
//! acd_tasks  (tenant TEXT, id INTEGER, seq INTEGER, queue INTEGER, channel TEXT,
//!             enqueued_at_ms INTEGER,                      -- wall clock, ms since 1970
//!             priority INTEGER, agitation REAL, spec TEXT, context TEXT,
//!             agent INTEGER,                               -- the agent holding it, if assigned
//!             PRIMARY KEY (tenant, id))
//! ```
//!
//! Every row belongs to a tenant; the same id may exist in two tenants. A database of
//! schema version 1 (no tenants) is migrated on open, in one transaction: its rows move to
//! tenant `default`.
//!
//! Ids are the protocol's 64-bit unsigned ids stored in SQLite's signed 64-bit integers
//! (same bits). Every live task is a row (voice tasks too, so that a restart can end them
//! with a reason); a task's row goes when the task ends.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam::channel::Receiver;
use rusqlite::{Connection, OptionalExtension as _, params};
use serde_json::Value;
use tracing::warn;

use super::Reply;
use crate::control::native::OpError;
use crate::metrics::ControlMetrics;

/// The schema this code reads and writes.
const SCHEMA_VERSION: &str = "2";

/// A commit slower than this is logged (the replies waiting for it are late).
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Most batches merged into one transaction.
const MAX_BATCHES_PER_COMMIT: usize = 1024;

/// A persisted task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    /// Task id.
    pub id: u64,
    /// Enqueue order (breaks ties between equal enqueue times).
    pub seq: u64,
    /// Current queue.
    pub queue: u64,
    /// Channel name (`voice`, `chat`, …).
    pub channel: String,
    /// Wall-clock enqueue time, ms since the Unix epoch.
    pub enqueued_at_ms: u64,
    /// Base priority (including customer-value tags).
    pub priority: u32,
    /// Agitation, 0..=1.
    pub agitation: f64,
    /// The rest of the task's definition, as JSON (`ops::TaskSpec`).
    pub spec: String,
    /// The context blob, as JSON text (empty: none).
    pub context: String,
    /// The agent holding the task when it was last assigned.
    pub agent: Option<u64>,
}

/// One write.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    /// Insert or replace a queue definition.
    PutQueue {
        /// Queue id.
        id: u64,
        /// Creation order.
        ord: u64,
        /// JSON definition.
        def: String,
    },
    /// Remove a queue.
    DeleteQueue {
        /// Queue id.
        id: u64,
    },
    /// Insert an agent (offline) or replace its definition, keeping its status.
    PutAgent {
        /// Agent id.
        id: u64,
        /// Creation order.
        ord: u64,
        /// JSON definition.
        def: String,
    },
    /// Remove an agent.
    DeleteAgent {
        /// Agent id.
        id: u64,
    },
    /// Record an agent's status (JSON: `{"status": …, "reason": …}`).
    SetAgentStatus {
        /// Agent id.
        id: u64,
        /// JSON status.
        status: String,
    },
    /// Insert a task.
    PutTask(TaskRow),
    /// Record a task's new priority, agitation and definition.
    UpdateTask {
        /// Task id.
        id: u64,
        /// New base priority.
        priority: u32,
        /// New agitation.
        agitation: f64,
        /// New definition.
        spec: String,
    },
    /// Record a task's move to another queue.
    MoveTask {
        /// Task id.
        id: u64,
        /// New queue.
        queue: u64,
    },
    /// Record the agent a task was assigned to.
    SetTaskAgent {
        /// Task id.
        id: u64,
        /// The agent.
        agent: u64,
    },
    /// Remove an ended task.
    DeleteTask {
        /// Task id.
        id: u64,
    },
}

/// Writes of one request (or one timer turn) of one tenant, and the reply that waits for
/// their commit.
pub(crate) struct Batch {
    pub(crate) tenant: Arc<str>,
    pub(crate) ops: Vec<StoreOp>,
    pub(crate) reply: Option<(Reply, Result<Value, OpError>)>,
}

/// Everything read back at start-up for one tenant.
#[derive(Debug, Default)]
pub struct Loaded {
    /// `(id, ord, def)`, by `ord`.
    pub queues: Vec<(u64, u64, String)>,
    /// `(id, ord, def, status)`, by `ord`.
    pub agents: Vec<(u64, u64, String, String)>,
    /// By enqueue time, then `seq`.
    pub tasks: Vec<TaskRow>,
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite refused.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file was written by a newer schema.
    #[error("schema version {found} is not {SCHEMA_VERSION}")]
    Version {
        /// The version found.
        found: String,
    },
}

fn to_sql(id: u64) -> i64 {
    i64::from_ne_bytes(id.to_ne_bytes())
}

fn from_sql(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// The tables of schema version 2.
const TABLES: &str = "
    CREATE TABLE IF NOT EXISTS acd_queues (
        tenant TEXT NOT NULL DEFAULT 'default', id INTEGER NOT NULL, ord INTEGER NOT NULL,
        def TEXT NOT NULL, PRIMARY KEY (tenant, id));
    CREATE TABLE IF NOT EXISTS acd_agents (
        tenant TEXT NOT NULL DEFAULT 'default', id INTEGER NOT NULL, ord INTEGER NOT NULL,
        def TEXT NOT NULL, status TEXT NOT NULL, PRIMARY KEY (tenant, id));
    CREATE TABLE IF NOT EXISTS acd_tasks (
        tenant TEXT NOT NULL DEFAULT 'default', id INTEGER NOT NULL, seq INTEGER NOT NULL,
        queue INTEGER NOT NULL, channel TEXT NOT NULL, enqueued_at_ms INTEGER NOT NULL,
        priority INTEGER NOT NULL, agitation REAL NOT NULL, spec TEXT NOT NULL,
        context TEXT NOT NULL, agent INTEGER, PRIMARY KEY (tenant, id));";

/// Moves the tables of schema version 1 (no tenant column; the id alone is the key) to
/// version 2, their rows into tenant `default`, in one transaction.
fn migrate_v1(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    tx.execute_batch(
        "ALTER TABLE acd_queues RENAME TO acd_queues_v1;
         ALTER TABLE acd_agents RENAME TO acd_agents_v1;
         ALTER TABLE acd_tasks RENAME TO acd_tasks_v1;",
    )?;
    tx.execute_batch(TABLES)?;
    tx.execute_batch(
        "INSERT INTO acd_queues (tenant, id, ord, def)
             SELECT 'default', id, ord, def FROM acd_queues_v1;
         INSERT INTO acd_agents (tenant, id, ord, def, status)
             SELECT 'default', id, ord, def, status FROM acd_agents_v1;
         INSERT INTO acd_tasks (tenant, id, seq, queue, channel, enqueued_at_ms, priority,
                 agitation, spec, context, agent)
             SELECT 'default', id, seq, queue, channel, enqueued_at_ms, priority,
                 agitation, spec, context, agent FROM acd_tasks_v1;
         DROP TABLE acd_queues_v1;
         DROP TABLE acd_agents_v1;
         DROP TABLE acd_tasks_v1;
         UPDATE acd_meta SET value = '2' WHERE key = 'schema_version';",
    )?;
    tx.commit()
}

/// Opens (or creates) the database at `path` and reads back the persisted state, by tenant.
/// A database of schema version 1 is migrated first.
///
/// # Errors
/// [`StoreError`] when the file cannot be opened, is not a database, or has another schema.
pub fn open(path: &Path) -> Result<(Connection, BTreeMap<String, Loaded>), StoreError> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL;
         CREATE TABLE IF NOT EXISTS acd_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    )?;
    let version: Option<String> = conn
        .query_row(
            "SELECT value FROM acd_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match version {
        None => {
            conn.execute_batch(TABLES)?;
            conn.execute(
                "INSERT INTO acd_meta (key, value) VALUES ('schema_version', ?1)",
                [SCHEMA_VERSION],
            )?;
        }
        Some(v) if v == "1" => migrate_v1(&mut conn)?,
        Some(v) if v == SCHEMA_VERSION => conn.execute_batch(TABLES)?,
        Some(found) => return Err(StoreError::Version { found }),
    }
    let loaded = load(&conn)?;
    Ok((conn, loaded))
}

fn load(conn: &Connection) -> Result<BTreeMap<String, Loaded>, rusqlite::Error> {
    let mut out: BTreeMap<String, Loaded> = BTreeMap::new();
    let mut q = conn.prepare("SELECT tenant, id, ord, def FROM acd_queues ORDER BY ord, id")?;
    let rows = q.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            (
                from_sql(r.get(1)?),
                from_sql(r.get(2)?),
                r.get::<_, String>(3)?,
            ),
        ))
    })?;
    for row in rows {
        let (tenant, q) = row?;
        out.entry(tenant).or_default().queues.push(q);
    }
    let mut a =
        conn.prepare("SELECT tenant, id, ord, def, status FROM acd_agents ORDER BY ord, id")?;
    let rows = a.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            (
                from_sql(r.get(1)?),
                from_sql(r.get(2)?),
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ),
        ))
    })?;
    for row in rows {
        let (tenant, a) = row?;
        out.entry(tenant).or_default().agents.push(a);
    }
    let mut t = conn.prepare(
        "SELECT tenant, id, seq, queue, channel, enqueued_at_ms, priority, agitation, spec,
                context, agent
         FROM acd_tasks ORDER BY enqueued_at_ms, seq",
    )?;
    let rows = t.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            TaskRow {
                id: from_sql(r.get(1)?),
                seq: from_sql(r.get(2)?),
                queue: from_sql(r.get(3)?),
                channel: r.get(4)?,
                enqueued_at_ms: from_sql(r.get(5)?),
                priority: u32::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
                agitation: r.get(7)?,
                spec: r.get(8)?,
                context: r.get(9)?,
                agent: r.get::<_, Option<i64>>(10)?.map(from_sql),
            },
        ))
    })?;
    for row in rows {
        let (tenant, t) = row?;
        out.entry(tenant).or_default().tasks.push(t);
    }
    // A name the protocol would refuse (a file edited by hand) is not restored.
    out.retain(|tenant, _| {
        let ok = super::ops::check_tenant(tenant).is_ok();
        if !ok {
            warn!(
                tenant = tenant.chars().take(80).collect::<String>(),
                "ACD store: rows of an invalid tenant name are ignored"
            );
        }
        ok
    });
    Ok(out)
}

fn apply(
    tx: &rusqlite::Transaction<'_>,
    tenant: &str,
    op: &StoreOp,
) -> Result<(), rusqlite::Error> {
    match op {
        StoreOp::PutQueue { id, ord, def } => {
            tx.prepare_cached(
                "INSERT INTO acd_queues (tenant, id, ord, def) VALUES (?4, ?1, ?2, ?3)
                 ON CONFLICT(tenant, id) DO UPDATE SET def = excluded.def",
            )?
            .execute(params![to_sql(*id), to_sql(*ord), def, tenant])?;
        }
        StoreOp::DeleteQueue { id } => {
            tx.prepare_cached("DELETE FROM acd_queues WHERE tenant = ?2 AND id = ?1")?
                .execute(params![to_sql(*id), tenant])?;
        }
        StoreOp::PutAgent { id, ord, def } => {
            tx.prepare_cached(
                "INSERT INTO acd_agents (tenant, id, ord, def, status)
                 VALUES (?4, ?1, ?2, ?3, '{\"status\":\"offline\"}')
                 ON CONFLICT(tenant, id) DO UPDATE SET def = excluded.def",
            )?
            .execute(params![to_sql(*id), to_sql(*ord), def, tenant])?;
        }
        StoreOp::DeleteAgent { id } => {
            tx.prepare_cached("DELETE FROM acd_agents WHERE tenant = ?2 AND id = ?1")?
                .execute(params![to_sql(*id), tenant])?;
        }
        StoreOp::SetAgentStatus { id, status } => {
            tx.prepare_cached("UPDATE acd_agents SET status = ?2 WHERE tenant = ?3 AND id = ?1")?
                .execute(params![to_sql(*id), status, tenant])?;
        }
        StoreOp::PutTask(t) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO acd_tasks
                 (tenant, id, seq, queue, channel, enqueued_at_ms, priority, agitation, spec,
                  context, agent)
                 VALUES (?11, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                to_sql(t.id),
                to_sql(t.seq),
                to_sql(t.queue),
                t.channel,
                to_sql(t.enqueued_at_ms),
                i64::from(t.priority),
                t.agitation,
                t.spec,
                t.context,
                t.agent.map(to_sql),
                tenant,
            ])?;
        }
        StoreOp::UpdateTask {
            id,
            priority,
            agitation,
            spec,
        } => {
            tx.prepare_cached(
                "UPDATE acd_tasks SET priority = ?2, agitation = ?3, spec = ?4
                 WHERE tenant = ?5 AND id = ?1",
            )?
            .execute(params![
                to_sql(*id),
                i64::from(*priority),
                agitation,
                spec,
                tenant
            ])?;
        }
        StoreOp::MoveTask { id, queue } => {
            tx.prepare_cached("UPDATE acd_tasks SET queue = ?2 WHERE tenant = ?3 AND id = ?1")?
                .execute(params![to_sql(*id), to_sql(*queue), tenant])?;
        }
        StoreOp::SetTaskAgent { id, agent } => {
            tx.prepare_cached("UPDATE acd_tasks SET agent = ?2 WHERE tenant = ?3 AND id = ?1")?
                .execute(params![to_sql(*id), to_sql(*agent), tenant])?;
        }
        StoreOp::DeleteTask { id } => {
            tx.prepare_cached("DELETE FROM acd_tasks WHERE tenant = ?2 AND id = ?1")?
                .execute(params![to_sql(*id), tenant])?;
        }
    }
    Ok(())
}

/// Commits `batches` in one transaction.
fn commit(conn: &mut Connection, batches: &[Batch]) -> Result<usize, rusqlite::Error> {
    let tx = conn.transaction()?;
    let mut n = 0;
    for b in batches {
        for op in &b.ops {
            apply(&tx, &b.tenant, op)?;
            n += 1;
        }
    }
    tx.commit()?;
    Ok(n)
}

/// Starts the store thread: it commits batches from `rx` until the channel closes (after
/// every shard stops), then closes the database.
///
/// # Errors
/// When the thread cannot be spawned.
pub(crate) fn spawn_writer(
    mut conn: Connection,
    rx: Receiver<Batch>,
    metrics: Arc<ControlMetrics>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sb-acd-store".into())
        .spawn(move || {
            let mut pending: Vec<Batch> = Vec::with_capacity(64);
            while let Ok(first) = rx.recv() {
                pending.push(first);
                while pending.len() < MAX_BATCHES_PER_COMMIT {
                    match rx.try_recv() {
                        Ok(b) => pending.push(b),
                        Err(_) => break,
                    }
                }
                let started = std::time::Instant::now();
                match commit(&mut conn, &pending) {
                    Ok(n) => {
                        metrics.acd.count_store_batch(n);
                        let took = started.elapsed();
                        if took > SLOW_COMMIT {
                            warn!(?took, writes = n, "ACD store: slow commit");
                        }
                    }
                    Err(e) => {
                        metrics.acd.count_store_error();
                        warn!(error = %e, "ACD store: transaction failed; its writes are lost");
                    }
                }
                for b in pending.drain(..) {
                    if let Some((reply, value)) = b.reply {
                        let _ = reply.send(value);
                    }
                }
            }
            if let Err((_, e)) = conn.close() {
                warn!(error = %e, "ACD store: closing the database failed");
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64, seq: u64, at: u64) -> TaskRow {
        TaskRow {
            id,
            seq,
            queue: 1,
            channel: "chat".into(),
            enqueued_at_ms: at,
            priority: 3,
            agitation: 0.25,
            spec: "{}".into(),
            context: "{\"a\":1}".into(),
            agent: None,
        }
    }

    #[test]
    fn writes_survive_reopen_in_order() {
        let dir = std::env::temp_dir().join(format!("sb-acd-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acd.sqlite");
        let (mut conn, loaded) = open(&path).unwrap();
        assert!(loaded.is_empty());
        let ops = vec![
            StoreOp::PutQueue {
                id: 1,
                ord: 0,
                def: "{\"queue\":1}".into(),
            },
            StoreOp::PutAgent {
                id: u64::MAX,
                ord: 0,
                def: "{}".into(),
            },
            StoreOp::SetAgentStatus {
                id: u64::MAX,
                status: "{\"status\":\"available\"}".into(),
            },
            StoreOp::PutTask(row(9, 1, 2_000)),
            StoreOp::PutTask(row(8, 0, 2_000)),
            StoreOp::PutTask(row(7, 2, 1_000)),
            StoreOp::UpdateTask {
                id: 7,
                priority: 10,
                agitation: 0.5,
                spec: "{\"x\":1}".into(),
            },
            StoreOp::MoveTask { id: 8, queue: 2 },
            StoreOp::SetTaskAgent { id: 9, agent: 4 },
            StoreOp::PutTask(row(6, 3, 500)),
            StoreOp::DeleteTask { id: 6 },
        ];
        let n = commit(
            &mut conn,
            &[
                Batch {
                    tenant: Arc::from("default"),
                    ops: ops.clone(),
                    reply: None,
                },
                // The same ids in another tenant are other rows.
                Batch {
                    tenant: Arc::from("other"),
                    ops: vec![
                        StoreOp::PutQueue {
                            id: 1,
                            ord: 0,
                            def: "{\"queue\":1,\"name\":\"o\"}".into(),
                        },
                        StoreOp::PutTask(row(7, 0, 3_000)),
                    ],
                    reply: None,
                },
            ],
        )
        .unwrap();
        assert_eq!(n, ops.len() + 2);
        drop(conn);
        let (_conn, mut all) = open(&path).unwrap();
        assert_eq!(all.len(), 2);
        let other = all.remove("other").unwrap();
        assert_eq!(other.queues[0].2, "{\"queue\":1,\"name\":\"o\"}");
        assert_eq!(other.tasks.len(), 1);
        assert_eq!(other.tasks[0].priority, 3);
        let loaded = all.remove("default").unwrap();
        assert_eq!(loaded.queues, vec![(1, 0, "{\"queue\":1}".to_owned())]);
        assert_eq!(loaded.agents.len(), 1);
        assert_eq!(loaded.agents[0].0, u64::MAX);
        assert_eq!(loaded.agents[0].3, "{\"status\":\"available\"}");
        let ids: Vec<u64> = loaded.tasks.iter().map(|t| t.id).collect();
        assert_eq!(ids, vec![7, 8, 9]);
        assert_eq!(loaded.tasks[0].priority, 10);
        assert_eq!(loaded.tasks[1].queue, 2);
        assert_eq!(loaded.tasks[2].agent, Some(4));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn migrates_version_1_into_tenant_default() {
        let dir = std::env::temp_dir().join(format!("sb-acd-v1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acd.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE acd_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO acd_meta VALUES ('schema_version', '1');
                 CREATE TABLE acd_queues (
                     id INTEGER PRIMARY KEY, ord INTEGER NOT NULL, def TEXT NOT NULL);
                 CREATE TABLE acd_agents (
                     id INTEGER PRIMARY KEY, ord INTEGER NOT NULL, def TEXT NOT NULL,
                     status TEXT NOT NULL);
                 CREATE TABLE acd_tasks (
                     id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, queue INTEGER NOT NULL,
                     channel TEXT NOT NULL, enqueued_at_ms INTEGER NOT NULL,
                     priority INTEGER NOT NULL, agitation REAL NOT NULL, spec TEXT NOT NULL,
                     context TEXT NOT NULL, agent INTEGER);
                 INSERT INTO acd_queues VALUES (3, 0, '{\"queue\":3}');
                 INSERT INTO acd_agents VALUES (-1, 0, '{}', '{\"status\":\"away\"}');
                 INSERT INTO acd_tasks VALUES (5, 0, 3, 'chat', 1000, 2, 0.5, '{}', '', 9);",
            )
            .unwrap();
        }
        let (mut conn, mut all) = open(&path).unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), vec!["default"]);
        let d = all.remove("default").unwrap();
        assert_eq!(d.queues, vec![(3, 0, "{\"queue\":3}".to_owned())]);
        assert_eq!(d.agents[0].0, u64::MAX);
        assert_eq!(d.tasks[0].agent, Some(9));
        // Migrated tables take writes of any tenant.
        commit(
            &mut conn,
            &[Batch {
                tenant: Arc::from("t2"),
                ops: vec![StoreOp::PutTask(row(5, 0, 1_000))],
                reply: None,
            }],
        )
        .unwrap();
        drop(conn);
        let (_conn, all) = open(&path).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all["t2"].tasks[0].id, 5);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rejects_other_schema_versions() {
        let dir = std::env::temp_dir().join(format!("sb-acd-schema-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acd.sqlite");
        let (conn, _) = open(&path).unwrap();
        conn.execute(
            "UPDATE acd_meta SET value = '99' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        drop(conn);
        assert!(matches!(open(&path), Err(StoreError::Version { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
