//! What the storm tests measure, as the runtime manager and an orchestrator would see it:
//! the events emitted against the events deserved, the worker's `/healthz` answers, and the
//! worst gap between two probes of a healthy game.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Polls `GET /healthz` every 200 ms until stopped, keeping every answer (0: no answer
/// within a second).
pub struct LivenessWatch {
    answers: Arc<Mutex<Vec<u16>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl LivenessWatch {
    pub fn start(addr: &str) -> Self {
        healthprobe::install_crypto_provider();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let url = format!("http://{addr}/healthz");
        let task = tokio::spawn({
            let (answers, stop) = (answers.clone(), stop.clone());
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
                        Ok(response) => response.status().as_u16(),
                        Err(_) => 0,
                    };
                    answers.lock().unwrap().push(code);
                }
            }
        });
        Self {
            answers,
            stop,
            task,
        }
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
