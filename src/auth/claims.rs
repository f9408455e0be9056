//! Bounds and checks shared by every way of naming an identity: the query (`--auth none`) and
//! token claims.

use crate::model::GroupId;

/// Most groups one identity may name. Each group costs a subscription and a snapshot at
/// connect, so the bound keeps a connect cheap.
pub const MAX_GROUPS: usize = 64;

/// Longest token accepted, in bytes. Real tokens are well under 2 KiB; the bound keeps a
/// refusal cheap (no base64 or JSON work on megabytes).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Validates group ids (duplicates removed, order kept): at least one, at most
/// [`MAX_GROUPS`], each passing the id rules.
pub(super) fn group_list<'a>(names: impl Iterator<Item = &'a str>) -> Result<Vec<GroupId>, String> {
    let mut groups: Vec<GroupId> = Vec::new();
    for name in names {
        let group = GroupId::parse(name).map_err(|why| format!("group {:?} {why}", clip(name)))?;
        if !groups.contains(&group) {
            if groups.len() == MAX_GROUPS {
                return Err(format!("at most {MAX_GROUPS} groups per identity"));
            }
            groups.push(group);
        }
    }
    if groups.is_empty() {
        return Err("groups must name at least one group".into());
    }
    Ok(groups)
}

/// At most 64 characters of `s`, for echoing client input in messages.
pub(crate) fn clip(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
