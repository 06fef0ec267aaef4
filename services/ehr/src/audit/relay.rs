//! The relay: outbox rows become AuditEvent resources. One transaction per batch creates the
//! AuditEvents and deletes their rows, so a record becomes exactly one AuditEvent whatever
//! stops the process. On PostgreSQL several processes relay side by side: each takes rows no
//! other holds (`FOR UPDATE SKIP LOCKED`).
//!
//! The patients of a read or search are found here, off the request's path: from the
//! Patient-compartment references of the resources it returned (their current index rows).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use sen_platform::Backend;
use sqlx::Row;
use tokio::sync::Notify;

use super::{Entry, Record, audit_event, outbox_table};
use crate::{Ehr, error::EhrError, resource::IncomingResource, store::Tx};

/// Records per relay transaction (at least one outbox row's, whatever its size).
const BATCH: usize = 200;

/// Outbox rows read per relay transaction, at most.
const ROWS: i64 = 64;

/// How often the relay looks for rows other processes recorded, when nothing woke it.
const POLL: Duration = Duration::from_secs(1);

/// Accesses recorded per second above which the server counts as busy.
const BUSY: f64 = 1_000.0;

/// How long the relay waits for a busy server at most: past it, the records waiting that long
/// are relayed at full pace whatever the load.
const MAX_DEFERRAL: Duration = Duration::from_secs(60);

/// How often a catch-up looks again at outbox rows another process's relay holds.
const HELD: Duration = Duration::from_millis(20);

/// How often a deferring relay looks at the load again.
const RECHECK: Duration = Duration::from_millis(250);

/// How busy the server is: accesses recorded per second, sampled between relay batches.
struct Load {
    at: Instant,
    arrivals: u64,
    busy: bool,
    /// Since when the relay has left records waiting for a busy server.
    deferring_since: Option<Instant>,
}

impl Load {
    fn sample(&mut self, arrivals: u64) -> bool {
        let elapsed = self.at.elapsed().as_secs_f64();
        if elapsed >= 0.25 {
            let rate = arrivals.saturating_sub(self.arrivals) as f64 / elapsed;
            self.busy = rate > BUSY;
            self.at = Instant::now();
            self.arrivals = arrivals;
        }
        self.busy
    }

    /// Whether the relay should leave its records waiting now: the server is busy and has not
    /// kept them waiting for [`MAX_DEFERRAL`] yet.
    fn defer(&mut self, arrivals: u64) -> bool {
        if !self.sample(arrivals) {
            return false;
        }
        let since = *self.deferring_since.get_or_insert_with(Instant::now);
        since.elapsed() < MAX_DEFERRAL
    }
}

/// Relays until the service is dropped: woken by new records, at most `per_second` records a
/// second. While the server records more than [`BUSY`] accesses a second the relay waits, up
/// to [`MAX_DEFERRAL`]: every access is durable in the outbox already, turning records into
/// indexed resources costs several times what the access did (measured, RESULTS.md), and a
/// burst of reads should not pay for it while it lasts. Past that, or once the load falls, it
/// relays at full pace until the outbox is empty. A search or read of AuditEvents catches up
/// first, whatever the load.
pub(crate) async fn run(ehr: Weak<Ehr>, wake: Arc<Notify>) {
    let mut load = Load {
        at: Instant::now(),
        arrivals: 0,
        busy: false,
        deferring_since: None,
    };
    loop {
        let _ = tokio::time::timeout(POLL, wake.notified()).await;
        let Some(service) = ehr.upgrade() else { return };
        loop {
            let arrivals = service
                .audit
                .arrivals
                .load(std::sync::atomic::Ordering::Relaxed);
            if load.defer(arrivals) {
                drop(service);
                tokio::time::sleep(RECHECK).await;
                break;
            }
            let pace = f64::from(service.audit.per_second);
            let started = Instant::now();
            let relayed = match service.audit_relay_once(None).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "audit relay failed; retrying");
                    0
                }
            };
            if relayed == 0 {
                load.deferring_since = None;
                break;
            }
            // Pace: `relayed` records may take relayed / pace seconds.
            let share = Duration::from_secs_f64(relayed as f64 / pace);
            if let Some(rest) = share.checked_sub(started.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
    }
}

impl Ehr {
    /// Relays every record made before this call (within `deadline`): what a search or read
    /// of AuditEvents does first, so that it sees every access answered before it. Returns
    /// whether it caught up. Rows another process's relay holds (PostgreSQL skips locked
    /// rows) count as not caught up until that relay has committed them.
    pub async fn audit_catch_up(&self, deadline: Duration) -> Result<bool, EhrError> {
        let table = outbox_table(self.store.database().backend());
        let db = self.store.database().writer();
        let last: Option<i64> = sqlx::query(&format!("SELECT MAX(seq) FROM {table}"))
            .fetch_one(db)
            .await?
            .try_get(0)?;
        let Some(last) = last else { return Ok(true) };
        let until = Instant::now() + deadline;
        loop {
            let relayed = self.audit_relay_once(Some(last)).await?;
            let late = Instant::now() >= until;
            if relayed > 0 && !late {
                continue;
            }
            let left: i64 = sqlx::query(&format!(
                "SELECT COUNT(*) FROM (SELECT 1 FROM {table} WHERE seq <= $1 LIMIT 1) x"
            ))
            .bind(last)
            .fetch_one(db)
            .await?
            .try_get(0)?;
            if left == 0 {
                return Ok(true);
            }
            if late {
                return Ok(false);
            }
            // Held by another relay (or unreadable, reported by the relay): look again
            // shortly, until the deadline.
            tokio::time::sleep(HELD).await;
        }
    }

    /// One relay transaction: the oldest outbox rows (only those up to `upto`) holding up to
    /// [`BATCH`] records, as AuditEvents. Returns how many records it relayed.
    async fn audit_relay_once(&self, upto: Option<i64>) -> Result<usize, EhrError> {
        let _turn = self.audit.relay_turn.lock().await;
        let backend = self.store.database().backend();
        let table = outbox_table(backend);
        let lock = match backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let mut tx = self.store.begin_unaudited().await?;
        let rows = sqlx::query(&format!(
            "SELECT seq, records FROM {table} WHERE seq <= $1 ORDER BY seq LIMIT $2{lock}"
        ))
        .bind(upto.unwrap_or(i64::MAX))
        .bind(ROWS)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut records = Vec::new();
        let mut seqs = Vec::new();
        for row in &rows {
            if !records.is_empty() && records.len() >= BATCH {
                break;
            }
            seqs.push(row.try_get::<i64, _>(0)?);
            let body: String = row.try_get(1)?;
            // A row this version cannot read is kept (and reported) rather than lost.
            let entries: Vec<Entry> = match serde_json::from_str(&body) {
                Ok(entries) => entries,
                Err(_) => {
                    tracing::error!(
                        seq = seqs.last(),
                        "an outbox row could not be read; it is kept"
                    );
                    seqs.pop();
                    continue;
                }
            };
            records.extend(entries.into_iter().map(|e| (e.id, e.recorded, e.record)));
        }
        if seqs.is_empty() {
            return Ok(0);
        }
        let found = patients_of(&mut tx, backend, &records).await?;
        let audit_type = self
            .defs
            .resource_type("AuditEvent")
            .expect("AuditEvent is an R4 type");
        for (id, recorded, record) in &records {
            let mut patients: BTreeSet<String> = record.patients.iter().cloned().collect();
            for reference in record.resources.iter().chain(&record.results) {
                let (rt, rest) = reference.split_once('/').unwrap_or(("", ""));
                let rid = rest.split('/').next().unwrap_or_default();
                if rt == "Patient" {
                    patients.insert(rid.to_string());
                } else if let Some(of) = found.get(&(rt.to_string(), rid.to_string())) {
                    patients.extend(of.iter().cloned());
                }
            }
            let patients: Vec<String> = patients
                .into_iter()
                .filter(|p| crate::resource::is_valid_id(p))
                .collect();
            let event = audit_event(id, *recorded, record, &patients);
            let resource = match IncomingResource::parse_for(
                event.to_string().as_bytes(),
                self.defs,
                audit_type,
                Some(id),
            ) {
                Ok(resource) => resource,
                Err(e) => {
                    // Never stuck on one record: keep who, when and the outcome.
                    tracing::warn!(error = %e, "access record kept without its entities");
                    let bare = Record {
                        resources: Vec::new(),
                        results: Vec::new(),
                        patients: Vec::new(),
                        query: None,
                        ..record.clone()
                    };
                    let event = audit_event(id, *recorded, &bare, &[]);
                    IncomingResource::parse_for(
                        event.to_string().as_bytes(),
                        self.defs,
                        audit_type,
                        Some(id),
                    )?
                }
            };
            match self
                .store
                .update_in(&mut tx, audit_type, id, &resource, None)
                .await
            {
                // Relayed already (a row written twice by an older version): nothing to add.
                Ok(_) | Err(EhrError::AuditPermanent) => {}
                Err(e) => return Err(e),
            }
        }
        let list: Vec<String> = seqs.iter().map(i64::to_string).collect();
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE seq IN ({})",
            list.join(", ")
        ))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        metrics::counter!("audit_events_relayed_total").increment(records.len() as u64);
        Ok(records.len())
    }
}

/// Pairs per patient lookup statement.
const LOOKUP: usize = 400;

/// The patients of every resource the records name (by their current index rows: the
/// Patient targets of their Patient-compartment parameters).
async fn patients_of(
    tx: &mut Tx,
    backend: Backend,
    records: &[(String, i64, Record)],
) -> Result<HashMap<(String, String), Vec<String>>, EhrError> {
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    for (_, _, record) in records {
        for reference in record.resources.iter().chain(&record.results) {
            let mut parts = reference.split('/');
            if let (Some(rt), Some(id)) = (parts.next(), parts.next())
                && rt != "Patient"
            {
                wanted.insert((rt.to_string(), id.to_string()));
            }
        }
    }
    let (res, refs) = match backend {
        Backend::Postgres => ("ehr.resource", "ehr.sp_reference"),
        Backend::Sqlite => ("ehr_resource", "ehr_sp_reference"),
    };
    let wanted: Vec<(String, String)> = wanted.into_iter().collect();
    let mut found: HashMap<(String, String), Vec<String>> = HashMap::new();
    for chunk in wanted.chunks(LOOKUP) {
        let pairs: Vec<String> = (0..chunk.len())
            .map(|i| match backend {
                Backend::Postgres => format!("(${}, ${})", 2 * i + 1, 2 * i + 2),
                Backend::Sqlite => "(?, ?)".to_string(),
            })
            .collect();
        // Each named resource by its key, then that resource's own reference rows, whatever
        // the statistics say: without them (a new database, autovacuum behind) PostgreSQL
        // started from every Patient reference of the store, on a generic plan the
        // connection then kept — a second a statement at 150,000 resources, and growing.
        // So PostgreSQL gets no other way in (lateral subqueries fenced by OFFSET 0, the
        // target type tested here, not in SQL); SQLite keeps a CROSS JOIN's left side outer.
        let sql = match backend {
            Backend::Postgres => format!(
                "SELECT s.resource_type, s.id, s.code, s.target_type, s.target_id \
                 FROM (VALUES {}) w (rt, id) \
                 CROSS JOIN LATERAL (SELECT rid FROM {res} \
                   WHERE resource_type = w.rt AND id = w.id OFFSET 0) r \
                 CROSS JOIN LATERAL (SELECT resource_type, id, code, target_type, target_id \
                   FROM {refs} WHERE rid = r.rid OFFSET 0) s",
                pairs.join(", ")
            ),
            Backend::Sqlite => format!(
                "SELECT s.resource_type, s.id, s.code, s.target_type, s.target_id FROM {res} r \
                 CROSS JOIN {refs} s ON s.rid = r.rid \
                 WHERE (r.resource_type, r.id) IN (VALUES {})",
                pairs.join(", ")
            ),
        };
        let mut query = sqlx::query(&sql);
        for (rt, id) in chunk {
            query = query.bind(rt.as_str()).bind(id.as_str());
        }
        for row in query.fetch_all(&mut **tx).await? {
            let rt: String = row.try_get(0)?;
            let id: String = row.try_get(1)?;
            let code: String = row.try_get(2)?;
            let target_type: String = row.try_get(3)?;
            let target: String = row.try_get(4)?;
            let in_compartment = target_type == "Patient"
                && !target.is_empty()
                && crate::search::query::compartment_row_codes("Patient", &rt)
                    .is_some_and(|codes| codes.contains(&code));
            if in_compartment {
                found.entry((rt, id)).or_default().push(target);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_counts_the_server_busy_above_a_thousand_records_a_second() {
        let mut load = Load {
            at: Instant::now() - Duration::from_secs(1),
            arrivals: 0,
            busy: false,
            deferring_since: None,
        };
        assert!(load.sample(5_000), "5,000 records in a second");
        // Within the same quarter second the answer stands.
        assert!(load.sample(5_001));
        load.at = Instant::now() - Duration::from_secs(1);
        assert!(!load.sample(5_100), "100 records in a second");
    }

    #[test]
    fn the_relay_defers_to_a_busy_server_for_a_bounded_time() {
        let mut load = Load {
            at: Instant::now() - Duration::from_secs(1),
            arrivals: 0,
            busy: false,
            deferring_since: None,
        };
        assert!(load.defer(5_000), "busy: the records wait");
        assert!(load.deferring_since.is_some());
        // Records kept waiting that long are relayed, busy or not.
        load.deferring_since = Some(Instant::now() - MAX_DEFERRAL);
        assert!(!load.defer(5_001));
        // A quiet server relays at once.
        load.deferring_since = None;
        load.at = Instant::now() - Duration::from_secs(1);
        assert!(!load.defer(5_100), "100 records in a second");
    }
}
