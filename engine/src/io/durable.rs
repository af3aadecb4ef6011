//! Durable writes, in one place: a file is written beside its destination, fsynced, renamed over
//! it and the directory fsynced, so a reader (or a restart after `kill -9`) sees the old file or
//! the new one, never a part. The result store's segments and merged output and the job store's
//! manifests and uploads all go through here.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// A file-system operation that failed: what was being done, to which path, and the OS's words.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct FsError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Maps an `io::Error` on `path` to an [`FsError`] saying what was being done.
pub(crate) fn fs_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file at `tmp` with `fill`, fsyncs it, renames it to `dest` and fsyncs `dir`, the
/// directory of both: afterwards `dest` is complete and durable, and before that moment it was
/// untouched. On failure the temporary file is removed.
pub(crate) fn write_durably<E: From<FsError>>(
    tmp: &Path,
    dest: &Path,
    dir: &Path,
    fill: impl FnOnce(&mut File) -> Result<(), E>,
) -> Result<(), E> {
    write_durably_as(tmp, dir, fill, |()| dest.to_path_buf()).map(drop)
}

/// [`write_durably`], where the destination's name depends on what was written (a result segment
/// is named by the checksum of its bytes): `fill` returns a value, `dest` names the file from it.
/// Returns the destination.
pub(crate) fn write_durably_as<T, E: From<FsError>>(
    tmp: &Path,
    dir: &Path,
    fill: impl FnOnce(&mut File) -> Result<T, E>,
    dest: impl FnOnce(T) -> PathBuf,
) -> Result<PathBuf, E> {
    let result = (|| {
        let mut file = File::create(tmp).map_err(fs_error("create", tmp))?;
        let written = fill(&mut file)?;
        file.sync_all().map_err(fs_error("sync", tmp))?;
        Ok(written)
    })();
    let written = match result {
        Ok(w) => w,
        Err(e) => {
            let _ = fs::remove_file(tmp);
            return Err(e);
        }
    };
    let dest = dest(written);
    fs::rename(tmp, &dest).map_err(fs_error("rename into place", &dest))?;
    sync_dir(dir)?;
    Ok(dest)
}

/// Renames `from` to `to` (a file or a directory) and fsyncs `dir`, the directory of `to`.
pub(crate) fn rename_durably(from: &Path, to: &Path, dir: &Path) -> Result<(), FsError> {
    fs::rename(from, to).map_err(fs_error("move into place", to))?;
    sync_dir(dir)
}

/// Makes a directory's entries (a rename, a new file) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fs_error("sync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_fill_leaves_the_destination_untouched_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, dest) = (dir.path().join("x.tmp"), dir.path().join("x"));
        fs::write(&dest, b"old").unwrap();
        let failed: Result<(), FsError> = write_durably(&tmp, &dest, dir.path(), |_| {
            Err(fs_error("write", &tmp)(io::Error::other("disk full")))
        });
        assert_eq!(
            failed.unwrap_err().to_string(),
            format!("cannot write {}: disk full", tmp.display())
        );
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        assert!(!tmp.exists());

        write_durably::<FsError>(&tmp, &dest, dir.path(), |f| {
            io::Write::write_all(f, b"new").map_err(fs_error("write", &tmp))
        })
        .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new");
        assert!(!tmp.exists());
    }
}
