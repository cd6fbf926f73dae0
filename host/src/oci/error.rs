//! What can go wrong talking to a registry, each with a stable code.

/// An OCI distribution failure.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The reference is malformed (`oci_invalid_reference`).
    #[error("{0}")]
    InvalidReference(String),
    /// The registry is not one this server may pull from, or not over plain http
    /// (`oci_not_allowed`).
    #[error("{0}")]
    NotAllowed(String),
    /// No such repository, tag or digest (`oci_not_found`).
    #[error("{0}")]
    NotFound(String),
    /// The registry refused the credentials, or there were none (`oci_unauthorized`).
    #[error("{0}")]
    Unauthorized(String),
    /// What the reference names is not a Wasm OCI artifact (`oci_bad_artifact`).
    #[error("{0}")]
    BadArtifact(String),
    /// A manifest or blob does not have the digest it should (`oci_digest_mismatch`).
    #[error("{0}")]
    DigestMismatch(String),
    /// A manifest, blob or token is larger than allowed (`oci_too_large`).
    #[error("{0}")]
    TooLarge(String),
    /// The registry could not be reached, timed out or failed (`oci_unreachable`).
    #[error("{0}")]
    Unreachable(String),
    /// The registry refused the request for another reason (`oci_refused`).
    #[error("{0}")]
    Refused(String),
}

impl OciError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            OciError::InvalidReference(_) => "oci_invalid_reference",
            OciError::NotAllowed(_) => "oci_not_allowed",
            OciError::NotFound(_) => "oci_not_found",
            OciError::Unauthorized(_) => "oci_unauthorized",
            OciError::BadArtifact(_) => "oci_bad_artifact",
            OciError::DigestMismatch(_) => "oci_digest_mismatch",
            OciError::TooLarge(_) => "oci_too_large",
            OciError::Unreachable(_) => "oci_unreachable",
            OciError::Refused(_) => "oci_refused",
        }
    }

    /// The HTTP status the API answers it with.
    pub fn status(&self) -> u16 {
        match self {
            OciError::InvalidReference(_) => 400,
            OciError::NotAllowed(_) => 403,
            OciError::NotFound(_) => 404,
            OciError::TooLarge(_) => 413,
            OciError::Unauthorized(_)
            | OciError::BadArtifact(_)
            | OciError::DigestMismatch(_)
            | OciError::Refused(_) => 422,
            OciError::Unreachable(_) => 502,
        }
    }
}

/// Result alias.
pub type OciResult<T> = Result<T, OciError>;
