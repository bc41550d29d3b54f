//! A bounded load: keep-alive clients that GET one URL until stopped,
//! counting what came back and timing the slowest request.

use crate::client::{Http, Resp};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What a [`Load`] saw, once stopped.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Requests sent (answered or not).
    pub sent: u64,
    /// Answers with status 200.
    pub ok: u64,
    /// Other answers the load was told to expect (see [`Load::start_expecting`]).
    pub expected: u64,
    /// Errors and any other answer.
    pub failed: u64,
    /// The slowest request, in milliseconds.
    pub longest_ms: u64,
    /// The first few failures, for assertion messages.
    pub samples: Vec<String>,
}

/// Clients sending `GET url` in a loop (one connection each).
pub struct Load {
    stop: AtomicBool,
    sent: AtomicU64,
    ok: AtomicU64,
    expected: AtomicU64,
    failed: AtomicU64,
    longest_ms: AtomicU64,
    samples: Mutex<Vec<String>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Load {
    /// Starts `clients` clients; any answer but 200 is a failure.
    pub fn start(url: &str, clients: usize) -> Arc<Load> {
        Self::start_expecting(url, clients, |_| false)
    }

    /// Like [`Load::start`], counting the non-200 answers for which
    /// `expected` holds apart instead of as failures.
    pub fn start_expecting(url: &str, clients: usize, expected: fn(&Resp) -> bool) -> Arc<Load> {
        let load = Arc::new(Load {
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            longest_ms: AtomicU64::new(0),
            samples: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
        });
        let tasks = (0..clients)
            .map(|_| {
                let (load, url) = (load.clone(), url.to_string());
                tokio::spawn(async move { load.client(&url, expected).await })
            })
            .collect();
        *load.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        load
    }

    async fn client(&self, url: &str, expected: fn(&Resp) -> bool) {
        let http = Http::new();
        while !self.stop.load(Ordering::SeqCst) {
            let t0 = Instant::now();
            let r = http.get(url).await;
            self.longest_ms
                .fetch_max(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
            self.sent.fetch_add(1, Ordering::Relaxed);
            let what = match r {
                Ok(r) if r.status == 200 => {
                    self.ok.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Ok(r) if expected(&r) => {
                    self.expected.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Ok(r) => format!("status {}: {}", r.status, r.text()),
                Err(e) => format!("error: {e:#}"),
            };
            self.failed.fetch_add(1, Ordering::Relaxed);
            let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            if samples.len() < 10 {
                samples.push(what);
            }
        }
    }

    /// Stops the clients after their current request, waits for them and
    /// returns the counts.
    pub async fn finish(&self) -> Counts {
        self.stop.store(true, Ordering::SeqCst);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            t.await.expect("load client");
        }
        Counts {
            sent: self.sent.load(Ordering::SeqCst),
            ok: self.ok.load(Ordering::SeqCst),
            expected: self.expected.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            longest_ms: self.longest_ms.load(Ordering::SeqCst),
            samples: self
                .samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}
