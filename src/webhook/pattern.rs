//! Which events an endpoint receives: a list of patterns, each an event kind (`alarm`), a
//! family of kinds (`geofence.*`), or every event (`*`).

/// Every event kind of the protocol.
pub(crate) const KINDS: [&str; 8] = [
    "alarm",
    "region.enter",
    "region.exit",
    "geofence.enter",
    "geofence.exit",
    "geofence.dwell",
    "proximity.enter",
    "proximity.exit",
];

/// Most patterns one endpoint may list.
pub(crate) const MAX_PATTERNS: usize = 32;

/// Why a pattern list is refused.
pub(crate) fn check(patterns: &[String]) -> Result<(), String> {
    if patterns.is_empty() {
        return Err(
            "events must list at least one pattern (an event kind, \"family.*\" or \"*\")".into(),
        );
    }
    if patterns.len() > MAX_PATTERNS {
        return Err(format!("events may list at most {MAX_PATTERNS} patterns"));
    }
    for pattern in patterns {
        if !valid(pattern) {
            let shown: String = pattern.chars().take(64).collect();
            return Err(format!(
                "event pattern {shown:?} is neither an event kind (alarm, region.enter, \
                 geofence.exit, ...), a family of kinds (region.*, geofence.*, proximity.*) nor *"
            ));
        }
    }
    Ok(())
}

/// Whether `pattern` is one of the accepted shapes.
fn valid(pattern: &str) -> bool {
    if pattern == "*" || KINDS.contains(&pattern) {
        return true;
    }
    pattern.strip_suffix(".*").is_some_and(|family| {
        KINDS
            .iter()
            .any(|kind| kind.split_once('.').is_some_and(|(f, _)| f == family))
    })
}

/// Whether an endpoint listing `patterns` receives events of `kind`.
pub(crate) fn matches(patterns: &[String], kind: &str) -> bool {
    patterns.iter().any(|pattern| {
        pattern == "*"
            || pattern == kind
            || pattern
                .strip_suffix('*')
                .is_some_and(|prefix| prefix.ends_with('.') && kind.starts_with(prefix))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn kinds_families_and_star_are_accepted() {
        assert!(check(&list(&["alarm", "geofence.*", "region.exit", "*"])).is_ok());
        assert!(check(&list(&[])).is_err());
        assert!(check(&list(&["alarm.*"])).is_err(), "alarm has no family");
        assert!(check(&list(&["geofence"])).is_err());
        assert!(check(&list(&["geo*"])).is_err());
        assert!(check(&list(&["nothing.enter"])).is_err());
        assert!(check(&vec!["alarm".to_owned(); MAX_PATTERNS + 1]).is_err());
    }

    #[test]
    fn matching() {
        let fences = list(&["geofence.*"]);
        assert!(matches(&fences, "geofence.enter"));
        assert!(matches(&fences, "geofence.dwell"));
        assert!(!matches(&fences, "alarm"));
        assert!(!matches(&fences, "region.enter"));
        assert!(matches(&list(&["alarm"]), "alarm"));
        assert!(matches(&list(&["*"]), "proximity.exit"));
    }
}
