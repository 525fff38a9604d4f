//! Telling when a set of files has changed, for every file-backed state
//! that must stay current without a restart (the registry and its secret, CA
//! and CRL files; the listener's TLS files).
//!
//! Three triggers lead to a look: file events on the directories of the
//! watched files (directories, not inodes: Kubernetes updates ConfigMap and
//! Secret volumes by swapping a `..data` symlink, and editors save by
//! renaming), a poll that compares file fingerprints (catches what events
//! miss), and SIGHUP (always reloads). A watched *directory* (registry
//! fragments) is watched itself as well, and its fingerprint changes when an
//! entry is added, removed or renamed, so a new file in it counts as a
//! change. A watched directory that is a symlink (`sec -> secA`) is watched
//! through to its target, and its parent too, so retargeting it is an event;
//! after each event the target is looked up again and a new one watched,
//! or its files would fall silent until the poll. What to do about a change
//! is the caller's business.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

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
    /// Each watched directory and the (device, inode) it resolved to when
    /// its watch was added: inotify watches the target, not the path.
    watched: BTreeMap<PathBuf, Option<(u64, u64)>>,
    hangup: Option<tokio::signal::unix::Signal>,
    settle: Duration,
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
            watched: BTreeMap::new(),
            hangup,
            settle: Duration::ZERO,
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
                    // A directory symlink may have been retargeted.
                    self.watch_dirs();
                    false
                }
                Some(()) = recv_hangup(&mut self.hangup) => {
                    tracing::info!(event = "sighup", "reloading");
                    true
                }
            };
            let mut now = fingerprint(&self.sources);
            if forced || now != self.seen {
                // Apply a change only once the files have been still for
                // `settle`: a file written in place in several steps must
                // never be read half written.
                loop {
                    tokio::time::sleep(self.settle).await;
                    let again = fingerprint(&self.sources);
                    if again == now {
                        return now;
                    }
                    now = again;
                }
            }
        }
    }

    /// True when the files still look as they did in `before` (what
    /// [`FileWatch::changed`] returned): a caller that read them meanwhile
    /// read a consistent set. When false, the read raced a writer and must
    /// be thrown away; the next [`FileWatch::changed`] reports the change.
    pub fn unchanged_since(&self, before: &Fingerprint) -> bool {
        fingerprint(&self.sources) == *before
    }

    /// Sets how long a changed file must stay unchanged before it is
    /// reported (default: report at once).
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
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

    /// Watches the parent directory of every source, and every source that
    /// is a directory itself (non-recursively); and the parent of each of
    /// those directories that is a symlink. A directory whose path now
    /// resolves elsewhere is watched afresh.
    fn watch_dirs(&mut self) {
        let Some(watcher) = &mut self.watcher else {
            return;
        };
        let mut wanted: BTreeSet<PathBuf> = self
            .sources
            .iter()
            .flat_map(|p| {
                let itself = std::fs::metadata(p)
                    .is_ok_and(|m| m.is_dir())
                    .then(|| p.clone());
                p.parent().map(Path::to_path_buf).into_iter().chain(itself)
            })
            .map(non_empty)
            .collect();
        let links: Vec<PathBuf> = wanted
            .iter()
            .filter(|d| std::fs::symlink_metadata(d).is_ok_and(|m| m.is_symlink()))
            .filter_map(|d| d.parent().map(|p| non_empty(p.to_path_buf())))
            .collect();
        wanted.extend(links);
        let stale: Vec<PathBuf> = self
            .watched
            .iter()
            .filter(|(dir, identity)| !wanted.contains(*dir) || **identity != identity_of(dir))
            .map(|(dir, _)| dir.clone())
            .collect();
        for dir in stale {
            // Fails when the old target is gone, which removed its watch.
            let _ = watcher.unwatch(&dir);
            self.watched.remove(&dir);
        }
        for dir in wanted {
            if self.watched.contains_key(&dir) {
                continue;
            }
            // Looked up before the watch is added: a retarget in between
            // then reads as a change next time, never as the same target.
            let identity = identity_of(&dir);
            if watcher.watch(&dir, RecursiveMode::NonRecursive).is_ok() {
                self.watched.insert(dir, identity);
            }
        }
    }
}

/// `.` for the parent of a bare file name.
fn non_empty(dir: PathBuf) -> PathBuf {
    if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    }
}

/// The (device, inode) `path` resolves to, following symlinks.
fn identity_of(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

async fn recv_hangup(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
