//! Keeping the registry snapshot current without a restart.
//!
//! The [`Reloader`] waits for `watch` to report a change in any file the
//! serving registry was built from (its fragments and fragment directories
//! included, so a file added to a directory counts), builds a complete new snapshot on a
//! blocking thread (off the request path), and swaps it in only if it is
//! valid; in-flight Checks finish on the snapshot they loaded. It only
//! builds and swaps: what a reload means is reported through the
//! `telemetry::Observer`.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::RegistryPaths;
use crate::registry::{Registry, Snapshot};
use crate::telemetry::Observer;
use crate::watch::FileWatch;

/// Reloads the registry (main file and fragments) into a snapshot whenever
/// any of its files changes; the whole set is swapped at once.
pub struct Reloader {
    paths: RegistryPaths,
    snapshot: Snapshot,
    observer: Observer,
    watch: FileWatch,
}

impl Reloader {
    /// `snapshot` already holds the registry loaded at start from `paths`,
    /// built from `sources`. Must be called within a Tokio runtime (see
    /// [`FileWatch::new`]).
    pub fn start(
        paths: RegistryPaths,
        sources: Vec<PathBuf>,
        snapshot: Snapshot,
        observer: Observer,
        settings: &crate::config::Reload,
    ) -> Self {
        Reloader {
            paths,
            snapshot,
            observer,
            watch: FileWatch::new(sources, settings.poll_interval).with_settle(settings.settle),
        }
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self) {
        loop {
            let before = self.watch.changed().await;
            let paths = self.paths.clone();
            let attempt = tokio::task::spawn_blocking(move || Registry::load_tracked(&paths)).await;
            let Ok(loaded) = attempt else {
                // The load panicked: a bug, and no reason to drop the good snapshot.
                tracing::error!(
                    event = "registry_reload",
                    result = "failure",
                    error = "panic while loading"
                );
                self.observer.reload(Err(&[]));
                continue;
            };
            if !self.watch.unchanged_since(&before) {
                // A writer got in while we read: whatever we built may mix
                // old and new content. Wait for the files to settle again.
                tracing::info!(
                    event = "registry_reload",
                    result = "retry",
                    "the registry changed while it was read; reading it again once it settles"
                );
                continue;
            }
            self.watch.acted(before, loaded.sources);
            match loaded.result {
                Ok(registry) => {
                    let registry = Arc::new(registry);
                    self.observer.reload(Ok(&registry));
                    drop(self.snapshot.store(registry));
                }
                Err(errors) => self.observer.reload(Err(&errors)),
            }
        }
    }
}
