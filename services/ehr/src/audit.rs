//! The access record (Circular 13/2025/TT-BYT: every access to an electronic medical record,
//! reads included, is logged). Every request under `/fhir` made with a valid token leaves
//! exactly one AuditEvent: who (role, token subject, the Patient or Practitioner it is), from
//! which address, what (the resources read or written, the query of a search), which
//! patients, when, with which outcome, for which purpose.
//!
//! How a record is kept, by kind of request:
//! - **writes**: the record is inserted in the write's own transaction (`Tx::commit` calls
//!   [`record_in`]), so a write and its record commit together or not at all, crash or no
//!   crash;
//! - **everything else** (reads, searches, refusals, failed writes): the record goes to the
//!   group committer, which inserts the records of every request answered at that moment in one
//!   statement and commits; the answer leaves only after its record is durable. If it cannot
//!   be recorded, nothing is shown (503).
//!
//! Records wait in the outbox table (`audit_outbox`) until the relay ([`relay`]) turns them
//! into AuditEvent resources — indexed, searchable (`AuditEvent?patient=…`, by admins; a
//! patient lists who accessed its record through its compartment) — deleting each row in the
//! transaction that creates its AuditEvent. The relay paces itself
//! (`fhir.audit_relay_per_second`) so that a burst of reads is recorded at once and turned
//! into resources as the server has time; a search or read of AuditEvents first catches up.
//! AuditEvents are never changed or deleted (see `store::write::refuse_changing_audit`).

mod event;
pub mod relay;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use sen_platform::Backend;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::{error::EhrError, store::Tx};

pub use event::audit_event;

/// What one access was: what the relay makes an AuditEvent of. Stored in the outbox under
/// one-letter keys: a group of a few records then stays under PostgreSQL's 2 kB threshold,
/// in the row itself rather than out of line.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The request's `X-Request-Id`: ties the AuditEvent to the request and its log lines.
    #[serde(rename = "q", default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The interaction (`http://hl7.org/fhir/restful-interaction` code: read, search-type, …).
    #[serde(rename = "i")]
    pub interaction: String,
    /// C, R, U, D or E.
    #[serde(rename = "a")]
    pub action: String,
    /// The HTTP status answered (writes recorded in their transaction: 200).
    #[serde(rename = "s")]
    pub status: u16,
    #[serde(rename = "w")]
    pub agent: Agent,
    /// The client's address (the peer, or the trusted `X-Forwarded-For` hop).
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Purpose of use (`v3-ActReason` code).
    #[serde(rename = "u")]
    pub purpose: String,
    /// Access outside the caller's usual rules (break-the-glass), with its stated reason.
    #[serde(rename = "g", default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<String>,
    /// A search's query (`Observation?code=…`).
    #[serde(rename = "y", default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Resources read or written (`Observation/1/_history/2`, or `Observation/1`).
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Resources a search or history returned (`Observation/1`): named by their patients only.
    #[serde(rename = "f", default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<String>,
    /// Patients known when the record was made (ids); the relay adds those of `resources` and
    /// `results`.
    #[serde(rename = "p", default, skip_serializing_if = "Vec::is_empty")]
    pub patients: Vec<String>,
}

/// Who acted.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Agent {
    /// patient, practitioner, clinic-admin, ops-viewer or system.
    #[serde(rename = "r")]
    pub role: String,
    #[serde(rename = "i")]
    pub issuer: String,
    #[serde(rename = "s")]
    pub subject: String,
    /// `Patient/…` or `Practitioner/…` when the token says who the user is.
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// The access being served by the current task: what the middleware knows of the request,
/// and what handlers note while they serve it.
#[derive(Debug)]
pub struct Current {
    base: Record,
    noted: Mutex<Noted>,
}

#[derive(Debug, Default)]
struct Noted {
    interaction: Option<&'static str>,
    break_glass: Option<String>,
    query: Option<String>,
    resources: Vec<String>,
    results: Vec<String>,
    /// Records inserted in committed write transactions of this request.
    committed: usize,
}

tokio::task_local! {
    static CURRENT: Arc<Current>;
}

impl Current {
    pub fn new(base: Record) -> Arc<Self> {
        Arc::new(Self {
            base,
            noted: Mutex::new(Noted::default()),
        })
    }

    fn noted(&self) -> std::sync::MutexGuard<'_, Noted> {
        self.noted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` (the request's handling) with this access as the current one.
    pub async fn scope<F: Future>(self: &Arc<Self>, f: F) -> F::Output {
        CURRENT.scope(self.clone(), f).await
    }

    /// Whether write transactions of the request recorded all of it (nothing read since).
    pub fn recorded_with_a_write(&self) -> bool {
        let noted = self.noted();
        noted.committed > 0
            && noted.resources.is_empty()
            && noted.results.is_empty()
            && noted.query.is_none()
    }

    /// The record of the whole request, answered with `status`; `fallback` names the
    /// resource of the URL when no handler noted one (a refused or failed read).
    pub fn finish(&self, status: u16, fallback: Option<String>) -> Record {
        let noted = std::mem::take(&mut *self.noted());
        let mut record = self.record(&noted);
        record.status = status;
        record.query = noted.query.or(record.query);
        record.resources = noted.resources;
        if record.resources.is_empty() {
            record.resources.extend(fallback);
        }
        record.results = noted.results;
        record
    }
}

impl Current {
    /// The request's record as the middleware made it, with what handlers noted of its
    /// interaction and break-the-glass.
    fn record(&self, noted: &Noted) -> Record {
        let mut record = self.base.clone();
        if let Some(interaction) = noted.interaction {
            interaction.clone_into(&mut record.interaction);
        }
        if let Some(reason) = &noted.break_glass {
            record.break_glass = Some(reason.clone());
            "BTG".clone_into(&mut record.purpose);
        }
        record
    }
}

fn with_current(f: impl FnOnce(&Current)) {
    let _ = CURRENT.try_with(|current| f(current));
}

/// Notes a resource read (a versioned reference, `Observation/1/_history/2`).
pub fn note_resource(reference: String) {
    with_current(|c| c.noted().resources.push(reference));
}

/// Notes what a search or history returned (`(type, id)`).
pub fn note_results<'a>(found: impl IntoIterator<Item = (&'a str, &'a str)>) {
    with_current(|c| {
        let mut noted = c.noted();
        noted
            .results
            .extend(found.into_iter().map(|(t, id)| format!("{t}/{id}")));
    });
}

/// Notes a search's query, as the handler understood it (a `POST _search` form included).
pub fn note_query(rt: &str, params: &[(String, String)]) {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        query.append_pair(k, v);
    }
    let query = format!("{rt}?{}", query.finish());
    with_current(|c| c.noted().query = Some(query));
}

/// Notes that the request passed by break-the-glass, with its stated reason.
pub fn note_break_glass(reason: String) {
    with_current(|c| c.noted().break_glass = Some(reason));
}

/// Notes an interaction only the handler can tell (`batch` or `transaction`).
pub fn note_interaction(interaction: &'static str) {
    with_current(|c| c.noted().interaction = Some(interaction));
}

/// A resource version a transaction wrote.
#[derive(Debug)]
pub(crate) struct Written {
    /// `Observation/1/_history/2`
    pub reference: String,
    pub action: &'static str,
    pub patients: Vec<String>,
}

/// The access record of a write transaction of the current request, inserted in `tx` (it
/// commits with the writes). Returns whether one was inserted (no current request: a
/// background job's write, which is not an access).
pub(crate) async fn record_in(tx: &mut Tx, written: &[Written]) -> Result<bool, EhrError> {
    // What the request read so far (a transaction's GET entries) goes in the same record.
    let Ok((mut record, read)) = CURRENT.try_with(|c| {
        let mut noted = c.noted();
        let mut record = c.record(&noted);
        record.query = noted.query.take();
        record.results = std::mem::take(&mut noted.results);
        (record, std::mem::take(&mut noted.resources))
    }) else {
        return Ok(false);
    };
    record.status = 200;
    let first = written.first().map_or("E", |w| w.action);
    record.action = if written.iter().all(|w| w.action == first) {
        first.to_string()
    } else {
        "E".to_string()
    };
    record.resources = written.iter().map(|w| w.reference.clone()).collect();
    record.resources.extend(read);
    record.patients = written
        .iter()
        .flat_map(|w| w.patients.iter().cloned())
        .collect();
    record.patients.sort_unstable();
    record.patients.dedup();
    let records = serde_json::to_string(&[Entry::new(record)]).unwrap_or_default();
    sqlx::query(&insert_sql(tx.backend()))
        .bind(records)
        .execute(&mut **tx)
        .await?;
    Ok(true)
}

/// Called after a transaction holding a record committed.
pub(crate) fn committed() {
    with_current(|c| c.noted().committed += 1);
}

/// One record in the outbox: the AuditEvent's id and time, chosen when the access happened.
#[derive(Debug, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    /// Microseconds since the Unix epoch.
    #[serde(rename = "t")]
    pub recorded: i64,
    #[serde(rename = "r")]
    pub record: Record,
}

impl Entry {
    fn new(record: Record) -> Self {
        Self {
            id: crate::store::new_id(),
            recorded: sen_platform::unix_micros(),
            record,
        }
    }
}

pub(crate) fn outbox_table(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "ehr.audit_outbox",
        Backend::Sqlite => "ehr_audit_outbox",
    }
}

/// `INSERT` of one outbox row (a JSON array of entries).
fn insert_sql(backend: Backend) -> String {
    format!(
        "INSERT INTO {} (records) VALUES ($1)",
        outbox_table(backend)
    )
}

/// A record waiting for the group committer, and who waits for it.
struct Pending {
    entry: Entry,
    done: oneshot::Sender<bool>,
}

/// Records per group commit, at most.
const GROUP: usize = 512;

/// Times the committer lets other tasks run before its commit, to gather more records.
/// Measured on the read benchmark (RESULTS.md): one committer gathering so (about 17 records
/// a commit) kept more reads than two committers or none of this (5 to 10 a commit), since
/// each commit costs the database more than its records do.
const GATHER_YIELDS: usize = 3;

/// Records waiting for the committer before new ones wait for room.
const QUEUE: usize = 8_192;

/// The audit side of the EHR service: the group committer's queue and the relay's wake-up.
#[derive(Debug)]
pub struct Audit {
    queue: mpsc::Sender<Pending>,
    wake: Arc<Notify>,
    /// One relay batch at a time in this process (the background relay and catch-ups).
    relay_turn: tokio::sync::Mutex<()>,
    per_second: u32,
    /// How long an AuditEvent search or read waits for the relay (see [`Ehr::audit_catch_up`]).
    pub(crate) catch_up: Duration,
    /// Records handed to the group committer so far (how busy the server is).
    arrivals: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Audit {
    /// Starts the group committer on `db` (a task that ends when the service is dropped).
    pub fn start(db: sen_platform::Database, per_second: u32, catch_up: Duration) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let wake = Arc::new(Notify::new());
        tokio::spawn(group_committer(db, receiver, wake.clone()));
        Self {
            queue,
            wake,
            relay_turn: tokio::sync::Mutex::new(()),
            per_second: per_second.max(1),
            catch_up,
            arrivals: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Records an access durably (inserted and committed) and returns once it is.
    pub async fn record(&self, record: Record) -> Result<(), AuditUnavailable> {
        self.arrivals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (done, committed) = oneshot::channel();
        let pending = Pending {
            entry: Entry::new(record),
            done,
        };
        self.queue
            .send(pending)
            .await
            .map_err(|_| AuditUnavailable)?;
        match committed.await {
            Ok(true) => Ok(()),
            _ => Err(AuditUnavailable),
        }
    }

    /// Wakes the relay (a write transaction with its record committed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}

/// The record of an access could not be made durable (database unreachable).
#[derive(Debug, thiserror::Error)]
#[error("the access could not be recorded")]
pub struct AuditUnavailable;

/// Inserts the queued records, as many as are waiting (up to [`GROUP`]), as one outbox row,
/// and tells each waiter once it is committed.
async fn group_committer(
    db: sen_platform::Database,
    mut receiver: mpsc::Receiver<Pending>,
    wake: Arc<Notify>,
) {
    let sql = insert_sql(db.backend());
    let mut batch: Vec<Pending> = Vec::with_capacity(GROUP);
    loop {
        let received = receiver.recv_many(&mut batch, GROUP).await;
        if received == 0 {
            return;
        }
        // Requests being answered at this moment hand in their records too: letting them run
        // first gathers those into this commit rather than the next (fewer, larger commits).
        for _ in 0..GATHER_YIELDS {
            tokio::task::yield_now().await;
            while batch.len() < GROUP {
                match receiver.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
        }
        let mut records = String::with_capacity(batch.len() * 640);
        records.push('[');
        for (i, p) in batch.iter().enumerate() {
            if i > 0 {
                records.push(',');
            }
            records.push_str(&serde_json::to_string(&p.entry).unwrap_or_default());
        }
        records.push(']');
        let ok = match insert(&db, &sql, records).await {
            Ok(()) => true,
            Err(e) => {
                metrics::counter!("audit_record_failures_total").increment(batch.len() as u64);
                tracing::error!(error = %crate::error::db_error_kind(&e), records = batch.len(), "access records could not be written");
                false
            }
        };
        metrics::counter!("audit_records_total").increment(batch.len() as u64);
        for p in batch.drain(..) {
            let _ = p.done.send(ok);
        }
        wake.notify_one();
    }
}

/// One outbox row, committed: on PostgreSQL through a search connection (sqlx's pool would
/// add a round trip per use, see `sen_platform::db::Reader`), on SQLite through the writer.
async fn insert(
    db: &sen_platform::Database,
    sql: &str,
    records: String,
) -> Result<(), sqlx::Error> {
    let query = sqlx::query(sql).bind(records);
    match db.pg_read().await? {
        Some(mut conn) => {
            query.execute(conn.conn()).await?;
            conn.done();
        }
        None => {
            query.execute(db.writer()).await?;
        }
    }
    Ok(())
}
