//! Whether users other than the sidecar's can read a secret file (an HS256
//! secret, a private signing key): its group or world read bit. A group the
//! sidecar itself runs in does not count: a Kubernetes Secret mounted with
//! `defaultMode: 0440` is readable through the pod's `fsGroup`, by design.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Who besides the file's owner may read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// Every user on the machine (`o+r`).
    Everyone,
    /// The members of this group, which the sidecar is not in.
    Group(u32),
}

impl std::fmt::Display for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Readers::Everyone => f.write_str("every user"),
            Readers::Group(gid) => write!(f, "group {gid} (not the sidecar's)"),
        }
    }
}

/// The file's permission bits and who else can read it, when anyone can.
/// A file that cannot be examined is left to the read that reports it.
pub(super) fn other_readers(path: &Path) -> Option<(u32, Readers)> {
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode() & 0o7777;
    let own = own_groups(&std::fs::read_to_string("/proc/self/status").unwrap_or_default());
    readers(mode, meta.gid(), &own).map(|r| (mode, r))
}

/// Who else reads a file of `mode` owned by group `gid`, for a process in
/// the groups `own`.
fn readers(mode: u32, gid: u32, own: &[u32]) -> Option<Readers> {
    if mode & 0o004 != 0 {
        Some(Readers::Everyone)
    } else if mode & 0o040 != 0 && !own.contains(&gid) {
        Some(Readers::Group(gid))
    } else {
        None
    }
}

/// The effective and supplementary groups in a `/proc/<pid>/status` text.
/// std has no call for them and libc's need `unsafe`. Unreadable (not
/// Linux): none, so a group-readable secret is reported.
fn own_groups(status: &str) -> Vec<u32> {
    let numbers = |line: &str| -> Vec<u32> {
        line.split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    let mut groups = Vec::new();
    for line in status.lines() {
        if let Some(ids) = line.strip_prefix("Gid:") {
            // Real, effective, saved, filesystem: access is checked with
            // the effective one (the filesystem one on Linux).
            let ids = numbers(ids);
            groups.extend([ids.get(1), ids.get(3)].into_iter().flatten());
        } else if let Some(ids) = line.strip_prefix("Groups:") {
            groups.extend(numbers(ids));
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn with_mode(mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn world_readable_is_reported_and_private_is_not() {
        let (_d, path) = with_mode(0o644);
        assert_eq!(other_readers(&path), Some((0o644, Readers::Everyone)));
        let (_d, path) = with_mode(0o600);
        assert_eq!(other_readers(&path), None);
        let (_d, path) = with_mode(0o400);
        assert_eq!(other_readers(&path), None);
    }

    #[test]
    fn group_readable_counts_only_for_a_group_the_sidecar_is_not_in() {
        let own = [100, 65532];
        assert_eq!(readers(0o640, 65532, &own), None);
        assert_eq!(readers(0o440, 100, &own), None);
        assert_eq!(readers(0o640, 7, &own), Some(Readers::Group(7)));
        assert_eq!(readers(0o604, 100, &own), Some(Readers::Everyone));
        // A file we create belongs to a group we are in.
        let (_d, path) = with_mode(0o640);
        assert_eq!(other_readers(&path), None);
    }

    #[test]
    fn own_groups_are_the_effective_filesystem_and_supplementary_ones() {
        let status = "Name:\tservice-auth\nUid:\t10\t10\t10\t10\nGid:\t1\t2\t3\t4\nGroups:\t5 6 \n";
        assert_eq!(own_groups(status), [2, 4, 5, 6]);
        assert_eq!(own_groups(""), Vec::<u32>::new());
    }

    #[test]
    fn readers_read_as_a_sentence() {
        assert_eq!(Readers::Everyone.to_string(), "every user");
        assert_eq!(
            Readers::Group(1234).to_string(),
            "group 1234 (not the sidecar's)"
        );
    }
}
