//! Sortable keys for semantic versions, so that version comparisons (`firmware < "2.0.0"`,
//! "newest release") run in SQL on an index with plain string ordering.
//!
//! Key: major, minor and patch as 20-digit zero-padded numbers, then `~` for a release or
//! `-<pre-release>` for a pre-release (`-` sorts before `~`, so 1.0.0-rc.1 < 1.0.0). Build
//! metadata is ignored, as semver says. Pre-release identifiers compare as text, so
//! `rc.10` sorts before `rc.9`; the numeric parts, which matter for rollouts, are exact.

use semver::Version;

/// The sortable key of `v`.
pub fn of(v: &Version) -> String {
    let pre = if v.pre.is_empty() {
        "~".to_owned()
    } else {
        format!("-{}", v.pre)
    };
    format!("{:020}.{:020}.{:020}{pre}", v.major, v.minor, v.patch)
}

#[cfg(test)]
mod tests {
    use super::of;
    use semver::Version;

    #[test]
    fn keys_sort_like_versions() {
        let versions = [
            "0.9.0",
            "1.0.0-alpha",
            "1.0.0-rc.1",
            "1.0.0",
            "1.2.0",
            "1.10.0",
            "10.0.0",
        ];
        let keys: Vec<String> = versions
            .iter()
            .map(|v| of(&Version::parse(v).unwrap()))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }
}
