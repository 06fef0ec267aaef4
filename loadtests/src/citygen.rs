//! sen-citygen: loads the deterministic city (`sen_loadtests::city`) into a running Sen as
//! transaction Bundles of PUTs, several Bundles in flight, and reports the ingest rate.
//!
//! ```text
//! sen-citygen [--host http://127.0.0.1:8080] [--patients 100000] [--per-patient 10]
//!             [--bundle 100] [--concurrency 32]
//! ```
//!
//! Patients go first, then their observations, so every reference resolves. Any Bundle the
//! server refuses stops the run with its status and OperationOutcome.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use sen_loadtests::city;

struct Options {
    host: String,
    patients: u64,
    per_patient: u64,
    bundle: u64,
    concurrency: u64,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        host: "http://127.0.0.1:8080".into(),
        patients: 100_000,
        per_patient: 10,
        bundle: 100,
        concurrency: 32,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .with_context(|| format!("{flag} {value}"))
        };
        match flag.as_str() {
            "--host" => o.host = value.trim_end_matches('/').to_string(),
            "--patients" => o.patients = number()?,
            "--per-patient" => o.per_patient = number()?,
            "--bundle" => o.bundle = number()?.max(1),
            "--concurrency" => o.concurrency = number()?.max(1),
            _ => bail!("unknown option {flag}"),
        }
    }
    Ok(o)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = Arc::new(options()?);
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let total = o.patients * (1 + o.per_patient);

    let progress = {
        let written = written.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = written.load(Ordering::Relaxed);
                let s = start.elapsed().as_secs_f64();
                eprintln!("{n}/{total} resources, {:.0}/s", n as f64 / s);
            }
        })
    };

    let mut workers = Vec::new();
    for _ in 0..o.concurrency {
        let (o, client, next, written, latencies) = (
            o.clone(),
            client.clone(),
            next.clone(),
            written.clone(),
            latencies.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = city::bundle(b, o.patients, o.per_patient, o.bundle) else {
                    return anyhow::Ok(());
                };
                let entries = body.matches("\"request\":").count() as u64;
                let sent = Instant::now();
                let response = client
                    .post(format!("{}/fhir", o.host))
                    .header("content-type", "application/fhir+json")
                    .header("authorization", sen_loadtests::authorization())
                    .body(body)
                    .send()
                    .await?;
                let status = response.status();
                if !status.is_success() {
                    let text = response.text().await.unwrap_or_default();
                    bail!("Bundle {b}: {status}: {text}");
                }
                response.bytes().await?;
                latencies.lock().expect("not poisoned").push(sent.elapsed());
                written.fetch_add(entries, Ordering::Relaxed);
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    progress.abort();

    let seconds = start.elapsed().as_secs_f64();
    let n = written.load(Ordering::Relaxed);
    let mut latencies = latencies.lock().expect("not poisoned").clone();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{n} resources in {} Bundles, {seconds:.1} s: {:.0} resources/s; Bundle latency p50 {:.0} ms, p99 {:.0} ms",
        latencies.len(),
        n as f64 / seconds,
        at(0.5),
        at(0.99)
    );
    Ok(())
}
