//! The progress bar on stderr: redrawn in place on a terminal, one line per case
//! otherwise (so a log file shows what ran).

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

const BAR: usize = 24;

pub(crate) struct Progress {
    state: Option<Arc<Mutex<State>>>,
    ticker: Option<JoinHandle<()>>,
}

struct State {
    total: usize,
    index: usize,
    label: String,
    case_started: Instant,
    expected: Duration,
    started: Instant,
    terminal: bool,
}

impl Progress {
    pub fn new(total: usize, enabled: bool) -> Progress {
        if !enabled {
            return Progress {
                state: None,
                ticker: None,
            };
        }
        let now = Instant::now();
        let state = Arc::new(Mutex::new(State {
            total,
            index: 0,
            label: String::new(),
            case_started: now,
            expected: Duration::from_secs(1),
            started: now,
            terminal: std::io::stderr().is_terminal(),
        }));
        let ticker = {
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    let s = state.lock().unwrap_or_else(PoisonError::into_inner);
                    if s.terminal {
                        s.draw();
                    }
                }
            })
        };
        Progress {
            state: Some(state),
            ticker: Some(ticker),
        }
    }

    pub fn begin(&mut self, index: usize, label: &str, expected: Duration) {
        let Some(state) = &self.state else { return };
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        s.index = index;
        s.label = label.split_whitespace().collect::<Vec<_>>().join(" ");
        s.case_started = Instant::now();
        s.expected = expected;
        if s.terminal {
            s.draw();
        } else {
            eprintln!("[{}/{}] {}", index + 1, s.total, s.label);
        }
    }

    pub fn finish(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        let Some(state) = self.state.take() else {
            return;
        };
        let s = state.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = s.started.elapsed().as_secs();
        if s.terminal {
            eprint!("\r\x1b[2K");
        }
        eprintln!(
            "stability: {} cases in {}:{:02}",
            s.total,
            elapsed / 60,
            elapsed % 60
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
    }
}

impl State {
    fn draw(&self) {
        let within = (self.case_started.elapsed().as_secs_f64()
            / self.expected.as_secs_f64().max(0.001))
        .min(0.99);
        let fraction = (self.index as f64 + within) / self.total.max(1) as f64;
        let filled = ((fraction * BAR as f64) as usize).min(BAR);
        let elapsed = self.started.elapsed().as_secs();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K[{}{}] {}/{} {:02}:{:02} {}",
            "#".repeat(filled),
            "-".repeat(BAR - filled),
            self.index + 1,
            self.total,
            elapsed / 60,
            elapsed % 60,
            self.label
        );
        let _ = err.flush();
    }
}
