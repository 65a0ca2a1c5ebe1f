//! Atomic file writes: write a temporary sibling, flush it to disk, then rename it over the
//! target, so a crash or an interrupted write never leaves a half-written file behind.

use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
};

use crate::error::{PeftError, Result};

/// The temporary sibling used while writing `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| PeftError::io(dir, e))?;
    }
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(PeftError::io(path, e));
    }
    sync_dir(path);
    Ok(())
}

/// Replaces directory `dir` by `staged` (a complete sibling directory) with renames only: the old
/// directory is moved aside, the new one moved in, then the old one deleted. At every instant
/// either the old or the new directory is complete at one of the two names.
pub fn replace_dir(staged: &Path, dir: &Path) -> Result<()> {
    let old = dir.with_file_name(format!(
        "{}.old-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let had_old = dir.exists();
    if had_old {
        fs::rename(dir, &old).map_err(|e| PeftError::io(dir, e))?;
    }
    if let Err(e) = fs::rename(staged, dir) {
        if had_old {
            let _ = fs::rename(&old, dir);
        }
        return Err(PeftError::io(dir, e));
    }
    if had_old {
        let _ = fs::remove_dir_all(&old);
    }
    sync_dir(dir);
    Ok(())
}

fn sync_dir(path: &Path) {
    if let Some(parent) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = File::open(parent)
    {
        let _ = d.sync_all();
    }
}
