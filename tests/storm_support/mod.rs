//! What the storm tests measure, as the runtime manager and an orchestrator would see it:
//! the events emitted against the events deserved, the worker's `/healthz` answers, and the
//! worst gap between two probes of a healthy game.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Polls `GET /healthz` every 200 ms until stopped, keeping every answer (0: no answer
/// within a second) and the worst `last_progress_ms_ago` it reported: `/healthz` has a
/// floor (10 s), so the progress age is what shows a loop that kept turning within
/// 3 × interval however long the storm made a tick.
pub struct LivenessWatch {
    answers: Arc<Mutex<Vec<u16>>>,
    worst_progress_ms: Arc<AtomicU64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl LivenessWatch {
    pub fn start(addr: &str) -> Self {
        healthprobe::install_crypto_provider();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let worst_progress_ms = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let url = format!("http://{addr}/healthz");
        let task = tokio::spawn({
            let (answers, worst, stop) = (answers.clone(), worst_progress_ms.clone(), stop.clone());
            async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(1))
                    .build()
                    .expect("client");
                let mut every = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = every.tick() => {}
                    }
                    let code = match client.get(&url).send().await {
                        Ok(response) => {
                            let code = response.status().as_u16();
                            let body: serde_json::Value = match response.bytes().await {
                                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
                                Err(_) => serde_json::Value::Null,
                            };
                            if let Some(ms) = body["last_progress_ms_ago"].as_u64() {
                                worst.fetch_max(ms, Ordering::Relaxed);
                            }
                            code
                        }
                        Err(_) => 0,
                    };
                    answers.lock().unwrap().push(code);
                }
            }
        });
        Self {
            answers,
            worst_progress_ms,
            stop,
            task,
        }
    }

    /// The longest time without progress any answer reported so far.
    pub fn worst_progress_age(&self) -> Duration {
        Duration::from_millis(self.worst_progress_ms.load(Ordering::Relaxed))
    }

    /// Stops polling; returns (answers, answers that were not 200).
    pub async fn finish(self) -> (usize, usize) {
        self.stop.cancel();
        let _ = self.task.await;
        let answers = self.answers.lock().unwrap();
        (answers.len(), answers.iter().filter(|&&c| c != 200).count())
    }
}

/// The longest time between two consecutive probes in `served` (engine-side arrival
/// times), or zero with fewer than two.
pub fn worst_gap(served: &[Instant]) -> Duration {
    served
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
