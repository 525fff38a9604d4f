//! A clock tests move by hand, for what measures time with an injected
//! `throttle::Clock`: a window of a minute passes without a minute's wait.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::throttle::Clock;

/// Starts at the real `Instant::now()` and moves only when told. Clones
/// share the time.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<Instant>>);

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock(Arc::new(Mutex::new(Instant::now())))
    }
}

impl ManualClock {
    pub fn new() -> Self {
        ManualClock::default()
    }

    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
