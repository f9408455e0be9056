//! The phone-app routes (Traccar Client / OsmAnd, OwnTracks).

use clap::Args;

use crate::model::GroupId;

/// Settings of the phone-app routes.
#[derive(Clone, Debug, Args)]
pub struct IngestConfig {
    /// Group of devices that report through the phone-app routes (`/v1/ingest/...`) without
    /// naming groups in `?groups=`, under `--auth none`. Default `default`. With tokens, the
    /// token's groups apply instead.
    #[arg(
        long = "ingest-default-group",
        value_name = "GROUP",
        env = "BEACON_INGEST_DEFAULT_GROUP",
        default_value = "default",
        value_parser = parse_group
    )]
    pub default_group: GroupId,
}

fn parse_group(text: &str) -> Result<GroupId, String> {
    GroupId::parse(text).map_err(|why| format!("group id {why}"))
}
