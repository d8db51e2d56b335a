//! What the store's integrity record costs: the same flushed writes (a run saved, then an event
//! appended, as a run's transition does) through `SledStore`, which writes each change in a
//! sled transaction with the integrity record and rewrites the integrity file after the flush,
//! and straight into sled with an insert and a flush, as sluice did before. Then the time to
//! open the busy store with every record read and checked.
//!
//! `cargo run --example store_write_cost [WRITES]` (default 2000).

use std::time::{Duration, Instant};

use chrono::Utc;
use sluice::store::{Event, SledStore, Store};

fn event(n: usize) -> Event {
    Event {
        at: Utc::now(),
        actor: "sluice".into(),
        action: "run.applying".into(),
        environment: "prod".into(),
        reason: Some(format!("step {n}")),
        detail: serde_json::json!({"index": n, "total": 40, "migration": "20240101000000_users"}),
        run_id: Some(format!("run-{}", n / 40)),
    }
}

fn per_write(elapsed: Duration, writes: usize) -> String {
    format!("{:.0} µs", elapsed.as_secs_f64() * 1e6 / writes as f64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let writes: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(2000);
    let mark = |n: usize| serde_json::json!({"n": n, "at": Utc::now()});

    let plain_dir = tempfile::tempdir()?;
    let db = sled::open(plain_dir.path())?;
    let events = db.open_tree("events")?;
    let marks = db.open_tree("marks")?;
    let started = Instant::now();
    for n in 0..writes {
        marks.insert(format!("m{}", n % 50), serde_json::to_vec(&mark(n))?)?;
        db.flush()?;
        let id = db.generate_id()?;
        events.insert(id.to_be_bytes(), serde_json::to_vec(&event(n))?)?;
        db.flush()?;
    }
    let plain = started.elapsed();
    drop((events, marks, db));

    let dir = tempfile::tempdir()?;
    let store = SledStore::open(dir.path())?;
    let started = Instant::now();
    for n in 0..writes {
        store.put_mark(&format!("m{}", n % 50), &mark(n))?;
        store.append_event(&event(n))?;
    }
    let checked = started.elapsed();
    let records = store.integrity()?.records();
    drop(store);

    let started = Instant::now();
    let reopened = loop {
        match SledStore::open(dir.path()) {
            Err(sluice::Error::StoreBusy { .. }) if started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            other => break other?,
        }
    };
    let opened = started.elapsed();
    drop(reopened);

    let total = writes * 2;
    println!("{total} flushed writes each way");
    println!(
        "sled insert + flush:                      {:>8.2?} total, {} per write",
        plain,
        per_write(plain, total)
    );
    println!(
        "with the integrity record and file:       {:>8.2?} total, {} per write ({:.2}x)",
        checked,
        per_write(checked, total),
        checked.as_secs_f64() / plain.as_secs_f64()
    );
    println!("open, reading and checking {records} records: {opened:.2?}");
    Ok(())
}
