//! Who may connect and what they may do.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::model::Role;

/// Authentication modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// No tokens: identity comes from the query (`?id=&groups=&role=`). For local use.
    None,
    /// Signed JWTs.
    Jwt,
}

/// Who may connect and what they may do.
#[derive(Clone, Debug, Args)]
pub struct AuthConfig {
    /// Authentication mode. Default `none` (identity from the query string).
    #[arg(long = "auth", env = "BEACON_AUTH", value_enum, default_value = "none")]
    pub mode: AuthMode,

    /// Allow `--auth none` on a non-loopback address. Default false: the server refuses to
    /// start there, since anyone who can reach it could read and write every position.
    #[arg(long, env = "BEACON_INSECURE", default_value_t = false)]
    pub insecure: bool,

    /// HMAC secret for HS256 tokens (`--auth jwt`), at least 32 bytes. Unset: HS256 tokens
    /// are refused. `beacon token` signs with the same secret.
    #[arg(long, env = "BEACON_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// JSON Web Key Set file with the public keys of RS256/ES256 tokens. Re-read like a URL
    /// (on an unknown `kid`, and every `--jwks-refresh-secs`).
    #[arg(long, env = "BEACON_JWKS_FILE", conflicts_with = "jwks_url")]
    pub jwks_file: Option<PathBuf>,

    /// URL of the identity provider's JSON Web Key Set (e.g. Cognito's
    /// `https://cognito-idp.REGION.amazonaws.com/POOL/.well-known/jwks.json`). `https` only,
    /// except for loopback hosts.
    #[arg(long, env = "BEACON_JWKS_URL")]
    pub jwks_url: Option<String>,

    /// Seconds between routine re-reads of the key set. Default 300.
    #[arg(long, env = "BEACON_JWKS_REFRESH_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub jwks_refresh_secs: u64,

    /// Least seconds between two re-reads of the key set caused by tokens naming an unknown
    /// `kid` (key rotation). Bounds what forged `kid`s can cost. Default 30.
    #[arg(long, env = "BEACON_JWKS_MIN_REFRESH_SECS", default_value_t = 30)]
    pub jwks_min_refresh_secs: u64,

    /// Required `iss` claim. Unset: not checked.
    #[arg(long, env = "BEACON_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim (one of the token's audiences). Unset: not checked.
    #[arg(long, env = "BEACON_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Claim holding the device or viewer id. Default `sub`. The value must pass the
    /// protocol's id rules (Auth0's `provider|id` subjects do not: use a custom claim).
    #[arg(long, env = "BEACON_JWT_ID_CLAIM", default_value = "sub")]
    pub jwt_id_claim: String,

    /// Claim holding the groups: a list of ids, or one string of comma-separated ids.
    /// Default `groups`; Cognito: `cognito:groups`.
    #[arg(long, env = "BEACON_JWT_GROUPS_CLAIM", default_value = "groups")]
    pub jwt_groups_claim: String,

    /// Claim holding the role: `device` or `viewer`, or a list of roles (with `device` in it
    /// the client is a device, else with `viewer` a viewer). Default `role`.
    #[arg(long, env = "BEACON_JWT_ROLE_CLAIM", default_value = "role")]
    pub jwt_role_claim: String,

    /// Role of a token without the role claim. Default `device`.
    #[arg(long, env = "BEACON_JWT_DEFAULT_ROLE", default_value = "device")]
    pub jwt_default_role: Role,

    /// Seconds of clock skew tolerated on `exp` and `nbf`. Default 30. A socket is closed
    /// with 1008 once `exp` plus this leeway has passed.
    #[arg(long, env = "BEACON_JWT_LEEWAY_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=300))]
    pub jwt_leeway_secs: u64,

    /// Origins a browser may connect from (comma-separated, exact, e.g.
    /// `https://map.example.com`; `*` allows any). They also get CORS on REST routes. Unset:
    /// only same-origin browsers (Origin host equal to Host) and clients sending no Origin.
    #[arg(long, env = "BEACON_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Take the client address from the last `X-Forwarded-For` entry (the one the proxy in
    /// front of Beacon appended) for the per-address connection limit. Only behind a proxy
    /// that sets it: otherwise clients could pick their own address. Default false.
    #[arg(long, env = "BEACON_TRUST_PROXY", default_value_t = false)]
    pub trust_proxy: bool,
}
