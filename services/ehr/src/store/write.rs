//! Writes: create, update and delete, each usable on its own (one transaction per call) or
//! inside a caller's transaction (`*_in`), which is how a transaction Bundle commits many
//! entries at once.

use std::collections::HashMap;

use sqlx::{Any, Row, Transaction};

use super::{
    Created, Deleted, Method, ResourceStore, Updated, Version, WRITE_ATTEMPTS, check_if_match,
    format_instant, now_micros, version_from_row,
};
use crate::{
    criteria::Criteria, definitions::ResourceType, error::EhrError, resource::IncomingResource,
};

/// A write transaction on the store's database. Search index rows of the resources written
/// in it are held back and written together, one multi-row statement per table, when the
/// transaction commits (or earlier, before anything reads the index inside it): a
/// 100-entry Bundle costs a handful of index statements, not hundreds.
pub struct Tx {
    inner: Transaction<'static, Any>,
    pending: Vec<(String, String, i64, crate::search::extract::IndexRows)>,
    pending_rows: usize,
    prefix: &'static str,
    backend: sen_platform::Backend,
    /// What the transaction wrote, for its access record (see `crate::audit`).
    written: Vec<crate::audit::Written>,
    /// Whether its writes are an access to record (the audit relay's own are not).
    audited: bool,
}

/// Held-back index rows beyond which they are written at once (bounds memory and statement size).
const PENDING_ROWS: usize = 4_000;

/// Ids read by one statement of [`ResourceStore::read_many_for_update`].
const READ_MANY: usize = 500;

impl std::ops::Deref for Tx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        &self.inner
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.inner
    }
}

impl Tx {
    /// Writes the held-back index rows and the access record of the writes, then commits:
    /// a write and its record are kept together or not at all.
    pub async fn commit(mut self) -> Result<(), EhrError> {
        self.flush().await?;
        let written = std::mem::take(&mut self.written);
        let recorded = self.audited
            && !written.is_empty()
            && crate::audit::record_in(&mut self, &written).await?;
        self.inner.commit().await?;
        if recorded {
            crate::audit::committed();
        }
        Ok(())
    }

    pub fn backend(&self) -> sen_platform::Backend {
        self.backend
    }

    /// Notes a version written in this transaction, for its access record.
    pub(crate) fn wrote(&mut self, written: crate::audit::Written) {
        if self.audited {
            self.written.push(written);
        }
    }

    /// Holds back the index rows of one resource.
    pub(crate) async fn hold(
        &mut self,
        rt: &str,
        id: &str,
        rid: i64,
        rows: crate::search::extract::IndexRows,
    ) -> Result<(), EhrError> {
        self.pending_rows += rows.len();
        self.pending
            .push((rt.to_string(), id.to_string(), rid, rows));
        if self.pending_rows >= PENDING_ROWS {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes the held-back index rows.
    pub(crate) async fn flush(&mut self) -> Result<(), EhrError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_rows = 0;
        let mut inserts = super::Inserts::new(self.prefix);
        for (rt, id, rid, rows) in &pending {
            inserts.resource(rt, id, *rid, rows);
        }
        if inserts.tables.is_empty() {
            return Ok(());
        }
        if self.backend == sen_platform::Backend::Postgres {
            let (sql, binds) = inserts.json_statement();
            let mut query = sqlx::query(&sql);
            for json in binds {
                query = query.bind(json);
            }
            query.execute(&mut *self.inner).await?;
            return Ok(());
        }
        for (sql, binds) in inserts.statements() {
            super::bind_rows(sqlx::query(&sql), &binds)
                .execute(&mut *self.inner)
                .await?;
        }
        Ok(())
    }
}

impl ResourceStore {
    /// Starts a write transaction (on SQLite this takes the single writer connection). Its
    /// writes, made for a request, commit with the request's access record.
    pub async fn begin(&self) -> Result<Tx, EhrError> {
        Ok(Tx {
            inner: self.db.writer().begin().await?,
            pending: Vec::new(),
            pending_rows: 0,
            prefix: self.sql.index_prefix,
            backend: self.db.backend(),
            written: Vec::new(),
            audited: true,
        })
    }

    /// A write transaction that is not an access (the audit relay's own writes).
    pub(crate) async fn begin_unaudited(&self) -> Result<Tx, EhrError> {
        let mut tx = self.begin().await?;
        tx.audited = false;
        Ok(tx)
    }

    /// Creates a resource with a server-assigned id. With `condition` (If-None-Exist), an
    /// existing match is returned instead, and several matches are refused.
    pub async fn create(
        &self,
        resource: &IncomingResource,
        condition: Option<&Criteria>,
    ) -> Result<Created, EhrError> {
        let mut tx = self.begin().await?;
        let created = self.create_in(&mut tx, resource, condition, None).await?;
        tx.commit().await?;
        Ok(created)
    }

    /// The one current resource matching `criteria`, if any, seen from inside `tx`; writers
    /// with the same criteria are serialised until `tx` ends.
    pub async fn find_match_in(
        &self,
        tx: &mut Tx,
        criteria: &Criteria,
    ) -> Result<Option<Version>, EhrError> {
        self.lock_condition(tx, criteria).await?;
        tx.flush().await?;
        let matches = self.find(tx, criteria, 2).await?;
        match matches.as_slice() {
            [] => Ok(None),
            [(id, _)] => self.read_in(tx, criteria.resource_type(), id).await,
            many => Err(EhrError::MultipleMatches { count: many.len() }),
        }
    }

    /// The current version of a resource, seen from inside `tx`.
    pub async fn read_in(
        &self,
        tx: &mut Tx,
        rt: ResourceType,
        id: &str,
    ) -> Result<Option<Version>, EhrError> {
        let row = sqlx::query(&self.sql.read)
            .bind(rt.as_str())
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        Ok(row.map(|r| version_from_row(&r, 0)).transpose()?)
    }

    /// [`ResourceStore::create`] inside `tx`, with the id given (a Bundle assigns ids before
    /// it writes, to resolve `urn:uuid:` references) or a new one.
    pub async fn create_in(
        &self,
        tx: &mut Tx,
        resource: &IncomingResource,
        condition: Option<&Criteria>,
        id: Option<String>,
    ) -> Result<Created, EhrError> {
        let rt = resource.resource_type;
        if let Some(criteria) = condition
            && let Some(existing) = self.find_match_in(tx, criteria).await?
        {
            // Nothing is written, but the match is answered with its content: an access.
            crate::audit::note_resource(format!(
                "{}/{}/_history/{}",
                existing.resource_type, existing.id, existing.version
            ));
            return Ok(Created::Existing(existing));
        }
        self.check_remote(tx, resource).await?;
        let id = id.unwrap_or_else(crate::store::new_id);
        let now = now_micros();
        let content = resource.stored_json(&id, 1, &format_instant(now));
        let version = Version {
            resource_type: rt.as_str().to_string(),
            id,
            version: 1,
            last_updated: now,
            deleted: false,
            method: Method::Post,
            content,
        };
        let inserted = self
            .bind_version(sqlx::query(&self.sql.insert_current), &version)
            .fetch_optional(&mut **tx)
            .await?;
        let Some(row) = inserted else {
            return Err(EhrError::Contention);
        };
        let rid: i64 = row.try_get(0)?;
        self.write_history_and_index(tx, &version, Some(resource.take_index()), rid, false)
            .await?;
        Ok(Created::New(version))
    }

    /// Circular 30/2023 (see [`crate::remote`]): a remote examination's diagnoses must be
    /// conditions the circular lists. Read inside `tx`, so a Bundle's own Encounter counts.
    async fn check_remote(&self, tx: &mut Tx, resource: &IncomingResource) -> Result<(), EhrError> {
        use crate::remote::{is_encounter_diagnosis, is_remote_examination, reference_id, refusal};
        let Some(eligible) = self.remote_eligible.get() else {
            return Ok(());
        };
        let tree = resource.tree();
        let current = |version: Option<Version>| {
            version
                .filter(|v| !v.deleted)
                .and_then(|v| serde_json::from_str::<serde_json::Value>(&v.content).ok())
        };
        let refused = |message| Err(EhrError::NotRemoteEligible { message });
        match resource.resource_type.as_str() {
            "Condition" if is_encounter_diagnosis(tree) => {
                let (Some(id), Some(rt)) = (
                    reference_id(tree.get("encounter"), "Encounter"),
                    self.defs.resource_type("Encounter"),
                ) else {
                    return Ok(());
                };
                let encounter = current(self.read_in(tx, rt, id).await?);
                if encounter.is_some_and(|e| is_remote_examination(&e))
                    && let Some(message) = refusal(tree, eligible)
                {
                    return refused(message);
                }
            }
            "Encounter" if is_remote_examination(tree) => {
                let Some(rt) = self.defs.resource_type("Condition") else {
                    return Ok(());
                };
                let diagnoses = tree.get("diagnosis").and_then(serde_json::Value::as_array);
                for diagnosis in diagnoses.into_iter().flatten() {
                    let Some(id) = reference_id(diagnosis.get("condition"), "Condition") else {
                        continue;
                    };
                    if let Some(condition) = current(self.read_in(tx, rt, id).await?)
                        && let Some(message) = refusal(&condition, eligible)
                    {
                        return refused(message);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Updates (or creates with the client's id) a resource, retrying when a concurrent
    /// writer created the same id first.
    pub async fn update(
        &self,
        rt: ResourceType,
        id: &str,
        resource: &IncomingResource,
        if_match: Option<i64>,
    ) -> Result<Updated, EhrError> {
        for _ in 0..WRITE_ATTEMPTS {
            let mut tx = self.begin().await?;
            match self.update_in(&mut tx, rt, id, resource, if_match).await {
                // Dropping the transaction rolls it back.
                Err(EhrError::Contention) => continue,
                Err(e) => return Err(e),
                Ok(updated) => {
                    tx.commit().await?;
                    return Ok(updated);
                }
            }
        }
        Err(EhrError::Contention)
    }

    /// [`ResourceStore::update`] inside `tx`, without retry: a lost race is `Contention`.
    pub async fn update_in(
        &self,
        tx: &mut Tx,
        rt: ResourceType,
        id: &str,
        resource: &IncomingResource,
        if_match: Option<i64>,
    ) -> Result<Updated, EhrError> {
        let current = self.read_for_update(tx, rt, id).await?;
        self.update_from(tx, rt, id, resource, if_match, current)
            .await
    }

    /// The current version of a resource, locked until `tx` ends (PostgreSQL).
    async fn read_for_update(
        &self,
        tx: &mut Tx,
        rt: ResourceType,
        id: &str,
    ) -> Result<Option<Version>, EhrError> {
        Ok(sqlx::query(&self.sql.read_for_update)
            .bind(rt.as_str())
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| version_from_row(&r, 0))
            .transpose()?)
    }

    /// The current versions of resources of one type, locked until `tx` ends (PostgreSQL): a
    /// Bundle's PUT entries read what they replace in one statement.
    pub(crate) async fn read_many_for_update(
        &self,
        tx: &mut Tx,
        rt: ResourceType,
        ids: &[&str],
    ) -> Result<HashMap<String, Version>, EhrError> {
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(READ_MANY) {
            let placeholders: Vec<String> = (2..chunk.len() + 2)
                .map(|n| match tx.backend {
                    sen_platform::Backend::Postgres => format!("(${n})"),
                    sen_platform::Backend::Sqlite => format!("${n}"),
                })
                .collect();
            let sql = self
                .sql
                .read_many_for_update
                .replace("{ids}", &placeholders.join(", "));
            let mut query = sqlx::query(&sql).bind(rt.as_str());
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut **tx).await? {
                let version = version_from_row(&row, 0)?;
                found.insert(version.id.clone(), version);
            }
        }
        Ok(found)
    }

    /// [`ResourceStore::update_in`] with the current version already read (and locked) in `tx`.
    pub(crate) async fn update_from(
        &self,
        tx: &mut Tx,
        rt: ResourceType,
        id: &str,
        resource: &IncomingResource,
        if_match: Option<i64>,
        current: Option<Version>,
    ) -> Result<Updated, EhrError> {
        if current.is_some() {
            refuse_changing_audit(rt)?;
        }
        check_if_match(if_match, current.as_ref())?;
        self.check_remote(tx, resource).await?;
        let now = now_micros();
        let number = current.as_ref().map_or(1, |c| c.version + 1);
        let version = Version {
            resource_type: rt.as_str().to_string(),
            id: id.to_string(),
            version: number,
            last_updated: now,
            deleted: false,
            method: Method::Put,
            content: resource.stored_json(id, number, &format_instant(now)),
        };
        let written = match &current {
            Some(c) => {
                self.bind_version(sqlx::query(&self.sql.update_current), &version)
                    .bind(c.version)
                    .fetch_optional(&mut **tx)
                    .await?
            }
            None => {
                self.bind_version(sqlx::query(&self.sql.insert_current), &version)
                    .fetch_optional(&mut **tx)
                    .await?
            }
        };
        let Some(row) = written else {
            return Err(EhrError::Contention);
        };
        let rid: i64 = row.try_get(0)?;
        let created = current.is_none_or(|c| c.deleted);
        self.write_history_and_index(tx, &version, Some(resource.take_index()), rid, !created)
            .await?;
        Ok(Updated { version, created })
    }

    /// Deletes a resource: its current row becomes a deletion, history keeps every version.
    pub async fn delete(
        &self,
        rt: ResourceType,
        id: &str,
        if_match: Option<i64>,
    ) -> Result<Deleted, EhrError> {
        let mut tx = self.begin().await?;
        let deleted = self.delete_in(&mut tx, rt, id, if_match).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    /// [`ResourceStore::delete`] inside `tx`.
    pub async fn delete_in(
        &self,
        tx: &mut Tx,
        rt: ResourceType,
        id: &str,
        if_match: Option<i64>,
    ) -> Result<Deleted, EhrError> {
        refuse_changing_audit(rt)?;
        let Some(current) = self.read_for_update(tx, rt, id).await? else {
            return Err(EhrError::NotFound {
                resource_type: rt.as_str(),
                id: id.to_string(),
            });
        };
        check_if_match(if_match, Some(&current))?;
        if current.deleted {
            return Ok(Deleted::Already);
        }
        let version = Version {
            resource_type: rt.as_str().to_string(),
            id: id.to_string(),
            version: current.version + 1,
            last_updated: now_micros(),
            deleted: true,
            method: Method::Delete,
            content: String::new(),
        };
        let written = self
            .bind_version(sqlx::query(&self.sql.update_current), &version)
            .bind(current.version)
            .fetch_optional(&mut **tx)
            .await?;
        let Some(row) = written else {
            return Err(EhrError::Contention);
        };
        let rid: i64 = row.try_get(0)?;
        if tx.audited {
            // The deleted resource's patients, for the access record (its index goes now).
            let tree: serde_json::Value =
                serde_json::from_str(&current.content).unwrap_or_default();
            tx.wrote(crate::audit::Written {
                reference: versioned(&version),
                action: "D",
                patients: crate::search::extract::patients_of(rt, id, &tree),
            });
        }
        self.write_history_and_index(tx, &version, None, rid, true)
            .await?;
        Ok(Deleted::Now(version))
    }
}

/// AuditEvents are the permanent record of who accessed what (Circular 13/2025/TT-BYT): the
/// store creates them and never changes or removes one, whatever path a request takes (REST,
/// conditional, PATCH, Bundle entries). A PUT to an id no AuditEvent ever had creates one.
fn refuse_changing_audit(rt: ResourceType) -> Result<(), EhrError> {
    if rt.as_str() == "AuditEvent" {
        return Err(EhrError::AuditPermanent);
    }
    Ok(())
}

/// `Type/id/_history/n`: the version an access record names.
pub(crate) fn versioned(version: &Version) -> String {
    format!(
        "{}/{}/_history/{}",
        version.resource_type, version.id, version.version
    )
}
