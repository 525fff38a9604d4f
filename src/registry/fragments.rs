//! Registry fragments: the files after the first in a `registry` list, and
//! the `*.yaml` files of a listed directory, each holding only `services`
//! and/or `revocation` (one team's entries, one Kubernetes ConfigMap).
//!
//! This module finds and parses them; merging them into one snapshot, and
//! rejecting a service id, principal or key hash claimed twice across files,
//! is `build`'s job, which checks every file's entries in one index.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::{LoadError, Problem};
use crate::config::{self, ConfigError, RegistryFragment};

/// One parsed fragment file.
pub(super) struct Fragment {
    pub path: PathBuf,
    pub file: RegistryFragment,
}

/// The fragment files `entries` name, in order: a file as it is; a
/// directory as every `*.yaml` in it in name order, skipping dotfiles (so
/// the `..data` and `..<timestamp>` entries of a mounted ConfigMap) and
/// subdirectories, following symlinks. `watched` receives every file and
/// directory looked at, so a reloader also notices a file added later.
pub(super) fn files(
    entries: &[PathBuf],
    watched: &mut Vec<PathBuf>,
) -> Result<Vec<PathBuf>, Vec<LoadError>> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        // `metadata` follows symlinks: a symlinked directory is a directory.
        let is_dir = std::fs::metadata(entry).is_ok_and(|m| m.is_dir());
        if !is_dir {
            // A missing entry is reported when it is read, like the main file.
            watched.push(entry.clone());
            files.push(entry.clone());
            continue;
        }
        watched.push(entry.clone());
        match list_dir(entry) {
            Ok(found) => {
                watched.extend(found.iter().cloned());
                files.extend(found);
            }
            Err(e) => errors.push(LoadError::File(e)),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(errors)
    }
}

/// Every `*.yaml` in `dir` that is (or links to) a file, by name.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let read_err = |error| ConfigError::Read {
        path: dir.to_path_buf(),
        error,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name();
        if !is_fragment_name(&name) {
            continue;
        }
        let path = entry.path();
        // A dangling symlink is kept: reading it fails the load loudly
        // rather than silently dropping a team's services.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        found.push(path);
    }
    found.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(found)
}

/// `*.yaml`, not hidden.
fn is_fragment_name(name: &OsStr) -> bool {
    let name = name.as_encoded_bytes();
    !name.starts_with(b".") && name.ends_with(b".yaml")
}

/// Reads and parses one fragment, adding every error to `errors`; what
/// could be read of it (unknown and duplicate keys left out) is still
/// returned for validation. A fragment with neither key is an error: an
/// emptied file must not read as "this team has no services".
pub(super) fn read(path: &Path, errors: &mut Vec<LoadError>) -> Option<Fragment> {
    let file: RegistryFragment = match config::read_yaml_partial(path) {
        Ok(file) => file,
        Err(refused) => {
            errors.extend(refused.errors.into_iter().map(LoadError::File));
            *refused.value?
        }
    };
    if file.services.is_none() && file.revocation.is_none() {
        errors.push(LoadError::Invalid {
            file: path.to_path_buf(),
            at: "services".into(),
            problem: Problem::EmptyFragment,
        });
        return None;
    }
    Some(Fragment {
        path: path.to_path_buf(),
        file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_names() {
        for ok in ["a.yaml", "team-payments.yaml", "v1.2.yaml"] {
            assert!(is_fragment_name(OsStr::new(ok)), "{ok}");
        }
        for skipped in [
            ".hidden.yaml",
            "..data",
            "a.yml",
            "a.yaml~",
            "a.yaml.bak",
            "yaml",
        ] {
            assert!(!is_fragment_name(OsStr::new(skipped)), "{skipped}");
        }
    }

    #[test]
    fn directories_list_yaml_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in ["b.yaml", "a.yaml", ".c.yaml", "notes.txt"] {
            std::fs::write(d.join(name), "services: []\n").unwrap();
        }
        std::fs::create_dir(d.join("sub.yaml")).unwrap();
        std::os::unix::fs::symlink(d.join("a.yaml"), d.join("link.yaml")).unwrap();
        let mut watched = Vec::new();
        let files = files(&[d.to_path_buf()], &mut watched).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.yaml", "b.yaml", "link.yaml"]);
        assert_eq!(watched[0], d);
        assert_eq!(&watched[1..], &files[..]);
    }
}
