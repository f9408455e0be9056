//! Device profiles: the display name and colour a device shows under, and the tracker id
//! (`tid`) an OwnTracks phone chose for itself.
//!
//! Held in memory, bounded by [`MAX_PROFILES`]; with `--data-dir` also kept in
//! `DIR/profiles.json`, rewritten whole (to a temporary file, then renamed) after each change,
//! and read back at start. Profiles change rarely (a user edits one, a phone sends a `card` or a
//! new `tid`), so one small file beats a table in the position store's hot path.
//!
//! Errors: [`ProfileError`] (this module's `thiserror` enum); a failed write is logged here,
//! where it is handled, and the profile stays in memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::model::DeviceId;

/// Most devices with a profile. Beyond it new profiles are refused (existing ones can still be
/// changed), so no client can grow the table without bound.
pub(crate) const MAX_PROFILES: usize = 100_000;

/// Longest profile name, in characters.
pub(crate) const MAX_NAME_CHARS: usize = 64;

/// File name of the profiles inside `--data-dir`.
pub(crate) const PROFILES_FILE: &str = "profiles.json";

/// What a device shows under.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Profile {
    /// Display name: 1-64 printable characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    /// Colour, `#rrggbb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) color: Option<String>,
    /// The OwnTracks tracker id the phone sent (1-2 characters), shown on the app's map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tid: Option<String>,
}

/// Why a profile was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProfileError {
    /// A field breaks its rule (HTTP 400).
    #[error("{0}")]
    Invalid(&'static str),
    /// [`MAX_PROFILES`] devices already have one (HTTP 503).
    #[error("the profile table is full ({MAX_PROFILES} devices)")]
    Full,
}

/// Returns why `name` is not a valid profile name.
pub(crate) fn name_problem(name: &str) -> Option<&'static str> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Some("name must be 1-64 characters");
    }
    if name.chars().any(char::is_control) {
        return Some("name must hold printable characters only");
    }
    None
}

/// Returns why `color` is not `#rrggbb`.
pub(crate) fn color_problem(color: &str) -> Option<&'static str> {
    let ok = color.len() == 7
        && color.starts_with('#')
        && color[1..].bytes().all(|b| b.is_ascii_hexdigit());
    (!ok).then_some("color must be #rrggbb")
}

/// The profiles of every device. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub(crate) struct Profiles {
    map: Mutex<HashMap<DeviceId, Profile>>,
    /// `DIR/profiles.json` with `--data-dir`.
    file: Option<PathBuf>,
    /// The version of the latest change, and the version last written: writes are serialized
    /// and a write older than the one on disk is skipped, so the newest state is what stays.
    versions: Mutex<u64>,
    writing: Arc<Mutex<u64>>,
}

impl Profiles {
    /// Profiles in memory only.
    pub(crate) fn in_memory() -> Self {
        Profiles::default()
    }

    /// Profiles kept in `dir`, loaded from it when the file exists. An unreadable file is
    /// logged and the server starts with no profiles rather than not at all.
    pub(crate) fn in_dir(dir: &Path) -> Self {
        let file = dir.join(PROFILES_FILE);
        let map = match std::fs::read(&file) {
            Ok(bytes) => match serde_json::from_slice::<HashMap<String, Profile>>(&bytes) {
                Ok(stored) => stored
                    .into_iter()
                    .filter_map(|(id, p)| DeviceId::parse(&id).ok().map(|id| (id, p)))
                    .take(MAX_PROFILES)
                    .collect(),
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "profiles file unreadable; starting without profiles");
                    HashMap::new()
                }
            },
            Err(_) => HashMap::new(),
        };
        Profiles {
            map: Mutex::new(map),
            file: Some(file),
            versions: Mutex::new(0),
            writing: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<DeviceId, Profile>> {
        // Only map operations run under the lock; a poisoned map is still consistent.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The profile of `device` (empty when it has none).
    pub(crate) fn get(&self, device: &str) -> Profile {
        self.lock().get(device).cloned().unwrap_or_default()
    }

    /// The display name of `device`, when it has one.
    pub(crate) fn name(&self, device: &str) -> Option<String> {
        self.lock().get(device).and_then(|p| p.name.clone())
    }

    /// Replaces the name and colour of `device` (its `tid` stays), after checking both.
    pub(crate) fn put(
        &self,
        device: &DeviceId,
        name: Option<String>,
        color: Option<String>,
    ) -> Result<Profile, ProfileError> {
        if let Some(why) = name.as_deref().and_then(name_problem) {
            return Err(ProfileError::Invalid(why));
        }
        if let Some(why) = color.as_deref().and_then(color_problem) {
            return Err(ProfileError::Invalid(why));
        }
        self.change(device, |p| {
            p.name = name;
            p.color = color;
        })
    }

    /// Sets the display name of `device` alone (an OwnTracks `card`).
    pub(crate) fn set_name(
        &self,
        device: &DeviceId,
        name: String,
    ) -> Result<Profile, ProfileError> {
        if let Some(why) = name_problem(&name) {
            return Err(ProfileError::Invalid(why));
        }
        self.change(device, |p| p.name = Some(name))
    }

    /// Remembers the OwnTracks `tid` of `device`: 1-2 letters or digits, else ignored.
    /// Returns the profile when it changed.
    pub(crate) fn set_tid(&self, device: &DeviceId, tid: &str) -> Option<Profile> {
        let chars = tid.chars().count();
        if !(1..=2).contains(&chars) || !tid.chars().all(char::is_alphanumeric) {
            return None;
        }
        if self.lock().get(device).and_then(|p| p.tid.as_deref()) == Some(tid) {
            return None;
        }
        self.change(device, |p| p.tid = Some(tid.to_owned())).ok()
    }

    /// Takes `profile` whole for `device`, as another instance holds it (checked like a
    /// local change). Returns whether the display name changed.
    pub(crate) fn replace(&self, device: &DeviceId, profile: Profile) -> bool {
        if profile.name.as_deref().and_then(name_problem).is_some()
            || profile.color.as_deref().and_then(color_problem).is_some()
            || profile.tid.as_ref().is_some_and(|t| t.chars().count() > 2)
        {
            return false;
        }
        if self.lock().get(device) == Some(&profile) {
            return false;
        }
        let before = self.name(device.as_str());
        let name = profile.name.clone();
        self.change(device, |p| *p = profile).is_ok() && before != name
    }

    /// The `tid` a device sent, when it sent one.
    pub(crate) fn tid(&self, device: &str) -> Option<String> {
        self.lock().get(device).and_then(|p| p.tid.clone())
    }

    fn change(
        &self,
        device: &DeviceId,
        edit: impl FnOnce(&mut Profile),
    ) -> Result<Profile, ProfileError> {
        let (profile, saved) = {
            let mut map = self.lock();
            if !map.contains_key(device) && map.len() >= MAX_PROFILES {
                return Err(ProfileError::Full);
            }
            let profile = map.entry(device.clone()).or_default();
            edit(profile);
            let profile = profile.clone();
            let saved = self.file.as_ref().map(|_| {
                let mut version = self.versions.lock().unwrap_or_else(|e| e.into_inner());
                *version += 1;
                (*version, map.clone())
            });
            (profile, saved)
        };
        if let Some((version, map)) = saved {
            self.save(version, map);
        }
        Ok(profile)
    }

    /// Writes `map` (the state at `version`) in the background, with `--data-dir`.
    fn save(&self, version: u64, map: HashMap<DeviceId, Profile>) {
        let Some(file) = self.file.clone() else {
            return;
        };
        let writing = self.writing.clone();
        let write = move || {
            let mut written = writing.lock().unwrap_or_else(|e| e.into_inner());
            if *written > version {
                return;
            }
            let by_id: HashMap<&str, &Profile> = map.iter().map(|(k, v)| (k.as_str(), v)).collect();
            let result = serde_json::to_vec(&by_id)
                .map_err(std::io::Error::other)
                .and_then(|bytes| {
                    let tmp = file.with_extension("json.tmp");
                    std::fs::write(&tmp, bytes)?;
                    std::fs::rename(&tmp, &file)
                });
            *written = version;
            if let Err(e) = result {
                tracing::warn!(file = %file.display(), error = %e, "profiles not saved");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(write);
            }
            Err(_) => write(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_for_names_colors_and_tids() {
        let p = Profiles::in_memory();
        let id = DeviceId::parse("a").unwrap();
        assert!(
            p.put(&id, Some("Zoë's bike".into()), Some("#00aaFF".into()))
                .is_ok()
        );
        assert_eq!(
            p.put(&id, Some(String::new()), None),
            Err(ProfileError::Invalid("name must be 1-64 characters"))
        );
        assert!(p.put(&id, Some("a\nb".into()), None).is_err());
        assert!(p.put(&id, Some("x".repeat(65)), None).is_err());
        assert!(p.put(&id, None, Some("red".into())).is_err());
        assert_eq!(p.get("a").name.as_deref(), Some("Zoë's bike"));
        p.set_tid(&id, "zb");
        p.set_tid(&id, "toolong");
        assert_eq!(p.tid("a").as_deref(), Some("zb"));
        assert_eq!(p.get("a").color.as_deref(), Some("#00aaFF"));
    }
}
