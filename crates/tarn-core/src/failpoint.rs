//! Failpoints: named places in the code where a crash test can make tarn fail on purpose.
//!
//! Configured once per process by the environment variable `TARN_FAILPOINTS`, a comma-separated
//! list of `name=action`:
//!
//! - `abort` — abort the process on the spot (no unwinding, no cleanup: what `SIGKILL` does),
//! - `abort(0.05)` — abort with that probability at each hit,
//! - `sleep(200)` — sleep that many milliseconds (widens a window for an external kill),
//! - `error` — make the operation fail with an error.
//!
//! Without the variable every [`hit`] is one relaxed atomic load. We keep our own rather than
//! the `fail` crate because crash tests need a real process abort at a point (its `panic`
//! action unwinds inside a tokio task, which the runtime survives) and probabilistic aborts
//! across many restarts, configured from the environment of a child process.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, ErrorKind, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Abort(f64),
    Sleep(u64),
    Error,
}

fn points() -> &'static HashMap<String, Action> {
    static POINTS: OnceLock<HashMap<String, Action>> = OnceLock::new();
    POINTS.get_or_init(|| parse(&std::env::var("TARN_FAILPOINTS").unwrap_or_default()))
}

fn parse(spec: &str) -> HashMap<String, Action> {
    let mut out = HashMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, action)) = item.split_once('=') else {
            eprintln!("TARN_FAILPOINTS: ignoring {item:?}: expected name=action");
            continue;
        };
        let arg = |a: &str| {
            a.split_once('(')
                .and_then(|(_, r)| r.strip_suffix(')'))
                .map(str::to_string)
        };
        let action = match action.split('(').next().unwrap_or_default() {
            "abort" => Action::Abort(arg(action).and_then(|p| p.parse().ok()).unwrap_or(1.0)),
            "sleep" => Action::Sleep(arg(action).and_then(|p| p.parse().ok()).unwrap_or(100)),
            "error" => Action::Error,
            other => {
                eprintln!("TARN_FAILPOINTS: ignoring {name}: unknown action {other:?}");
                continue;
            }
        };
        out.insert(name.trim().to_string(), action);
    }
    out
}

fn chance() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        x = t ^ (u64::from(std::process::id()) << 32) | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Passes failpoint `name`: does what `TARN_FAILPOINTS` says for it, if anything.
pub async fn hit(name: &str) -> Result<()> {
    let points = points();
    if points.is_empty() {
        return Ok(());
    }
    match points.get(name) {
        None => Ok(()),
        Some(Action::Abort(p)) => {
            if *p >= 1.0 || chance() < *p {
                eprintln!("failpoint {name}: aborting");
                std::process::abort();
            }
            Ok(())
        }
        Some(Action::Sleep(ms)) => {
            tokio::time::sleep(std::time::Duration::from_millis(*ms)).await;
            Ok(())
        }
        Some(Action::Error) => Err(Error::new(ErrorKind::Internal, format!("failpoint {name} fired"))),
    }
}

/// Whether any failpoint is configured (tests print it in their logs).
pub fn enabled() -> bool {
    !points().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_actions() {
        let p = parse("a=abort, b=abort(0.25),c=sleep(5),d=error,e=bogus,f");
        assert_eq!(p.get("a"), Some(&Action::Abort(1.0)));
        assert_eq!(p.get("b"), Some(&Action::Abort(0.25)));
        assert_eq!(p.get("c"), Some(&Action::Sleep(5)));
        assert_eq!(p.get("d"), Some(&Action::Error));
        assert!(!p.contains_key("e") && !p.contains_key("f"));
        let x = chance();
        assert!((0.0..1.0).contains(&x));
    }
}
