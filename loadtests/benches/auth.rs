//! Token verification and authorization per request (issue 5: < 0.2 ms at p99).
//! `cargo bench -p sen-loadtests --bench auth`. Criterion measures the mean per request; the
//! p99 is measured after it, over 20,000 single requests timed one by one, and printed.
//!
//! One request's work for a token not seen before: read the token's header and issuer, find
//! the issuer's key, verify the signature (Ed25519, the embedded key; EdDSA is what `sen
//! token` signs), check `iss`/`aud`/`exp`/`nbf`, build the principal and parse its scopes,
//! then decide one interaction on one type. For a token seen before (a client's usual
//! request), the verified principal is looked up instead of verified again.

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use sen_platform::{
    Config,
    auth::{Auth, Interaction, Role, TokenRequest},
};

fn token(auth: &Auth, role: Role, scope: &str) -> String {
    auth.mint(&TokenRequest {
        role,
        // A subject of its own: every token differs.
        subject: Some(uuid::Uuid::new_v4().to_string()),
        patient: (role == Role::Patient).then(|| "Patient/p1".to_string()),
        practitioner: None,
        scope: Some(scope.to_string()),
        ttl_secs: 3600,
    })
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.database.data_dir = dir.path().to_path_buf();
    let auth = Auth::from_config(&config).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let patient_scopes = "openid fhirUser launch/patient patient/Observation.rs patient/Patient.rs patient/Encounter.rs";
    // More distinct tokens than the verified-token memory holds, used in turn: each use is a
    // first sight.
    let fresh: Vec<String> = (0..20_000)
        .map(|i| {
            if i % 2 == 0 {
                token(&auth, Role::System, "system/*.cruds")
            } else {
                token(&auth, Role::Patient, patient_scopes)
            }
        })
        .collect();
    let seen = [
        token(&auth, Role::System, "system/*.cruds"),
        token(&auth, Role::Patient, patient_scopes),
    ];
    let check = |token: &str| {
        runtime.block_on(async {
            let principal = auth.authenticate(token).await.unwrap();
            assert!(principal.scope_allows(Interaction::Read, "Observation"));
        })
    };
    let mut group = c.benchmark_group("authenticate and authorize");
    let mut next = 0;
    group.bench_function("new token", |b| {
        b.iter(|| {
            next = (next + 1) % fresh.len();
            check(std::hint::black_box(&fresh[next]))
        })
    });
    let mut turn = 0;
    group.bench_function("token seen before", |b| {
        b.iter(|| {
            turn += 1;
            check(std::hint::black_box(&seen[turn % 2]))
        })
    });
    group.finish();
    for (name, tokens) in [("new token", &fresh[..]), ("token seen before", &seen[..])] {
        let mut times: Vec<f64> = (0..20_000)
            .map(|i| {
                let token = &tokens[(i + 1) % tokens.len()];
                let started = Instant::now();
                check(token);
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!(
            "authenticate and authorize/{name}: p50 {:.4} ms, p99 {:.4} ms, p99.9 {:.4} ms (20,000 requests)",
            at(0.50),
            at(0.99),
            at(0.999)
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
