//! `$reindex`: rebuilds the search index of stored resources in the background, in batches,
//! with its progress readable while it runs (after search parameters change, or for data
//! written before the index existed). One job at a time per process.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::Ehr;

/// Resources per batch (one transaction each).
const BATCH: usize = 500;

/// What the job has done.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub running: bool,
    pub resource_type: Option<String>,
    pub indexed: u64,
    pub started: Option<String>,
    pub finished: Option<String>,
    /// Why the last job stopped early, if it did (no patient data: a database error kind).
    pub error: Option<String>,
}

impl Progress {
    /// As a Parameters resource.
    pub fn to_parameters(&self) -> Value {
        let status = match (self.running, &self.error, &self.finished) {
            (true, _, _) => "running",
            (false, Some(_), _) => "failed",
            (false, None, Some(_)) => "finished",
            _ => "idle",
        };
        let mut parameter = vec![
            json!({"name": "status", "valueCode": status}),
            json!({"name": "indexed", "valueInteger": self.indexed}),
        ];
        for (name, value) in [
            ("type", &self.resource_type),
            ("started", &self.started),
            ("finished", &self.finished),
            ("error", &self.error),
        ] {
            if let Some(v) = value {
                parameter.push(json!({"name": name, "valueString": v}));
            }
        }
        json!({"resourceType": "Parameters", "parameter": parameter})
    }
}

/// The process's reindex job.
#[derive(Debug)]
pub struct Reindex {
    progress: Mutex<Progress>,
    done: tokio::sync::watch::Sender<u64>,
}

impl Default for Reindex {
    fn default() -> Self {
        Self {
            progress: Mutex::new(Progress::default()),
            done: tokio::sync::watch::channel(0).0,
        }
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Reindex {
    pub fn progress(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts a job unless one is running; answers whether it started.
    pub fn start(ehr: &Arc<Ehr>, resource_type: Option<String>) -> bool {
        {
            let mut progress = ehr
                .reindex
                .progress
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if progress.running {
                return false;
            }
            *progress = Progress {
                running: true,
                resource_type: resource_type.clone(),
                started: Some(now()),
                ..Progress::default()
            };
        }
        let ehr = ehr.clone();
        tokio::spawn(async move {
            let mut after = None;
            let error = loop {
                match ehr
                    .store
                    .reindex_batch(resource_type.as_deref(), after.as_ref(), BATCH)
                    .await
                {
                    Ok((n, next)) => {
                        ehr.reindex.update(|p| p.indexed += n as u64);
                        match next {
                            Some(next) => after = Some(next),
                            None => break None,
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reindex stopped");
                        break Some(e.to_string());
                    }
                }
            };
            ehr.reindex.update(|p| {
                p.running = false;
                p.finished = Some(now());
                p.error = error;
            });
            ehr.reindex.done.send_modify(|n| *n += 1);
        });
        true
    }

    fn update(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.progress.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Waits until the running job (if any) ends, at most `limit`.
    pub async fn wait(&self, limit: std::time::Duration) {
        let mut done = self.done.subscribe();
        if !self.progress().running {
            return;
        }
        let _ = tokio::time::timeout(limit, async {
            while self.progress().running {
                if done.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }
}
