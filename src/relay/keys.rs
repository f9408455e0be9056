//! Names of a group's Redis keys and channel.
//!
//! Every name of a group carries the group id as a hash tag, `{group}`: a group's keys and its
//! channel hash to one Redis Cluster slot, so a pipeline or script over one group touches one
//! node, and the channel is ready for sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`), where the
//! channel name picks the shard the same way a key does. Group ids cannot contain braces (see
//! [`crate::model::id_problem`]) and neither can the prefix, so the tag is always the group id.
//!
//! | name | type | holds |
//! |---|---|---|
//! | `<prefix>:{<group>}:pos` | hash | device id → MessagePack position record |
//! | `<prefix>:{<group>}:seen` | sorted set | device id, scored by the last time (ms) an instance vouched for it |
//! | `<prefix>:{<group>}:ch` | channel | one MessagePack message per instance per tick |

use crate::model::GroupId;

/// Builds and parses the names of one deployment (one prefix).
#[derive(Clone, Debug)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix` (already checked by `config::parse_redis_prefix`).
    pub(crate) fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    /// The hash of the group's latest positions.
    pub(crate) fn positions(&self, group: &str) -> String {
        format!("{}:{{{group}}}:pos", self.prefix)
    }

    /// The sorted set of when each device of the group was last vouched for.
    pub(crate) fn seen(&self, group: &str) -> String {
        format!("{}:{{{group}}}:seen", self.prefix)
    }

    /// The group's pub/sub channel.
    pub(crate) fn channel(&self, group: &str) -> String {
        format!("{}:{{{group}}}:ch", self.prefix)
    }

    /// The group a channel name belongs to, when it is one of ours.
    pub(crate) fn group_of_channel(&self, channel: &[u8]) -> Option<GroupId> {
        let channel = std::str::from_utf8(channel).ok()?;
        let rest = channel.strip_prefix(self.prefix.as_str())?;
        let tagged = rest.strip_prefix(":{")?.strip_suffix("}:ch")?;
        GroupId::parse(tagged).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_group_as_hash_tag() {
        let names = Names::new("beacon");
        assert_eq!(names.positions("fleet-a"), "beacon:{fleet-a}:pos");
        assert_eq!(names.seen("fleet-a"), "beacon:{fleet-a}:seen");
        assert_eq!(names.channel("a:b@c"), "beacon:{a:b@c}:ch");
    }

    #[test]
    fn channels_parse_back_to_their_group() {
        let names = Names::new("prod:eu");
        let channel = names.channel("x.y:z");
        assert_eq!(
            names.group_of_channel(channel.as_bytes()).unwrap().as_str(),
            "x.y:z"
        );
        assert!(names.group_of_channel(b"other:{g}:ch").is_none());
        assert!(names.group_of_channel(b"prod:eu:{g}:pos").is_none());
        assert!(names.group_of_channel(b"prod:eu:{}:ch").is_none());
        assert!(names.group_of_channel(b"prod:eu:{a b}:ch").is_none());
        assert!(names.group_of_channel(&[0xff, 0xfe]).is_none());
    }
}
