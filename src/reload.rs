//! Keeping file-backed state current without a restart.
//!
//! [`FileWatch`] says *when* a set of files has changed; [`Reloader`] uses it
//! to rebuild and swap the registry snapshot (the listener uses it for its
//! TLS files). Three triggers lead to a look: file events on the directories
//! of the watched files (directories, not inodes: Kubernetes updates
//! ConfigMap and Secret volumes by swapping a `..data` symlink, and editors
//! save by renaming), a poll that compares file fingerprints (catches what
//! events miss), and SIGHUP (always reloads). The reloader builds a complete
//! snapshot on a blocking thread, off the request path, and swaps in only a
//! valid one; in-flight Checks finish on the snapshot they loaded.

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
/// The longest a burst may delay a look at the files: a directory that never
/// goes quiet (a log file written beside the registry) must not starve reloads.
const MAX_DEBOUNCE: Duration = Duration::from_millis(500);

/// What identifies a file's content without reading it: device, inode,
/// size and modification time of the path *after* following symlinks, so a
/// `..data` swap, an atomic rename and an in-place write all change it.
pub type Fingerprint = Vec<Option<(u64, u64, u64, i128)>>;

pub fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
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

/// Tells when any of a set of files changes (or SIGHUP arrives).
pub struct FileWatch {
    /// The files, and their state when last acted upon.
    sources: Vec<PathBuf>,
    seen: Fingerprint,
    poll: tokio::time::Interval,
    events: mpsc::Receiver<()>,
    watcher: Option<notify::RecommendedWatcher>,
    watched: BTreeSet<PathBuf>,
    hangup: Option<tokio::signal::unix::Signal>,
}

impl FileWatch {
    /// Starts watching `sources` as they are now. Everything is set up before
    /// this returns, so no change (and no SIGHUP, whose default action would
    /// kill the process) can slip in before the first [`FileWatch::changed`].
    /// Must be called within a Tokio runtime.
    pub fn new(sources: Vec<PathBuf>, poll_interval: Duration) -> Self {
        let seen = fingerprint(&sources);
        let (tx, events) = mpsc::channel::<()>(1);
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Opening or reading a file changes nothing, and happens all the
            // time (our own reloads, anyone reading the directory).
            if res.is_ok_and(|e| !e.kind.is_access()) {
                // A full channel already means "something changed".
                let _ = tx.try_send(());
            }
        })
        .map_err(|e| {
            tracing::warn!(event = "watch_unavailable", error = %e, "file events unavailable; relying on polling and SIGHUP");
        })
        .ok();
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| tracing::warn!(event = "sighup_unavailable", error = %e))
            .ok();
        let mut poll =
            tokio::time::interval_at(tokio::time::Instant::now() + poll_interval, poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = FileWatch {
            sources,
            seen,
            poll,
            events,
            watcher,
            watched: BTreeSet::new(),
            hangup,
        };
        watch.watch_dirs();
        watch
    }

    /// Waits until the files differ from what was last acted upon, or SIGHUP.
    /// Returns the fingerprint as it was *before* the caller reads the files:
    /// pass it back to [`FileWatch::acted`] so a write that lands while the
    /// caller reads still counts as a change.
    pub async fn changed(&mut self) -> Fingerprint {
        loop {
            let forced = tokio::select! {
                _ = self.poll.tick() => false,
                Some(()) = self.events.recv() => {
                    // Let the burst finish before looking, within bounds.
                    let deadline = tokio::time::Instant::now() + MAX_DEBOUNCE;
                    while tokio::time::timeout_at(
                        deadline.min(tokio::time::Instant::now() + DEBOUNCE),
                        self.events.recv(),
                    )
                    .await
                    .is_ok_and(|e| e.is_some())
                    {}
                    false
                }
                Some(()) = recv_hangup(&mut self.hangup) => {
                    tracing::info!(event = "sighup", "reloading");
                    true
                }
            };
            let now = fingerprint(&self.sources);
            if forced || now != self.seen {
                return now;
            }
        }
    }

    /// Records that the caller acted on the files: `before` is what
    /// [`FileWatch::changed`] returned, `sources` the files the attempt read
    /// (a new registry may name new files). Unchanged broken files are then
    /// not retried (and re-reported) on every poll.
    pub fn acted(&mut self, before: Fingerprint, sources: Vec<PathBuf>) {
        self.seen = if sources == self.sources {
            before
        } else {
            fingerprint(&sources)
        };
        self.sources = sources;
        self.watch_dirs();
    }

    /// Watches the parent directory of every source (non-recursively).
    fn watch_dirs(&mut self) {
        let Some(watcher) = &mut self.watcher else {
            return;
        };
        let wanted: BTreeSet<PathBuf> = self
            .sources
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
        for dir in self.watched.difference(&wanted) {
            let _ = watcher.unwatch(dir);
        }
        self.watched.retain(|d| wanted.contains(d));
        for dir in &wanted {
            if !self.watched.contains(dir)
                && watcher.watch(dir, RecursiveMode::NonRecursive).is_ok()
            {
                self.watched.insert(dir.clone());
            }
        }
    }
}

async fn recv_hangup(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Reloads the registry at `path` into `shared` whenever it changes.
pub struct Reloader {
    path: PathBuf,
    shared: SharedRegistry,
    watch: FileWatch,
}

impl Reloader {
    /// `shared` already holds the snapshot loaded at start from `path`.
    /// Must be called within a Tokio runtime (see [`FileWatch::new`]).
    pub fn start(path: PathBuf, shared: SharedRegistry, poll_interval: Duration) -> Self {
        let sources = shared.load().sources().to_vec();
        Reloader {
            path,
            shared,
            watch: FileWatch::new(sources, poll_interval),
        }
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self) {
        loop {
            let before = self.watch.changed().await;
            let path = self.path.clone();
            let attempt = tokio::task::spawn_blocking(move || Registry::load_tracked(&path)).await;
            let Ok(loaded) = attempt else {
                // The load panicked: a bug, and no reason to drop the good snapshot.
                tracing::error!(
                    event = "registry_reload",
                    result = "failure",
                    error = "panic while loading"
                );
                telemetry::observe_reload(Err(&[]));
                continue;
            };
            self.watch.acted(before, loaded.sources);
            match loaded.result {
                Ok(registry) => {
                    let registry = Arc::new(registry);
                    telemetry::observe_reload(Ok(&registry));
                    drop(self.shared.swap(registry));
                }
                Err(errors) => telemetry::observe_reload(Err(&errors)),
            }
            let _ = tokio::task::spawn_blocking(release_freed_memory).await;
        }
    }
}

/// Hands memory freed by a reload back to the OS. Parsing a large registry
/// allocates far more than the snapshot keeps, on whichever blocking thread
/// ran it, and glibc keeps freed memory in per-thread arenas: without this,
/// RSS grows with every reload of a 10,000-service registry until every
/// arena has held one.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
