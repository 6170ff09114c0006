//! The process's own folder under `TMPDIR` for upload bytes that wait: base64
//! spools beside S3, multipart parts kept for their turn, local copies of objects.
//! Their files go when they are dropped, but a kill (OOM, SIGKILL, power) left them
//! in `TMPDIR` for good, each up to `MAX_UPLOAD_BYTES`, on a volume the image's
//! read-only root asks for. So each process writes into an `attache-tmp-*` folder
//! that it holds locked (`flock` on the folder itself, which `systemd-tmpfiles`
//! respects too) while it lives, and the first use in a process removes every such
//! folder whose lock nobody holds: the kernel released it when its owner ended,
//! however it ended.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// What every such folder's name starts with.
const PREFIX: &str = "attache-tmp-";

/// A folder is made under this name, locked, then renamed to [`PREFIX`]: a cleaner
/// never sees one of ours unlocked. One left by a kill between the steps goes once
/// it is older than [`UNLOCKED_GRACE`].
const NEW_PREFIX: &str = "attache-new-";

const UNLOCKED_GRACE: Duration = Duration::from_secs(3600);

/// The folder, and the held lock that marks it as this process's.
struct Own {
    path: PathBuf,
    _lock: File,
}

/// Made once per process (other first users wait for it); a failure is kept, with
/// what to do, and said again to every later use.
static OWN: OnceLock<Result<Own, (std::io::ErrorKind, String)>> = OnceLock::new();

/// A path for a new file `name` in this process's folder. `serve` makes the folder
/// at its start (or does not start); should it still fail, the file goes to
/// `TMPDIR` itself, and the failure is logged.
pub fn path_for(name: &str) -> PathBuf {
    folder()
        .map(|folder| folder.join(name))
        .unwrap_or_else(|err| {
            tracing::warn!(error = %err, "a temporary file goes to TMPDIR itself");
            std::env::temp_dir().join(name)
        })
}

/// This process's temporary folder, made on first use (after the leftovers of
/// ended processes are removed); an error names `TMPDIR` and what to do.
pub fn folder() -> std::io::Result<&'static Path> {
    let own = OWN.get_or_init(|| {
        let parent = std::env::temp_dir();
        make(&parent).map_err(|err| {
            let said = format!(
                "TMPDIR: cannot write a temporary file in {}: {err}; uploads are spooled \
                 there: set TMPDIR to a writable folder (a volume, on a read-only root \
                 filesystem)",
                parent.display()
            );
            (err.kind(), said)
        })
    });
    match own {
        Ok(own) => Ok(&own.path),
        Err((kind, said)) => Err(std::io::Error::new(*kind, said.clone())),
    }
}

/// Removes what ended processes left in `parent`, then makes a folder, locks it
/// and names it as ours.
fn make(parent: &Path) -> std::io::Result<Own> {
    remove_leftovers(parent);
    let made = tempfile::Builder::new()
        .prefix(NEW_PREFIX)
        .tempdir_in(parent)?
        .keep();
    let lock = File::open(&made)?;
    lock.try_lock().map_err(std::io::Error::from)?;
    let name = made
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_prefix(NEW_PREFIX))
        .map(|suffix| format!("{PREFIX}{suffix}"))
        .ok_or_else(|| std::io::Error::other("a temporary folder without its prefix"))?;
    let path = parent.join(name);
    std::fs::rename(&made, &path)?;
    // A probe: a folder that takes no file fails the start, not the first upload.
    tempfile::tempfile_in(&path)?;
    Ok(Own { path, _lock: lock })
}

/// Every `attache-tmp-*` folder in `parent` whose lock is free (its process ended),
/// and every `attache-new-*` one older than [`UNLOCKED_GRACE`] whose lock is free,
/// is removed, under the lock; what cannot be read, locked or removed is left.
fn remove_leftovers(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.starts_with(PREFIX)
            || (name.starts_with(NEW_PREFIX) && unwritten_for(&entry, UNLOCKED_GRACE));
        if !ours {
            continue;
        }
        let folder = entry.path();
        let Ok(lock) = File::open(&folder) else {
            continue;
        };
        match lock.try_lock() {
            Ok(()) => match std::fs::remove_dir_all(&folder) {
                Ok(()) => {
                    tracing::info!(folder = %folder.display(), "removed the temporary files of an ended attache process")
                }
                Err(err) => {
                    tracing::warn!(folder = %folder.display(), error = %err, "cannot remove the temporary files of an ended attache process")
                }
            },
            Err(TryLockError::WouldBlock | TryLockError::Error(_)) => {}
        }
    }
}

/// Whether nothing has written to `entry` for longer than `age`: what a process
/// killed between steps left, not what one running beside this one writes.
pub fn unwritten_for(entry: &std::fs::DirEntry, age: Duration) -> bool {
    entry
        .metadata()
        .and_then(|meta| meta.modified())
        .is_ok_and(|modified| {
            SystemTime::now()
                .duration_since(modified)
                .is_ok_and(|since| since > age)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ended process's folder goes, a live one's stays, and one being made
    /// (young, not yet renamed) stays too.
    #[test]
    fn only_the_folders_of_ended_processes_are_removed() {
        let parent = tempfile::tempdir().expect("tempdir");
        let live = make(parent.path()).expect("a live folder");
        let ended = make(parent.path()).expect("an ended folder");
        let ended_path = ended.path.clone();
        std::fs::write(ended_path.join("spool"), b"left by a kill").expect("a leftover");
        drop(ended);
        let young = parent.path().join(format!("{NEW_PREFIX}young"));
        std::fs::create_dir(&young).expect("a folder being made");
        let other = parent.path().join("someone-else");
        std::fs::create_dir(&other).expect("not ours");

        let next = make(parent.path()).expect("the next start");
        assert!(!ended_path.exists(), "the ended process's folder goes");
        assert!(live.path.exists(), "a live process's folder stays");
        assert!(young.exists(), "a folder being made stays");
        assert!(other.exists(), "what is not ours stays");
        assert!(next.path.exists());
    }
}
