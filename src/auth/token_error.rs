//! Why a token was refused: [`TokenError`], shared by the token checks ([`super::jwt`]) and
//! the key set ([`super::jwks`]).

use std::borrow::Cow;

use jsonwebtoken::errors::ErrorKind;

use super::claims::clip;

/// Why a token was refused. Every variant is an HTTP 401; [`TokenError::reason`] names it
/// for metrics.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No token in the request.
    #[error("a token is required: Authorization: Bearer <jwt>, or ?access_token=<jwt>")]
    Missing,
    /// Not a well-formed JWT.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// An algorithm the server does not accept for this token.
    #[error("token algorithm refused: {0}")]
    Algorithm(Cow<'static, str>),
    /// The `kid` is not in the key set, even after re-reading it.
    #[error("unknown signing key (kid {0:?})")]
    UnknownKid(String),
    /// No key set could be loaded.
    #[error("signing keys are not available")]
    NoKeys,
    /// The signature does not match.
    #[error("bad token signature")]
    BadSignature,
    /// Past `exp` (plus leeway).
    #[error("token expired")]
    Expired,
    /// Before `nbf` (less leeway).
    #[error("token not valid yet")]
    NotYetValid,
    /// `iss` is missing or not the configured issuer.
    #[error("wrong token issuer")]
    Issuer,
    /// `aud` is missing or does not include the configured audience.
    #[error("wrong token audience")]
    Audience,
    /// A claim Beacon needs is missing or malformed.
    #[error("token claims: {0}")]
    Claims(String),
}

impl TokenError {
    /// A short name for the refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Malformed(_) => "malformed",
            TokenError::Algorithm(_) => "algorithm",
            TokenError::UnknownKid(_) => "unknown_kid",
            TokenError::NoKeys => "no_keys",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::Issuer => "issuer",
            TokenError::Audience => "audience",
            TokenError::Claims(_) => "claims",
        }
    }

    pub(super) fn from_jwt(error: &jsonwebtoken::errors::Error) -> Self {
        match error.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidIssuer => TokenError::Issuer,
            ErrorKind::InvalidAudience => TokenError::Audience,
            ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
                "iss" => TokenError::Issuer,
                "aud" => TokenError::Audience,
                other => TokenError::Claims(format!("{} is required", clip(other))),
            },
            ErrorKind::InvalidClaimFormat(claim) => {
                TokenError::Claims(format!("{} is malformed", clip(claim)))
            }
            ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
                TokenError::Algorithm("it does not match the key".into())
            }
            ErrorKind::InvalidToken => TokenError::Malformed("not three base64url parts"),
            ErrorKind::Base64(_) => TokenError::Malformed("bad base64url"),
            ErrorKind::Json(_) => TokenError::Malformed("bad JSON"),
            ErrorKind::Utf8(_) => TokenError::Malformed("bad UTF-8"),
            // Key problems (a key of the set the crypto backend cannot use) and anything
            // newer than this match: the token cannot be verified.
            _ => TokenError::BadSignature,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::AUTH_REASONS;

    #[test]
    fn every_reason_is_a_metric_label() {
        let all = [
            TokenError::Missing,
            TokenError::Malformed("x"),
            TokenError::Algorithm("x".into()),
            TokenError::UnknownKid("x".into()),
            TokenError::NoKeys,
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::Issuer,
            TokenError::Audience,
            TokenError::Claims("x".into()),
        ];
        for e in &all {
            assert!(
                AUTH_REASONS.contains(&e.reason()),
                "{} has no label",
                e.reason()
            );
        }
    }
}
