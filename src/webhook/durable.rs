//! The webhooks' file in `--data-dir`: `webhooks.json` holds every endpoint (secrets included,
//! sealed with `--webhook-secret-key-file`, so the file is readable by its owner only) and
//! every delivery waiting for an attempt.
//!
//! The whole file is rewritten on each change, by one task, off the event path: serialized to
//! `webhooks.json.tmp`, fsync'd, renamed over `webhooks.json`, and the directory fsync'd, so a
//! crash leaves either the old file or the new one, never a mix. Changes made while a write
//! runs, or during the [`WRITE_PAUSE`] after it, go into the next one. What a crash can lose
//! is the changes since the last completed write (at most about [`WRITE_PAUSE`] plus one
//! write old): at worst an event's delivery not yet written down, or an attempt repeated
//! after the restart (receivers deduplicate by `webhook-id`).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::state::{Endpoint, Pending};

/// Least time between two writes of the file, so a burst of changes costs a few writes.
pub(crate) const WRITE_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// File name inside `--data-dir`.
pub(crate) const FILE: &str = "webhooks.json";

/// The file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Saved {
    /// Every endpoint.
    pub(crate) endpoints: Vec<Endpoint>,
    /// Every delivery waiting for an attempt.
    pub(crate) pending: Vec<Pending>,
}

/// The path of the file in `dir`.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Reads the file; an absent file is empty, an unreadable one is logged and treated as empty
/// (and kept aside as `webhooks.json.unreadable`, so the next write does not destroy it).
pub(crate) fn load(path: &Path) -> Saved {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Saved::default(),
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "webhooks file unreadable; starting without it");
            return Saved::default();
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(saved) => saved,
        Err(e) => {
            let aside = path.with_extension("json.unreadable");
            let _ = std::fs::rename(path, &aside);
            tracing::warn!(error = %e, kept_as = %aside.display(), "webhooks file damaged; starting without it");
            Saved::default()
        }
    }
}

/// Writes `bytes` as the file, atomically and durably (see the module doc).
pub(crate) fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // The rename is durable once the directory is.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        assert!(load(&path).endpoints.is_empty());
        let saved = Saved {
            endpoints: vec![Endpoint {
                id: "wh_1".into(),
                group: "g".into(),
                url: "https://example.com/".into(),
                events: vec!["*".into()],
                secret: "whsec_AAAA".into(),
                disabled: false,
                created_ms: 1,
            }],
            pending: Vec::new(),
        };
        write(&path, &serde_json::to_vec(&saved).unwrap()).unwrap();
        assert_eq!(load(&path).endpoints, saved.endpoints);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).endpoints.is_empty());
        assert!(path.with_extension("json.unreadable").exists());
    }
}
