//! Keeping the registry snapshot current without a restart.
//!
//! The reloader only builds and swaps snapshots. Three triggers lead to a
//! reload attempt: file events on the directories of every file the registry
//! reads (directories, not inodes: Kubernetes updates ConfigMap and Secret
//! volumes by swapping a `..data` symlink, and editors save by renaming), a
//! poll that compares file fingerprints (catches what events miss), and
//! SIGHUP (always reloads). Each attempt builds a complete snapshot on a
//! blocking thread, off the request path; only a valid one is swapped in.
//! In-flight Checks finish on the snapshot they loaded.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::registry::Registry;
use crate::server::SharedRegistry;
use crate::telemetry;

/// File events arrive in bursts (truncate + write, rename + chmod, the
/// kubelet's several symlink steps): wait this long for quiet first.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// ...but never longer than this: a neighbour file written all the time (a
/// log file next to the registry) must not postpone a reload forever.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// What identifies a file's content without reading it: device, inode,
/// size and modification time of the path *after* following symlinks, so a
/// `..data` swap, an atomic rename and an in-place write all change it.
type Fingerprint = Vec<Option<(u64, u64, u64, i128)>>;

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| {
                let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
                (m.dev(), m.ino(), m.size(), mtime)
            })
        })
        .collect()
}

/// Reloads the registry at `path` into `shared` whenever it changes.
pub struct Reloader {
    path: PathBuf,
    shared: SharedRegistry,
    poll_interval: Duration,
    /// Files the last attempt read, and their state at that time.
    sources: Vec<PathBuf>,
    seen: Fingerprint,
}

impl Reloader {
    /// `shared` already holds the snapshot loaded at start from `path`.
    pub fn new(path: PathBuf, shared: SharedRegistry, poll_interval: Duration) -> Self {
        let sources = shared.load().sources().to_vec();
        let seen = fingerprint(&sources);
        Reloader {
            path,
            shared,
            poll_interval,
            sources,
            seen,
        }
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self) {
        let (tx, mut events) = mpsc::channel::<()>(1);
        let mut watcher = match notify::recommended_watcher(
            move |res: notify::Result<notify::Event>| {
                // Opening or reading a file changes nothing, and happens all
                // the time (our own reloads, anyone reading the directory).
                if res.is_ok_and(|e| !e.kind.is_access()) {
                    // A full channel already means "something changed".
                    let _ = tx.try_send(());
                }
            },
        ) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(event = "watch_unavailable", error = %e, "file events unavailable; relying on polling and SIGHUP");
                None
            }
        };
        let mut watched = BTreeSet::new();
        if let Some(w) = &mut watcher {
            watch_dirs(w, &mut watched, &self.sources);
        }
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut poll = tokio::time::interval(self.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;

        loop {
            let forced = tokio::select! {
                _ = poll.tick() => false,
                Some(()) = events.recv() => {
                    // Let the burst finish before looking.
                    let give_up = tokio::time::Instant::now() + MAX_DEBOUNCE;
                    while tokio::time::Instant::now() < give_up
                        && tokio::time::timeout(DEBOUNCE, events.recv()).await.is_ok_and(|e| e.is_some())
                    {}
                    false
                }
                Some(()) = recv_hangup(&mut hangup) => {
                    tracing::info!(event = "sighup", "reloading the registry");
                    true
                }
            };
            if forced || fingerprint(&self.sources) != self.seen {
                self.reload().await;
                if let Some(w) = &mut watcher {
                    watch_dirs(w, &mut watched, &self.sources);
                }
            }
        }
    }

    /// One attempt: build a snapshot off the runtime's workers, swap it in if valid.
    async fn reload(&mut self) {
        let path = self.path.clone();
        let before = fingerprint(&self.sources);
        let attempt = tokio::task::spawn_blocking(move || Registry::load_tracked(&path)).await;
        let loaded = match attempt {
            Ok(loaded) => loaded,
            Err(e) => {
                // The load panicked: a bug, and still not a reason to drop the good snapshot.
                tracing::error!(event = "registry_reload", result = "failure", error = %e);
                telemetry::observe_reload(Err(&[]));
                return;
            }
        };
        // Remember what this attempt saw, so an unchanged broken file is not
        // retried (and re-reported) on every poll. For the same files, keep
        // their state from *before* reading: a write that lands during the
        // load then still differs, and the next look reloads again.
        self.seen = if loaded.sources == self.sources {
            before
        } else {
            fingerprint(&loaded.sources)
        };
        self.sources = loaded.sources;
        match loaded.result {
            Ok(registry) => {
                let registry = Arc::new(registry);
                telemetry::observe_reload(Ok(&registry));
                self.shared.store(registry);
            }
            Err(errors) => telemetry::observe_reload(Err(&errors)),
        }
    }
}

async fn recv_hangup(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Watches the parent directory of every source (non-recursively).
fn watch_dirs(watcher: &mut impl Watcher, watched: &mut BTreeSet<PathBuf>, sources: &[PathBuf]) {
    let wanted: BTreeSet<PathBuf> = sources
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .map(|d| {
            if d.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                d
            }
        })
        .collect();
    for dir in watched.difference(&wanted) {
        let _ = watcher.unwatch(dir);
    }
    watched.retain(|d| wanted.contains(d));
    for dir in &wanted {
        if !watched.contains(dir) && watcher.watch(dir, RecursiveMode::NonRecursive).is_ok() {
            watched.insert(dir.clone());
        }
    }
}
